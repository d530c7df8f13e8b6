import ArgumentParser
import Foundation
import Fuzz
import HostKVM
import KernelCore
import Platform
import Reports
import Scenarios

/// `pmmio fuzz`: random valid and invalid op sequences over random machines, every check after
/// every op; the first failure shrunk to a scenario that `pmmio run` replays.
struct FuzzCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "fuzz",
    abstract: "Throw random op sequences at random machines; shrink the first failure to a scenario.",
    discussion: """
      Each sequence is a fresh random machine (devices with and without TDISP, BARs, VMs of \
      every type the host offers, the host's capabilities) and 20 to 150 operations: valid ones \
      and plausible wrong ones (closed and wrong-kind fds, misaligned and overflowing sizes, \
      overlapping and moving slots, every flag bit, dead VMs, TDISP requests in every state). \
      After every operation: every invariant holds, a failed operation left the machine as it \
      was (guest ops and VMs killed by KVM_BUG_ON excepted), and its errno is one the kernel \
      can return for it. The first failure is shrunk (steps, arguments, the machine) and \
      written to --out as a scenario with expect: on the failing step. --interleave also runs \
      concurrent paths after each sequence in a random schedule; such a failure becomes a \
      scenario with concurrent: and schedule:. --oracle kvm runs KVM's ioctls on the model and \
      on this machine's /dev/kvm in lock step and compares every answer. A seed always runs \
      the same operations. Exit status: 0 nothing found, 1 a failure found, 2 bad input or usage.
      """)

  @Option(name: .customLong("ops"), help: "Operations to run in all (default 100000; with --oracle kvm, ioctls to compare, default 12000).")
  var opsOption: Int?

  var ops: Int { opsOption ?? (oracle == nil ? 100_000 : 12_000) }

  @Option(name: .customLong("seed"), help: "The seed: the same seed runs the same operations (default 1).")
  var seedOption: UInt64?

  var seed: UInt64 { seedOption ?? 1 }

  @Option(name: .customLong("variant"), help: "rfc-v1 or reviewed (default: reviewed; with --replay, the scenario's variant:).")
  var variantOption: Variant?

  var variant: Variant { variantOption ?? .reviewed }
  var variantGiven: Bool { variantOption != nil }

  @Flag(help: "Print one JSON document on stdout instead of text.")
  var json = false

  @Option(name: .customLong("out"), help: "The directory a failure is written to (default fuzz-failures).")
  var outOption: String?

  var out: String { outOption ?? "fuzz-failures" }

  @Flag(help: "Also run concurrent paths after each sequence, in random schedules.")
  var interleave = false

  @Option(help: "kvm: compare the model's answers with this machine's /dev/kvm.")
  var oracle: OracleKind?

  @Option(name: .customLong("ignore"), help: ArgumentHelp(
    "A known finding to count but not fail on: an invariant name, livelock, deadlock, or posted (the RFC's bugs, README's rfc-v1 table). Repeatable.",
    valueName: "name"))
  var ignore: [String] = []

  @Option(help: "Run only this sequence of the seed's run (the number a failure reports).")
  var sequence: Int?

  @Option(help: "Run a scenario under the fuzzer's checks instead of fuzzing (a written failure reproduces).")
  var replay: String?

  @Flag(name: .customLong("no-shrink"), help: "Report the failure as found, without shrinking it.")
  var noShrink = false

  @Flag(help: "Fail on the known findings of Examples/fuzz-findings too, instead of counting them.")
  var strict = false

  @Option(help: .hidden)
  var plant: String?

  /// How the model performs an op: itself, or with a wrong answer planted for a test.
  var perform: FuzzPerform {
    if let plant, let planted = FuzzPlants.all[plant] { return planted }
    return { @Sendable machine, op in machine.perform(op) }
  }

  enum OracleKind: String, ExpressibleByArgument, CaseIterable { case kvm }

  func validate() throws {
    if let opsOption, opsOption < 1 { throw ValidationError("--ops must be at least 1") }
    if let sequence, sequence < 0 { throw ValidationError("--sequence must be 0 or more") }
    if sequence != nil, opsOption != nil { throw ValidationError("--sequence runs one sequence: --ops does nothing with it") }
    if replay != nil, opsOption != nil || outOption != nil || noShrink || strict || !ignore.isEmpty {
      throw ValidationError("--replay runs a scenario: --ops, --out, --no-shrink, --strict and --ignore do nothing with it")
    }
    if oracle != nil, strict || !ignore.isEmpty {
      throw ValidationError("--oracle kvm compares answers: --strict and --ignore do nothing with it")
    }
    let known = Set(["livelock", "deadlock", "posted"]).union(Machine.invariants.map(\.name))
    for name in ignore where !known.contains(name) {
      let hint = Suggestion.closest(to: name, among: Array(known)).map { " (did you mean '\($0)'?)" } ?? ""
      throw ValidationError("--ignore \(name): no such invariant\(hint)")
    }
    if replay != nil && (interleave || sequence != nil || seedOption != nil) {
      throw ValidationError("--replay runs a scenario: --seed, --interleave and --sequence do nothing with it")
    }
    if oracle != nil, replay == nil, variant == .rfcV1 { throw ValidationError(Self.oracleRFCProblem) }
    if let plant, FuzzPlants.all[plant] == nil { throw ValidationError("--plant \(plant): no such plant") }
    if oracle != nil && (interleave || sequence != nil) {
      throw ValidationError("--oracle kvm runs KVM's ioctls alone: --interleave and --sequence do nothing with it")
    }
  }

  func run() throws {
    let childLog = ProcessInfo.processInfo.environment[FuzzTraps.logVariable].flatMap(FuzzTraps.StepLog.init(path:))
    if let replay, oracle == .kvm { return try runOracleReplay(replay) }
    if let replay { return try runReplay(replay, log: childLog) }
    if oracle == .kvm { return try runOracle() }
    if let sequence, childLog == nil { return try runIsolated(sequence) }
    if childLog == nil { FuzzTraps.install() }
    let progress = TerminalProgress("pmmio: fuzzing (seed \(seed), \(variant))")
    defer { progress.finish() }
    let total = ops
    var options = FuzzOptions(ops: ops, seed: seed, variant: variant, interleave: interleave, ignoring: Set(ignore),
                              onlySequence: sequence, shrink: !noShrink, perform: perform)
    options.strict = strict
    options.avoidKnownTraps = !strict
    let again = FuzzTraps.commandLine(dropping: ["--ops", "--sequence"])
    options.sequenceStarts = { k in FuzzTraps.prepare(command: again, sequence: k) }
    if let childLog { options.stepLog = { childLog.log($0) } }
    options.progress = { p in
      progress.update("pmmio: fuzzing (seed \(seed), \(variant)): \(p.ops) of \(total) ops, \(p.sequences) sequences, \(Int(p.opsPerSecond)) ops/s")
    }
    var report = Fuzzer.run(options)
    progress.finish()
    if var finding = report.finding {
      try write(&finding)
      report.finding = finding
    }
    emit(report)
    if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
  }

  /// Writes a finding's scenario to `--out`, and records where.
  func write(_ finding: inout FuzzFinding, prefix: String = "fuzz") throws {
    let name = "\(prefix)-\(variant.rawValue)-\(seed)-\(finding.sequence).yaml"
    do {
      try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
      let path = (out as NSString).appendingPathComponent(name)
      try OutputFile.write(finding.scenario, to: path)
      finding.file = path
    } catch let failure as OutputFile.Failure {
      throw InputProblem("--out: \(failure)")
    } catch {
      throw InputProblem("--out \(out): cannot create the directory (\(error.localizedDescription))")
    }
  }

  /// Prints the report, as text or JSON.
  func emit(_ report: FuzzReport) {
    if json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
      let data = (try? encoder.encode(report)) ?? Data("{}".utf8)
      print(String(decoding: data, as: UTF8.self))
    } else {
      print(FuzzText.render(report), terminator: "")
    }
  }

  /// `--replay FILE`: the scenario's steps (and schedule) under the fuzzer's checks.
  func runReplay(_ file: String, log: FuzzTraps.StepLog?) throws {
    let input = try ScenarioInput.read(file)
    let scenario = try ScenarioParser.parse(input.text, file: input.file)
    let variant = ScenarioRunner.effectiveVariant(scenario, override: variantGiven ? self.variant : nil)
    var stepLog: (@Sendable (FuzzStep) -> Void)?
    if let log { stepLog = { log.log($0) } }
    let failure = Fuzzer.replay(scenario, variant: variant, perform: perform, stepLog: stepLog)
    if json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
      struct Replay: Encodable { var scenario: String; var variant: String; var failure: FuzzFailure?; var exitStatus: Int32 }
      let document = Replay(scenario: scenario.name, variant: variant.rawValue, failure: failure, exitStatus: failure == nil ? 0 : 1)
      print(String(decoding: try encoder.encode(document), as: UTF8.self))
    } else if let failure {
      print("replay \(scenario.name) (variant \(variant)): FAILURE \(failure)")
    } else {
      print("replay \(scenario.name) (variant \(variant)): every check held")
    }
    if failure != nil { throw ExitCode(1) }
  }

  /// This machine's `/dev/kvm` for the oracle, and user memory for its slots.
  func oracleHost() throws -> (KVMOracleHost, KVMOracleUserMemory) {
    do {
      return (try KVMOracleHost(), try KVMOracleUserMemory())
    } catch {
      throw InputProblem("--oracle kvm: /dev/kvm cannot be used here (\(error.name))")
    }
  }

  /// `--oracle kvm --replay FILE`: a scenario's KVM calls on the model and the kernel in lock step.
  func runOracleReplay(_ file: String) throws {
    let (host, _) = try oracleHost()
    let input = try ScenarioInput.read(file)
    let scenario = try ScenarioParser.parse(input.text, file: input.file)
    let variant = ScenarioRunner.effectiveVariant(scenario, override: variantGiven ? self.variant : nil)
    guard variant != .rfcV1 else { throw InputProblem("\(scenario.name) is variant rfc-v1: \(Self.oracleRFCProblem)") }
    let (failure, compared) = KVMOracle.replay(scenario, variant: variant, host: host, perform: perform)
    if let failure {
      print("oracle replay \(scenario.name) (variant \(variant)): \(compared) ioctl(s) compared; DISAGREEMENT \(failure)")
      throw ExitCode(1)
    }
    print("oracle replay \(scenario.name) (variant \(variant)): \(compared) ioctl(s) compared, the model and the kernel agreed")
  }

  /// Why the oracle compares `reviewed` only: the running kernel is what `reviewed` models;
  /// `rfc-v1` is the RFC on its own base, whose KVM answers differ from it by design.
  static let oracleRFCProblem = "--oracle kvm compares the model with the running kernel, which is what reviewed models; "
    + "rfc-v1 is the RFC on its 6.13 base and answers differently by design (KVM_MEM_GUEST_MEMFD on a default VM is EINVAL "
    + "there, accepted since 6.18), so every such call would be a false disagreement"

  /// `--oracle kvm`: the model against this machine's `/dev/kvm`.
  func runOracle() throws {
    let (host, memory) = try oracleHost()
    let progress = TerminalProgress("pmmio: comparing with /dev/kvm (seed \(seed))")
    defer { progress.finish() }
    let total = ops
    var options = KVMOracle.Options(ioctls: ops, seed: seed, variant: variant, shrink: !noShrink, perform: perform)
    options.progress = { n in progress.update("pmmio: comparing with /dev/kvm (seed \(seed)): \(n) of \(total) ioctls") }
    var report = KVMOracle.run(options, host: host, memory: memory)
    progress.finish()
    if var finding = report.finding {
      try write(&finding, prefix: "oracle")
      report.finding = finding
    }
    if json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
      print(String(decoding: try encoder.encode(report), as: UTF8.self))
    } else {
      print(FuzzText.render(report), terminator: "")
    }
    if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
  }
}

/// How `pmmio fuzz` prints a report for people.
enum FuzzText {
  static func render(_ r: KVMOracle.Report) -> String {
    let k = r.kernel
    var out = "oracle: the model (variant \(r.variant)) against /dev/kvm of Linux \(k.release), seed \(r.seed)\n"
    out += "  kernel: KVM_CAP_MULTI_ADDRESS_SPACE \(k.addressSpaces), KVM_CAP_VM_TYPES 0x\(String(k.vmTypes, radix: 16)), "
      + "KVM_CAP_MEMORY_ATTRIBUTES \(k.memoryAttributes), KVM_CAP_USER_MEMORY2 \(k.userMemory2), KVM_CAP_GUEST_MEMFD \(k.guestMemfd), "
      + "KVM_CAP_GUEST_MEMFD_FLAGS \(k.guestMemfdFlags), largest GFN " + (k.maxGFN.map { "0x" + String($0, radix: 16) } ?? "unknown") + "\n"
    let hostLine = r.host.split(separator: "\n").last.map { String($0).trimmingCharacters(in: .whitespaces) } ?? "typical"
    out += "  model host: \(hostLine)\n"
    for note in r.hostNotes { out += "  note: \(note)\n" }
    out += "  \(r.compared) ioctls compared in \(r.sequences) sequences, \(String(format: "%.1f", r.seconds)) s:\n"
    for (answer, n) in r.comparedByAnswer.sorted(by: { $0.key < $1.key }) { out += "    \(n)  \(answer)\n" }
    out += "  (the function is the model's check that gave the answer; \(r.addressSpaceCalls) of the memslot ioctls named address space 1 or more)\n"
    if !r.skipped.isEmpty {
      out += "  skipped (sent to neither side):\n"
      for (why, n) in r.skipped.sorted(by: { $0.key < $1.key }) { out += "    \(n)  \(why)\n" }
    }
    guard let f = r.finding else { return out + "the model and the kernel agreed on every ioctl\n" }
    out += "DISAGREEMENT \(f.original)\n"
    out += "shrunk from \(f.originalSteps) to \(f.steps) ioctl(s) in \(f.shrinkTries) tries" + (f.file.map { ": \($0)" } ?? "") + "\n\n"
    return out + f.scenario
  }

  static func render(_ r: FuzzReport) -> String {
    var out = "fuzz seed \(r.seed), variant \(r.variant)\(r.interleave ? ", interleaved" : ""): "
      + "\(r.ops) ops in \(r.sequences) sequences, \(String(format: "%.1f", r.seconds)) s, \(Int(r.opsPerSecond.rounded())) ops/s\n"
    out += "  \(r.succeeded) succeeded, \(r.failed) failed with an answer in their op's table"
      + (r.interleave ? ", \(r.regions) concurrent regions" : "") + "\n"
    if !r.known.isEmpty {
      out += "  known findings (--ignore, Examples/fuzz-findings): " + r.known.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + "\n"
    }
    for (why, count) in r.offTheRails.sorted(by: { $0.key < $1.key }) {
      out += "  \(count) sequence(s) ended, not judged further: \(why)\n"
    }
    guard let f = r.finding else {
      out += "no failure\n"
      return out
    }
    out += "FAILURE \(f.original)\n"
    out += "found in sequence \(f.sequence) (pmmio fuzz --seed \(r.seed) --sequence \(f.sequence)\(r.variant == "reviewed" ? "" : " --variant \(r.variant)")); "
      + "shrunk from \(f.originalSteps) to \(f.steps) operation(s) in \(f.shrinkTries) tries"
      + (f.file.map { ": \($0)" } ?? "") + "\n"
    out += "shrunk: \(f.failure)\n\n"
    out += f.scenario
    return out
  }
}
