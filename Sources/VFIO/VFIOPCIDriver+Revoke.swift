import KernelCore
import PCI
import DmaBuf

/// Receives what VFIO tells the rest of the system inside a region: the function's state
/// changed (reset, decode, power, TSM unbind), so whoever relays its security state (the TSM,
/// and through it the TDX module) learns it in the same atomic region.
public protocol FunctionStateSink {
  /// - Throws: ``LockViolation`` when the relay fails: the model's failure, not the kernel's.
  mutating func functionChanged(_ device: VFIODeviceID, _ function: PCIFunction, trace: inout Trace) throws(LockViolation)
}

extension VFIOPCIDriver {
  /// The resets VFIO performs or forwards.
  public enum ResetKind: String, Hashable, Sendable {
    /// `VFIO_DEVICE_RESET` (`vfio_pci_ioctl_reset`): FLR with config state saved and restored.
    case ioctl = "VFIO_DEVICE_RESET"
    /// An FLR started by a config-space write (PCIe Device Control "Initiate FLR" or the AF
    /// capability, `vfio_exp_config_write` / `vfio_af_config_write`), as a guest starts it.
    case configFLR = "config-space FLR"
    /// `VFIO_DEVICE_PCI_HOT_RESET`: a secondary bus reset.
    case hotReset = "VFIO_DEVICE_PCI_HOT_RESET"
  }

  /// Whether the device's buffers may be mapped by importers: memory enabled and, in
  /// `reviewed`, for a private device only while its TDI is locked (CONFIG_LOCKED) or runs.
  ///
  /// The TDX Connect flow decides the rule: TDH.MMIO.MAP checks no TDISP state, the module
  /// has the DEVIF and the MMIOMT from LOCK on, and START_INTERFACE is the TD's own request,
  /// after which it accepts. So the VMM creates the memslot, and the host may map pages
  /// MMIO_PENDING, once the interface is locked; the guest accepts only after START. When the
  /// interface leaves LOCKED or RUN (STOP, an FLR into ERROR) the buffers are revoked. The RFC
  /// restores on memory enable alone, so after a reset a TD could map MMIO of an interface it
  /// no longer trusts (nothing in patch 12 checks the TDI state).
  public func buffersUsable(_ id: VFIODeviceID) -> Bool {
    guard let device = devices[id], device.memoryEnabled else { return false }
    return variant == .rfcV1 || !device.isPrivate || device.function.tdi?.state.isLocked == true
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
    devices[id]!.observedResetsUnderLiveImport.value += 1
    trace.emit(.vfioResetUnderImport,
               "reset of vfio-dev\(id.rawValue) while dmabuf\(live.map { String($0.rawValue) }.joined(separator: ",")) still mapped by importers",
               [traceDevice(id), .text("buffers", live.map { String($0.rawValue) }.joined(separator: ","))])
  }

  // MARK: Starting a path

  /// A config-space write of the command register's Memory Space Enable bit
  /// (`vfio_basic_config_write`): clearing it revokes first; after the write, buffers come back
  /// if memory is enabled. - Throws: as ``boundDevice(_:by:)``.
  public func setMemoryDecode(_ fileID: VFIOFileID, enable: Bool, context: ContextID) throws(Errno) -> DmaBufMovePath {
    DmaBufMovePath(device: try boundDevice(fileID, by: "vfio_device_fops_write"), ctx: context, trigger: .memoryDecode(enable: enable), variant: variant)
  }

  /// A PMCSR write through config space (`vfio_lock_and_set_power_state`): entering D3hot
  /// revokes; returning to D0 restores if memory decode is on.
  public func setPowerState(_ fileID: VFIOFileID, state: PCIPowerState, context: ContextID) throws(Errno) -> DmaBufMovePath {
    DmaBufMovePath(device: try boundDevice(fileID, by: "vfio_device_fops_write"), ctx: context, trigger: .power(state), variant: variant)
  }

  /// Revoke, reset, restore — all under `memory_lock` held for write
  /// (`vfio_pci_ioctl_reset`, the config-space FLR handlers, `vfio_pci_dev_set_hot_reset`).
  public func reset(_ fileID: VFIOFileID, kind: ResetKind, context: ContextID) throws(Errno) -> DmaBufMovePath {
    DmaBufMovePath(device: try boundDevice(fileID, by: kind == .configFLR ? "vfio_device_fops_write" : "vfio_device_fops_unl_ioctl"),
                   ctx: context, trigger: .reset(kind), variant: variant)
  }

  /// The device's TDISP state changed outside VFIO (the TSM started or stopped the
  /// interface). In `reviewed`, private buffers follow it: revoked when the interface stops
  /// being trusted, restored when it runs again. The RFC has no such link: `nil`.
  public func tsmStateChanged(_ id: VFIODeviceID, context: ContextID) -> DmaBufMovePath? {
    guard variant == .reviewed, devices[id]?.isPrivate == true else { return nil }
    return DmaBufMovePath(device: id, ctx: context, trigger: .tsmStateChanged, variant: variant)
  }

  /// The TSM stops a private device's interface in `reviewed` (`vfio_pci_tsm_unbind()` in the
  /// later VFIO/TSM series): its buffers are revoked first (KVM blocks their Secure-EPT
  /// entries), then STOP_INTERFACE, then the importers unmap. `nil` where VFIO has no say
  /// (`rfc-v1`, or a device not bound private): the TSM stops the interface directly.
  public func tsmUnbind(_ id: VFIODeviceID, context: ContextID) -> DmaBufMovePath? {
    guard variant == .reviewed, let device = devices[id], device.isPrivate, device.function.tdi != nil else { return nil }
    return DmaBufMovePath(device: id, ctx: context, trigger: .tsmUnbind, variant: variant)
  }

  /// The last `close()` of a cdev file (`vfio_device_fops_release`). The file is gone at once;
  /// a bound file also closes the device (`vfio_pci_core_close_device`), which the returned
  /// path does: disable and reset the function, and revoke every exported buffer for good,
  /// dropping its registration.
  ///
  /// `rfcV1` revokes only after the disable and reset (the posted order, which 6.19 as
  /// released keeps: importers keep mappings of a device that is being reset); `reviewed`
  /// revokes first.
  /// - Returns: the device's close path, or `nil` when the file was never bound.
  /// - Throws: `EBADF` for an unknown file.
  public mutating func release(_ fileID: VFIOFileID, context: ContextID, trace: inout Trace) throws(Errno) -> DmaBufMovePath? {
    guard let file = files.removeValue(forKey: fileID) else { throw Errno.EBADF.because("vfio_device_fops_release", "no such file") }
    trace.emit(.vfioClose, "close vfio-dev\(file.device.rawValue) (file \(fileID.rawValue))", [traceDevice(file.device), .id("file", fileID)])
    guard file.accessGranted, devices[file.device] != nil else { return nil }
    return DmaBufMovePath(device: file.device, ctx: context, trigger: .close, variant: variant)
  }
}
