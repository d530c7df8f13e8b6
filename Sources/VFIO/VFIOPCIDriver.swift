import KernelCore
import PCI
import DmaBuf
import HashTreeCollections

/// vfio-pci (`drivers/vfio/pci/vfio_pci_core.c`, `vfio_pci_config.c`, `vfio_pci_rdwr.c`,
/// `vfio_pci_dmabuf.c`): the devices it drives, their open files and their exported buffers.
public struct VFIOPCIDriver: Hashable, Sendable {
  public let variant: Variant
  public internal(set) var devices: TreeDictionary<VFIODeviceID, VFIOPCICoreDevice> = [:]
  public internal(set) var files: TreeDictionary<VFIOFileID, VFIODeviceFile> = [:]
  /// Exporter-private objects, by the dma-buf they back.
  public internal(set) var dmabufs: TreeDictionary<DmaBufID, VFIOPCIDmaBuf> = [:]

  public init(variant: Variant) { self.variant = variant }

  /// The exporter name buffers carry (`exp_info.exp_name`).
  public static let exporterName = "vfio-pci"

  public func device(_ id: VFIODeviceID) -> VFIOPCICoreDevice? { devices[id] }

  /// `device=nic0`: a device in trace fields is its function's name (its BDF in the kernel).
  func traceDevice(_ id: VFIODeviceID) -> TraceField {
    .text("device", devices[id]?.function.name ?? "vfio-dev\(id.rawValue)")
  }
  public func file(_ id: VFIOFileID) -> VFIODeviceFile? { files[id] }
  public func dmaBuf(_ id: DmaBufID) -> VFIOPCIDmaBuf? { dmabufs[id] }

  /// `vfio_pci_core_register_device()`: the driver takes a function.
  ///
  /// Devices are never unregistered, so their ids are 1...n and the next is n + 1: O(1), where
  /// taking the largest key walked every device and made building a machine quadratic.
  /// - Complexity: O(log n) for the insertion.
  public mutating func registerDevice(_ function: PCIFunction) -> VFIODeviceID {
    var id = VFIODeviceID(UInt32(truncatingIfNeeded: devices.count + 1))
    if devices[id] != nil { id = devices.keys.max()?.next ?? id }  // only if a device was ever removed
    devices[id] = VFIOPCICoreDevice(id: id, function: function, openCount: 0, binding: nil,
                                    memoryLock: KernelRWSemaphore("vdev\(id.rawValue)->memory_lock"),
                                    dmabufs: [], registrations: 1, hostMappings: [])
    return id
  }

  /// Direct access to a device's function for operations that do not go through VFIO (a
  /// sysfs reset, a raw config write by the host): VFIO is not told, as in the kernel.
  public mutating func withFunction<R>(of id: VFIODeviceID, _ body: (inout PCIFunction) throws(Errno) -> R) throws(Errno) -> R {
    guard devices[id] != nil else { throw Errno.ENODEV.because("pci_get_slot", "no PCI function \(id.rawValue) is registered with vfio-pci") }
    return try body(&devices[id]!.function)
  }

  /// Runs `body` on a function the caller already found (`nil` if there is none).
  public mutating func updateFunction<R>(of id: VFIODeviceID, _ body: (inout PCIFunction) -> R) -> R? {
    guard devices[id] != nil else { return nil }
    return body(&devices[id]!.function)
  }

  // MARK: - cdev open, bind, close

  /// `open("/dev/vfio/devices/vfioN")` (`vfio_device_fops_cdev_open`): a file with no access
  /// until it binds. - Throws: `ENODEV` for an unknown device.
  public mutating func openCdev(_ device: VFIODeviceID, trace: inout Trace) throws(Errno) -> VFIOFileID {
    guard devices[device] != nil else {
      throw Errno.ENODEV.because("vfio_device_fops_cdev_open", "vfio_device_try_get_registration: device \(device.rawValue) is not registered")
    }
    let id = files.keys.max()?.next ?? VFIOFileID(1)
    files[id] = VFIODeviceFile(device: device, accessGranted: false)
    trace.emit(.vfioOpen, "open vfio-dev\(device.rawValue) (file \(id.rawValue))", [traceDevice(device), .id("file", id)])
    return id
  }

  /// `VFIO_DEVICE_BIND_IOMMUFD` (`vfio_df_ioctl_bind_iommufd` in `drivers/vfio/device_cdev.c`),
  /// with `flags` in `variant`'s uAPI (``VFIOBindFlags``): in `rfc-v1` bit 0 is RFC patch 8's
  /// `VFIO_DEVICE_BIND_IOMMUFD_PRIVATE`; in `reviewed` bit 0 is 6.19's
  /// `VFIO_DEVICE_BIND_FLAG_TOKEN` and the private bind is this model's bit 1.
  ///
  /// Order: flags outside `VALID_FLAGS` -> `EINVAL` (6.19: `bind.flags & ~VALID_FLAGS`; patch 8:
  /// `bind.flags & ~(VFIO_DEVICE_BIND_IOMMUFD_PRIVATE)`); `df->access_granted` ("one device
  /// cannot be bound twice") -> `EINVAL`; in `reviewed`, `vfio_df_check_token()`: TOKEN on a
  /// vfio-pci device calls `vfio_pci_core_match_token_uuid()` with the uuid, and a device that
  /// is neither a VF nor a PF with a VF token ("VF token incorrectly provided, not a PF or VF")
  /// -> `EINVAL` — the model has no SR-IOV, so every TOKEN bind ends there, and the uuid's
  /// contents and `copy_from_user()`'s `EFAULT` are not modelled; `vfio_df_open()`: a cdev
  /// device already open -> `EINVAL`. A private bind with no VM is refused with `EINVAL` by the
  /// model: the RFC accepts it and only KVM's sanity check (`data->kvm != kvm`) refuses the
  /// buffer later.
  public mutating func bindIOMMUFD(_ fileID: VFIOFileID, flags: VFIOBindFlags, vm: VMID?,
                                   trace: inout Trace) throws(Errno) {
    try bindIOMMUFD(fileID, flags: flags, resolvingVM: { () throws(Errno) in vm }, trace: &trace)
  }

  /// ``bindIOMMUFD(_:flags:vm:trace:)`` with the VM looked up where the kernel looks up
  /// `bind.iommufd` (`iommufd_ctx_from_fd()`): after the flags, `df->access_granted` and the
  /// token, so a bad fd there answers only once those checks passed.
  public mutating func bindIOMMUFD(_ fileID: VFIOFileID, flags: VFIOBindFlags, resolvingVM: () throws(Errno) -> VMID?,
                                   trace: inout Trace) throws(Errno) {
    guard let file = files[fileID], var device = devices[file.device] else {
      throw Errno.EBADF.because("vfio_df_ioctl_bind_iommufd", "not a VFIO device file")
    }
    guard flags.isSubset(of: .valid(variant)) else {
      let check = switch variant {
      case .rfcV1: "bind.flags & ~(VFIO_DEVICE_BIND_IOMMUFD_PRIVATE)"
      case .reviewed: "bind.flags & ~VALID_FLAGS (VFIO_DEVICE_BIND_FLAG_TOKEN, and the model's VFIO_DEVICE_BIND_FLAG_PRIVATE)"
      }
      throw Errno.EINVAL.because("vfio_df_ioctl_bind_iommufd", check)
    }
    guard !file.accessGranted else {
      throw Errno.EINVAL.because("vfio_df_ioctl_bind_iommufd", "one device cannot be bound twice (df->access_granted)")
    }
    if variant == .reviewed && flags.contains(.token) {
      throw Errno.EINVAL.because("vfio_pci_core_match_token_uuid", "VF token incorrectly provided, not a PF or VF")
    }
    let vm = try resolvingVM()
    guard device.openCount == 0 else { throw Errno.EINVAL.because("vfio_df_open", "cdev device already opened") }
    let isPrivate = flags.contains(.private(variant))
    if isPrivate && vm == nil {
      throw Errno.EINVAL.because("vfio_df_ioctl_bind_iommufd", "model: a private bind needs the VM (device->kvm)")
    }
    // vfio_pci_core_enable(): pci_enable_device() turns memory decode on.
    var command = device.function.command
    command.insert(.memorySpace)
    device.function.writeCommand(command, trace: &trace)
    device.openCount = 1
    device.binding = VFIOBinding(isPrivate: isPrivate, vm: vm)
    devices[file.device] = device
    files[fileID]!.accessGranted = true
    trace.emit(.vfioBind, "bind vfio-dev\(file.device.rawValue)\(isPrivate ? " private" : "")\(vm.map { " to vm\($0.rawValue)" } ?? "")",
               [traceDevice(file.device), .flag("private", isPrivate)] + (vm.map { [.vm($0)] } ?? []))
  }

  /// The file's device, once bound. - Throws: `EBADF` for an unknown file, `EINVAL` before
  /// bind: `df->access_granted` is checked first by every device file operation, `function`
  /// (`vfio_device_fops_unl_ioctl`, `vfio_device_fops_read`, `_write`, `_mmap`).
  func boundDevice(_ fileID: VFIOFileID, by function: StaticString) throws(Errno) -> VFIODeviceID {
    guard let file = files[fileID] else { throw Errno.EBADF.because(function, "file \(fileID.rawValue) is not a VFIO device file") }
    guard file.accessGranted else {
      throw Errno.EINVAL.because(function, "!df->access_granted: the device is not bound to iommufd (VFIO_DEVICE_BIND_IOMMUFD)")
    }
    return file.device
  }

  // MARK: - Regions

  /// `VFIO_DEVICE_GET_REGION_INFO` (`vfio_pci_ioctl_get_region_info`). A BAR reports its size,
  /// READ|WRITE, and MMAP when `bar_mmap_supported` (a page-aligned memory BAR); a missing BAR
  /// reports size 0 and no flags. A BAR of a device bound private that could be mmapped
  /// (`is_vfio_pci_bar_private()`, RFC patch 8) reports `VFIO_REGION_INFO_FLAG_PRIVATE` alone:
  /// patch 8 sets `info.flags = VFIO_REGION_INFO_FLAG_PRIVATE` and skips READ, WRITE and MMAP.
  /// `reviewed` keeps that (6.19 has no private bind; see the README's provenance table).
  /// - Throws: `EINVAL` for an index past `VFIO_PCI_NUM_REGIONS` or before bind.
  public func regionInfo(_ fileID: VFIOFileID, index: UInt32) throws(Errno) -> VFIORegionInfo {
    let id = try boundDevice(fileID, by: "vfio_device_fops_unl_ioctl")
    guard index < VFIOPCIRegion.count, let device = devices[id] else {
      throw Errno.EINVAL.because("vfio_pci_ioctl_get_region_info", "index \(index) >= VFIO_PCI_NUM_REGIONS + num_regions")
    }
    var info = VFIORegionInfo(index: index, flags: [], size: 0, offset: VFIOPCIRegion.offset(of: index))
    switch index {
    case 0..<VFIOPCIRegion.rom:
      guard let bar = device.function.bar(index), bar.size > 0 else { break }
      info.size = bar.size
      if Self.isBarPrivate(device, bar: bar) {
        info.flags = [.private]
        break
      }
      info.flags = [.read, .write]
      if bar.size.isPageAligned { info.flags.insert(.mmap) }
    case VFIOPCIRegion.config:
      info.size = VFIOPCIRegion.configSize
      info.flags = [.read, .write]
    default:
      break  // no ROM and no VGA on the modelled functions
    }
    return info
  }

  /// `is_vfio_pci_bar_private()` (RFC patch 8): `vdev->bar_mmap_supported[bar] &&
  /// vdev->vdev.is_private`.
  static func isBarPrivate(_ device: VFIOPCICoreDevice, bar: BAR) -> Bool {
    device.isPrivate && bar.size.isPageAligned
  }

  /// Whether a config-space write of `size` bytes at `offset` reaches `PCI_COMMAND`: a valid
  /// access that covers byte 4 (`vfio_pci_config_rw()` splits it into aligned pieces, and one
  /// of them starts there).
  public static func configWriteReachesCommand(offset: UInt64, size: UInt64) -> Bool {
    [1, 2, 4, 8].contains(size) && offset <= 4 && 4 < offset + size && offset + size <= VFIOPCIRegion.configSize
  }

  /// `pread`/`pwrite` of a region through the device fd (`vfio_pci_rw` -> `vfio_pci_bar_rw`).
  ///
  /// Order as the kernel checks: `index >= VFIO_PCI_NUM_REGIONS + num_regions` -> `EINVAL`;
  /// for a BAR, `is_vfio_pci_bar_private()` (RFC patch 8) -> `EINVAL`; no BAR -> `EINVAL`;
  /// `pos >= end` -> `EINVAL` (an access running past the end is cut short there, `count =
  /// min(count, end - pos)`); memory decode off -> `EIO` (`vfio_pci_ioread32()` and its
  /// siblings check `__vfio_pci_memory_enabled()` under `memory_lock` held for read: the
  /// user gets the errno, never the all-ones a CPU load would see). The model takes one access
  /// of 1, 2, 4 or 8 bytes (`EINVAL` otherwise), so a cut-short access reads or writes the
  /// bytes inside.
  ///
  /// `do_io_rw()` excludes the MSI-X table of the BAR that holds it: its bytes read as `0xff`
  /// and writes to them are dropped. Everywhere else a read returns the function's register
  /// contents and a write stores into them (``PCIFunction/memoryRead(bar:offset:size:)``).
  /// In config space the model keeps only the command register: a read returns it (other bytes
  /// read 0); a write that reaches it is routed by the platform to the memory-decode path
  /// (``configWriteReachesCommand(offset:size:)``), any other write changes nothing.
  /// - Parameter value: what a write stores (its low `size` bytes); ignored by a read.
  /// - Returns: the value read (0 for a write).

  public mutating func regionAccess(_ fileID: VFIOFileID, index: UInt32, offset: UInt64, size: UInt64,
                                    isWrite: Bool, value: UInt64 = 0, trace: inout Trace) throws(Errno) -> UInt64 {
    let id = try boundDevice(fileID, by: isWrite ? "vfio_device_fops_write" : "vfio_device_fops_read")
    guard let device = devices[id], index < VFIOPCIRegion.count else {
      throw Errno.EINVAL.because("vfio_pci_rw", "index \(index) >= VFIO_PCI_NUM_REGIONS + num_regions")
    }
    guard [1, 2, 4, 8].contains(size) else { throw Errno.EINVAL.because("vfio_pci_rw", "model: access size \(size)") }
    if index == VFIOPCIRegion.config {
      let (end, overflow) = offset.addingReportingOverflow(size)
      guard !overflow, end <= VFIOPCIRegion.configSize else {
        throw Errno.EINVAL.because("vfio_pci_config_rw", "model: access past the 4 KiB config space")
      }
      // The model's config space is the command register (PCI_COMMAND, offset 4, 2 bytes):
      // a read returns it, every other byte reads 0; a write reaching it takes the memory-decode
      // path (the platform routes it), a write elsewhere changes nothing the model keeps.
      guard !isWrite else { return 0 }
      let command = UInt64(device.function.command.rawValue)
      var result: UInt64 = 0
      for i in 0 ..< size where (4 ..< 6).contains(offset + i) {
        result |= ((command >> ((offset + i - 4) * 8)) & 0xff) << (i * 8)
      }
      return result
    }
    guard index < VFIOPCIRegion.rom else { throw Errno.EINVAL.because("vfio_pci_rw", "no ROM or VGA region") }
    let bar = device.function.bar(index)
    if let bar, Self.isBarPrivate(device, bar: bar) {
      throw Errno.EINVAL.because("vfio_pci_bar_rw", "is_vfio_pci_bar_private: BAR \(index) of a private device")
    }
    guard let bar, bar.size > 0 else { throw Errno.EINVAL.because("vfio_pci_bar_rw", "BAR \(index) has no resource") }
    guard offset < bar.size else { throw Errno.EINVAL.because("vfio_pci_bar_rw", "pos >= end") }
    guard device.memoryEnabled else { throw Errno.EIO.because("vfio_pci_core_do_io_rw", "memory decode disabled") }
    let count = min(size, bar.size - offset)
    // Byte by byte, the MSI-X table (do_io_rw's excluded range) apart from the rest.
    let excluded = bar.msixTable.map { $0.offset ..< ($0.end ?? .max) } ?? 0 ..< 0
    var result: UInt64 = 0
    for i in 0 ..< count {
      let byteOffset = offset + i
      let inTable = excluded.contains(byteOffset)
      if isWrite {
        guard !inTable else { continue }
        devices[id]!.function.memoryWrite(bar: index, offset: byteOffset, size: 1, value: value >> (i * 8))
      } else {
        let byte = inTable ? 0xff : device.function.memoryRead(bar: index, offset: byteOffset, size: 1)
        result |= byte << (i * 8)
      }
    }
    let shown = isWrite ? value & BARContents.allOnes(size: count) : result
    trace.emit(isWrite ? .vfioBARWrite : .vfioBARRead,
               "\(isWrite ? "write" : "read") BAR\(index) +0x\(String(offset, radix: 16)) size \(count) = 0x\(String(shown, radix: 16))",
               [traceDevice(id), .int("bar", index), .hex("offset", offset), .int("size", count), .hex("value", shown)])
    return result
  }

  /// `mmap` of a region through the device fd (`vfio_pci_core_mmap`): the RFC's
  /// `vdev->vdev.is_private` check comes first (any region, patch 8), then the index, then
  /// `bar_mmap_supported` (a page-aligned memory BAR), all `EINVAL`.
  public mutating func mmap(_ fileID: VFIOFileID, index: UInt32, trace: inout Trace) throws(Errno) {
    let id = try boundDevice(fileID, by: "vfio_device_fops_mmap")
    guard let device = devices[id] else { throw Errno.EINVAL.because("vfio_pci_core_mmap", "no device") }
    if device.isPrivate { throw Errno.EINVAL.because("vfio_pci_core_mmap", "vdev->vdev.is_private") }
    guard index < VFIOPCIRegion.count else {
      throw Errno.EINVAL.because("vfio_pci_core_mmap", "index \(index) >= VFIO_PCI_NUM_REGIONS + num_regions")
    }
    guard index < VFIOPCIRegion.rom, let bar = device.function.bar(index), bar.size > 0, bar.size.isPageAligned else {
      throw Errno.EINVAL.because("vfio_pci_core_mmap", "!vdev->bar_mmap_supported[\(index)]")
    }
    devices[id]!.hostMappings.append(index)
    trace.emit(.vfioMmap, "mmap BAR\(index) of vfio-dev\(id.rawValue) into user space", [traceDevice(id), .int("bar", index)])
  }
}
