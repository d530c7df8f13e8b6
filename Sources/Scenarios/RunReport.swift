import Foundation
import KernelCore
import Platform
import Reports

/// One traced event as reports carry it: its name (`tdx:seamcall`), message, fields and time
/// by the step clock. JSON gives `fields` as an object.
public struct TraceLine: Codable, Hashable, Sendable, CustomStringConvertible {
  public var subsystem: String
  /// `subsystem:event`.
  public var event: String
  public var message: String
  /// `gpa`, `hpa`, `status` …, in the order the event gives them.
  public var fields: [TraceField]
  public var time: TraceTime

  public init(_ event: TraceEvent) {
    subsystem = event.subsystem.rawValue
    self.event = event.name.description
    message = event.message
    fields = event.fields
    time = event.time
  }

  /// `vfio: revoke dmabuf1`, as a kernel log line shows it.
  public var description: String { "\(subsystem): \(message)" }
  /// `vfio:dmabuf_move: revoke dmabuf1  device=nic0 buffer=1 revoked=1 for_good=0`, as ftrace prints an event.
  public var ftraceText: String {
    "\(event): \(message)" + (fields.isEmpty ? "" : "  " + fields.map(\.description).joined(separator: " "))
  }

  enum CodingKeys: String, CodingKey { case subsystem, event, message, fields, time }

  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    subsystem = try c.decode(String.self, forKey: .subsystem)
    event = try c.decode(String.self, forKey: .event)
    message = try c.decode(String.self, forKey: .message)
    fields = try c.decode([String: String].self, forKey: .fields).sorted { $0.key < $1.key }.map { TraceField($0.key, $0.value) }
    time = try c.decode(TraceTime.self, forKey: .time)
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(subsystem, forKey: .subsystem)
    try c.encode(event, forKey: .event)
    try c.encode(message, forKey: .message)
    try c.encode(Dictionary(fields.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a }), forKey: .fields)
    try c.encode(time, forKey: .time)
  }
}

/// A mark of a step's timeline: a slice that begins or ends (a path frame pushed or popped, or
/// a stage a path opened such as a buffer's revoke), or an atomic region that ended.
public struct TraceMarkLine: Codable, Hashable, Sendable {
  public enum Kind: String, Codable, Sendable { case begin, end, region }
  public var kind: Kind
  /// The slice's name, or the region's label; `nil` for an end.
  public var name: String?
  /// The thread's stack depth of the frame (1: the operation itself); 0 for a stage a path
  /// opened inside its frame; `nil` for a region.
  public var depth: Int?
  public var thread: String?
  public var time: TraceTime

  public init(_ mark: TraceMark) {
    switch mark.kind {
    case .begin(let name, let depth): kind = .begin; self.name = name; self.depth = depth
    case .end(let depth): kind = .end; self.depth = depth
    case .region(let label): kind = .region; name = label
    }
    thread = mark.thread
    time = mark.time
  }
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
  /// The step's timeline besides its events: slices begun and ended, regions run.
  public var marks: [TraceMarkLine]
  public var invariantViolations: [InvariantViolation]
  public var nanoseconds: UInt64

  /// The call succeeded.
  public var succeeded: Bool { result.ok }
  /// `file:line`, for FAILED lines.
  public var location: String { "\(file):\(line)" }

  init(step: ScenarioStep, thread: String, result: OpResult, trace: [TraceLine], marks: [TraceMarkLine] = [],
       violations: [InvariantViolation], nanoseconds: UInt64) {
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
    } else if let unfinished = Self.unfinished(result) {
      // A step that never finishes, or a model bug, is never merely "without expect".
      mismatch = unfinished
      verdict = .notAsExpected
    } else {
      verdict = step.stateExpectation == nil ? .unchecked : .asExpected
    }
    self.trace = trace
    self.marks = marks
    invariantViolations = violations
    self.nanoseconds = nanoseconds
  }

  /// Why a step without `expect:` still fails the run: it livelocked or deadlocked (only
  /// `expect: livelock` / `expect: deadlock` accept that), or the model broke a lock rule of
  /// its own (nothing accepts that).
  static func unfinished(_ result: OpResult) -> String? {
    switch result {
    case .failure(.livelock(let what)): "the step never finishes (livelock: \(what)); expect: livelock if that is the point"
    case .failure(.deadlock(let what)): "the step never finishes (deadlock: \(what)); expect: deadlock if that is the point"
    default: StepExpectation.modelBug(result)
    }
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

  /// The whole trace as ftrace prints it: `[  12.003] ioctl tdx:seamcall: message  fields`.
  /// The time is the model's step clock, REGION.N: the atomic regions the machine has run and
  /// the event's number within its region, so two runs of one scenario give the same file and
  /// no two events share a time. Each step opens with a `#` line naming it and ends with one
  /// giving its result.
  public var traceText: String {
    var out = "# pmmio trace: scenario \(scenario), variant \(variant)\n"
    out += "# TIME is REGION.N: REGION counts the atomic regions the machine has run (the model's step clock),\n"
    out += "# N orders what happened within one region (events, and the slice and region marks not shown here).\n"
    out += "#\n#       TIME THREAD EVENT: MESSAGE  FIELDS\n"
    let blank = "#" + String(repeating: " ", count: 12)
    func emit(_ context: String, _ line: TraceLine) {
      let time = line.time.description
      out += "[" + String(repeating: " ", count: max(0, 10 - time.count)) + time + "] \(context) \(line.ftraceText)\n"
    }
    for line in setupTrace { emit("setup", line) }
    for step in steps {
      out += "\(blank)\(step.context) step \(step.index) \(step.location): \(step.text)\n"
      for line in step.trace { emit(step.context, line) }
      out += "\(blank)\(step.context) = \(step.result.explained)\n"
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
