import KernelCore
import PCI
import DmaBuf

/// What a ``DmaBufMovePath`` step asks of its caller.
public enum DmaBufMoveAction: Sendable {
  /// A region ran inside VFIO; step again.
  case ran(StaticString)
  /// The region that flipped a buffer ran and called `dma_buf_move_notify()`: run this
  /// importer's `move_notify` (for KVM, its zap, as steps of this same thread), then call
  /// ``DmaBufMovePath/importerReturned(dmabufCore:)``.
  case notify(DmaBufAttachment, revoked: Bool, StaticString)
  /// A lock is held by another context: nothing changed.
  case blocked(Wait)
  /// The path is over (its last region ran, `memory_lock` is released).
  case finished
}

/// Everything vfio-pci does under `memory_lock` held for write that revokes or restores the
/// device's dma-bufs (`vfio_pci_dma_buf_move()` in `drivers/vfio/pci/vfio_pci_dmabuf.c` and
/// its callers): decode and power writes, resets, device close, and (in `reviewed`) the TSM
/// state following the TDI.
///
/// Each step is one atomic region:
/// - `down_write(&vdev->memory_lock)`;
/// - in `reviewed`, for a private device whose TDI is locked or running, the TSM unbind
///   (TDISP STOP_INTERFACE, relayed to the TDX module) before anything is revoked;
/// - per buffer: `dma_resv_lock`, flip `revoked`, `dma_buf_move_notify()`; each importer's
///   `move_notify` then runs as steps of the same thread; then `dma_resv_unlock`;
/// - the device work (the config write, the reset, the disable);
/// - the restore of what is usable again, per buffer as above;
/// - `up_write(&vdev->memory_lock)`, in the same region as the last VFIO-local work.
public struct DmaBufMovePath: Hashable, Sendable {
  /// What started the path.
  public enum Trigger: Hashable, Sendable {
    case memoryDecode(enable: Bool)
    case power(PCIPowerState)
    case reset(VFIOPCIDriver.ResetKind)
    case close
    case tsmStateChanged
    /// The TSM stops a private device's interface (`vfio_pci_tsm_unbind()`): `reviewed` only.
    case tsmUnbind
  }

  enum Stage: Hashable, Sendable {
    case lock
    /// `reviewed`: stop the interface of a private device whose TDI is not unlocked (after
    /// the buffers are revoked and KVM has blocked their Secure-EPT entries).
    case unbindTSM
    /// As ``unbindTSM``, for a state change: only when this path revoked something.
    case unbindTSMIfRevoked
    /// `reviewed`: tell the importers of the buffers this path revoked once more, now that the
    /// interface is stopped (KVM unmaps the entries it blocked).
    case renotify
    /// Revoke what is live (`vfio_pci_dma_buf_move(vdev, true)`).
    case revoke
    /// The posted config-space FLR's second "move": revoke again if memory is enabled.
    case revokeIfEnabled
    /// Restore what is revoked, when the device's buffers are usable.
    case restore
    /// The trigger's next state for a private device's buffers (`reviewed`'s TSM link).
    case follow
    /// `vfio_pci_dma_buf_cleanup()`: revoke for good, forget the device, drop registrations.
    case cleanup
    case work
    /// Close's bookkeeping: the device is no longer open.
    case closed
    case unlock
  }

  /// One buffer being flipped: its resv is held from the flip until every importer returned.
  struct Flip: Hashable, Sendable {
    let buffer: DmaBufID
    let revoked: Bool
    /// Importers still to be told, in attachment order; the first is being told when
    /// ``awaiting`` is set.
    var pending: [DmaBufAttachment]
    var awaiting = false
  }

  public let device: VFIODeviceID
  public let ctx: ContextID
  public let trigger: Trigger
  /// Stages still to run, the current one first.
  var stages: [Stage]
  /// Buffers of the current revoke/restore stage still to look at.
  var buffers: [DmaBufID] = []
  var bufferStageStarted = false
  var flip: Flip?
  /// Buffers this path revoked (their importers are told again after a TSM unbind).
  var revokedHere: [DmaBufID] = []
  /// This path stopped the device's interface.
  var stoppedInterface = false

  init(device: VFIODeviceID, ctx: ContextID, trigger: Trigger, variant: Variant) {
    self.device = device
    self.ctx = ctx
    self.trigger = trigger
    // reviewed revokes first (KVM blocks the Secure-EPT entries: no vCPU can access or
    // accept them any more), then stops the interface, then tells the importers again (KVM
    // unmaps, which the module allows only once the interface is stopped). In rfc-v1 the TSM
    // stages do nothing.
    switch trigger {
    case .memoryDecode(enable: false), .power(.d3hot):
      stages = [.lock, .revoke, .unbindTSM, .renotify, .work, .restore, .unlock]
    case .memoryDecode(enable: true), .power(.d0):
      stages = [.lock, .work, .restore, .unlock]
    case .reset(let kind):
      // The posted config-space FLR calls the post-reset move with "revoke" instead of
      // "restore" (vfio_pci_dma_buf_move(vdev, true) twice): buffers stay revoked.
      let after: Stage = kind == .configFLR && variant == .rfcV1 ? .revokeIfEnabled : .restore
      stages = [.lock, .revoke, .unbindTSM, .renotify, .work, after, .unlock]
    case .close:
      stages = variant == .rfcV1
        ? [.lock, .work, .cleanup, .closed, .unlock]
        : [.lock, .cleanup, .unbindTSM, .renotify, .work, .closed, .unlock]
    case .tsmStateChanged:
      stages = [.lock, .follow, .unbindTSMIfRevoked, .renotify, .unlock]
    case .tsmUnbind:
      stages = [.lock, .revoke, .unbindTSM, .renotify, .unlock]
    }
  }

  /// Whether the path holds `memory_lock` (between its lock and unlock regions).
  public var holdsMemoryLock: Bool { stages.first != .lock && !stages.isEmpty }

  /// Runs the next region.
  public mutating func step<Sink: FunctionStateSink>(
    _ driver: inout VFIOPCIDriver, dmabufCore: inout DmaBufCore, sink: inout Sink, trace: inout Trace
  ) throws(LockViolation) -> DmaBufMoveAction {
    guard driver.devices[device] != nil else {
      throw LockViolation(lock: "vdev->memory_lock", message: "the device of a revoke path is gone")
    }
    if var current = flip {
      guard !current.awaiting else {
        throw LockViolation(lock: "dmabuf->resv", message: "step while an importer's move_notify is outstanding")
      }
      // Every importer has returned: dma_resv_unlock.
      try dmabufCore.unlockResv(current.buffer, context: ctx)
      trace.end(depth: 0)
      current.pending = []
      flip = nil
      return try finishRegion("dma_resv_unlock", &driver, &dmabufCore, &sink, &trace)
    }
    switch stages.first {
    case nil:
      return .finished
    case .lock:
      let lock = driver.devices[device]!.memoryLock
      if let wait = lock.writeWait(for: ctx) { return .blocked(wait) }
      _ = try driver.devices[device]!.memoryLock.tryLockWrite(ctx)
      stages.removeFirst()
      return try finishRegion("down_write(memory_lock)", &driver, &dmabufCore, &sink, &trace)
    case .unbindTSM, .unbindTSMIfRevoked, .work, .closed:
      let stage = stages.removeFirst()
      try runLocal(stage, &driver, &dmabufCore, &sink, &trace)
      return try finishRegion(stage == .work || stage == .closed ? regionName : "TSM unbind: STOP_INTERFACE, relay",
                              &driver, &dmabufCore, &sink, &trace)
    case .revoke, .revokeIfEnabled, .restore, .follow, .cleanup, .renotify:
      return try flipNext(&driver, &dmabufCore, &sink, &trace)
    case .unlock:
      try driver.devices[device]!.memoryLock.unlock(ctx)
      stages.removeFirst()
      return .ran("up_write(memory_lock)")
    }
  }

  /// The importer being told has returned from `move_notify` (its work, if any, is over).
  /// - Returns: the next importer of the same buffer to tell, if there is one.
  public mutating func importerReturned(dmabufCore: inout DmaBufCore) throws(LockViolation) -> DmaBufAttachment? {
    guard var current = flip, current.awaiting, !current.pending.isEmpty else {
      throw LockViolation(lock: "dmabuf->resv", message: "an importer returned that was not being told")
    }
    try dmabufCore.moveNotifyReturned(current.pending.removeFirst().id, context: ctx)
    current.awaiting = !current.pending.isEmpty
    flip = current
    return current.pending.first
  }

  /// Whether the buffer's importers are being told (the path holds its resv).
  public var revokedFlip: Bool? { flip?.revoked }

  /// What the next region can touch, for the explorer's footprints.
  public enum NextRegion: Hashable, Sendable {
    /// `down_write(memory_lock)`.
    case lockMemory
    /// The device's own work: the config write, the reset, the TSM unbind (and a trailing unlock).
    case deviceWork
    /// A buffer stage: the next buffer's flip, or on to the next stage.
    case flip
    /// `dma_resv_unlock` of this buffer (and a trailing unlock).
    case unlockResv(DmaBufID)
    /// `up_write(memory_lock)`.
    case unlockMemory
    /// Nothing: the path is over.
    case none
  }

  /// See ``NextRegion``.
  public var nextRegion: NextRegion {
    if let flip { return .unlockResv(flip.buffer) }
    switch stages.first {
    case nil: return .none
    case .lock: return .lockMemory
    case .unbindTSM, .unbindTSMIfRevoked, .work, .closed: return .deviceWork
    case .revoke, .revokeIfEnabled, .restore, .follow, .cleanup, .renotify: return .flip
    case .unlock: return .unlockMemory
    }
  }

  /// The buffers the next `.flip` region may take the resv of: those left in the stage, or,
  /// before the stage starts, those it will go through.
  public func flipCandidates(_ driver: VFIOPCIDriver) -> [DmaBufID] {
    if bufferStageStarted { return buffers }
    if stages.first == .renotify { return revokedHere }
    return driver.devices[device]?.dmabufs ?? []
  }

  private var regionName: StaticString {
    switch trigger {
    case .memoryDecode: "config write: command register"
    case .power: "config write: PMCSR"
    case .reset: "reset"
    case .close: "close device"
    case .tsmStateChanged: "TSM state"
    case .tsmUnbind: "TSM unbind"
    }
  }

  /// The stage's VFIO-local work.
  private mutating func runLocal<Sink: FunctionStateSink>(
    _ stage: Stage, _ driver: inout VFIOPCIDriver, _ dmabufCore: inout DmaBufCore, _ sink: inout Sink,
    _ trace: inout Trace
  ) throws(LockViolation) {
    try driver.devices[device]!.memoryLock.assertHeldWrite(by: ctx)
    let id = device
    switch stage {
    case .unbindTSM, .unbindTSMIfRevoked:
      // Ends the TDI's trusted state before its MMIO goes away (vfio_pci_tsm_unbind() in later
      // series): TDISP STOP_INTERFACE for a private device whose interface is not unlocked, so
      // the TD's Secure-EPT entries, blocked by the revoke just done, may be unmapped. The
      // posted RFC has no such step.
      guard needsUnbind(stage, driver) else { return }
      trace.emit(.vfioTSMUnbind, "TSM unbind of vfio-dev\(id.rawValue) after the revoke blocked its MMIO", [driver.traceDevice(id)])
      do { try driver.devices[id]!.function.tdispStopInterface(trace: &trace) } catch {
        // STOP_INTERFACE is answered in every state by a function with a TDI.
        throw LockViolation(lock: "vdev->memory_lock", message: "STOP_INTERFACE refused: \(error.name)")
      }
      stoppedInterface = true
      try sink.functionChanged(id, driver.devices[id]!.function, trace: &trace)
    case .work:
      switch trigger {
      case .memoryDecode(let enable):
        var command = driver.devices[id]!.function.command
        if enable { command.insert(.memorySpace) } else { command.remove(.memorySpace) }
        driver.devices[id]!.function.writeCommand(command, trace: &trace)
      case .power(let state):
        driver.devices[id]!.function.writePowerState(state, trace: &trace)
      case .reset(let kind):
        trace.emit(.vfioReset, "\(kind.rawValue) of vfio-dev\(id.rawValue)", [driver.traceDevice(id), .text("kind", kind.rawValue)])
        // pci_try_reset_function() / the bus reset save and restore config space around the
        // reset, so the command register the user set survives; the TDI does not.
        let saved = driver.devices[id]!.function.command
        driver.noteReset(of: id, dmabufCore: dmabufCore, trace: &trace)
        switch kind {
        case .ioctl, .configFLR: driver.devices[id]!.function.functionLevelReset(trace: &trace)
        case .hotReset: driver.devices[id]!.function.conventionalReset(trace: &trace)
        }
        driver.devices[id]!.function.writeCommand(saved, trace: &trace)
      case .close:
        // vfio_pci_core_disable(): bus mastering off, memory decode off, then a function reset.
        trace.emit(.vfioDisable, "disable and reset vfio-dev\(id.rawValue)", [driver.traceDevice(id)])
        driver.devices[id]!.function.writeCommand([], trace: &trace)
        driver.noteReset(of: id, dmabufCore: dmabufCore, trace: &trace)
        driver.devices[id]!.function.functionLevelReset(trace: &trace)
      case .tsmStateChanged, .tsmUnbind:
        return
      }
      try sink.functionChanged(id, driver.devices[id]!.function, trace: &trace)
    case .closed:
      driver.devices[id]!.openCount = 0
      driver.devices[id]!.binding = nil
      driver.devices[id]!.hostMappings = []
    default:
      break
    }
  }

  /// Whether a TSM stage stops the interface now.
  private func needsUnbind(_ stage: Stage, _ driver: VFIOPCIDriver) -> Bool {
    guard driver.variant == .reviewed, let device = driver.devices[device], device.isPrivate,
          let state = device.function.tdi?.state, state != .configUnlocked else { return false }
    return stage == .unbindTSM || !revokedHere.isEmpty
  }

  /// The buffers a flipping stage looks at, and the state it flips them to (`nil`: skip).
  private func target(_ stage: Stage, _ buffer: VFIOPCIDmaBuf, _ driver: VFIOPCIDriver) -> Bool? {
    switch stage {
    case .renotify: stoppedInterface && revokedHere.contains(buffer.buffer) ? true : nil
    case .revoke: buffer.revoked ? nil : true
    case .revokeIfEnabled: driver.devices[device]!.memoryEnabled && !buffer.revoked ? true : nil
    case .restore: driver.buffersUsable(device) && buffer.revoked ? false : nil
    case .follow:
      driver.buffersUsable(device) == !buffer.revoked ? nil : !driver.buffersUsable(device)
    case .cleanup: true
    default: nil
    }
  }

  /// The next buffer of a revoke/restore stage: one region that takes its resv, flips it and
  /// calls `dma_buf_move_notify()`; or, when no buffer is left to flip, on to the next stage.
  private mutating func flipNext<Sink: FunctionStateSink>(
    _ driver: inout VFIOPCIDriver, _ dmabufCore: inout DmaBufCore, _ sink: inout Sink, _ trace: inout Trace
  ) throws(LockViolation) -> DmaBufMoveAction {
    let stage = stages[0]
    if !bufferStageStarted {
      buffers = stage == .renotify ? revokedHere : driver.devices[device]!.dmabufs
      bufferStageStarted = true
    }
    while let buffer = buffers.first {
      // `if (!get_file_active(&priv->dmabuf->file)) continue;`: a buffer whose last file
      // reference is gone is being released (its release waits for memory_lock to leave the
      // list); nobody can map it any more, so the move and the cleanup pass it by.
      guard let priv = driver.dmabufs[buffer], dmabufCore.buffer(buffer) != nil,
            let revoked = target(stage, priv, driver) else {
        buffers.removeFirst()
        continue
      }
      if let wait = dmabufCore.resvWait(buffer: buffer, context: ctx) { return .blocked(wait) }
      buffers.removeFirst()
      guard try dmabufCore.lockResv(buffer, context: ctx) else {
        throw LockViolation(lock: "dmabuf\(buffer.rawValue)->resv", message: "free lock not granted")
      }
      let cleanup = stage == .cleanup
      if stage == .renotify {
        trace.emit(.vfioDmaBufRenotify, "dmabuf\(buffer.rawValue): the interface is stopped, tell importers again",
                   [driver.traceDevice(device), .id("buffer", buffer)])
      } else {
        driver.dmabufs[buffer]!.revoked = revoked
        if revoked, !revokedHere.contains(buffer) { revokedHere.append(buffer) }
        if cleanup {
          driver.dmabufs[buffer]!.device = nil
          driver.devices[device]!.registrations -= 1
        }
        trace.emit(.vfioDmaBufMove, "\(revoked ? "revoke" : "restore") dmabuf\(buffer.rawValue)\(cleanup ? " for good" : "")",
                   [driver.traceDevice(device), .id("buffer", buffer), .flag("revoked", revoked), .flag("for_good", cleanup)])
      }
      // The buffer's revoke (or restore, or renotify) is a slice: its importers' move_notify
      // runs inside it, until the resv lock is dropped.
      trace.begin("\(stage == .renotify ? "renotify" : revoked ? "revoke" : "restore") dmabuf\(buffer.rawValue)", depth: 0)
      let notified = try dmabufCore.moveNotify(buffer, context: ctx, trace: &trace)
      if let first = notified.first {
        flip = Flip(buffer: buffer, revoked: revoked, pending: notified, awaiting: true)
        return .notify(first, revoked: revoked, "dma_resv_lock, flip, move_notify")
      }
      try dmabufCore.unlockResv(buffer, context: ctx)
      trace.end(depth: 0)
      return try finishRegion("dma_resv_lock, flip, move_notify, dma_resv_unlock", &driver, &dmabufCore, &sink, &trace)
    }
    if stage == .cleanup { driver.devices[device]!.dmabufs = [] }
    stages.removeFirst()
    bufferStageStarted = false
    // Nothing was flipped: no region ran; go on to the next stage within this step.
    return try step(&driver, dmabufCore: &dmabufCore, sink: &sink, trace: &trace)
  }

  /// Ends a region: what follows it that needs no lock and does nothing (stages with nothing
  /// to flip) is skipped, and a trailing `up_write(memory_lock)` is done in the same region.
  private mutating func finishRegion<Sink: FunctionStateSink>(
    _ name: StaticString, _ driver: inout VFIOPCIDriver, _ dmabufCore: inout DmaBufCore,
    _ sink: inout Sink, _ trace: inout Trace
  ) throws(LockViolation) -> DmaBufMoveAction {
    while let stage = stages.first {
      switch stage {
      case .unlock:
        try driver.devices[device]!.memoryLock.unlock(ctx)
        stages.removeFirst()
        return .ran(name)
      case .revoke, .revokeIfEnabled, .restore, .follow, .renotify:
        let candidates = bufferStageStarted ? buffers : stage == .renotify ? revokedHere : driver.devices[device]!.dmabufs
        let anything = candidates.contains { id in
          driver.dmabufs[id].map { target(stage, $0, driver) != nil } ?? false
        }
        guard !anything else { return .ran(name) }
        stages.removeFirst()
        bufferStageStarted = false
      case .unbindTSM, .unbindTSMIfRevoked:
        guard needsUnbind(stage, driver) else {
          stages.removeFirst()
          continue
        }
        return .ran(name)
      default:
        return .ran(name)
      }
    }
    return .ran(name)
  }
}
