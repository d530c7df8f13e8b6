import KernelCore
import PCI
import Platform
import Scenarios

/// A machine being fuzzed: it runs steps one after another on the ioctl thread, as `pmmio run`
/// does, and checks each.
struct FuzzExecution {
  var machine: Machine
  var handles = HandleEnvironment()
  let perform: FuzzPerform
  /// Invariant names (and `livelock`, `deadlock`) that are known findings (`--ignore`).
  let ignoring: Set<String>
  /// Known findings (``KnownFinding``) are failures too.
  let strict: Bool
  /// Steps run so far.
  var count = 0
  /// Why the machine can no longer be judged, when it cannot: a raw SEAMCALL changed the TDX
  /// module behind KVM, or a config write or reset from outside VFIO (`pci.write_command`,
  /// `pci.flr`, which vfio-pci never hears of) broke an invariant, as the README says they do.
  /// Nothing after it is judged.
  var offTheRails: String?
  /// A known finding broke the machine: the rest of the sequence still runs (so that ops on a
  /// VM that `KVM_BUG_ON` killed are tried), judged for traps, errno tables, changes on
  /// failure and `DeadVMAcceptsNoIoctl`, but not for the invariants the known bug broke.
  var degraded = false

  init(_ configuration: MachineConfiguration, variant: Variant, perform: @escaping FuzzPerform,
       ignoring: Set<String> = [], strict: Bool = false) throws(ConfigurationError) {
    machine = try Machine(configuration: configuration, variant: variant)
    machine.setTracing(false)
    for vm in configuration.vms { if let fd = machine.vmFD(named: vm.name) { handles.vmFDs[vm.name] = fd } }
    self.perform = perform
    self.ignoring = ignoring
    self.strict = strict
  }

  /// What one step did.
  struct StepOutcome {
    /// Its result; `nil` when it was not run (the machine went off the rails first).
    var result: OpResult?
    var failure: FuzzFailure?
    /// The known finding it hit (the sequence goes on, degraded).
    var known: String?
  }

  /// Runs `step` and checks it.
  mutating func run(_ step: FuzzStep) -> StepOutcome {
    let op = step.operation(in: handles)
    switch op {
    case .dmabufDetach(let a), .dmabufPin(let a), .dmabufGetPfn(let a, _):
      // The dma-buf ops are a test importer's in-kernel calls: it can only name attachments it
      // holds. An id reused by KVM's own attachment (a name whose attachment was detached) is
      // not something user space can reach, so the sequence stops before it.
      if let attachment = machine.dmabufCore.attachment(a), attachment.importer.hasPrefix("kvm ") {
        offTheRails = "a test importer named KVM's attachment (an id its own detached attachment had)"
        return StepOutcome()
      }
    default:
      break
    }
    let before = machine
    let result = perform(&machine, op)
    if let name = step.binding { handles.bind(name, to: result) }
    defer { count += 1 }
    if case .tdxSeamcall = op, case .success = result, before.kvm.tdx != machine.kvm.tdx {
      offTheRails = "a raw SEAMCALL changed the TDX module behind KVM"
      return StepOutcome(result: result)
    }
    guard !degraded else {
      var failure = FuzzChecks.check(index: count, step: step, op: op, result: result, before: before, after: machine,
                                     invariants: false)
      if failure == nil, machine.kvm.observed.value.deadVMIoctls > before.kvm.observed.value.deadVMIoctls {
        failure = FuzzFailure(kind: .invariant, step: count, op: step.op, invariant: "DeadVMAcceptsNoIoctl",
                              result: FuzzChecks.describe(result), message: "\(step.op) succeeded on a VM that KVM_BUG_ON marked dead")
      }
      if let f = failure, let known = known(f) { return StepOutcome(result: result, known: known) }
      return StepOutcome(result: result, failure: failure)
    }
    let failure = FuzzChecks.check(index: count, step: step, op: op, result: result, before: before, after: machine)
    switch op {
    case .guestAcceptMMIO where machine.kvm.observed.value.acceptsOfUntrustedTDI.count > before.kvm.observed.value.acceptsOfUntrustedTDI.count:
      // Run alone, the accept began on an interface already out of RUN (nothing else ran to
      // stop it): the TD itself skipped its check of the interface's state, which a TD does
      // before it accepts (after its own START_INTERFACE). The harm is the guest's own doing.
      offTheRails = "the guest accepted MMIO of an interface that was not RUN when it began (a TD checks first)"
      return StepOutcome(result: result)
    case .pciFLR, .pciWriteCommand:
      if let failure, failure.kind == .invariant {
        offTheRails = "\(step.op) from outside VFIO broke \(failure.invariant ?? "an invariant")"
        return StepOutcome(result: result)
      }
    default:
      break
    }
    if let failure, let known = known(failure) {
      degraded = true
      return StepOutcome(result: result, known: known)
    }
    return StepOutcome(result: result, failure: failure)
  }

  /// The known finding `failure` is, if the run passes over it: one it was told to ignore (any
  /// of the invariants the step broke: a known bug breaks others with it), or, unless strict, one
  /// of ``KnownFinding/all``.
  func known(_ failure: FuzzFailure, on machine: Machine? = nil) -> String? {
    let machine = machine ?? self.machine
    let name = failure.kind == .invariant ? failure.invariant ?? "" : failure.kind.rawValue
    if ignoring.contains(name) { return name }
    if failure.kind == .invariant, !ignoring.isEmpty,
       let ignored = machine.checkInvariants().first(where: { !$0.held && ignoring.contains($0.name) }) {
      return ignored.name
    }
    if !strict, let finding = KnownFinding.match(failure, machine) { return finding.name }
    return nil
  }

  /// Runs `program`'s steps (and paths) until the first failure that is not a known finding.
  /// - Returns: the failure, or `nil` (also when the machine cannot be built).
  static func firstFailure(_ program: FuzzProgram, variant: Variant, perform: @escaping FuzzPerform,
                           ignoring: Set<String> = [], strict: Bool = false,
                           stepLog: (@Sendable (FuzzStep) -> Void)? = nil) -> FuzzFailure? {
    guard var run = try? FuzzExecution(program.machine, variant: variant, perform: perform, ignoring: ignoring, strict: strict)
    else { return nil }
    for step in program.steps {
      stepLog?(step)
      let outcome = run.run(step)
      if let failure = outcome.failure { return failure }
      if run.offTheRails != nil { return nil }
    }
    guard !program.concurrent.isEmpty, !run.degraded else { return nil }
    return InterleavingRun.firstFailure(program, after: run, variant: variant)
  }
}

extension Machine {
  /// Whether the TDISP interface whose MMIO the page at `gpa` of the VM behind `vmFD` maps is
  /// RUN (`nil`: no such VM, slot or device): what a TD checks before it accepts the page.
  func interfaceRuns(vm vmFD: FD, gpa: GPA) -> Bool? {
    guard case .vm(let id)? = files[vmFD], let vm = kvm.vms[id],
          let binding = vm.memslot(containing: vm.faultGFN(gpa))?.dmaBuf,
          let buffer = vfio.dmaBuf(binding.dmaBuf), let device = vfio.device(buffer.exporter) else { return nil }
    return device.function.tdiState == .run
  }
}
