import Testing
import KernelCore
import DmaBuf
import VFIO
import KVM
import TDX
@testable import Platform

extension Bench {
  /// The seed's flow up to a mapped slot: bind private, lock, DEVIF, MMIOMT, start, export,
  /// slot 1 of td0 at 2 GiB.
  mutating func tdSlot() throws -> (dev: FD, buf: FD) {
    let dev = try fd(.vfioOpen(device: "nic0"))
    try ok(.vfioBindIOMMUFD(fd: dev, private: true, vm: td))
    try ok(.tdispLock(device: "nic0"))
    try bindToTD()
    try ok(.tdispStart(device: "nic0", nonce: .echo))
    let buf = try exportBAR0(dev)
    try ok(.kvmSetUserMemoryRegion2(vm: td, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: Bench.bar0, guestMemfd: buf.rawValue)))
    // kvm_mmu_faultin_pfn(): a private fault maps only GFNs whose attributes say private.
    try ok(.kvmSetMemoryAttributes(vm: td, address: gpaBase, size: Bench.bar0, attributes: 1 << 3, flags: 0))
    return (dev, buf)
  }

  var tdID: TDID? {
    guard case .vm(let id)? = try? machine.files.lookup(td) else { return nil }
    return machine.kvm.tds[id]
  }

  func sept(_ gpa: UInt64) -> SEPTState? {
    tdID.flatMap { machine.kvm.tdx.septEntry(td: $0, gpa: GPA(gpa))?.state }
  }

  func tdx(_ result: OpResult) -> String? {
    if case .failure(.tdx(let s)) = result { return s.name }
    return nil
  }
}

@Suite struct TDXFlowTests {
  @Test(arguments: Variant.allCases)
  func mapAcceptAccessAndTearDown(variant: Variant) throws {
    var bench = try Bench(variant)
    let (dev, buf) = try bench.tdSlot()
    #expect(bench.machine.perform(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
            == .success(.guestAccess("accepted")))
    #expect(bench.sept(gpaBase) == .mmioMapped)
    #expect(bench.access(bench.td, gpaBase) == .success(.guestAccess("already_mapped", value: 0)))
    #expect(bench.violated().isEmpty)
    // Teardown: the interface stops being trusted, the buffer is revoked (by STOP in reviewed,
    // by a reset in the RFC), KVM's zap blocks, tracks, kicks and unmaps.
    try bench.ok(.tdispStop(device: "nic0"))
    if variant == .rfcV1 { try bench.ok(.vfioReset(fd: dev)); try bench.ok(.vfioSetMemoryDecode(fd: dev, enable: false)) }
    #expect(bench.priv(buf)?.revoked == true)
    #expect(bench.sept(gpaBase) == nil)
    #expect(bench.vm(bench.td)?.mmu.mappedPages == 0)
    try bench.ok(.tdxDevifRemove(vm: bench.td, device: "nic0"))
    #expect(bench.violated().isEmpty)
    let trace = bench.machine.trace.events.map(\.description).joined(separator: "\n")
    for leaf in ["TDH.MMIO.MAP", "TDG.MMIO.ACCEPT", "TDH.MMIO.BLOCK", "TDH.MEM.TRACK", "TDH.MMIO.UNMAP", "TDH.DEVIF.REMOVE"] {
      #expect(trace.contains(leaf), "the trace shows \(leaf)")
    }
  }

  @Test func accessBeforeAcceptKillsTheTD() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.tdSlot()
    #expect(bench.access(bench.td, gpaBase + 0x3000) == .success(.guestAccess("killed")))
    #expect(bench.sept(gpaBase + 0x3000) == .mmioPending)
    #expect(bench.access(bench.td, gpaBase) == .success(.guestAccess("killed")))
    #expect(bench.machine.perform(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil)).isFailure)
  }

  @Test func acceptWithTheWrongHPA() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.tdSlot()
    let wrong = HPA(bench.bar0Base.rawValue + 0x1000)
    let result = bench.machine.perform(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: wrong))
    #expect(bench.tdx(result) == "TDX_MMIO_INVALID_HPA_OFFSET")
    #expect(bench.sept(gpaBase) == .mmioPending)          // the fault mapped it; the accept failed
    #expect(bench.machine.perform(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: bench.bar0Base))
            == .success(.guestAccess("accepted")))
  }

  @Test func anUnexpectedStatusKillsTheVM() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.tdSlot()
    #expect(bench.machine.perform(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: bench.bar0Base))
            == .success(.guestAccess("accepted")))
    // A raw TDH.MMIO.BLOCK behind KVM's back: the revoke's own BLOCK of the page then finds it
    // blocked already (TDX_EPT_ENTRY_STATE_INCORRECT), a status KVM does not expect.
    let td = try #require(bench.tdID)
    #expect(bench.machine.perform(.tdxSeamcall(leaf: 159, args: [gpaBase, UInt64(td.rawValue)])) == .success(.seamcall([])))
    #expect(bench.machine.perform(.tdispStop(device: "nic0")) == .success(.tdiState("CONFIG_UNLOCKED")))
    #expect(bench.vm(bench.td)?.isDead == true)
    #expect(bench.violated().contains("NoKVMBugOn"))
    for op: Operation in [.kvmCreateVCPU(vm: bench.td, id: 1), .guestRead(vm: bench.td, gpa: GPA(gpaBase), size: 4),
                          .kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(slot: 2, flags: 0, guestPhysAddr: 0, memorySize: 0x1000)),
                          .guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil), .tdxDevifCreate(vm: bench.td, device: "nic0")] {
      #expect(bench.errno(op) == .EIO, "\(op) on a dead VM")
    }
  }

  @Test func devifRemoveWithMappedPages() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
    // tdh_devif_remove.c checks the TDISP state (RUN here) before the mapped-page count.
    #expect(bench.tdx(bench.machine.perform(.tdxDevifRemove(vm: bench.td, device: "nic0"))) == "TDX_DEVIF_INVALID_STATE")
  }

  @Test func hostSideErrors() throws {
    var bench = try Bench(.reviewed)
    #expect(bench.errno(.tdxDevifCreate(vm: bench.plain, device: "nic0")) == .EINVAL)   // not a TD
    #expect(bench.errno(.tdxDevifCreate(vm: bench.td, device: "nope")) == .ENODEV)
    #expect(bench.errno(.tdxMMIOMTAdd(device: "nic0")) == .ENOENT)                    // no DEVIF yet
    #expect(bench.errno(.tdxStreamBlock(device: "nic0")) == .ENOENT)
    try bench.ok(.tdxDevifCreate(vm: bench.td, device: "nic0"))
    // The report exists only while the interface is locked or running.
    #expect(bench.machine.perform(.tdxMMIOMTAdd(device: "nic0")) == .failure(.tdisp(code: 4, name: "INVALID_INTERFACE_STATE")))
    #expect(bench.tdx(bench.machine.perform(.tdxSeamcall(leaf: 9999, args: []))) == "TDX_OPERAND_INVALID")
    #expect(bench.errno(.guestAcceptMMIO(vm: bench.plain, gpa: GPA(gpaBase), expectHPA: nil)) == .EINVAL)
    #expect(bench.errno(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil)) == .EINVAL)  // no slot: no HPA to expect
  }

  /// A TD's private GPA with no memslot is not emulated MMIO: KVM_RUN fails EFAULT
  /// (KVM_EXIT_MEMORY_FAULT), for an access and for an accept alike.
  @Test func privateGPAWithoutASlot() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.tdSlot()
    let exit = MemoryFaultExit(isPrivate: true, gfn: GPA(0x1000).gfn)
    #expect(bench.access(bench.td, 0x1000) == .failure(.memoryFault(exit)))
    #expect(bench.machine.perform(.guestAcceptMMIO(vm: bench.td, gpa: GPA(0x1000), expectHPA: bench.bar0Base))
            == .failure(.memoryFault(exit)))
  }
}

/// The ordering question the RFC leaves open: a revoke (here an FLR started through config
/// space, as a guest does) while the TDI is still RUN.
@Suite struct FLRWhileRunTests {
  @Test(arguments: Variant.allCases)
  func flrWhileRun(variant: Variant) throws {
    var bench = try Bench(variant)
    let (dev, buf) = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
    try bench.ok(.vfioFLR(fd: dev))
    switch variant {
    case .reviewed:
      // The TSM unbind stops the interface first, so UNMAP is allowed; the buffer stays revoked
      // until the guest locks, attests and starts the interface again.
      #expect(bench.sept(gpaBase) == nil)
      #expect(bench.priv(buf)?.revoked == true)
      #expect(bench.vm(bench.td)?.isDead == false)
      #expect(bench.violated().isEmpty)
    case .rfcV1:
      // The revoke reaches KVM with the TDI still RUN: TDH.MMIO.UNMAP fails
      // TDX_DEVIF_TDISP_INVALID_STATE, KVM_BUG_ON kills the VM, and the TD keeps its mapping
      // of a device that is then reset. (The config-space FLR also leaves the buffer revoked:
      // the RFC's other FLR bug.)
      #expect(bench.vm(bench.td)?.isDead == true)
      #expect(bench.sept(gpaBase) == .mmioBlocked)
      #expect(bench.violated() == ["UsableDeviceBuffersRestored", "RevokedImpliesNoSPTE", "NoKVMBugOn"])
      #expect(bench.machine.kvm.bugs.first?.contains("TDX_DEVIF_TDISP_INVALID_STATE") == true)
    }
  }

  @Test func blockingTheStreamAlsoAllowsUnmap() throws {
    var bench = try Bench(.rfcV1)
    let (dev, _) = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
    try bench.ok(.tdxStreamBlock(device: "nic0"))
    try bench.ok(.vfioSetMemoryDecode(fd: dev, enable: false))
    #expect(bench.sept(gpaBase) == nil)
    #expect(bench.vm(bench.td)?.isDead == false)
  }
}

extension Result {
  var isFailure: Bool { if case .failure = self { true } else { false } }
}

/// The history invariants: what they count cannot be seen in the state after a step, so they
/// count it on the way. Driving the machine correctly leaves them at zero; a count is reported
/// by name.
@Suite struct HistoryInvariantTests {
  @Test func theCorrectFlowsCountNothing() throws {
    var teardown = try Bench(.reviewed)
    let (dev, _) = try teardown.tdSlot()
    try teardown.ok(.guestAcceptMMIO(vm: teardown.td, gpa: GPA(gpaBase), expectHPA: nil))
    try teardown.ok(.vfioSetMemoryDecode(fd: dev, enable: false))     // block, track, kick, unmap
    #expect(teardown.machine.kvm.observed.value.untrackedUnmaps == 0)
    #expect(teardown.violated().isEmpty)

    var early = try Bench(.reviewed)
    _ = try early.tdSlot()
    #expect(early.access(early.td, gpaBase + 0x2000) == .success(.guestAccess("killed")))
    #expect(early.machine.kvm.observed.value.unpunishedPendingAccesses == 0)
    #expect(early.violated().isEmpty)
  }

  @Test(arguments: ["NoUnmapBeforeTracking", "PendingAccessKillsTD", "DeadVMAcceptsNoIoctl"])
  func aCountIsReportedByName(name: String) throws {
    var bench = try Bench(.reviewed)
    switch name {
    case "NoUnmapBeforeTracking": bench.machine.kvm.observed.value.untrackedUnmaps = 1
    case "PendingAccessKillsTD": bench.machine.kvm.observed.value.unpunishedPendingAccesses = 1
    default: bench.machine.kvm.observed.value.deadVMIoctls = 1
    }
    #expect(bench.violated() == [name])
  }
}

/// When the host may map a private device's MMIO, per the TDX Connect flow: TDH.MMIO.MAP checks
/// no TDISP state and the DEVIF and MMIOMT exist from LOCK on, while the guest accepts only
/// after its own START_INTERFACE. So in `reviewed` the buffer is usable once the interface is
/// locked: the VMM creates the memslot before the guest runs, the host maps pending MMIO, the
/// guest starts the interface and accepts.
@Suite struct TDXConnectOrderTests {
  @Test func theSlotComesBeforeStartAndTheAcceptAfterIt() throws {
    var bench = try Bench(.reviewed)
    let dev = try bench.fd(.vfioOpen(device: "nic0"))
    try bench.ok(.vfioBindIOMMUFD(fd: dev, private: true, vm: bench.td))
    try bench.ok(.tdispLock(device: "nic0"))
    try bench.bindToTD()
    let buf = try bench.exportBAR0(dev)
    #expect(bench.priv(buf)?.revoked == false, "live while CONFIG_LOCKED")
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: Bench.bar0, guestMemfd: buf.rawValue)))
    try bench.ok(.kvmSetMemoryAttributes(vm: bench.td, address: gpaBase, size: Bench.bar0, attributes: 1 << 3, flags: 0))
    try bench.ok(.tdispStart(device: "nic0", nonce: .echo))
    #expect(try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil)) == .guestAccess("accepted"))
    // A second accept of the same page is the module's warning, not an error.
    #expect(try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil)) == .guestAccess("already_accepted"))
    #expect(bench.access(bench.td, gpaBase) == .success(.guestAccess("already_mapped", value: 0)))
    #expect(bench.violated().isEmpty)
  }

  /// The RFC's real defect: after a reset the buffer is restored on memory enable alone, and
  /// nothing checks the TDI state, so the TD maps and accepts MMIO of an interface in ERROR.
  @Test func rfcV1MapsAndAcceptsMMIOOfAnInterfaceInError() throws {
    var bench = try Bench(.rfcV1)
    let (dev, _) = try bench.tdSlot()
    try bench.ok(.vfioReset(fd: dev))
    #expect(bench.machine.vfio.device(VFIODeviceID(1))?.function.tdiState == .error)
    #expect(try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil)) == .guestAccess("accepted"))
    #expect(bench.violated() == ["PrivateMMIOOnlyWhileTDIRuns", "NoAcceptOfNonRunningTDI"])
  }
}
