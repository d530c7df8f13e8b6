import KernelCore
import HashTreeCollections

/// The dma-buf core (`drivers/dma-buf/dma-buf.c`): every buffer and attachment in the system.
///
/// Buffers are created by an exporter through ``export(size:exporter:openFlags:)``, referenced
/// by fds and importers, and released on their last put. Calls that reach the exporter take it
/// as a parameter; calls that must notify importers return whom to notify, and the platform
/// delivers `move_notify` while the buffer's resv lock is held.
public struct DmaBufCore: Hashable, Sendable {
  public private(set) var buffers: TreeDictionary<DmaBufID, DmaBufObject> = [:]
  public private(set) var attachments: TreeDictionary<AttachmentID, DmaBufAttachment> = [:]

  public init() {}

  public func buffer(_ id: DmaBufID) -> DmaBufObject? { buffers[id] }
  public func attachment(_ id: AttachmentID) -> DmaBufAttachment? { attachments[id] }

  /// `dma_buf_export()`: a new buffer holding one file reference (the one `dma_buf_fd()` hands
  /// to the new fd). - Throws: `EINVAL` for a size that is zero or not page aligned (the
  /// kernel checks only `!exp_info->size`; page alignment is the model's, every exporter here
  /// exports whole pages).
  public mutating func export(size: UInt64, exporter: ExporterRef, openFlags: UInt32,
                              trace: inout Trace) throws(Errno) -> DmaBufID {
    guard size > 0, size.isPageAligned else {
      throw Errno.EINVAL.because("dma_buf_export", "size 0x\(String(size, radix: 16)) is 0 or not page aligned")
    }
    // Ids are the lowest unused number above every live one, so the state holds no counter
    // and a failed operation cannot leave one advanced.
    let id = buffers.keys.max()?.next ?? DmaBufID(1)
    buffers[id] = DmaBufObject(id: id, size: size, exporter: exporter, openFlags: openFlags,
                               fileRefs: 1, attachments: [], resv: KernelMutex("dmabuf\(id.rawValue)->resv"))
    trace.emit(.dmabufExport, "export dmabuf\(id.rawValue) size 0x\(String(size, radix: 16)) by \(exporter.name)",
               [.id("buffer", id), .hex("size", size), .text("exporter", exporter.name)])
    return id
  }

  /// `get_file(dmabuf->file)` / `dma_buf_get()`: one more reference.
  /// - Throws: `EBADF` for a buffer that no longer exists.
  public mutating func get(_ id: DmaBufID) throws(Errno) {
    guard buffers[id] != nil else { throw Errno.EBADF.because("dma_buf_get", "dmabuf\(id.rawValue) is not a dma-buf") }
    buffers[id]!.fileRefs += 1
  }

  /// `dma_buf_put()`: drops a reference. When it was the last, the buffer is gone and is
  /// returned so the caller runs the exporter's `release`. A buffer with attachments left
  /// cannot lose its last reference (each importer holds one), so none are dropped here.
  public mutating func put(_ id: DmaBufID, trace: inout Trace) -> DmaBufObject? {
    guard var buffer = buffers[id] else { return nil }
    buffer.fileRefs -= 1
    guard buffer.fileRefs == 0 else { buffers[id] = buffer; return nil }
    buffers[id] = nil
    trace.emit(.dmabufRelease, "release dmabuf\(id.rawValue)", [.id("buffer", id)])
    return buffer
  }

  /// `dma_buf_dynamic_attach()` (or `dma_buf_attach()` for a non-dynamic importer), in
  /// `drivers/dma-buf/dma-buf.c`'s order:
  /// 1. `WARN_ON(importer_ops && !importer_ops->move_notify)` -> `EINVAL`;
  /// 2. `attach->peer2peer = importer_ops->allow_peer2peer` (only importer_ops carry it);
  /// 3. `dmabuf->ops->attach` may refuse (6.19 VFIO: no peer2peer `EOPNOTSUPP`, revoked
  ///    `ENODEV`; the RFC's VFIO has no `.attach`, so a dynamic importer attaches even without
  ///    peer2peer and even to a revoked buffer);
  /// 4. a static importer of a dynamic exporter (`dma_buf_attachment_is_dynamic(attach) !=
  ///    dma_buf_is_dynamic(dmabuf)`) is pinned right away (`dma_buf_pin()`, under resv): the
  ///    RFC's VFIO refuses with `EINVAL`. (The RFC's base kernel does this at attach; later
  ///    kernels pin a static importer at map time, which the model has no operation for.)
  /// - Throws: `EBADF` for a buffer that does not exist, or the errno above.
  public mutating func attach(_ id: DmaBufID, importer: String, ops: ImporterOps,
                              exporter: some DmaBufExporter, trace: inout Trace) throws(Errno) -> AttachmentID {
    try checkAttach(id, ops: ops, exporter: exporter)
    // Only dynamic importers pass importer_ops, and only importer_ops carry allow_peer2peer.
    let peer2peer = ops.dynamic && ops.allowPeer2Peer
    let attachmentID = attachments.keys.max()?.next ?? AttachmentID(1)
    attachments[attachmentID] = DmaBufAttachment(id: attachmentID, buffer: id, importer: importer, ops: ops,
                                                 peer2peer: peer2peer, pinned: false)
    buffers[id]!.attachments.append(attachmentID)
    // The attachment keeps the buffer alive (the importer's dma_buf_get reference).
    buffers[id]!.fileRefs += 1
    trace.emit(.dmabufAttach, "attach \(importer) to dmabuf\(id.rawValue) (dynamic: \(ops.dynamic), p2p: \(peer2peer)) -> attachment \(attachmentID.rawValue)",
               [.id("buffer", id), .id("attachment", attachmentID), .text("importer", importer), .flag("dynamic", ops.dynamic),
                .flag("p2p", peer2peer)])
    return attachmentID
  }

  /// The checks of ``attach(_:importer:ops:exporter:trace:)``, in its order, without
  /// attaching: a caller whose next checks come before the attach takes effect (KVM's
  /// `kvm_set_memslot()` after `kvm_vfio_dmabuf_bind()`) runs these first and attaches last.
  /// Changes nothing. - Throws: as ``attach(_:importer:ops:exporter:trace:)``.
  public func checkAttach(_ id: DmaBufID, ops: ImporterOps, exporter: some DmaBufExporter) throws(Errno) {
    guard let buffer = buffers[id] else { throw Errno.EBADF.because("dma_buf_get", "dmabuf\(id.rawValue) is not a dma-buf") }
    if ops.dynamic && !ops.hasMoveNotify {
      throw Errno.EINVAL.because("dma_buf_dynamic_attach", "WARN_ON(importer_ops && !importer_ops->move_notify)")
    }
    try exporter.attach(buffer: buffer, peer2peer: ops.dynamic && ops.allowPeer2Peer)
    if !ops.dynamic && exporter.isDynamic { try exporter.pin(buffer: buffer) }
  }

  /// `dma_buf_detach()` followed by the importer's `dma_buf_put()`.
  /// - Returns: the buffer when that put was its last reference (the caller releases it).
  /// - Throws: `EINVAL` for an attachment that does not exist (`WARN_ON(!dmabuf || !attach)`
  ///   returns without an error in the kernel; the model's callers get `EINVAL`).
  public mutating func detach(_ attachmentID: AttachmentID, trace: inout Trace) throws(Errno) -> DmaBufObject? {
    guard let attachment = attachments[attachmentID] else {
      throw Errno.EINVAL.because("dma_buf_detach", "attachment \(attachmentID.rawValue) does not exist")
    }
    attachments[attachmentID] = nil
    buffers[attachment.buffer]?.attachments.removeAll { $0 == attachmentID }
    trace.emit(.dmabufDetach, "detach attachment \(attachmentID.rawValue) (\(attachment.importer)) from dmabuf\(attachment.buffer.rawValue)",
               [.id("buffer", attachment.buffer), .id("attachment", attachmentID), .text("importer", attachment.importer)])
    return put(attachment.buffer, trace: &trace)
  }

  /// `dma_buf_pin()`: `WARN_ON(!attach->importer_ops)` only warns; the exporter's `pin`
  /// decides (`if (dmabuf->ops->pin) ret = dmabuf->ops->pin(attach)`).
  /// - Throws: `EINVAL` for an unknown attachment (the model's), the exporter's errno.
  public mutating func pin(_ attachmentID: AttachmentID, exporter: some DmaBufExporter) throws(Errno) {
    guard let attachment = attachments[attachmentID], let buffer = buffers[attachment.buffer] else {
      throw Errno.EINVAL.because("dma_buf_pin", "attachment \(attachmentID.rawValue) does not exist")
    }
    try exporter.pin(buffer: buffer)
    attachments[attachmentID]!.pinned = true
  }

  /// `dma_buf_get_pfn_unlocked()` (RFC patch 1): the PFN behind page `pgoff` of the attached
  /// buffer, without a DMA mapping. The resv lock is taken only around the exporter callback,
  /// so this is one atomic region; the caller's sequence check closes the race with revoke.
  /// The caller has checked ``resvWait(for:context:)``: the lock is free or its own.
  /// - Throws: `EINVAL` for an unknown attachment or an exporter without `get_pfn`; `ENOENT`
  ///   for an importer without `move_notify` (the RFC's refusal); the exporter's errno
  ///   (`ENODEV` revoked, `EINVAL` past the end).
  public func getPfnUnlocked(_ attachmentID: AttachmentID, pgoff: PageIndex,
                             exporter: some DmaBufExporter) throws(Errno) -> PFNLookup {
    // Only an importer that can be told of a move may hold PFNs outside a mapping.
    if let attachment = attachments[attachmentID], !attachment.ops.hasMoveNotify {
      throw Errno.ENOENT.because("dma_buf_get_pfn_unlocked", "the importer has no move_notify")
    }
    return try lookupUnderResv(attachmentID, pgoff: pgoff, exporter: exporter)
  }

  /// The reviewed importer's lookup: `dma_resv_lock()`, the exporter's PFN, `dma_resv_unlock()`
  /// by the importer itself, as one atomic region that takes and drops the lock just as
  /// ``getPfnUnlocked(_:pgoff:exporter:)`` does inside the kAPI. - Throws: as that.
  public func getPfnWithResv(_ attachmentID: AttachmentID, pgoff: PageIndex,
                             exporter: some DmaBufExporter) throws(Errno) -> PFNLookup {
    try lookupUnderResv(attachmentID, pgoff: pgoff, exporter: exporter)
  }

  /// What `context` waits for before it can take the resv lock of the buffer `attachmentID`
  /// is attached to; `nil` when the lock is free or already its own.
  public func resvWait(for attachmentID: AttachmentID, context: ContextID) -> Wait? {
    guard let buffer = attachments[attachmentID].flatMap({ buffers[$0.buffer] }) else { return nil }
    return buffer.resv.wait(for: context)
  }

  /// What `context` waits for before it can take buffer `id`'s resv lock; `nil` when free.
  public func resvWait(buffer id: DmaBufID, context: ContextID) -> Wait? {
    buffers[id]?.resv.wait(for: context)
  }

  /// The merged kernel's importer view: the buffer as physical ranges (`phys_vec`), as
  /// iommufd gets it through `vfio_pci_dma_buf_iommufd_map()`, with resv held by the caller
  /// (`dma_resv_assert_held`). - Throws: `EINVAL` for an unknown attachment or when `context`
  /// does not hold resv; the exporter's errno (`ENODEV` while revoked).
  public func physRanges(_ attachmentID: AttachmentID, context: ContextID,
                         exporter: some DmaBufExporter) throws(Errno) -> [PhysRange] {
    guard let buffer = attachments[attachmentID].flatMap({ buffers[$0.buffer] }), buffer.resv.holder == context else {
      throw Errno.EINVAL.because("dma_resv_assert_held", "the caller does not hold the buffer's resv lock")
    }
    return try exporter.physRanges(buffer: buffer)
  }

  /// The exporter's answer for page `pgoff`.
  private func lookupUnderResv(_ attachmentID: AttachmentID, pgoff: PageIndex,
                               exporter: some DmaBufExporter) throws(Errno) -> PFNLookup {
    guard let attachment = attachments[attachmentID], let buffer = buffers[attachment.buffer] else {
      throw Errno.EINVAL.because("dma_buf_get_pfn_unlocked", "no such attachment")
    }
    guard let result = exporter.getPfn(buffer: buffer, pgoff: pgoff) else {
      throw Errno.EINVAL.because("dma_buf_get_pfn_unlocked", "the exporter has no get_pfn")
    }
    return try result.get()
  }

  /// Takes the buffer's resv lock for `context` (`dma_resv_lock`).
  /// - Returns: `false` when another context holds it (nothing changed).
  public mutating func lockResv(_ id: DmaBufID, context: ContextID) throws(LockViolation) -> Bool {
    guard buffers[id] != nil else { return false }
    return try buffers[id]!.resv.tryLock(context)
  }

  /// `dma_resv_unlock`.
  public mutating func unlockResv(_ id: DmaBufID, context: ContextID) throws(LockViolation) {
    guard buffers[id] != nil else {
      throw LockViolation(lock: "dmabuf\(id.rawValue)->resv", message: "\(context) unlocks the resv of a buffer that is gone")
    }
    try buffers[id]!.resv.unlock(context)
  }

  /// `dma_buf_move_notify()`: with the resv lock held by `context`, every dynamic attachment is
  /// told its mapping moved (for VFIO: was revoked or restored). Returns the attachments, in
  /// order; each stays ``DmaBufAttachment/inMoveNotify`` until the platform has run its
  /// importer's work and called ``moveNotifyReturned(_:context:)``.
  public mutating func moveNotify(_ id: DmaBufID, context: ContextID,
                                  trace: inout Trace) throws(LockViolation) -> [DmaBufAttachment] {
    guard let buffer = buffers[id] else { return [] }
    try buffer.resv.assertHeld(by: context)
    var notified: [DmaBufAttachment] = []
    for attachmentID in buffer.attachments {
      guard var attachment = attachments[attachmentID], attachment.ops.dynamic else { continue }
      attachment.observedMoveNotifications.value += 1
      attachment.inMoveNotify = true
      attachments[attachmentID] = attachment
      notified.append(attachment)
    }
    trace.emit(.dmabufMoveNotify, "move_notify dmabuf\(id.rawValue): \(notified.count) importer(s)",
               [.id("buffer", id), .int("importers", notified.count)])
    return notified
  }

  /// The importer's `move_notify` for `attachmentID` returned (resv still held by `context`).
  public mutating func moveNotifyReturned(_ attachmentID: AttachmentID, context: ContextID) throws(LockViolation) {
    guard let attachment = attachments[attachmentID] else { return }
    if let buffer = buffers[attachment.buffer] { try buffer.resv.assertHeld(by: context) }
    attachments[attachmentID]?.inMoveNotify = false
  }

  /// Whether the reference counts balance: every buffer's file references equal its fds plus
  /// its attachments plus `extraRefs(id)` (other holders the platform knows of).
  public func refcountViolations(fdRefs: (DmaBufID) -> Int, extraRefs: (DmaBufID) -> Int) -> [String] {
    var violations: [String] = []
    for (id, buffer) in buffers {
      let expected = fdRefs(id) + buffer.attachments.count + extraRefs(id)
      if buffer.fileRefs != expected {
        violations.append("dmabuf\(id.rawValue) has \(buffer.fileRefs) file refs, holders account for \(expected)")
      }
      if buffer.fileRefs <= 0 { violations.append("dmabuf\(id.rawValue) is alive with no references") }
    }
    for (id, attachment) in attachments where buffers[attachment.buffer] == nil {
      violations.append("attachment \(id.rawValue) outlives dmabuf\(attachment.buffer.rawValue)")
    }
    return violations
  }
}
