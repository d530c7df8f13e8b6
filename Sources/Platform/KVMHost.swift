import KernelCore
import PCI
import DmaBuf
import VFIO
import KVM
import TDX
import HashTreeCollections

/// KVM's side of the machine: every VM, and the TDX module the TDs run on.
///
/// One stored value, so that VFIO can hand it `move_notify` (and function state changes) as
/// its sink while VFIO and the dma-buf core are themselves being mutated.
public struct KVMHost: Hashable, Sendable {
  public internal(set) var vms: TreeDictionary<VMID, VirtualMachine> = [:]
  /// The TD behind each TDX VM.
  public internal(set) var tds: TreeDictionary<VMID, TDID> = [:]
  /// The TDX module (a black box behind its ABI).
  public internal(set) var tdx = TDXModule()
  /// `move_notify` calls that reached a slot already freed (the `rfc-v1` move bug).
  public internal(set) var staleMoveNotifies = 0
  /// VMs that died through `KVM_BUG_ON` (an unexpected TDX status), with the status.
  public internal(set) var bugs: [String] = []
  /// `TDH.MMIO.UNMAP` calls KVM issued for an entry whose block epoch was not yet tracked.
  public internal(set) var untrackedUnmaps = 0
  /// TD accesses to an MMIO_PENDING page that did not end the TD.
  public internal(set) var unpunishedPendingAccesses = 0
  /// Ioctls that succeeded on a VM already dead.
  public internal(set) var deadVMIoctls = 0
  /// Attachments a destroyed VM left behind (bound to slots freed by an `rfc-v1` move):
  /// nothing will ever detach them.
  public internal(set) var leaked: TreeSet<AttachmentID> = []

  /// vCPUs of a TD, fixed when the TD is built (`KVM_TDX_INIT_VM`'s `max_vcpus` here).
  public static let tdVCPUs: UInt32 = 4

  /// The VM holding `attachment` as a memslot binding.
  func vm(holding attachment: AttachmentID) -> VMID? {
    vms.first { $0.value.bindings[attachment] != nil }?.key
  }

  /// The PCIe routing id a device's TDI is known by to the TDX module (bus 1, device = id).
  static func routingID(_ device: VFIODeviceID) -> DeviceInterfaceID {
    DeviceInterfaceID(0x100 | (device.rawValue << 3))
  }

  /// Maps a TDX status onto what KVM distinguishes: success, busy (retry), anything else.
  static func classify(_ result: Result<Void, TDXStatus>) -> SecureCallResult {
    switch result {
    case .success: .success
    case .failure(let s) where s.code == TDXStatus.operandBusy: .busy
    case .failure(let s): .failed(status: s.rawValue)
    }
  }

  /// Runs one SEAMCALL and classifies it; an unexpected status is recorded as a KVM bug.
  mutating func seamcall(_ vm: VMID, _ what: String, trace: inout Trace,
                         _ body: (inout TDXModule) throws(TDXStatus) -> Void) -> SecureCallResult {
    let result: Result<Void, TDXStatus>
    do { try body(&tdx); result = .success(()) } catch { result = .failure(error) }
    trace.absorb(&tdx.trace)
    let classified = Self.classify(result)
    if case .failed(let raw) = classified {
      bugs.append("vm\(vm.rawValue): \(what) returned \(TDXStatus(rawValue: raw))")
    }
    return classified
  }

  // MARK: - Zap of a TD's private MMIO

  /// Drives a TD's ``ZapPath`` to the end with the TDX module: block every entry, track the
  /// epoch, kick every vCPU out of the guest and back in, unmap every entry.
  mutating func drive(_ path: ZapPath, vm id: VMID, trace: inout Trace) throws(LockViolation) -> ZapOutcome {
    var path = path
    guard let td = tds[id] else { return .vmDead }
    for _ in 0..<10_000 {
      let action = try path.step(&vms[id]!)
      let result: SecureCallResult
      switch action {
      case .secureBlock(let gpa, let level):
        result = seamcall(id, "TDH.MMIO.BLOCK \(gpa)", trace: &trace) { (m: inout TDXModule) throws(TDXStatus) in
          try m.tdhMMIOBlock(td: td, gpa: gpa, level: SEPTLevel(level))
        }
      case .secureTrack:
        result = seamcall(id, "TDH.MEM.TRACK", trace: &trace) { (m: inout TDXModule) throws(TDXStatus) in try m.tdhMemTrack(td: td) }
      case .kickVCPUs:
        kick(td, trace: &trace)
        result = .success
      case .secureUnmap(let gpa, let level):
        // KVM's protocol must never reach UNMAP before the entry's epoch is tracked; the
        // module would refuse it, but the invariant is about what KVM tries.
        if let entry = tdx.septEntry(td: td, gpa: gpa), entry.state == .mmioBlocked,
           !tdx.tlbTracked(td: td, bepoch: entry.bepoch) {
          untrackedUnmaps += 1
        }
        result = seamcall(id, "TDH.MMIO.UNMAP \(gpa)", trace: &trace) { (m: inout TDXModule) throws(TDXStatus) in
          try m.tdhMMIOUnmap(td: td, gpa: gpa, level: SEPTLevel(level))
        }
      case .complete(let outcome):
        return outcome
      }
      try path.completed(result, vm: &vms[id]!)
    }
    return .vmDead
  }

  /// `kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)`: every vCPU in the guest takes
  /// an IPI, exits, and re-enters in the new epoch.
  mutating func kick(_ td: TDID, trace: inout Trace) {
    guard let state = tdx.tds[td] else { return }
    trace.emit(.kvm, "kick all vCPUs of td\(td.rawValue) out of guest mode")
    for (index, vcpu) in state.vcpus.enumerated() where vcpu.inGuest {
      try? tdx.tdExit(td: td, vcpu: UInt32(index))
      try? tdx.tdhVPEnter(td: td, vcpu: UInt32(index))
    }
    trace.absorb(&tdx.trace)
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

extension KVMHost: MoveNotifySink {
  /// KVM's importer `move_notify` (RFC patch 6): zap the whole slot inside an invalidation;
  /// for a TD through the TDX module.
  public mutating func moveNotify(_ attachment: DmaBufAttachment, revoked: Bool, context: ContextID, trace: inout Trace) {
    guard let id = vm(holding: attachment.id) else {
      // A test importer named in a scenario: it only hears of it.
      trace.emit(.dmabuf, "\(attachment.importer): move_notify (attachment \(attachment.id.rawValue), \(revoked ? "revoked" : "restored"))")
      return
    }
    // The RFC's slot move freed this attachment's slot without detaching: whatever the zap
    // does next, it works on freed memory.
    if vms[id]!.bindings[attachment.id]?.isStale == true {
      staleMoveNotifies += 1
      trace.emit(.kvm, "vm\(id.rawValue): move_notify through attachment \(attachment.id.rawValue) reaches a freed slot")
    }
    do {
      switch try vms[id]!.dmaBufMoveNotify(attachment.id, ctx: context) {
      case .done:
        trace.emit(.kvm, "vm\(id.rawValue): move_notify zapped the slot of attachment \(attachment.id.rawValue)")
      case .secureZap(let path):
        let outcome = try drive(path, vm: id, trace: &trace)
        trace.emit(.kvm, "vm\(id.rawValue): move_notify zap of private MMIO: \(outcome)")
      case .blocked, .notBound:
        break
      }
    } catch {
      bugs.append("vm\(id.rawValue): lock rule broken in move_notify: \(error)")
    }
  }

  /// The TSM relays the TDI's state to the TDX module, which trusts only what it observes.
  public mutating func functionChanged(_ device: VFIODeviceID, _ function: PCIFunction, trace: inout Trace) {
    observe(device, function, trace: &trace)
  }

  mutating func observe(_ device: VFIODeviceID, _ function: PCIFunction, trace: inout Trace) {
    guard let state = function.tdiState, let devif = tdx.devif(for: Self.routingID(device)),
          let mirrored = DevifTDISPState(rawValue: state.rawValue) else { return }
    try? tdx.observeTDISPState(devif: devif, state: mirrored)
    trace.absorb(&tdx.trace)
  }
}
