import Testing
import KernelCore
import PCI
import DmaBuf
@testable import VFIO

/// Counts the function state changes VFIO relays.
struct RecordingSink: FunctionStateSink {
  var changes = 0
  mutating func functionChanged(_ device: VFIODeviceID, _ function: PCIFunction, trace: inout Trace) { changes += 1 }
}

struct Rig {
  var driver: VFIOPCIDriver
  var core = DmaBufCore()
  var trace = Trace()
  let device: VFIODeviceID
  let file: VFIOFileID
  static let base = HPA(0x40_0000_0000)

  init(_ variant: Variant, private isPrivate: Bool = false) throws {
    driver = VFIOPCIDriver(variant: variant)
    let function = try PCIFunction(name: "nic0", bars: [BAR(index: 0, size: 0x40_0000, base: Self.base)], tdisp: true)
    device = driver.registerDevice(function)
    var trace = Trace()
    file = try driver.openCdev(device, trace: &trace)
    try driver.bindIOMMUFD(file, flags: isPrivate ? .private(variant) : [], vm: isPrivate ? VMID(1) : nil, trace: &trace)
  }

  mutating func export(_ ranges: [(UInt64, UInt64)]) throws -> DmaBufID {
    try driver.exportDmaBuf(file, request: VFIODeviceFeatureDmaBuf(
      regionIndex: 0, openFlags: 0, flags: 0,
      ranges: ranges.map { VFIODmaRange(regionIndex: 0, offset: $0.0, length: $0.1) }), dmabufCore: &core, trace: &trace)
  }

  /// Steps a revoke/restore path alone to its end, as the platform would with test importers
  /// only (each returns from `move_notify` at once). - Returns: every `move_notify`, in order.
  @discardableResult
  mutating func run(_ start: DmaBufMovePath) throws -> [(AttachmentID, Bool)] {
    var path = start
    var sink = RecordingSink()
    var calls: [(AttachmentID, Bool)] = []
    while true {
      switch try path.step(&driver, dmabufCore: &core, sink: &sink, trace: &trace) {
      case .ran: continue
      case .finished: return calls
      case .blocked(let wait):
        Issue.record("a path stepped alone waits for \(wait)")
        return calls
      case .notify(let attachment, let revoked, _):
        var next: DmaBufAttachment? = attachment
        while let told = next {
          calls.append((told.id, revoked))
          next = try path.importerReturned(dmabufCore: &core)
        }
      }
    }
  }

  mutating func attach(_ buffer: DmaBufID) throws -> AttachmentID {
    try core.attach(buffer, importer: "t", ops: ImporterOps(dynamic: true, hasMoveNotify: true, allowPeer2Peer: true),
                    exporter: driver, trace: &trace)
  }
}

@Suite struct ExporterTests {
  struct Lookup: CustomTestStringConvertible, Sendable {
    let variant: Variant
    let pgoff: UInt64
    let pfnOffset: UInt64
    let order: UInt8
    var testDescription: String { "\(variant) pgoff \(pgoff)" }
  }

  /// A buffer of two ranges: BAR pages 0x200..0x400 (2 MiB aligned, 512 pages) then BAR pages
  /// 0x3..0x5 (two pages, misaligned).
  @Test(arguments: [
    Lookup(variant: .reviewed, pgoff: 0, pfnOffset: 0x200, order: 9),
    Lookup(variant: .reviewed, pgoff: 511, pfnOffset: 0x3FF, order: 9),
    Lookup(variant: .reviewed, pgoff: 512, pfnOffset: 0x3, order: 0),
    Lookup(variant: .reviewed, pgoff: 513, pfnOffset: 0x4, order: 0),
    Lookup(variant: .rfcV1, pgoff: 0, pfnOffset: 0x200, order: 0),
    Lookup(variant: .rfcV1, pgoff: 513, pfnOffset: 0x4, order: 0),
  ])
  func getPfnWalksTheRanges(c: Lookup) throws {
    var rig = try Rig(c.variant)
    let buffer = try rig.export([(0x20_0000, 0x20_0000), (0x3000, 0x2000)])
    let object = try #require(rig.core.buffer(buffer))
    let answer = rig.driver.getPfn(buffer: object, pgoff: PageIndex(c.pgoff))
    #expect(answer == .success(PFNLookup(pfn: PFN(Rig.base.pfn.rawValue + c.pfnOffset), order: c.order)))
    #expect(rig.driver.getPfn(buffer: object, pgoff: PageIndex(514)) == .failure(.EINVAL))
    #expect(try rig.driver.physRanges(buffer: object)
            == [PhysRange(start: Rig.base.advanced(by: 0x20_0000), length: 0x20_0000),
                PhysRange(start: Rig.base.advanced(by: 0x3000), length: 0x2000)])
  }

  @Test(arguments: [true, false])
  func exporterDataIsPatch9s(isPrivate: Bool) throws {
    var rig = try Rig(.rfcV1, private: isPrivate)
    let buffer = try rig.export([(0, 0)])
    let object = try #require(rig.core.buffer(buffer))
    #expect(try rig.driver.exporterData(buffer: object) == ExporterData(isPrivate: isPrivate, vm: isPrivate ? VMID(1) : nil))
    #expect(object.size == 0x40_0000)
  }

  @Test func revokedBufferRefusesEverything() throws {
    var rig = try Rig(.reviewed)
    let buffer = try rig.export([(0, 0x1000)])
    try rig.run(rig.driver.setMemoryDecode(rig.file, enable: false, context: .ioctl))
    let object = try #require(rig.core.buffer(buffer))
    #expect(rig.driver.getPfn(buffer: object, pgoff: PageIndex(0)) == .failure(.ENODEV))
    #expect(throws: Errno.ENODEV) { try rig.driver.physRanges(buffer: object) }
    #expect(throws: Errno.ENODEV) { try rig.driver.attach(buffer: object, peer2peer: true) }
    #expect(throws: Errno.EOPNOTSUPP) { try rig.driver.pin(buffer: object) }
  }
}

@Suite struct MoveNotifyOrderTests {
  @Test func eachBufferFlipsOnceAndImportersHearOfIt() throws {
    var rig = try Rig(.reviewed)
    let first = try rig.export([(0, 0x1000)]), second = try rig.export([(0x1000, 0x1000)])
    let a = try rig.attach(first), b = try rig.attach(second)
    var calls = try rig.run(rig.driver.setPowerState(rig.file, state: .d3hot, context: .ioctl))
    calls += try rig.run(rig.driver.setPowerState(rig.file, state: .d3hot, context: .ioctl))
    calls += try rig.run(rig.driver.setPowerState(rig.file, state: .d0, context: .ioctl))
    #expect(calls.map(\.0) == [a, b, a, b])
    #expect(calls.map(\.1) == [true, true, false, false])
    // Every lock taken was dropped again.
    #expect(rig.driver.device(rig.device)?.memoryLock.isLocked == false)
    #expect(rig.core.buffer(first)?.resv.isLocked == false)
  }

  @Test func aHeldMemoryLockMakesTheTriggerWait() throws {
    var rig = try Rig(.reviewed)
    let holder = ContextID(rawValue: 5)
    #expect(try rig.driver.devices[rig.device]!.memoryLock.tryLockRead(holder))
    var sink = RecordingSink()
    let before = rig.driver
    var path = try rig.driver.reset(rig.file, kind: .ioctl, context: .ioctl)
    let started = path
    guard case .blocked(let wait) = try path.step(&rig.driver, dmabufCore: &rig.core, sink: &sink, trace: &rig.trace) else {
      Issue.record("the reset did not wait for memory_lock"); return
    }
    #expect(wait == .lock("vdev1->memory_lock", write: true, heldBy: holder))
    #expect(rig.driver == before && path == started && sink.changes == 0)
    try rig.driver.devices[rig.device]!.memoryLock.unlock(holder)
    try rig.run(path)
    #expect(rig.driver.device(rig.device)?.memoryLock.isLocked == false)
  }
}

/// `vfio_pci_core_feature_dma_buf()` per variant: two violations at once, the earlier check
/// answers, with its function. Sources: 6.19 `drivers/vfio/pci/vfio_pci_dmabuf.c`; RFC patch 4
/// `check_dma_ranges()`.
@Suite struct ExportCheckOrderTests {
  struct Case: CustomTestStringConvertible, Sendable {
    let name: String
    let variant: Variant
    let regionIndex: UInt32
    let flags: UInt32
    let ranges: [VFIODmaRange]
    let errno: Errno
    let reason: String
    var testDescription: String { "\(name) [\(variant)]" }
  }

  static let cases: [Case] = [
    Case(name: "flags before the region index", variant: .reviewed, regionIndex: 9, flags: 1,
         ranges: [VFIODmaRange(regionIndex: 9, offset: 0, length: 0x1000)], errno: .EINVAL, reason: "vfio_pci_core_feature_dma_buf: flags 0x1 are not 0"),
    Case(name: "region index before the ranges", variant: .reviewed, regionIndex: 6, flags: 0,
         ranges: [VFIODmaRange(regionIndex: 6, offset: 0x10, length: 0)], errno: .ENODEV, reason: "vfio_pci_core_feature_dma_buf: region_index 6 >= VFIO_PCI_ROM_REGION_INDEX"),
    Case(name: "range shape before the BAR", variant: .reviewed, regionIndex: 1, flags: 0,
         ranges: [VFIODmaRange(regionIndex: 1, offset: 0x10, length: 0x1000)], errno: .EINVAL, reason: "validate_dmabuf_input: range 0: length 0 or offset/length not page aligned"),
    Case(name: "no provider for a missing BAR", variant: .reviewed, regionIndex: 1, flags: 0,
         ranges: [VFIODmaRange(regionIndex: 1, offset: 0, length: 0x1000)], errno: .EINVAL, reason: "vfio_pci_core_get_dmabuf_phys: no p2pdma provider for BAR 1"),
    Case(name: "overflow", variant: .reviewed, regionIndex: 0, flags: 0,
         ranges: [VFIODmaRange(regionIndex: 0, offset: ~UInt64(0xfff), length: 0x1000)], errno: .EOVERFLOW, reason: "vfio_pci_core_fill_phys_vec: range 0: check_add_overflow"),
    Case(name: "past the BAR", variant: .reviewed, regionIndex: 0, flags: 0,
         ranges: [VFIODmaRange(regionIndex: 0, offset: 0x40_0000, length: 0x1000)], errno: .EINVAL, reason: "vfio_pci_core_fill_phys_vec: range 0 ends past BAR 0"),
    Case(name: "rfc: region index past BAR 5", variant: .rfcV1, regionIndex: 6, flags: 0,
         ranges: [VFIODmaRange(regionIndex: 6, offset: 0, length: 0x1000)], errno: .EINVAL,
         reason: "check_dma_ranges: range 0: region_index 6 >= VFIO_PCI_ROM_REGION_INDEX"),
    Case(name: "rfc: zero-size BAR before the range shape", variant: .rfcV1, regionIndex: 1, flags: 0,
         ranges: [VFIODmaRange(regionIndex: 1, offset: 0x10, length: 0x10)], errno: .EINVAL,
         reason: "check_dma_ranges: range 0: BAR 1 has size 0"),
    Case(name: "rfc: offset at the BAR's end", variant: .rfcV1, regionIndex: 0, flags: 0,
         ranges: [VFIODmaRange(regionIndex: 0, offset: 0x40_0000, length: 0x1000)], errno: .EINVAL,
         reason: "check_dma_ranges: range 0: [0x400000, +0x1000) unaligned or past the BAR"),
  ]

  @Test(arguments: cases)
  func theEarlierCheckAnswers(_ c: Case) throws {
    var rig = try Rig(c.variant)
    let before = rig.driver
    do {
      _ = try rig.driver.exportDmaBuf(rig.file, request: VFIODeviceFeatureDmaBuf(regionIndex: c.regionIndex, openFlags: 0,
                                                                                flags: c.flags, ranges: c.ranges),
                                      dmabufCore: &rig.core, trace: &rig.trace)
      Issue.record("exported")
    } catch {
      #expect(error == c.errno)
      #expect(error.reason?.description == c.reason)
    }
    #expect(rig.driver == before)
  }

  /// Patch 4 has no `.attach`: a dynamic importer attaches without peer2peer and to a revoked
  /// buffer; a static importer is pinned at attach and `vfio_pci_dma_buf_pin` says `EINVAL`.
  /// 6.19's `.attach` refuses both, and its `.pin` says `EOPNOTSUPP`.
  @Test(arguments: Variant.allCases)
  func attachAndPinPerVariant(_ variant: Variant) throws {
    var rig = try Rig(variant)
    let buffer = try rig.export([(0, 0x1000)])
    let noP2P = ImporterOps(dynamic: true, hasMoveNotify: true, allowPeer2Peer: false)
    let staticOps = ImporterOps(dynamic: false, hasMoveNotify: false, allowPeer2Peer: false)
    var core = rig.core, trace = Trace()
    func attach(_ ops: ImporterOps, _ exporter: VFIOPCIDriver) -> Errno? {
      do { _ = try core.attach(buffer, importer: "t", ops: ops, exporter: exporter, trace: &trace); return nil }
      catch { return error }
    }
    #expect(attach(noP2P, rig.driver) == (variant == .reviewed ? .EOPNOTSUPP : nil))
    #expect(attach(staticOps, rig.driver) == (variant == .reviewed ? .EOPNOTSUPP : .EINVAL))
    rig.driver.dmabufs[buffer]?.revoked = true
    #expect(attach(ImporterOps(dynamic: true, hasMoveNotify: true, allowPeer2Peer: true), rig.driver) == (variant == .reviewed ? .ENODEV : nil))
  }

  /// Patch 8: a private mmap-capable BAR reports PRIVATE alone; read/write `EINVAL`
  /// (`vfio_pci_bar_rw`), mmap `EINVAL` (`vfio_pci_core_mmap`, `is_private` first).
  @Test(arguments: Variant.allCases)
  func privateBarIsHostUnaccessible(_ variant: Variant) throws {
    var rig = try Rig(variant, private: true)
    #expect(try rig.driver.regionInfo(rig.file, index: 0).flags == [.private])
    do { _ = try rig.driver.regionAccess(rig.file, index: 0, offset: 0, size: 4, isWrite: false, trace: &rig.trace); Issue.record("read") }
    catch { #expect(error == .EINVAL && error.reason?.function == "vfio_pci_bar_rw") }
    do { try rig.driver.mmap(rig.file, index: 7, trace: &rig.trace); Issue.record("mmap") }
    catch { #expect(error == .EINVAL && error.reason?.check == "vdev->vdev.is_private") }
  }
}
