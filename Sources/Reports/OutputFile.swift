#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes an output the user asked for (a trace, an SVG) to the path they named, in place.
///
/// The path is opened as `open(path, O_WRONLY | O_CREAT | O_TRUNC)` would open it in a shell
/// redirection: a symbolic link is followed and its target written, a FIFO's reader gets the
/// bytes, `/dev/stdout` stays the terminal or pipe it is. Nothing is written to a temporary
/// file and renamed over the path, which would replace a link, a FIFO or a device node with a
/// regular file. `-` is standard output.
public enum OutputFile {
  /// What the user could not be given, in words: `cannot write trace.txt: permission denied`.
  public struct Failure: Error, Hashable, Sendable, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "cannot write \(path): \(reason)" }
  }

  /// Writes `contents` to `path` (`-`: standard output).
  /// - Throws: ``Failure`` naming the path and why it could not be opened or written.
  public static func write(_ contents: String, to path: String) throws(Failure) {
    if path == "-" {
      try writeAll(contents, fd: STDOUT_FILENO, path: "standard output")
      return
    }
    guard !path.isEmpty else { throw Failure(path: "''", reason: "the path is empty") }
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o666)
    guard fd >= 0 else { throw Failure(path: path, reason: openFailure(errno)) }
    defer { close(fd) }
    try writeAll(contents, fd: fd, path: path)
  }

  /// Why `path` could not be written, found without writing it (for an output that is written
  /// only if there is something to write, such as a counterexample); `nil` when it looks
  /// writable. A later `write` can still fail.
  public static func unwritable(_ path: String) -> String? {
    guard !path.isEmpty else { return "the path is empty" }
    var info = stat()
    if stat(path, &info) == 0 {
      if (info.st_mode & S_IFMT) == S_IFDIR { return openFailure(EISDIR) }
      return access(path, W_OK) == 0 ? nil : openFailure(errno)
    }
    guard errno == ENOENT else { return openFailure(errno) }
    let directory = path.contains("/") ? String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]) : "."
    let parent = directory.isEmpty ? "/" : directory
    if stat(parent, &info) != 0 { return openFailure(errno) }
    if (info.st_mode & S_IFMT) != S_IFDIR { return openFailure(ENOTDIR) }
    return access(parent, W_OK) == 0 ? nil : openFailure(errno)
  }

  static func openFailure(_ code: Int32) -> String {
    switch code {
    case ENOENT: "no such directory"
    case EACCES, EPERM: "permission denied"
    case EISDIR: "is a directory"
    case ENOTDIR: "a directory in the path is not a directory"
    case EROFS: "read-only file system"
    case ENXIO: "a FIFO with no reader"
    default: systemMessage(code)
    }
  }

  /// `write(2)` until every byte is out, retrying interrupted and short writes.
  static func writeAll(_ contents: String, fd: Int32, path: String) throws(Failure) {
    let bytes = Array(contents.utf8)
    var done = 0
    while done < bytes.count {
      let n = bytes.withUnsafeBytes { raw -> Int in
        guard let base = raw.baseAddress else { return 0 }
        return systemWrite(fd, base + done, raw.count - done)
      }
      if n < 0 {
        let code = errno
        if code == EINTR { continue }
        throw Failure(path: path, reason: code == EPIPE ? "the reader went away" : systemMessage(code))
      }
      done += n
    }
  }
}

/// `strerror(code)`, lower-cased: the C library's words for a host errno, for messages that
/// name a file the user gave.
public func systemMessage(_ code: Int32) -> String {
  guard let text = strerror(code) else { return "errno \(code)" }
  return String(cString: text).lowercased()
}

private func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
  write(fd, buffer, count)
}
