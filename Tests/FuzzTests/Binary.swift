import Foundation
import Testing

/// The built `pmmio` binary: next to the test bundle in `.build/<config>/`.
func pmmioURL() -> URL? {
  var candidates = [Bundle.main.bundleURL, Bundle.main.bundleURL.deletingLastPathComponent(),
                    URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()]
  let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
  candidates.append(root.appendingPathComponent(".build/debug"))
  return candidates.map { $0.appendingPathComponent("pmmio") }.first { FileManager.default.isExecutableFile(atPath: $0.path) }
}

struct Outcome {
  var status: Int32
  var stdout: String
  var stderr: String
}

/// Runs the built `pmmio` with `arguments`; its output is read while it runs.
func pmmio(_ arguments: [String]) throws -> Outcome {
  struct NoBinary: Error {}
  guard let url = pmmioURL() else {
    Issue.record("pmmio binary not found next to the tests")
    throw NoBinary()
  }
  let process = Process()
  process.executableURL = url
  process.arguments = arguments
  let out = Pipe(), err = Pipe()
  process.standardOutput = out
  process.standardError = err
  process.standardInput = FileHandle.nullDevice
  try process.run()
  let stdout = out.fileHandleForReading.readDataToEndOfFile()
  let stderr = err.fileHandleForReading.readDataToEndOfFile()
  process.waitUntilExit()
  return Outcome(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                 stderr: String(decoding: stderr, as: UTF8.self))
}
