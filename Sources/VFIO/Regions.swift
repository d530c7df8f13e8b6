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

/// `VFIO_DEVICE_BIND_IOMMUFD`'s flags (`struct vfio_device_bind_iommufd.flags`). Bit 0 means
/// different things in the two kernels:
/// - 6.19 (`reviewed`): `VFIO_DEVICE_BIND_FLAG_TOKEN (1 << 0)`, from commit be2e70b96c3e
///   "vfio/pci: Do vf_token checks for VFIO_DEVICE_BIND_IOMMUFD" (v6.17), which makes
///   `vfio_df_ioctl_bind_iommufd()` accept `VALID_FLAGS = VFIO_DEVICE_BIND_FLAG_TOKEN`.
/// - RFC patch 8 (`rfc-v1`, on 6.13, which has no TOKEN): `VFIO_DEVICE_BIND_IOMMUFD_PRIVATE (1 << 0)`.
///
/// No later series defines a private-bind flag on top of TOKEN, so `reviewed`'s private bind
/// is this model's proposal: `VFIO_DEVICE_BIND_FLAG_PRIVATE (1 << 1)`, the next free bit,
/// named with `_FLAG_` as the TOKEN review asked of bind flags.
public struct VFIOBindFlags: OptionSet, Hashable, Sendable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  /// 6.19's `VFIO_DEVICE_BIND_FLAG_TOKEN` (bit 0): `token_uuid_ptr` points at a VF token.
  public static let token = VFIOBindFlags(rawValue: 1 << 0)
  /// RFC patch 8's `VFIO_DEVICE_BIND_IOMMUFD_PRIVATE` (bit 0, cdev only): TOKEN's bit.
  public static let rfcPrivate = VFIOBindFlags(rawValue: 1 << 0)
  /// `VFIO_DEVICE_BIND_FLAG_PRIVATE` (bit 1): this model's proposal for `reviewed`.
  public static let reviewedPrivate = VFIOBindFlags(rawValue: 1 << 1)

  /// The private-bind flag of `variant`'s uAPI.
  public static func `private`(_ variant: Variant) -> VFIOBindFlags {
    switch variant {
    case .rfcV1: rfcPrivate
    case .reviewed: reviewedPrivate
    }
  }

  /// The flags `vfio_df_ioctl_bind_iommufd()` accepts in `variant` (`VALID_FLAGS`).
  public static func valid(_ variant: Variant) -> VFIOBindFlags {
    switch variant {
    case .rfcV1: rfcPrivate
    case .reviewed: [token, reviewedPrivate]
    }
  }
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
