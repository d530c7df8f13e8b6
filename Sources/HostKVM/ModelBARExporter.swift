import DmaBuf
import KernelCore
import Platform
import Synchronization

/// A `BARExporter` whose answers come from the platform model: a VFIO-PCI device exports its
/// BAR as a dma-buf (`VFIO_DEVICE_FEATURE_DMA_BUF`), the back end attaches to it as a dynamic
/// importer, each lookup is `dma_buf_get_pfn_unlocked()` (patch 1) reaching
/// `vfio_pci_dma_buf_get_pfn()` (patch 5), and a revoke is a real revoke trigger on the device
/// (`vfio_pci_dma_buf_move()` under the reservation lock), whose `move_notify` reaches the real VM.
///
/// The model places BARs at host-physical addresses in `Machine.mmioWindowBase`; this back end's
/// PFNs number pages of its own device memory, so page N is the model PFN minus the PFN of BAR
/// offset 0. Whether the buffer is revoked is never kept here: lookups fail `ENODEV` because the
/// model's `priv->revoked` says so.
public final class ModelBARExporter: RevocableBARExporter {
  struct State {
    var machine: Machine
    var notifiers: [@Sendable () -> Void] = []
  }

  /// The configured device's name in the model.
  public static let deviceName = "bar0dev"
  /// The importer name the attachment carries.
  public static let importerName = "hostkvm"

  public let size: UInt64
  /// The VFIO device fd, the dma-buf fd and the attachment, as the model handed them out.
  public let deviceFD: FD
  public let dmaBufFD: FD
  public let dmaBufID: DmaBufID
  public let attachmentID: AttachmentID
  /// The model PFN of BAR offset 0: this back end's page 0.
  public let basePFN: PFN
  let state: Mutex<State>

  /// Builds a machine with one plain (non-TDISP) device `bar0dev` whose BAR 0 is `size` bytes and
  /// runs, through `Machine.perform`, what a VMM does: `open("/dev/vfio/devices/vfioN")`,
  /// `VFIO_DEVICE_BIND_IOMMUFD`, `VFIO_DEVICE_FEATURE_DMA_BUF` over the whole BAR and
  /// `dma_buf_dynamic_attach()` with `move_notify` and peer-to-peer allowed.
  ///
  /// - Parameter tracing: keep the model's trace (off by default: every lookup would add an event).
  /// - Throws: `EINVAL` for a size the model cannot configure (not a power of two of at least
  ///   4 KiB); otherwise the errno of the first step the model refused, or the model's own
  ///   failure (``HostFailure/model(_:)``).
  public init(size: UInt64 = GuestProgram.barSize, variant: Variant = .reviewed, tracing: Bool = false)
    throws(HostFailure)
  {
    var machine: Machine
    do {
      machine = try Machine(
        configuration: MachineConfiguration(devices: [
          DeviceConfiguration(name: Self.deviceName, bars: [BARConfiguration(index: 0, size: size)])
        ]),
        variant: variant)
    } catch {
      throw .errno(.EINVAL)
    }
    machine.trace.isEnabled = tracing

    func perform(_ op: Operation) throws(HostFailure) -> OpValue {
      switch machine.perform(op) {
      case .success(let value): return value
      // A plain device runs no TDISP or TDX step: any failure but an errno is the model's own.
      case .failure(let failure): throw HostFailure(failure)
      }
    }
    /// An op answered with a value of the wrong kind: the model is broken.
    func unexpected(_ op: Operation, _ value: OpValue) -> HostFailure {
      .modelAnswer("\(op.name) answered \(value)")
    }
    let open = Operation.vfioOpen(device: Self.deviceName)
    let opened = try perform(open)
    guard case .fd(let device) = opened else { throw unexpected(open, opened) }
    _ = try perform(.vfioBindIOMMUFD(fd: device, private: false, vm: nil))
    let export = Operation.vfioDmaBuf(
      fd: device, regionIndex: 0, ranges: [DmaRange(offset: 0, length: size)], openFlags: 0, flags: 0)
    let exported = try perform(export)
    guard case .fd(let buffer) = exported else { throw unexpected(export, exported) }
    let attach = Operation.dmabufAttach(fd: buffer, importer: Self.importerName, dynamic: true, peer2peer: true)
    let attached = try perform(attach)
    guard case .attachment(let attachment) = attached else { throw unexpected(attach, attached) }
    guard case .dmaBuf(let id)? = machine.files[buffer],
      let first = machine.vfio.dmaBuf(id)?.ranges.first
    else { throw unexpected(export, exported) }

    self.size = size
    self.deviceFD = device
    self.dmaBufFD = buffer
    self.dmaBufID = id
    self.attachmentID = attachment
    self.basePFN = first.start.pfn
    self.state = Mutex(State(machine: machine))
  }

  /// `dma_buf_get_pfn_unlocked()` on the model, translated to page numbers of the device memory.
  ///
  /// No other thread of the model runs, so the lookup never finds the reservation lock held:
  /// `Machine.perform` runs it to its end.
  ///
  /// - Returns: the model's errno unchanged (`ENODEV` revoked, `EINVAL` at or past the end); the
  ///   model's own failure (``HostFailure/model(_:)``), or a PFN below the BAR, which only a
  ///   broken model returns (``HostFailure/modelAnswer(_:)``).
  /// - Complexity: one model operation under this exporter's lock; no lock of the importer's.
  public func lookup(pageIndex: PageIndex) -> Result<PFN, HostFailure> {
    let op = Operation.dmabufGetPfn(attachment: attachmentID, pgoff: pageIndex)
    let result = state.withLock { $0.machine.perform(op) }
    switch result {
    case .success(.pfn(let pfn, _)):
      guard let delta = pfn.offset(from: basePFN) else {
        return .failure(.modelAnswer("get_pfn answered \(pfn), below the BAR's first PFN \(basePFN)"))
      }
      return .success(PFN(delta))
    case .success(let value):
      return .failure(.modelAnswer("\(op.name) answered \(value)"))
    case .failure(let failure): return .failure(HostFailure(failure))
    }
  }

  public func attach(moveNotify: @escaping @Sendable () -> Void) {
    state.withLock { $0.notifiers.append(moveNotify) }
  }

  /// Turns memory decode off through config space (a device being torn down), which revokes the
  /// dma-buf in both variants. An FLR would not do: in `reviewed` the reset restores the buffer
  /// once decode is back on, so later lookups would succeed again.
  ///
  /// With this exporter's lock still held — as `vfio_pci_dma_buf_move()` holds the reservation
  /// lock — every registered `move_notify` runs, and only if the model delivered a `move_notify`
  /// to this attachment (a second revoke delivers none, as the kernel skips buffers already
  /// revoked).
  ///
  /// - Throws: the model's errno for the config write, or its own failure; nothing is notified
  ///   then.
  public func revoke() throws(HostFailure) {
    try state.withLock { (s) throws(HostFailure) in
      let before = s.machine.dmabufCore.attachment(attachmentID)?.moveNotifications ?? 0
      switch s.machine.perform(.vfioSetMemoryDecode(fd: deviceFD, enable: false)) {
      case .success: break
      case .failure(let failure): throw HostFailure(failure)
      }
      let after = s.machine.dmabufCore.attachment(attachmentID)?.moveNotifications ?? 0
      guard after > before else { return }
      for notify in s.notifiers { notify() }
    }
  }

  /// The model's `priv->revoked` for the buffer; a buffer the model no longer has is revoked.
  public var isRevoked: Bool {
    state.withLock { $0.machine.vfio.dmaBuf(dmaBufID)?.revoked ?? true }
  }

  /// A snapshot of the model (a copy: later lookups do not change it).
  public var machine: Machine { state.withLock { $0.machine } }

  /// `move_notify` calls the model has delivered to this exporter's attachment.
  public var moveNotifications: Int {
    state.withLock { $0.machine.dmabufCore.attachment(attachmentID)?.moveNotifications ?? 0 }
  }
}
