import Testing
import KernelCore
import DmaBuf
import VFIO
@testable import Platform

/// Revoke and restore for each trigger on a shared (not private) device, in both variants:
/// the buffer's state after, how many `move_notify` calls the importer got, and which
/// invariants report the RFC's bugs.
@Suite struct RevokeTests {
  enum Trigger: String, CaseIterable, Sendable {
    case decodeOffOn, d3hotD0, ioctlReset, configFLR, hotReset, externalFLR
  }

  struct Case: CustomTestStringConvertible, Sendable {
    let variant: Variant
    let trigger: Trigger
    /// `revoked` right after the trigger's first op (`nil`: same as `revokedAfter`).
    let revokedMidway: Bool?
    let revokedAfter: Bool
    let notifications: Int
    let violations: [String]
    var testDescription: String { "\(variant) \(trigger.rawValue)" }
  }

  static let cases: [Case] = Variant.allCases.flatMap { v -> [Case] in [
    Case(variant: v, trigger: .decodeOffOn, revokedMidway: true, revokedAfter: false, notifications: 2, violations: []),
    Case(variant: v, trigger: .d3hotD0, revokedMidway: true, revokedAfter: false, notifications: 2, violations: []),
    Case(variant: v, trigger: .ioctlReset, revokedMidway: nil, revokedAfter: false, notifications: 2, violations: []),
    Case(variant: v, trigger: .hotReset, revokedMidway: nil, revokedAfter: false, notifications: 2, violations: []),
    // A reset from outside VFIO is not seen by vfio-pci: importers keep mapping a reset device.
    Case(variant: v, trigger: .externalFLR, revokedMidway: nil, revokedAfter: false, notifications: 0,
         violations: ["NoResetUnderLiveImport"]),
  ] } + [
    Case(variant: .reviewed, trigger: .configFLR, revokedMidway: nil, revokedAfter: false, notifications: 2, violations: []),
    // The posted RFC revokes again instead of restoring after a config-space FLR.
    Case(variant: .rfcV1, trigger: .configFLR, revokedMidway: nil, revokedAfter: true, notifications: 1,
         violations: ["UsableDeviceBuffersRestored"]),
  ]

  @Test(arguments: cases)
  func trigger(c: Case) throws {
    var bench = try Bench(c.variant)
    let dev = try bench.openDevice(private: false)
    let buf = try bench.exportBAR0(dev)
    let a = try bench.attach(buf)
    try bench.apply(c.trigger, to: dev) { bench in
      #expect(bench.priv(buf)?.revoked == c.revokedMidway)
      #expect(bench.errno(.dmabufGetPfn(attachment: a, pgoff: PageIndex(0))) == .ENODEV)
    }
    #expect(bench.priv(buf)?.revoked == c.revokedAfter)
    #expect(bench.notifications(a) == c.notifications)
    #expect(bench.violated() == c.violations)
    if !c.revokedAfter {
      #expect(try bench.ok(.dmabufGetPfn(attachment: a, pgoff: PageIndex(0))) == .pfn(bench.bar0Base.pfn, order: c.variant == .rfcV1 ? 0 : 9))
    }
  }

  @Test(arguments: Variant.allCases)
  func closeRevokesForGood(variant: Variant) throws {
    var bench = try Bench(variant)
    let dev = try bench.openDevice(private: false)
    let buf = try bench.exportBAR0(dev)
    let a = try bench.attach(buf)
    try bench.ok(.vfioClose(fd: dev))
    #expect(bench.priv(buf)?.revoked == true)
    #expect(bench.priv(buf)?.device == nil)
    #expect(bench.notifications(a) == 1)
    #expect(bench.machine.vfio.device(VFIODeviceID(1))?.registrations == 1)
    #expect(bench.errno(.dmabufGetPfn(attachment: a, pgoff: PageIndex(0))) == .ENODEV)
    // rfc-v1 disables and resets the device before it revokes: importers could still map it.
    #expect(bench.violated() == (variant == .rfcV1 ? ["NoResetUnderLiveImport"] : []))
    // Reopening does not bring a closed device's buffers back.
    let again = try bench.openDevice(private: false)
    try bench.ok(.vfioSetMemoryDecode(fd: again, enable: true))
    #expect(bench.priv(buf)?.revoked == true)
  }

  @Test(arguments: Variant.allCases)
  func revokeWithoutImportersNeedsNoNotification(variant: Variant) throws {
    var bench = try Bench(variant)
    let dev = try bench.openDevice(private: false)
    let buf = try bench.exportBAR0(dev)
    try bench.ok(.vfioReset(fd: dev))
    try bench.ok(.pciFLR(device: "nic0"))     // nothing attached: no importer to strand
    #expect(bench.priv(buf)?.revoked == false)
    #expect(bench.violated().isEmpty)
  }

  @Test func rawCommandWriteBypassesVFIO() throws {
    var bench = try Bench(.reviewed)
    let dev = try bench.openDevice(private: false)
    let buf = try bench.exportBAR0(dev)
    try bench.ok(.pciWriteCommand(device: "nic0", memory: false, busMaster: nil))
    #expect(bench.priv(buf)?.revoked == false)
    #expect(bench.violated() == ["DecodeOffImpliesRevoked"])
  }
}

extension Bench {
  /// Runs one revoke trigger on the device behind `dev`. Two-step triggers (decode off then
  /// on, D3hot then D0) call `between` after their first step.
  mutating func apply(_ trigger: RevokeTests.Trigger, to dev: FD, between: (inout Bench) -> Void = { _ in }) throws {
    switch trigger {
    case .decodeOffOn:
      try ok(.vfioSetMemoryDecode(fd: dev, enable: false))
      between(&self)
      try ok(.vfioSetMemoryDecode(fd: dev, enable: true))
    case .d3hotD0:
      try ok(.vfioSetPower(fd: dev, state: .d3hot))
      between(&self)
      try ok(.vfioSetPower(fd: dev, state: .d0))
    case .ioctlReset: try ok(.vfioReset(fd: dev))
    case .configFLR: try ok(.vfioFLR(fd: dev))
    case .hotReset: try ok(.vfioHotReset(fd: dev))
    case .externalFLR: try ok(.pciFLR(device: "nic0"))
    }
  }
}

/// Revoke and restore of a private device's buffers, whose TDI runs when they are exported.
///
/// `reviewed` revokes (KVM blocks), unbinds the TSM (TDISP STOP), and tells the importers again
/// (KVM unmaps): two notifications per revoke of a private device. It restores private buffers
/// only while the TDI runs again: after any trigger they stay revoked until the interface is
/// locked and started anew. The RFC revokes with the TDI still running and restores on memory
/// enable alone: the buffer is live again for an interface in ERROR. With nothing mapped no
/// harm is done yet, so no invariant fires here; `TDXFlowTests` shows the TD mapping it.
@Suite struct PrivateRevokeTests {
  struct Case: CustomTestStringConvertible, Sendable {
    let variant: Variant
    let trigger: RevokeTests.Trigger
    let revokedAfter: Bool
    let tdiAfter: String
    let notifications: Int
    let violations: [String]
    var testDescription: String { "\(variant) \(trigger.rawValue)" }
  }

  static let cases: [Case] = [
    Case(variant: .reviewed, trigger: .decodeOffOn, revokedAfter: true, tdiAfter: "CONFIG_UNLOCKED", notifications: 2, violations: []),
    Case(variant: .reviewed, trigger: .d3hotD0, revokedAfter: true, tdiAfter: "CONFIG_UNLOCKED", notifications: 2, violations: []),
    Case(variant: .reviewed, trigger: .ioctlReset, revokedAfter: true, tdiAfter: "CONFIG_UNLOCKED", notifications: 2, violations: []),
    Case(variant: .reviewed, trigger: .configFLR, revokedAfter: true, tdiAfter: "CONFIG_UNLOCKED", notifications: 2, violations: []),
    Case(variant: .reviewed, trigger: .hotReset, revokedAfter: true, tdiAfter: "CONFIG_UNLOCKED", notifications: 2, violations: []),
    // A reset VFIO never saw: the TSM notices the TDI in ERROR and revokes only afterwards,
    // then stops the interface (ERROR -> CONFIG_UNLOCKED) so the TD's entries can be unmapped.
    Case(variant: .reviewed, trigger: .externalFLR, revokedAfter: true, tdiAfter: "CONFIG_UNLOCKED", notifications: 2,
         violations: ["NoResetUnderLiveImport"]),
    Case(variant: .rfcV1, trigger: .decodeOffOn, revokedAfter: false, tdiAfter: "ERROR", notifications: 2, violations: []),
    Case(variant: .rfcV1, trigger: .d3hotD0, revokedAfter: false, tdiAfter: "ERROR", notifications: 2, violations: []),
    Case(variant: .rfcV1, trigger: .ioctlReset, revokedAfter: false, tdiAfter: "ERROR", notifications: 2, violations: []),
    Case(variant: .rfcV1, trigger: .configFLR, revokedAfter: true, tdiAfter: "ERROR", notifications: 1,
         violations: ["UsableDeviceBuffersRestored"]),
    Case(variant: .rfcV1, trigger: .hotReset, revokedAfter: false, tdiAfter: "CONFIG_UNLOCKED", notifications: 2, violations: []),
    Case(variant: .rfcV1, trigger: .externalFLR, revokedAfter: false, tdiAfter: "ERROR", notifications: 0,
         violations: ["NoResetUnderLiveImport"]),
  ]

  @Test(arguments: cases)
  func trigger(c: Case) throws {
    var bench = try Bench(c.variant)
    let dev = try bench.openDevice(private: true)
    let buf = try bench.exportBAR0(dev)
    let a = try bench.attach(buf)
    #expect(bench.priv(buf)?.revoked == false)
    try bench.apply(c.trigger, to: dev)
    #expect(bench.priv(buf)?.revoked == c.revokedAfter)
    #expect(bench.machine.vfio.device(VFIODeviceID(1))?.function.tdiState?.specName == c.tdiAfter)
    #expect(bench.notifications(a) == c.notifications)
    #expect(bench.violated() == c.violations)
  }

  /// In `reviewed` a private buffer follows the interface: STOP revokes it, a new LOCK
  /// restores it (the host may map pending MMIO before the guest's START and accept).
  @Test func reviewedBuffersFollowTheInterface() throws {
    var bench = try Bench(.reviewed)
    let dev = try bench.openDevice(private: true)
    let buf = try bench.exportBAR0(dev)
    let a = try bench.attach(buf)
    try bench.ok(.tdispStop(device: "nic0"))
    #expect(bench.priv(buf)?.revoked == true)
    try bench.ok(.tdispLock(device: "nic0"))
    #expect(bench.priv(buf)?.revoked == false)
    try bench.ok(.tdispStart(device: "nic0", nonce: .echo))
    #expect(bench.priv(buf)?.revoked == false)
    #expect(bench.notifications(a) == 3)   // revoke, again after STOP, restore on LOCK
    #expect(bench.violated().isEmpty)
  }

  @Test(arguments: Variant.allCases)
  func exportBeforeStart(variant: Variant) throws {
    var bench = try Bench(variant)
    let dev = try bench.fd(.vfioOpen(device: "nic0"))
    try bench.ok(.vfioBindIOMMUFD(fd: dev, private: true, vm: bench.td))
    let buf = try bench.exportBAR0(dev)
    // reviewed: not mappable before the interface runs; the RFC hands it out at once (but
    // nothing maps it yet, so nothing is harmed).
    #expect(bench.priv(buf)?.revoked == (variant == .reviewed))
    #expect(bench.violated().isEmpty)
  }
}

/// Host access to the device's regions: refused for a private device (patch 8), `EIO` with
/// decode off, bounds checked.
@Suite struct HostAccessTests {
  @Test(arguments: [true, false])
  func regionInfo(isPrivate: Bool) throws {
    var bench = try Bench()
    let dev = try bench.openDevice(private: isPrivate)
    // Patch 8: a private mmap-capable BAR reports VFIO_REGION_INFO_FLAG_PRIVATE alone.
    #expect(try bench.ok(.vfioRegionInfo(fd: dev, regionIndex: 0))
            == .regionInfo(flags: isPrivate ? ["PRIVATE"] : ["READ", "WRITE", "MMAP"], size: Bench.bar0, offset: 0))
    #expect(try bench.ok(.vfioRegionInfo(fd: dev, regionIndex: 1)) == .regionInfo(flags: [], size: 0, offset: 1 << 40))
    #expect(try bench.ok(.vfioRegionInfo(fd: dev, regionIndex: 7)) == .regionInfo(flags: ["READ", "WRITE"], size: 4096, offset: 7 << 40))
    #expect(bench.errno(.vfioRegionInfo(fd: dev, regionIndex: 9)) == .EINVAL)
  }

  struct Access: CustomTestStringConvertible, Sendable {
    let label: String
    let isPrivate: Bool
    let op: @Sendable (FD) -> Operation
    let expected: Errno?
    var testDescription: String { label }
  }

  static let accesses: [Access] = [
    Access(label: "private read", isPrivate: true, op: { .vfioRead(fd: $0, regionIndex: 0, offset: 0, size: 4) }, expected: .EINVAL),
    Access(label: "private write", isPrivate: true, op: { .vfioWrite(fd: $0, regionIndex: 0, offset: 0, size: 4) }, expected: .EINVAL),
    Access(label: "private mmap", isPrivate: true, op: { .vfioMmap(fd: $0, regionIndex: 0) }, expected: .EINVAL),
    Access(label: "private mmap of another BAR", isPrivate: true, op: { .vfioMmap(fd: $0, regionIndex: 2) }, expected: .EINVAL),
    Access(label: "private config read", isPrivate: true, op: { .vfioRead(fd: $0, regionIndex: 7, offset: 4, size: 2) }, expected: nil),
    Access(label: "read", isPrivate: false, op: { .vfioRead(fd: $0, regionIndex: 0, offset: 0, size: 4) }, expected: nil),
    Access(label: "read at the end", isPrivate: false, op: { .vfioRead(fd: $0, regionIndex: 0, offset: 0x1F_FFFC, size: 4) }, expected: nil),
    // vfio_pci_bar_rw: pos >= end is EINVAL; a read running past the end is cut short.
    Access(label: "read running past the end", isPrivate: false, op: { .vfioRead(fd: $0, regionIndex: 0, offset: 0x1F_FFFE, size: 4) }, expected: nil),
    Access(label: "read at the end of the BAR", isPrivate: false, op: { .vfioRead(fd: $0, regionIndex: 0, offset: 0x20_0000, size: 4) }, expected: .EINVAL),
    Access(label: "read of a missing BAR", isPrivate: false, op: { .vfioRead(fd: $0, regionIndex: 1, offset: 0, size: 4) }, expected: .EINVAL),
    Access(label: "odd size", isPrivate: false, op: { .vfioRead(fd: $0, regionIndex: 0, offset: 0, size: 3) }, expected: .EINVAL),
    Access(label: "mmap", isPrivate: false, op: { .vfioMmap(fd: $0, regionIndex: 0) }, expected: nil),
    Access(label: "mmap of config space", isPrivate: false, op: { .vfioMmap(fd: $0, regionIndex: 7) }, expected: .EINVAL),
  ]

  @Test(arguments: accesses)
  func access(c: Access) throws {
    var bench = try Bench()
    let dev = try bench.openDevice(private: c.isPrivate)
    let before = bench.machine
    #expect(bench.errno(c.op(dev)) == c.expected)
    if c.expected != nil { #expect(bench.machine == before) }
    #expect(bench.violated().isEmpty)
  }

  @Test func decodeOffIsEIO() throws {
    var bench = try Bench()
    let dev = try bench.openDevice(private: false)
    try bench.ok(.vfioSetMemoryDecode(fd: dev, enable: false))
    #expect(bench.errno(.vfioRead(fd: dev, regionIndex: 0, offset: 0, size: 4)) == .EIO)
    #expect(bench.errno(.vfioWrite(fd: dev, regionIndex: 0, offset: 0, size: 4)) == .EIO)
  }
}

/// Opening and binding the cdev.
@Suite struct BindTests {
  @Test func bindRules() throws {
    var bench = try Bench()
    #expect(bench.errno(.vfioOpen(device: "nope")) == .ENODEV)
    let dev = try bench.fd(.vfioOpen(device: "nic0"))
    #expect(bench.errno(.vfioRegionInfo(fd: dev, regionIndex: 0)) == .EINVAL)   // before bind
    #expect(bench.errno(.vfioMmap(fd: dev, regionIndex: 0)) == .EINVAL)
    #expect(bench.errno(.vfioReset(fd: dev)) == .EINVAL)
    #expect(bench.errno(.vfioBindIOMMUFD(fd: dev, private: true, vm: nil)) == .EINVAL)
    #expect(bench.errno(.vfioBindIOMMUFD(fd: dev, private: true, vm: FD(99))) == .EBADF)
    #expect(bench.errno(.vfioBindIOMMUFD(fd: dev, private: true, vm: dev)) == .EINVAL)
    try bench.ok(.vfioBindIOMMUFD(fd: dev, private: true, vm: bench.td))
    #expect(bench.errno(.vfioBindIOMMUFD(fd: dev, private: true, vm: bench.td)) == .EINVAL)  // bound twice
    let second = try bench.fd(.vfioOpen(device: "nic0"))
    #expect(bench.errno(.vfioBindIOMMUFD(fd: second, private: false, vm: nil)) == .EINVAL) // cdev is exclusive
    #expect(bench.errno(.vfioClose(fd: FD(99))) == .EBADF)
  }

  @Test func everyDeviceOpOnADeadFdIsEBADF() throws {
    var bench = try Bench()
    let dev = try bench.openDevice()
    try bench.ok(.vfioClose(fd: dev))
    let ops: [Operation] = [
      .vfioBindIOMMUFD(fd: dev, private: false, vm: nil), .vfioClose(fd: dev), .vfioRegionInfo(fd: dev, regionIndex: 0),
      .vfioRead(fd: dev, regionIndex: 0, offset: 0, size: 4), .vfioWrite(fd: dev, regionIndex: 0, offset: 0, size: 4),
      .vfioMmap(fd: dev, regionIndex: 0), .vfioSetMemoryDecode(fd: dev, enable: true), .vfioReset(fd: dev),
      .vfioFLR(fd: dev), .vfioHotReset(fd: dev), .vfioSetPower(fd: dev, state: .d0),
      .vfioDmaBuf(fd: dev, regionIndex: 0, ranges: [DmaRange(offset: 0, length: 0x1000)], openFlags: 0, flags: 0),
      .dmabufAttach(fd: dev, importer: "x", dynamic: true, peer2peer: true), .dmabufClose(fd: dev),
    ]
    for op in ops { #expect(bench.errno(op) == .EBADF, "\(op)") }
  }
}
