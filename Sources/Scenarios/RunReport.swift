import Foundation
import KernelCore
import Platform
import Reports

/// One traced event as reports carry it.
public struct TraceLine: Codable, Hashable, Sendable, CustomStringConvertible {
  public var subsystem: String
  public var message: String
  public init(_ event: TraceEvent) { subsystem = event.subsystem.rawValue; message = event.message }
  public var description: String { "\(subsystem): \(message)" }
}

/// An invariant that did not hold after a step.
public struct InvariantViolation: Codable, Hashable, Sendable {
  public var name: String
  public var message: String
}

/// How often an invariant was checked during a run, and whether it ever broke.
public struct InvariantSummary: Codable, Hashable, Sendable {
  public var name: String
  public var checks = 0
  public var violations = 0
  public var firstViolationStep: Int?
  public var firstViolation: String?
  public init(name: String) { self.name = name }
}

/// A step's verdict against its `expect:`.
public enum Verdict: String, Codable, Hashable, Sendable {
  /// The result (and the machine's state, if `expect:` names one) is what `expect:` says.
  case asExpected = "as expected"
  /// It is not: the run exits 1.
  case notAsExpected = "not as expected"
  /// No `expect:`: reported, not judged.
  case unchecked
}

/// One step of a run: what ran, what came back, what was expected, what was traced.
public struct StepReport: Codable, Hashable, Sendable {
  public var index: Int
  /// `steps`, or `concurrent[N]` (0-based).
  public var path: String
  /// The thread that ran it (`ioctl`, `vcpu1`, `ctx2` …): one Perfetto track each.
  public var context: String
  /// Where the step is written.
  public var file: String
  public var line: Int
  public var column: Int
  public var op: String
  /// The step as written, without `expect:`.
  public var text: String
  /// What the operation returned, field by field.
  public var result: StepResult
  /// What `expect:` asked for, as text.
  public var expectation: String?
  public var verdict: Verdict
  /// Why the result is not as expected.
  public var mismatch: String?
  /// What of `expect: { state: ... }` did not hold.
  public var stateMismatches: [String]?
  public var trace: [TraceLine]
  public var invariantViolations: [InvariantViolation]
  public var nanoseconds: UInt64

  /// The call succeeded.
  public var succeeded: Bool { result.ok }
  /// `file:line`, for FAILED lines.
  public var location: String { "\(file):\(line)" }

  init(step: ScenarioStep, thread: String, result: OpResult, trace: [TraceLine], violations: [InvariantViolation],
       nanoseconds: UInt64) {
    index = step.index
    switch step.path {
    case .main: path = "steps"
    case .concurrent(let n): path = "concurrent[\(n)]"
    }
    context = thread
    file = step.position.file
    line = step.position.line
    column = step.position.column
    op = step.opName
    text = step.text
    self.result = StepResult(result)
    let expectations = [step.expectation?.description, step.stateExpectation?.description].compactMap { $0 }
    expectation = expectations.isEmpty ? nil : expectations.joined(separator: ", ")
    if let expected = step.expectation {
      mismatch = expected.mismatch(result)
      verdict = mismatch == nil ? .asExpected : .notAsExpected
    } else {
      verdict = step.stateExpectation == nil ? .unchecked : .asExpected
    }
    self.trace = trace
    invariantViolations = violations
    self.nanoseconds = nanoseconds
  }

  /// Adds what of the step's `expect: { state: ... }` did not hold.
  public mutating func judge(stateMismatches found: [String]) {
    guard !found.isEmpty else { return }
    stateMismatches = found
    verdict = .notAsExpected
  }
}

/// Everything a `run` found: per step results, invariants, counters and timings. `text` is
/// for people, `jsonString()` for tools (one JSON document).
public struct RunReport: Codable, Hashable, Sendable {
  /// Version of the JSON layout; bumped when a field changes meaning or goes away.
  public static let currentSchema = 1

  public struct Counters: Codable, Hashable, Sendable {
    /// Steps run.
    public var steps = 0
    /// Steps whose result (and state) was what `expect:` said.
    public var asExpected = 0
    /// Steps whose result or state was not: each makes the run exit 1.
    public var notAsExpected = 0
    /// Steps without `expect:`.
    public var unchecked = 0
    /// Steps whose operation succeeded, and those that returned an error (as expected or not).
    public var succeeded = 0
    public var returnedError = 0
    /// Steps not run because `--stop-on-failure` stopped the run.
    public var notRun = 0
    /// Invariant checks performed (invariants × steps).
    public var invariantChecks = 0
    /// Distinct invariants checked.
    public var invariantsChecked = 0
    /// Distinct invariants that broke at least once.
    public var invariantsViolated = 0
  }

  public struct Timings: Codable, Hashable, Sendable {
    public var totalNanoseconds: UInt64
    public var machineBuildNanoseconds: UInt64
  }

  /// Why the run ended before its last step.
  public struct Stop: Codable, Hashable, Sendable {
    public var afterStep: Int
    public var reason: String
  }

  public var schema = RunReport.currentSchema
  public var scenario: String
  public var variant: String
  /// Events traced while the machine was built, before the first step.
  public var setupTrace: [TraceLine]
  public var steps: [StepReport]
  public var invariants: [InvariantSummary]
  public var counters: Counters
  public var timings: Timings
  /// Set when the run stopped early.
  public var stopped: Stop?
  /// The machine after the last step run, when the run was asked to keep it (`pmmio show`).
  public var state: MachineState?
  /// The regions a `schedule:` stepped, in order, when the scenario has one.
  public var schedule: [ScheduledRegion]?
  /// 0: every expectation held and no invariant broke; 1 otherwise.
  public var exitStatus: Int32

  init(scenario: String, variant: String, setupTrace: [TraceLine], steps: [StepReport],
       invariants: [InvariantSummary], timings: Timings, stopped: Stop? = nil, notRun: Int = 0,
       state: MachineState? = nil) {
    self.scenario = scenario; self.variant = variant; self.setupTrace = setupTrace
    self.steps = steps; self.invariants = invariants; self.timings = timings
    self.stopped = stopped; self.state = state
    var c = Counters()
    c.steps = steps.count
    c.succeeded = steps.count { $0.succeeded }
    c.returnedError = c.steps - c.succeeded
    c.asExpected = steps.count { $0.verdict == .asExpected }
    c.notAsExpected = steps.count { $0.verdict == .notAsExpected }
    c.unchecked = steps.count { $0.verdict == .unchecked }
    c.notRun = notRun
    c.invariantChecks = invariants.reduce(0) { $0 + $1.checks }
    c.invariantsChecked = invariants.count
    c.invariantsViolated = invariants.count { $0.violations > 0 }
    counters = c
    exitStatus = c.notAsExpected == 0 && c.invariantsViolated == 0 ? 0 : 1
  }

  /// The report for people: the trace of each step as a kernel log would show it, the step's
  /// result with the reason for a failure, its verdict, then a summary. Every FAILED and
  /// VIOLATED line names the step's `file:line`.
  public var text: String {
    var out = "scenario \(scenario) (variant \(variant))\n"
    for line in setupTrace { out += "        \(line)\n" }
    for step in steps {
      let where_ = step.path == "steps" ? "" : " [\(step.path)]"
      out += String(format: "%4d  ", step.index) + "\(step.text)\(where_)\n"
      for line in step.trace { out += "        \(line)\n" }
      out += "      = \(step.result.explained)"
      if step.verdict == .asExpected { out += "   as expected (\(step.expectation ?? ""))" }
      out += "\n"
      if let mismatch = step.mismatch { out += "      FAILED \(step.location): \(mismatch)\n" }
      for mismatch in step.stateMismatches ?? [] { out += "      FAILED \(step.location): \(mismatch)\n" }
      for v in step.invariantViolations { out += "      VIOLATED \(step.location): invariant \(v.name): \(v.message)\n" }
    }
    if let schedule {
      out += "schedule (one atomic region each):\n"
      for region in schedule {
        out += String(format: "  s%-3d ", region.index) + "\(region.thread): \(region.region)\(region.scheduled ? "" : "   (after the schedule)")\n"
        for line in region.trace { out += "        \(line)\n" }
        if let problem = region.problem { out += "      FAILED: \(problem)\n" }
        for v in region.invariantViolations { out += "      VIOLATED: invariant \(v.name): \(v.message)\n" }
      }
    }
    let c = counters
    out += "\nsummary: \(c.steps) step\(c.steps == 1 ? "" : "s"): \(c.asExpected) as expected, \(c.notAsExpected) not as expected, "
    out += "\(c.unchecked) without expect (\(c.succeeded) succeeded, \(c.returnedError) returned an error); "
    out += "invariants: \(c.invariantsChecked) checked \(c.invariantChecks) times, \(c.invariantsViolated) violated\n"
    if let stopped {
      out += "stopped after step \(stopped.afterStep) (\(stopped.reason)): \(c.notRun) step(s) not run\n"
    }
    for inv in invariants where inv.violations > 0 {
      let step = steps.first { $0.index == inv.firstViolationStep }
      out += "  violated: \(inv.name) (\(inv.violations)x, first after step \(inv.firstViolationStep ?? 0)"
        + (step.map { " at \($0.location)" } ?? "") + ": \(inv.firstViolation ?? ""))\n"
    }
    out += exitStatus == 0 ? "PASS\n" : "FAIL\n"
    return out
  }

  /// The whole trace, kernel-log style: `[   3.001] ioctl vfio: ...` where 3 is the step
  /// and 001 the event within it (step 0 is the machine's setup). Time is logical, so two
  /// runs of one scenario give the same file.
  public var traceText: String {
    var out = ""
    func emit(_ step: Int, _ n: Int, _ context: String, _ text: String) {
      out += "[" + String(format: "%4d.%03d", step, n) + "] \(context) \(text)\n"
    }
    for (n, line) in setupTrace.enumerated() { emit(0, n + 1, "setup", line.description) }
    for step in steps {
      emit(step.index, 0, step.context, "\(step.op) \(step.text)")
      for (n, line) in step.trace.enumerated() { emit(step.index, n + 1, step.context, line.description) }
      emit(step.index, step.trace.count + 1, step.context, "= \(step.result.explained)")
    }
    return out
  }

  /// One JSON document (sorted keys, so diffs between runs are stable).
  public func jsonString() -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    guard let data = try? encoder.encode(self) else { return "{}" }
    return String(decoding: data, as: UTF8.self) + "\n"
  }
}
