import Testing
import KernelCore
import PCI
import VFIO
@testable import Platform

/// What reads return: the device's registers through VFIO and through a guest's mapping,
/// all ones where no function decodes the access, as the bus answers it.
@Suite struct GuestValueTests {
  static let allOnes32: UInt64 = 0xFFFF_FFFF

  func read(_ bench: inout Bench, _ vm: FD, _ gpa: UInt64, size: UInt64 = 4) -> OpResult {
    bench.machine.perform(.guestRead(vm: vm, gpa: GPA(gpa), size: size))
  }

  /// Every register reads its own offset until written; a write reads back through any path.
  @Test(arguments: [false, true])
  func aReadAfterAWriteSeesTheWrite(throughVFIO: Bool) throws {
    var bench = try Bench(.reviewed)
    let (dev, _) = try bench.sharedSlot()
    #expect(bench.machine.perform(.guestRead(vm: bench.plain, gpa: GPA(gpaBase + 0x40), size: 8))
            == .success(.guestAccess("mapped", value: 0x44_0000_0040)))
    if throughVFIO {
      try bench.ok(.vfioWrite(fd: dev, regionIndex: 0, offset: 0x40, size: 4, value: 0xdead_beef))
    } else {
      #expect(bench.machine.perform(.guestWrite(vm: bench.plain, gpa: GPA(gpaBase + 0x40), size: 4, value: 0xdead_beef))
              == .success(.guestAccess("already_mapped")))
    }
    #expect(bench.machine.perform(.guestRead(vm: bench.plain, gpa: GPA(gpaBase + 0x40), size: 8))
            == .success(.guestAccess("already_mapped", value: 0x44_dead_beef)))
    #expect(bench.machine.perform(.vfioRead(fd: dev, regionIndex: 0, offset: 0x42, size: 2)) == .success(.read(0xdead)))
    // A write without a value stores the pattern, cut to its size.
    try bench.ok(.guestWrite(vm: bench.plain, gpa: GPA(gpaBase + 0x80), size: 2))
    #expect(bench.machine.perform(.vfioRead(fd: dev, regionIndex: 0, offset: 0x80, size: 4)) == .success(.read(0x0000_a5a5)))
    #expect(bench.violated().isEmpty)
  }

  /// A TD loads and stores through its accepted page's Secure-EPT entry like any guest.
  @Test func aTDReadsTheRegisterItWrote() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase + 0x1000), expectHPA: nil))
    #expect(read(&bench, bench.td, gpaBase + 0x1008) == .success(.guestAccess("already_mapped", value: 0x1008)))
    try bench.ok(.guestWrite(vm: bench.td, gpa: GPA(gpaBase + 0x1008), size: 8, value: 0x0123_4567_89ab_cdef))
    #expect(read(&bench, bench.td, gpaBase + 0x100c) == .success(.guestAccess("already_mapped", value: 0x0123_4567)))
  }

  /// Memory decode turned off behind VFIO's back (a command-register write from outside it):
  /// nothing revokes, the SPTE stays, and the guest's load ends in a master abort.
  @Test func decodeOffOutsideVFIOReadsAllOnesAndDropsWrites() throws {
    var bench = try Bench(.reviewed)
    let (dev, _) = try bench.sharedSlot()
    _ = read(&bench, bench.plain, gpaBase)
    try bench.ok(.pciWriteCommand(device: "nic0", memory: false, busMaster: nil))
    #expect(bench.violated() == ["DecodeOffImpliesRevoked"])
    #expect(read(&bench, bench.plain, gpaBase + 0x10) == .success(.guestAccess("already_mapped", value: Self.allOnes32)))
    #expect(read(&bench, bench.plain, gpaBase + 0x10, size: 1) == .success(.guestAccess("already_mapped", value: 0xff)))
    try bench.ok(.guestWrite(vm: bench.plain, gpa: GPA(gpaBase + 0x10), size: 4, value: 1))
    // VFIO's own read refuses with the errno vfio_pci_ioread32() returns, not all ones.
    #expect(bench.errno(.vfioRead(fd: dev, regionIndex: 0, offset: 0x10, size: 4)) == .EIO)
    try bench.ok(.pciWriteCommand(device: "nic0", memory: true, busMaster: nil))
    #expect(read(&bench, bench.plain, gpaBase + 0x10) == .success(.guestAccess("already_mapped", value: 0x10)))
  }

  /// D3hot stops decode; back in D0 the registers are as they were (No_Soft_Reset). An FLR
  /// returns every register to its reset value.
  @Test func d3hotKeepsRegistersAndAnFLRResetsThem() throws {
    var bench = try Bench(.reviewed)
    let (dev, _) = try bench.sharedSlot()
    try bench.ok(.vfioWrite(fd: dev, regionIndex: 0, offset: 0x20, size: 4, value: 7))
    try bench.ok(.vfioSetPower(fd: dev, state: .d3hot))
    #expect(bench.errno(.vfioRead(fd: dev, regionIndex: 0, offset: 0x20, size: 4)) == .EIO)
    try bench.ok(.vfioSetPower(fd: dev, state: .d0))
    #expect(bench.machine.perform(.vfioRead(fd: dev, regionIndex: 0, offset: 0x20, size: 4)) == .success(.read(7)))
    try bench.ok(.vfioReset(fd: dev))
    #expect(bench.machine.perform(.vfioRead(fd: dev, regionIndex: 0, offset: 0x20, size: 4)) == .success(.read(0x20)))
  }

  /// `do_io_rw()` fills reads of the MSI-X table with 0xff and drops writes to it; the PBA
  /// right after it is ordinary.
  @Test func theMSIXTableReadsAllOnesThroughVFIO() throws {
    var bench = try Bench(.reviewed)
    let dev = try bench.openDevice(private: false)
    #expect(bench.machine.perform(.vfioRead(fd: dev, regionIndex: 2, offset: 0x10, size: 4)) == .success(.read(Self.allOnes32)))
    try bench.ok(.vfioWrite(fd: dev, regionIndex: 2, offset: 0x10, size: 4, value: 0))
    #expect(bench.machine.perform(.vfioRead(fd: dev, regionIndex: 2, offset: 0x10, size: 4)) == .success(.read(Self.allOnes32)))
    // Eight bytes across the table's end: four 0xff bytes, then the PBA's first register.
    #expect(bench.machine.perform(.vfioRead(fd: dev, regionIndex: 2, offset: 0xffc, size: 8))
            == .success(.read(0x1000_ffff_ffff)))
    try bench.ok(.vfioWrite(fd: dev, regionIndex: 2, offset: 0x1000, size: 4, value: 3))
    #expect(bench.machine.perform(.vfioRead(fd: dev, regionIndex: 2, offset: 0x1000, size: 4)) == .success(.read(3)))
  }

  /// A write of a register's reset value leaves a machine equal to one never written.
  @Test func writingTheResetValueBackIsNoChange() throws {
    var bench = try Bench(.reviewed)
    let (dev, _) = try bench.sharedSlot()
    let before = bench.machine
    try bench.ok(.vfioWrite(fd: dev, regionIndex: 0, offset: 0x30, size: 4, value: 9))
    #expect(bench.machine != before)
    try bench.ok(.vfioWrite(fd: dev, regionIndex: 0, offset: 0x30, size: 4, value: 0x30))
    #expect(bench.machine == before)
  }

  /// A load of RAM has no value: the model keeps no RAM contents.
  @Test func aLoadOfRAMHasNoValue() throws {
    var bench = try Bench(.reviewed)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.plain, region: MemoryRegion2(
      slot: 2, flags: 0, guestPhysAddr: 0x10_0000, memorySize: 0x1000, userspaceAddr: 0x7000_0000)))
    #expect(read(&bench, bench.plain, 0x10_0000) == .success(.guestAccess("mapped")))
  }

  /// The RFC's close disables and resets the device before it revokes: a TD load that lands in
  /// between goes through the Secure-EPT entry that is still there and reads all ones from a
  /// function that no longer decodes. `reviewed` revokes first, so the load faults and the
  /// exporter refuses the PFN: EIO.
  @Test(arguments: Variant.allCases)
  func aLoadBetweenTheResetAndTheRevokeOfAClose(variant: Variant) throws {
    var bench = try Bench(variant)
    let (dev, _) = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
    try bench.ok(.guestWrite(vm: bench.td, gpa: GPA(gpaBase + 0x10), size: 4, value: 0x5555))
    var close = bench.machine.startThread(.vfioClose(fd: dev), context: ContextID(rawValue: 2), name: "ctx2")
    var contention = Contention()
    // Up to the region that disabled and reset the function.
    func decodes(_ bench: Bench) -> Bool { bench.machine.vfio.device(VFIODeviceID(1))?.function.memoryDecodeEnabled ?? false }
    for _ in 0 ..< 40 where decodes(bench) {
      switch bench.machine.step(&close, choices: &contention) {
      case .ran: continue
      case .blocked:   // the zap's kick: vCPU 0 answers it
        for vcpu in bench.machine.kickResponders() { try bench.machine.answerKick(vcpu) }
      case .finished: break
      }
    }
    #expect(!decodes(bench))
    var load = bench.machine.startThread(.guestRead(vm: bench.td, gpa: GPA(gpaBase + 0x10), size: 4),
                                         context: ContextID(rawValue: 1), name: "vcpu0")
    let expected: OpResult = variant == .rfcV1 ? .success(.guestAccess("already_mapped", value: Self.allOnes32))
                                               : .failure(.errno(.EIO))
    #expect(bench.finish(&load) == expected)
    #expect(bench.finish(&close) == .success(.none))
  }
}
