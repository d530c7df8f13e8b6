import KernelCore
import Platform
import Reports
#if canImport(Darwin)
import Darwin
#endif

/// Replays a scenario on a fresh ``Machine``: `steps`, then each `concurrent` path in order,
/// checking every invariant after every step.
///
/// `run` drives one path after another; the explorer interleaves the same steps. A step whose
/// `as:` step failed gets fd -1 for that name (see ``HandleEnvironment``), so the kernel's own
/// EBADF shows, as it would for a C program that did not check.
public enum ScenarioRunner {
  /// The variant a run uses: an explicit choice wins, then the scenario's `variant:`, then
  /// `reviewed`.
  public static func effectiveVariant(_ scenario: Scenario, override: Variant?) -> Variant {
    override ?? scenario.variant ?? .reviewed
  }

  /// Builds the machine and runs every step.
  /// - Throws: a ``ScenarioError`` at `machine:` when the configuration cannot be built.
  public static func run(_ scenario: Scenario, variant override: Variant? = nil,
                         options: RunOptions = RunOptions()) throws(ScenarioError) -> RunReport {
    let variant = effectiveVariant(scenario, override: override)
    let clock = ContinuousClock()
    let started = clock.now
    let machine: Machine
    do {
      machine = try Machine(configuration: scenario.machine, variant: variant)
    } catch {
      throw scenario.error(error)
    }
    guard scenario.schedule != nil else {
      return run(scenario, on: machine, variant: variant, buildTime: clock.now - started, options: options)
    }
    return runScheduled(scenario, on: machine, variant: variant, buildTime: clock.now - started)
  }

  /// Runs every step on `machine` (any ``ScenarioMachine``: tests script one).
  public static func run<M: ScenarioMachine>(_ scenario: Scenario, on machine: M, variant: Variant,
                                             buildTime: Duration = .zero, options: RunOptions = RunOptions()) -> RunReport {
    var machine = machine
    machine.setTraceFilter(options.events)
    let clock = ContinuousClock()
    let started = clock.now
    // Configuration events (devices probed, VMs created) belong to no step.
    let setup = machine.trace.drain().map(TraceLine.init)

    var handles = HandleEnvironment()
    for vm in scenario.machine.vms {
      if let fd = machine.vmFD(named: vm.name) { handles.vmFDs[vm.name] = fd }
    }

    var log = RunLog()
    let allSteps = scenario.allSteps
    let stopped = runSteps(allSteps, of: scenario, on: &machine, handles: &handles, log: &log, options: options)
    let steps = log.steps
    let finished = clock.now
    return RunReport(
      scenario: scenario.name, variant: variant.rawValue, setupTrace: setup, steps: steps,
      invariants: log.summaries,
      timings: RunReport.Timings(totalNanoseconds: (finished - started + buildTime).nanoseconds,
                                 machineBuildNanoseconds: buildTime.nanoseconds),
      stopped: stopped, notRun: stopped == nil ? 0 : allSteps.count - steps.count,
      state: options.keepState ? machine.machineState() : nil)
  }
}

extension ScenarioRunner {
  /// Runs `steps` one after another, each on its path's thread, alone to its end: the
  /// invariants are checked after each, its expectations judged, and the report recorded.
  /// - Returns: why the run stopped early, if it did.
  static func runSteps<M: ScenarioMachine>(_ steps: [ScenarioStep], of scenario: Scenario, on machine: inout M,
                                           handles: inout HandleEnvironment, log: inout RunLog,
                                           options: RunOptions) -> RunReport.Stop? {
    let clock = ContinuousClock()
    for step in steps {
      if let last = options.stopAfterStep, step.index > last { break }
      let operation = step.operation(in: handles)
      let before = clock.now
      let result = machine.perform(operation, context: step.path.context)
      let elapsed = clock.now - before
      if let name = step.binding { handles.bind(name, to: result) }
      let (events, marks) = machine.trace.drainAll()
      let violations = log.check(machine.checkInvariants(quiescent: true), at: step.index)
      var report = StepReport(step: step, thread: scenario.threadName(for: step.path), result: result,
                              trace: events.map(TraceLine.init), marks: marks.map(TraceMarkLine.init), violations: violations, nanoseconds: elapsed.nanoseconds)
      if let expected = step.stateExpectation {
        report.judge(stateMismatches: expected.mismatches(in: machine.machineState(), handles: handles))
      }
      log.steps.append(report)
      options.progress?(log.steps.count, steps.count)
      if options.stopOnFailure, report.verdict == .notAsExpected || !violations.isEmpty {
        if log.steps.count < steps.count { return RunReport.Stop(afterStep: step.index, reason: "--stop-on-failure") }
        break
      }
    }
    return nil
  }
}

/// What a run has recorded so far: step reports and, per invariant, how often it was checked
/// and when it first broke.
struct RunLog {
  var steps: [StepReport] = []
  var invariants: [String: InvariantSummary] = [:]
  var order: [String] = []

  /// Counts `checks` made after step `index`; returns the violations among them.
  mutating func check(_ checks: [InvariantCheck], at index: Int) -> [InvariantViolation] {
    var violations: [InvariantViolation] = []
    for check in checks {
      if invariants[check.name] == nil {
        invariants[check.name] = InvariantSummary(name: check.name)
        order.append(check.name)
      }
      invariants[check.name]?.checks += 1
      if let message = check.violation {
        violations.append(InvariantViolation(name: check.name, message: message))
        invariants[check.name]?.violations += 1
        if invariants[check.name]?.firstViolationStep == nil {
          invariants[check.name]?.firstViolationStep = index
          invariants[check.name]?.firstViolation = message
        }
      }
    }
    return violations
  }

  var summaries: [InvariantSummary] { order.compactMap { invariants[$0] } }
}

/// How a run goes besides its steps: where it stops, what it keeps, whom it tells.
public struct RunOptions: Sendable {
  /// Stop at the first step not as expected or the first invariant violated.
  public var stopOnFailure = false
  /// Run no step past this index (0: build the machine only). `pmmio show --at`.
  public var stopAfterStep: Int?
  /// Keep the machine's state after the last step run in ``RunReport/state``.
  public var keepState = false
  /// Told after each step: steps run, steps in all.
  public var progress: (@Sendable (Int, Int) -> Void)?
  /// Which trace events are recorded (`--events`); the others are never built.
  public var events: TraceFilter
  public init(stopOnFailure: Bool = false, stopAfterStep: Int? = nil, keepState: Bool = false,
              events: TraceFilter = .all, progress: (@Sendable (Int, Int) -> Void)? = nil) {
    self.stopOnFailure = stopOnFailure; self.stopAfterStep = stopAfterStep
    self.keepState = keepState; self.events = events; self.progress = progress
  }
}

/// What the runner needs of a machine: ``Machine``'s entry points.
public protocol ScenarioMachine {
  /// Runs `op` on a thread of `context`, alone, to its end.
  mutating func perform(_ op: Operation, context: ContextID) -> OpResult
  /// The invariants; `quiescent`: no thread is inside a path.
  func checkInvariants(quiescent: Bool) -> [InvariantCheck]
  func vmFD(named name: String) -> FD?
  var trace: Trace { get set }
  /// The machine as `pmmio show` prints it; `nil` for machines that have none (scripts).
  func machineState() -> MachineState?
  /// Records only the events `filter` lets through, wherever the machine traces.
  mutating func setTraceFilter(_ filter: TraceFilter)
}

extension ScenarioMachine {
  public func machineState() -> MachineState? { nil }
  public mutating func setTraceFilter(_ filter: TraceFilter) { trace.filter = filter }
}

extension Machine: ScenarioMachine {
  public func machineState() -> MachineState? { MachineState(self) }
}

extension Duration {
  var nanoseconds: UInt64 {
    let (seconds, attoseconds) = components
    guard seconds >= 0 else { return 0 }
    return UInt64(seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
  }
}
