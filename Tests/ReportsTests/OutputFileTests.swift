import Testing
import Foundation
@testable import Reports

/// `--trace` and `--svg` write in place: links are followed, FIFOs are fed, devices stay devices.
@Suite struct OutputFileTests {
  static func directory() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pmmio-out-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
  }

  @Test func symlinkIsFollowedAndItsTargetWritten() throws {
    let dir = try Self.directory()
    let target = dir + "/target.txt", link = dir + "/link.txt"
    try "old".write(toFile: target, atomically: false, encoding: .utf8)
    try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
    try OutputFile.write("new\n", to: link)
    #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == target)
    #expect(try String(contentsOfFile: target, encoding: .utf8) == "new\n")
  }

  @Test func fifoReaderGetsTheBytes() throws {
    let dir = try Self.directory()
    let fifo = dir + "/fifo"
    #expect(mkfifo(fifo, 0o600) == 0)
    let contents = String(repeating: "a line of trace\n", count: 10_000)   // past a pipe buffer
    let reader = Thread.detachNewThreadWithResult {
      FileHandle(forReadingAtPath: fifo)?.readDataToEndOfFile() ?? Data()
    }
    try OutputFile.write(contents, to: fifo)
    #expect(String(decoding: reader.wait(), as: UTF8.self) == contents)
    var info = stat()
    #expect(lstat(fifo, &info) == 0 && info.st_mode & S_IFMT == S_IFIFO, "still a FIFO")
  }

  @Test func existingFileIsTruncatedInPlace() throws {
    let dir = try Self.directory()
    let path = dir + "/trace.txt"
    try String(repeating: "x", count: 100).write(toFile: path, atomically: false, encoding: .utf8)
    var before = stat()
    #expect(stat(path, &before) == 0)
    try OutputFile.write("short\n", to: path)
    var after = stat()
    #expect(stat(path, &after) == 0)
    #expect(after.st_ino == before.st_ino, "same inode: written in place, not renamed over")
    #expect(try String(contentsOfFile: path, encoding: .utf8) == "short\n")
  }

  @Test("failures name the path and the reason in words", arguments: [
    ("/nonexistent-dir/trace.txt", "cannot write /nonexistent-dir/trace.txt: no such directory"),
    ("/", "cannot write /: is a directory"),
    ("", "cannot write '': the path is empty"),
  ])
  func failures(path: String, message: String) {
    #expect(throws: OutputFile.Failure.self) { try OutputFile.write("x", to: path) }
    do { try OutputFile.write("x", to: path) } catch { #expect(error.description == message) }
  }
}

/// A value computed on another thread, waited for.
final class ThreadResult<T: Sendable>: @unchecked Sendable {
  private let done = DispatchSemaphore(value: 0)
  private var value: T?
  func set(_ v: T) { value = v; done.signal() }
  func wait() -> T { done.wait(); return value! }
}

extension Thread {
  static func detachNewThreadWithResult<T: Sendable>(_ body: @escaping @Sendable () -> T) -> ThreadResult<T> {
    let result = ThreadResult<T>()
    Thread.detachNewThread { result.set(body()) }
    return result
  }
}
