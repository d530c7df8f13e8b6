import KernelCore
import PCI
import DmaBuf

extension VFIOPCIDriver {
  /// `VFIO_DEVICE_FEATURE(GET | VFIO_DEVICE_FEATURE_DMA_BUF)` (`vfio_pci_core_feature_dma_buf`):
  /// exports ranges of one BAR as a dma-buf. Returns the new buffer (the caller installs its fd).
  ///
  /// Checks, in the kernel's order for each variant:
  /// - `reviewed`, 6.19 `drivers/vfio/pci/vfio_pci_dmabuf.c`: `!nr_ranges || flags` -> `EINVAL`;
  ///   `region_index >= VFIO_PCI_ROM_REGION_INDEX` -> `ENODEV`; `validate_dmabuf_input()`: per
  ///   range `!len || !PAGE_ALIGNED(offset) || !PAGE_ALIGNED(len)` -> `EINVAL`, total length
  ///   overflow -> `EINVAL`, then `length & DMA_IOVA_USE_SWIOTLB` -> `EINVAL`;
  ///   `get_dmabuf_phys()`: no p2pdma provider for the BAR (not a memory BAR) -> `EINVAL`;
  ///   `vfio_pci_core_fill_phys_vec()`: per range start + offset or + length overflows ->
  ///   `EOVERFLOW`, end past the BAR -> `EINVAL`.
  /// - `rfcV1`, patch 4's `check_dma_ranges()` per range: `region_index >=
  ///   VFIO_PCI_ROM_REGION_INDEX`, `!bar_size`, then (0, 0) becomes the whole BAR, then an
  ///   unaligned offset or length, `length > bar_size`, `offset >= bar_size`, `offset +
  ///   length > bar_size` -> `EINVAL` each. The RFC has no `nr_ranges` check (zero ranges would
  ///   export an empty buffer); the model refuses it with `EINVAL` since it keeps no empty
  ///   dma-bufs.
  /// Then `vfio_device_try_get_registration()` (`ENODEV`), and the buffer starts revoked when
  /// memory decode is off (in `reviewed`, also when a private device's TDI is not running).
  /// A private device exports a private buffer.
  public mutating func exportDmaBuf(_ fileID: VFIOFileID, request: VFIODeviceFeatureDmaBuf,
                                    dmabufCore: inout DmaBufCore, trace: inout Trace) throws(Errno) -> DmaBufID {
    let id = try boundDevice(fileID, by: "vfio_device_fops_unl_ioctl")
    guard let device = devices[id] else { throw Errno.ENODEV.because("vfio_pci_core_feature_dma_buf", "no device") }
    let ranges: [PhysRange]
    switch variant {
    case .reviewed: ranges = try Self.validateMerged(request, function: device.function)
    case .rfcV1: ranges = try Self.validateRFC(request, function: device.function)
    }
    let size = ranges.reduce(UInt64(0)) { $0 + $1.length }
    guard device.registrations > 0 else {
      throw Errno.ENODEV.because("vfio_pci_core_feature_dma_buf", "vfio_device_try_get_registration failed")
    }
    let buffer = try dmabufCore.export(size: size, exporter: ExporterRef(name: Self.exporterName, key: id.rawValue),
                                       openFlags: request.openFlags, trace: &trace)
    let revoked = !buffersUsable(id)
    dmabufs[buffer] = VFIOPCIDmaBuf(buffer: buffer, device: id, exportedBy: id, regionIndex: request.regionIndex,
                                    ranges: ranges, size: size, revoked: revoked,
                                    isPrivate: device.isPrivate, vm: device.binding?.vm)
    devices[id]!.dmabufs.append(buffer)
    devices[id]!.registrations += 1
    trace.emit(.vfioDmaBufExport, "export BAR\(request.regionIndex) of vfio-dev\(id.rawValue) as dmabuf\(buffer.rawValue)"
               + " \(ranges.map(\.description).joined(separator: " "))\(device.isPrivate ? " private" : "")\(revoked ? " (revoked)" : "")",
               [traceDevice(id), .int("bar", request.regionIndex), .id("buffer", buffer), .flag("private", device.isPrivate),
                .flag("revoked", revoked)])
    return buffer
  }

  /// The 6.19 checks (`vfio_pci_core_feature_dma_buf`, `validate_dmabuf_input`,
  /// `vfio_pci_core_get_dmabuf_phys`, `vfio_pci_core_fill_phys_vec`), in that order.
  static func validateMerged(_ request: VFIODeviceFeatureDmaBuf, function: PCIFunction) throws(Errno) -> [PhysRange] {
    let feature: StaticString = "vfio_pci_core_feature_dma_buf"
    guard !request.ranges.isEmpty else { throw Errno.EINVAL.because(feature, "nr_ranges is 0") }
    guard request.flags == 0 else { throw Errno.EINVAL.because(feature, "flags 0x\(String(request.flags, radix: 16)) are not 0") }
    guard request.regionIndex < VFIOPCIRegion.rom else {
      throw Errno.ENODEV.because(feature, "region_index \(request.regionIndex) >= VFIO_PCI_ROM_REGION_INDEX")
    }
    var total: UInt64 = 0
    for (i, range) in request.ranges.enumerated() {
      guard range.length != 0, range.offset.isPageAligned, range.length.isPageAligned else {
        throw Errno.EINVAL.because("validate_dmabuf_input", "range \(i): length 0 or offset/length not page aligned")
      }
      let (sum, overflow) = total.addingReportingOverflow(range.length)
      if overflow { throw Errno.EINVAL.because("validate_dmabuf_input", "total length overflows at range \(i)") }
      total = sum
    }
    // `DMA_IOVA_USE_SWIOTLB` (bit 63) marks a size the DMA layer would misread.
    if total & (1 << 63) != 0 {
      throw Errno.EINVAL.because("validate_dmabuf_input", "length & DMA_IOVA_USE_SWIOTLB")
    }
    guard let bar = function.bar(request.regionIndex), bar.size > 0 else {
      throw Errno.EINVAL.because("vfio_pci_core_get_dmabuf_phys", "no p2pdma provider for BAR \(request.regionIndex)")
    }
    let barEnd = bar.base.rawValue &+ bar.size
    var phys: [PhysRange] = []
    for (i, range) in request.ranges.enumerated() {
      let start: HPA, end: HPA
      do throws(Errno) {
        start = try bar.base.adding(range.offset)
        end = try start.adding(range.length)
      } catch {
        throw error.because("vfio_pci_core_fill_phys_vec", "range \(i): check_add_overflow")
      }
      guard end.rawValue <= barEnd else {
        throw Errno.EINVAL.because("vfio_pci_core_fill_phys_vec", "range \(i) ends past BAR \(request.regionIndex)")
      }
      phys.append(PhysRange(start: start, length: range.length))
    }
    return phys
  }

  /// Patch 4's `check_dma_ranges()`: per-range region index (all ranges of one request name
  /// one BAR in the model's request), (0, 0) meaning the whole BAR, every failure `EINVAL`.
  static func validateRFC(_ request: VFIODeviceFeatureDmaBuf, function: PCIFunction) throws(Errno) -> [PhysRange] {
    let check: StaticString = "check_dma_ranges"
    guard !request.ranges.isEmpty else {
      throw Errno.EINVAL.because("vfio_pci_core_feature_dma_buf", "model: nr_ranges is 0 (the RFC would export an empty buffer)")
    }
    var phys: [PhysRange] = []
    for (i, range) in request.ranges.enumerated() {
      guard range.regionIndex < VFIOPCIRegion.rom else {
        throw Errno.EINVAL.because(check, "range \(i): region_index \(range.regionIndex) >= VFIO_PCI_ROM_REGION_INDEX")
      }
      guard range.regionIndex == request.regionIndex else {
        throw Errno.EINVAL.because(check, "model: range \(i) names BAR \(range.regionIndex), the request BAR \(request.regionIndex)")
      }
      guard let bar = function.bar(range.regionIndex), bar.size > 0 else {
        throw Errno.EINVAL.because(check, "range \(i): BAR \(range.regionIndex) has size 0")
      }
      if range.offset == 0 && range.length == 0 {
        phys.append(PhysRange(start: bar.base, length: bar.size))
        continue
      }
      let (end, overflow) = range.offset.addingReportingOverflow(range.length)
      guard range.offset.isPageAligned, range.length.isPageAligned, range.length <= bar.size,
            range.offset < bar.size, !overflow, end <= bar.size else {
        throw Errno.EINVAL.because(check, "range \(i): [0x\(String(range.offset, radix: 16)), +0x\(String(range.length, radix: 16))) unaligned or past the BAR")
      }
      // A zero length passes check_dma_ranges; the model's buffers have no empty ranges.
      guard range.length != 0 else { throw Errno.EINVAL.because(check, "model: range \(i) has length 0") }
      phys.append(PhysRange(start: bar.base.advanced(by: range.offset), length: range.length))
    }
    return phys
  }

  /// `vfio_pci_dma_buf_release()`: the buffer's last reference dropped; a buffer still on its
  /// device's list leaves it and returns the registration it held.
  public mutating func releaseDmaBuf(_ buffer: DmaBufID, trace: inout Trace) {
    guard let priv = dmabufs.removeValue(forKey: buffer) else { return }
    if let id = priv.device, devices[id] != nil {
      devices[id]!.dmabufs.removeAll { $0 == buffer }
      devices[id]!.registrations -= 1
    }
  }
}

/// The VFIO-PCI dma-buf exporter (`vfio_pci_dmabuf_ops` plus the RFC's `get_pfn`).
extension VFIOPCIDriver: DmaBufExporter {
  /// `vfio_pci_dma_buf_attach` (6.19): only peer-to-peer capable importers (`EOPNOTSUPP`), and
  /// not while revoked (`ENODEV`). The RFC's ops (patch 4) have no `.attach`: every importer
  /// attaches, revoked or not, peer2peer or not.
  public func attach(buffer: DmaBufObject, peer2peer: Bool) throws(Errno) {
    guard let priv = dmabufs[buffer.id] else { throw Errno.EINVAL.because("vfio_pci_dma_buf_attach", "not a VFIO dma-buf") }
    guard variant == .reviewed else { return }
    guard peer2peer else { throw Errno.EOPNOTSUPP.because("vfio_pci_dma_buf_attach", "!attachment->peer2peer") }
    if priv.revoked { throw Errno.ENODEV.because("vfio_pci_dma_buf_attach", "priv->revoked") }
  }

  /// `vfio_pci_dma_buf_pin`: refused, so that revoke through `move_notify` always reaches the
  /// importer. The RFC (patch 4) returns `EINVAL` ("Uses the dynamic interface but must always
  /// allow for dma_buf_move_notify() to do revoke"); 6.19 returns `EOPNOTSUPP` (the -rc fix
  /// "vfio: Prevent from pinned DMABUF importers to attach to VFIO DMABUF").
  public func pin(buffer: DmaBufObject) throws(Errno) {
    switch variant {
    case .rfcV1: throw Errno.EINVAL.because("vfio_pci_dma_buf_pin", "uses the dynamic interface, never pins")
    case .reviewed: throw Errno.EOPNOTSUPP.because("vfio_pci_dma_buf_pin", "pinned importers cannot be revoked")
    }
  }

  /// `vfio_pci_dma_buf_get_pfn` (RFC patch 5): `ENODEV` once revoked, `EINVAL` at or past the
  /// end. The RFC always reports order 0; `reviewed` reports the largest naturally aligned
  /// block (up to 1 GiB) that is contiguous in one physical range.
  public func getPfn(buffer: DmaBufObject, pgoff: PageIndex) -> Result<PFNLookup, Errno>? {
    let function: StaticString = "vfio_pci_dma_buf_get_pfn"
    guard let priv = dmabufs[buffer.id] else {
      return .failure(Errno.EINVAL.because(function, "dmabuf\(buffer.id.rawValue)->priv is not a vfio_pci_dma_buf (model: not VFIO's buffer)"))
    }
    if priv.revoked { return .failure(Errno.ENODEV.because(function, "priv->revoked")) }
    guard let (pfn, span) = priv.locate(page: pgoff.rawValue) else {
      return .failure(Errno.EINVAL.because(function, "offset 0x\(String(pgoff.rawValue &<< 12, radix: 16)) >= priv->dmabuf->size "
                                            + "0x\(String(priv.size, radix: 16)) (pgoff 0x\(String(pgoff.rawValue, radix: 16)))"))
    }
    guard variant == .reviewed else { return .success(PFNLookup(pfn: pfn, order: 0)) }
    var order: UInt8 = 18
    while order > 0 {
      let block = UInt64(1) << order
      let blockStart = pgoff.rawValue & ~(block - 1)
      if blockStart >= span.lowerBound, blockStart + block <= span.upperBound,
         pfn.rawValue & (block - 1) == pgoff.rawValue & (block - 1) {
        break
      }
      order -= 1
    }
    return .success(PFNLookup(pfn: pfn, order: order))
  }

  /// The merged kernel's `phys_vec` (what `vfio_pci_dma_buf_iommufd_map` hands out); `ENODEV`
  /// while revoked.
  public func physRanges(buffer: DmaBufObject) throws(Errno) -> [PhysRange] {
    guard let priv = dmabufs[buffer.id] else {
      throw Errno.EINVAL.because("vfio_pci_dma_buf_iommufd_map", "attachment->dmabuf->ops != &vfio_pci_dmabuf_ops")
    }
    if priv.revoked { throw Errno.ENODEV.because("vfio_pci_dma_buf_iommufd_map", "priv->revoked") }
    return priv.ranges
  }

  /// Patch 9's `struct vfio_dma_buf_data`.
  public func exporterData(buffer: DmaBufObject) throws(Errno) -> ExporterData {
    guard let priv = dmabufs[buffer.id] else {
      throw Errno.ENOENT.because("vfio_dma_buf_get_data", "dmabuf->ops != &vfio_pci_dmabuf_ops: not a VFIO dma-buf")
    }
    let state = devices[priv.exporter]?.function.tdiState
    return ExporterData(isPrivate: priv.isPrivate, vm: priv.vm,
                        interfaceTrusted: priv.isPrivate && state != nil && state != .configUnlocked)
  }
}
