import Glibc
import KernelCore
import KVM
import Platform
import TDX

/// How the fuzzer performs an operation. The default is ``Machine/perform(_:)``; tests plant a
/// wrong answer through it to see the fuzzer find and shrink it.
public typealias FuzzPerform = @Sendable (inout Machine, Operation) -> OpResult

/// The checks after each operation: no trap (a trap ends the process, which the command reports
/// with its seed and sequence), every invariant, a failed op changes nothing but the documented
/// exceptions, and its errno is one its table lists.
public enum FuzzChecks {
  /// The documented exceptions to "a failed operation leaves the machine as it was" (README,
  /// "Where a failed operation does change the machine"), as the kernel has them too:
  /// - a guest op (`guest.read`, `guest.write`, `guest.accept_mmio`) runs the vCPU, and what the
  ///   host finished on the way (an EPT violation mapped the page MMIO_PENDING, a memory-fault
  ///   exit filled `kvm_run`) stays done when the guest's own call then fails;
  /// - an op during which KVM met a TDX status it does not expect leaves its VM dead
  ///   (`KVM_BUG_ON`) and fails `EIO`.
  /// History (counters, logs, retries: ``Observed``) is outside `==` and never counts.
  /// - Returns: why the change is allowed, or `nil`.
  public static func changeOnFailureAllowed(_ op: Operation, before: Machine, after: Machine) -> String? {
    switch op {
    case .guestRead, .guestWrite, .guestAcceptMMIO:
      return "a guest op: the vCPU ran, and what the host did for it stays done"
    default:
      break
    }
    let died = after.kvm.vms.contains { id, vm in vm.isDead && before.kvm.vms[id]?.isDead == false }
    return died ? "KVM_BUG_ON killed a VM during the op" : nil
  }

  /// The failure, if any, of step `index` (op `op`, which returned `result` on `after`, which
  /// was `before`).
  /// `invariants`: false once a known finding broke the machine (``FuzzExecution/degraded``).
  static func check(index: Int, step: FuzzStep, op: Operation, result: OpResult, before: Machine, after: Machine,
                    invariants: Bool = true) -> FuzzFailure? {
    // Only a failure's report needs the result as text: it is made then, not for every op.
    var text: String { describe(result) }
    func failure(_ kind: FuzzFailure.Kind, _ message: String, invariant: String? = nil) -> FuzzFailure {
      FuzzFailure(kind: kind, step: index, op: step.op, invariant: invariant, result: text, message: message)
    }
    if case .failure(let f) = result {
      switch f {
      case .lockViolation(let v): return failure(.modelBug, "lock violation: \(v)")
      case .deadlock(let what): return failure(.deadlock, what)
      case .livelock(let what): return failure(.livelock, what)
      default: break
      }
    }
    // The state invariants held before the op; when it left the state as it was (compared by
    // identity first, so this is cheap), they hold now. History is outside `==`: its
    // invariants are read after every op.
    let changed = after != before
    if invariants, let v = after.firstViolation(of: changed ? [.everyState, .quiescent, .history] : [.history]) {
      return failure(.invariant, v.violation ?? "", invariant: v.name)
    }
    guard case .failure(let f) = result else { return nil }
    let table = op.errnoTable
    if !table.allows(f) {
      switch f {
      case .errno(let e):
        let reason = e.reason.map { " (\($0))" } ?? ""
        return failure(.errnoNotInTable, "\(e.name)\(reason) is not in the table of \(step.op) (\(table.call) can return \(table.errnoNames.joined(separator: ", ")))")
      default:
        return failure(.failureNotInTable, "\(step.op) (\(table.call)) cannot fail with \(text)")
      }
    }
    if changed, changeOnFailureAllowed(op, before: before, after: after) == nil {
      return failure(.changedOnFailure, "\(step.op) failed with \(text) but changed the machine: \(difference(before, after))")
    }
    return nil
  }

  /// A result as reports print it (`errno EINVAL`, `ok fd 5`).
  static func describe(_ result: OpResult) -> String {
    switch result {
    case .success(.none): "ok"
    case .success(.fd(let fd)): "ok \(fd)"
    case .success(let v): "ok \(v)"
    case .failure(let f): "\(f)"
    }
  }

  /// Which parts of the machine differ, in words (for a changed-on-failure report).
  static func difference(_ a: Machine, _ b: Machine) -> String {
    var parts: [String] = []
    if a.files != b.files { parts.append("the fd table") }
    if a.vfio != b.vfio { parts.append("VFIO (devices, files or buffers)") }
    if a.dmabufCore != b.dmabufCore { parts.append("dma-bufs") }
    if a.kvm.vms != b.kvm.vms {
      for (id, vm) in b.kvm.vms where a.kvm.vms[id] != vm {
        guard let old = a.kvm.vms[id] else { parts.append("vm\(id.rawValue) appeared"); continue }
        var what: [String] = []
        if old.memslots != vm.memslots { what.append("memslots") }
        if old.mmu != vm.mmu { what.append("TDP MMU") }
        if old.vcpus != vm.vcpus { what.append("vCPUs") }
        if old.isDead != vm.isDead { what.append("dead") }
        if old.memoryAttributes != vm.memoryAttributes { what.append("attributes") }
        if old.guestMemfds != vm.guestMemfds { what.append("guest_memfds") }
        parts.append("vm\(id.rawValue) " + (what.isEmpty ? "(other state)" : what.joined(separator: ", ")))
      }
      for id in a.kvm.vms.keys where b.kvm.vms[id] == nil { parts.append("vm\(id.rawValue) went away") }
    }
    if a.kvm.tdx != b.kvm.tdx { parts.append("the TDX module") }
    if parts.isEmpty { parts.append("KVM host state") }
    return parts.joined(separator: "; ")
  }
}

/// Wrong answers planted on purpose, for tests to see the fuzzer and the oracle catch them
/// (`pmmio fuzz --plant NAME`, hidden from help). Each returns the model's answer except in one
/// case, where it lies.
public enum FuzzPlants {
  public static let all: [String: FuzzPerform] = [
    // KVM_CREATE_VCPU past KVM_MAX_VCPU_IDS answers E2BIG instead of EINVAL.
    "vcpu-id-e2big": { machine, op in
      if case .kvmCreateVCPU(_, let id) = op, id >= VirtualMachine.maxVCPUIDs { return .failure(.errno(.E2BIG)) }
      return machine.perform(op)
    },
    // A trap, as a model bug that kills the process would be one: a raw TDH.MNG.CREATE asking
    // for more vCPUs than a TD may have aborts (once a real trap of the model's).
    "mng-create-traps": { machine, op in
      if case .tdxSeamcall(leaf: 9, let args) = op, let count = args.first, count > UInt64(TDXModule.maxVCPUsPerTD) {
        abort()
      }
      return machine.perform(op)
    },
    // A test-only exporter whose attach answers ENOSPC where it would succeed.
    "attach-enospc": { machine, op in
      let result = machine.perform(op)
      if case .dmabufAttach = op, case .success = result { return .failure(.errno(.ENOSPC)) }
      return result
    },
  ]
}
