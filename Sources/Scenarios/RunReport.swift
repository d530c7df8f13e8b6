import Foundation
import KernelCore
import Platform

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
  /// The result met the expectation.
  case met
  /// It did not: the run exits 1.
  case failed
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
  public var line: Int
  public var column: Int
  public var op: String
  /// The step as written, without `expect:`.
  public var text: String
  /// `ok`, `ok fd 3`, `errno EINVAL`, `tdx TDX_OPERAND_BUSY` …
  public var result: String
  public var succeeded: Bool
  /// The errno name when the step failed with one.
  public var errno: String?
  /// The TDX status name when the step failed with one.
  public var tdx: String?
  /// The TDISP error name when the device refused the request.
  public var tdisp: String?
  public var expectation: String?
  public var verdict: Verdict
  public var mismatch: String?
  public var trace: [TraceLine]
  public var invariantViolations: [InvariantViolation]
  public var nanoseconds: UInt64

  init(step: ScenarioStep, thread: String, result: OpResult, trace: [TraceLine], violations: [InvariantViolation],
       nanoseconds: UInt64) {
    index = step.index
    switch step.path {
    case .main: path = "steps"
    case .concurrent(let n): path = "concurrent[\(n)]"
    }
    context = thread
    line = step.position.line
    column = step.position.column
    op = step.opName
    text = step.text
    self.result = ResultText.describe(result)
    switch result {
    case .success: succeeded = true
    case .failure(.errno(let e)): succeeded = false; errno = e.name
    case .failure(.tdx(let s)): succeeded = false; tdx = s.name
    case .failure(.tdisp(_, let name)): succeeded = false; tdisp = name
    case .failure(.livelock), .failure(.deadlock), .failure(.lockViolation): succeeded = false
    }
    expectation = step.expectation?.description
    if let expected = step.expectation {
      mismatch = expected.mismatch(result)
      verdict = mismatch == nil ? .met : .failed
    } else {
      verdict = .unchecked
    }
    self.trace = trace
    invariantViolations = violations
    self.nanoseconds = nanoseconds
  }
}

/// Everything a `run` found: per step results, invariants, counters and timings. `text` is
/// for people, `jsonString()` for tools (one JSON document).
public struct RunReport: Codable, Hashable, Sendable {
  public struct Counters: Codable, Hashable, Sendable {
    public var steps = 0
    public var stepsSucceeded = 0
    public var stepsFailed = 0
    public var expectationsMet = 0
    public var expectationsFailed = 0
    public var unchecked = 0
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

  public var scenario: String
  public var variant: String
  /// Events traced while the machine was built, before the first step.
  public var setupTrace: [TraceLine]
  public var steps: [StepReport]
  public var invariants: [InvariantSummary]
  public var counters: Counters
  public var timings: Timings
  /// 0: every expectation held and no invariant broke; 1 otherwise.
  public var exitStatus: Int32

  init(scenario: String, variant: String, setupTrace: [TraceLine], steps: [StepReport],
       invariants: [InvariantSummary], timings: Timings) {
    self.scenario = scenario; self.variant = variant; self.setupTrace = setupTrace
    self.steps = steps; self.invariants = invariants; self.timings = timings
    var c = Counters()
    c.steps = steps.count
    c.stepsSucceeded = steps.count { $0.succeeded }
    c.stepsFailed = c.steps - c.stepsSucceeded
    c.expectationsMet = steps.count { $0.verdict == .met }
    c.expectationsFailed = steps.count { $0.verdict == .failed }
    c.unchecked = steps.count { $0.verdict == .unchecked }
    c.invariantChecks = invariants.reduce(0) { $0 + $1.checks }
    c.invariantsChecked = invariants.count
    c.invariantsViolated = invariants.count { $0.violations > 0 }
    counters = c
    exitStatus = c.expectationsFailed == 0 && c.invariantsViolated == 0 ? 0 : 1
  }

  /// The report for people: the trace of each step as a kernel log would show it, the step's
  /// result and verdict, then a summary.
  public var text: String {
    var out = "scenario \(scenario) (variant \(variant))\n"
    for line in setupTrace { out += "        \(line)\n" }
    for step in steps {
      let where_ = step.path == "steps" ? "" : " [\(step.path)]"
      out += String(format: "%4d  ", step.index) + "\(step.text)\(where_)\n"
      for line in step.trace { out += "        \(line)\n" }
      var verdict = ""
      switch step.verdict {
      case .met: verdict = "   expect \(step.expectation ?? ""): ok"
      case .failed: verdict = "   FAILED: \(step.mismatch ?? "")"
      case .unchecked: break
      }
      out += "      = \(step.result)\(verdict)\n"
      for v in step.invariantViolations { out += "      INVARIANT \(v.name) VIOLATED: \(v.message)\n" }
    }
    let c = counters
    out += "\nsummary: \(c.steps) steps (\(c.stepsSucceeded) succeeded, \(c.stepsFailed) failed); "
    out += "expectations: \(c.expectationsMet) met, \(c.expectationsFailed) failed, \(c.unchecked) unchecked; "
    out += "invariants: \(c.invariantsChecked) checked \(c.invariantChecks) times, \(c.invariantsViolated) violated\n"
    for inv in invariants where inv.violations > 0 {
      out += "  violated: \(inv.name) (\(inv.violations)x, first after step \(inv.firstViolationStep ?? 0): \(inv.firstViolation ?? ""))\n"
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
      emit(step.index, step.trace.count + 1, step.context, "= \(step.result)")
    }
    return out
  }

  /// One JSON document (sorted keys, so diffs between runs are stable).
  public func jsonString() -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    guard let data = try? encoder.encode(self) else { return "{}" }
    return String(decoding: data, as: UTF8.self) + "\n"
  }
}
