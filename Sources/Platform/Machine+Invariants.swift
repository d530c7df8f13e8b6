import KernelCore
import PCI
import DmaBuf
import VFIO
import KVM
import TDX

/// When an invariant must hold.
public enum InvariantKind: String, Hashable, Sendable, CaseIterable {
  /// In every state, also between the regions of a path.
  case everyState = "every state"
  /// When no thread is inside a path (a revoke restores only at its end, a memslot delete
  /// frees the slot after it is zapped).
  case quiescent = "quiescent"
  /// About what happened: an event a transition reported (a `move_notify` on a freed slot, a
  /// completed access to a revoked page). Checked on every transition.
  case history = "history"
}

/// A set of ``InvariantKind``s as bits: which invariants a check runs, tested per invariant
/// without hashing anything (the explorer asks for every state).
public struct InvariantKinds: OptionSet, Hashable, Sendable {
  public let rawValue: UInt8
  public init(rawValue: UInt8) { self.rawValue = rawValue }
  public init(_ kind: InvariantKind) {
    switch kind {
    case .everyState: self = .everyState
    case .quiescent: self = .quiescent
    case .history: self = .history
    }
  }
  public static let everyState = InvariantKinds(rawValue: 1)
  public static let quiescent = InvariantKinds(rawValue: 2)
  public static let history = InvariantKinds(rawValue: 4)
}

/// The machine's named invariants, checked after every step by `run`, `explore` and `fuzz`.
/// Each returns the violations it finds; an empty list means it held.
extension Machine {
  /// Every invariant, in a fixed order, with its verdict. `quiescent`: no thread is inside a
  /// path, so the quiescent invariants apply too; otherwise they are not checked.
  public func checkInvariants(quiescent: Bool = true) -> [InvariantCheck] {
    checkInvariants(of: quiescent ? [.everyState, .quiescent, .history] : [.everyState, .history])
  }

  /// Every invariant of the given kinds, in the fixed order, with its verdict.
  public func checkInvariants(of kinds: InvariantKinds) -> [InvariantCheck] {
    checkInvariants(of: kinds, pass: InvariantPass(self))
  }

  /// ``checkInvariants(of:)`` sharing `pass` (tests read what it computed).
  func checkInvariants(of kinds: InvariantKinds, pass: InvariantPass) -> [InvariantCheck] {
    Self.invariants.compactMap { invariant in
      guard kinds.contains(invariant.kinds) else { return nil }
      let violations = invariant.check(self, pass)
      return InvariantCheck(name: invariant.name, violation: violations.isEmpty ? nil : violations.joined(separator: "; "))
    }
  }

  /// The first violated invariant, or `nil` (for the explorer: stops at the first).
  public func firstViolation(quiescent: Bool) -> InvariantCheck? {
    firstViolation(of: quiescent ? [.everyState, .quiescent, .history] : [.everyState, .history])
  }

  /// The first violated invariant of the given kinds, in the fixed order, or `nil`.
  public func firstViolation(of kinds: InvariantKinds) -> InvariantCheck? {
    let pass = InvariantPass(self)
    for invariant in Self.invariants where kinds.contains(invariant.kinds) {
      let violations = invariant.check(self, pass)
      if !violations.isEmpty { return InvariantCheck(name: invariant.name, violation: violations.joined(separator: "; ")) }
    }
    return nil
  }

  /// One named invariant: what it forbids, what goes wrong in a real system when it breaks,
  /// and when it must hold.
  public struct Invariant: Sendable {
    public let name: String
    /// What it requires, in one line.
    public let summary: String
    /// The harm it prevents, in the kernel's or the TDX module's terms.
    public let harm: String
    public let kind: InvariantKind
    /// ``kind`` as a bit.
    let kinds: InvariantKinds
    /// The check, given what the other checks of the same pass share.
    let check: @Sendable (Machine, InvariantPass) -> [String]

    init(name: String, summary: String, harm: String, kind: InvariantKind, check: @escaping @Sendable (Machine) -> [String]) {
      self.init(name: name, summary: summary, harm: harm, kind: kind, shared: { machine, _ in check(machine) })
    }

    init(name: String, summary: String, harm: String, kind: InvariantKind,
         shared check: @escaping @Sendable (Machine, InvariantPass) -> [String]) {
      self.name = name; self.summary = summary; self.harm = harm; self.kind = kind
      kinds = InvariantKinds(kind); self.check = check
    }
  }

  /// What the checks of one pass over the invariants share, each computed once and only if a
  /// check asks: each VM's mapped leaves (walked once for the four SPTE invariants), the
  /// attachments whose buffer is revoked, the TDX module's verdicts (one pass for its four
  /// invariants). It counts what it computed, so tests pin the cost of a check by counting.
  final class InvariantPass {
    let machine: Machine
    init(_ machine: Machine) { self.machine = machine }
    /// Leaf walks (one per VM at most) and the leaves they visited.
    private(set) var leafWalks = 0
    private(set) var leavesVisited = 0
    /// Passes over the TDX module's tables (one at most).
    private(set) var tdxPasses = 0
    private var leavesOf: [VMID: [MappedLeaf]] = [:]

    /// Every leaf KVM maps for `vm`, walked once per pass.
    func leaves(_ vm: VirtualMachine) -> [MappedLeaf] {
      if let known = leavesOf[vm.id] { return known }
      let leaves = KVMInvariants.allLeaves(vm)
      leafWalks += 1
      leavesVisited += leaves.count
      leavesOf[vm.id] = leaves
      return leaves
    }

    lazy var revokedAttachments: Set<AttachmentID> = machine.revokedAttachments()

    lazy var tdxViolations: [(name: String, message: String)] = {
      tdxPasses += 1
      return machine.kvm.tdx.invariantViolations()
    }()
  }

  /// The invariants as a Markdown table (the README shows it): name, when it must hold,
  /// what it says, and what goes wrong when it breaks.
  public static var invariantTable: String {
    var lines = ["| invariant | holds | what it says | the harm when it breaks |", "|---|---|---|---|"]
    for invariant in invariants {
      lines.append("| `\(invariant.name)` | \(invariant.kind.rawValue) | \(invariant.summary) | \(invariant.harm) |")
    }
    return lines.joined(separator: "\n") + "\n"
  }

  /// All invariants, by name.
  public static let invariants: [Invariant] = [
    Invariant(name: "NoHostMappingOfPrivateMMIO",
              summary: "no user-space mapping of a BAR of a device bound private",
              harm: "the host could read or write MMIO the TD owns: the TDI's confidentiality and integrity are gone",
              kind: .everyState, check: { $0.hostMappingsOfPrivateMMIO() }),
    Invariant(name: "DmaBufRefcountsBalance",
              summary: "every dma-buf's file references equal its fds plus its attachments",
              harm: "a buffer freed while referenced is a use-after-free; one never freed pins its device registration for ever",
              kind: .everyState, check: { $0.dmaBufRefcountViolations() }),
    Invariant(name: "VFIORegistrationsBalance",
              summary: "a device's registrations are its own plus one per buffer still on its list",
              harm: "a registration never put makes vfio_unregister_group_dev() wait for ever; one put too many frees the device under a live dma-buf",
              kind: .everyState, check: { $0.registrationViolations() }),
    Invariant(name: "DecodeOffImpliesRevoked",
              summary: "a buffer of a device whose memory decode is off (or not in D0) is revoked",
              harm: "importers keep mapping MMIO the function no longer decodes: accesses end in master aborts or unsupported-request errors, which some platforms escalate to a machine check",
              kind: .everyState, check: { $0.decodeOffButLive() }),
    Invariant(name: "UsableDeviceBuffersRestored",
              summary: "a buffer of an open device whose memory is enabled (and, in reviewed, whose TDI runs if private) is not left revoked",
              harm: "the guest loses its device's MMIO for good after a reset it did not ask to lose it in: every access fails until the VMM recreates the buffer",
              kind: .quiescent, check: { $0.usableButRevoked() }),
    Invariant(name: "ClosedDeviceBuffersRevoked",
              summary: "a buffer whose device was closed is revoked for good",
              harm: "importers still map the BAR of a device VFIO has released: its next owner's MMIO (or the host driver's) is reachable from the guest",
              kind: .everyState, check: { $0.orphansLive() }),
    Invariant(name: "NoResetUnderLiveImport",
              summary: "no function reset while an importer could still map one of its buffers",
              harm: "a guest accesses MMIO of a function in the middle of a reset: lost or corrupted device state, and for a TD a TDI reset behind its back",
              kind: .history, check: { $0.resetsUnderLiveImport() }),
    Invariant(name: "PrivateMMIOOnlyWhileTDIRuns",
              summary: "a TD's accepted Secure-EPT MMIO belongs to a TDI in RUN, and its pending MMIO to one locked or in RUN",
              harm: "the TD maps, accepts or keeps MMIO of an interface it can no longer trust (stopped, reset, in ERROR): the device may no longer enforce TEE isolation for it",
              kind: .quiescent, check: { $0.privateMappingsWithoutRun() }),
    Invariant(name: "NoAcceptOfNonRunningTDI",
              summary: "a TD never accepts MMIO of an interface that is not RUN",
              harm: "the guest validates MMIO whose TDISP state it did not attest: it trusts a device interface that is unlocked or in ERROR",
              kind: .history, check: { m in m.kvm.observed.value.acceptsOfUntrustedTDI }),
    Invariant(name: "NoSPTEOutsideMemslot",
              summary: "every mapped GFN lies inside a memslot",
              harm: "the guest keeps a mapping of memory the VMM took back: it reads or writes host memory or MMIO it no longer owns",
              kind: .everyState, shared: { m, pass in m.kvm.vms.values.flatMap { KVMInvariants.noSPTEOutsideMemslot($0, leaves: pass.leaves($0)) } }),
    Invariant(name: "MMIOSPTEsUncached",
              summary: "an SPTE mapping MMIO is uncached",
              harm: "cached or combined accesses to device registers: reads see stale values, writes are merged or reordered, side effects are lost",
              kind: .everyState, shared: { m, pass in m.kvm.vms.values.flatMap { KVMInvariants.mmioSPTEsUncached($0, leaves: pass.leaves($0)) } }),
    Invariant(name: "SPTEMatchesExporter",
              summary: "an SPTE in a dma-buf slot maps the PFN the exporter describes for that page",
              harm: "the guest reaches another page than the buffer's: another BAR, another device's MMIO, or host RAM",
              kind: .everyState, shared: { m, pass in m.kvm.vms.values.flatMap { KVMInvariants.sptePFNMatchesBinding($0, leaves: pass.leaves($0), physRanges: m.exporterRanges) } }),
    Invariant(name: "RevokedImpliesNoSPTE",
              summary: "no SPTE maps a revoked buffer once its importer's move_notify has returned",
              harm: "a guest access after the revoke reaches MMIO of a device being reset, powered down or handed to its next owner",
              kind: .everyState, shared: { m, pass in m.kvm.vms.values.flatMap { KVMInvariants.noSPTEForRevokedBinding($0, revoked: pass.revokedAttachments) } }),
    Invariant(name: "NoStalePFNAfterInvalidation",
              summary: "no fault installs an SPTE or Secure-EPT entry for a PFN its exporter no longer hands out, once the invalidation covering it has ended",
              harm: "a fault that looked its PFN up before a revoke installed it after: the guest maps MMIO the exporter withdrew (the race the sequence check must close)",
              kind: .history, check: { $0.kvm.observed.value.stalePFNInstalls }),
    Invariant(name: "NoDanglingBinding",
              summary: "every attachment KVM holds belongs to a live slot; none was leaked",
              harm: "move_notify through the attachment dereferences a freed memslot (use-after-free); a leaked attachment pins the buffer and its device for ever",
              kind: .everyState, check: { m in m.kvm.vms.values.flatMap(KVMInvariants.noDanglingBinding) + m.leakedAttachments() }),
    Invariant(name: "NoMoveNotifyOnFreedSlot",
              summary: "no move_notify reached a memslot that had been freed",
              harm: "KVM zaps through freed memslot memory: a use-after-free in the kernel",
              kind: .history, check: { m in m.kvm.staleMoveNotifies == 0 ? [] : ["\(m.kvm.staleMoveNotifies) move_notify call(s) zapped a freed slot"] }),
    Invariant(name: "NoKVMBugOn",
              summary: "no VM died through KVM_BUG_ON (an unexpected TDX status)",
              harm: "the guest is killed and the host WARNs: KVM met a status it has no answer for",
              kind: .history, check: { $0.kvm.bugs }),
    Invariant(name: "NoUnmapBeforeTracking",
              summary: "KVM never issues TDH.MMIO.UNMAP for an entry whose block epoch is not tracked",
              harm: "other logical processors may still hold TLB entries for the MMIO page after it is unmapped and handed on",
              kind: .history, check: { m in m.kvm.observed.value.untrackedUnmaps == 0 ? [] : ["\(m.kvm.observed.value.untrackedUnmaps) UNMAP(s) before tracking completed"] }),
    Invariant(name: "PendingAccessKillsTD",
              summary: "no TD access to an unaccepted (MMIO_PENDING) page goes unpunished",
              harm: "the host could substitute MMIO the guest never validated: the TD reads or writes a page it did not accept",
              kind: .history, check: { m in m.kvm.observed.value.unpunishedPendingAccesses == 0 ? [] : ["\(m.kvm.observed.value.unpunishedPendingAccesses) access(es) to MMIO_PENDING left the TD running"] }),
    Invariant(name: "NoAccessToRevokedMMIO",
              summary: "a guest access that completes after a revoke has returned never reads or writes the revoked HPA",
              harm: "the guest touches MMIO its VMM revoked: a device being reset or reassigned",
              kind: .history, check: { $0.kvm.observed.value.accessesToRevokedMMIO }),
    Invariant(name: "DeadVMAcceptsNoIoctl",
              summary: "no ioctl succeeds on a VM that KVM_BUG_ON marked dead",
              harm: "KVM acts on a VM whose state it no longer trusts",
              kind: .history, check: { m in m.kvm.observed.value.deadVMIoctls == 0 ? [] : ["\(m.kvm.observed.value.deadVMIoctls) ioctl(s) succeeded on a dead VM"] }),
    Invariant(name: "SEPTMatchesMirror",
              summary: "a TD's Secure-EPT MMIO entries and KVM's mirror SPTEs agree",
              harm: "KVM zaps what it believes is mapped and leaves real Secure-EPT entries behind, or blocks and unmaps the wrong ones",
              kind: .everyState, check: { $0.septMirrorMismatches() }),
  ] + [
    ("SEPTMMIOEntryOwnedByTD", "every MMIO Secure-EPT entry maps a TEE page whose MMIOMT owner DEVIF belongs to that TD",
     "a TD maps another TD's device MMIO, or non-TEE (shared) MMIO as private"),
    ("NoRemovedDevifHasMappedMMIO", "a removed DEVIF has no mapped pages, and the MMIOMT agrees with the Secure EPT",
     "a device interface torn down while a TD still maps its MMIO: the MMIO outlives the binding that made it private"),
    ("DevifMappedCountBalances", "a DEVIF's count of mapped pages equals the pages mapped through it",
     "DEVIF.REMOVE would succeed with pages still mapped, or refuse for ever"),
    ("EpochRefcountsBalance", "a TD's per-epoch vCPU counts equal the vCPUs in the guest",
     "TLB tracking completes while a vCPU still runs in an old epoch, or never completes"),
  ].map { name, summary, harm in
    Invariant(name: name, summary: summary, harm: harm, kind: .everyState,
              shared: { _, pass in pass.tdxViolations.filter { $0.name == name }.map(\.message) })
  }

  func hostMappingsOfPrivateMMIO() -> [String] {
    vfio.devices.values.filter { $0.isPrivate && !$0.hostMappings.isEmpty }
      .map { "vfio-dev\($0.id.rawValue) is private but BAR\($0.hostMappings.map(String.init).joined(separator: ",")) is mapped in user space" }
  }

  func dmaBufRefcountViolations() -> [String] {
    dmabufCore.refcountViolations(
      fdRefs: { id in files.count { $0 == .dmaBuf(id) } },
      extraRefs: { _ in 0 })
  }

  func registrationViolations() -> [String] {
    var held: [VFIODeviceID: Int] = [:]
    for buffer in vfio.dmabufs.values { if let device = buffer.device { held[device, default: 0] += 1 } }
    return vfio.devices.values.compactMap { device in
      let count = held[device.id, default: 0]
      return device.registrations == 1 + count ? nil
        : "vfio-dev\(device.id.rawValue) has \(device.registrations) registrations for \(count) buffer(s)"
    }
  }

  /// Whether the buffer can still be reached: its file has a reference left. Once the last
  /// one is put (`dma_buf_release()` has begun) no fd names it and no importer holds it
  /// (KVM's importer holds a `dma_buf_get()` reference for the life of its memslot), so nobody
  /// can attach to it or map it; its `vfio_pci_dma_buf_release()` only waits for
  /// `memory_lock` to take it off the device's list. `vfio_pci_dma_buf_move()` and
  /// `vfio_pci_dma_buf_cleanup()` pass it by (`get_file_active()` fails), leaving `revoked` as
  /// it was: the invariants about live buffers do not count it.
  func isReachable(_ buffer: VFIOPCIDmaBuf) -> Bool { dmabufCore.buffer(buffer.buffer) != nil }

  func decodeOffButLive() -> [String] {
    vfio.dmabufs.values.compactMap { buffer in
      guard let id = buffer.device, let device = vfio.device(id), !device.memoryEnabled, !buffer.revoked,
            isReachable(buffer) else { return nil }
      return "dmabuf\(buffer.buffer.rawValue) is live while vfio-dev\(id.rawValue) has memory disabled"
    }
  }

  func usableButRevoked() -> [String] {
    vfio.dmabufs.values.compactMap { buffer in
      guard let id = buffer.device, let device = vfio.device(id), device.openCount > 0,
            vfio.buffersUsable(id), buffer.revoked, isReachable(buffer) else { return nil }
      return "dmabuf\(buffer.buffer.rawValue) stays revoked although vfio-dev\(id.rawValue) is usable"
    }
  }

  func orphansLive() -> [String] {
    vfio.dmabufs.values.compactMap { buffer in
      let open = buffer.device.flatMap { vfio.device($0) }.map { $0.openCount > 0 } ?? false
      return open || buffer.revoked || !isReachable(buffer) ? nil : "dmabuf\(buffer.buffer.rawValue) is live but its device is closed"
    }
  }

  func resetsUnderLiveImport() -> [String] {
    vfio.devices.values.filter { $0.resetsUnderLiveImport > 0 }
      .map { "vfio-dev\($0.id.rawValue) was reset \($0.resetsUnderLiveImport) time(s) while importers could map its buffers" }
  }

  /// Accepted Secure-EPT MMIO entries whose device's TDI is not RUN, and pending ones whose
  /// TDI is not locked or running (the host may map once the interface is locked; the guest
  /// accepts after START).
  func privateMappingsWithoutRun() -> [String] {
    var out: [String] = []
    for (vm, td) in kvm.tds {
      guard let state = kvm.tdx.tds[td] else { continue }
      for (gpa, entry) in state.sept where entry.state == .mmioPending || entry.state == .mmioMapped {
        guard let device = device(owning: entry.hpa), let tdi = vfio.device(device)?.function.tdiState else { continue }
        let allowed = entry.state == .mmioMapped ? tdi == .run : tdi.isLocked
        guard !allowed else { continue }
        out.append("vm\(vm.rawValue) maps \(gpa) -> \(entry.hpa) (\(entry.state)) while the TDI of vfio-dev\(device.rawValue) is \(tdi.specName)")
      }
    }
    return out
  }

  /// The device whose BAR holds `hpa`.
  func device(owning hpa: HPA) -> VFIODeviceID? {
    vfio.devices.first { _, device in
      device.function.bars.contains { $0.base <= hpa && hpa.rawValue - $0.base.rawValue < $0.size }
    }?.key
  }

  /// The physical ranges of a buffer as its exporter describes them (revoked or not: a stale
  /// mapping of a revoked buffer is `RevokedImpliesNoSPTE`'s to report).
  func exporterRanges(_ buffer: DmaBufID) -> [PhysRange]? {
    vfio.dmaBuf(buffer)?.ranges
  }

  /// KVM's attachments to buffers that are revoked, or gone, whose `move_notify` has returned.
  func revokedAttachments() -> Set<AttachmentID> {
    var out: Set<AttachmentID> = []
    for vm in kvm.vms.values {
      for binding in vm.bindings.values where vfio.dmaBuf(binding.binding.dmaBuf)?.revoked ?? true {
        if dmabufCore.attachment(binding.binding.attachment)?.inMoveNotify == true { continue }
        out.insert(binding.binding.attachment)
      }
    }
    return out
  }

  func leakedAttachments() -> [String] {
    kvm.leaked.filter { dmabufCore.attachment($0) != nil }
      .map { "attachment \($0.rawValue) was left bound to a freed slot of a destroyed VM" }
  }

  func septMirrorMismatches() -> [String] {
    var out: [String] = []
    for (id, td) in kvm.tds {
      guard let vm = kvm.vms[id], let state = kvm.tdx.tds[td] else { continue }
      var mirror: [GPA: HPA] = [:]
      for leaf in vm.mmu.leaves() { mirror[leaf.gfn.gpa] = leaf.spte.pfn.hpa }
      var septCount = 0
      for (gpa, entry) in state.sept where entry.state.isMMIO {
        septCount += 1
        if mirror[gpa] != entry.hpa {
          out.append("vm\(id.rawValue) SEPT maps \(gpa) -> \(entry.hpa), the mirror has \(mirror[gpa].map(\.description) ?? "nothing")")
        }
      }
      if septCount != mirror.count {
        for (gpa, hpa) in mirror where state.sept[gpa].map({ !$0.state.isMMIO }) ?? true {
          out.append("vm\(id.rawValue) mirror maps \(gpa) -> \(hpa), SEPT has nothing")
        }
      }
    }
    return out
  }
}
