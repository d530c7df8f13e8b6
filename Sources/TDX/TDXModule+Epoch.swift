import KernelCore

/// TLB tracking: how the module knows that no logical processor can still hold a TLB entry
/// for a blocked Secure-EPT mapping.
///
/// The rule, as the TDX module implements it with one epoch counter and two reference counts
/// per TD:
/// - `TDH.VP.ENTER` records the TD's current epoch `e` in the vCPU and increments
///   `refcount[e & 1]`; the TD exit that ends it decrements the same counter.
/// - `TDH.MEM.TRACK` fails `TDX_PREVIOUS_TLB_EPOCH_BUSY` while `refcount[(epoch - 1) & 1]` is
///   non-zero (some vCPU still runs in the previous epoch); otherwise it increments the epoch.
///   Because of that check, when the epoch becomes `e + 1` every vCPU counted in
///   `refcount[e & 1]` entered in epoch `e` exactly.
/// - `TDH.MMIO.BLOCK` (like `TDH.MEM.RANGE.BLOCK`) records `bepoch` = the current epoch. A
///   vCPU that enters after that sees the entry blocked, and entering flushes its TLB.
/// - The entry is *tracked* when every vCPU that entered in an epoch `<= bepoch` has left:
///   the epoch is at least `bepoch + 2` (the second TRACK could only happen once
///   `refcount[bepoch & 1]` drained), or the epoch is `bepoch + 1` and
///   `refcount[bepoch & 1]` is zero. In epoch `bepoch` itself it is never tracked: a TRACK
///   must come first. This is why KVM follows TRACK with an IPI that kicks every vCPU out.
extension TDXModule {
  /// Whether an entry blocked in epoch `bepoch` of `td` has been tracked to completion.
  public func tlbTracked(td: TDID, bepoch: UInt64) -> Bool {
    guard let state = tds[td] else { return false }
    return TDXModule.tracked(state, bepoch: bepoch)
  }

  static func tracked(_ state: TDState, bepoch: UInt64) -> Bool {
    if state.epoch >= bepoch &+ 2 { return true }
    return state.epoch == bepoch &+ 1 && state.refcount[Int(bepoch & 1)] == 0
  }

  /// `TDH.MEM.TRACK` (leaf 38): starts a new TLB epoch for `td`.
  ///
  /// Mirrors `tdh_mem_track()` (`arch/x86/virt/vmx/tdx/tdx.c`), which KVM calls from
  /// `tdx_track()` (`arch/x86/kvm/vmx/tdx.c`) and then kicks every vCPU
  /// (`kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)`).
  /// - Returns: no output registers.
  ///
  /// The module's order (`tdh_mem_track.c`): the TDR (RCX); the TDCS state; the epoch lock,
  /// exclusive (`TDX_OPERAND_BUSY`, operand TD_EPOCH); a vCPU of the previous epoch
  /// (`TDX_PREVIOUS_TLB_EPOCH_BUSY`, no operand); `prev_iotlb_cnt != 0`
  /// (`TDX_IOMMU_IOTLB_TRACKING_NOT_DONE`). The model's leaves are atomic, so no other leaf
  /// holds the epoch lock while this one runs: that busy arises only when a scenario injects
  /// it. The model has no TDX Connect IOMMU (no DMA mappings, no IOTLB tracking), so
  /// `prev_iotlb_cnt` is always 0 and its check is not modelled.
  /// - Throws: `TDX_OPERAND_BUSY` (injected); `TDX_OPERAND_INVALID` (RCX) for an unknown TD;
  ///   `TDX_TD_FATAL` for a fatal one; `TDX_PREVIOUS_TLB_EPOCH_BUSY` (no operand)
  ///   while a vCPU still runs in the previous epoch.
  public mutating func tdhMemTrack(td: TDID) throws(TDXStatus) {
    try traced("TDH.MEM.TRACK td \(td)", [.id("td", td)]) { (m: inout TDXModule) throws(TDXStatus) in
      let state = try m.liveTD(td, register: TDXOperand.rcx, leaf: "TDH.MEM.TRACK")
      guard state.refcount[Int((state.epoch &- 1) & 1)] == 0 else {
        // tdh_mem_track.c returns the bare status, with no operand.
        throw TDXStatus.previousTLBEpochBusy
          .because("TDH.MEM.TRACK", "vCPUs still run in the previous epoch (refcount \(state.refcount[Int((state.epoch &- 1) & 1)]))")
      }
      m.tds[td]?.epoch = state.epoch &+ 1
    }
  }

  /// `TDH.VP.ENTER` (leaf 0): vCPU `vcpu` of `td` enters TDX non-root mode in the current epoch.
  ///
  /// Mirrors `tdh_vp_enter()` (`arch/x86/virt/vmx/tdx/tdx.c`) as called by
  /// `tdx_vcpu_run()`; the vCPU stays in the guest until `tdExit(td:vcpu:)`.
  /// - Throws: `TDX_OPERAND_BUSY` (operand TDVPS) when the vCPU already runs (its TDVPS is
  ///   locked by the logical processor running it), or injected; `TDX_OPERAND_INVALID` (RCX)
  ///   for an unknown TD or vCPU; `TDX_TD_FATAL` for a fatal TD.
  public mutating func tdhVPEnter(td: TDID, vcpu: UInt32) throws(TDXStatus) {
    try traced("TDH.VP.ENTER td \(td) vcpu \(vcpu)", [.id("td", td), .int("vcpu", vcpu)]) { (m: inout TDXModule) throws(TDXStatus) in
      let i = Int(vcpu)
      let epoch: UInt64
      do {
        // Read in this scope only: a copy alive across the writes below would copy the arrays.
        let state = try m.liveTD(td, register: TDXOperand.rcx, leaf: "TDH.VP.ENTER")
        guard i < state.vcpus.count else {
          throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
            .because("TDH.VP.ENTER", "vCPU \(vcpu) is not below the TD's \(state.vcpus.count) vCPUs: no such TDVPR")
        }
        guard !state.vcpus[i].inGuest else {
          throw TDXStatus.operandBusy.with(operand: TDXOperand.tdvps)
            .because("TDH.VP.ENTER", "TDVPS of vCPU \(vcpu) is locked: the vCPU already runs on another logical processor")
        }
        epoch = state.epoch
      }
      m.tds[td]?.vcpus[i] = TDVCPUState(inGuest: true, enteredEpoch: epoch)
      m.tds[td]?.refcount[Int(epoch & 1)] += 1
    }
  }

  /// The TD exit that ends a `tdhVPEnter(td:vcpu:)`: for whatever reason the vCPU leaves
  /// TDX non-root mode (an EPT violation, a TDCALL to the host, or the IPI that KVM sends
  /// after TDH.MEM.TRACK), and stops counting in its entry epoch.
  /// - Throws: `TDX_OPERAND_INVALID` (RCX) for an unknown TD or vCPU, or a vCPU not in the guest.
  public mutating func tdExit(td: TDID, vcpu: UInt32) throws(TDXStatus) {
    try traced("TD exit td \(td) vcpu \(vcpu)", [.id("td", td), .int("vcpu", vcpu)], event: .tdxTDExit) { (m: inout TDXModule) throws(TDXStatus) in
      let i = Int(vcpu)
      let entered: UInt64
      do {
        guard let state = m.tds[td] else {
          throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx).because("TD exit", "td \(td) is not a TD")
        }
        guard i < state.vcpus.count, state.vcpus[i].inGuest else {
          throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx).because("TD exit", "vCPU \(vcpu) is not in the guest")
        }
        entered = state.vcpus[i].enteredEpoch
      }
      m.tds[td]?.vcpus[i].inGuest = false
      m.tds[td]?.refcount[Int(entered & 1)] -= 1
    }
  }

  /// Makes `td`'s epochs relative, unless an MMIO_BLOCKED entry still names an old one: only
  /// differences of epochs matter to TRACK and to tracking, so the epoch and the entry epochs
  /// of the vCPUs in the guest are shifted down until the oldest is 0 (an odd shift swaps the
  /// two per-parity counts with them; vCPUs outside the guest forget theirs). Two modules that
  /// differ only by how many epochs passed long ago then compare equal.
  public mutating func normalizeEpochs(of td: TDID) {
    var base: UInt64
    do {
      guard let state = tds[td], state.blockedEntries == 0 else { return }
      base = state.epoch
      for vcpu in state.vcpus where vcpu.inGuest { base = min(base, vcpu.enteredEpoch) }
      let stale = state.vcpus.contains { !$0.inGuest && $0.enteredEpoch != 0 }
      guard base > 0 || stale else { return }
    }
    // In place: no copy of the TD's state is alive here.
    tds[td]?.shiftEpochs(down: base)
  }
}

extension TDState {
  /// Subtracts `base` from the epoch and the entry epochs of vCPUs in the guest; vCPUs outside
  /// forget theirs; an odd shift swaps the per-parity counts.
  mutating func shiftEpochs(down base: UInt64) {
    epoch -= base
    for i in vcpus.indices {
      vcpus[i].enteredEpoch = vcpus[i].inGuest ? vcpus[i].enteredEpoch - base : 0
    }
    if base & 1 == 1 { refcount.swapAt(0, 1) }
  }
}
