import KernelCore

/// A physically contiguous piece of an exported buffer (`struct phys_vec`, 6.19): the merged
/// kernel describes device memory as a list of these rather than per-page PFNs.
public struct PhysRange: Hashable, Sendable, CustomStringConvertible {
  public var start: HPA
  public var length: UInt64
  public init(start: HPA, length: UInt64) { self.start = start; self.length = length }
  public var description: String { "[\(start), +0x\(String(length, radix: 16)))" }
}

/// Exporter-private data that an importer may ask for (patch 9's
/// `struct vfio_dma_buf_data { bool is_private; struct kvm *kvm; }`). KVM learns whether a
/// buffer is private and which VM owns it only through this, never by importing VFIO.
public struct ExporterData: Hashable, Sendable {
  /// The buffer is host-unaccessible MMIO of a device bound private.
  public var isPrivate: Bool
  /// The VM the exporting device is bound to, if any.
  public var vm: VMID?
  /// The device interface behind a private buffer is still trusted by its TD (TDISP
  /// CONFIG_LOCKED, RUN or ERROR: not yet stopped), so its Secure-EPT entries may be blocked
  /// but not unmapped. `reviewed`'s extension of patch 9's data (this model's proposal): it
  /// lets KVM block on a revoke and unmap once the TSM has stopped the interface.
  public var interfaceTrusted: Bool
  public init(isPrivate: Bool, vm: VMID?, interfaceTrusted: Bool = false) {
    self.isPrivate = isPrivate; self.vm = vm; self.interfaceTrusted = interfaceTrusted
  }
}

/// A PFN answer of `get_pfn`: the frame and the order of the naturally aligned block around
/// it that is contiguous in the buffer (`max_order`; 0 means 4 KiB).
public struct PFNLookup: Hashable, Sendable {
  public var pfn: PFN
  public var order: UInt8
  public init(pfn: PFN, order: UInt8) { self.pfn = pfn; self.order = order }
}

/// The exporter side of `struct dma_buf_ops`, as the dma-buf core calls it.
///
/// The dma-buf core owns buffers and attachments; an exporter (VFIO-PCI here) owns what its
/// buffers describe. The core passes the exporter in at each call, so both stay values.
public protocol DmaBufExporter {
  /// `dma_buf_ops.attach`: may refuse an importer (6.19 VFIO: `EOPNOTSUPP` without
  /// peer2peer, `ENODEV` once revoked). An exporter without the op (the RFC's VFIO) accepts.
  func attach(buffer: DmaBufObject, peer2peer: Bool) throws(Errno)
  /// `dma_buf_ops.pin`. VFIO refuses every pin so that revoke through `move_notify` always
  /// reaches the importer (`EINVAL` in the RFC, `EOPNOTSUPP` in 6.19).
  func pin(buffer: DmaBufObject) throws(Errno)
  /// `dma_buf_is_dynamic()`: the exporter has a `pin` op, so a static importer is pinned at
  /// attach (`dma_buf_dynamic_attach()`).
  var isDynamic: Bool { get }
  /// The exporter's `get_pfn` (RFC patch 5): the PFN behind page `pgoff`.
  /// `nil` when the exporter has no `get_pfn` callback.
  func getPfn(buffer: DmaBufObject, pgoff: PageIndex) -> Result<PFNLookup, Errno>?
  /// The merged kernel's physical description of the buffer (`phys_vec` list).
  func physRanges(buffer: DmaBufObject) throws(Errno) -> [PhysRange]
  /// Exporter-private data for importers (patch 9). - Throws: `ENOENT` when the exporter does
  /// not provide any (the RFC's lookup of an exported symbol that is absent).
  func exporterData(buffer: DmaBufObject) throws(Errno) -> ExporterData
}

extension DmaBufExporter {
  public var isDynamic: Bool { true }
}
