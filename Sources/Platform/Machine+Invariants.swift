import KernelCore
import DmaBuf
import VFIO
import KVM
import TDX

/// The machine's named invariants, checked after every step by `run`, `explore` and `fuzz`.
/// Each returns the violations it finds; an empty list means it held.
extension Machine {
  /// Every invariant, in a fixed order, with its verdict.
  public func checkInvariants() -> [InvariantCheck] {
    Self.invariants.map { invariant in
      let violations = invariant.check(self)
      return InvariantCheck(name: invariant.name, violation: violations.isEmpty ? nil : violations.joined(separator: "; "))
    }
  }

  /// One named invariant.
  public struct Invariant: Sendable {
    public let name: String
    public let summary: String
    let check: @Sendable (Machine) -> [String]
  }

  /// All invariants, by name.
  public static let invariants: [Invariant] = [
    Invariant(name: "NoHostMappingOfPrivateMMIO",
              summary: "no user-space mapping of a BAR of a device bound private",
              check: { $0.hostMappingsOfPrivateMMIO() }),
    Invariant(name: "DmaBufRefcountsBalance",
              summary: "every dma-buf's file references equal its fds plus its attachments",
              check: { $0.dmaBufRefcountViolations() }),
    Invariant(name: "VFIORegistrationsBalance",
              summary: "a device's registrations are its own plus one per buffer still on its list",
              check: { $0.registrationViolations() }),
    Invariant(name: "DecodeOffImpliesRevoked",
              summary: "a buffer of a device whose memory decode is off (or not in D0) is revoked",
              check: { $0.decodeOffButLive() }),
    Invariant(name: "UsableDeviceBuffersRestored",
              summary: "a buffer of an open device whose memory is enabled (and, in reviewed, whose TDI runs if private) is not left revoked",
              check: { $0.usableButRevoked() }),
    Invariant(name: "ClosedDeviceBuffersRevoked",
              summary: "a buffer whose device was closed is revoked for good",
              check: { $0.orphansLive() }),
    Invariant(name: "NoResetUnderLiveImport",
              summary: "no function reset while an importer could still map one of its buffers",
              check: { $0.resetsUnderLiveImport() }),
    Invariant(name: "PrivateMMIOOnlyWhileTDIRuns",
              summary: "a private buffer is live only while its device's TDI is RUN",
              check: { $0.privateLiveWithoutRun() }),
    Invariant(name: "NoSPTEOutsideMemslot",
              summary: "every mapped GFN lies inside a memslot",
              check: { m in m.kvm.vms.values.flatMap(KVMInvariants.noSPTEOutsideMemslot) }),
    Invariant(name: "MMIOSPTEsUncached",
              summary: "an SPTE mapping MMIO is uncached",
              check: { m in m.kvm.vms.values.flatMap(KVMInvariants.mmioSPTEsUncached) }),
    Invariant(name: "SPTEMatchesExporter",
              summary: "an SPTE in a dma-buf slot maps the PFN the exporter describes for that page",
              check: { m in m.kvm.vms.values.flatMap { KVMInvariants.sptePFNMatchesBinding($0, pfnOf: m.exporterPFN) } }),
    Invariant(name: "RevokedImpliesNoSPTE",
              summary: "no SPTE maps a revoked buffer once its move_notify has returned",
              check: { m in m.kvm.vms.values.flatMap { KVMInvariants.noSPTEForRevokedBinding($0, revoked: m.revokedAttachments()) } }),
    Invariant(name: "NoDanglingBinding",
              summary: "every attachment KVM holds belongs to a live slot; none was leaked",
              check: { m in m.kvm.vms.values.flatMap(KVMInvariants.noDanglingBinding) + m.leakedAttachments() }),
    Invariant(name: "NoMoveNotifyOnFreedSlot",
              summary: "no move_notify reached a memslot that had been freed",
              check: { m in m.kvm.staleMoveNotifies == 0 ? [] : ["\(m.kvm.staleMoveNotifies) move_notify call(s) zapped a freed slot"] }),
    Invariant(name: "NoKVMBugOn",
              summary: "no VM died through KVM_BUG_ON (an unexpected TDX status)",
              check: { $0.kvm.bugs }),
    Invariant(name: "NoUnmapBeforeTracking",
              summary: "KVM never issues TDH.MMIO.UNMAP for an entry whose block epoch is not tracked",
              check: { m in m.kvm.untrackedUnmaps == 0 ? [] : ["\(m.kvm.untrackedUnmaps) UNMAP(s) before tracking completed"] }),
    Invariant(name: "PendingAccessKillsTD",
              summary: "no TD access to an unaccepted (MMIO_PENDING) page goes unpunished",
              check: { m in m.kvm.unpunishedPendingAccesses == 0 ? [] : ["\(m.kvm.unpunishedPendingAccesses) access(es) to MMIO_PENDING left the TD running"] }),
    Invariant(name: "DeadVMAcceptsNoIoctl",
              summary: "no ioctl succeeds on a VM that KVM_BUG_ON marked dead",
              check: { m in m.kvm.deadVMIoctls == 0 ? [] : ["\(m.kvm.deadVMIoctls) ioctl(s) succeeded on a dead VM"] }),
    Invariant(name: "SEPTMatchesMirror",
              summary: "a TD's Secure-EPT MMIO entries and KVM's mirror SPTEs agree",
              check: { $0.septMirrorMismatches() }),
  ] + [
    ("SEPTMMIOEntryOwnedByTD", "every MMIO Secure-EPT entry maps a TEE page whose MMIOMT owner DEVIF belongs to that TD"),
    ("NoRemovedDevifHasMappedMMIO", "a removed DEVIF has no mapped pages, and the MMIOMT agrees with the Secure EPT"),
    ("DevifMappedCountBalances", "a DEVIF's count of mapped pages equals the pages mapped through it"),
    ("EpochRefcountsBalance", "a TD's per-epoch vCPU counts equal the vCPUs in the guest"),
  ].map { name, summary in
    Invariant(name: name, summary: summary,
              check: { m in m.kvm.tdx.invariantViolations().filter { $0.name == name }.map(\.message) })
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
    vfio.devices.values.compactMap { device in
      let held = vfio.dmabufs.values.filter { $0.device == device.id }.count
      return device.registrations == 1 + held ? nil
        : "vfio-dev\(device.id.rawValue) has \(device.registrations) registrations for \(held) buffer(s)"
    }
  }

  func decodeOffButLive() -> [String] {
    vfio.dmabufs.values.compactMap { buffer in
      guard let id = buffer.device, let device = vfio.device(id), !device.memoryEnabled, !buffer.revoked else { return nil }
      return "dmabuf\(buffer.buffer.rawValue) is live while vfio-dev\(id.rawValue) has memory disabled"
    }
  }

  func usableButRevoked() -> [String] {
    vfio.dmabufs.values.compactMap { buffer in
      guard let id = buffer.device, let device = vfio.device(id), device.openCount > 0,
            vfio.buffersUsable(id), buffer.revoked else { return nil }
      return "dmabuf\(buffer.buffer.rawValue) stays revoked although vfio-dev\(id.rawValue) is usable"
    }
  }

  func orphansLive() -> [String] {
    vfio.dmabufs.values.compactMap { buffer in
      let open = buffer.device.flatMap { vfio.device($0) }.map { $0.openCount > 0 } ?? false
      return open || buffer.revoked ? nil : "dmabuf\(buffer.buffer.rawValue) is live but its device is closed"
    }
  }

  func resetsUnderLiveImport() -> [String] {
    vfio.devices.values.filter { $0.resetsUnderLiveImport > 0 }
      .map { "vfio-dev\($0.id.rawValue) was reset \($0.resetsUnderLiveImport) time(s) while importers could map its buffers" }
  }
}

extension Machine {
  func privateLiveWithoutRun() -> [String] {
    vfio.dmabufs.values.compactMap { buffer in
      guard buffer.isPrivate, !buffer.revoked, let id = buffer.device, let device = vfio.device(id),
            device.function.tdiState != .run else { return nil }
      return "private dmabuf\(buffer.buffer.rawValue) is live while the TDI of vfio-dev\(id.rawValue) is \(device.function.tdiState?.specName ?? "absent")"
    }
  }

  /// The PFN the exporter's physical ranges give for page `pgoff` of a buffer (revoked or not:
  /// a stale mapping of a revoked buffer is `RevokedImpliesNoSPTE`'s to report).
  func exporterPFN(_ buffer: DmaBufID, _ pgoff: PageIndex) -> PFN? {
    vfio.dmaBuf(buffer)?.locate(page: pgoff.rawValue)?.pfn
  }

  /// KVM's attachments to buffers that are revoked, or gone.
  func revokedAttachments() -> Set<AttachmentID> {
    var out: Set<AttachmentID> = []
    for vm in kvm.vms.values {
      for binding in vm.bindings.values where vfio.dmaBuf(binding.binding.dmaBuf)?.revoked ?? true {
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
      let mirror = Dictionary(vm.mmu.leaves().map { ($0.gfn.gpa, $0.spte.pfn.hpa) }, uniquingKeysWith: { a, _ in a })
      let mmioStates: Set<SEPTState> = [.mmioMapped, .mmioBlocked, .mmioPending]
      let sept = Dictionary(state.sept.filter { mmioStates.contains($0.value.state) }.map { ($0.key, $0.value.hpa) },
                            uniquingKeysWith: { a, _ in a })
      for (gpa, hpa) in mirror where sept[gpa] != hpa {
        out.append("vm\(id.rawValue) mirror maps \(gpa) -> \(hpa), SEPT has \(sept[gpa].map(\.description) ?? "nothing")")
      }
      for (gpa, hpa) in sept where mirror[gpa] == nil {
        out.append("vm\(id.rawValue) SEPT maps \(gpa) -> \(hpa), the mirror has nothing")
      }
    }
    return out
  }
}
