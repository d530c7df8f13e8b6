import Testing
import KernelCore
import DmaBuf
import VFIO
@testable import Platform

/// `VFIO_DEVICE_FEATURE_DMA_BUF`: every malformed request and its errno, in both uAPI layouts.
@Suite struct DmaBufExportTests {
  struct Case: CustomTestStringConvertible, Sendable {
    let label: String
    let variant: Variant
    let region: UInt32
    let ranges: [(UInt64, UInt64)]
    var flags: UInt32 = 0
    let expected: Errno?
    var testDescription: String { "\(variant) \(label)" }
  }

  static let page: UInt64 = 0x1000
  static let cases: [Case] = [
    // 6.19 (`reviewed`), in the kernel's order of checks.
    Case(label: "no ranges", variant: .reviewed, region: 0, ranges: [], expected: .EINVAL),
    Case(label: "flags set", variant: .reviewed, region: 0, ranges: [(0, page)], flags: 1, expected: .EINVAL),
    Case(label: "ROM region", variant: .reviewed, region: 6, ranges: [(0, page)], expected: .ENODEV),
    Case(label: "region past the last", variant: .reviewed, region: 9, ranges: [(0, page)], expected: .ENODEV),
    Case(label: "empty range", variant: .reviewed, region: 0, ranges: [(0, 0)], expected: .EINVAL),
    Case(label: "unaligned offset", variant: .reviewed, region: 0, ranges: [(0x800, page)], expected: .EINVAL),
    Case(label: "unaligned length", variant: .reviewed, region: 0, ranges: [(0, 0x1800)], expected: .EINVAL),
    Case(label: "total length overflows", variant: .reviewed, region: 0,
         ranges: [(0, 1 << 63), (0, 1 << 63)], expected: .EINVAL),
    Case(label: "total length has bit 63 (DMA_IOVA_USE_SWIOTLB)", variant: .reviewed, region: 0,
         ranges: [(0x1000, 0xFFFF_FFFF_FFFF_F000)], expected: .EINVAL),
    Case(label: "no such BAR", variant: .reviewed, region: 1, ranges: [(0, page)], expected: .EINVAL),
    Case(label: "physical address overflows", variant: .reviewed, region: 0,
         ranges: [(0xFFFF_FFFF_FFFF_0000, page)], expected: .EOVERFLOW),
    Case(label: "range past the BAR", variant: .reviewed, region: 0, ranges: [(0x1F_F000, 2 * page)], expected: .EINVAL),
    Case(label: "(0, 0) is not the whole BAR", variant: .reviewed, region: 0, ranges: [(0, 0)], expected: .EINVAL),
    Case(label: "two ranges", variant: .reviewed, region: 0, ranges: [(0, page), (0x10_0000, page)], expected: nil),
    Case(label: "slice at the end", variant: .reviewed, region: 0, ranges: [(0x1F_F000, page)], expected: nil),
    // The RFC: every malformed request is EINVAL; (0, 0) means the whole BAR; no flags field.
    Case(label: "no ranges", variant: .rfcV1, region: 0, ranges: [], expected: .EINVAL),
    Case(label: "ROM region", variant: .rfcV1, region: 6, ranges: [(0, page)], expected: .EINVAL),
    Case(label: "no such BAR", variant: .rfcV1, region: 1, ranges: [(0, page)], expected: .EINVAL),
    Case(label: "unaligned offset", variant: .rfcV1, region: 0, ranges: [(0x800, page)], expected: .EINVAL),
    Case(label: "range past the BAR", variant: .rfcV1, region: 0, ranges: [(0x1F_F000, 2 * page)], expected: .EINVAL),
    Case(label: "overflow", variant: .rfcV1, region: 0, ranges: [(0xFFFF_FFFF_FFFF_0000, 0x10_0000)], expected: .EINVAL),
    Case(label: "(0, 0) is the whole BAR", variant: .rfcV1, region: 0, ranges: [(0, 0)], expected: nil),
    Case(label: "flags do not exist", variant: .rfcV1, region: 0, ranges: [(0, page)], flags: 1, expected: nil),
  ]

  @Test(arguments: cases)
  func export(c: Case) throws {
    var bench = try Bench(c.variant)
    let dev = try bench.openDevice()
    let before = bench.machine
    let op = Operation.vfioDmaBuf(fd: dev, regionIndex: c.region,
                                  ranges: c.ranges.map { DmaRange(offset: $0.0, length: $0.1) }, openFlags: 0, flags: c.flags)
    let result = bench.machine.perform(op)
    if let expected = c.expected {
      #expect(result == .failure(.errno(expected)))
      #expect(bench.machine == before)
    } else {
      guard case .success(.fd(let buf)) = result else { Issue.record("expected an fd, got \(result)"); return }
      let wholeBAR = c.ranges.count == 1 && c.ranges[0] == (0, 0)
      #expect(bench.priv(buf)?.size == (wholeBAR ? Bench.bar0 : c.ranges.reduce(0) { $0 + $1.1 }))
      #expect(bench.violated().isEmpty)
    }
  }

  @Test(arguments: Variant.allCases)
  func fdChecks(variant: Variant) throws {
    var bench = try Bench(variant)
    let one = [DmaRange(offset: 0, length: 0x1000)]
    #expect(bench.errno(.vfioDmaBuf(fd: FD(99), regionIndex: 0, ranges: one, openFlags: 0, flags: 0)) == .EBADF)
    let unbound = try bench.fd(.vfioOpen(device: "nic0"))
    #expect(bench.errno(.vfioDmaBuf(fd: unbound, regionIndex: 0, ranges: one, openFlags: 0, flags: 0)) == .EINVAL)
    // VFIO_DEVICE_FEATURE on a VM fd: kvm_vm_ioctl() has no such command (its default case).
    #expect(bench.errno(.vfioDmaBuf(fd: bench.td, regionIndex: 0, ranges: one, openFlags: 0, flags: 0)) == .ENOTTY)
  }

  @Test(arguments: Variant.allCases)
  func exportTakesARegistrationAndStartsRevokedWhenDecodeIsOff(variant: Variant) throws {
    var bench = try Bench(variant)
    let dev = try bench.openDevice()
    try bench.ok(.vfioSetMemoryDecode(fd: dev, enable: false))
    let buf = try bench.exportBAR0(dev)
    #expect(bench.priv(buf)?.revoked == true)
    #expect(bench.machine.vfio.device(VFIODeviceID(1))?.registrations == 2)
    #expect(bench.priv(buf)?.isPrivate == true)
    #expect(bench.priv(buf)?.ranges == [PhysRange(start: bench.bar0Base, length: Bench.bar0)])
    #expect(bench.violated().isEmpty)
  }
}

/// The importer side: attach, pin, get_pfn, detach, close.
@Suite struct ImporterTests {
  @Test(arguments: Variant.allCases)
  func attachRules(variant: Variant) throws {
    var bench = try Bench(variant)
    let dev = try bench.openDevice()
    let buf = try bench.exportBAR0(dev)
    // 6.19's vfio_pci_dma_buf_attach refuses importers without peer2peer; the RFC (patch 4) has
    // no .attach, and its .pin refuses the static importer at attach with EINVAL.
    #expect(bench.errno(.dmabufAttach(fd: buf, importer: "dma", dynamic: true, peer2peer: false)) == (variant == .reviewed ? .EOPNOTSUPP : nil))
    #expect(bench.errno(.dmabufAttach(fd: buf, importer: "static", dynamic: false, peer2peer: true)) == (variant == .reviewed ? .EOPNOTSUPP : .EINVAL))
    #expect(bench.errno(.dmabufAttach(fd: dev, importer: "x", dynamic: true, peer2peer: true)) == .EINVAL)
    #expect(bench.errno(.dmabufAttach(fd: FD(77), importer: "x", dynamic: true, peer2peer: true)) == .EBADF)
    let a = try bench.attach(buf)
    #expect(bench.errno(.dmabufPin(attachment: a)) == (variant == .reviewed ? .EOPNOTSUPP : .EINVAL))
    try bench.ok(.vfioSetMemoryDecode(fd: dev, enable: false))
    #expect(bench.errno(.dmabufAttach(fd: buf, importer: "late", dynamic: true, peer2peer: true)) == (variant == .reviewed ? .ENODEV : nil))
    #expect(bench.errno(.dmabufDetach(attachment: AttachmentID(50))) == .EINVAL)
  }

  struct PfnCase: CustomTestStringConvertible, Sendable {
    let variant: Variant
    let pgoff: UInt64
    let expectedOrder: UInt8
    var testDescription: String { "\(variant) pgoff \(pgoff) -> order \(expectedOrder)" }
  }

  @Test(arguments: [
    PfnCase(variant: .rfcV1, pgoff: 0, expectedOrder: 0),
    PfnCase(variant: .rfcV1, pgoff: 511, expectedOrder: 0),
    PfnCase(variant: .reviewed, pgoff: 0, expectedOrder: 9),    // a whole 2 MiB BAR, 2 MiB aligned
    PfnCase(variant: .reviewed, pgoff: 300, expectedOrder: 9),
  ])
  func getPfnTranslatesThroughTheBAR(c: PfnCase) throws {
    var bench = try Bench(c.variant)
    let dev = try bench.openDevice()
    let a = try bench.attach(try bench.exportBAR0(dev))
    let value = try bench.ok(.dmabufGetPfn(attachment: a, pgoff: PageIndex(c.pgoff)))
    #expect(value == .pfn(PFN(bench.bar0Base.pfn.rawValue + c.pgoff), order: c.expectedOrder))
    #expect(bench.errno(.dmabufGetPfn(attachment: a, pgoff: PageIndex(512))) == .EINVAL)
  }

  @Test func orderFollowsASliceAlignment() throws {
    var bench = try Bench(.reviewed)
    let dev = try bench.openDevice()
    // Pages 1..<3 of the BAR: page 1 is alone in its 2-page block; pages 2-3 form an order-1 block.
    let buf = try bench.fd(.vfioDmaBuf(fd: dev, regionIndex: 0, ranges: [DmaRange(offset: 0x1000, length: 0x3000)],
                                       openFlags: 0, flags: 0))
    let a = try bench.attach(buf)
    #expect(try bench.ok(.dmabufGetPfn(attachment: a, pgoff: PageIndex(0))) == .pfn(PFN(bench.bar0Base.pfn.rawValue + 1), order: 0))
    // pgoff 1 is BAR page 2: buffer offset and PFN are both misaligned by one page for order 1.
    #expect(try bench.ok(.dmabufGetPfn(attachment: a, pgoff: PageIndex(1))) == .pfn(PFN(bench.bar0Base.pfn.rawValue + 2), order: 0))
  }

  @Test(arguments: Variant.allCases)
  func closeAndDetachReleaseOnTheLastReference(variant: Variant) throws {
    var bench = try Bench(variant)
    let dev = try bench.openDevice()
    let buf = try bench.exportBAR0(dev)
    let a = try bench.attach(buf)
    try bench.ok(.dmabufClose(fd: buf))
    #expect(bench.machine.dmabufCore.buffers.count == 1)   // the importer still holds it
    #expect(bench.machine.vfio.device(VFIODeviceID(1))?.registrations == 2)
    #expect(bench.violated().isEmpty)
    try bench.ok(.dmabufDetach(attachment: a))
    #expect(bench.machine.dmabufCore.buffers.isEmpty)
    #expect(bench.machine.vfio.dmabufs.isEmpty)
    #expect(bench.machine.vfio.device(VFIODeviceID(1))?.registrations == 1)
    #expect(bench.errno(.dmabufClose(fd: buf)) == .EBADF)
    #expect(bench.violated().isEmpty)
  }
}
