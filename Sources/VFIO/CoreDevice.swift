import KernelCore
import PCI
import DmaBuf

public enum VFIODeviceTag {}
/// Identity of a `struct vfio_pci_core_device`.
public typealias VFIODeviceID = ObjectID<VFIODeviceTag>
public enum VFIOFileTag {}
/// Identity of one open of the device cdev (`struct vfio_device_file`).
public typealias VFIOFileID = ObjectID<VFIOFileTag>

/// How the device is bound once a cdev fd did `VFIO_DEVICE_BIND_IOMMUFD`.
public struct VFIOBinding: Hashable, Sendable {
  /// Bound private (``VFIOBindFlags/private(_:)``): its MMIO belongs to `vm` and the host must
  /// not touch it.
  public var isPrivate: Bool
  /// The VM the device is assigned to.
  public var vm: VMID?
}

/// `struct vfio_pci_core_device`, reduced to what private MMIO touches.
public struct VFIOPCICoreDevice: Hashable, Sendable {
  public let id: VFIODeviceID
  /// The physical function (`vdev->pdev`).
  public internal(set) var function: PCIFunction
  /// `vdev->vdev.open_count`: binds that opened the device.
  public internal(set) var openCount: Int
  /// Set while a cdev fd is bound; private-ness is fixed by the bind.
  public internal(set) var binding: VFIOBinding?
  /// `vdev->memory_lock`: held for write across every revoke and restore.
  public internal(set) var memoryLock: KernelRWSemaphore
  /// `vdev->dmabufs`: exported buffers still attached to the device, in export order.
  public internal(set) var dmabufs: [DmaBufID]
  /// `vfio_device_try_get_registration()` references: 1 for the driver's own, plus one per
  /// exported buffer still holding the device.
  public internal(set) var registrations: Int
  /// User-space mmaps of BARs through the device fd (`vma`s), by region index.
  public internal(set) var hostMappings: [UInt32]
  /// Resets of the function that happened while an importer could still map one of its
  /// buffers (not revoked, attached). Each is a window in which importers reach a device that
  /// is being reset; the `NoResetUnderLiveImport` invariant reports them.
  public internal(set) var observedResetsUnderLiveImport: Observed<Int> = 0
  /// How many such resets happened (history, outside equality).
  public var resetsUnderLiveImport: Int { observedResetsUnderLiveImport.value }

  /// `__vfio_pci_memory_enabled()`: memory decode on and the function in D0.
  public var memoryEnabled: Bool { function.memoryDecodeEnabled }
  public var isPrivate: Bool { binding?.isPrivate ?? false }
}

/// One open of the device cdev (`struct vfio_device_file`).
public struct VFIODeviceFile: Hashable, Sendable {
  public let device: VFIODeviceID
  /// `df->access_granted`: set by a successful bind; every other ioctl needs it.
  public internal(set) var accessGranted: Bool
}

/// `struct vfio_pci_dma_buf`: the exporter's private object behind one dma-buf.
public struct VFIOPCIDmaBuf: Hashable, Sendable {
  public let buffer: DmaBufID
  /// `priv->vdev`; cleared when the device is closed for good.
  public internal(set) var device: VFIODeviceID?
  /// The device that exported the buffer, kept after `device` is cleared: its interface is
  /// the one the buffer's Secure-EPT mappings trust.
  public var exporter: VFIODeviceID { exportedBy }
  let exportedBy: VFIODeviceID
  /// The BAR the buffer was exported from (every range's region in the RFC layout).
  public let regionIndex: UInt32
  /// `priv->phys_vec`: host-physical ranges in buffer order.
  public let ranges: [PhysRange]
  /// `priv->size`.
  public let size: UInt64
  /// `priv->revoked`.
  public internal(set) var revoked: Bool
  /// Patch 9's exporter data, fixed at export.
  public let isPrivate: Bool
  public let vm: VMID?

  /// Where buffer page `page` lives: its PFN, and the span of buffer pages its physical range
  /// covers (what a huge mapping must stay inside). `nil` at or past the end. Revoked or not:
  /// this is the buffer's layout, not a lookup an importer may make.
  public func locate(page: UInt64) -> (pfn: PFN, rangePages: Range<UInt64>)? {
    var first: UInt64 = 0
    for range in ranges {
      let pages = range.length.pages
      if page < first + pages { return (PFN(range.start.pfn.rawValue + (page - first)), first ..< first + pages) }
      first += pages
    }
    return nil
  }
}
