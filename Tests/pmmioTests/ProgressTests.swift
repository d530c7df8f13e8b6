import Foundation
import Glibc
import Testing
@testable import pmmio

/// Progress goes to a terminal only, and only for work that takes more than a second.
@Suite(.serialized) struct ProgressTests {
  /// Bytes written to the terminal side of a pseudo-terminal while `work` runs with a
  /// `Progress` on it.
  static func onTerminal(_ work: (TerminalProgress) -> Void) throws -> String {
    var primary: Int32 = -1, secondary: Int32 = -1
    #expect(openpty(&primary, &secondary, nil, nil, nil) == 0)
    defer { close(primary) }
    let progress = TerminalProgress("working", fd: secondary)
    #expect(progress.enabled)
    work(progress)
    progress.finish()
    close(secondary)
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = buffer.withUnsafeMutableBytes { read(primary, $0.baseAddress, $0.count) }
      if n <= 0 { break }
      bytes += buffer[..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  @Test func slowWorkShowsALineAndErasesIt() throws {
    let text = try Self.onTerminal { progress in
      progress.update("step 1 of 2")
      Thread.sleep(forTimeInterval: 1.4)
    }
    #expect(text.contains("step 1 of 2 (1 s)"))
    #expect(text.hasSuffix("\r\u{1B}[K"))
  }

  @Test func quickWorkShowsNothing() throws {
    #expect(try Self.onTerminal { _ in Thread.sleep(forTimeInterval: 0.2) }.isEmpty)
  }

  @Test func aPipeIsNotATerminal() {
    let pipe = Pipe()
    #expect(!TerminalProgress("x", fd: pipe.fileHandleForWriting.fileDescriptor).enabled)
  }
}
