import KernelCore
import Platform
import Scenarios

/// `--interleave`: after a program's `steps`, its concurrent paths run as threads, one atomic
/// region at a time in a random order (``Interleaving/step(_:_:contention:)``, the explorer's
/// and `pmmio run`'s driver), with every invariant checked after each region and each finished
/// operation's answer checked against its table. What the schedule leaves unfinished runs to
/// its end as `pmmio run` finishes it (each thread in turn), so the written scenario replays the
/// same regions.
///
/// A schedule entry is `#N` for concurrent path N (its name, `ctxN` or `vcpuN`, is given when
/// the scenario is written, as it depends on the path's steps) or a vCPU's IPI by its name.
enum InterleavingRun {
  enum Outcome {
    case clean
    /// The machine stopped being one a kernel could be in (see ``FuzzExecution/offTheRails``).
    case offTheRails(String)
    /// The failure, and the machine it was seen on.
    case failure(FuzzFailure, Machine)
    /// A scheduled entry could not run (a shrunk candidate that no longer fits its schedule).
    case invalid
  }

  /// The scenario the interleaving runs, with `program`'s steps and paths.
  static func scenario(_ program: FuzzProgram, variant: Variant) -> Scenario {
    let position = SourcePosition(file: "<fuzz>", line: 1, column: 1)
    var index = 0
    func steps(_ list: [FuzzStep], _ path: StepPath) -> [ScenarioStep] {
      list.map { step in
        index += 1
        return step.scenarioStep(index: index, path: path)
      }
    }
    let main = steps(program.steps, .main)
    let paths = program.concurrent.enumerated().map { steps($1, .concurrent($0)) }
    return Scenario(name: "fuzz", variant: variant, machine: program.machine, machinePosition: position,
                    steps: main, concurrent: paths)
  }

  /// The thread or vCPU a schedule entry names now.
  static func actor(_ token: String, _ program: InterleavingProgram, _ state: Interleaving) -> Actor? {
    if token.hasPrefix("#"), let n = Int(token.dropFirst()) {
      return n < program.paths.count ? .thread(n) : nil
    }
    return state.actors(program).first { program.name(of: $0) == token }
  }

  /// The schedule entry for `actor`.
  static func token(_ actor: Actor, _ program: InterleavingProgram) -> String {
    switch actor {
    case .thread(let n): "#\(n)"
    case .ipi: program.name(of: actor)
    }
  }

  /// Replays `program`'s schedule on the machine `run` left after the steps.
  static func firstFailure(_ program: FuzzProgram, after run: FuzzExecution, variant: Variant) -> FuzzFailure? {
    if case .failure(let f, let machine) = replay(program, after: run, variant: variant), run.known(f, on: machine) == nil { return f }
    return nil
  }

  static func replay(_ program: FuzzProgram, after run: FuzzExecution, variant: Variant) -> Outcome {
    let scenario = scenario(program, variant: variant)
    var (prog, state) = InterleavingProgram.start(scenario, machine: run.machine, handles: run.handles)
    var checker = RegionChecker(base: run.count)
    for token in program.schedule ?? [] {
      guard let actor = actor(token, prog, state) else { return .invalid }
      switch checker.step(actor, &state, prog) {
      case .ran: break
      case .cannotRun: return .invalid
      case .failed(let f): return .failure(f, state.machine)
      case .offTheRails(let why): return .offTheRails(why)
      }
    }
    return checker.finish(&state, prog)
  }

  /// Steps actors and checks each region.
  struct RegionChecker {
    /// Steps before the first region (failures count regions from there).
    let base: Int
    var regions = 0
    /// Threads whose `guest.accept_mmio` began while its page's interface was not RUN: a TD
    /// checks first, so such an accept is the fuzzer's guest misbehaving, not the kernel.
    var acceptsBegunOffRun: Set<Int> = []
    /// Invariants a config write or reset from outside VFIO (`pci.write_command`, `pci.flr`)
    /// broke, with the op: judged as the sequential fuzzer judges such an op (the machine is
    /// off the rails, not judged further). Run concurrently, what it breaks may show only
    /// later, once the machine is quiescent, so its region is judged with every invariant, the
    /// quiescent ones too, against the state before it.
    var brokenFromOutsideVFIO: [String: String] = [:]

    static let outsideVFIO: Set<String> = ["pci.flr", "pci.write_command"]

    enum StepOutcome { case ran, cannotRun, failed(FuzzFailure), offTheRails(String) }

    mutating func step(_ actor: Actor, _ state: inout Interleaving, _ prog: InterleavingProgram) -> StepOutcome {
      var contention = Contention()
      let opName: String = {
        guard case .thread(let i) = actor else { return "ipi" }
        let t = state.threads[i]
        if let current = t.current { return current.operation.name }
        return t.next < prog.paths[t.path].count ? prog.paths[t.path][t.next].opName : "?"
      }()
      if case .thread(let i) = actor, state.threads[i].current == nil {
        acceptsBegunOffRun.remove(i)
        let t = state.threads[i]
        if t.next < prog.paths[t.path].count,
           case .guestAcceptMMIO(let vm, let gpa, _, _) = prog.paths[t.path][t.next].operation(in: t.handles),
           state.machine.interfaceRuns(vm: vm, gpa: gpa) != true {
          acceptsBegunOffRun.insert(i)
        }
      }
      let acceptsBefore = state.machine.kvm.observed.value.acceptsOfUntrustedTDI.count
      let fromOutsideVFIO = Self.outsideVFIO.contains(opName)
      let brokenBefore = fromOutsideVFIO ? Self.broken(state.machine) : []
      let outcome = state.step(actor, prog, contention: &contention)
      if fromOutsideVFIO, case .ran = outcome {
        for name in Self.broken(state.machine).subtracting(brokenBefore) { brokenFromOutsideVFIO[name] = opName }
      }
      let at = base + regions
      switch outcome {
      case .blocked, .idle:
        return .cannotRun
      case .modelBug(let v):
        regions += 1
        return .failed(FuzzFailure(kind: .modelBug, step: at, op: opName, result: "-", message: "\(prog.name(of: actor)): lock violation: \(v)"))
      case .ran(_, let completed):
        regions += 1
        if let completed {
          let table = Operation.errnoTable(named: completed.step.opName)
          let text = FuzzChecks.describe(completed.result)
          if case .failure(let f) = completed.result {
            switch f {
            case .lockViolation(let v):
              return .failed(FuzzFailure(kind: .modelBug, step: at, op: completed.step.opName, result: text, message: "lock violation: \(v)"))
            case .deadlock(let what):
              return .failed(FuzzFailure(kind: .deadlock, step: at, op: completed.step.opName, result: text, message: what))
            case .livelock(let what):
              return .failed(FuzzFailure(kind: .livelock, step: at, op: completed.step.opName, result: text, message: what))
            default:
              if !table.allows(f) {
                let kind: FuzzFailure.Kind = if case .errno = f { .errnoNotInTable } else { .failureNotInTable }
                return .failed(FuzzFailure(kind: kind, step: at, op: completed.step.opName, result: text,
                                           message: "\(text) is not in the table of \(completed.step.opName) (\(table.errnoNames.joined(separator: ", ")))"))
              }
            }
          }
        }
        if case .thread(let i) = actor, acceptsBegunOffRun.contains(i),
           state.machine.kvm.observed.value.acceptsOfUntrustedTDI.count > acceptsBefore {
          return .offTheRails("the guest accepted MMIO of an interface that was not RUN when it began (a TD checks first)")
        }
        if let v = state.machine.firstViolation(quiescent: state.isQuiescent) {
          if Self.outsideVFIO.contains(opName) {
            return .offTheRails("\(opName) from outside VFIO broke \(v.name)")
          }
          if let outside = brokenFromOutsideVFIO[v.name] {
            return .offTheRails("\(outside) from outside VFIO broke \(v.name)")
          }
          return .failed(FuzzFailure(kind: .invariant, step: at, op: opName, invariant: v.name, result: "-", message: v.violation ?? ""))
        }
        return .ran
      }
    }

    /// The invariants the machine breaks, the quiescent ones included.
    static func broken(_ machine: Machine) -> Set<String> {
      Set(machine.checkInvariants(quiescent: true).compactMap { $0.violation == nil ? nil : $0.name })
    }

    /// Runs what is left as `pmmio run` does after a schedule: the first thread (or vCPU)
    /// that can run, again and again; a state seen twice is a livelock, nothing able to run a
    /// deadlock.
    mutating func finish(_ state: inout Interleaving, _ prog: InterleavingProgram) -> Outcome {
      var stop: Outcome?
      let end = Interleaving.finish(&state, prog) { actor, state in
        switch step(actor, &state, prog) {
        case .failed(let f): stop = .failure(f, state.machine); return false
        case .offTheRails(let why): stop = .offTheRails(why); return false
        case .ran, .cannotRun: return true
        }
      }
      switch end {
      case .done: return .clean
      case .stopped: return stop ?? .clean
      case .livelock:
        return .failure(FuzzFailure(kind: .livelock, step: base + regions, op: "-", result: "-",
                                    message: "after the schedule the threads come back to a state they were in: they would run for ever"), state.machine)
      case .deadlock:
        return .failure(FuzzFailure(kind: .deadlock, step: base + regions, op: "-", result: "-",
                                    message: "every thread with work left waits: \(state.threads.compactMap { $0.current?.name }.joined(separator: ", "))"), state.machine)
      }
    }
  }
}
