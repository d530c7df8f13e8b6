import CKVMShim
import Glibc
import KernelCore

/// The one seam every KVM ioctl passes through: the result, or the errno as a value.
@inline(__always)
func kvmIoctl(_ fd: Int32, _ request: UInt, _ arg: UnsafeMutableRawPointer?) throws(Errno) -> Int32 {
  let r = ckvm_ioctl_ptr(fd, request, arg)
  if r < 0 { throw Errno(rawValue: -r) }
  return r
}

@inline(__always)
func kvmIoctl(_ fd: Int32, _ request: UInt, value: UInt) throws(Errno) -> Int32 {
  let r = ckvm_ioctl_val(fd, request, value)
  if r < 0 { throw Errno(rawValue: -r) }
  return r
}

/// A capability as `KVM_CHECK_EXTENSION` takes it; raw values are the uAPI `KVM_CAP_*` numbers
/// from `include/uapi/linux/kvm.h`.
@frozen
public struct KVMCapability: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: Int32
  public init(rawValue: Int32) { self.rawValue = rawValue }

  /// The corresponding C value is `KVM_CAP_USER_MEMORY`.
  public static let userMemory = KVMCapability(rawValue: 3)
  /// The corresponding C value is `KVM_CAP_NR_MEMSLOTS`.
  public static let nrMemslots = KVMCapability(rawValue: 10)
  /// The corresponding C value is `KVM_CAP_READONLY_MEM`.
  public static let readonlyMem = KVMCapability(rawValue: 81)
  /// The corresponding C value is `KVM_CAP_USER_MEMORY2` (Linux 6.8).
  public static let userMemory2 = KVMCapability(rawValue: 231)
  /// The corresponding C value is `KVM_CAP_GUEST_MEMFD` (Linux 6.8).
  public static let guestMemfd = KVMCapability(rawValue: 234)
  /// The corresponding C value is `KVM_CAP_VM_TYPES`: a bit mask of `1 << KVM_X86_*_VM`.
  public static let vmTypes = KVMCapability(rawValue: 235)
  /// The corresponding C value is `KVM_CAP_GUEST_MEMFD_FLAGS` (Linux 6.18): the
  /// `GUEST_MEMFD_FLAG_*` bits `KVM_CREATE_GUEST_MEMFD` accepts.
  public static let guestMemfdFlags = KVMCapability(rawValue: 244)

  public var description: String {
    switch self {
    case .userMemory: "KVM_CAP_USER_MEMORY"
    case .nrMemslots: "KVM_CAP_NR_MEMSLOTS"
    case .readonlyMem: "KVM_CAP_READONLY_MEM"
    case .userMemory2: "KVM_CAP_USER_MEMORY2"
    case .guestMemfd: "KVM_CAP_GUEST_MEMFD"
    case .vmTypes: "KVM_CAP_VM_TYPES"
    case .guestMemfdFlags: "KVM_CAP_GUEST_MEMFD_FLAGS"
    default: "KVM_CAP \(rawValue)"
    }
  }
}

/// An open `/dev/kvm`: the system fd the VM-independent ioctls go to (rust-vmm's `Kvm`).
///
/// The fd is closed exactly once, when the last reference goes away.
public final class KVMSystem: Sendable {
  /// The `/dev/kvm` file descriptor.
  public let fd: Int32

  /// Opens `/dev/kvm` read-write, close-on-exec.
  ///
  /// - Throws: `ENOENT` where there is no KVM, `EACCES` without permission, as `open(2)`.
  public init(path: String = "/dev/kvm") throws(Errno) {
    let fd = open(path, O_RDWR | O_CLOEXEC)
    if fd < 0 { throw Errno(rawValue: errno) }
    self.fd = fd
  }

  deinit { close(fd) }

  /// `KVM_GET_API_VERSION`: 12 on every kernel since 2.6.22 (`KVM_API_VERSION`).
  public func apiVersion() throws(Errno) -> Int32 {
    try kvmIoctl(fd, ckvm_KVM_GET_API_VERSION, value: 0)
  }

  /// `KVM_CHECK_EXTENSION` on the system fd: 0 when absent, otherwise a capability-specific value.
  public func checkExtension(_ capability: KVMCapability) throws(Errno) -> Int32 {
    try kvmIoctl(fd, ckvm_KVM_CHECK_EXTENSION, value: UInt(bitPattern: Int(capability.rawValue)))
  }

  /// `KVM_GET_VCPU_MMAP_SIZE`: the bytes to map from a vCPU fd (`struct kvm_run` and the pages
  /// after it).
  public func vcpuMmapSize() throws(Errno) -> Int {
    Int(try kvmIoctl(fd, ckvm_KVM_GET_VCPU_MMAP_SIZE, value: 0))
  }

  /// `KVM_CREATE_VM` with machine type `type` (0: `KVM_X86_DEFAULT_VM`).
  ///
  /// - Throws: `EINVAL` for a type the host does not offer; `ENOMEM`, `EMFILE` as the kernel does.
  public func createVM(type: UInt = 0) throws(Errno) -> VMHandle {
    let vmfd = try kvmIoctl(fd, ckvm_KVM_CREATE_VM, value: type)
    return VMHandle(fd: vmfd, system: self)
  }
}
