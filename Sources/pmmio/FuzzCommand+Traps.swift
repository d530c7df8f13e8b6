import ArgumentParser
import Foundation
import Fuzz
import KernelCore
import Platform
import Scenarios

/// A trap in the model ends the process, so it cannot be caught where it happens. `pmmio fuzz`
/// names the sequence it happened in (a signal handler writes a message prepared before each
/// sequence), and `pmmio fuzz --sequence K` runs that sequence in a child process that logs each
/// step before it runs it: when the child dies of a signal, the parent has the steps, and
/// shrinks them by running each candidate in a child of its own (`pmmio fuzz --replay`).
enum FuzzTraps {
  /// The child's step log (set in the child's environment by its parent).
  static let logVariable = "PMMIO_FUZZ_STEP_LOG"

  /// The message the signal handler writes: prepared before each sequence, since a handler can
  /// build nothing.
  nonisolated(unsafe) static var message = UnsafeMutablePointer<CChar>.allocate(capacity: 1024)
  nonisolated(unsafe) static var messageLength = 0

  /// Installs the handler for the signals a Swift trap raises.
  static func install() {
    message.initialize(repeating: 0, count: 1024)
    for signal in [SIGABRT, SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGFPE] {
      Glibc.signal(signal) { _ in
        _ = Glibc.write(STDERR_FILENO, FuzzTraps.message, FuzzTraps.messageLength)
        _exit(1)
      }
    }
  }

  /// This run's command line without `options` (each with its value), to name a sequence again.
  static func commandLine(dropping options: Set<String>) -> String {
    var out: [String] = ["pmmio"]
    var arguments = Array(CommandLine.arguments.dropFirst())
    while !arguments.isEmpty {
      let a = arguments.removeFirst()
      if options.contains(a) { if !arguments.isEmpty { arguments.removeFirst() }; continue }
      if options.contains(where: { a.hasPrefix($0 + "=") }) { continue }
      out.append(a)
    }
    return out.joined(separator: " ")
  }

  /// What the handler will say if sequence `k` traps.
  static func prepare(command: String, sequence k: Int) {
    let text = "\npmmio fuzz: the model trapped in sequence \(k): "
      + "\(command) --sequence \(k) runs it in a child process and shrinks the trap\n"
    let bytes = Array(text.utf8.prefix(1023))
    for (i, b) in bytes.enumerated() { message[i] = CChar(bitPattern: b) }
    messageLength = bytes.count
  }

  /// A step log to append to, one flow-style step per line, written before the step runs.
  final class StepLog: @unchecked Sendable {
    let handle: FileHandle
    init?(path: String) {
      guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else { return nil }
      handle = h
    }
    func log(_ step: FuzzStep) {
      handle.write(Data((FuzzScenarioText.flow(step, names: nil) + "\n").utf8))
    }
  }

  /// How a child ended: its exit status or signal, and what it printed.
  struct ChildResult {
    var signal: Int32?
    var status: Int32
    var stdout: Data
    var stderr: Data
  }

  /// Runs this executable with `arguments`, its step log at `log`.
  static func child(_ arguments: [String], log: String) throws -> ChildResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/proc/self/exe")
    process.arguments = arguments
    var environment = ProcessInfo.processInfo.environment
    environment[logVariable] = log
    process.environment = environment
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    // Read while it runs: a full pipe would stop it.
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let signalled = process.terminationReason == .uncaughtSignal
    return ChildResult(signal: signalled ? process.terminationStatus : nil, status: process.terminationStatus,
                       stdout: stdout, stderr: stderr)
  }

  /// The steps a child logged, as a program on `machine`; `nil` when the log does not parse.
  static func program(machine: MachineConfiguration, log: String, variant: Variant) -> FuzzProgram? {
    guard let text = try? String(contentsOfFile: log, encoding: .utf8) else { return nil }
    let lines = text.split(separator: "\n").map(String.init)
    var yaml = FuzzScenarioText.scenario(FuzzProgram(machine: machine, steps: []), name: "trap", variant: variant)
    yaml = yaml.replacingOccurrences(of: "steps: []\n", with: lines.isEmpty ? "steps: []\n" : "steps:\n" + lines.map { "  - \($0)\n" }.joined())
    guard let scenario = try? ScenarioParser.parse(yaml, file: "<trap>") else { return nil }
    return Fuzzer.program(of: scenario)
  }

  /// The last step a child logged: the one it trapped in.
  static func lastStep(_ log: String) -> String {
    let lines = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n")
    guard let last = lines.last, let range = last.range(of: "op: ") else { return "?" }
    return String(last[range.upperBound...].prefix { $0 != "," && $0 != " " && $0 != "}" })
  }
}

extension FuzzCommand {
  /// `--sequence K` in the parent: runs it in a child; a trap there is shrunk here.
  func runIsolated(_ k: Int) throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pmmio-fuzz-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let log = dir.appendingPathComponent("steps.log").path
    let result = try FuzzTraps.child(Array(CommandLine.arguments.dropFirst()), log: log)
    guard let signal = result.signal else {
      FileHandle.standardOutput.write(result.stdout)
      FileHandle.standardError.write(result.stderr)
      if result.status != 0 { throw ExitCode(result.status) }
      return
    }
    let machine = Fuzzer.machine(seed: seed, sequence: k)
    guard let program = FuzzTraps.program(machine: machine, log: log, variant: variant) else {
      throw InputProblem("sequence \(k) trapped (signal \(signal)), but its step log cannot be read back")
    }
    let failure = FuzzFailure(kind: .trap, step: max(0, program.steps.count - 1), op: FuzzTraps.lastStep(log),
                              result: "signal \(signal)", message: "the process died of signal \(signal) running the step")
    var count = 0
    let candidate = dir.appendingPathComponent("candidate.yaml").path
    let candidateLog = dir.appendingPathComponent("candidate.log").path
    let variant = self.variant
    let options = FuzzOptions(seed: seed, variant: variant, shrink: !noShrink)
    var finding = Fuzzer.finding(program, failure, sequence: k, options: options) { p in
      count += 1
      let text = FuzzScenarioText.scenario(p, name: "candidate", variant: variant)
      guard (try? text.write(toFile: candidate, atomically: true, encoding: .utf8)) != nil,
            let run = try? FuzzTraps.child(["fuzz", "--replay", candidate, "--variant", variant.rawValue]
                                             + (plant.map { ["--plant", $0] } ?? []), log: candidateLog),
            let signal = run.signal else { return nil }
      let steps = ((try? String(contentsOfFile: candidateLog, encoding: .utf8)) ?? "").split(separator: "\n").count
      return FuzzFailure(kind: .trap, step: max(0, steps - 1), op: FuzzTraps.lastStep(candidateLog), result: "signal \(signal)",
                         message: "the process died of signal \(signal) running the step")
    }
    try write(&finding)
    var report = FuzzReport(seed: seed, variant: variant.rawValue, interleave: false)
    report.sequences = 1
    report.ops = program.steps.count
    report.finding = finding
    emit(report)
    throw ExitCode(1)
  }
}
