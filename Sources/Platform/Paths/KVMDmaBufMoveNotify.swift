import KernelCore
import DmaBuf
import KVM
import TDX

/// KVM's `move_notify` for one dma-buf memslot (the RFC's `kvm_vfio_dmabuf_move_notify()`,
/// patch 6), run on the revoking thread while it holds the buffer's resv lock.
///
/// Without a TDX module it is one region: `mmu_lock` for write, invalidate begin over the
/// slot, zap, flush, invalidate end, unlock. For a TD the first region takes `mmu_lock` and
/// begins the invalidation, and the Secure-EPT zap (``TDXSEPTZap``) does the rest. Through a
/// binding whose slot was freed (the `rfc-v1` move bug) it zaps the GFNs the freed slot had.
struct KVMDmaBufMoveNotify: Hashable, Sendable {
  let vm: VMID
  let attachment: AttachmentID
  let revoked: Bool
  var started = false

  mutating func childReturned() {}

  mutating func step(_ m: inout Machine, ctx: ContextID) throws(LockViolation) -> FrameStep {
    guard !started, let state = m.kvm.vms[vm], let bound = state.moveNotifyTarget(attachment) else {
      return .returned(.success(.none))
    }
    if let wait = state.mmuLock.writeWait(for: ctx) { return .blocked(wait) }
    if bound.isStale {
      m.kvm.observed.value.staleMoveNotifies += 1
      m.trace.emit(.kvmMoveNotify, "vm\(vm.rawValue): move_notify through attachment \(attachment.rawValue) reaches a freed slot",
                   [.vm(vm), .id("attachment", attachment), .flag("stale", true)])
    }
    started = true
    if m.kvm.tds[vm] != nil {
      // reviewed: while the buffer's interface is still trusted, TDH.MMIO.UNMAP would be
      // refused; the zap blocks and tracks, and unmaps once the TSM has stopped the interface
      // (VFIO notifies again). rfc-v1 always tries to unmap.
      let trusted = m.variant == .reviewed && m.exporterData(of: bound.binding.dmaBuf)?.interfaceTrusted == true
      switch try m.kvm.vms[vm]!.beginSecureZap(bound.gfns, ctx: ctx, unmap: !trusted) {
      case .failure(let wait): return .blocked(wait.wait)
      case .success(let zap):
        return .ranThenCall("move_notify: mmu_lock write, invalidate begin",
                            .secureZap(TDXSEPTZap(vm: vm, zap: zap, purpose: "move_notify zap of private MMIO")))
      }
    }
    if let wait = try m.kvm.vms[vm]!.dmaBufMoveNotify(attachment, ctx: ctx) { return .blocked(wait) }
    m.trace.emit(.kvmMoveNotify, "vm\(vm.rawValue): move_notify zapped the slot of attachment \(attachment.rawValue)",
                 [.vm(vm), .id("attachment", attachment), .flag("stale", false)])
    return .ranAndReturned("move_notify: mmu_lock write, invalidate, zap the slot, unlock", .success(.none))
  }
}
