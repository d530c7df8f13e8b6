import CKVMShim
import Glibc
import KernelCore
import KVM

/// A VM fd from `KVM_CREATE_VM` (rust-vmm's `VmFd`). Closed exactly once, on release.
///
/// `Sendable`: memslot ioctls may come from any thread while a vCPU runs, as they do when a
/// revoke deletes a slot under a running guest.
public final class VMHandle: Sendable {
  /// The VM file descriptor.
  public let fd: Int32
  /// Kept so `KVM_GET_VCPU_MMAP_SIZE` stays reachable for `createVCPU`.
  public let system: KVMSystem
  /// Whether `KVM_SET_USER_MEMORY_REGION2` exists here (`KVM_CAP_USER_MEMORY2` on the VM).
  public let hasUserMemory2: Bool

  init(fd: Int32, system: KVMSystem) {
    self.fd = fd
    self.system = system
    self.hasUserMemory2 = ((try? kvmIoctl(fd, ckvm_KVM_CHECK_EXTENSION,
      value: UInt(KVMCapability.userMemory2.rawValue))) ?? 0) > 0
  }

  deinit { close(fd) }

  /// `KVM_CHECK_EXTENSION` on the VM fd: the answer for this VM's type.
  public func checkExtension(_ capability: KVMCapability) throws(Errno) -> Int32 {
    try kvmIoctl(fd, ckvm_KVM_CHECK_EXTENSION, value: UInt(bitPattern: Int(capability.rawValue)))
  }

  /// `KVM_SET_USER_MEMORY_REGION2`, or `KVM_SET_USER_MEMORY_REGION` where the host lacks
  /// `KVM_CAP_USER_MEMORY2` (then `.guestMemfd` cannot be expressed: `EINVAL`). The struct is
  /// the model's own mirror of `kvm_userspace_memory_region2` (KVM's), field for field.
  ///
  /// - Throws: as `kvm_set_memory_region()` in `virt/kvm/kvm_main.c`: `EINVAL` for unknown flags,
  ///   misalignment, a bad slot id or a changed guest_memfd slot; `EEXIST` for an overlap; `EBADF`
  ///   for a bad guest_memfd.
  public func setUserMemoryRegion2(_ region: UserspaceMemoryRegion2) throws(Errno) {
    if hasUserMemory2 {
      var r = kvm_userspace_memory_region2(region)
      _ = try kvmIoctl(fd, ckvm_KVM_SET_USER_MEMORY_REGION2, &r)
    } else {
      if MemslotFlags(rawValue: region.flags).contains(.guestMemfd) { throw .EINVAL }
      var r = kvm_userspace_memory_region(
        slot: region.slot, flags: region.flags,
        guest_phys_addr: region.guestPhysAddr, memory_size: region.memorySize,
        userspace_addr: region.userspaceAddr)
      _ = try kvmIoctl(fd, ckvm_KVM_SET_USER_MEMORY_REGION, &r)
    }
  }

  /// `KVM_CREATE_GUEST_MEMFD`: a guest_memfd of `size` bytes with `GUEST_MEMFD_FLAG_*` `flags`.
  /// The caller owns (and closes) the returned fd.
  ///
  /// - Throws: `ENOTTY` where the ioctl does not exist; `EINVAL` for flags the VM type refuses or a
  ///   size that is zero or not page aligned (`kvm_gmem_create()`, `virt/kvm/guest_memfd.c`).
  public func createGuestMemfd(size: UInt64, flags: UInt64) throws(Errno) -> Int32 {
    var g = kvm_create_guest_memfd()
    g.size = size
    g.flags = flags
    return try kvmIoctl(fd, ckvm_KVM_CREATE_GUEST_MEMFD, &g)
  }

  /// `KVM_CREATE_VCPU` with id `id`, then `KVM_GET_VCPU_MMAP_SIZE` and the `kvm_run` mapping.
  ///
  /// - Throws: `EEXIST` for an id in use, `EINVAL` past `KVM_MAX_VCPU_IDS`; the mapping's errno.
  public func createVCPU(id: UInt = 0) throws(Errno) -> VCPUHandle {
    let size = try system.vcpuMmapSize()
    let vcpufd = try kvmIoctl(fd, ckvm_KVM_CREATE_VCPU, value: id)
    guard let map = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpufd, 0),
      map != MAP_FAILED
    else {
      let e = Errno(rawValue: errno)
      close(vcpufd)
      throw e
    }
    return VCPUHandle(fd: vcpufd, run: map, runSize: size, vm: self)
  }
}
