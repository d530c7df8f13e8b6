import KernelCore
import Platform
import Scenarios

/// What `pmmio fuzz` is asked to do.
public struct FuzzOptions: Sendable {
  /// Operations to run in all (sequences of 20 to 150 on fresh machines, until this many ran).
  public var ops: Int
  public var seed: UInt64
  public var variant: Variant
  /// After each sequence's steps, run a few concurrent paths in a random schedule.
  public var interleave: Bool
  /// Invariant names (and `livelock`, `deadlock`) that are known findings: counted, and the
  /// sequence ends there, but they are not failures. `posted` stands for the bugs of the RFC
  /// as posted (``FuzzOptions/postedBugs``).
  public var ignoring: Set<String>
  /// Run only this sequence (as numbered from 0 in a run with the same seed).
  public var onlySequence: Int?
  /// Shrink a failure before reporting it.
  public var shrink: Bool
  /// Known findings (``KnownFinding``) are failures too.
  public var strict = false
  /// Leave out the arguments that make the model trap today (``KnownFinding/traps``).
  public var avoidKnownTraps = true
  /// How operations are performed (tests plant wrong answers here).
  public var perform: FuzzPerform
  /// Told every 1,000 operations.
  public var progress: (@Sendable (FuzzProgress) -> Void)?
  /// Told each sequence's number before it runs (a trap then names it).
  public var sequenceStarts: (@Sendable (Int) -> Void)?
  /// Told each step before it runs, as a scenario writes it (a trap's steps survive the trap).
  public var stepLog: (@Sendable (FuzzStep) -> Void)?

  public init(ops: Int = 100_000, seed: UInt64 = 1, variant: Variant = .reviewed, interleave: Bool = false,
              ignoring: Set<String> = [], onlySequence: Int? = nil, shrink: Bool = true,
              perform: @escaping FuzzPerform = { $0.perform($1) }, progress: (@Sendable (FuzzProgress) -> Void)? = nil) {
    self.ops = ops; self.seed = seed; self.variant = variant; self.interleave = interleave
    self.ignoring = Self.expand(ignoring); self.onlySequence = onlySequence; self.shrink = shrink
    self.perform = perform; self.progress = progress
  }

  /// What the README's `rfc-v1` table reports: the posted series' bugs, by the invariant (or
  /// the livelock) that finds each. The close order (`vfio_pci_core_close_device()` disables
  /// and resets the function, then `vfio_pci_dma_buf_cleanup()` revokes) is found by
  /// `NoResetUnderLiveImport` once the close is over, and between its regions, where only
  /// `--interleave` and `explore` look, first by `DecodeOffImpliesRevoked`: the buffer is live
  /// while decode is off.
  public static let postedBugs: Set<String> = [
    "UsableDeviceBuffersRestored", "NoResetUnderLiveImport", "DecodeOffImpliesRevoked", "PrivateMMIOOnlyWhileTDIRuns",
    "NoAcceptOfNonRunningTDI", "livelock", "NoKVMBugOn", "RevokedImpliesNoSPTE", "NoDanglingBinding",
    "NoMoveNotifyOnFreedSlot",
  ]

  static func expand(_ names: Set<String>) -> Set<String> {
    names.contains("posted") ? names.subtracting(["posted"]).union(postedBugs) : names
  }
}

/// How far a run is.
public struct FuzzProgress: Sendable {
  public let ops: Int
  public let sequences: Int
  public let seconds: Double
  public var opsPerSecond: Double { seconds > 0 ? Double(ops) / seconds : 0 }
}

/// A failure found, shrunk, as a scenario.
public struct FuzzFinding: Codable, Sendable {
  /// The failure of the shrunk program.
  public var failure: FuzzFailure
  /// The failure as first seen.
  public var original: FuzzFailure
  /// The sequence it was found in (`--sequence` runs it again).
  public var sequence: Int
  public var originalSteps: Int
  public var steps: Int
  /// Candidates the shrinker tried.
  public var shrinkTries: Int
  /// The shrunk program as a scenario `pmmio run` replays.
  public var scenario: String
  /// Where it was written, when it was.
  public var file: String?
  /// The shrunk program (not in the JSON report: the scenario says it).
  public var program: FuzzProgram?

  enum CodingKeys: String, CodingKey { case failure, original, sequence, originalSteps, steps, shrinkTries, scenario, file }
}

/// What a run did: the JSON report of `pmmio fuzz --json`.
public struct FuzzReport: Codable, Sendable {
  public var schema = 1
  public var seed: UInt64
  public var variant: String
  public var interleave: Bool
  /// Operations run (steps and concurrent operations).
  public var ops = 0
  public var sequences = 0
  /// Regions the interleavings ran.
  public var regions = 0
  public var seconds = 0.0
  public var opsPerSecond = 0.0
  /// Operations that succeeded and that failed (a failed op is not a finding: most are the
  /// wrong arguments the fuzzer meant to send).
  public var succeeded = 0
  public var failed = 0
  /// Each answer an op gave, as `op errno (function)` or `op ok`, and how often.
  public var answers: [String: Int] {
    var out: [String: Int] = [:]
    for (answer, n) in tally { out[answer.description, default: 0] += n }
    return out
  }
  /// How often each op ran.
  public var opCounts: [String: Int] {
    var out: [String: Int] = [:]
    for (answer, n) in tally { out[answer.op, default: 0] += n }
    return out
  }
  /// The answers, counted as they come (strings are made once, at the end).
  var tally: [Answer: Int] = [:]
  /// Known findings (``FuzzOptions/ignoring``, ``KnownFinding``) and how often each was met.
  public var known: [String: Int] = [:]
  /// Sequences cut short where the machine stopped being one a kernel could be in (a raw
  /// SEAMCALL behind KVM's back), or by an invariant that a config write or reset from outside
  /// VFIO broke by design, and why.
  public var offTheRails: [String: Int] = [:]
  public var finding: FuzzFinding?
  public var exitStatus: Int32 { finding == nil ? 0 : 1 }

  enum CodingKeys: String, CodingKey {
    case schema, seed, variant, interleave, ops, sequences, regions, seconds, opsPerSecond, succeeded, failed, opCounts,
         answers, known, offTheRails, finding, exitStatus
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(schema, forKey: .schema); try c.encode(seed, forKey: .seed); try c.encode(variant, forKey: .variant)
    try c.encode(interleave, forKey: .interleave); try c.encode(ops, forKey: .ops); try c.encode(sequences, forKey: .sequences)
    try c.encode(regions, forKey: .regions); try c.encode(seconds, forKey: .seconds); try c.encode(opsPerSecond, forKey: .opsPerSecond)
    try c.encode(succeeded, forKey: .succeeded); try c.encode(failed, forKey: .failed); try c.encode(opCounts, forKey: .opCounts)
    try c.encode(answers, forKey: .answers); try c.encode(known, forKey: .known)
    try c.encode(offTheRails, forKey: .offTheRails); try c.encodeIfPresent(finding, forKey: .finding)
    try c.encode(exitStatus, forKey: .exitStatus)
  }

  public init(seed: UInt64, variant: String, interleave: Bool) { self.seed = seed; self.variant = variant; self.interleave = interleave }

  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    seed = try c.decode(UInt64.self, forKey: .seed); variant = try c.decode(String.self, forKey: .variant)
    interleave = try c.decode(Bool.self, forKey: .interleave); ops = try c.decode(Int.self, forKey: .ops)
    sequences = try c.decode(Int.self, forKey: .sequences); finding = try c.decodeIfPresent(FuzzFinding.self, forKey: .finding)
  }
}

/// One kind of answer an op gave: success, or a failure with its errno and function.
struct Answer: Hashable, Sendable, CustomStringConvertible {
  let op: String
  let kind: String
  let errno: Int32
  let function: String?

  init(_ op: String, _ result: OpResult) {
    self.op = op
    switch result {
    case .success: kind = "ok"; errno = 0; function = nil
    case .failure(.errno(let e)): kind = "errno"; errno = e.rawValue; function = e.reason?.function
    case .failure(.memoryFault(let exit)): kind = "errno"; errno = exit.errno.rawValue; function = exit.errno.reason?.function
    case .failure(.tdx): kind = "tdx"; errno = 0; function = nil
    case .failure(.tdisp(_, let name)): kind = "tdisp \(name)"; errno = 0; function = nil
    case .failure(.livelock): kind = "livelock"; errno = 0; function = nil
    case .failure(.deadlock): kind = "deadlock"; errno = 0; function = nil
    case .failure(.lockViolation): kind = "lock violation"; errno = 0; function = nil
    }
  }

  var description: String {
    guard kind == "errno" else { return "\(op) \(kind)" }
    return "\(op) \(Errno(rawValue: errno).name)" + (function.map { " (\($0))" } ?? "")
  }
}

/// `pmmio fuzz`: random machines, random op sequences, every check after every op; the first
/// failure is shrunk to a scenario.
public enum Fuzzer {
  /// The seed of sequence `k` of a run seeded `seed`: each sequence can be run on its own.
  public static func sequenceSeed(_ seed: UInt64, _ k: Int) -> UInt64 {
    var rng = FuzzRandom(seed: seed ^ (UInt64(k) &* 0x9E37_79B9_7F4A_7C15))
    return rng.next()
  }

  public static func run(_ options: FuzzOptions) -> FuzzReport {
    let clock = ContinuousClock()
    let started = clock.now
    var report = FuzzReport(seed: options.seed, variant: options.variant.rawValue, interleave: options.interleave)
    var sequence = options.onlySequence ?? 0
    var lastProgress = 0
    func seconds() -> Double {
      let d = clock.now - started
      return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
    while report.ops < options.ops || options.onlySequence != nil {
      let outcome = runSequence(sequence, options: options, budget: options.onlySequence != nil ? 150 : options.ops - report.ops,
                                report: &report)
      report.sequences += 1
      if case .failure(let program, let failure) = outcome {
        report.finding = finding(program, failure, sequence: sequence, options: options)
        break
      }
      if options.onlySequence != nil { break }
      sequence += 1
      if report.ops - lastProgress >= 1000, let progress = options.progress {
        lastProgress = report.ops
        progress(FuzzProgress(ops: report.ops, sequences: report.sequences, seconds: seconds()))
      }
    }
    report.seconds = seconds()
    report.opsPerSecond = report.seconds > 0 ? Double(report.ops) / report.seconds : 0
    return report
  }

  enum SequenceOutcome {
    case clean
    case failure(FuzzProgram, FuzzFailure)
  }

  /// Generates and runs sequence `k`: a machine, up to `budget` steps, and (interleaving) its
  /// concurrent paths.
  static func runSequence(_ k: Int, options: FuzzOptions, budget: Int, report: inout FuzzReport) -> SequenceOutcome {
    options.sequenceStarts?(k)
    var rng = FuzzRandom(seed: sequenceSeed(options.seed, k))
    let configuration = MachineGenerator.machine(&rng)
    var generator = OpGenerator(configuration: configuration, variant: options.variant)
    generator.avoidKnownTraps = options.avoidKnownTraps
    guard var run = try? FuzzExecution(configuration, variant: options.variant, perform: options.perform,
                                       ignoring: options.ignoring, strict: options.strict) else { return .clean }
    var program = FuzzProgram(machine: configuration, steps: [])
    let length = min(budget, rng.int(in: 20 ... 150))
    for _ in 0 ..< max(1, length) {
      let step = generator.next(&rng)
      options.stepLog?(step)
      let outcome = run.run(step)
      program.steps.append(step)
      guard let result = outcome.result else {
        report.offTheRails[run.offTheRails ?? "?", default: 0] += 1
        return .clean
      }
      generator.record(step, result)
      count(step.op, result, in: &report)
      // A known finding: counted, and the sequence goes on without judging the invariants it broke.
      if let known = outcome.known { report.known[known, default: 0] += 1 }
      if let failure = outcome.failure { return .failure(program, failure) }
      if let why = run.offTheRails {
        report.offTheRails[why, default: 0] += 1
        return .clean
      }
    }
    guard options.interleave, !run.degraded else { return .clean }
    return interleave(&program, run: run, generator: &generator, rng: &rng, options: options, report: &report)
  }

  static func count(_ op: String, _ result: OpResult, in report: inout FuzzReport) {
    report.ops += 1
    switch result {
    case .success: report.succeeded += 1
    case .failure: report.failed += 1
    }
    report.tally[Answer(op, result), default: 0] += 1
  }

  // MARK: Interleaving

  /// Ops that make good concurrent paths: guest accesses on their own vCPUs, revokes, slot
  /// changes, closes and TDISP state changes.
  static let concurrentOps = ["guest.read", "guest.write", "guest.accept_mmio", "vfio.set_memory_decode", "vfio.reset",
                              "vfio.flr", "vfio.close", "dmabuf.close", "kvm.set_user_memory_region2", "tdisp.stop",
                              "kvm.set_memory_attributes", "vfio.set_power", "pci.write_command", "kvm.destroy_vm"]

  static func interleave(_ program: inout FuzzProgram, run: FuzzExecution, generator: inout OpGenerator,
                         rng: inout FuzzRandom, options: FuzzOptions, report: inout FuzzReport) -> SequenceOutcome {
    generator.binds = false
    for p in 0 ..< rng.int(in: 2 ... 3) {
      var path: [FuzzStep] = []
      for _ in 0 ..< rng.int(in: 1 ... 2) {
        let op = rng.pick(concurrentOps)
        guard var step = generator.step(op, valid: rng.chance(85), &rng) else { continue }
        // Guest ops of different paths on different vCPUs, so each path is its vCPU's thread.
        if op.hasPrefix("guest.") { step.arguments["vcpu"] = .number(UInt64(p % 4)) }
        path.append(step)
      }
      if !path.isEmpty { program.concurrent.append(path) }
    }
    guard !program.concurrent.isEmpty else { return .clean }
    report.ops += program.concurrent.reduce(0) { $0 + $1.count }
    let scenario = InterleavingRun.scenario(program, variant: options.variant)
    var (prog, state) = InterleavingProgram.start(scenario, machine: run.machine, handles: run.handles)
    var checker = InterleavingRun.RegionChecker(base: run.count)
    var schedule: [String] = []
    func fail(_ f: FuzzFailure, _ machine: Machine) -> SequenceOutcome {
      program.schedule = schedule
      if let known = run.known(f, on: machine) {
        report.known[known, default: 0] += 1
        return .clean
      }
      return .failure(program, f)
    }
    while schedule.count < 60, !state.isDone(prog) {
      var runnable: [Actor] = []
      for actor in state.actors(prog) {
        var probe = state
        var contention = Contention()
        if case .ran = probe.step(actor, prog, contention: &contention) { runnable.append(actor) }
      }
      guard !runnable.isEmpty else { break }
      let actor = rng.pick(runnable)
      schedule.append(InterleavingRun.token(actor, prog))
      switch checker.step(actor, &state, prog) {
      case .failed(let f):
        return fail(f, state.machine)
      case .offTheRails(let why):
        report.offTheRails[why, default: 0] += 1
        return .clean
      case .ran, .cannotRun:
        break
      }
      report.regions += 1
    }
    program.schedule = schedule
    switch checker.finish(&state, prog) {
    case .failure(let f, let machine): return fail(f, machine)
    case .offTheRails(let why): report.offTheRails[why, default: 0] += 1
    case .clean, .invalid: break
    }
    return .clean
  }

  // MARK: Replay

  /// A scenario as a fuzz program: its machine, steps, paths and schedule (thread names back
  /// to path numbers).
  public static func program(of scenario: Scenario) -> FuzzProgram {
    func fuzz(_ step: ScenarioStep) -> FuzzStep {
      var s = FuzzStep(step.opName, step.arguments, binding: step.binding)
      s.arguments = step.arguments
      return s
    }
    let names = scenario.concurrent.indices.map { scenario.threadName(for: .concurrent($0)) }
    return FuzzProgram(machine: scenario.machine, steps: scenario.steps.map(fuzz), concurrent: scenario.concurrent.map { $0.map(fuzz) },
                       schedule: scenario.schedule.map { $0.map { entry in names.firstIndex(of: entry.actor).map { "#\($0)" } ?? entry.actor } })
  }

  /// Runs `scenario` under the fuzzer's checks: the first failure, or `nil`.
  /// Known findings count as failures here: a finding's own scenario reproduces it.
  /// `stepLog` hears of each step before it runs.
  public static func replay(_ scenario: Scenario, variant: Variant, perform: @escaping FuzzPerform = { $0.perform($1) },
                            stepLog: (@Sendable (FuzzStep) -> Void)? = nil) -> FuzzFailure? {
    FuzzExecution.firstFailure(program(of: scenario), variant: variant, perform: perform, strict: true, stepLog: stepLog)
  }

  /// The machine of sequence `k` of a run seeded `seed`, drawn without running anything.
  public static func machine(seed: UInt64, sequence k: Int) -> MachineConfiguration {
    var rng = FuzzRandom(seed: sequenceSeed(seed, k))
    return MachineGenerator.machine(&rng)
  }

  /// Shrinks a failure found outside ``run(_:)`` (a trap, seen by a parent process) with
  /// `evaluate`, and writes it as a finding.
  public static func finding(_ program: FuzzProgram, _ failure: FuzzFailure, sequence: Int, options: FuzzOptions,
                             evaluate: @escaping Shrinker.Evaluate) -> FuzzFinding {
    var shrinker = Shrinker(signature: failure.signature, budget: 2_000, evaluate: evaluate)
    let (small, smallFailure) = options.shrink ? shrinker.shrink(program, failure) : (program, failure)
    return FuzzFinding(failure: smallFailure, original: failure, sequence: sequence, originalSteps: program.count,
                       steps: small.count, shrinkTries: shrinker.tries,
                       scenario: scenarioText(small, smallFailure, options: options, sequence: sequence, run: false),
                       file: nil, program: small)
  }

  // MARK: Findings

  /// Shrinks `failure` of `program` and writes it as a scenario.
  static func finding(_ program: FuzzProgram, _ failure: FuzzFailure, sequence: Int, options: FuzzOptions) -> FuzzFinding {
    var shrunk = (program, failure)
    var tries = 0
    if options.shrink {
      var shrinker = Shrinker(signature: failure.signature) { candidate in
        FuzzExecution.firstFailure(candidate, variant: options.variant, perform: options.perform,
                                   ignoring: options.ignoring, strict: options.strict)
      }
      shrunk = shrinker.shrink(program, failure)
      tries = shrinker.tries
    }
    let (small, smallFailure) = shrunk
    return FuzzFinding(failure: smallFailure, original: failure, sequence: sequence, originalSteps: program.count,
                       steps: small.count, shrinkTries: tries,
                       scenario: scenarioText(small, smallFailure, options: options, sequence: sequence),
                       file: nil, program: small)
  }

  /// The scenario of a finding: comments saying what failed and how it was found, and the
  /// failing step's `expect:` stating what it returned (`pmmio run` then shows the same answer
  /// and, for an invariant, reports it violated).
  public static func scenarioText(_ program: FuzzProgram, _ failure: FuzzFailure, options: FuzzOptions, sequence: Int,
                                  run runSteps: Bool = true) -> String {
    var expect: String?
    var failing: Int?
    if runSteps, failure.step < program.steps.count, program.concurrent.isEmpty {
      failing = failure.step
      var run = try? FuzzExecution(program.machine, variant: options.variant, perform: options.perform)
      for (i, step) in program.steps.enumerated() {
        guard let result = run?.run(step).result else { break }
        if i == failure.step { expect = FuzzScenarioText.expectation(result) }
      }
    }
    var comments = [
      "pmmio fuzz found this (seed \(options.seed), sequence \(sequence), variant \(options.variant.rawValue)):",
      "\(failure.kind.rawValue) at step \(failure.step + 1): \(failure.op) -> \(failure.result)",
    ]
    comments += wrap(failure.invariant.map { "\($0): \(failure.message)" } ?? failure.message, width: 96)
    comments.append("Replay: pmmio run FILE (the step's answer), pmmio fuzz --replay FILE (the fuzzer's checks).")
    let name = "fuzz-\(options.variant.rawValue)-\(options.seed)-\(sequence)"
    let schedule = program.schedule.map { tokens -> [String] in
      let scenario = InterleavingRun.scenario(program, variant: options.variant)
      return tokens.map { token in
        guard token.hasPrefix("#"), let n = Int(token.dropFirst()), n < program.concurrent.count else { return token }
        return scenario.threadName(for: .concurrent(n))
      }
    }
    var named = program
    named.schedule = schedule
    return FuzzScenarioText.scenario(named, name: name, variant: options.variant, comments: comments,
                                     failingStep: failing, expect: expect)
  }

  static func wrap(_ text: String, width: Int) -> [String] {
    var lines: [String] = []
    var line = ""
    for word in text.split(separator: " ") {
      if !line.isEmpty, line.count + word.count + 1 > width { lines.append(line); line = "" }
      line += line.isEmpty ? String(word) : " " + word
    }
    if !line.isEmpty { lines.append(line) }
    return lines
  }
}
