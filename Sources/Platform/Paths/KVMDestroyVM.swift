import KernelCore
import DmaBuf
import KVM
import TDX

/// `kvm_destroy_vm()` once the VM's last reference is gone (`virt/kvm/kvm_main.c`), on the
/// thread that dropped it: the close of its fd or of its last guest_memfd, or the last ioctl
/// in flight on it (``KVMHost/inFlight``):
/// the MMU is torn down under `mmu_lock` (for a TD, `tdx_mmu_release_hkid()` and the
/// reclaim of every page, folded into one module call here), the memslots are freed, and
/// every dma-buf slot's attachment is detached under its buffer's resv, one region each.
/// Attachments left dangling by an `rfc-v1` slot move are leaked: nothing detaches them.
struct KVMDestroyVM: Hashable, Sendable {
  let vm: VMID
  /// Attachments still to detach once the VM's memory is gone.
  var detach: [AttachmentID]?

  init(vm: VMID) { self.vm = vm }

  mutating func step(_ m: inout Machine, ctx: ContextID) throws(LockViolation) -> FrameStep {
    guard var remaining = detach else {
      guard let state = m.kvm.vms[vm] else { return .returned(.success(.none)) }
      if let wait = state.mmuLock.writeWait(for: ctx) { return .blocked(wait) }
      let (live, leaked) = m.kvm.vms[vm]!.destroy()
      m.kvm.leaked.formUnion(leaked)
      if let td = m.kvm.tds[vm] {
        do { try m.kvm.tdx.tdTeardown(td: td) } catch {
          throw LockViolation(lock: "kvm->mmu_lock", message: "TD teardown refused: \(error)")
        }
        m.trace.absorb(&m.kvm.tdx.trace)
      }
      m.trace.emit(.kvmDestroyVM, "destroy vm\(vm.rawValue)" + (leaked.isEmpty ? "" : " (attachment \(leaked.map { String($0.rawValue) }.joined(separator: ",")) leaked)"),
                   [.vm(vm), .text("leaked", leaked.map { String($0.rawValue) }.joined(separator: ","))])
      detach = live
      if live.isEmpty { return .ranAndReturned("kvm_destroy_vm: tear down the MMU and memslots", finish(&m)) }
      return .ran("kvm_destroy_vm: tear down the MMU and memslots")
    }
    guard let attachment = remaining.first else { return .returned(finish(&m)) }
    if let wait = m.dmabufCore.resvWait(for: attachment, context: ctx) { return .blocked(wait) }
    remaining.removeFirst()
    detach = remaining
    let released: DmaBufObject?
    do { released = try m.dmabufCore.detach(attachment, trace: &m.trace) } catch {
      throw LockViolation(lock: "dmabuf->resv", message: "KVM detaches attachment \(attachment.rawValue) it does not hold: \(error)")
    }
    if let released {
      return .ranThenCall("kvm_free_memslot: dma_buf_detach", .dmaBufRelease(VFIOPCIDmaBufRelease(buffer: released.id)))
    }
    if remaining.isEmpty { return .ranAndReturned("kvm_free_memslot: dma_buf_detach", finish(&m)) }
    return .ran("kvm_free_memslot: dma_buf_detach")
  }

  /// The VM is gone.
  private func finish(_ m: inout Machine) -> OpResult {
    m.kvm.vms[vm] = nil
    m.kvm.tds[vm] = nil
    m.kvm.inFlight[vm] = nil
    return .success(.none)
  }
}
