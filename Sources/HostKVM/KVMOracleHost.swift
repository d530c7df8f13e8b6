import CKVMShim
import Glibc
import KernelCore
import KVM

/// One call the fuzz oracle (`pmmio fuzz --oracle kvm`) sends to this machine's `/dev/kvm`, with
/// real fds. The model gets the same call as an ``Operation``; the answers are compared.
public enum KVMOracleCall: Hashable, Sendable {
  /// `KVM_CREATE_VM` with machine type `type`.
  case createVM(type: UInt)
  /// `KVM_CREATE_VCPU`.
  case createVCPU(vm: Int32, id: UInt)
  /// `KVM_SET_USER_MEMORY_REGION` (`struct kvm_userspace_memory_region`, no guest_memfd fields).
  case setUserMemoryRegion(vm: Int32, region: UserspaceMemoryRegion2)
  /// `KVM_SET_USER_MEMORY_REGION2`.
  case setUserMemoryRegion2(vm: Int32, region: UserspaceMemoryRegion2)
  /// `KVM_CREATE_GUEST_MEMFD`.
  case createGuestMemfd(vm: Int32, size: UInt64, flags: UInt64)
  /// `KVM_SET_MEMORY_ATTRIBUTES`.
  case setMemoryAttributes(vm: Int32, address: UInt64, size: UInt64, attributes: UInt64, flags: UInt64)
  /// `KVM_CHECK_EXTENSION` on a VM fd, or on `/dev/kvm` when `fd` is nil.
  case checkExtension(fd: Int32?, capability: Int32)
  /// `close(2)` of an fd the oracle opened.
  case close(fd: Int32)

  /// The ioctl's name, for reports.
  public var name: String {
    switch self {
    case .createVM: "KVM_CREATE_VM"
    case .createVCPU: "KVM_CREATE_VCPU"
    case .setUserMemoryRegion: "KVM_SET_USER_MEMORY_REGION"
    case .setUserMemoryRegion2: "KVM_SET_USER_MEMORY_REGION2"
    case .createGuestMemfd: "KVM_CREATE_GUEST_MEMFD"
    case .setMemoryAttributes: "KVM_SET_MEMORY_ATTRIBUTES"
    case .checkExtension: "KVM_CHECK_EXTENSION"
    case .close: "close"
    }
  }
}

/// What the running kernel's KVM offers, read with `KVM_CHECK_EXTENSION` (and, for the largest
/// GFN a slot may reach, found by trying slots on a probe VM).
public struct KVMHostCapabilities: Hashable, Sendable, Codable {
  /// `uname -r`.
  public var release: String
  /// `KVM_CAP_MULTI_ADDRESS_SPACE` on `/dev/kvm` (0: one address space, no SMM).
  public var addressSpaces: Int32
  /// `KVM_CAP_VM_TYPES`: a mask of `1 << type`.
  public var vmTypes: Int32
  /// `KVM_CAP_MEMORY_ATTRIBUTES`.
  public var memoryAttributes: Int32
  /// `KVM_CAP_USER_MEMORY2`, `KVM_CAP_GUEST_MEMFD`, `KVM_CAP_GUEST_MEMFD_FLAGS`.
  public var userMemory2: Int32
  public var guestMemfd: Int32
  public var guestMemfdFlags: Int32
  /// `KVM_CAP_NR_MEMSLOTS` and `KVM_CAP_MAX_VCPU_ID`.
  public var memslots: Int32
  public var maxVCPUID: Int32
  /// The largest GFN a one-page slot of a default VM may start at (`kvm_mmu_max_gfn()`), found
  /// by bisection; `nil` when the probe could not run.
  public var maxGFN: UInt64?
}

/// The real side of the oracle: `/dev/kvm`, every fd a sequence opened (closed at the end, or
/// when the sequence closes it), and user memory to point RAM slots at.
///
/// Only fds this host opened are ever closed: a close of any other number could be the
/// process's own file.
public final class KVMOracleHost {
  public let system: KVMSystem
  private var opened: Set<Int32> = []

  /// Opens `/dev/kvm`. - Throws: as `open(2)` (`ENOENT` where there is no KVM).
  public init() throws(Errno) {
    system = try KVMSystem()
  }

  deinit { closeAll() }

  /// Whether `fd` is one this host opened and has not closed.
  public func isOpen(_ fd: Int32) -> Bool { opened.contains(fd) }

  /// Sends `call`: its result (an fd or a value) or the errno.
  public func perform(_ call: KVMOracleCall) -> Result<Int32, Errno> {
    do throws(Errno) {
      switch call {
      case .createVM(let type):
        return .success(remember(try kvmIoctl(system.fd, ckvm_KVM_CREATE_VM, value: type)))
      case .createVCPU(let vm, let id):
        return .success(remember(try kvmIoctl(vm, ckvm_KVM_CREATE_VCPU, value: id)))
      case .setUserMemoryRegion(let vm, let region):
        var r = kvm_userspace_memory_region(slot: region.slot, flags: region.flags, guest_phys_addr: region.guestPhysAddr,
                                            memory_size: region.memorySize, userspace_addr: region.userspaceAddr)
        return .success(try kvmIoctl(vm, ckvm_KVM_SET_USER_MEMORY_REGION, &r))
      case .setUserMemoryRegion2(let vm, let region):
        var r = kvm_userspace_memory_region2(region)
        return .success(try kvmIoctl(vm, ckvm_KVM_SET_USER_MEMORY_REGION2, &r))
      case .createGuestMemfd(let vm, let size, let flags):
        var g = kvm_create_guest_memfd()
        g.size = size
        g.flags = flags
        return .success(remember(try kvmIoctl(vm, ckvm_KVM_CREATE_GUEST_MEMFD, &g)))
      case .setMemoryAttributes(let vm, let address, let size, let attributes, let flags):
        var a = kvm_memory_attributes(address: address, size: size, attributes: attributes, flags: flags)
        return .success(try kvmIoctl(vm, ckvm_KVM_SET_MEMORY_ATTRIBUTES, &a))
      case .checkExtension(let fd, let capability):
        return .success(try kvmIoctl(fd ?? system.fd, ckvm_KVM_CHECK_EXTENSION, value: UInt(bitPattern: Int(capability))))
      case .close(let fd):
        guard opened.remove(fd) != nil else { return .failure(.EBADF) }
        return Glibc.close(fd) == 0 ? .success(0) : .failure(Errno(rawValue: errno))
      }
    } catch {
      return .failure(error)
    }
  }

  private func remember(_ fd: Int32) -> Int32 {
    opened.insert(fd)
    return fd
  }

  /// Closes every fd this host opened.
  public func closeAll() {
    for fd in opened { Glibc.close(fd) }
    opened = []
  }

  /// `KVM_CHECK_EXTENSION` on `/dev/kvm`, 0 when it fails.
  public func capability(_ number: Int32) -> Int32 {
    (try? kvmIoctl(system.fd, ckvm_KVM_CHECK_EXTENSION, value: UInt(bitPattern: Int(number)))) ?? 0
  }

  /// The kernel's capabilities, and the largest GFN a slot may reach (`userspace` is a
  /// page-aligned address of user memory for the probe's slot).
  public func capabilities(userspace: UInt64) -> KVMHostCapabilities {
    var u = utsname()
    uname(&u)
    let release = withUnsafeBytes(of: &u.release) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
    return KVMHostCapabilities(
      release: release, addressSpaces: capability(118), vmTypes: capability(235), memoryAttributes: capability(233),
      userMemory2: capability(231), guestMemfd: capability(234), guestMemfdFlags: capability(244),
      memslots: capability(10), maxVCPUID: capability(128), maxGFN: probeMaxGFN(userspace: userspace))
  }

  /// The largest GFN at which `KVM_SET_USER_MEMORY_REGION2` accepts a one-page slot of a
  /// default VM: `kvm_mmu_max_gfn()`, which user space cannot read directly. Bisection on a
  /// probe VM (each accepted slot deleted at once), about 80 ioctls.
  public func probeMaxGFN(userspace: UInt64) -> UInt64? {
    guard case .success(let vm) = perform(.createVM(type: 0)) else { return nil }
    defer { _ = perform(.close(fd: vm)) }
    func fits(_ gfn: UInt64) -> Bool {
      let region = UserspaceMemoryRegion2(slot: 0, guestPhysAddr: gfn << 12, memorySize: 0x1000, userspaceAddr: userspace)
      guard case .success = perform(.setUserMemoryRegion2(vm: vm, region: region)) else { return false }
      var delete = region
      delete.memorySize = 0
      _ = perform(.setUserMemoryRegion2(vm: vm, region: delete))
      return true
    }
    guard fits(0) else { return nil }
    var lo: UInt64 = 0, hi: UInt64 = 1 << 52   // fits(lo), !fits(hi): GPAs end below 2^64
    while hi - lo > 1 {
      let mid = lo + (hi - lo) / 2
      if fits(mid) { lo = mid } else { hi = mid }
    }
    return lo
  }
}

/// User memory for the oracle's RAM slots: a read-write mapping, a read-only one and an unmapped
/// hole, each `size` bytes, at real addresses of this process. KVM does not look at the mapping
/// when a slot is made (only at the address's alignment and `access_ok()`), so all three must be
/// accepted alike; the model sees only the numbers.
public final class KVMOracleUserMemory {
  public let size: Int
  public let readWrite: UInt64
  public let readOnly: UInt64
  public let unmapped: UInt64
  private let base: UnsafeMutableRawPointer

  /// Maps `3 * size` bytes and shapes them. - Throws: `mmap`'s errno.
  public init(size: Int = 0x100_0000) throws(Errno) {
    self.size = size
    guard let p = mmap(nil, 3 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
          p != MAP_FAILED else { throw Errno(rawValue: errno) }
    base = p
    let start = UInt64(UInt(bitPattern: p))
    readWrite = start
    readOnly = start + UInt64(size)
    unmapped = start + 2 * UInt64(size)
    mprotect(p + size, size, PROT_READ)
    munmap(p + 2 * size, size)
  }

  deinit { munmap(base, 2 * size) }
}

extension kvm_userspace_memory_region2 {
  /// The C struct of the model's mirror, field for field (the padding as the model has it).
  init(_ region: UserspaceMemoryRegion2) {
    self.init()
    slot = region.slot
    flags = region.flags
    guest_phys_addr = region.guestPhysAddr
    memory_size = region.memorySize
    userspace_addr = region.userspaceAddr
    guest_memfd_offset = region.guestMemfdOffset
    guest_memfd = region.guestMemfd
    pad1 = region.pad1
  }
}
