import KernelCore
import Platform
import Scenarios

/// One operation of a fuzz program, as a scenario writes it: the op's name, its arguments by
/// key (every key of the op's ``OpSpec`` that has a default is filled in), and the name `as:`
/// binds. Handles are names of earlier steps' results (or literals), so removing a step while
/// shrinking leaves the later ones meaningful: a name whose step is gone or failed stands for
/// fd -1, as ``HandleEnvironment`` says and as `pmmio run` resolves it.
public struct FuzzStep: Hashable, Sendable {
  public var op: String
  public var arguments: StepArguments
  public var binding: String?

  /// A step of op `op` with `arguments`; keys left out take the op's defaults.
  public init(_ op: String, _ arguments: StepArguments = [:], binding: String? = nil) {
    self.op = op
    var filled = arguments
    if let spec = OpSpec.named(op) {
      for key in spec.keys where filled[key.name] == nil {
        if case .defaulted(let value, _) = key.requirement { filled[key.name] = value }
      }
      self.binding = spec.binds == nil ? nil : binding
    } else {
      self.binding = binding
    }
    self.arguments = filled
  }

  /// The handles this step reads, by name.
  public var names: [String] {
    arguments.values.compactMap { if case .handle(.name(let n)) = $0 { n } else { nil } }
  }

  /// The ``Operation`` this step performs, its names resolved in `handles`, through the same
  /// table (``OpSpec``) the scenario parser and `pmmio run` use.
  public func operation(in handles: HandleEnvironment) -> Operation {
    var step = FuzzStep.template
    step.opName = op
    step.arguments = arguments
    step.binding = binding
    return step.operation(in: handles)
  }

  /// A parsed step whose fields are replaced: ``ScenarioStep`` has no public initializer, and
  /// its ``ScenarioStep/operation(in:)`` is the one place arguments become an ``Operation``.
  static let template: ScenarioStep = {
    do {
      let scenario = try ScenarioParser.parse("name: template\nsteps: [ { op: vfio.close, fd: 3 } ]\n", file: "<fuzz>")
      if let step = scenario.steps.first { return step }
    } catch {}
    preconditionFailure("the fuzzer's template step does not parse")
  }()

  /// The step as a ``ScenarioStep`` on `path`, for an interleaving.
  func scenarioStep(index: Int, path: StepPath) -> ScenarioStep {
    var step = FuzzStep.template
    step.index = index
    step.path = path
    step.opName = op
    step.arguments = arguments
    step.binding = binding
    step.expectation = nil
    step.text = FuzzScenarioText.flow(self, names: nil)
    return step
  }
}

/// A machine and what to do on it: the unit the fuzzer runs, shrinks and writes out.
public struct FuzzProgram: Hashable, Sendable {
  public var machine: MachineConfiguration
  /// Run one after another on the ioctl thread.
  public var steps: [FuzzStep]
  /// Concurrent paths (`--interleave`), started after `steps`.
  public var concurrent: [[FuzzStep]]
  /// The schedule of the concurrent paths' regions, by thread name; what it leaves unfinished
  /// runs to its end as `pmmio run` finishes it.
  public var schedule: [String]?

  public init(machine: MachineConfiguration, steps: [FuzzStep], concurrent: [[FuzzStep]] = [], schedule: [String]? = nil) {
    self.machine = machine; self.steps = steps; self.concurrent = concurrent; self.schedule = schedule
  }

  /// How many operations it has.
  public var count: Int { steps.count + concurrent.reduce(0) { $0 + $1.count } }
}
