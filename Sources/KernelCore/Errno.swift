/// A Linux error number, as the kernel returns it (negated) from a syscall or ioctl.
///
/// Values are the x86-64 Linux ones from `include/uapi/asm-generic/errno-base.h` and
/// `errno.h`. Every member's doc line gives the C spelling so it can be grepped.
@frozen
public struct Errno: RawRepresentable, Hashable, Sendable, Error, CustomStringConvertible {
  public let rawValue: Int32
  @inlinable public init(rawValue: Int32) { self.rawValue = rawValue }

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
    ("ENOSPC", .ENOSPC), ("ERANGE", .ERANGE), ("ENOSYS", .ENOSYS), ("EOVERFLOW", .EOVERFLOW),
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
