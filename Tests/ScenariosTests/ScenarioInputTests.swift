import Testing
import Foundation
@testable import Scenarios

/// Reading a scenario's bytes: every failure in words, with a position where there is one.
@Suite struct ScenarioInputTests {
  @Test("the first byte that is not UTF-8 is reported at its line and column", arguments: [
    ([0x61, 0xFF], 1, 2, 0xFF),
    (Array("steps: []\n# caf".utf8) + [0xE9, 0x0A], 2, 6, 0xE9),
    (Array("é\n\n  ".utf8) + [0xC3, 0x28], 3, 3, 0xC3),   // a lead byte whose follower is ASCII
  ] as [([UInt8], Int, Int, UInt8)])
  func badUTF8(bytes: [UInt8], line: Int, column: Int, byte: UInt8) {
    do {
      _ = try ScenarioInput.decode(bytes, file: "f.yaml")
      Issue.record("decoded")
    } catch {
      #expect(error.position == SourcePosition(file: "f.yaml", line: line, column: column))
      #expect(error.message.hasPrefix("byte 0x\(String(byte, radix: 16)) is not UTF-8"))
    }
  }

  @Test func goodUTF8IsTheText() throws {
    #expect(try ScenarioInput.decode(Array("name: café\n".utf8), file: "f") == "name: café\n")
  }

  @Test("whole-file failures name the file only", arguments: [
    ("/nonexistent/x.yaml", "/nonexistent/x.yaml: no such file"),
    ("/", "/: is a directory, not a scenario file"),
    ("/dev/null", "/dev/null: empty scenario: no bytes to read (expected a YAML mapping with 'steps')"),
    ("", "'': no such file (the path is empty)"),
  ])
  func wholeFile(path: String, message: String) {
    do {
      _ = try ScenarioInput.read(path)
      Issue.record("read \(path)")
    } catch {
      #expect(error.position == nil)
      #expect(error.description == message)
    }
  }

  @Test func aPlainFileIsRead() throws {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("pmmio-input-\(UUID().uuidString).yaml")
    try "steps: []\n".write(to: url, atomically: false, encoding: .utf8)
    let input = try ScenarioInput.read(url.path)
    #expect(input.text == "steps: []\n")
    #expect(input.file == url.path)
  }
}
