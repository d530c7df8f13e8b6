#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Reports

/// Reads a scenario's text from a path the user gave: a plain file, `-` for standard input, or
/// any file that can be read front to back (`/dev/stdin`, a FIFO, `/dev/null`).
///
/// Every failure is a ``ScenarioError`` in plain words, with the position of the first bad
/// byte where there is one: no Foundation error text reaches the user.
public enum ScenarioInput {
  /// The file name standard input is reported as.
  public static let standardInputName = "<stdin>"
  /// A scenario is a page of YAML; anything this large is not one (and `/dev/zero` never ends).
  public static let maximumBytes = 16 << 20

  /// The scenario text at `path` and the name positions in it carry. `-` is standard input; a
  /// bare name that is no file in this folder is the built-in scenario of that name.
  /// - Throws: ``ScenarioError`` for a missing file, a directory, an unreadable file, empty
  ///   input, input past ``maximumBytes``, or bytes that are not UTF-8 (at the first bad byte).
  public static func read(_ path: String) throws(ScenarioError) -> (text: String, file: String) {
    if path == "-" {
      let bytes = try readAll(fd: STDIN_FILENO, file: standardInputName)
      return (try decode(bytes, file: standardInputName), standardInputName)
    }
    guard !path.isEmpty else { throw ScenarioError(file: "''", "no such file (the path is empty)") }
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
      let code = errno
      // A bare name that is no file here names a built-in scenario (`pmmio scenarios`).
      if code == ENOENT, !path.contains("/"), let yaml = BuiltinScenarios.named(path) { return (yaml, path) }
      throw ScenarioError(file: path, openFailure(code))
    }
    defer { close(fd) }
    var info = stat()
    if fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
      throw ScenarioError(file: path, "is a directory, not a scenario file")
    }
    let bytes = try readAll(fd: fd, file: path)
    return (try decode(bytes, file: path), path)
  }

  /// Why `open()` failed, in words.
  static func openFailure(_ code: Int32) -> String {
    switch code {
    case ENOENT: "no such file"
    case EACCES, EPERM: "permission denied"
    case ENOTDIR: "a directory in the path is not a directory"
    case ELOOP: "too many symbolic links in the path"
    case ENAMETOOLONG: "the path is too long"
    default: "cannot open: \(systemMessage(code))"
    }
  }

  /// Reads `fd` to its end, retrying interrupted reads.
  static func readAll(fd: Int32, file: String) throws(ScenarioError) -> [UInt8] {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 << 10)
    while true {
      let n = chunk.withUnsafeMutableBytes { systemRead(fd, $0.baseAddress, $0.count) }
      if n < 0 {
        let code = errno
        if code == EINTR { continue }
        if code == EISDIR { throw ScenarioError(file: file, "is a directory, not a scenario file") }
        throw ScenarioError(file: file, "cannot read: \(systemMessage(code))")
      }
      if n == 0 { break }
      bytes.append(contentsOf: chunk[..<n])
      guard bytes.count <= maximumBytes else {
        throw ScenarioError(file: file, "larger than \(maximumBytes >> 20) MiB: not a scenario")
      }
    }
    guard !bytes.isEmpty else {
      throw ScenarioError(file: file, "empty scenario: no bytes to read (expected a YAML mapping with 'steps')")
    }
    return bytes
  }

  /// The bytes as text. - Throws: the `line:column` of the first byte that is not UTF-8.
  static func decode(_ bytes: [UInt8], file: String) throws(ScenarioError) -> String {
    var line = 1, column = 1, offset = 0
    var iterator = bytes.makeIterator()
    var parser = Unicode.UTF8.ForwardParser()
    while true {
      switch parser.parseScalar(from: &iterator) {
      case .valid(let encoded):
        if encoded.count == 1, encoded.first == UInt8(ascii: "\n") {
          line += 1; column = 1
        } else {
          column += 1
        }
        offset += encoded.count
      case .error(_):
        let byte = bytes[offset]
        throw ScenarioError(SourcePosition(file: file, line: line, column: column),
                            "byte 0x\(String(byte, radix: 16)) is not UTF-8: a scenario is UTF-8 text "
                              + "(a Latin-1 file converts with 'iconv -f latin1 -t utf-8')")
      case .emptyInput:
        return String(decoding: bytes, as: UTF8.self)
      }
    }
  }
}

/// `read(2)`; named apart so it cannot be taken for ``ScenarioInput/read(_:)``.
private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int {
  read(fd, buffer, count)
}
