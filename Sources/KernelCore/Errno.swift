/// A Linux error number, as the kernel returns it (negated) from a syscall or ioctl.
///
/// Values are the x86-64 Linux ones from `include/uapi/asm-generic/errno-base.h` and
/// `errno.h`. Every member's doc line gives the C spelling so it can be grepped.
///
/// An errno may carry a ``Refusal``: the kernel function and the check that refused the call
/// (`throw .EINVAL.because("vfio_pci_core_feature_dma_buf", "nr_ranges is 0")`). The reason
/// is an observation, like a trace line: it takes no part in `==` or hashing, so `.EINVAL`
/// with and without a reason compare equal.
@frozen
public struct Errno: RawRepresentable, Hashable, Sendable, Error, CustomStringConvertible {
  public let rawValue: Int32
  /// Why the call was refused, when the refusing code said so.
  public var reason: Refusal?
  @inlinable public init(rawValue: Int32) { self.rawValue = rawValue; reason = nil }

  @inlinable public static func == (a: Errno, b: Errno) -> Bool { a.rawValue == b.rawValue }
  @inlinable public func hash(into hasher: inout Hasher) { hasher.combine(rawValue) }

  /// This errno with the reason `function: check`, in the kernel's words.
  @inlinable public func because(_ function: StaticString, _ check: @autoclosure () -> String) -> Errno {
    var copy = self
    copy.reason = Refusal(function: function, check: check())
    return copy
  }

  /// The corresponding C value is `EPERM`.
  public static let EPERM = Errno(rawValue: 1)
  /// The corresponding C value is `ENOENT`.
  public static let ENOENT = Errno(rawValue: 2)
  /// The corresponding C value is `EINTR`.
  public static let EINTR = Errno(rawValue: 4)
  /// The corresponding C value is `EIO`.
  public static let EIO = Errno(rawValue: 5)
  /// The corresponding C value is `ENXIO`.
  public static let ENXIO = Errno(rawValue: 6)
  /// The corresponding C value is `E2BIG`.
  public static let E2BIG = Errno(rawValue: 7)
  /// The corresponding C value is `EBADF`.
  public static let EBADF = Errno(rawValue: 9)
  /// The corresponding C value is `EAGAIN`.
  public static let EAGAIN = Errno(rawValue: 11)
  /// The corresponding C value is `ENOMEM`.
  public static let ENOMEM = Errno(rawValue: 12)
  /// The corresponding C value is `EACCES`.
  public static let EACCES = Errno(rawValue: 13)
  /// The corresponding C value is `EFAULT`.
  public static let EFAULT = Errno(rawValue: 14)
  /// The corresponding C value is `EBUSY`.
  public static let EBUSY = Errno(rawValue: 16)
  /// The corresponding C value is `EEXIST`.
  public static let EEXIST = Errno(rawValue: 17)
  /// The corresponding C value is `ENODEV`.
  public static let ENODEV = Errno(rawValue: 19)
  /// The corresponding C value is `EINVAL`.
  public static let EINVAL = Errno(rawValue: 22)
  /// The corresponding C value is `EMFILE`.
  public static let EMFILE = Errno(rawValue: 24)
  /// The corresponding C value is `ENOTTY`.
  public static let ENOTTY = Errno(rawValue: 25)
  /// The corresponding C value is `ENOSPC`.
  public static let ENOSPC = Errno(rawValue: 28)
  /// The corresponding C value is `ESPIPE`.
  public static let ESPIPE = Errno(rawValue: 29)
  /// The corresponding C value is `ERANGE`.
  public static let ERANGE = Errno(rawValue: 34)
  /// The corresponding C value is `ENOSYS`.
  public static let ENOSYS = Errno(rawValue: 38)
  /// The corresponding C value is `EOVERFLOW`.
  public static let EOVERFLOW = Errno(rawValue: 75)
  /// The corresponding C value is `EOPNOTSUPP`.
  public static let EOPNOTSUPP = Errno(rawValue: 95)
  /// The corresponding C value is `ETIMEDOUT`.
  public static let ETIMEDOUT = Errno(rawValue: 110)
  /// The corresponding C value is `EHWPOISON`.
  public static let EHWPOISON = Errno(rawValue: 133)

  /// Every errno this project knows, by C name: the scenario format and `--json` use these names.
  public static let allNamed: [(name: String, errno: Errno)] = [
    ("EPERM", .EPERM), ("ENOENT", .ENOENT), ("EINTR", .EINTR), ("EIO", .EIO), ("ENXIO", .ENXIO),
    ("E2BIG", .E2BIG), ("EBADF", .EBADF), ("EAGAIN", .EAGAIN), ("ENOMEM", .ENOMEM),
    ("EACCES", .EACCES), ("EFAULT", .EFAULT), ("EBUSY", .EBUSY), ("EEXIST", .EEXIST),
    ("ENODEV", .ENODEV), ("EINVAL", .EINVAL), ("EMFILE", .EMFILE), ("ENOTTY", .ENOTTY),
    ("ENOSPC", .ENOSPC), ("ESPIPE", .ESPIPE), ("ERANGE", .ERANGE), ("ENOSYS", .ENOSYS), ("EOVERFLOW", .EOVERFLOW),
    ("EOPNOTSUPP", .EOPNOTSUPP), ("ETIMEDOUT", .ETIMEDOUT), ("EHWPOISON", .EHWPOISON),
  ]

  /// Looks an errno up by its C name (`"EINVAL"`); `nil` for a name this project does not know.
  public init?(name: String) {
    guard let hit = Errno.allNamed.first(where: { $0.name == name }) else { return nil }
    self = hit.errno
  }

  /// The C name (`EINVAL`), or `errno N` for a value without a name here.
  public var name: String {
    Errno.allNamed.first(where: { $0.errno == self })?.name ?? "errno \(rawValue)"
  }

  public var description: String { name }
}

/// The kernel (or TDX module) function that refused a call and the check that did it, as a
/// kernel engineer would name them: `__kvm_set_memory_region: overlaps slot 2 [0x80000000,
/// +0x200000)`.
public struct Refusal: Hashable, Sendable, CustomStringConvertible {
  /// The C function (or SEAMCALL leaf name) whose check failed.
  public let function: String
  /// The check, in the kernel's words.
  public let check: String
  @inlinable public init(function: StaticString, check: String) {
    self.function = function.description
    self.check = check
  }
  public init(function: String, check: String) { self.function = function; self.check = check }
  public var description: String { "\(function): \(check)" }
}
