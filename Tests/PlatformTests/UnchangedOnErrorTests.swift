import Testing
import KernelCore
import DmaBuf
@testable import Platform

/// A deterministic generator (SplitMix64) so a failing seed can be replayed.
struct SeededGenerator: RandomNumberGenerator {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

@Suite struct ConfigurationTests {
  @Test(arguments: [0x8000_0000_0000_0000, 0x800, 0x3000] as [UInt64])
  func barsThatCannotBePlacedAreRefused(size: UInt64) {
    let configuration = MachineConfiguration(devices: [DeviceConfiguration(name: "n", bars: [BARConfiguration(index: 0, size: size)])])
    #expect(throws: ConfigurationError.self) { try Machine(configuration: configuration) }
  }

  /// Building a machine is linear in its devices: 20,000 devices took 140 s while each placement
  /// and name check scanned every earlier device, and take a few seconds in a debug build now.
  /// The time limit catches a quadratic build coming back, in a debug or a release build.
  @Test(.timeLimit(.minutes(1))) func twentyThousandDevicesAreBuiltEachWithItsOwnBAR() throws {
    let count = 20_000
    let devices = (0..<count).map { DeviceConfiguration(name: "d\($0)", bars: [BARConfiguration(index: 0, size: 0x1000)]) }
    let machine = try Machine(configuration: MachineConfiguration(devices: devices))
    #expect(machine.vfio.devices.count == count)
    let bases = Set(machine.vfio.devices.values.flatMap { $0.function.bars.map(\.base) })
    #expect(bases.count == count)
  }

  @Test func namesAreUnique() {
    let bar = [BARConfiguration(index: 0, size: 0x1000)]
    #expect(throws: ConfigurationError.self) {
      try Machine(configuration: MachineConfiguration(devices: [DeviceConfiguration(name: "n", bars: bar),
                                                                DeviceConfiguration(name: "n", bars: bar)]))
    }
    #expect(throws: ConfigurationError.self) {
      try Machine(configuration: MachineConfiguration(vms: [VMConfiguration(name: "v", type: .tdx), VMConfiguration(name: "v", type: .default)]))
    }
  }
}

/// "A failed operation changes nothing": over many random machines, every operation with bad
/// arguments fails and leaves the machine equal to what it was.
@Suite struct UnchangedOnErrorTests {
  /// Random plausible operations that build up state (some of them fail, which is fine).
  static func randomOp(_ rng: inout SeededGenerator, fds: [FD], attachments: [AttachmentID]) -> Operation {
    let fd = fds.randomElement(using: &rng) ?? FD(3)
    let attachment = attachments.randomElement(using: &rng) ?? AttachmentID(1)
    let page = UInt64(0x1000)
    switch Int.random(in: 0..<20, using: &rng) {
    case 16: return .kvmSetUserMemoryRegion2(vm: fds.randomElement(using: &rng) ?? fd, region: MemoryRegion2(
      slot: UInt32.random(in: 1...2, using: &rng), flags: 1 << 3, guestPhysAddr: 0x8000_0000 + page * UInt64.random(in: 0..<2, using: &rng) * 0x200,
      memorySize: [0, page, 0x20_0000].randomElement(using: &rng)!, guestMemfd: fd.rawValue))
    case 17: return .tdxDevifCreate(vm: fds.randomElement(using: &rng) ?? fd, device: "nic0")
    case 18: return .tdxMMIOMTAdd(device: "nic0")
    case 19: return .kvmCreateVCPU(vm: fds.randomElement(using: &rng) ?? fd, id: UInt32.random(in: 0..<3, using: &rng))
    case 0, 1: return .vfioOpen(device: "nic0")
    case 2: return .vfioBindIOMMUFD(fd: fd, private: Bool.random(using: &rng), vm: fds.randomElement(using: &rng))
    case 3, 4: return .vfioDmaBuf(fd: fd, regionIndex: 0,
                                  ranges: [DmaRange(offset: page * UInt64.random(in: 0..<4, using: &rng), length: page)],
                                  openFlags: 0, flags: 0)
    case 5, 6: return .dmabufAttach(fd: fd, importer: "r", dynamic: true, peer2peer: true)
    case 7: return .vfioSetMemoryDecode(fd: fd, enable: Bool.random(using: &rng))
    case 8: return .vfioSetPower(fd: fd, state: Bool.random(using: &rng) ? .d0 : .d3hot)
    case 9: return [Operation.vfioReset(fd: fd), .vfioFLR(fd: fd), .vfioHotReset(fd: fd)].randomElement(using: &rng)!
    case 10: return .vfioClose(fd: fd)
    case 11: return .dmabufClose(fd: fd)
    case 12: return .dmabufDetach(attachment: attachment)
    case 13: return [Operation.tdispLock(device: "nic0"), .tdispStart(device: "nic0", nonce: .echo),
                     .tdispStop(device: "nic0")].randomElement(using: &rng)!
    case 14: return .pciFLR(device: "nic0")
    default: return .vfioMmap(fd: fd, regionIndex: 0)
    }
  }

  /// Operations that must fail on any machine: dead fds, wrong fd kinds, bad ranges, bad names.
  static func badOps(fds: [FD], attachments: [AttachmentID]) -> [Operation] {
    let dead = FD(900)
    var ops: [Operation] = [
      .vfioOpen(device: "missing"),
      .vfioBindIOMMUFD(fd: dead, private: false, vm: nil),
      .vfioClose(fd: dead), .dmabufClose(fd: dead),
      .vfioRegionInfo(fd: dead, regionIndex: 0), .vfioRead(fd: dead, regionIndex: 0, offset: 0, size: 4),
      .vfioWrite(fd: dead, regionIndex: 0, offset: 0, size: 4), .vfioMmap(fd: dead, regionIndex: 0),
      .vfioSetMemoryDecode(fd: dead, enable: false), .vfioReset(fd: dead), .vfioFLR(fd: dead),
      .vfioHotReset(fd: dead), .vfioSetPower(fd: dead, state: .d3hot),
      .dmabufAttach(fd: dead, importer: "x", dynamic: true, peer2peer: true),
      .dmabufDetach(attachment: AttachmentID(999)), .dmabufPin(attachment: AttachmentID(999)),
      .dmabufGetPfn(attachment: AttachmentID(999), pgoff: PageIndex(0)),
      .tdispLock(device: "missing"), .tdispStart(device: "missing", nonce: .echo), .tdispStop(device: "missing"),
      .tdispReport(device: "missing"), .pciFLR(device: "missing"), .pciWriteCommand(device: "missing", memory: true, busMaster: nil),
      .tdispStart(device: "nic0", nonce: .wrong),
      .kvmCreateVCPU(vm: dead, id: 0), .kvmDestroyVM(vm: dead),
      .kvmSetUserMemoryRegion2(vm: dead, region: MemoryRegion2(slot: 1, flags: 0, guestPhysAddr: 0, memorySize: 0x1000)),
      .guestRead(vm: dead, gpa: GPA(0x1000), size: 4), .guestWrite(vm: dead, gpa: GPA(0x1000), size: 4),
      .guestAcceptMMIO(vm: dead, gpa: GPA(0x1000), expectHPA: nil),
      .tdxDevifCreate(vm: dead, device: "nic0"), .tdxDevifRemove(vm: dead, device: "nic0"),
      .tdxMMIOMTAdd(device: "missing"), .tdxStreamBlock(device: "missing"), .tdxSeamcall(leaf: 9999, args: []),
    ]
    for vm in fds.prefix(2) {   // td0 and vm0
      ops += [
        .kvmCreateVCPU(vm: vm, id: 4096),
        .kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: 1, flags: 0, guestPhysAddr: 0x800, memorySize: 0x1000)),
        .kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: 40_000, flags: 0, guestPhysAddr: 0, memorySize: 0x1000)),
        .kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: 3, flags: 1 << 3, guestPhysAddr: 0x1_0000_0000,
                                                               memorySize: 0x1000, guestMemfd: dead.rawValue)),
        .kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: 3, flags: 1 << 9, guestPhysAddr: 0x1_0000_0000, memorySize: 0x1000)),
        .guestRead(vm: vm, gpa: GPA(0x8000_0000), size: 3), .guestWrite(vm: vm, gpa: GPA(0x8000_0FFE), size: 4),
        .tdxDevifRemove(vm: vm, device: "missing"),
      ]
    }
    if let plain = fds.dropFirst().first {
      ops += [.guestAcceptMMIO(vm: plain, gpa: GPA(0x8000_0000), expectHPA: nil), .tdxDevifCreate(vm: plain, device: "nic0")]
    }
    for fd in fds {
      ops += [
        .vfioDmaBuf(fd: fd, regionIndex: 0, ranges: [], openFlags: 0, flags: 0),
        .vfioDmaBuf(fd: fd, regionIndex: 0, ranges: [DmaRange(offset: 0x800, length: 0x1000)], openFlags: 0, flags: 0),
        .vfioDmaBuf(fd: fd, regionIndex: 0, ranges: [DmaRange(offset: 0, length: 0x40_0000)], openFlags: 0, flags: 0),
        .vfioRegionInfo(fd: fd, regionIndex: 42),
        .vfioRead(fd: fd, regionIndex: 0, offset: UInt64.max - 1, size: 4),
        .dmabufAttach(fd: fd, importer: "nop2p", dynamic: true, peer2peer: false),
      ]
    }
    for a in attachments {
      ops += [.dmabufGetPfn(attachment: a, pgoff: PageIndex(1 << 40)), .dmabufPin(attachment: a)]
    }
    return ops
  }

  @Test(arguments: Array(UInt64(1)...24), Variant.allCases)
  func failedOpsChangeNothing(seed: UInt64, variant: Variant) throws {
    var rng = SeededGenerator(seed: seed)
    var machine = try Machine(configuration: Bench.configuration, variant: variant)
    var fds: [FD] = [machine.vmFD(named: "td0"), machine.vmFD(named: "vm0")].compactMap { $0 }
    var attachments: [AttachmentID] = []
    var failures = 0
    for _ in 0..<Int.random(in: 5..<40, using: &rng) {
      switch machine.perform(Self.randomOp(&rng, fds: fds, attachments: attachments)) {
      case .success(.fd(let fd)): fds.append(fd)
      case .success(.attachment(let a)): attachments.append(a)
      case .success: break
      case .failure: failures += 1
      }
      for op in Self.badOps(fds: fds, attachments: attachments) {
        var copy = machine
        let result = copy.perform(op)
        if case .success = result { Issue.record("seed \(seed): \(op) succeeded") }
        #expect(copy == machine, "seed \(seed): \(op) failed with \(result) but changed the machine")
      }
    }
    _ = failures
  }

  @Test(arguments: Array(UInt64(1)...8))
  func everyFailureInARandomRunChangesNothing(seed: UInt64) throws {
    var rng = SeededGenerator(seed: seed)
    var machine = try Machine(configuration: Bench.configuration)
    var fds: [FD] = [machine.vmFD(named: "td0")].compactMap { $0 }
    var attachments: [AttachmentID] = []
    for _ in 0..<60 {
      let op = Self.randomOp(&rng, fds: fds, attachments: attachments)
      let before = machine
      switch machine.perform(op) {
      case .success(.fd(let fd)): fds.append(fd)
      case .success(.attachment(let a)): attachments.append(a)
      case .success: break
      case .failure(let f): #expect(machine == before, "seed \(seed): \(op) failed with \(f) but changed the machine")
      }
    }
  }
}

/// The README's library example, as written there.
@Test func readmeLibraryExample() throws {
  var machine = try Machine(configuration: MachineConfiguration(
    devices: [DeviceConfiguration(name: "nic0", bars: [BARConfiguration(index: 0, size: 0x20_0000)])],
    vms: [VMConfiguration(name: "vm0", type: .default)]))
  guard case .success(.fd(let dev)) = machine.perform(.vfioOpen(device: "nic0")) else {
    Issue.record("open failed")
    return
  }
  _ = machine.perform(.vfioBindIOMMUFD(fd: dev, private: false, vm: nil))
  let snapshot = machine
  let result = machine.perform(.vfioDmaBuf(fd: dev, regionIndex: 6, ranges: [DmaRange(offset: 0, length: 0x1000)],
                                           openFlags: 0, flags: 0))
  #expect(result == .failure(.errno(.ENODEV)))
  // The failed ioctl changed nothing; a successful one does change the machine.
  #expect(machine == snapshot)
  _ = machine.perform(.vfioDmaBuf(fd: dev, regionIndex: 0, ranges: [DmaRange(offset: 0, length: 0x1000)],
                                  openFlags: 0, flags: 0))
  #expect(machine != snapshot)
  #expect(machine.checkInvariants().filter { !$0.held }.isEmpty)
}
