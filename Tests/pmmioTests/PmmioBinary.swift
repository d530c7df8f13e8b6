import Foundation
import Testing

/// The built `pmmio` binary: next to the test bundle in `.build/<config>/`.
func pmmioURL() -> URL? {
  var candidates = [Bundle.main.bundleURL, Bundle.main.bundleURL.deletingLastPathComponent(),
                    URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()]
  // Fallback: the package's own .build/debug, found from this file's path.
  let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
  candidates.append(root.appendingPathComponent(".build/debug"))
  return candidates.map { $0.appendingPathComponent("pmmio") }
    .first { FileManager.default.isExecutableFile(atPath: $0.path) }
}

struct Outcome {
  var status: Int32
  var stdout: String
  var stderr: String
}

/// Runs the built `pmmio` with `arguments`, feeding it `stdin` (nothing: /dev/null).
func pmmio(_ arguments: [String], stdin: Data? = nil) throws -> Outcome {
  let url = try #require(pmmioURL(), "pmmio binary not found next to the tests")
  let process = Process()
  process.executableURL = url
  process.arguments = arguments
  let out = Pipe(), err = Pipe()
  process.standardOutput = out
  process.standardError = err
  let input = Pipe()
  process.standardInput = stdin == nil ? FileHandle.nullDevice : input
  try process.run()
  if let stdin {
    // A writer thread: the child may fill its output pipes before reading all of stdin.
    let writer = input.fileHandleForWriting
    Thread.detachNewThread {
      writer.write(stdin)
      try? writer.close()
    }
  }
  // Read before waiting: a full pipe would otherwise block the child.
  let stdout = out.fileHandleForReading.readDataToEndOfFile()
  let stderr = err.fileHandleForReading.readDataToEndOfFile()
  process.waitUntilExit()
  return Outcome(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                 stderr: String(decoding: stderr, as: UTF8.self))
}
