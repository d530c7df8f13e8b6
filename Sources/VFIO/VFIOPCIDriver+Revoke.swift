import KernelCore
import PCI
import DmaBuf

/// Revoke and restore of exported buffers around everything that makes the device's MMIO go
/// away: memory decode off, D3hot, function reset (ioctl or config-space FLR), hot reset, and
/// close. Each runs with `memory_lock` held for write, as `vfio_pci_dma_buf_move()` requires.
extension VFIOPCIDriver {
  /// A config-space write of the command register's Memory Space Enable bit
  /// (`vfio_basic_config_write`): clearing it revokes first; after the write, buffers come back
  /// if memory is enabled.
  public mutating func setMemoryDecode<Sink: MoveNotifySink>(
    _ fileID: VFIOFileID, enable: Bool, context: ContextID,
    dmabufCore: inout DmaBufCore, sink: inout Sink, trace: inout Trace
  ) throws(Errno) {
    try configWrite(fileID, takesMemoryAway: !enable, context: context, dmabufCore: &dmabufCore,
                    sink: &sink, trace: &trace) { (function: inout PCIFunction, trace: inout Trace) in
      var command = function.command
      if enable { command.insert(.memorySpace) } else { command.remove(.memorySpace) }
      function.writeCommand(command, trace: &trace)
    }
  }

  /// A PMCSR write through config space (`vfio_lock_and_set_power_state`): entering D3hot
  /// revokes; returning to D0 restores if memory decode is on.
  public mutating func setPowerState<Sink: MoveNotifySink>(
    _ fileID: VFIOFileID, state: PCIPowerState, context: ContextID,
    dmabufCore: inout DmaBufCore, sink: inout Sink, trace: inout Trace
  ) throws(Errno) {
    try configWrite(fileID, takesMemoryAway: state != .d0, context: context, dmabufCore: &dmabufCore,
                    sink: &sink, trace: &trace) { (function: inout PCIFunction, trace: inout Trace) in
      function.writePowerState(state, trace: &trace)
    }
  }

  /// The shape both config writes share, under `memory_lock` held for write: when the write
  /// takes memory away, unbind the TSM and revoke before it; after it, tell the sink what the
  /// function looks like and restore what is usable again.
  private mutating func configWrite<Sink: MoveNotifySink>(
    _ fileID: VFIOFileID, takesMemoryAway: Bool, context: ContextID,
    dmabufCore: inout DmaBufCore, sink: inout Sink, trace: inout Trace,
    _ write: (inout PCIFunction, inout Trace) -> Void
  ) throws(Errno) {
    let id = try boundDevice(fileID)
    try withMemoryLock(id, context) { (driver: inout VFIOPCIDriver) throws(Errno) in
      if takesMemoryAway {
        driver.unbindTSM(id, sink: &sink, trace: &trace)
        driver.dmaBufMove(id, revoked: true, context: context, dmabufCore: &dmabufCore, sink: &sink, trace: &trace)
      }
      write(&driver.devices[id]!.function, &trace)
      sink.functionChanged(id, driver.devices[id]!.function, trace: &trace)
      driver.restoreIfEnabled(id, context: context, dmabufCore: &dmabufCore, sink: &sink, trace: &trace)
    }
  }

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

  /// Revoke, reset, restore — all under `memory_lock` held for write.
  ///
  /// The posted RFC's config-space FLR calls the post-reset move with "revoke" instead of
  /// "restore" (`vfio_pci_dma_buf_move(vdev, true)` twice), so in `rfcV1` buffers stay revoked
  /// after a guest's FLR until some later command or power-state write restores them.
  public mutating func reset<Sink: MoveNotifySink>(
    _ fileID: VFIOFileID, kind: ResetKind, context: ContextID,
    dmabufCore: inout DmaBufCore, sink: inout Sink, trace: inout Trace
  ) throws(Errno) {
    let id = try boundDevice(fileID)
    try withMemoryLock(id, context) { (driver: inout VFIOPCIDriver) throws(Errno) in
      driver.unbindTSM(id, sink: &sink, trace: &trace)
      driver.dmaBufMove(id, revoked: true, context: context, dmabufCore: &dmabufCore, sink: &sink, trace: &trace)
      trace.emit(.vfio, "\(kind.rawValue) of vfio-dev\(id.rawValue)")
      // pci_try_reset_function() / the bus reset save and restore config space around the
      // reset, so the command register the user set survives; the TDI does not.
      let saved = driver.devices[id]!.function.command
      driver.noteReset(of: id, dmabufCore: dmabufCore, trace: &trace)
      switch kind {
      case .ioctl, .configFLR: driver.devices[id]!.function.functionLevelReset(trace: &trace)
      case .hotReset: driver.devices[id]!.function.conventionalReset(trace: &trace)
      }
      driver.devices[id]!.function.writeCommand(saved, trace: &trace)
      sink.functionChanged(id, driver.devices[id]!.function, trace: &trace)
      if kind == .configFLR && driver.variant == .rfcV1 {
        if driver.devices[id]!.memoryEnabled {
          driver.dmaBufMove(id, revoked: true, context: context, dmabufCore: &dmabufCore, sink: &sink, trace: &trace)
        }
      } else {
        driver.restoreIfEnabled(id, context: context, dmabufCore: &dmabufCore, sink: &sink, trace: &trace)
      }
    }
  }

  /// Ends the TDI's trusted state before its MMIO goes away (`vfio_pci_tsm_unbind()` in later
  /// series): TDISP STOP_INTERFACE for a private device whose interface is locked or running,
  /// so that the TD's Secure-EPT entries may be unmapped. The posted RFC has no such step
  /// (`rfcV1`): its revoke reaches KVM while the TDI is still trusted.
  mutating func unbindTSM<Sink: MoveNotifySink>(_ id: VFIODeviceID, sink: inout Sink, trace: inout Trace) {
    guard variant == .reviewed, let device = devices[id], device.isPrivate,
          device.function.tdi?.state.isLocked == true else { return }
    trace.emit(.vfio, "TSM unbind of vfio-dev\(id.rawValue) before revoke")
    try? devices[id]!.function.tdispStopInterface(trace: &trace)
    sink.functionChanged(id, devices[id]!.function, trace: &trace)
  }

  /// `down_write(&vdev->memory_lock)` around `body`, released on every path.
  private mutating func withMemoryLock(
    _ id: VFIODeviceID, _ context: ContextID, _ body: (inout VFIOPCIDriver) throws(Errno) -> Void
  ) throws(Errno) {
    do { try devices[id]!.memoryLock.lockWrite(context) } catch { throw .EAGAIN }
    defer { try? devices[id]!.memoryLock.unlock(context) }
    try body(&self)
  }

  /// Whether the device's buffers may be mapped by importers: memory enabled and, in
  /// `reviewed`, for a private device only while its TDI runs. The RFC restores on memory
  /// enable alone, so after a reset a TD could map MMIO of an interface it no longer trusts
  /// (nothing in patch 12 checks the TDI state).
  public func buffersUsable(_ id: VFIODeviceID) -> Bool {
    guard let device = devices[id], device.memoryEnabled else { return false }
    return variant == .rfcV1 || !device.isPrivate || device.function.tdiState == .run
  }

  /// The device's TDISP state changed outside VFIO (the TSM started or stopped the
  /// interface). In `reviewed`, private buffers follow it: revoked when the interface stops
  /// being trusted, restored when it runs again. The RFC has no such link.
  public mutating func tsmStateChanged<Sink: MoveNotifySink>(
    _ id: VFIODeviceID, context: ContextID, dmabufCore: inout DmaBufCore, sink: inout Sink, trace: inout Trace
  ) throws(Errno) {
    guard variant == .reviewed, devices[id]?.isPrivate == true else { return }
    try withMemoryLock(id, context) { (driver: inout VFIOPCIDriver) throws(Errno) in
      driver.dmaBufMove(id, revoked: !driver.buffersUsable(id), context: context, dmabufCore: &dmabufCore,
                        sink: &sink, trace: &trace)
    }
  }

  private mutating func restoreIfEnabled<Sink: MoveNotifySink>(
    _ id: VFIODeviceID, context: ContextID, dmabufCore: inout DmaBufCore, sink: inout Sink, trace: inout Trace
  ) {
    if buffersUsable(id) {
      dmaBufMove(id, revoked: false, context: context, dmabufCore: &dmabufCore, sink: &sink, trace: &trace)
    }
  }

  /// `vfio_pci_dma_buf_move(vdev, revoked)`: every buffer whose state differs flips under its
  /// resv lock and its importers get `move_notify` before the lock drops.
  mutating func dmaBufMove<Sink: MoveNotifySink>(
    _ id: VFIODeviceID, revoked: Bool, context: ContextID,
    dmabufCore: inout DmaBufCore, sink: inout Sink, trace: inout Trace
  ) {
    for buffer in devices[id]!.dmabufs where dmabufs[buffer]?.revoked != revoked {
      flip(buffer, revoked: revoked, context: context, dmabufCore: &dmabufCore, sink: &sink, trace: &trace)
    }
  }

  /// `vfio_pci_dma_buf_cleanup()`: on close every buffer is revoked for good, forgets its
  /// device and drops the registration it held.
  mutating func cleanupDmaBufs<Sink: MoveNotifySink>(
    _ id: VFIODeviceID, context: ContextID, dmabufCore: inout DmaBufCore, sink: inout Sink, trace: inout Trace
  ) {
    for buffer in devices[id]!.dmabufs {
      flip(buffer, revoked: true, context: context, dmabufCore: &dmabufCore, sink: &sink, trace: &trace,
           force: true)
      dmabufs[buffer]?.device = nil
      devices[id]!.registrations -= 1
    }
    devices[id]!.dmabufs = []
  }

  /// One buffer's revoke or restore: lock resv, flip, notify importers, unlock. The whole
  /// trigger is one atomic region here, so no other context can hold resv; an explorer that
  /// interleaves revoke with lookups must split this per buffer, where the kernel blocks.
  private mutating func flip<Sink: MoveNotifySink>(
    _ buffer: DmaBufID, revoked: Bool, context: ContextID,
    dmabufCore: inout DmaBufCore, sink: inout Sink, trace: inout Trace, force: Bool = false
  ) {
    guard dmabufs[buffer] != nil, (try? dmabufCore.lockResv(buffer, context: context)) == true else { return }
    defer { try? dmabufCore.unlockResv(buffer, context: context) }
    if dmabufs[buffer]!.revoked == revoked && !force { return }
    dmabufs[buffer]!.revoked = revoked
    trace.emit(.vfio, "\(revoked ? "revoke" : "restore") dmabuf\(buffer.rawValue)")
    let notified = (try? dmabufCore.moveNotify(buffer, context: context, trace: &trace)) ?? []
    for attachment in notified {
      sink.moveNotify(attachment, revoked: revoked, context: context, trace: &trace)
    }
  }
}
