import KernelCore
import Platform

/// A place in a scenario file, as compilers print it: `basic.yaml:12:5`.
public struct SourcePosition: Hashable, Sendable, Codable, CustomStringConvertible {
  public var file: String
  /// 1-based, as Yams' `Mark` counts.
  public var line: Int
  /// 1-based, in Unicode scalars.
  public var column: Int
  public init(file: String, line: Int, column: Int) {
    self.file = file; self.line = line; self.column = column
  }
  public var description: String { "\(file):\(line):\(column)" }
}

/// Bad input: a scenario that cannot be read or parsed, or a machine that cannot be built
/// from it. `pmmio` prints ``description`` and exits 2.
public struct ScenarioError: Error, Hashable, Sendable, CustomStringConvertible {
  /// The file the error is about (`-` and `/dev/stdin` read standard input).
  public let file: String
  /// Where in the file; `nil` when the whole file is at fault (missing, a directory).
  public let position: SourcePosition?
  public let message: String
  public init(_ position: SourcePosition, _ message: String) {
    file = position.file; self.position = position; self.message = message
  }
  /// An error about the file as a whole.
  public init(file: String, _ message: String) {
    self.file = file; position = nil; self.message = message
  }
  /// `file:line:column: message`, or `file: message` for the whole file.
  public var description: String { "\(position.map(\.description) ?? file): \(message)" }
}

/// A parsed scenario (format version 1): the machine to build and the steps to replay.
public struct Scenario: Hashable, Sendable {
  public var name: String
  /// `variant:` in the file; `nil` when absent (the command line or `reviewed` decides).
  public var variant: Variant?
  public var machine: MachineConfiguration
  /// Where `machine:` is (or the top of the file), for configuration errors.
  public var machinePosition: SourcePosition
  /// `steps:`, run one after another in the ioctl context.
  public var steps: [ScenarioStep]
  /// `concurrent:`: paths that `explore` interleaves; `run` runs them in order after `steps`.
  public var concurrent: [[ScenarioStep]]

  /// Where each device, BAR and VM of `machine` is written, for configuration errors.
  public var machinePositions: MachinePositions

  public init(name: String, variant: Variant?, machine: MachineConfiguration,
              machinePosition: SourcePosition, steps: [ScenarioStep], concurrent: [[ScenarioStep]],
              machinePositions: MachinePositions = MachinePositions()) {
    self.name = name; self.variant = variant; self.machine = machine
    self.machinePosition = machinePosition; self.steps = steps; self.concurrent = concurrent
    self.machinePositions = machinePositions
  }

  /// A machine that cannot be built, reported at the entry at fault (the BAR's own line), or
  /// at `machine:` when the error names none.
  public func error(_ error: ConfigurationError) -> ScenarioError {
    ScenarioError(machinePositions.position(of: error.subject) ?? machinePosition, "machine: \(error.message)")
  }

  /// `schedule:`: the threads to step, one atomic region each, in this order, after `steps`
  /// (what `pmmio explore --out` writes for a counterexample). `nil`: each concurrent path
  /// runs to its end, one after another.
  public var schedule: [ScheduleEntry]?

  /// Every step in `run` order: `steps`, then each concurrent path.
  public var allSteps: [ScenarioStep] { steps + concurrent.flatMap { $0 } }

  /// The name of the thread that runs `path`: `ioctl` for `steps`; for a concurrent path,
  /// `vcpuN` when every step is a guest op on vCPU N (and no other path is that vCPU's),
  /// else `ctxK` for path K-1. Reports, counterexamples and `schedule:` use these names.
  public func threadName(for path: StepPath) -> String {
    guard case .concurrent(let n) = path else { return "ioctl" }
    if let vcpu = Self.guestVCPU(of: concurrent[n]),
       concurrent.indices.filter({ Self.guestVCPU(of: concurrent[$0]) == vcpu }).count == 1 {
      return "vcpu\(vcpu)"
    }
    return "ctx\(n + 1)"
  }

  /// The vCPU every step of `path` runs on, when they are all guest ops on one vCPU.
  static func guestVCPU(of path: [ScenarioStep]) -> UInt64? {
    var vcpu: UInt64?
    for step in path {
      guard let n = step.guestVCPU else { return nil }
      if let vcpu, vcpu != n { return nil }
      vcpu = n
    }
    return vcpu
  }
}

/// Where each entry of `machine:` is written.
public struct MachinePositions: Hashable, Sendable {
  /// `machine.devices[n]`.
  public var devices: [SourcePosition] = []
  /// `machine.devices[n].bars[m]`.
  public var bars: [[SourcePosition]] = []
  /// `machine.vms[n]`.
  public var vms: [SourcePosition] = []
  public init() {}

  public func position(of subject: ConfigurationSubject?) -> SourcePosition? {
    switch subject {
    case .device(let d): devices.indices.contains(d) ? devices[d] : nil
    case .bar(let d, let b): bars.indices.contains(d) && bars[d].indices.contains(b) ? bars[d][b] : nil
    case .vm(let v): vms.indices.contains(v) ? vms[v] : nil
    case nil: nil
    }
  }
}

/// One entry of a `schedule:`: a thread's name (`vcpu1`, `ctx2`), or a vCPU answering a kick
/// (`vcpu0.ipi`, `td0.vcpu0.ipi`).
public struct ScheduleEntry: Hashable, Sendable {
  public var actor: String
  public var position: SourcePosition
  public init(actor: String, position: SourcePosition) { self.actor = actor; self.position = position }

  /// Whether `name` names a vCPU answering a kick's IPI.
  public static func isIPI(_ name: String) -> Bool {
    guard name.hasSuffix(".ipi") else { return false }
    let vcpu = name.dropLast(4).split(separator: ".").last ?? ""
    return vcpu.hasPrefix("vcpu") && UInt32(vcpu.dropFirst(4)) != nil
  }
}

/// Where a step lives: the sequential `steps`, or concurrent path `n` (0-based).
public enum StepPath: Hashable, Sendable, Codable {
  case main
  case concurrent(Int)

  /// The kernel context that runs the path: the ioctl context for `steps`, one per path after.
  public var context: ContextID {
    switch self {
    case .main: .ioctl
    case .concurrent(let n): ContextID(rawValue: UInt32(truncatingIfNeeded: n + 1))
    }
  }
}

/// One operation of a scenario, with its arguments as written (names not yet resolved to fds).
public struct ScenarioStep: Hashable, Sendable {
  /// 1-based position in `run` order.
  public var index: Int
  public var path: StepPath
  public var position: SourcePosition
  /// The op name as written (`vfio.dma_buf`).
  public var opName: String
  /// The step as written, without its `expect:` (flow style, numbers in their original form).
  public var text: String
  public var arguments: StepArguments
  /// `as:`: the name bound to the fd or attachment the step returns.
  public var binding: String?
  /// `nil`: the step may fail; it is reported but not judged.
  public var expectation: StepExpectation?
  /// `expect: { state: { ... } }`: what the machine must look like after the step.
  public var stateExpectation: StateExpectation?

  /// The ``Operation`` this step performs, names resolved against what earlier steps returned.
  public func operation(in handles: HandleEnvironment) -> Operation {
    guard let spec = OpSpec.named(opName) else {
      // The parser accepts only known ops; a hand-built step with another name probes nothing.
      return .vfioClose(fd: FD(-1))
    }
    return spec.build(ResolvedArguments(values: arguments, handles: handles))
  }

  /// The vCPU a guest op runs on (`vcpu:`, 0 when absent); `nil` for any other op.
  var guestVCPU: UInt64? {
    guard opName.hasPrefix("guest.") else { return nil }
    if case .number(let v)? = arguments["vcpu"] { return v }
    return 0
  }
}
