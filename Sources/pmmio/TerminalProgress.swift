import Foundation
import Synchronization

/// A status line on stderr for work that takes more than a second, only when stderr is a
/// terminal: nothing is printed for quick runs, pipes or files. The line is redrawn in place
/// (`\r`) four times a second with the elapsed time, and erased when the work is done.
final class TerminalProgress: Sendable {
  private struct State {
    var status: String
    var shown = false
    var finished = false
  }
  private let state: Mutex<State>
  private let started = ContinuousClock.now
  private let done = DispatchSemaphore(value: 0)
  let enabled: Bool
  let fd: Int32

  /// Starts watching; where `fd` (stderr) is not a terminal every call is a no-op.
  init(_ status: String, fd: Int32 = STDERR_FILENO) {
    state = Mutex(State(status: status))
    self.fd = fd
    enabled = isatty(fd) != 0
    guard enabled else { return }
    Thread.detachNewThread { [self] in
      while done.wait(timeout: .now() + .milliseconds(250)) == .timedOut {
        let elapsed = ContinuousClock.now - started
        guard elapsed >= .seconds(1) else { continue }
        // Written under the lock, so that finish() cannot erase before a redraw lands.
        let stop: Bool = state.withLock { s in
          guard !s.finished else { return true }
          s.shown = true
          write("\r\u{1B}[K\(s.status) (\(elapsed.components.seconds) s)")
          return false
        }
        if stop { return }
      }
    }
  }

  /// What the work is doing now.
  func update(_ status: String) {
    guard enabled else { return }
    state.withLock { $0.status = status }
  }

  /// Erases the line, if one was shown.
  func finish() {
    guard enabled else { return }
    state.withLock { s in
      s.finished = true
      if s.shown { write("\r\u{1B}[K") }
    }
    done.signal()
  }

  private func write(_ text: String) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
  }
}
