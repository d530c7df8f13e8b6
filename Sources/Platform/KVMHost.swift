import KernelCore
import PCI
import DmaBuf
import VFIO
import KVM
import TDX
import HashTreeCollections

/// KVM's side of the machine: every VM, and the TDX module the TDs run on.
///
/// One stored value, so that VFIO can hand it function state changes as its sink while VFIO
/// and the dma-buf core are themselves being mutated.
public struct KVMHost: Hashable, Sendable {
  /// Every VM, by id (``VMTable``: a lookup is a short search, no hashing).
  public internal(set) var vms: VMTable<VirtualMachine> = [:]
  /// The TD behind each TDX VM.
  public internal(set) var tds: VMTable<TDID> = [:]
  /// The TDX module (a black box behind its ABI).
  public internal(set) var tdx = TDXModule()
  /// Attachments a destroyed VM left behind (bound to slots freed by an `rfc-v1` move):
  /// nothing will ever detach them.
  public internal(set) var leaked: TreeSet<AttachmentID> = []
  /// Threads inside an ioctl of each VM that spans several regions (a memslot update,
  /// `KVM_RUN`), by VM; absent when none is.
  ///
  /// The part of `kvm->users_count` the fd table does not show: each such ioctl holds its
  /// file through `fdget()`, and the file its `kvm`, so `kvm_destroy_vm()` runs only once the
  /// VM fd, its guest_memfd files (`kvm_get_kvm()` in `__kvm_gmem_create()`) and every one of
  /// these are gone, on the thread that drops the last (`kvm_put_kvm()`). The model's vCPUs
  /// have no fds of their own (a guest op names the VM's fd and the vCPU's index), so closing
  /// the VM fd stands for closing it and its vCPU fds (`kvm_vcpu_release()`'s put); a
  /// `KVM_RUN` in flight still holds its vCPU file, and through it the VM.
  ///
  /// The count is exactly the threads inside, so equal machines with equal threads have equal
  /// counts: it is state, not history.
  public internal(set) var inFlight: VMTable<Int> = [:]
  /// What happened that the invariants about history read; outside equality.
  public internal(set) var observed = Observed(KVMObservations())
  /// TDs whose TLB epochs moved since the state was last made canonical (a TRACK, a vCPU
  /// entering or leaving the guest): only they need their epochs made relative again.
  var epochsMoved = Observed(Set<TDID>())

  /// vCPUs of a TD, fixed when the TD is built (`KVM_TDX_INIT_VM`'s `max_vcpus` here).
  public static let tdVCPUs: UInt32 = 4

  /// `move_notify` calls that reached a slot already freed (the `rfc-v1` move bug).
  public var staleMoveNotifies: Int { observed.value.staleMoveNotifies }
  /// VMs that died through `KVM_BUG_ON` (an unexpected TDX status), with the status.
  public var bugs: [String] { observed.value.bugs }

  /// A thread entered an ioctl of `vm` (its `fdget()`).
  mutating func takeInFlightReference(_ vm: VMID) { inFlight[vm] = (inFlight[vm] ?? 0) + 1 }

  /// A thread left an ioctl of `vm` that did not hold the VM's last reference.
  mutating func dropInFlightReference(_ vm: VMID) {
    guard let count = inFlight[vm] else { return }
    inFlight[vm] = count > 1 ? count - 1 : nil
  }

  /// The VM holding `attachment` as a memslot binding.
  func vm(holding attachment: AttachmentID) -> VMID? {
    vms.first { $0.value.bindings[attachment] != nil }?.key
  }

  /// The PCIe routing id a device's TDI is known by to the TDX module (bus 1, device = id).
  static func routingID(_ device: VFIODeviceID) -> DeviceInterfaceID {
    DeviceInterfaceID(0x100 | (device.rawValue << 3))
  }
}

/// The history KVM's invariants read: kept for reports and for the explorer's checks on each
/// transition, never part of the machine's state.
public struct KVMObservations: Hashable, Sendable {
  /// `move_notify` calls that reached a slot already freed (the `rfc-v1` move bug).
  public var staleMoveNotifies = 0
  /// `KVM_BUG_ON`s: the VM and the status that killed it.
  public var bugs: [String] = []
  /// `TDH.MMIO.UNMAP` calls KVM issued for an entry whose block epoch was not yet tracked.
  public var untrackedUnmaps = 0
  /// TD accesses to an MMIO_PENDING page that did not end the TD.
  public var unpunishedPendingAccesses = 0
  /// Ioctls that succeeded on a VM already dead.
  public var deadVMIoctls = 0
  /// `TDG.MMIO.ACCEPT`s that succeeded while the page's TDI was not RUN.
  public var acceptsOfUntrustedTDI: [String] = []
  /// Guest accesses that completed on a page of a buffer whose revoke had returned.
  public var accessesToRevokedMMIO: [String] = []
  /// Faults that installed a PFN of a buffer whose exporter no longer hands it out, after the
  /// invalidation covering it had ended.
  public var stalePFNInstalls: [String] = []
}

extension KVMHost {
  /// `TDX_ERROR_SEPT_BUSY` in the RFC's `arch/x86/virt/vmx/tdx/tdx.h`:
  /// `TDX_OPERAND_BUSY | TDX_OPERAND_ID_SEPT`, 0x8000020000000092.
  static let septBusy = TDXStatus.operandBusy.with(operand: TDXOperand.sept)

  /// A SEAMCALL as KVM's TDX glue makes it and classifies its status.
  ///
  /// `reviewed` retries `TDX_OPERAND_BUSY` whatever its operand (upstream's
  /// `tdx_operand_busy()`). `rfc-v1` does what patch 12 does: `tdx_mmio_map()` tests
  /// `err & TDX_OPERAND_BUSY`, a bit test that every error passes (bit 63 is set in every
  /// error status), so every failed `TDH.MMIO.MAP` is `-EBUSY` and the fault retries; BLOCK
  /// and UNMAP compare with `TDX_ERROR_SEPT_BUSY` (`TDX_OPERAND_BUSY | TDX_OPERAND_ID_SEPT`)
  /// exactly, so a busy status with another operand is `KVM_BUG_ON`. Anything else unexpected
  /// is `KVM_BUG_ON`: recorded, and the caller marks the VM dead.
  /// - Parameter contended: the busy status the driver chose for this call; the module is
  ///   not called.
  mutating func seamcall(_ vm: VMID, _ call: SeamcallLeaf, variant: Variant, contended: TDXStatus?,
                         trace: inout Trace, _ what: @autoclosure () -> String, _ fields: @autoclosure () -> [TraceField] = [],
                         _ body: (inout TDXModule) throws(TDXStatus) -> Void) -> SecureCallResult {
    let status: TDXStatus?
    if let contended {
      status = contended
      trace.emit(.tdxSeamcall, "\(call)(\(call.rawValue)) \(what()) -> \(contended) (contention)",
                 [.text("leaf", "\(call)(\(call.rawValue))")] + fields()
                   + [.text("status", contended.name), .hex("operand", UInt64(contended.operand)), .text("contention", "driver")])
    } else {
      do { try body(&tdx); status = nil } catch { status = error }
      trace.absorb(&tdx.trace)
      if let td = tds[vm] { epochsMoved.value.insert(td) }
    }
    guard let status else { return .success }
    switch (variant, call) {
    case (.rfcV1, .mmioMap):
      if status.rawValue & TDXStatus.operandBusy.rawValue != 0 { return .busy }
    case (.rfcV1, .mmioBlock), (.rfcV1, .mmioUnmap):
      if status == Self.septBusy { return .busy }
    case (.reviewed, .mmioMap):
      if status.code == TDXStatus.operandBusy { return .busy }
      if Self.hostSetupRefusals.contains(status.code) { return .refused(status: status.rawValue) }
    default:
      if status.code == TDXStatus.operandBusy { return .busy }
    }
    observed.value.bugs.append("vm\(vm.rawValue): \(call) \(what()) returned \(status)")
    return .failed(status: status.rawValue, reason: status.reason)
  }

  /// (`reviewed`) The `TDH.MMIO.MAP` statuses that come from the host's own setup of the
  /// device interface, which the VMM (through the TSM) controls and can put right: the
  /// page's MMIOMT entry was never added (`TDX_MMIOMT_NOT_PRESENT`) or is not free DATA
  /// (`TDX_MMIO_INVALID_PAGE_METADATA`: mapped at another GPA), no DEVIF for its function
  /// (`TDX_DEVIFMT_NOT_PRESENT`), the DEVIF is another TD's (`TDX_MMIO_DEVIF_OWNER_MISMATCH`),
  /// its IDE stream is blocked (`TDX_IDE_STREAM_BLOCKED`). User space must not be able to
  /// trigger a `KVM_BUG_ON`, so these end the fault in a memory-fault exit instead. The posted
  /// RFC retries them for ever (its busy test is a bit test).
  static let hostSetupRefusals: Set<TDXStatus> = [
    .mmiomtNotPresent, .mmioInvalidPageMetadata, .devifmtNotPresent, .mmioDevifOwnerMismatch, .ideStreamBlocked,
  ]

  /// The vCPUs of `vm`'s TD that are in guest mode (in TDX non-root mode), by index.
  func vcpusInGuest(_ vm: VMID) -> [UInt32] {
    guard let td = tds[vm], let state = tdx.tds[td] else { return [] }
    return state.vcpus.indices.filter { state.vcpus[$0].inGuest }.map { UInt32($0) }
  }

  /// A vCPU of a TD leaves guest mode (a TD exit): it no longer needs kicking.
  /// `traced`: the kick's exits are traced; an EPT-violation exit is the access's own event.
  mutating func leaveGuest(_ vcpu: VCPURef, traced: Bool, trace: inout Trace) throws(LockViolation) {
    vms[vcpu.vm]?.answerKick(vcpu.index)
    guard let td = tds[vcpu.vm], let state = tdx.tds[td], Int(vcpu.index) < state.vcpus.count,
          state.vcpus[Int(vcpu.index)].inGuest else { return }
    try quietly(traced) { (m: inout TDXModule) throws(TDXStatus) in try m.tdExit(td: td, vcpu: vcpu.index) }
    trace.absorb(&tdx.trace)
    epochsMoved.value.insert(td)
  }

  /// A vCPU of a TD enters guest mode (`TDH.VP.ENTER`) if it is not there.
  mutating func enterGuest(_ vcpu: VCPURef, traced: Bool, trace: inout Trace) throws(LockViolation) {
    guard let td = tds[vcpu.vm], let state = tdx.tds[td], !state.isFatal,
          Int(vcpu.index) < state.vcpus.count, !state.vcpus[Int(vcpu.index)].inGuest else { return }
    try quietly(traced) { (m: inout TDXModule) throws(TDXStatus) in try m.tdhVPEnter(td: td, vcpu: vcpu.index) }
    trace.absorb(&tdx.trace)
    epochsMoved.value.insert(td)
  }

  /// Runs a module call whose preconditions the caller checked, with the module's own tracing
  /// off unless `traced`. - Throws: the model's own mistake, when the module refuses it.
  private mutating func quietly(_ traced: Bool, _ body: (inout TDXModule) throws(TDXStatus) -> Void) throws(LockViolation) {
    let enabled = tdx.trace.isEnabled
    tdx.trace.isEnabled = enabled && traced
    defer { tdx.trace.isEnabled = enabled }
    do { try body(&tdx) } catch {
      throw LockViolation(lock: "TDVPS", message: "a TD entry or exit the model checked was refused: \(error)")
    }
  }
}

extension SEPTLevel {
  /// The Secure-EPT level of a KVM page-table level.
  init(_ level: PGLevel) {
    switch level {
    case .level4K: self = .level4K
    case .level2M: self = .level2M
    default: self = .level1G
    }
  }
}

extension KVMHost: FunctionStateSink {
  /// The TSM relays the TDI's state to the TDX module, which trusts only what it observes.
  public mutating func functionChanged(_ device: VFIODeviceID, _ function: PCIFunction, trace: inout Trace) throws(LockViolation) {
    try observe(device, function, trace: &trace)
  }

  /// Relays the TDI's state to its DEVIF, found by the interface's routing id just before.
  /// - Throws: ``LockViolation`` if the module refuses it: the model looked the DEVIF up in the
  ///   same region, so a refusal is the model's failure. It is no `KVM_BUG_ON`: KVM is not
  ///   involved, and no VM dies.
  mutating func observe(_ device: VFIODeviceID, _ function: PCIFunction, trace: inout Trace) throws(LockViolation) {
    guard let state = function.tdiState, let devif = tdx.devif(for: Self.routingID(device)),
          let mirrored = DevifTDISPState(rawValue: state.rawValue) else { return }
    do { try tdx.observeTDISPState(devif: devif, state: mirrored) } catch {
      throw LockViolation(lock: "tsm", message: "relaying the TDISP state of \(devif) failed: \(error)")
    }
    trace.absorb(&tdx.trace)
  }
}
