import HostKVM
import KernelCore
import KVM
import Platform
import Scenarios

/// `pmmio fuzz --oracle kvm`: KVM's memslot, VM, vCPU and guest_memfd ioctls sent to the model
/// and to this machine's `/dev/kvm` in lock step, every answer compared. The model's host is
/// configured from the kernel's own capabilities first. A disagreement is a failure like any
/// other: shrunk, and written as a scenario whose `expect:` is the kernel's answer.
public enum KVMOracle {
  /// What an oracle run is asked to do.
  public struct Options: Sendable {
    /// Ioctls to compare in all.
    public var ioctls: Int
    public var seed: UInt64
    public var variant: Variant
    public var shrink: Bool
    /// Told every 500 ioctls: compared so far.
    public var progress: (@Sendable (Int) -> Void)?
    /// How the model performs an operation (tests plant a wrong answer here).
    public var perform: FuzzPerform
    public init(ioctls: Int = 12_000, seed: UInt64 = 1, variant: Variant = .reviewed, shrink: Bool = true,
                progress: (@Sendable (Int) -> Void)? = nil, perform: @escaping FuzzPerform = { $0.perform($1) }) {
      self.ioctls = ioctls; self.seed = seed; self.variant = variant; self.shrink = shrink; self.progress = progress
      self.perform = perform
    }
  }

  /// What an oracle run did.
  public struct Report: Codable, Sendable {
    public var schema = 1
    public var seed: UInt64
    public var variant: String
    /// The running kernel's answers to `KVM_CHECK_EXTENSION`, and the largest GFN found.
    public var kernel: KVMHostCapabilities
    /// The model's host as configured from them (`machine: host:`).
    public var host: String
    /// What the kernel offers that the model's host cannot say.
    public var hostNotes: [String]
    /// Ioctls sent to both and compared, in all and per call (`KVM_SET_USER_MEMORY_REGION2
    /// EINVAL`: both answered EINVAL).
    public var compared = 0
    public var comparedByAnswer: [String: Int] = [:]
    /// Calls drawn but sent to neither, by reason.
    public var skipped: [String: Int] = [:]
    /// Memslot ioctls compared whose slot id names address space 1 or more (bits 31:16).
    public var addressSpaceCalls = 0
    public var sequences = 0
    public var seconds = 0.0
    /// The first disagreement (or other failure), shrunk.
    public var finding: FuzzFinding?
    public var exitStatus: Int32 { finding == nil ? 0 : 1 }
  }

  // MARK: The kernel's host

  /// The model's host for `kernel`: SMM from `KVM_CAP_MULTI_ADDRESS_SPACE`, MAXPHYADDR from the
  /// largest GFN, the VM types the kernel lists, memory attributes. - Returns: also what the
  /// model cannot express, in words.
  public static func host(for kernel: KVMHostCapabilities) -> (HostCapabilities, [String]) {
    var notes: [String] = []
    var types: Set<VMType> = []
    for bit in 0 ..< 32 where kernel.vmTypes & (1 << bit) != 0 {
      if let type = VMType(rawValue: UInt32(bit)) { types.insert(type) } else { notes.append("VM type \(bit) (the model has 0, 1 and 5)") }
    }
    types.insert(.default)
    var maxPhysAddr: UInt8 = 52
    if let gfn = kernel.maxGFN {
      let bits = 64 - (gfn + 1).leadingZeroBitCount - 1
      if (gfn + 1) & gfn == 0, (20 ... 40).contains(bits) {
        maxPhysAddr = UInt8(bits + 12)
      } else {
        notes.append("largest GFN 0x\(String(gfn, radix: 16)) is not (1 << (MAXPHYADDR - 12)) - 1 for a MAXPHYADDR of 32 to 52")
      }
    } else {
      notes.append("the largest GFN could not be probed; 52-bit MAXPHYADDR assumed")
    }
    if kernel.memslots != Int32(MemslotLimits.userMemSlots) { notes.append("KVM_CAP_NR_MEMSLOTS \(kernel.memslots), the model has \(MemslotLimits.userMemSlots)") }
    if kernel.maxVCPUID != Int32(VirtualMachine.maxVCPUIDs) { notes.append("KVM_CAP_MAX_VCPU_ID \(kernel.maxVCPUID), the model has \(VirtualMachine.maxVCPUIDs)") }
    return (HostCapabilities(smm: kernel.addressSpaces > 1, maxPhysAddr: maxPhysAddr, vmTypes: types,
                             memoryAttributes: kernel.memoryAttributes != 0), notes)
  }

  // MARK: Running

  /// Runs the oracle on `host` (this machine's `/dev/kvm`), pointing RAM slots at `memory`.
  public static func run(_ options: Options, host real: KVMOracleHost, memory: KVMOracleUserMemory) -> Report {
    let clock = ContinuousClock()
    let started = clock.now
    let kernel = real.capabilities(userspace: memory.readWrite)
    let (hostCaps, notes) = host(for: kernel)
    let machine = MachineConfiguration(host: hostCaps)
    var report = Report(seed: options.seed, variant: options.variant.rawValue, kernel: kernel,
                        host: FuzzScenarioText.machine(machine).joined(separator: "\n"), hostNotes: notes)
    var sequence = 0
    var lastProgress = 0
    while report.compared < options.ioctls {
      var rng = FuzzRandom(seed: Fuzzer.sequenceSeed(options.seed, sequence))
      var generator = OracleGenerator(host: hostCaps, kernel: kernel, memory: memory)
      guard var lockstep = Lockstep(machine: machine, variant: options.variant, real: real, perform: options.perform) else { break }
      var program = FuzzProgram(machine: machine, steps: [])
      defer { real.closeAll() }
      let length = rng.int(in: 30 ... 120)
      var failure: FuzzFailure?
      for _ in 0 ..< length where report.compared < options.ioctls {
        let drawn = generator.next(&rng)
        if let reason = drawn.skip {
          report.skipped[reason, default: 0] += 1
          continue
        }
        program.steps.append(drawn.step)
        let outcome = lockstep.run(drawn.step)
        generator.record(drawn.step, outcome.model)
        if let answer = outcome.compared {
          report.compared += 1
          report.comparedByAnswer[answer, default: 0] += 1
          if drawn.step.op.hasPrefix("kvm.set_user_memory_region"), case .number(let slot)? = drawn.step.arguments["slot"], slot >> 16 != 0 {
            report.addressSpaceCalls += 1
          }
        }
        if let f = outcome.failure { failure = f; break }
      }
      report.sequences += 1
      real.closeAll()
      if let failure {
        report.finding = finding(program, failure, sequence: sequence, options: options, real: real, kernel: kernel)
        break
      }
      sequence += 1
      if report.compared - lastProgress >= 500 {
        lastProgress = report.compared
        options.progress?(report.compared)
      }
    }
    let d = clock.now - started
    report.seconds = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    return report
  }

  /// A program run on the model and the kernel at once.
  struct Lockstep {
    var model: FuzzExecution
    let real: KVMOracleHost
    /// Names bound to the kernel's fds.
    var realHandles = HandleEnvironment()

    /// `nil` for a machine that cannot be built (a shrunk candidate's).
    init?(machine: MachineConfiguration, variant: Variant, real: KVMOracleHost, perform: @escaping FuzzPerform) {
      guard let model = try? FuzzExecution(machine, variant: variant, perform: perform) else { return nil }
      self.model = model
      self.real = real
    }

    struct Outcome {
      var model: OpResult?
      /// `call answer` when both sides ran it.
      var compared: String?
      var failure: FuzzFailure?
    }

    mutating func run(_ step: FuzzStep) -> Outcome {
      let call = KVMOracle.call(step.operation(in: realHandles))
      let index = model.count
      let modelOutcome = model.run(step)
      let modelFailure = modelOutcome.failure
      guard let modelResult = modelOutcome.result else { return Outcome(model: nil) }
      guard let call else { return Outcome(model: modelResult, failure: modelFailure) }
      let kernel = real.perform(call)
      if let name = step.binding {
        switch kernel {
        case .success(let fd): realHandles.bind(name, to: .success(.fd(FD(fd))))
        case .failure: realHandles.bind(name, to: .failure(.errno(.EBADF)))
        }
      }
      // The kernel's answer, and the model's check that gave the same (or a different) one.
      var answer: String
      switch kernel {
      case .success: answer = "\(call.name) ok"
      case .failure(let e): answer = "\(call.name) \(e.name)"
      }
      if let reason = modelResult.failureReason { answer += " (\(reason.function))" }
      if let disagreement = disagreement(step: step, index: index, model: modelResult, kernel: kernel) {
        return Outcome(model: modelResult, compared: answer, failure: disagreement)
      }
      return Outcome(model: modelResult, compared: answer, failure: modelFailure)
    }
  }

  /// The kernel's call for an operation, or `nil` for one the oracle does not send.
  static func call(_ op: Operation) -> KVMOracleCall? {
    switch op {
    case .kvmCreateVM(let type): .createVM(type: UInt(type.type.rawValue))
    case .kvmCreateVCPU(let vm, let id): .createVCPU(vm: vm.rawValue, id: UInt(id))
    case .kvmSetUserMemoryRegion(let vm, let region): .setUserMemoryRegion(vm: vm.rawValue, region: region)
    case .kvmSetUserMemoryRegion2(let vm, let region): .setUserMemoryRegion2(vm: vm.rawValue, region: region)
    case .kvmCreateGuestMemfd(let vm, let size, let flags): .createGuestMemfd(vm: vm.rawValue, size: size, flags: flags)
    case .kvmSetMemoryAttributes(let vm, let address, let size, let attributes, let flags):
      .setMemoryAttributes(vm: vm.rawValue, address: address, size: size, attributes: attributes, flags: flags)
    case .kvmCheckExtension(let vm, let capability): .checkExtension(fd: vm?.rawValue, capability: capability)
    case .kvmDestroyVM(let vm): .close(fd: vm.rawValue)
    default: nil
    }
  }

  /// The two answers' disagreement, if they differ: the errno, success against failure, or a
  /// capability's value.
  static func disagreement(step: FuzzStep, index: Int, model: OpResult, kernel: Result<Int32, Errno>) -> FuzzFailure? {
    let modelText = FuzzChecks.describe(model)
    let kernelText: String
    let agree: Bool
    switch (model, kernel) {
    case (.success(.read(let value)), .success(let k)):
      kernelText = "ok \(k)"
      agree = value == UInt64(bitPattern: Int64(k))
    case (.success, .success(let k)):
      kernelText = "ok \(k)"
      agree = true
    case (.failure(.errno(let m)), .failure(let k)):
      kernelText = "errno \(k.name)"
      agree = m == k
    case (_, .failure(let k)):
      kernelText = "errno \(k.name)"
      agree = false
    case (_, .success(let k)):
      kernelText = "ok \(k)"
      agree = false
    }
    guard !agree else { return nil }
    return FuzzFailure(kind: .oracle, step: index, op: step.op, result: "model \(modelText), kernel \(kernelText)",
                       message: "the model answered \(modelText)" + (model.failureReason.map { " (\($0))" } ?? "")
                         + "; this machine's kernel answered \(kernelText)")
  }

  /// Runs a scenario's steps on the model and the kernel in lock step (a regression scenario,
  /// or a written finding): the first disagreement or model failure, and how many ioctls were
  /// compared. Ops the kernel has no call for run on the model alone.
  public static func replay(_ scenario: Scenario, variant: Variant, host real: KVMOracleHost,
                            perform: @escaping FuzzPerform = { $0.perform($1) }) -> (failure: FuzzFailure?, compared: Int) {
    defer { real.closeAll() }
    let program = Fuzzer.program(of: scenario)
    guard program.machine.vms.isEmpty, program.machine.devices.isEmpty, program.concurrent.isEmpty else {
      return (FuzzFailure(kind: .oracle, step: 0, op: "-", result: "-",
                          message: "an oracle scenario has no machine.devices, machine.vms or concurrent paths (the kernel side has none)"), 0)
    }
    guard var lockstep = Lockstep(machine: program.machine, variant: variant, real: real, perform: perform) else {
      return (nil, 0)
    }
    var compared = 0
    for step in program.steps {
      let outcome = lockstep.run(step)
      if outcome.compared != nil { compared += 1 }
      if let f = outcome.failure { return (f, compared) }
    }
    return (nil, compared)
  }

  /// Shrinks a disagreement by running each candidate on a fresh model and fresh kernel VMs.
  static func finding(_ program: FuzzProgram, _ failure: FuzzFailure, sequence: Int, options: Options,
                      real: KVMOracleHost, kernel: KVMHostCapabilities) -> FuzzFinding {
    let evaluate: Shrinker.Evaluate = { candidate in
      defer { real.closeAll() }
      guard var lockstep = Lockstep(machine: candidate.machine, variant: options.variant, real: real, perform: options.perform) else { return nil }
      for step in candidate.steps {
        let outcome = lockstep.run(step)
        if let f = outcome.failure { return f }
        if outcome.model == nil { return nil }
      }
      return nil
    }
    var shrinker = Shrinker(signature: failure.signature, budget: 3_000, evaluate: evaluate)
    shrinker.shrinksHost = false
    let (small, smallFailure) = options.shrink ? shrinker.shrink(program, failure) : (program, failure)
    // The failing step's expect: is the kernel's answer, so that pmmio run fails until the model
    // gives it (and then stays as the regression scenario).
    var expect: String?
    var kernelAnswer = ""
    if smallFailure.kind == .oracle, let range = smallFailure.result.range(of: "kernel ") {
      kernelAnswer = String(smallFailure.result[range.upperBound...])
      expect = kernelAnswer.hasPrefix("errno ") ? "{ errno: \(kernelAnswer.dropFirst(6)) }" : "ok"
    }
    let comments = [
      "pmmio fuzz --oracle kvm found this (seed \(options.seed), sequence \(sequence), variant \(options.variant.rawValue)),",
      "on Linux \(kernel.release) (/dev/kvm): \(smallFailure.kind.rawValue) at step \(smallFailure.step + 1): \(smallFailure.op) -> \(smallFailure.result)",
    ] + Fuzzer.wrap(smallFailure.message, width: 96)
      + ["expect: is the kernel's answer: pmmio run FILE fails until the model gives it."]
    let text = FuzzScenarioText.scenario(small, name: "oracle-\(options.seed)-\(sequence)", variant: options.variant,
                                         comments: comments, failingStep: smallFailure.step < small.steps.count ? smallFailure.step : nil,
                                         expect: expect)
    return FuzzFinding(failure: smallFailure, original: failure, sequence: sequence, originalSteps: program.count,
                       steps: small.count, shrinkTries: shrinker.tries, scenario: text, file: nil, program: small)
  }
}

extension OpResult {
  /// The refusal's function and check, for a failure that carries one.
  var failureReason: Refusal? {
    if case .failure(let f) = self { return f.reason }
    return nil
  }
}
