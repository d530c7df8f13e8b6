import KernelCore

/// VFIO-PCI region indices (`enum { VFIO_PCI_BAR0_REGION_INDEX, ... }` in
/// `include/uapi/linux/vfio.h`): BARs 0–5, then ROM, config space and VGA.
public enum VFIOPCIRegion {
  /// `VFIO_PCI_ROM_REGION_INDEX`.
  public static let rom: UInt32 = 6
  /// `VFIO_PCI_CONFIG_REGION_INDEX`.
  public static let config: UInt32 = 7
  /// `VFIO_PCI_VGA_REGION_INDEX`.
  public static let vga: UInt32 = 8
  /// `VFIO_PCI_NUM_REGIONS`.
  public static let count: UInt32 = 9
  /// `VFIO_PCI_INDEX_TO_OFFSET(index)`: each region lives at `index << 40` in the device fd.
  public static func offset(of index: UInt32) -> UInt64 { UInt64(index) << 40 }
  /// PCI config space size of a PCIe function (extended config space).
  public static let configSize: UInt64 = 4096
}

/// `struct vfio_region_info.flags`.
public struct VFIORegionInfoFlags: OptionSet, Hashable, Sendable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  /// `VFIO_REGION_INFO_FLAG_READ`.
  public static let read = VFIORegionInfoFlags(rawValue: 1 << 0)
  /// `VFIO_REGION_INFO_FLAG_WRITE`.
  public static let write = VFIORegionInfoFlags(rawValue: 1 << 1)
  /// `VFIO_REGION_INFO_FLAG_MMAP`.
  public static let mmap = VFIORegionInfoFlags(rawValue: 1 << 2)
  /// `VFIO_REGION_INFO_FLAG_CAPS`.
  public static let caps = VFIORegionInfoFlags(rawValue: 1 << 3)
  /// `VFIO_REGION_INFO_FLAG_PRIVATE` (RFC patch 8): host-unaccessible MMIO of a private device.
  public static let `private` = VFIORegionInfoFlags(rawValue: 1 << 4)

  /// The uAPI names of the set flags, in bit order (`["READ", "WRITE", "MMAP"]`).
  public var names: [String] {
    [(Self.read, "READ"), (.write, "WRITE"), (.mmap, "MMAP"), (.caps, "CAPS"), (.private, "PRIVATE")]
      .filter { contains($0.0) }.map(\.1)
  }
}

/// `struct vfio_region_info` as `VFIO_DEVICE_GET_REGION_INFO` fills it.
public struct VFIORegionInfo: Hashable, Sendable {
  public var index: UInt32
  public var flags: VFIORegionInfoFlags
  public var size: UInt64
  public var offset: UInt64
}

/// `VFIO_DEVICE_BIND_IOMMUFD`'s flags.
public struct VFIOBindFlags: OptionSet, Hashable, Sendable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  /// `VFIO_DEVICE_BIND_IOMMUFD_PRIVATE` (RFC patch 8, bit 0, cdev only).
  public static let `private` = VFIOBindFlags(rawValue: 1 << 0)
}

/// `VFIO_DEVICE_FEATURE_DMA_BUF`, the feature number of the dma-buf export.
public let vfioDeviceFeatureDmaBuf: UInt32 = 11

/// One `struct vfio_region_dma_range` of a `VFIO_DEVICE_FEATURE_DMA_BUF` request.
public struct VFIODmaRange: Hashable, Sendable {
  /// The RFC's per-range region index (`__u32 region_index; __u32 __pad;`); the merged uAPI
  /// has one `region_index` for the whole request instead.
  public var regionIndex: UInt32
  public var offset: UInt64
  public var length: UInt64
  public init(regionIndex: UInt32, offset: UInt64, length: UInt64) {
    self.regionIndex = regionIndex; self.offset = offset; self.length = length
  }
}

/// `struct vfio_device_feature_dma_buf`, in both layouts.
///
/// Merged (6.19): `{ __u32 region_index; __u32 open_flags; __u32 flags; __u32 nr_ranges;
/// struct vfio_region_dma_range { __u64 offset; __u64 length; } dma_ranges[]; }`.
/// RFC: `{ __u32 open_flags; __u32 nr_ranges; struct vfio_region_dma_range { __u32
/// region_index; __u32 __pad; __u64 offset; __u64 length; } dma_ranges[]; }`, where a range of
/// (0, 0) means the whole BAR. `nr_ranges` is `ranges.count`.
public struct VFIODeviceFeatureDmaBuf: Hashable, Sendable {
  public var regionIndex: UInt32
  public var openFlags: UInt32
  /// Must be zero in the merged uAPI; the RFC layout has no such field.
  public var flags: UInt32
  public var ranges: [VFIODmaRange]
  public init(regionIndex: UInt32, openFlags: UInt32, flags: UInt32, ranges: [VFIODmaRange]) {
    self.regionIndex = regionIndex; self.openFlags = openFlags; self.flags = flags; self.ranges = ranges
  }
}
