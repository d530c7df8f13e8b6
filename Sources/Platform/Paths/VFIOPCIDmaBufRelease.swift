import KernelCore
import DmaBuf
import KVM
import TDX

/// `vfio_pci_dma_buf_release()` (`drivers/vfio/pci/vfio_pci_dmabuf.c`) after a buffer's last
/// reference is gone: a buffer still on its device's list leaves it under `memory_lock` held
/// for write, and returns the device registration it held.
struct VFIOPCIDmaBufRelease: Hashable, Sendable {
  let buffer: DmaBufID

  mutating func step(_ m: inout Machine, ctx: ContextID) throws(LockViolation) -> FrameStep {
    if let device = m.vfio.dmaBuf(buffer)?.device, let lock = m.vfio.device(device)?.memoryLock,
       let wait = lock.writeWait(for: ctx) {
      return .blocked(wait)
    }
    m.vfio.releaseDmaBuf(buffer, trace: &m.trace)
    return .ranAndReturned("vfio_pci_dma_buf_release: memory_lock write, leave the device's list", .success(.none))
  }
}
