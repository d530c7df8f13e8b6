import KernelCore
import Platform

/// One atomic region a scheduled run stepped.
public struct ScheduledRegion: Codable, Hashable, Sendable {
  /// 1-based, in the order they ran.
  public var index: Int
  public var thread: String
  /// The region, as its path names it, or why the thread could not take it.
  public var region: String
  public var trace: [TraceLine]
  public var invariantViolations: [InvariantViolation]
  /// The scenario step whose operation ended with this region.
  public var completedStep: Int?
  /// False for the regions run after the schedule, to finish what it left running.
  public var scheduled: Bool
  /// A scheduled thread that could not run (blocked, or nothing left to do).
  public var problem: String?
}

extension ScenarioRunner {
  /// `steps` one after another, then the `schedule:`: each entry steps that thread (or vCPU)
  /// one atomic region, and the invariants are checked after each region (the quiescent ones
  /// where no thread is inside a path). What the schedule leaves unfinished then runs to its
  /// end, thread after thread. A scheduled thread that is blocked or has nothing to do fails
  /// the run at that entry.
  static func runScheduled(_ scenario: Scenario, on machine: Machine, variant: Variant, buildTime: Duration) -> RunReport {
    let clock = ContinuousClock()
    let started = clock.now
    var machine = machine
    let setup = machine.trace.drain().map(TraceLine.init)
    var handles = HandleEnvironment()
    for vm in scenario.machine.vms { if let fd = machine.vmFD(named: vm.name) { handles.vmFDs[vm.name] = fd } }
    var log = RunLog()
    _ = runSteps(scenario.steps, of: scenario, on: &machine, handles: &handles, log: &log, options: RunOptions())

    var (program, state) = InterleavingProgram.start(scenario, machine: machine, handles: handles)
    var regions: [ScheduledRegion] = []
    var problems = 0
    let base = scenario.allSteps.count

    /// Steps `actor` once and records the region; false when it could not run.
    func run(_ actor: Actor, scheduled: Bool, in state: inout Interleaving) -> Bool {
      var contention = Contention()
      let name = program.name(of: actor)
      let outcome = state.step(actor, program, contention: &contention)
      let events = state.drainTrace().map(TraceLine.init)
      var region = ScheduledRegion(index: regions.count + 1, thread: name, region: "", trace: events,
                                   invariantViolations: [], completedStep: nil, scheduled: scheduled, problem: nil)
      switch outcome {
      case .blocked(let wait):
        region.region = "blocked"
        region.problem = "\(name) cannot run: it waits for \(wait)"
      case .idle:
        region.region = "nothing to do"
        region.problem = "\(name) has nothing left to do"
      case .modelBug(let violation):
        region.region = "model bug"
        region.problem = "\(name): \(violation)"
      case .ran(let label, let completed):
        region.region = label.map { "\($0)" } ?? "finish"
        if let completed {
          region.completedStep = completed.step.index
          let report = StepReport(step: completed.step, thread: name, result: completed.result, trace: [],
                                  violations: [], nanoseconds: 0)
          log.steps.append(report)
        }
        let checks = state.machine.checkInvariants(quiescent: state.isQuiescent)
        region.invariantViolations = log.check(checks, at: base + region.index)
      }
      regions.append(region)
      return region.problem == nil
    }

    for entry in scenario.schedule ?? [] {
      let actor = state.actors(program).first { program.name(of: $0) == entry.actor }
        ?? program.names.firstIndex(of: entry.actor).map { Actor.thread($0) }
      guard let actor else {
        regions.append(ScheduledRegion(index: regions.count + 1, thread: entry.actor, region: "nothing to do", trace: [],
                                       invariantViolations: [], completedStep: nil, scheduled: true,
                                       problem: "\(entry.position): no thread or vCPU '\(entry.actor)' can run now"))
        problems += 1
        continue
      }
      if !run(actor, scheduled: true, in: &state) { problems += 1 }
    }
    // Finish what the schedule left running: each thread in turn; vCPUs answer kicks when a
    // thread waits for them. Running one fixed order, a state seen twice repeats for ever.
    let end = Interleaving.finish(&state, program) { actor, state in
      // A region that could not run after the probe said it could is a problem of its own.
      if !run(actor, scheduled: false, in: &state) { problems += 1; return false }
      return true
    }
    switch end {
    case .done, .stopped: break
    case .livelock:
      regions.append(ScheduledRegion(index: regions.count + 1, thread: "-", region: "livelock", trace: [],
                                     invariantViolations: [], completedStep: nil, scheduled: false,
                                     problem: "after the schedule the threads come back to a state they were in: they would run for ever"))
      problems += 1
    case .deadlock:
      regions.append(ScheduledRegion(index: regions.count + 1, thread: "-", region: "deadlock", trace: [],
                                     invariantViolations: [], completedStep: nil, scheduled: false,
                                     problem: "after the schedule every thread with work left waits"))
      problems += 1
    }
    var report = RunReport(
      scenario: scenario.name, variant: variant.rawValue, setupTrace: setup, steps: log.steps,
      invariants: log.summaries,
      timings: RunReport.Timings(totalNanoseconds: (clock.now - started + buildTime).nanoseconds,
                                 machineBuildNanoseconds: buildTime.nanoseconds))
    report.schedule = regions
    if problems > 0 { report.exitStatus = 1 }
    return report
  }
}
