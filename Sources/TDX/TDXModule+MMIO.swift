import KernelCore

/// What a guest memory access to a private GPA does.
public enum GuestAccessResult: Hashable, Sendable, CustomStringConvertible {
  /// The entry is MAPPED or MMIO_MAPPED: the access completes on this host page.
  case mapped(HPA)
  /// The entry is FREE or blocked (not present): TD exit with an EPT violation; the host may
  /// map the page and resume the vCPU.
  case eptViolation
  /// The entry is PENDING (unaccepted RAM): the guest gets a #VE.
  case virtualizationException
  /// The entry is MMIO_PENDING: touching unaccepted device memory is fatal, and this access
  /// has just made the TD non-recoverable.
  case killedTD
  /// The TD was already fatal: nothing runs.
  case tdNotRunnable

  public var description: String {
    switch self {
    case .mapped(let hpa): "mapped \(hpa)"
    case .eptViolation: "ept_violation"
    case .virtualizationException: "ve"
    case .killedTD: "killed"
    case .tdNotRunnable: "td_dead"
    }
  }
}

/// What `TDG.MMIO.ACCEPT` did.
public enum MMIOAcceptOutcome: Hashable, Sendable {
  /// MMIO_PENDING -> MMIO_MAPPED.
  case accepted
  /// The entry is not present (FREE or blocked): the TDCALL exits to the host with an EPT
  /// violation, as TDG.MEM.PAGE.ACCEPT does; after the host maps the page the guest
  /// retries.
  case eptViolation
}

extension TDXModule {
  /// Checks the GPA/level operand of an MMIO leaf. Private MMIO is mapped at 4 KiB only,
  /// as in the RFC (KVM's `tdx_mmio_map` has `KVM_BUG_ON(level != PG_LEVEL_4K)`); the level
  /// stays in the ABI so that larger mappings are a local change.
  static func checkMMIOOperand(gpa: GPA, level: SEPTLevel) throws(TDXStatus) {
    guard level == .level4K, gpa.isAligned(to: level.size) else {
      throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
    }
  }

  /// `TDH.MMIO.MAP` (leaf 158, TDX Connect draft): maps device page `hpa` at `gpa` of `td`,
  /// MMIO_PENDING until the guest accepts it.
  ///
  /// Mirrors the RFC's `tdh_mmio_map()` as called from `tdx_sept_set_private_spte()` when
  /// `kvm_is_mmio_pfn()` says the PFN is MMIO (`arch/x86/kvm/vmx/tdx.c`).
  /// Checks, in this order:
  /// 1. `TDX_OPERAND_BUSY` (injected; KVM returns -EBUSY and the fault retries);
  /// 2. the TD exists (`TDX_OPERAND_INVALID`, RDX) and is not fatal (`TDX_NON_RECOVERABLE_TD`);
  /// 3. 4 KiB level, GPA aligned (`TDX_OPERAND_INVALID`, RCX); HPA page aligned (R8);
  /// 4. the Secure-EPT entry is FREE (`TDX_EPT_ENTRY_STATE_INCORRECT`, operand SEPT);
  /// 5. the HPA has an MMIOMT entry describing TEE device memory (`TDX_MMIOMT_ENTRY_INVALID`, R8);
  /// 6. the page is not mapped elsewhere (`TDX_MMIO_PAGE_ALREADY_MAPPED`, R8);
  /// 7. its owning DEVIF belongs to `td` (`TDX_DEVIF_TD_MISMATCH`, operand DEVIF);
  /// 8. the TDI is CONFIG_LOCKED or RUN (`TDX_DEVIF_TDISP_INVALID_STATE`, operand DEVIF) —
  ///    the counterpart of UNMAP's "no longer trusted"; STACK.md does not list it for MAP,
  ///    the model adds it so an untrusted TDI never gains a new private mapping;
  /// 9. its IDE stream is not blocked (`TDX_IDE_STREAM_BLOCKED`, operand DEVIF).
  public mutating func tdhMMIOMap(td: TDID, gpa: GPA, level: SEPTLevel, hpa: HPA) throws(TDXStatus) {
    try traced("TDH.MMIO.MAP td \(td) gpa \(gpa) \(level) hpa \(hpa)") { (m: inout TDXModule) throws(TDXStatus) in
      try m.consumeBusy(.seamcall(.mmioMap), td: td)
      let state = try m.liveTD(td, register: TDXOperand.rdx)
      try TDXModule.checkMMIOOperand(gpa: gpa, level: level)
      guard hpa.isPageAligned else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.r8) }
      guard state.sept[gpa] == nil else {
        throw TDXStatus.eptEntryStateIncorrect.with(operand: TDXOperand.sept)
      }
      guard let mt = m.mmiomt[hpa.pfn], !mt.attributes.contains(.isNonTEEMem) else {
        throw TDXStatus.mmioMTEntryInvalid.with(operand: TDXOperand.r8)
      }
      guard mt.mapping == nil else { throw TDXStatus.mmioPageAlreadyMapped.with(operand: TDXOperand.r8) }
      guard let owner = m.devifs[mt.owner], owner.td == td else {
        throw TDXStatus.devifTDMismatch.with(operand: TDXOperand.devif)
      }
      guard owner.tdispState.isTrusted else {
        throw TDXStatus.devifTDISPInvalidState.with(operand: TDXOperand.devif)
      }
      guard !owner.streamBlocked else { throw TDXStatus.ideStreamBlocked.with(operand: TDXOperand.devif) }

      m.tds[td]?.sept[gpa] = SEPTEntry(state: .mmioPending, level: level, hpa: hpa)
      m.mmiomt[hpa.pfn]?.mapping = MMIOMTMapping(td: td, gpa: gpa)
      m.devifs[mt.owner]?.mappedPages += 1
    }
  }

  /// `TDH.MMIO.BLOCK` (leaf 159, TDX Connect draft): makes the MMIO entry at `gpa`
  /// non-present (MMIO_BLOCKED) and records the current epoch as its `bepoch`.
  ///
  /// Mirrors the RFC's `tdh_mmio_block()`, called from `tdx_sept_zap_private_spte()`
  /// (busy -> KVM returns -EAGAIN). An unaccepted (MMIO_PENDING) entry can be blocked too:
  /// KVM must be able to zap a page the guest never accepted.
  /// - Throws: busy (injected); `TDX_OPERAND_INVALID` (RDX unknown TD, RCX bad GPA/level);
  ///   `TDX_NON_RECOVERABLE_TD`; `TDX_EPT_ENTRY_STATE_INCORRECT` (operand SEPT) unless the
  ///   entry is MMIO_MAPPED or MMIO_PENDING.
  public mutating func tdhMMIOBlock(td: TDID, gpa: GPA, level: SEPTLevel) throws(TDXStatus) {
    try traced("TDH.MMIO.BLOCK td \(td) gpa \(gpa) \(level)") { (m: inout TDXModule) throws(TDXStatus) in
      try m.consumeBusy(.seamcall(.mmioBlock), td: td)
      let state = try m.liveTD(td, register: TDXOperand.rdx)
      try TDXModule.checkMMIOOperand(gpa: gpa, level: level)
      guard let entry = state.sept[gpa], entry.state == .mmioMapped || entry.state == .mmioPending else {
        throw TDXStatus.eptEntryStateIncorrect.with(operand: TDXOperand.sept)
      }
      m.tds[td]?.sept[gpa]?.state = .mmioBlocked
      m.tds[td]?.blockedEntries += 1
      m.tds[td]?.sept[gpa]?.bepoch = state.epoch
    }
  }

  /// `TDH.MMIO.UNMAP` (leaf 160, TDX Connect draft): removes a blocked MMIO entry -> FREE,
  /// and releases the device page in the MMIOMT.
  ///
  /// Mirrors the RFC's `tdh_mmio_unmap()`, which KVM retries while busy after
  /// TDH.MMIO.BLOCK and `tdx_track()`.
  /// Checks, in this order: busy (injected); TD exists (RDX) and is alive; GPA/level (RCX);
  /// the entry is MMIO_BLOCKED (`TDX_EPT_ENTRY_STATE_INCORRECT`, SEPT); its bepoch is
  /// tracked (`TDX_TLB_TRACKING_NOT_DONE`, operand TD_EPOCH); the TDI is no longer trusted —
  /// its TDISP state is CONFIG_UNLOCKED or ERROR, or its IDE stream is blocked — else
  /// `TDX_DEVIF_TDISP_INVALID_STATE` (operand DEVIF). ERROR counts as untrusted: the TDI
  /// left LOCKED/RUN through an FLR or a bad config write and can only be stopped.
  /// - Returns: the HPA that was mapped.
  @discardableResult
  public mutating func tdhMMIOUnmap(td: TDID, gpa: GPA, level: SEPTLevel) throws(TDXStatus) -> HPA {
    try traced("TDH.MMIO.UNMAP td \(td) gpa \(gpa) \(level)") { (m: inout TDXModule) throws(TDXStatus) -> HPA in
      try m.consumeBusy(.seamcall(.mmioUnmap), td: td)
      let state = try m.liveTD(td, register: TDXOperand.rdx)
      try TDXModule.checkMMIOOperand(gpa: gpa, level: level)
      guard let entry = state.sept[gpa], entry.state == .mmioBlocked else {
        throw TDXStatus.eptEntryStateIncorrect.with(operand: TDXOperand.sept)
      }
      guard TDXModule.tracked(state, bepoch: entry.bepoch) else {
        throw TDXStatus.tlbTrackingNotDone.with(operand: TDXOperand.tdEpoch)
      }
      let owner = m.mmiomt[entry.hpa.pfn].flatMap { m.devifs[$0.owner] }
      if let owner, owner.tdispState.isTrusted, !owner.streamBlocked {
        throw TDXStatus.devifTDISPInvalidState.with(operand: TDXOperand.devif)
      }

      m.tds[td]?.sept[gpa] = nil
      m.tds[td]?.blockedEntries -= 1
      if let mt = m.mmiomt[entry.hpa.pfn] {
        m.mmiomt[entry.hpa.pfn]?.mapping = nil
        m.devifs[mt.owner]?.mappedPages -= 1
      }
      return entry.hpa
    }
  }

  /// `TDG.MMIO.ACCEPT` (TDCALL leaf 71, TDX Connect draft): the guest, running on `vcpu`,
  /// accepts the pending MMIO page at `gpa`, having checked from the interface report that
  /// it should be backed by `expectedHPA`.
  ///
  /// The module does not check that `vcpu` is in the guest: a TDCALL can only be issued by a
  /// running vCPU, so the caller is responsible for that.
  /// - Returns: `.accepted` (MMIO_PENDING -> MMIO_MAPPED), or `.eptViolation` when the entry
  ///   is not present (FREE or MMIO_BLOCKED): the host must map it and the guest retries.
  /// - Throws: busy (injected); `TDX_OPERAND_INVALID` (RCX) for an unknown TD or vCPU or an
  ///   unaligned GPA; `TDX_NON_RECOVERABLE_TD`; `TDX_PAGE_ALREADY_ACCEPTED` (a warning, bit 63
  ///   clear) for MMIO_MAPPED; `TDX_EPT_ENTRY_STATE_INCORRECT` (SEPT) for a RAM entry;
  ///   `TDX_MMIO_INVALID_HPA_OFFSET` (operand RDX) when the entry maps another HPA — the
  ///   choice of this status for a mismatch is not certain.
  public mutating func tdgMMIOAccept(td: TDID, vcpu: UInt32, gpa: GPA, expectedHPA: HPA) throws(TDXStatus) -> MMIOAcceptOutcome {
    let outcome = try traced("TDG.MMIO.ACCEPT td \(td) vcpu \(vcpu) gpa \(gpa) hpa \(expectedHPA)", tracingSuccess: false) { (m: inout TDXModule) throws(TDXStatus) -> MMIOAcceptOutcome in
      try m.consumeBusy(.tdcall(.mmioAccept), td: td)
      let state = try m.liveTD(td, register: TDXOperand.rcx)
      guard Int(vcpu) < state.vcpus.count, gpa.isPageAligned else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
      }
      guard let entry = state.sept[gpa], entry.state != .mmioBlocked, entry.state != .blocked else {
        // No status comes back: the TDCALL itself takes an EPT violation and the TD exits.
        m.trace.emit(.tdx, "\(Self.withLeafNumber("TDG.MMIO.ACCEPT td \(td) gpa \(gpa)")): not present, EPT violation (TD exit)")
        return .eptViolation
      }
      switch entry.state {
      case .mmioPending: break
      case .mmioMapped: throw TDXStatus.pageAlreadyAccepted.with(operand: TDXOperand.sept)
      default: throw TDXStatus.eptEntryStateIncorrect.with(operand: TDXOperand.sept)
      }
      guard entry.hpa == expectedHPA else {
        throw TDXStatus.mmioInvalidHPAOffset.with(operand: TDXOperand.rdx)
      }
      m.tds[td]?.sept[gpa]?.state = .mmioMapped
      return .accepted
    }
    if outcome == .accepted {
      trace.emit(.tdx, "\(Self.withLeafNumber("TDG.MMIO.ACCEPT td \(td) vcpu \(vcpu) gpa \(gpa) hpa \(expectedHPA)")) -> TDX_SUCCESS")
    }
    return outcome
  }

  /// A guest load or store at private `gpa` of `td`, as the CPU's Secure-EPT walk resolves it.
  /// A vCPU touching an MMIO_PENDING page kills the TD: it becomes non-recoverable, every
  /// vCPU is out of the guest, and later calls on it fail `TDX_NON_RECOVERABLE_TD`.
  public mutating func guestAccess(td: TDID, gpa: GPA) -> GuestAccessResult {
    guard let state = tds[td], !state.isFatal else { return .tdNotRunnable }
    let page = GPA(gpa.rawValue & ~(pageSize - 1))
    let result: GuestAccessResult
    if let entry = state.sept[page] {
      switch entry.state {
      case .free, .blocked, .mmioBlocked: result = .eptViolation
      case .pending: result = .virtualizationException
      case .mapped, .mmioMapped: result = .mapped(entry.hpa.advanced(by: gpa.pageOffset))
      case .mmioPending:
        tds[td]?.isFatal = true
        for i in state.vcpus.indices { tds[td]?.vcpus[i].inGuest = false }
        tds[td]?.refcount = [0, 0]
        result = .killedTD
      }
    } else {
      result = .eptViolation
    }
    trace.emit(.guest, "access td \(td) gpa \(gpa) -> \(result)")
    return result
  }
}
