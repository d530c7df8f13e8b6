import KernelCore
import PCI
import DmaBuf
import HashTreeCollections

/// Receives `move_notify` for every dynamic attachment of a buffer being revoked or restored,
/// while the buffer's resv lock is held (the importers: KVM memslots, test importers).
public protocol MoveNotifySink {
  mutating func moveNotify(_ attachment: DmaBufAttachment, revoked: Bool, context: ContextID, trace: inout Trace)
  /// The function's state changed inside a VFIO operation (reset, decode, power, TSM unbind):
  /// whoever relays its security state (the TSM, and through it the TDX module) learns it here.
  mutating func functionChanged(_ device: VFIODeviceID, _ function: PCIFunction, trace: inout Trace)
}

extension MoveNotifySink {
  public mutating func functionChanged(_ device: VFIODeviceID, _ function: PCIFunction, trace: inout Trace) {}
}

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
    guard devices[id] != nil else { throw .ENODEV }
    return try body(&devices[id]!.function)
  }

  // MARK: - cdev open, bind, close

  /// `open("/dev/vfio/devices/vfioN")` (`vfio_device_fops_cdev_open`): a file with no access
  /// until it binds. - Throws: `ENODEV` for an unknown device.
  public mutating func openCdev(_ device: VFIODeviceID, trace: inout Trace) throws(Errno) -> VFIOFileID {
    guard devices[device] != nil else { throw .ENODEV }
    let id = files.keys.max()?.next ?? VFIOFileID(1)
    files[id] = VFIODeviceFile(device: device, accessGranted: false)
    trace.emit(.vfio, "open vfio-dev\(device.rawValue) (file \(id.rawValue))")
    return id
  }

  /// `VFIO_DEVICE_BIND_IOMMUFD` (`vfio_df_ioctl_bind_iommufd`), with the RFC's
  /// `VFIO_DEVICE_BIND_IOMMUFD_PRIVATE`.
  ///
  /// - Throws: `EINVAL` for unknown flags, a file already bound, a device already opened
  ///   through another cdev file (cdev opens are exclusive), or a private bind with no VM.
  public mutating func bindIOMMUFD(_ fileID: VFIOFileID, flags: VFIOBindFlags, vm: VMID?,
                                   trace: inout Trace) throws(Errno) {
    guard let file = files[fileID], var device = devices[file.device] else { throw .EBADF }
    guard VFIOBindFlags(rawValue: ~VFIOBindFlags.private.rawValue).intersection(flags).isEmpty else { throw .EINVAL }
    guard !file.accessGranted, device.openCount == 0 else { throw .EINVAL }
    let isPrivate = flags.contains(.private)
    if isPrivate && vm == nil { throw .EINVAL }
    // vfio_pci_core_enable(): pci_enable_device() turns memory decode on.
    var command = device.function.command
    command.insert(.memorySpace)
    device.function.writeCommand(command, trace: &trace)
    device.openCount = 1
    device.binding = VFIOBinding(isPrivate: isPrivate, vm: vm)
    devices[file.device] = device
    files[fileID]!.accessGranted = true
    trace.emit(.vfio, "bind vfio-dev\(file.device.rawValue)\(isPrivate ? " private" : "")\(vm.map { " to vm\($0.rawValue)" } ?? "")")
  }

  /// The file's device, once bound. - Throws: `EBADF` for an unknown file, `EINVAL` before
  /// bind (`df->access_granted` is checked first by every device ioctl).
  func boundDevice(_ fileID: VFIOFileID) throws(Errno) -> VFIODeviceID {
    guard let file = files[fileID] else { throw .EBADF }
    guard file.accessGranted else { throw .EINVAL }
    return file.device
  }

  /// The last `close()` of a cdev file (`vfio_device_fops_release`). A bound file closes the
  /// device (`vfio_pci_core_close_device`): disable and reset the function, and revoke every
  /// exported buffer for good, dropping its registration.
  ///
  /// `rfcV1` revokes only after the disable and reset (the posted order: importers keep
  /// mappings of a device that is being reset); `reviewed` revokes first.
  public mutating func release<Sink: MoveNotifySink>(_ fileID: VFIOFileID, context: ContextID,
                                                     dmabufCore: inout DmaBufCore, sink: inout Sink,
                                                     trace: inout Trace) throws(Errno) {
    guard let file = files.removeValue(forKey: fileID) else { throw .EBADF }
    trace.emit(.vfio, "close vfio-dev\(file.device.rawValue) (file \(fileID.rawValue))")
    guard file.accessGranted, devices[file.device] != nil else { return }
    let id = file.device
    unbindTSM(id, sink: &sink, trace: &trace)
    switch variant {
    case .rfcV1:
      disableAndReset(id, dmabufCore: dmabufCore, trace: &trace)
      cleanupDmaBufs(id, context: context, dmabufCore: &dmabufCore, sink: &sink, trace: &trace)
    case .reviewed:
      cleanupDmaBufs(id, context: context, dmabufCore: &dmabufCore, sink: &sink, trace: &trace)
      disableAndReset(id, dmabufCore: dmabufCore, trace: &trace)
    }
    sink.functionChanged(id, devices[id]!.function, trace: &trace)
    devices[id]!.openCount = 0
    devices[id]!.binding = nil
    devices[id]!.hostMappings = []
  }

  /// `vfio_pci_core_disable()`: bus mastering off, memory decode off, then a function reset.
  private mutating func disableAndReset(_ id: VFIODeviceID, dmabufCore: DmaBufCore, trace: inout Trace) {
    trace.emit(.vfio, "disable and reset vfio-dev\(id.rawValue)")
    devices[id]!.function.writeCommand([], trace: &trace)
    noteReset(of: id, dmabufCore: dmabufCore, trace: &trace)
    devices[id]!.function.functionLevelReset(trace: &trace)
  }

  /// Records a reset of the device's function that importers may not have been told of: one
  /// of its buffers is still live (not revoked) and attached. VFIO's own resets revoke first;
  /// the RFC's close path and resets from outside VFIO (sysfs) do not.
  public mutating func noteReset(of id: VFIODeviceID, dmabufCore: DmaBufCore, trace: inout Trace) {
    guard let device = devices[id] else { return }
    let live = device.dmabufs.filter { buffer in
      dmabufs[buffer]?.revoked == false && !(dmabufCore.buffer(buffer)?.attachments.isEmpty ?? true)
    }
    guard !live.isEmpty else { return }
    devices[id]!.resetsUnderLiveImport += 1
    trace.emit(.vfio, "reset of vfio-dev\(id.rawValue) while dmabuf\(live.map { String($0.rawValue) }.joined(separator: ",")) still mapped by importers")
  }

  // MARK: - Regions

  /// `VFIO_DEVICE_GET_REGION_INFO`. BARs report READ|WRITE, MMAP for page-aligned memory BARs,
  /// and the RFC's PRIVATE for a device bound private; a missing BAR reports size 0.
  /// - Throws: `EINVAL` for an index past `VFIO_PCI_NUM_REGIONS` or before bind.
  public func regionInfo(_ fileID: VFIOFileID, index: UInt32) throws(Errno) -> VFIORegionInfo {
    let id = try boundDevice(fileID)
    guard index < VFIOPCIRegion.count, let device = devices[id] else { throw .EINVAL }
    var info = VFIORegionInfo(index: index, flags: [], size: 0, offset: VFIOPCIRegion.offset(of: index))
    switch index {
    case 0..<VFIOPCIRegion.rom:
      guard let bar = device.function.bar(index) else { break }
      info.size = bar.size
      info.flags = [.read, .write]
      if bar.size.isPageAligned { info.flags.insert(.mmap) }
      if device.isPrivate { info.flags.insert(.private) }
    case VFIOPCIRegion.config:
      info.size = VFIOPCIRegion.configSize
      info.flags = [.read, .write]
    default:
      break  // no ROM and no VGA on the modelled functions
    }
    return info
  }

  /// `pread`/`pwrite` of a region through the device fd (`vfio_pci_rw` -> `vfio_pci_bar_rw`).
  ///
  /// Order as the kernel checks: a private device refuses host access to its BARs (RFC patch
  /// 8, `EINVAL`); the access must lie inside the BAR (`EINVAL`); memory decode must be on
  /// (`EIO`, checked under `memory_lock` held for read).
  /// - Returns: the value read (the model keeps no BAR contents: reads return 0).
  public func regionAccess(_ fileID: VFIOFileID, index: UInt32, offset: UInt64, size: UInt64,
                           isWrite: Bool, trace: inout Trace) throws(Errno) -> UInt64 {
    let id = try boundDevice(fileID)
    guard let device = devices[id], index < VFIOPCIRegion.count else { throw .EINVAL }
    guard [1, 2, 4, 8].contains(size) else { throw .EINVAL }
    let (end, overflow) = offset.addingReportingOverflow(size)
    if index == VFIOPCIRegion.config {
      guard !overflow, end <= VFIOPCIRegion.configSize else { throw .EINVAL }
      return 0
    }
    guard index < VFIOPCIRegion.rom, let bar = device.function.bar(index) else { throw .EINVAL }
    if device.isPrivate { throw .EINVAL }
    guard !overflow, end <= bar.size else { throw .EINVAL }
    guard device.memoryEnabled else { throw .EIO }
    trace.emit(.vfio, "\(isWrite ? "write" : "read") BAR\(index) +0x\(String(offset, radix: 16)) size \(size)")
    return 0
  }

  /// `mmap` of a region through the device fd (`vfio_pci_core_mmap`).
  /// - Throws: `EINVAL` for a private device (any region, RFC patch 8), a region that is not a
  ///   page-aligned memory BAR, or before bind.
  public mutating func mmap(_ fileID: VFIOFileID, index: UInt32, trace: inout Trace) throws(Errno) {
    let id = try boundDevice(fileID)
    guard let device = devices[id] else { throw .EINVAL }
    if device.isPrivate { throw .EINVAL }
    guard index < VFIOPCIRegion.rom, let bar = device.function.bar(index), bar.size.isPageAligned else {
      throw .EINVAL
    }
    devices[id]!.hostMappings.append(index)
    trace.emit(.vfio, "mmap BAR\(index) of vfio-dev\(id.rawValue) into user space")
  }
}
