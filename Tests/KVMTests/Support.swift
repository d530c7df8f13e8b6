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

extension VirtualMachine {
  /// Creates a guest_memfd of `size` on the VM (`KVM_CREATE_GUEST_MEMFD`'s checks and install).
  @discardableResult
  mutating func addGuestMemfd(size: UInt64 = 0x4000_0000, flags: GuestMemfdFlags = []) throws -> GuestMemfd {
    let file = try checkCreateGuestMemfd(KVMCreateGuestMemfdArgs(size: size, flags: flags.rawValue))
    installGuestMemfd(file)
    return file
  }

  /// A GUEST_MEMFD slot bound to `file` (a new guest_memfd of 1 GiB when nil), as the ioctl's
  /// thread commits it: prepare, `kvm_gmem_bind()`'s checks, commit.
  mutating func addGuestMemfdSlot(_ r: UserspaceMemoryRegion2, file: GuestMemfd? = nil,
                                  variant: Variant = .reviewed) throws {
    let gmem = try file ?? addGuestMemfd()
    let plan = try prepareSetUserMemoryRegion2(r, variant: variant)
    let bind = try checkGuestMemfdBind(plan, file: .guestMemfd(guestMemfds[gmem.id] ?? gmem))
    try lockSlots(ioctlThread)
    _ = try commitSetUserMemoryRegion2(plan, gmem: bind, ctx: ioctlThread)
    try unlockSlots(ioctlThread)
  }
}
