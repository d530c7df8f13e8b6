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
  /// Steps run so far.
  var count = 0
  /// Why the machine can no longer be judged, when it cannot: a raw SEAMCALL changed the TDX
  /// module behind KVM, or a config write or reset from outside VFIO (`pci.write_command`,
  /// `pci.flr`, which vfio-pci never hears of) broke an invariant, as the README says they do.
  /// Nothing after it is judged.
  var offTheRails: String?

  init(_ configuration: MachineConfiguration, variant: Variant, perform: @escaping FuzzPerform) throws(ConfigurationError) {
    machine = try Machine(configuration: configuration, variant: variant)
    machine.setTracing(false)
    for vm in configuration.vms { if let fd = machine.vmFD(named: vm.name) { handles.vmFDs[vm.name] = fd } }
    self.perform = perform
  }

  /// Runs `step` and checks it. - Returns: its result (`nil` when it was not run: the machine
  /// went off the rails first), and its failure.
  mutating func run(_ step: FuzzStep) -> (OpResult?, FuzzFailure?) {
    let op = step.operation(in: handles)
    switch op {
    case .dmabufDetach(let a), .dmabufPin(let a), .dmabufGetPfn(let a, _):
      // The dma-buf ops are a test importer's in-kernel calls: it can only name attachments it
      // holds. An id reused by KVM's own attachment (a name whose attachment was detached) is
      // not something user space can reach, so the sequence stops before it.
      if let attachment = machine.dmabufCore.attachment(a), attachment.importer.hasPrefix("kvm ") {
        offTheRails = "a test importer named KVM's attachment (an id its own detached attachment had)"
        return (nil, nil)
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
      return (result, nil)
    }
    let failure = FuzzChecks.check(index: count, step: step, op: op, result: result, before: before, after: machine)
    switch op {
    case .guestAcceptMMIO where machine.kvm.observed.value.acceptsOfUntrustedTDI.count > before.kvm.observed.value.acceptsOfUntrustedTDI.count:
      // Run alone, the accept began on an interface already out of RUN (nothing else ran to
      // stop it): the TD itself skipped its check of the interface's state, which a TD does
      // before it accepts (after its own START_INTERFACE). The harm is the guest's own doing.
      offTheRails = "the guest accepted MMIO of an interface that was not RUN when it began (a TD checks first)"
      return (result, nil)
    case .pciFLR, .pciWriteCommand:
      if let failure, failure.kind == .invariant {
        offTheRails = "\(step.op) from outside VFIO broke \(failure.invariant ?? "an invariant")"
        return (result, nil)
      }
    default:
      break
    }
    return (result, failure)
  }

  /// Runs `program`'s steps until the first failure.
  /// - Parameter strict: known findings (``KnownFinding``) are failures too.
  /// - Returns: the failure, or `nil` (also when the machine cannot be built).
  static func firstFailure(_ program: FuzzProgram, variant: Variant, perform: @escaping FuzzPerform,
                           strict: Bool = false, stepLog: (@Sendable (FuzzStep) -> Void)? = nil) -> FuzzFailure? {
    guard var run = try? FuzzExecution(program.machine, variant: variant, perform: perform) else { return nil }
    for step in program.steps {
      stepLog?(step)
      let (_, failure) = run.run(step)
      if let failure { return strict || KnownFinding.match(failure, run.machine) == nil ? failure : nil }
      if run.offTheRails != nil { return nil }
    }
    guard !program.concurrent.isEmpty else { return nil }
    return InterleavingRun.firstFailure(program, after: run, variant: variant, strict: strict)
  }
}

extension Machine {
  /// Whether the TDISP interface whose MMIO the page at `gpa` of the VM behind `vmFD` maps is
  /// RUN (`nil`: no such VM, slot or device): what a TD checks before it accepts the page.
  func interfaceRuns(vm vmFD: FD, gpa: GPA) -> Bool? {
    guard case .vm(let id)? = try? files.lookup(vmFD), let vm = kvm.vms[id],
          let binding = vm.memslot(containing: vm.faultGFN(gpa))?.dmaBuf,
          let buffer = vfio.dmaBuf(binding.dmaBuf), let device = vfio.device(buffer.exporter) else { return nil }
    return device.function.tdiState == .run
  }
}
