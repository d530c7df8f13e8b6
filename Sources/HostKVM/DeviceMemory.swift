import CKVMShim
import Glibc
import KernelCore

/// What backs the BAR's memslot once it is mapped.
public enum BARBackingKind: String, Hashable, Sendable {
  /// A guest_memfd created on the VM (`KVM_CREATE_GUEST_MEMFD` with `GUEST_MEMFD_FLAG_MMAP |
  /// GUEST_MEMFD_FLAG_INIT_SHARED`), bound with `KVM_MEM_GUEST_MEMFD`.
  case guestMemfd = "guest_memfd"
  /// A memfd mapped into this process; the slot points at that mapping.
  case memfd = "memfd"
}

/// The emulated device's memory: the file whose pages the exporter's PFNs name (PFN N is page N).
///
/// The host keeps a mapping of it to complete trapped and first accesses and to plant the
/// sentinel; every access through it is a volatile 32-bit load or store, so it is safe to share
/// between the vCPU thread and a revoking thread.
public final class DeviceMemory: @unchecked Sendable {
  public let kind: BARBackingKind
  /// The backing file descriptor, closed exactly once on release.
  public let fd: Int32
  public let size: UInt64
  let base: UnsafeMutableRawPointer

  /// Creates the backing: a guest_memfd on `vm` when `preferGuestMemfd` and the VM reports the
  /// needed `KVM_CAP_GUEST_MEMFD_FLAGS`, else a memfd.
  init(size: UInt64, vm: VMHandle, preferGuestMemfd: Bool) throws(Errno) {
    var fd: Int32 = -1
    var kind = BARBackingKind.memfd
    let wanted = ckvm_GUEST_MEMFD_FLAG_MMAP | ckvm_GUEST_MEMFD_FLAG_INIT_SHARED
    if preferGuestMemfd, vm.hasUserMemory2,
      ((try? vm.checkExtension(.guestMemfd)) ?? 0) > 0,
      let flags = try? vm.checkExtension(.guestMemfdFlags), flags > 0,
      UInt64(flags) & wanted == wanted,
      let gfd = try? vm.createGuestMemfd(size: size, flags: wanted)
    {
      fd = gfd
      kind = .guestMemfd
    }
    if fd < 0 {
      fd = ckvm_memfd_create("pmmio-bar")
      if fd < 0 { throw Errno(rawValue: -fd) }
      if ftruncate(fd, off_t(size)) < 0 {
        let e = Errno(rawValue: errno)
        close(fd)
        throw e
      }
    }
    guard let map = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0),
      map != MAP_FAILED
    else {
      let e = Errno(rawValue: errno)
      close(fd)
      throw e
    }
    self.fd = fd
    self.kind = kind
    self.size = size
    self.base = map
  }

  deinit {
    munmap(base, Int(size))
    close(fd)
  }

  /// The host address of the mapping, for a memfd-backed slot's `userspace_addr`.
  var hostAddress: UInt64 { UInt64(UInt(bitPattern: base)) }

  /// A 32-bit load at `offset`; `nil` past the end.
  public func load32(offset: UInt64) -> UInt32? {
    guard offset <= size &- 4, size >= 4 else { return nil }
    return ckvm_load32(base + Int(offset))
  }

  /// A 32-bit store at `offset`; `false` past the end.
  @discardableResult
  public func store32(offset: UInt64, _ value: UInt32) -> Bool {
    guard offset <= size &- 4, size >= 4 else { return false }
    ckvm_store32(base + Int(offset), value)
    return true
  }

  /// An access of `length` (1, 2, 4 or 8) bytes; `nil` outside the memory.
  func read(offset: UInt64, length: Int) -> UInt64? {
    guard length > 0, length <= 8, offset <= size, UInt64(length) <= size - offset else { return nil }
    var v: UInt64 = 0
    let p = (base + Int(offset)).assumingMemoryBound(to: UInt8.self)
    for i in 0..<length { v |= UInt64(p[i]) << (8 * UInt64(i)) }
    return v
  }

  @discardableResult
  func write(offset: UInt64, length: Int, _ value: UInt64) -> Bool {
    guard length > 0, length <= 8, offset <= size, UInt64(length) <= size - offset else { return false }
    let p = (base + Int(offset)).assumingMemoryBound(to: UInt8.self)
    for i in 0..<length { p[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    return true
  }
}
