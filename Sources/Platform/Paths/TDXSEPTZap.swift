import KernelCore
import DmaBuf
import KVM
import TDX

/// A TD's zap of private MMIO (patch 12's `tdx_sept_zap_private_spte()` path with
/// `TDH.MMIO.BLOCK`, `tdx_track()` and `TDH.MMIO.UNMAP`), with `mmu_lock` held for write: one
/// region per SEAMCALL, one for the kick, then a wait until every vCPU that was in guest mode
/// has answered it, and a last region that ends the invalidation and unlocks.
struct TDXSEPTZap: Hashable, Sendable {
  let vm: VMID
  var zap: ZapPath
  /// How the trace names the zap.
  let purpose: String

  mutating func step(_ m: inout Machine, ctx: ContextID, choices: inout Contention) throws(LockViolation) -> FrameStep {
    guard let td = m.kvm.tds[vm], m.kvm.vms[vm] != nil else {
      throw LockViolation(lock: "kvm->mmu_lock", message: "the TD went away during a zap that holds mmu_lock")
    }
    let action = try zap.step(&m.kvm.vms[vm]!)
    let result: SecureCallResult
    let label: StaticString
    switch action {
    case .secureBlock(let gpa, let level):
      result = call(.mmioBlock, &m, &choices, "\(gpa)", [.gpa(gpa)]) { (module: inout TDXModule) throws(TDXStatus) in
        try module.tdhMMIOBlock(td: td, gpa: gpa, level: SEPTLevel(level))
      }
      label = "zap: TDH.MMIO.BLOCK"
    case .secureTrack:
      result = call(.memTrack, &m, &choices, "", []) { (module: inout TDXModule) throws(TDXStatus) in
        try module.tdhMemTrack(td: td)
      }
      label = "zap: TDH.MEM.TRACK"
    case .kickVCPUs:
      m.trace.emit(.kvmKick, "kick all vCPUs of td\(td.rawValue) out of guest mode", [.vm(vm), .id("td", td)])
      m.kvm.vms[vm]!.requestOutsideGuestMode(m.kvm.vcpusInGuest(vm))
      result = .success
      label = "zap: kick vCPUs (KVM_REQ_OUTSIDE_GUEST_MODE)"
    case .secureUnmap(let gpa, let level):
      // KVM's protocol must never reach UNMAP before the entry's epoch is tracked; the
      // module would refuse it, but the invariant is about what KVM tries.
      if let entry = m.kvm.tdx.septEntry(td: td, gpa: gpa), entry.state == .mmioBlocked,
         !m.kvm.tdx.tlbTracked(td: td, bepoch: entry.bepoch) {
        m.kvm.observed.value.untrackedUnmaps += 1
      }
      result = call(.mmioUnmap, &m, &choices, "\(gpa)", [.gpa(gpa)]) { (module: inout TDXModule) throws(TDXStatus) in
        _ = try module.tdhMMIOUnmap(td: td, gpa: gpa, level: SEPTLevel(level))
      }
      label = "zap: TDH.MMIO.UNMAP"
    case .blocked(let wait):
      return .blocked(wait)
    case .complete(let outcome):
      if outcome != .zapped(entries: 0), outcome != .blocked(entries: 0) {
        m.trace.emit(.kvmMMUZap, "vm\(vm.rawValue): \(purpose): \(outcome)", [.vm(vm), .text("purpose", "\(purpose)"), .text("outcome", "\(outcome)")])
      }
      return .ranAndReturned("zap: invalidate end, mmu_lock unlock", .success(.none))
    }
    try zap.completed(result, vm: &m.kvm.vms[vm]!)
    return .ran(label)
  }

  private func call(_ leaf: SeamcallLeaf, _ m: inout Machine, _ choices: inout Contention, _ what: @autoclosure () -> String,
                    _ fields: @autoclosure () -> [TraceField], _ body: (inout TDXModule) throws(TDXStatus) -> Void) -> SecureCallResult {
    let contended = choices.takeBusy(leaf)
    return m.kvm.seamcall(vm, leaf, variant: m.variant, contended: contended, trace: &m.trace, what(), fields(), body)
  }
}
