import Testing
import KernelCore
import DmaBuf
@testable import KVM

/// The context unit tests run memslot ioctls in.
let ioctlThread = ContextID.ioctl

extension VirtualMachine {
  /// Commits a plan the way the ioctl's thread does when nothing else runs: `slots_lock` is
  /// taken around the commit and dropped after it. A delete or move is invalidated and its
  /// slot zapped first (`kvm_invalidate_memslot()`, `kvm_arch_flush_shadow_memslot()`).
  @discardableResult
  mutating func commitSetUserMemoryRegion2(_ plan: MemslotPlan, binding: DmaBufBinding? = nil) throws -> MemslotCommit {
    try lockSlots(ioctlThread)
    if let old = plan.old, plan.change == .delete || plan.change == .move {
      invalidateMemslot(old.key)
      try flushShadowMemslot(old.gfns, ctx: ioctlThread)
    }
    let commit = try commitSetUserMemoryRegion2(plan, binding: binding, ctx: ioctlThread)
    try unlockSlots(ioctlThread)
    return commit
  }
}
