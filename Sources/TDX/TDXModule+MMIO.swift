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

  /// `result=mapped hpa=…`, `result=ept_violation` …: the trace fields of a `guest:access`.
  var fields: [TraceField] {
    if case .mapped(let hpa) = self { return [.text("result", "mapped"), .hpa(hpa)] }
    return [.text("result", description)]
  }

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
  /// The entry is not MMIO_PENDING and not guest-accessible (FREE, blocked, RAM PENDING), or
  /// the walk stopped above the requested level at such an entry: the TDCALL exits to the
  /// host with an EPT violation (`ept_violation_exit()` in `tdg_mmio_accept.c`); after the
  /// host maps the page the guest retries.
  case eptViolation
}

/// Where the Secure-EPT walk for one GPA and level ended (the model's
/// `lock_sept_check_and_walk_private_gpa()`): the model keeps leaf entries only, keyed by
/// their first GPA, so a walk looks for a leaf above the level, the entry at the level, and
/// leaves below it (which make the entry at the level a non-leaf).
enum SEPTWalk {
  /// A leaf at a higher level covers the GPA: the walk stopped there.
  case leafAbove(GPA, SEPTEntry)
  /// Smaller leaves lie inside the range: the entry at the level is a non-leaf (NL_MAPPED).
  case nonLeaf
  /// The entry at the level: a leaf, or FREE (`nil`).
  case entry(SEPTEntry?)
}

extension TDXModule {
  /// `verify_page_info_input(gpa_mapping, LVL_PT, LVL_PDPT)`: the level is 4K, 2M or 1G (the
  /// type guarantees it) and the GPA is aligned to it. The 4 KiB limit of private MMIO is
  /// KVM's (`KVM_BUG_ON(level != PG_LEVEL_4K)` in the RFC's `tdx_sept_set_private_spte()`),
  /// not the module's.
  static func checkPageInfo(gpa: GPA, level: SEPTLevel, leaf: StaticString) throws(TDXStatus) {
    guard gpa.isAligned(to: level.size) else {
      throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
        .because(leaf, "verify_page_info_input: GPA \(gpa) not aligned to \(level)")
    }
  }

  /// The Secure-EPT walk of `state` to `gpa` at `level`: the leaf whose block holds `gpa` is
  /// above the level, at it, or below it (then the entry at the level is a non-leaf).
  /// - Complexity: O(log runs).
  static func walk(_ state: TDState, gpa: GPA, level: SEPTLevel) -> SEPTWalk {
    if let (first, leaf) = state.sept.leaf(covering: gpa) {
      if leaf.level.rawValue > level.rawValue { return .leafAbove(first, leaf) }
      if leaf.level == level, first == gpa { return .entry(leaf) }
    }
    // Any leaf of a smaller level inside the range turns this entry into a non-leaf.
    if level != .level4K, state.sept.hasLeaf(below: level, inBlockAt: gpa) { return .nonLeaf }
    return .entry(nil)
  }

  /// The walk of a host leaf (MAP, BLOCK, UNMAP) that needs the entry at the level: a leaf
  /// above is `TDX_EPT_WALK_FAILED`, a non-leaf is `TDX_EPT_ENTRY_STATE_INCORRECT`
  /// (`sept_state_is_seamcall_leaf_allowed()` allows no MMIO leaf on NL_MAPPED), both RCX.
  static func hostWalk(_ state: TDState, gpa: GPA, level: SEPTLevel, leaf: StaticString) throws(TDXStatus) -> SEPTEntry? {
    switch walk(state, gpa: gpa, level: level) {
    case .leafAbove(let key, let entry):
      throw TDXStatus.eptWalkFailed.with(operand: TDXOperand.rcx)
        .because(leaf, "lock_sept_check_and_walk_private_gpa: \(entry.level) leaf at \(key) above \(level)")
    case .nonLeaf:
      throw TDXStatus.eptEntryStateIncorrect.with(operand: TDXOperand.rcx)
        .because(leaf, "sept_state_is_seamcall_leaf_allowed: entry at \(level) is a non-leaf")
    case .entry(let entry):
      return entry
    }
  }

  /// `TDH.MMIO.MAP` (leaf 158): maps device page `hpa` at `gpa` of `td`, MMIO_PENDING until
  /// the guest accepts it. ABI: RCX GPA | level, RDX TDR, R8 MMIO HPA.
  ///
  /// Follows `tdh_mmio_map()` (`src/vmm_dispatcher/api_calls/tdxio/tdh_mmio_map.c`, module
  /// commit `6e66b9d2`); the RFC calls it from `tdx_sept_set_private_spte()` when
  /// `kvm_is_mmio_pfn()`. Checks, in the module's order:
  /// 1. (model) an injected `TDX_OPERAND_BUSY`;
  /// 2. the TDR (`TDX_OPERAND_INVALID`, RDX) and the TD state (`TDX_TD_FATAL`);
  /// 3. `verify_page_info_input()`: level 4K..1G, GPA aligned (`TDX_OPERAND_INVALID`, RCX);
  /// 4. `shared_hpa_check_with_pwr_2_alignment()`: HPA aligned to the level (R8);
  /// 5. the Secure-EPT walk: a leaf above the level `TDX_EPT_WALK_FAILED` (RCX);
  /// 6. the entry is FREE (`TDX_EPT_ENTRY_STATE_INCORRECT`, RCX);
  /// 7. `mmiomt_walk()` at the mapping level: every table page on the way was added
  ///    (`TDX_MMIOMT_NOT_PRESENT`, RCX);
  /// 8. the MMIOMT entry is DATA and not mapped (`TDX_MMIO_INVALID_PAGE_METADATA`, RCX);
  /// 9. `tdh_devifmt_get_devifcs()`: a DEVIF exists for its function id
  ///    (`TDX_DEVIFMT_NOT_PRESENT`, R8);
  /// 10. that DEVIF belongs to this TD (`TDX_MMIO_DEVIF_OWNER_MISMATCH`, RDX);
  /// 11. its IDE stream is not blocked (`TDX_IDE_STREAM_BLOCKED`, R8).
  ///
  /// The module checks **no TDISP state** here: a TD may be given MMIO of a TDI that is
  /// CONFIG_UNLOCKED, LOCKED, RUN or ERROR; the guest's accept is what trusts it. Not modelled
  /// (no state for them): the GPA's shared bit and width, the HPA's key id bits, and the
  /// IOMMU configuration check (`tdh_check_and_lock_iommu_config()`).
  public mutating func tdhMMIOMap(td: TDID, gpa: GPA, level: SEPTLevel, hpa: HPA) throws(TDXStatus) {
    try traced("TDH.MMIO.MAP td \(td) gpa \(gpa) \(level) hpa \(hpa)",
               [.id("td", td), .gpa(gpa), .text("level", "\(level)"), .hpa(hpa)]) { (m: inout TDXModule) throws(TDXStatus) in
      // The TD's state is read in this scope only: no copy of it may be alive when its Secure
      // EPT is written below, or the write would copy the runs.
      do {
        let state = try m.liveTD(td, register: TDXOperand.rdx, leaf: "TDH.MMIO.MAP")
        try TDXModule.checkPageInfo(gpa: gpa, level: level, leaf: "TDH.MMIO.MAP")
        guard hpa.isAligned(to: level.size) else {
          throw TDXStatus.operandInvalid.with(operand: TDXOperand.r8)
            .because("TDH.MMIO.MAP", "shared_hpa_check_with_pwr_2_alignment: HPA \(hpa) not aligned to \(level)")
        }
        if let entry = try TDXModule.hostWalk(state, gpa: gpa, level: level, leaf: "TDH.MMIO.MAP") {
          throw TDXStatus.eptEntryStateIncorrect.with(operand: TDXOperand.rcx)
            .because("TDH.MMIO.MAP", "sept_state_is_seamcall_leaf_allowed: entry is \(entry.state), not FREE")
        }
      }
      try m.mmiomtWalk(hpa, pageLevel: level.rawValue, leaf: "TDH.MMIO.MAP")
      let first = PFN(hpa.pfn.rawValue & ~(level.pages - 1))
      guard let data = m.mmiomt[first], data.level == level, data.mapping == nil else {
        let what = m.mmiomt[first].map { $0.level != level ? "DATA at \($0.level)" : "already mapped" } ?? "not MMIOMT_DATA"
        throw TDXStatus.mmioInvalidPageMetadata.with(operand: TDXOperand.rcx)
          .because("TDH.MMIO.MAP", "MMIOMT entry for \(hpa) is \(what)")
      }
      guard let owner = m.devif(for: data.function) else {
        throw TDXStatus.devifmtNotPresent.with(operand: TDXOperand.r8)
          .because("TDH.MMIO.MAP", "tdh_devifmt_get_devifcs: no DEVIF for \(data.function)")
      }
      guard m.devifs[owner]!.td == td else {
        throw TDXStatus.mmioDevifOwnerMismatch.with(operand: TDXOperand.rdx)
          .because("TDH.MMIO.MAP", "TD is not the page owner (devif \(owner) belongs to td \(m.devifs[owner]!.td))")
      }
      guard !m.devifs[owner]!.streamBlocked else {
        throw TDXStatus.ideStreamBlocked.with(operand: TDXOperand.r8).because("TDH.MMIO.MAP", "IDE-Stream is blocked")
      }

      m.mmiomt[first]?.mapping = MMIOMTMapping(td: td, gpa: gpa)
      m.devifs[owner]?.mappedPages += 1
      m.tds[td]?.sept[gpa] = SEPTEntry(state: .mmioPending, level: level, hpa: hpa)
    }
  }

  /// `TDH.MMIO.BLOCK` (leaf 159): makes the MMIO entry at `gpa` non-present (MMIO_BLOCKED) and
  /// records the current TD epoch as its block epoch. ABI: RCX GPA | level, RDX TDR.
  ///
  /// Follows `tdh_mmio_block()` (`tdh_mmio_block.c`, commit `6e66b9d2`); the RFC calls it
  /// from `tdx_sept_zap_private_spte()` and returns -EAGAIN only for exactly
  /// `TDX_ERROR_SEPT_BUSY`. Checks: busy (injected); TDR (RDX) and TD state
  /// (`TDX_TD_FATAL`); page info (RCX); the walk (`TDX_EPT_WALK_FAILED`, RCX); the entry is
  /// MMIO_MAPPED or MMIO_PENDING (`TDX_EPT_ENTRY_STATE_INCORRECT`, RCX). It takes the Secure-EPT
  /// lock exclusively, so it is the leaf that contends as `TDX_OPERAND_BUSY | SEPT_TREE`.
  /// No TDI or MMIOMT check: an unaccepted page can be blocked.
  public mutating func tdhMMIOBlock(td: TDID, gpa: GPA, level: SEPTLevel) throws(TDXStatus) {
    try traced("TDH.MMIO.BLOCK td \(td) gpa \(gpa) \(level)", [.id("td", td), .gpa(gpa), .text("level", "\(level)")]) { (m: inout TDXModule) throws(TDXStatus) in
      let (entry, epoch): (SEPTEntry, UInt64)
      do {
        let state = try m.liveTD(td, register: TDXOperand.rdx, leaf: "TDH.MMIO.BLOCK")
        try TDXModule.checkPageInfo(gpa: gpa, level: level, leaf: "TDH.MMIO.BLOCK")
        let found = try TDXModule.hostWalk(state, gpa: gpa, level: level, leaf: "TDH.MMIO.BLOCK")
        guard let found, found.state == .mmioMapped || found.state == .mmioPending else {
          throw TDXStatus.eptEntryStateIncorrect.with(operand: TDXOperand.rcx)
            .because("TDH.MMIO.BLOCK", "entry is \(found?.state ?? .free), not MMIO_MAPPED or MMIO_PENDING")
        }
        (entry, epoch) = (found, state.epoch)
      }
      var blocked = entry
      blocked.state = .mmioBlocked
      blocked.bepoch = epoch
      m.tds[td]?.sept[gpa] = blocked
      m.tds[td]?.blockedEntries += 1
    }
  }

  /// `TDH.MMIO.UNMAP` (leaf 160): removes a blocked MMIO entry -> FREE, clears the MMIOMT
  /// entry's `mapped` flag and the DEVIF's page count. ABI: RCX GPA | level, RDX TDR; output
  /// R8 the HPA that was mapped.
  ///
  /// Follows `tdh_mmio_unmap()` (`tdh_mmio_unmap.c`, commit `6e66b9d2`); the RFC retries it
  /// while it returns exactly `TDX_ERROR_SEPT_BUSY`. Checks, in order: busy (injected); TDR
  /// (RDX) and TD state (`TDX_TD_FATAL`); page info (RCX); the walk (RCX); the entry is
  /// MMIO_BLOCKED (`TDX_EPT_ENTRY_STATE_INCORRECT`, RCX); its block epoch is tracked
  /// (`is_tlb_and_iotlb_tracked()` -> `TDX_TLB_TRACKING_NOT_DONE`, RCX); a DEVIF exists for
  /// the page's function (`TDX_DEVIFMT_NOT_PRESENT`, RCX); the DEVIF's TDISP state is
  /// CONFIG_UNLOCKED **or** its IDE stream is blocked (`TDX_DEVIF_TDISP_INVALID_STATE`, RCX).
  /// The module tests `tdisp_sts != TDISP_STATE_CONFIG_UNLOCKED`: ERROR does not pass.
  ///
  /// Not modelled: the TD's `op_state`. The module checks the blocked state and the tracking
  /// only when `sept_state_is_tlb_tracking_required && op_state_is_tlb_tracking_required`; a
  /// TD being torn down needs no tracking. The model's TDs are always RUNNABLE, where the
  /// state lookup of leaf 160 (`seamcall_sept_state_lookup`, MMIO_BLOCKED only) answers
  /// `TDX_EPT_ENTRY_STATE_INCORRECT` first and the tracking is required, as above.
  /// - Returns: the HPA that was mapped.
  @discardableResult
  public mutating func tdhMMIOUnmap(td: TDID, gpa: GPA, level: SEPTLevel) throws(TDXStatus) -> HPA {
    try traced("TDH.MMIO.UNMAP td \(td) gpa \(gpa) \(level)", [.id("td", td), .gpa(gpa), .text("level", "\(level)")]) { (m: inout TDXModule) throws(TDXStatus) -> HPA in
      let entry: SEPTEntry
      do {
        let state = try m.liveTD(td, register: TDXOperand.rdx, leaf: "TDH.MMIO.UNMAP")
        try TDXModule.checkPageInfo(gpa: gpa, level: level, leaf: "TDH.MMIO.UNMAP")
        let found = try TDXModule.hostWalk(state, gpa: gpa, level: level, leaf: "TDH.MMIO.UNMAP")
        guard let found, found.state == .mmioBlocked else {
          throw TDXStatus.eptEntryStateIncorrect.with(operand: TDXOperand.rcx)
            .because("TDH.MMIO.UNMAP", "entry is \(found?.state ?? .free), not MMIO_BLOCKED")
        }
        guard TDXModule.tracked(state, bepoch: found.bepoch) else {
          throw TDXStatus.tlbTrackingNotDone.with(operand: TDXOperand.rcx)
            .because("TDH.MMIO.UNMAP", "is_tlb_and_iotlb_tracked: block epoch \(found.bepoch) not tracked (epoch \(state.epoch))")
        }
        entry = found
      }
      let first = PFN(entry.hpa.pfn.rawValue & ~(level.pages - 1))
      guard let data = m.mmiomt[first], let owner = m.devif(for: data.function) else {
        throw TDXStatus.devifmtNotPresent.with(operand: TDXOperand.rcx)
          .because("TDH.MMIO.UNMAP", "tdh_devifmt_get_devifcs: no DEVIF for the page's function")
      }
      let devif = m.devifs[owner]!
      guard devif.tdispState == .configUnlocked || devif.streamBlocked else {
        throw TDXStatus.devifTDISPInvalidState.with(operand: TDXOperand.rcx)
          .because("TDH.MMIO.UNMAP", "TDISP state is not configured unlocked (state = \(devif.tdispState)) and the IDE stream is not blocked")
      }

      m.tds[td]?.sept[gpa] = nil
      m.tds[td]?.blockedEntries -= 1
      m.mmiomt[first]?.mapping = nil
      m.devifs[owner]?.mappedPages -= 1
      return entry.hpa
    }
  }

  /// `TDG.MMIO.ACCEPT` (TDCALL leaf 71) at 4 KiB; see
  /// ``tdgMMIOAccept(td:vcpu:gpa:level:expectedHPA:)``.
  public mutating func tdgMMIOAccept(td: TDID, vcpu: UInt32, gpa: GPA, expectedHPA: HPA) throws(TDXStatus) -> MMIOAcceptOutcome {
    try tdgMMIOAccept(td: td, vcpu: vcpu, gpa: gpa, level: .level4K, expectedHPA: expectedHPA)
  }

  /// `TDG.MMIO.ACCEPT` (TDCALL leaf 71): the guest, running on `vcpu`, accepts the pending MMIO
  /// entry at `gpa` and `level`, having read in the interface report that it should be backed
  /// by `expectedHPA`. ABI: RCX GPA | level, RDX the MMIO offset (host address plus the TD's
  /// reporting offset, as the report gives it).
  ///
  /// Follows `tdg_mmio_accept()` (`src/td_dispatcher/vm_exits/tdxio/tdg_mmio_accept.c`,
  /// commit `6e66b9d2`, where it is named `tdg_tdi_mmio_accept()`), in order:
  /// 1. (model) busy injected; the TD and vCPU exist (`TDX_OPERAND_INVALID`, RCX) and the TD
  ///    is not fatal (`TDX_TD_FATAL`): a TDCALL comes from a running vCPU of its own TD;
  /// 2. `check_gpa_validity()` / `verify_page_info_input()`: GPA aligned to the level
  ///    (`TDX_OPERAND_INVALID`, RCX);
  /// 3. the MMIO address aligned to the level (`TDX_OPERAND_INVALID`, RDX);
  /// 4. the walk stopped above the level: at a guest-accessible leaf (MAPPED, MMIO_MAPPED)
  ///    `TDX_PAGE_ALREADY_ACCEPTED` with that leaf's level as operand, else an EPT-violation
  ///    exit (case 1.1 / 1.2);
  /// 5. the entry at the level is a non-leaf: `TDX_MMIO_ACCEPT_SIZE_MISMATCH`, operand the
  ///    level (case 3);
  /// 6. the entry is guest-accessible: `TDX_PAGE_ALREADY_ACCEPTED`, operand the level (case
  ///    4.1) — a **warning**: bit 63 is clear and the guest goes on;
  /// 7. the entry is not MMIO_PENDING: EPT-violation exit (case 4.2/4.3);
  /// 8. the entry maps another page: `TDX_MMIO_INVALID_HPA_OFFSET`, RCX;
  /// then MMIO_PENDING -> MMIO_MAPPED. The header also defines
  /// `TDX_MMIO_PAGE_ALREADY_ACCEPTED` (0x00000F28...), which no handler returns.
  /// - Returns: `.accepted`, or `.eptViolation` when the TDCALL exits to the host instead.
  /// - Throws: the statuses above; the warning `TDX_PAGE_ALREADY_ACCEPTED` is thrown too
  ///   (its `isError` is false), since it is not an acceptance.
  public mutating func tdgMMIOAccept(td: TDID, vcpu: UInt32, gpa: GPA, level: SEPTLevel,
                                     expectedHPA: HPA) throws(TDXStatus) -> MMIOAcceptOutcome {
    // Built only when a trace record wants them.
    func call() -> String { "TDG.MMIO.ACCEPT td \(td) vcpu \(vcpu) gpa \(gpa)\(level == .level4K ? "" : " \(level)") hpa \(expectedHPA)" }
    func operands() -> [TraceField] { [.id("td", td), .int("vcpu", vcpu), .gpa(gpa), .text("level", "\(level)"), .hpa(expectedHPA)] }
    let outcome = try traced(call(), operands(), event: .tdxTdcall, tracingSuccess: false) { (m: inout TDXModule) throws(TDXStatus) -> MMIOAcceptOutcome in
      // The TD's state is read in this scope only, so that no copy of it is alive when the
      // entry is written.
      let (walk, reportingOffset): (SEPTWalk, UInt64)
      do {
        guard let state = m.tds[td], Int(vcpu) < state.vcpus.count else {
          throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx).because("TDG.MMIO.ACCEPT", "model: no such TD or vCPU")
        }
        guard !state.isFatal else { throw TDXStatus.tdFatal.because("TDG.MMIO.ACCEPT", "TDR state is fatal") }
        guard gpa.isAligned(to: level.size) else {
          throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
            .because("TDG.MMIO.ACCEPT", "Input GPA page info is not valid: \(gpa) not aligned to \(level)")
        }
        guard expectedHPA.isAligned(to: level.size) else {
          throw TDXStatus.operandInvalid.with(operand: TDXOperand.rdx)
            .because("TDG.MMIO.ACCEPT", "Invalid mmio_pa \(expectedHPA): not aligned to \(level)")
        }
        (walk, reportingOffset) = (TDXModule.walk(state, gpa: gpa, level: level), state.mmioReportingOffset)
      }
      func exit(_ why: @autoclosure () -> String) -> MMIOAcceptOutcome {
        // No status comes back: the TDCALL itself takes an EPT violation and the TD exits.
        m.trace.emit(.tdxTdcall, "\(Self.withLeafNumber("TDG.MMIO.ACCEPT td \(td) gpa \(gpa)")): \(why()), EPT violation (TD exit)",
                     Self.callFields("TDG.MMIO.ACCEPT", [.id("td", td), .int("vcpu", vcpu), .gpa(gpa), .text("entry", why())], status: .success)
                       + [.text("outcome", "ept_violation")])
        return .eptViolation
      }
      switch walk {
      case .leafAbove(_, let above):
        if above.state.isGuestAccessibleLeaf {
          throw TDXStatus.pageAlreadyAccepted.with(operand: UInt32(above.level.rawValue))
            .because("TDG.MMIO.ACCEPT", "guest-accessible \(above.level) leaf above the requested \(level)")
        }
        return exit("\(above.state) \(above.level) leaf above the requested level")
      case .nonLeaf:
        throw TDXStatus.mmioAcceptSizeMismatch.with(operand: UInt32(level.rawValue))
          .because("TDG.MMIO.ACCEPT", "SEPT walk terminated at a non-leaf entry at \(level)")
      case .entry(nil):
        return exit("FREE")
      case .entry(let entry?):
        if entry.state.isGuestAccessibleLeaf {
          throw TDXStatus.pageAlreadyAccepted.with(operand: UInt32(level.rawValue))
            .because("TDG.MMIO.ACCEPT", "entry is \(entry.state): already accepted")
        }
        guard entry.state == .mmioPending else { return exit("\(entry.state)") }
        guard entry.hpa.rawValue == expectedHPA.rawValue &- reportingOffset else {
          throw TDXStatus.mmioInvalidHPAOffset.with(operand: TDXOperand.rcx)
            .because("TDG.MMIO.ACCEPT", "Invalid hpa offset: entry maps \(entry.hpa), guest expects \(expectedHPA)")
        }
        var accepted = entry
        accepted.state = .mmioMapped
        m.tds[td]?.sept[gpa] = accepted
        return .accepted
      }
    }
    if outcome == .accepted {
      trace.emit(.tdxTdcall, "\(Self.withLeafNumber(call())) -> TDX_SUCCESS", Self.callFields(call(), operands(), status: .success))
    }
    return outcome
  }

  /// A guest load or store at private `gpa` of `td`, as the CPU's Secure-EPT walk resolves it.
  /// A vCPU touching an MMIO_PENDING page kills the TD: it becomes non-recoverable, every
  /// vCPU is out of the guest, and later calls on it fail `TDX_TD_FATAL`. (What the module
  /// does on that EPT violation is in `td_ept_violation.c`, which this model has not
  /// followed; the fatal outcome is the private-MMIO design's rule, STACK.md section 5.)
  public mutating func guestAccess(td: TDID, gpa: GPA) -> GuestAccessResult {
    let leaf: (first: GPA, entry: SEPTEntry)?
    do {
      guard let state = tds[td], !state.isFatal else { return .tdNotRunnable }
      leaf = state.sept.leaf(covering: gpa)
    }
    let result: GuestAccessResult
    if let (first, entry) = leaf {
      switch entry.state {
      case .free, .blocked, .mmioBlocked: result = .eptViolation
      case .pending: result = .virtualizationException
      case .mapped, .mmioMapped: result = .mapped(entry.hpa.advanced(by: gpa.rawValue - first.rawValue))
      case .mmioPending:
        tds[td]?.isFatal = true
        if let vcpus = tds[td]?.vcpus.count { for i in 0 ..< vcpus { tds[td]?.vcpus[i].inGuest = false } }
        tds[td]?.refcount = [0, 0]
        result = .killedTD
      }
    } else {
      result = .eptViolation
    }
    trace.emit(.guestAccess, "access td \(td) gpa \(gpa) -> \(result)", [.id("td", td), .gpa(gpa)] + result.fields)
    return result
  }
}
