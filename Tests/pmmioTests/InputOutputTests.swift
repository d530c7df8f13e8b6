import Foundation
import Testing

/// A fresh directory for one test.
func scratchDirectory() throws -> String {
  let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pmmio-io-\(UUID().uuidString)").path
  try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  return dir
}

private let passing = "steps: [ { op: vfio.close, fd: 99, expect: { errno: EBADF } } ]\n"

/// Reading a scenario: every kind of path gets its own plain answer; no Foundation error text.
@Suite struct ScenarioReadingTests {
  @Test func standardInputIsRead() throws {
    let result = try pmmio(["run", "-"], stdin: Data(passing.utf8))
    #expect(result.status == 0)
    #expect(result.stdout.contains("scenario <stdin>"))
  }

  @Test func devStdinIsRead() throws {
    let result = try pmmio(["run", "/dev/stdin"], stdin: Data(passing.utf8))
    #expect(result.status == 0, "\(result.stderr)")
  }

  @Test("each unreadable input says why, and exits 2", arguments: [
    ("/dev/null", "/dev/null: empty scenario: no bytes to read (expected a YAML mapping with 'steps')"),
    ("/nonexistent/pmmio.yaml", "/nonexistent/pmmio.yaml: no such file"),
    ("/tmp", "/tmp: is a directory, not a scenario file"),
    ("/etc/passwd/x.yaml", "/etc/passwd/x.yaml: a directory in the path is not a directory"),
  ])
  func unreadable(path: String, message: String) throws {
    let result = try pmmio(["run", path])
    #expect(result.status == 2)
    #expect(result.stderr == message + "\n")
    #expect(!result.stderr.contains("NSCocoaErrorDomain") && !result.stderr.contains("permission"))
  }

  @Test func latin1IsReportedAtItsByte() throws {
    let dir = try scratchDirectory()
    let path = dir + "/latin1.yaml"
    // "café" in Latin-1 on line 1: the 0xE9 is the 10th character.
    var bytes = Array("name: caf".utf8) + [0xE9] + Array("\n".utf8) + Array(passing.utf8)
    bytes.append(contentsOf: [])
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    let result = try pmmio(["run", path])
    #expect(result.status == 2)
    #expect(result.stderr == "\(path):1:10: byte 0xe9 is not UTF-8: a scenario is UTF-8 text "
            + "(a Latin-1 file converts with 'iconv -f latin1 -t utf-8')\n")
  }

  @Test func emptyStandardInputIsAnEmptyScenario() throws {
    let result = try pmmio(["run", "-"], stdin: Data())
    #expect(result.status == 2)
    #expect(result.stderr == "<stdin>: empty scenario: no bytes to read (expected a YAML mapping with 'steps')\n")
  }
}

/// `--trace FORMAT PATH` writes in place: links are followed, FIFOs fed, `-` is stdout.
@Suite struct TraceOutputTests {
  @Test func symlinkTargetIsWritten() throws {
    let dir = try scratchDirectory()
    let target = dir + "/target.txt", link = dir + "/trace.txt"
    try "old\n".write(toFile: target, atomically: false, encoding: .utf8)
    try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
    let scenario = dir + "/s.yaml"
    try passing.write(toFile: scenario, atomically: false, encoding: .utf8)
    let result = try pmmio(["run", "--trace", "text", link, scenario])
    #expect(result.status == 0)
    #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == target, "the link is still a link")
    #expect(try String(contentsOfFile: target, encoding: .utf8).hasPrefix("# pmmio trace: scenario "))
  }

  @Test func fifoReaderGetsTheTrace() throws {
    let dir = try scratchDirectory()
    let fifo = dir + "/trace.fifo"
    #expect(mkfifo(fifo, 0o600) == 0)
    let scenario = dir + "/s.yaml"
    try passing.write(toFile: scenario, atomically: false, encoding: .utf8)
    let received = ReceivedBytes()
    let reader = Thread { received.set(FileHandle(forReadingAtPath: fifo)?.readDataToEndOfFile() ?? Data()) }
    reader.start()
    let result = try pmmio(["run", "--trace", "perfetto", fifo, scenario])
    #expect(result.status == 0)
    let trace = try JSONSerialization.jsonObject(with: received.wait()) as? [String: Any]
    #expect((trace?["traceEvents"] as? [Any])?.isEmpty == false)
    var info = stat()
    #expect(lstat(fifo, &info) == 0 && info.st_mode & S_IFMT == S_IFIFO, "still a FIFO")
  }

  @Test func dashIsStandardOutputInsteadOfTheReport() throws {
    let result = try pmmio(["run", "--trace", "text", "-"])
    #expect(result.status == 0)
    #expect(result.stdout.hasPrefix("# pmmio trace: scenario private-mmio-td, variant reviewed\n"))
    #expect(result.stdout.contains("ioctl vfio:open: open vfio-dev1 (file 1)  device=nic0 file=1\n"))
    #expect(!result.stdout.contains("summary:"))
  }

  @Test("outputs that would share a stream or file are refused", arguments: [
    ["run", "--json", "--trace", "text", "-"],
    ["run", "--trace", "text", "-", "--trace", "perfetto", "-"],
    ["run", "--trace", "text", "/tmp/t", "--trace", "perfetto", "/tmp/t"],
    ["run", "--trace", "text", "/dev/stdout", "--trace", "text", "-"],
    ["run", "--json", "--trace", "perfetto", "/dev/stdout"],
    ["show", "--json", "--svg", "-"],
  ])
  func conflicts(arguments: [String]) throws {
    let result = try pmmio(arguments)
    #expect(result.status == 2)
    #expect(result.stderr.contains("both write to"))
  }
}

final class ReceivedBytes: @unchecked Sendable {
  private let done = DispatchSemaphore(value: 0)
  private var data = Data()
  func set(_ value: Data) { data = value; done.signal() }
  func wait() -> Data { done.wait(); return data }
}
