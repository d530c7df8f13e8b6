import DmaBuf
import KernelCore
import Platform
import Testing

@testable import HostKVM

/// The model's `dma_buf_get_pfn_unlocked()` for `pgoff`, performed on a copy of the exporter's
/// machine (so the exporter's own model is not touched).
private func modelGetPfn(_ exporter: ModelBARExporter, _ pgoff: UInt64) -> OpResult {
  var machine = exporter.machine
  return machine.perform(.dmabufGetPfn(attachment: exporter.attachmentID, pgoff: PageIndex(pgoff)))
}

@Suite("ModelBARExporter")
struct ModelBARExporterTests {
  static let variants: [Variant] = [.rfcV1, .reviewed]

  @Test("init runs open, bind, export of the whole BAR and a dynamic p2p attach on the model", arguments: variants)
  func initSequence(variant: Variant) throws {
    let e = try ModelBARExporter(size: 0x4000, variant: variant)
    let m = e.machine
    #expect(e.size == 0x4000)
    #expect(m.variant == variant)
    guard case .vfioDevice = try m.files.lookup(e.deviceFD) else { Issue.record("not a VFIO fd"); return }
    guard case .dmaBuf(let id) = try m.files.lookup(e.dmaBufFD) else { Issue.record("not a dma-buf fd"); return }
    #expect(id == e.dmaBufID)
    let priv = try #require(m.vfio.dmaBuf(id))
    #expect(priv.size == 0x4000)
    #expect(priv.regionIndex == 0)
    #expect(!priv.revoked)
    #expect(!priv.isPrivate)
    let attachment = try #require(m.dmabufCore.attachment(e.attachmentID))
    #expect(attachment.importer == "hostkvm")
    #expect(attachment.ops.dynamic)
    #expect(attachment.peer2peer)
    #expect(attachment.moveNotifications == 0)
    // The only BAR sits at the start of the model's MMIO window.
    #expect(e.basePFN == Machine.mmioWindowBase.pfn)
    #expect(!e.isRevoked)
  }

  @Test("a size the model cannot configure is EINVAL", arguments: [UInt64(0), 0x800, 0x3000])
  func badSize(size: UInt64) {
    #expect(throws: HostFailure.errno(.EINVAL)) { try ModelBARExporter(size: size) }
  }

  @Test("lookup answers the model's get_pfn, less the PFN of BAR offset 0, page for page", arguments: variants)
  func samePFNSequence(variant: Variant) throws {
    let e = try ModelBARExporter(size: 0x1_0000, variant: variant)
    var seen: [PFN] = []
    for page in 0..<UInt64(16) {
      guard case .success(.pfn(let modelPFN, _)) = modelGetPfn(e, page) else {
        Issue.record("model get_pfn failed for page \(page)")
        return
      }
      let expected = PFN(modelPFN.rawValue - e.basePFN.rawValue)
      #expect(e.lookup(pageIndex: PageIndex(page)) == .success(expected))
      seen.append(expected)
    }
    #expect(seen == (0..<16).map { PFN($0) })
  }

  @Test("at or past the end: EINVAL, exactly as the model's get_pfn", arguments: variants, [UInt64(16), 17, .max])
  func pastTheEnd(variant: Variant, page: UInt64) throws {
    let e = try ModelBARExporter(size: 0x1_0000, variant: variant)
    #expect(modelGetPfn(e, page) == .failure(.errno(.EINVAL)))
    #expect(e.lookup(pageIndex: PageIndex(page)) == .failure(.errno(.EINVAL)))
  }

  @Test("revoke: the model says revoked, every lookup ENODEV, move_notify runs once per importer", arguments: variants)
  func revoke(variant: Variant) throws {
    let e = try ModelBARExporter(size: 0x4000, variant: variant)
    let calls = Counter()
    e.attach { calls.bump() }
    e.attach { calls.bump() }
    try e.revoke()
    #expect(calls.value == 2)
    #expect(e.moveNotifications == 1)
    #expect(e.isRevoked)
    #expect(e.machine.vfio.dmaBuf(e.dmaBufID)?.revoked == true)
    for page in 0..<UInt64(4) {
      // ENODEV comes from the model's own get_pfn: the exporter keeps no flag of its own.
      #expect(modelGetPfn(e, page) == .failure(.errno(.ENODEV)))
      #expect(e.lookup(pageIndex: PageIndex(page)) == .failure(.errno(.ENODEV)))
    }
  }

  @Test("a second revoke delivers no move_notify, so no importer is called again", arguments: variants)
  func revokeTwice(variant: Variant) throws {
    let e = try ModelBARExporter(size: 0x4000, variant: variant)
    let calls = Counter()
    e.attach { calls.bump() }
    try e.revoke()
    try e.revoke()
    #expect(calls.value == 1)
    #expect(e.moveNotifications == 1)
    #expect(e.lookup(pageIndex: PageIndex(0)) == .failure(.errno(.ENODEV)))
  }

  @Test("move_notify runs while the exporter's lock is held: a lookup from it would have to wait")
  func notifyUnderLock() throws {
    let e = try ModelBARExporter(size: 0x4000)
    let held = Counter()
    e.attach { [e] in
      // Mutex is not recursive: a try-lock from the notifier fails exactly when revoke holds it.
      if e.state.withLockIfAvailable({ _ in true }) == nil { held.bump() }
    }
    try e.revoke()
    #expect(held.value == 1)
  }

  @Test("why decode off and not an FLR: in reviewed an FLR leaves the buffer usable, in rfc-v1 revoked",
        arguments: [(Variant.reviewed, false), (.rfcV1, true)])
  func flrIsNotARevokeInReviewed(variant: Variant, revokedAfterFLR: Bool) throws {
    let e = try ModelBARExporter(size: 0x4000, variant: variant)
    var m = e.machine
    #expect(m.perform(.vfioFLR(fd: e.deviceFD)) == .success(.none))
    #expect(m.vfio.dmaBuf(e.dmaBufID)?.revoked == revokedAfterFLR)
  }
}
