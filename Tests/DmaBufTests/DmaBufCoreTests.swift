import Testing
import KernelCore
@testable import DmaBuf

/// An exporter whose answers a test sets: revoked or not, p2p required or not, get_pfn or not,
/// a `.pin` op (refusing, as VFIO's) or none.
struct FakeExporter: DmaBufExporter {
  var revoked = false
  var requiresPeer2Peer = true
  var hasGetPfn = true
  var hasPin = false
  var base = PFN(0x4000000)
  var isDynamic: Bool { hasPin }

  func attach(buffer: DmaBufObject, peer2peer: Bool) throws(Errno) {
    if requiresPeer2Peer && !peer2peer { throw .EOPNOTSUPP }
    if revoked { throw .ENODEV }
  }
  func pin(buffer: DmaBufObject) throws(Errno) { if hasPin { throw .EOPNOTSUPP } }
  func getPfn(buffer: DmaBufObject, pgoff: PageIndex) -> Result<PFNLookup, Errno>? {
    guard hasGetPfn else { return nil }
    if revoked { return .failure(.ENODEV) }
    guard pgoff.rawValue < buffer.pageCount else { return .failure(.EINVAL) }
    return .success(PFNLookup(pfn: PFN(base.rawValue + pgoff.rawValue), order: 0))
  }
  func physRanges(buffer: DmaBufObject) throws(Errno) -> [PhysRange] {
    if revoked { throw .ENODEV }
    return [PhysRange(start: base.hpa, length: buffer.size)]
  }
  func exporterData(buffer: DmaBufObject) throws(Errno) -> ExporterData { ExporterData(isPrivate: false, vm: nil) }
}

let dynamicP2P = ImporterOps(dynamic: true, hasMoveNotify: true, allowPeer2Peer: true)
let ctx = ContextID.ioctl
let other = ContextID(rawValue: 7)

func makeCore(size: UInt64 = 0x4000) throws -> (DmaBufCore, DmaBufID) {
  var core = DmaBufCore()
  var trace = Trace()
  let id = try core.export(size: size, exporter: ExporterRef(name: "fake", key: 1), openFlags: 0, trace: &trace)
  return (core, id)
}

@Suite struct ExportTests {
  @Test(arguments: [UInt64(0), 0x1001, 0x800])
  func badSizeIsEINVAL(size: UInt64) {
    var core = DmaBufCore()
    var trace = Trace()
    #expect(throws: Errno.EINVAL) {
      try core.export(size: size, exporter: ExporterRef(name: "fake", key: 1), openFlags: 0, trace: &trace)
    }
    #expect(core == DmaBufCore())
  }

  @Test func exportHoldsOneReferenceAndReleasesOnLastPut() throws {
    var (core, id) = try makeCore()
    var trace = Trace()
    #expect(core.buffer(id)?.fileRefs == 1)
    try core.get(id)
    #expect(core.put(id, trace: &trace) == nil)
    #expect(core.put(id, trace: &trace)?.id == id)
    #expect(core.buffer(id) == nil)
    #expect(throws: Errno.EBADF) { try core.get(id) }
  }

  @Test func idsAreCanonical() throws {
    var (core, first) = try makeCore()
    var trace = Trace()
    _ = core.put(first, trace: &trace)
    let again = try core.export(size: 0x1000, exporter: ExporterRef(name: "fake", key: 1), openFlags: 0, trace: &trace)
    #expect(again == first)
  }
}

@Suite struct AttachTests {
  struct Case: CustomTestStringConvertible, Sendable {
    let label: String
    let ops: ImporterOps
    let exporter: FakeExporter
    let expected: Errno?
    var testDescription: String { label }
  }

  static let cases: [Case] = [
    Case(label: "dynamic p2p", ops: dynamicP2P, exporter: FakeExporter(), expected: nil),
    Case(label: "dynamic without move_notify", ops: ImporterOps(dynamic: true, hasMoveNotify: false, allowPeer2Peer: true),
         exporter: FakeExporter(), expected: .EINVAL),
    Case(label: "dynamic without p2p", ops: ImporterOps(dynamic: true, hasMoveNotify: true, allowPeer2Peer: false),
         exporter: FakeExporter(), expected: .EOPNOTSUPP),
    Case(label: "static importer cannot claim p2p", ops: ImporterOps(dynamic: false, hasMoveNotify: false, allowPeer2Peer: true),
         exporter: FakeExporter(), expected: .EOPNOTSUPP),
    Case(label: "revoked", ops: dynamicP2P, exporter: FakeExporter(revoked: true), expected: .ENODEV),
    Case(label: "exporter accepting static importers", ops: ImporterOps(dynamic: false, hasMoveNotify: false, allowPeer2Peer: false),
         exporter: FakeExporter(requiresPeer2Peer: false), expected: nil),
    // dma_buf_dynamic_attach(): a static importer of a dynamic exporter (one with .pin) is
    // pinned at attach, and the exporter's refusal fails the attach (the RFC's VFIO: EINVAL).
    Case(label: "static importer of a dynamic exporter is pinned at attach",
         ops: ImporterOps(dynamic: false, hasMoveNotify: false, allowPeer2Peer: false),
         exporter: FakeExporter(requiresPeer2Peer: false, hasPin: true), expected: .EOPNOTSUPP),
  ]

  @Test(arguments: cases)
  func attachRules(c: Case) throws {
    var (core, id) = try makeCore()
    let before = core
    var trace = Trace()
    if let expected = c.expected {
      #expect(throws: expected) { try core.attach(id, importer: "t", ops: c.ops, exporter: c.exporter, trace: &trace) }
      #expect(core == before)
    } else {
      let a = try core.attach(id, importer: "t", ops: c.ops, exporter: c.exporter, trace: &trace)
      #expect(core.buffer(id)?.attachments == [a])
      #expect(core.buffer(id)?.fileRefs == 2)
    }
  }

  @Test func attachToUnknownBufferIsEBADF() throws {
    var (core, _) = try makeCore()
    var trace = Trace()
    #expect(throws: Errno.EBADF) {
      try core.attach(DmaBufID(99), importer: "t", ops: dynamicP2P, exporter: FakeExporter(), trace: &trace)
    }
  }

  @Test func detachDropsTheImportersReference() throws {
    var (core, id) = try makeCore()
    var trace = Trace()
    let a = try core.attach(id, importer: "t", ops: dynamicP2P, exporter: FakeExporter(), trace: &trace)
    #expect(core.put(id, trace: &trace) == nil)          // the fd closes; the importer keeps it alive
    #expect(try core.detach(a, trace: &trace)?.id == id)   // last reference: released
    #expect(core.attachments.isEmpty && core.buffers.isEmpty)
    #expect(throws: Errno.EINVAL) { try core.detach(a, trace: &trace) }
  }

  /// `dma_buf_pin()`: `WARN_ON(!attach->importer_ops)` only warns; `if (dmabuf->ops->pin)`
  /// the exporter decides, and without the op the pin succeeds.
  @Test func theExporterDecidesAPin() throws {
    var (core, id) = try makeCore()
    var trace = Trace()
    let a = try core.attach(id, importer: "t", ops: dynamicP2P, exporter: FakeExporter(), trace: &trace)
    #expect(throws: Errno.EOPNOTSUPP) { try core.pin(a, exporter: FakeExporter(hasPin: true)) }
    #expect(core.attachment(a)?.pinned == false)
    try core.pin(a, exporter: FakeExporter())
    #expect(core.attachment(a)?.pinned == true)
    #expect(throws: Errno.EINVAL) { try core.pin(AttachmentID(42), exporter: FakeExporter()) }
  }
}

@Suite struct GetPfnTests {
  @Test func unlockedLookupAnswersThroughTheExporter() throws {
    var (core, id) = try makeCore()
    var trace = Trace()
    let a = try core.attach(id, importer: "t", ops: dynamicP2P, exporter: FakeExporter(), trace: &trace)
    #expect(try core.getPfnUnlocked(a, pgoff: PageIndex(3), exporter: FakeExporter())
            == PFNLookup(pfn: PFN(0x4000003), order: 0))
    #expect(throws: Errno.EINVAL) { try core.getPfnUnlocked(a, pgoff: PageIndex(4), exporter: FakeExporter()) }
    #expect(throws: Errno.ENODEV) {
      try core.getPfnUnlocked(a, pgoff: PageIndex(0), exporter: FakeExporter(revoked: true))
    }
    #expect(throws: Errno.EINVAL) {
      try core.getPfnUnlocked(a, pgoff: PageIndex(0), exporter: FakeExporter(hasGetPfn: false))
    }
    #expect(throws: Errno.EINVAL) { try core.getPfnUnlocked(AttachmentID(9), pgoff: PageIndex(0), exporter: FakeExporter()) }
  }

  @Test func anImporterWithoutMoveNotifyGetsNoPfn() throws {
    var (core, id) = try makeCore()
    var trace = Trace()
    let exporter = FakeExporter(requiresPeer2Peer: false)
    let a = try core.attach(id, importer: "static", ops: ImporterOps(dynamic: false, hasMoveNotify: false, allowPeer2Peer: false),
                            exporter: exporter, trace: &trace)
    #expect(throws: Errno.ENOENT) { try core.getPfnUnlocked(a, pgoff: PageIndex(0), exporter: exporter) }
  }

  @Test func lookupWaitsWhileAnotherContextHoldsResv() throws {
    var (core, id) = try makeCore()
    var trace = Trace()
    let a = try core.attach(id, importer: "t", ops: dynamicP2P, exporter: FakeExporter(), trace: &trace)
    #expect(core.resvWait(for: a, context: ctx) == nil)
    #expect(try core.lockResv(id, context: other))
    // The lookup takes resv around the exporter's callback: another holder makes it wait.
    #expect(core.resvWait(for: a, context: ctx) == .lock("dmabuf1->resv", heldBy: other))
    #expect(core.resvWait(for: a, context: other) == nil)
    try core.unlockResv(id, context: other)
    #expect(core.resvWait(for: a, context: ctx) == nil)
    #expect(try core.getPfnWithResv(a, pgoff: PageIndex(1), exporter: FakeExporter()).pfn == PFN(0x4000001))
  }
}

@Suite struct PhysRangeTests {
  @Test func physRangesNeedResvAndFollowRevoke() throws {
    var (core, id) = try makeCore()
    var trace = Trace()
    let a = try core.attach(id, importer: "iommufd", ops: dynamicP2P, exporter: FakeExporter(), trace: &trace)
    #expect(throws: Errno.EINVAL) { try core.physRanges(a, context: ctx, exporter: FakeExporter()) }
    #expect(try core.lockResv(id, context: ctx))
    #expect(try core.physRanges(a, context: ctx, exporter: FakeExporter()) == [PhysRange(start: PFN(0x4000000).hpa, length: 0x4000)])
    #expect(throws: Errno.ENODEV) { try core.physRanges(a, context: ctx, exporter: FakeExporter(revoked: true)) }
    #expect(throws: Errno.EINVAL) { try core.physRanges(AttachmentID(9), context: ctx, exporter: FakeExporter()) }
  }
}

@Suite struct MoveNotifyTests {
  @Test func requiresTheResvLock() throws {
    var (core, id) = try makeCore()
    var trace = Trace()
    #expect(throws: LockViolation.self) { try core.moveNotify(id, context: ctx, trace: &trace) }
  }

  @Test func reachesEveryDynamicAttachmentInOrder() throws {
    var (core, id) = try makeCore()
    var trace = Trace()
    let exporter = FakeExporter(requiresPeer2Peer: false)
    let a = try core.attach(id, importer: "a", ops: dynamicP2P, exporter: exporter, trace: &trace)
    _ = try core.attach(id, importer: "static", ops: ImporterOps(dynamic: false, hasMoveNotify: false, allowPeer2Peer: false),
                        exporter: exporter, trace: &trace)
    let c = try core.attach(id, importer: "c", ops: dynamicP2P, exporter: exporter, trace: &trace)
    #expect(try core.lockResv(id, context: ctx))
    let notified = try core.moveNotify(id, context: ctx, trace: &trace)
    #expect(notified.map(\.id) == [a, c])
    #expect(core.attachment(a)?.moveNotifications == 1)
    try core.unlockResv(id, context: ctx)
  }
}

@Suite struct RefcountTests {
  @Test func balanceIsCheckedAgainstHolders() throws {
    var (core, id) = try makeCore()
    var trace = Trace()
    _ = try core.attach(id, importer: "a", ops: dynamicP2P, exporter: FakeExporter(), trace: &trace)
    #expect(core.refcountViolations(fdRefs: { _ in 1 }, extraRefs: { _ in 0 }).isEmpty)
    #expect(core.refcountViolations(fdRefs: { _ in 0 }, extraRefs: { _ in 0 }).count == 1)
  }
}
