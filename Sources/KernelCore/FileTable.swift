import HashTreeCollections

/// A file descriptor number in the model's single user-space process.
@frozen public struct FD: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
  public let rawValue: Int32
  @inlinable public init(rawValue: Int32) { self.rawValue = rawValue }
  @inlinable public init(_ raw: Int32) { rawValue = raw }
  @inlinable public static func < (a: FD, b: FD) -> Bool { a.rawValue < b.rawValue }
  public var description: String { "fd \(rawValue)" }
}

/// The process's file table: fd numbers to open files, as `struct files_struct`.
///
/// `File` is whatever the platform puts behind an fd (a VFIO device, a dma-buf, a VM …).
/// Numbers are allocated lowest-free first from 3 (0–2 are the standard streams), as
/// `alloc_fd()` does. Unknown or closed fds fail with `EBADF`, as `fdget()` does.
public struct FileTable<File: Hashable & Sendable>: Hashable, Sendable {
  /// Visible to inlined code only: `lookup`, the fd lookup every operation starts with, is
  /// inlined and specialized in its callers (unspecialized across modules it cost a fifth of
  /// a fault).
  @usableFromInline var files: TreeDictionary<FD, File> = [:]
  /// `files->next_fd`: no fd below it is free. A hint only (history, like the kernel's): it is
  /// outside `==` and hashing, so two tables with the same open files compare equal.
  private var nextFD: Int32 = 3
  /// Slots `install` has looked at so far: the work it did, for tests that count it.
  /// History, outside `==` and hashing like ``nextFD``.
  internal private(set) var slotsScanned = 0

  public init() {}

  /// `RLIMIT_NOFILE`'s usual soft limit: `install` fails with `EMFILE` past it.
  public static var limit: Int32 { 1024 }

  /// Installs `file` at the lowest free fd (`fd_install(get_unused_fd_flags(), file)`).
  ///
  /// As `alloc_fd()` does, the search starts at `next_fd`, below which every fd is taken, and
  /// `next_fd` moves past the fd handed out; `close` moves it back down. Opening n files one
  /// after another is O(n log n), not the O(n²) of a scan from fd 3 each time.
  /// - Throws: `EMFILE` when every fd below ``limit`` is taken.
  public mutating func install(_ file: File) throws(Errno) -> FD {
    var candidate = nextFD
    while candidate < Self.limit, files[FD(candidate)] != nil { candidate += 1; slotsScanned += 1 }
    slotsScanned += 1
    guard candidate < Self.limit else {
      throw .EMFILE.because("alloc_fd", "every fd below the process's limit of \(Self.limit) (RLIMIT_NOFILE) is open: "
                                        + "\(files.count) files and the 3 standard streams")
    }
    files[FD(candidate)] = file
    nextFD = candidate + 1
    return FD(candidate)
  }

  public static func == (a: FileTable, b: FileTable) -> Bool { a.files == b.files }
  public func hash(into hasher: inout Hasher) { hasher.combine(files) }

  /// The file behind `fd` (`fdget()`). - Throws: `EBADF` for an fd that is not open, with
  /// `fdget` as the refusing function; a caller that knows which kernel function looks the
  /// fd up says so with ``lookup(_:by:)``.
  @inlinable public func lookup(_ fd: FD) throws(Errno) -> File {
    try lookup(fd, by: "fdget")
  }

  /// The file behind `fd`, looked up by the kernel function `function` (`sys_ioctl`'s
  /// `fdget()`, `dma_buf_get()`'s `fget()` …). - Throws: `EBADF` for an fd that is not open,
  /// with `function` and the fd in the reason.
  @inlinable public func lookup(_ fd: FD, by function: StaticString) throws(Errno) -> File {
    guard let file = files[fd] else { throw Errno.EBADF.because(function, Self.notOpen(fd)) }
    return file
  }

  /// The file open at `fd`, or `nil`: for a look that is no kernel lookup (what a path may
  /// wait for, which parts of the machine a step touches), so no errno is built.
  @inlinable public subscript(fd: FD) -> File? { files[fd] }

  /// The check `fdget()`/`fget()` fails: no file at the fd.
  @inlinable public static func notOpen(_ fd: FD) -> String { "no file is open at \(fd)" }

  /// Removes `fd` from the table and returns what it referred to (`close_fd()`); the caller
  /// drops the file's reference. - Throws: `EBADF` for an fd that is not open
  /// (`sys_close`: `file_close_fd()` finds no file).
  public mutating func remove(_ fd: FD) throws(Errno) -> File {
    guard let file = files.removeValue(forKey: fd) else { throw Errno.EBADF.because("sys_close", Self.notOpen(fd)) }
    // __put_unused_fd(): the freed fd may be the lowest free one now.
    if fd.rawValue >= 3, fd.rawValue < nextFD { nextFD = fd.rawValue }
    return file
  }

  /// Every open fd with its file, in fd order.
  public var open: [(fd: FD, file: File)] {
    files.map { (fd: $0.key, file: $0.value) }.sorted { $0.fd < $1.fd }
  }

  /// How many fds refer to files satisfying `predicate` (for reference-count invariants).
  @inlinable public func count(where predicate: (File) -> Bool) -> Int {
    files.values.reduce(0) { predicate($1) ? $0 + 1 : $0 }
  }

  /// Whether some fd refers to a file satisfying `predicate`; stops at the first.
  @inlinable public func contains(where predicate: (File) -> Bool) -> Bool {
    files.values.contains(where: predicate)
  }

  public var isEmpty: Bool { files.isEmpty }
}
