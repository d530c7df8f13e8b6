import KernelCore
import PCI
import DmaBuf

extension VFIOPCIDriver {
  /// `VFIO_DEVICE_FEATURE(GET | VFIO_DEVICE_FEATURE_DMA_BUF)` (`vfio_pci_core_feature_dma_buf`):
  /// exports ranges of one BAR as a dma-buf. Returns the new buffer (the caller installs its fd).
  ///
  /// Checks, in the kernel's order for each variant:
  /// - `reviewed` (6.19): `nr_ranges == 0` or `flags != 0` -> `EINVAL`; region index past BAR 5
  ///   -> `ENODEV`; a range of length 0 or not page aligned -> `EINVAL`; total length overflow,
  ///   or a total with bit 63 (`DMA_IOVA_USE_SWIOTLB`) set -> `EINVAL`; the region is not a memory BAR -> `EINVAL`; BAR start + offset + length
  ///   overflow -> `EOVERFLOW`; a range past the BAR -> `EINVAL`.
  /// - `rfcV1`: zero ranges, a region index past BAR 5, a zero-size BAR, an unaligned offset or
  ///   length, or a range past the BAR -> `EINVAL` (overflow included); (0, 0) is the whole BAR.
  /// Then the device registration is taken (`ENODEV` if it cannot be) and the buffer starts
  /// revoked when memory decode is off (in `reviewed`, also when a private device's TDI is not
  /// running). A private device exports a private buffer.
  public mutating func exportDmaBuf(_ fileID: VFIOFileID, request: VFIODeviceFeatureDmaBuf,
                                    dmabufCore: inout DmaBufCore, trace: inout Trace) throws(Errno) -> DmaBufID {
    let id = try boundDevice(fileID)
    guard let device = devices[id] else { throw .ENODEV }
    let ranges: [PhysRange]
    switch variant {
    case .reviewed: ranges = try Self.validateMerged(request, function: device.function)
    case .rfcV1: ranges = try Self.validateRFC(request, function: device.function)
    }
    let size = ranges.reduce(UInt64(0)) { $0 + $1.length }
    guard device.registrations > 0 else { throw .ENODEV }
    let buffer = try dmabufCore.export(size: size, exporter: ExporterRef(name: Self.exporterName, key: id.rawValue),
                                       openFlags: request.openFlags, trace: &trace)
    let revoked = !buffersUsable(id)
    dmabufs[buffer] = VFIOPCIDmaBuf(buffer: buffer, device: id, regionIndex: request.regionIndex,
                                    ranges: ranges, size: size, revoked: revoked,
                                    isPrivate: device.isPrivate, vm: device.binding?.vm)
    devices[id]!.dmabufs.append(buffer)
    devices[id]!.registrations += 1
    trace.emit(.vfio, "export BAR\(request.regionIndex) of vfio-dev\(id.rawValue) as dmabuf\(buffer.rawValue)"
               + " \(ranges.map(\.description).joined(separator: " "))\(device.isPrivate ? " private" : "")\(revoked ? " (revoked)" : "")")
    return buffer
  }

  /// The 6.19 checks (`validate_dmabuf_input`, `vfio_pci_core_fill_phys_vec`).
  static func validateMerged(_ request: VFIODeviceFeatureDmaBuf, function: PCIFunction) throws(Errno) -> [PhysRange] {
    guard !request.ranges.isEmpty, request.flags == 0 else { throw .EINVAL }
    guard request.regionIndex < VFIOPCIRegion.rom else { throw .ENODEV }
    var total: UInt64 = 0
    for range in request.ranges {
      guard range.length != 0, range.offset.isPageAligned, range.length.isPageAligned else { throw .EINVAL }
      let (sum, overflow) = total.addingReportingOverflow(range.length)
      if overflow { throw .EINVAL }
      total = sum
    }
    // `DMA_IOVA_USE_SWIOTLB` (bit 63) marks a size the DMA layer would misread.
    if total & (1 << 63) != 0 { throw .EINVAL }
    guard let bar = function.bar(request.regionIndex), bar.size > 0 else { throw .EINVAL }
    let barEnd = bar.base.rawValue &+ bar.size
    var phys: [PhysRange] = []
    for range in request.ranges {
      let start = try bar.base.adding(range.offset)
      let end = try start.adding(range.length)
      guard end.rawValue <= barEnd else { throw .EINVAL }
      phys.append(PhysRange(start: start, length: range.length))
    }
    return phys
  }

  /// The RFC's checks: per-range region index (all ranges of one request name one BAR here),
  /// (0, 0) meaning the whole BAR, every failure `EINVAL`.
  static func validateRFC(_ request: VFIODeviceFeatureDmaBuf, function: PCIFunction) throws(Errno) -> [PhysRange] {
    guard !request.ranges.isEmpty else { throw .EINVAL }
    var phys: [PhysRange] = []
    for range in request.ranges {
      guard range.regionIndex < VFIOPCIRegion.rom, range.regionIndex == request.regionIndex,
            let bar = function.bar(range.regionIndex), bar.size > 0 else { throw .EINVAL }
      if range.offset == 0 && range.length == 0 {
        phys.append(PhysRange(start: bar.base, length: bar.size))
        continue
      }
      guard range.length != 0, range.offset.isPageAligned, range.length.isPageAligned else { throw .EINVAL }
      let (end, overflow) = range.offset.addingReportingOverflow(range.length)
      guard !overflow, end <= bar.size else { throw .EINVAL }
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
  /// `vfio_pci_dma_buf_attach`: only peer-to-peer capable importers (`EOPNOTSUPP`), and not
  /// while revoked (`ENODEV`).
  public func attach(buffer: DmaBufObject, peer2peer: Bool) throws(Errno) {
    guard let priv = dmabufs[buffer.id] else { throw .EINVAL }
    guard peer2peer else { throw .EOPNOTSUPP }
    if priv.revoked { throw .ENODEV }
  }

  /// Pinning would stop revoke from reaching the importer, so VFIO refuses it.
  public func pin(buffer: DmaBufObject) throws(Errno) { throw .EOPNOTSUPP }

  /// `vfio_pci_dma_buf_get_pfn` (RFC patch 5): `ENODEV` once revoked, `EINVAL` at or past the
  /// end. The RFC always reports order 0; `reviewed` reports the largest naturally aligned
  /// block (up to 1 GiB) that is contiguous in one physical range.
  public func getPfn(buffer: DmaBufObject, pgoff: PageIndex) -> Result<PFNLookup, Errno>? {
    guard let priv = dmabufs[buffer.id] else { return .failure(.EINVAL) }
    if priv.revoked { return .failure(.ENODEV) }
    guard let (pfn, span) = priv.locate(page: pgoff.rawValue) else { return .failure(.EINVAL) }
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
    guard let priv = dmabufs[buffer.id] else { throw .EINVAL }
    if priv.revoked { throw .ENODEV }
    return priv.ranges
  }

  /// Patch 9's `struct vfio_dma_buf_data`.
  public func exporterData(buffer: DmaBufObject) throws(Errno) -> ExporterData {
    guard let priv = dmabufs[buffer.id] else { throw .ENOENT }
    return ExporterData(isPrivate: priv.isPrivate, vm: priv.vm)
  }
}
