import KernelCore
import PCI
import DmaBuf
import VFIO

extension Machine {
  /// Routes one operation to its subsystem. Every path validates before it commits.
  mutating func dispatch(_ op: Operation, context: ContextID) throws(OpFailure) -> OpValue {
    do {
      switch op {
      case .vfioOpen, .vfioBindIOMMUFD, .vfioClose, .vfioRegionInfo, .vfioRead, .vfioWrite, .vfioMmap,
           .vfioSetMemoryDecode, .vfioReset, .vfioFLR, .vfioHotReset, .vfioSetPower, .vfioDmaBuf:
        return try performVFIO(op, context: context)
      case .dmabufAttach, .dmabufDetach, .dmabufPin, .dmabufGetPfn, .dmabufClose:
        return try performDmaBuf(op, context: context)
      case .tdispLock, .tdispStart, .tdispStop, .tdispReport, .pciFLR, .pciWriteCommand:
        return try performPCI(op, context: context)
      case .kvmCreateVM, .kvmCreateVCPU, .kvmSetUserMemoryRegion2, .kvmDestroyVM, .guestRead, .guestWrite,
           .guestAcceptMMIO:
        return try performKVM(op, context: context)
      case .tdxDevifCreate, .tdxDevifRemove, .tdxMMIOMTAdd, .tdxStreamBlock, .tdxSeamcall:
        return try performTDX(op)
      }
    } catch let failure as OpFailure {
      throw failure
    } catch let errno as Errno {
      throw .errno(errno)
    } catch {
      throw .errno(.EIO)
    }
  }

  // MARK: VFIO

  mutating func performVFIO(_ op: Operation, context: ContextID) throws(OpFailure) -> OpValue {
    do throws(Errno) {
      switch op {
      case .vfioOpen(let name):
        let id = try device(named: name)
        try requireFreeFD()
        let file = try vfio.openCdev(id, trace: &trace)
        return .fd(try files.install(.vfioDevice(file)))

      case .vfioBindIOMMUFD(let fd, let isPrivate, let vmFD):
        let file = try vfioFile(fd)
        let vmID = try vmFD.map { (fd) throws(Errno) in try vm(fd) }
        try vfio.bindIOMMUFD(file, flags: isPrivate ? .private : [], vm: vmID, trace: &trace)
        return .none

      case .vfioClose(let fd):
        return try close(fd, context: context)

      case .vfioRegionInfo(let fd, let index):
        let info = try vfio.regionInfo(try vfioFile(fd), index: index)
        return .regionInfo(flags: info.flags.names, size: info.size, offset: info.offset)

      case .vfioRead(let fd, let index, let offset, let size),
           .vfioWrite(let fd, let index, let offset, let size):
        let isWrite = if case .vfioWrite = op { true } else { false }
        let value = try vfio.regionAccess(try vfioFile(fd), index: index, offset: offset, size: size,
                                          isWrite: isWrite, trace: &trace)
        return isWrite ? .none : .read(value)

      case .vfioMmap(let fd, let index):
        try vfio.mmap(try vfioFile(fd), index: index, trace: &trace)
        return .none

      case .vfioSetMemoryDecode(let fd, let enable):
        try vfio.setMemoryDecode(try vfioFile(fd), enable: enable, context: context,
                                 dmabufCore: &dmabufCore, sink: &kvm, trace: &trace)
        return .none

      case .vfioReset(let fd), .vfioFLR(let fd), .vfioHotReset(let fd):
        let kind: VFIOPCIDriver.ResetKind = switch op {
        case .vfioReset: .ioctl
        case .vfioFLR: .configFLR
        default: .hotReset
        }
        try vfio.reset(try vfioFile(fd), kind: kind, context: context, dmabufCore: &dmabufCore,
                       sink: &kvm, trace: &trace)
        return .none

      case .vfioSetPower(let fd, let state):
        try vfio.setPowerState(try vfioFile(fd), state: state == .d0 ? .d0 : .d3hot, context: context,
                               dmabufCore: &dmabufCore, sink: &kvm, trace: &trace)
        return .none

      case .vfioDmaBuf(let fd, let index, let ranges, let openFlags, let flags):
        let file = try vfioFile(fd)
        try requireFreeFD()
        let request = VFIODeviceFeatureDmaBuf(
          regionIndex: index, openFlags: openFlags, flags: flags,
          ranges: ranges.map { VFIODmaRange(regionIndex: index, offset: $0.offset, length: $0.length) })
        let buffer = try vfio.exportDmaBuf(file, request: request, dmabufCore: &dmabufCore, trace: &trace)
        return .fd(try files.install(.dmaBuf(buffer)))

      default:
        throw .EINVAL
      }
    } catch {
      throw .errno(error)
    }
  }

  /// `close(fd)`: drops the fd's reference on its file and releases what was last.
  mutating func close(_ fd: FD, context: ContextID) throws(Errno) -> OpValue {
    switch try files.lookup(fd) {
    case .vfioDevice(let file):
      _ = try files.remove(fd)
      try vfio.release(file, context: context, dmabufCore: &dmabufCore, sink: &kvm, trace: &trace)
    case .dmaBuf(let buffer):
      _ = try files.remove(fd)
      trace.emit(.dmabuf, "close dmabuf\(buffer.rawValue) (\(fd))")
      if let released = dmabufCore.put(buffer, trace: &trace) {
        vfio.releaseDmaBuf(released.id, trace: &trace)
      }
    case .vm(let id):
      _ = try files.remove(fd)
      destroyVM(id, context: context)
    }
    return .none
  }

  // MARK: dma-buf

  mutating func performDmaBuf(_ op: Operation, context: ContextID) throws(OpFailure) -> OpValue {
    do throws(Errno) {
      switch op {
      case .dmabufAttach(let fd, let importer, let dynamic, let peer2peer):
        let buffer = try dmaBuf(fd)
        let ops = ImporterOps(dynamic: dynamic, hasMoveNotify: dynamic, allowPeer2Peer: peer2peer)
        return .attachment(try dmabufCore.attach(buffer, importer: importer, ops: ops, exporter: vfio, trace: &trace))

      case .dmabufDetach(let attachment):
        if let released = try dmabufCore.detach(attachment, trace: &trace) {
          vfio.releaseDmaBuf(released.id, trace: &trace)
        }
        return .none

      case .dmabufPin(let attachment):
        try dmabufCore.pin(attachment, exporter: vfio)
        return .none

      case .dmabufGetPfn(let attachment, let pgoff):
        let lookup = try lookupPfn(attachment, pgoff: pgoff, context: context)
        trace.emit(.dmabuf, "get_pfn attachment \(attachment.rawValue) pgoff \(pgoff.rawValue) -> pfn \(lookup.pfn) order \(lookup.order)")
        return .pfn(lookup.pfn, order: lookup.order)

      case .dmabufClose(let fd):
        guard case .dmaBuf = try files.lookup(fd) else { throw .EINVAL }
        return try close(fd, context: context)

      default:
        throw .EINVAL
      }
    } catch {
      throw .errno(error)
    }
  }

  /// The importer-facing PFN lookup as each variant orders it against `move_notify`: the RFC's
  /// `dma_buf_get_pfn_unlocked()` (resv lock only around the callback), or the reviewed
  /// lookup under the resv lock, which the caller takes and drops around it here. Both are one
  /// atomic region: another context's revoke holds resv across its flip and notify, so a
  /// lookup sees the buffer before or after it, and the fault's sequence check does the rest.
  func lookupPfn(_ attachment: AttachmentID, pgoff: PageIndex, context: ContextID) throws(Errno) -> PFNLookup {
    switch variant {
    case .rfcV1:
      return try dmabufCore.getPfnUnlocked(attachment, pgoff: pgoff, context: context, exporter: vfio)
    case .reviewed:
      return try dmabufCore.getPfnWithResv(attachment, pgoff: pgoff, context: context, exporter: vfio)
    }
  }

  // MARK: PCI and TDISP

  mutating func performPCI(_ op: Operation, context: ContextID) throws(OpFailure) -> OpValue {
    switch op {
    case .tdispLock(let name):
      let id = try pciDevice(named: name)
      _ = try tdisp(id) { (f: inout PCIFunction, t: inout Trace) throws(TDISPError) in try f.tdispLockInterface(trace: &t) }
      return .tdiState(try tdiStateName(id))
    case .tdispStart(let name, let choice):
      let id = try pciDevice(named: name)
      try tdisp(id) { (f: inout PCIFunction, t: inout Trace) throws(TDISPError) in
        // The device's nonce, echoed back or not: what a TSM that did or did not see the LOCK
        // response would send.
        let issued = f.tdi?.issuedStartNonce ?? TDISPNonce(rawValue: 0)
        try f.tdispStartInterface(nonce: choice == .echo ? issued : issued.complement, trace: &t)
      }
      return .tdiState(try tdiStateName(id))
    case .tdispStop(let name):
      let id = try pciDevice(named: name)
      try tdisp(id) { (f: inout PCIFunction, t: inout Trace) throws(TDISPError) in try f.tdispStopInterface(trace: &t) }
      return .tdiState(try tdiStateName(id))
    case .tdispReport(let name):
      let id = try pciDevice(named: name)
      guard let function = vfio.device(id)?.function else { throw .errno(.ENODEV) }
      do {
        let report = try function.tdispInterfaceReport()
        return .report(report.mmioRanges.map(\.description))
      } catch {
        throw .tdisp(code: error.code, name: error.name)
      }
    case .pciFLR(let name):
      let id = try pciDevice(named: name)
      // A reset from outside VFIO (sysfs `reset`): pci_reset_function() saves and restores
      // config space, and vfio-pci has no reset_prepare/reset_done hooks to revoke around it.
      vfio.noteReset(of: id, dmabufCore: dmabufCore, trace: &trace)
      do {
        try vfio.withFunction(of: id) { (f: inout PCIFunction) throws(Errno) in
          let saved = f.command
          f.functionLevelReset(trace: &trace)
          f.writeCommand(saved, trace: &trace)
        }
      } catch { throw .errno(error) }
      relayTDIState(id)
      return .none
    case .pciWriteCommand(let name, let memory, let busMaster):
      let id = try pciDevice(named: name)
      do {
        try vfio.withFunction(of: id) { (f: inout PCIFunction) throws(Errno) in
          var command = f.command
          if let memory { if memory { command.insert(.memorySpace) } else { command.remove(.memorySpace) } }
          if let busMaster { if busMaster { command.insert(.busMaster) } else { command.remove(.busMaster) } }
          f.writeCommand(command, trace: &trace)
        }
      } catch { throw .errno(error) }
      relayTDIState(id)
      return .none
    default:
      throw .errno(.EINVAL)
    }
  }

  /// Tells the TDX module (through the TSM) the device's TDI state after a host-side change,
  /// then lets VFIO bring private buffers in line with it.
  mutating func relayTDIState(_ id: VFIODeviceID, context: ContextID = .ioctl) {
    if let function = vfio.device(id)?.function { kvm.observe(id, function, trace: &trace) }
    try? vfio.tsmStateChanged(id, context: context, dmabufCore: &dmabufCore, sink: &kvm, trace: &trace)
  }

  /// Runs a TDISP request on a device's function; a device without TDISP answers `ENODEV`.
  @discardableResult
  mutating func tdisp<R>(_ id: VFIODeviceID, _ body: (inout PCIFunction, inout Trace) throws(TDISPError) -> R) throws(OpFailure) -> R {
    guard let function = vfio.device(id)?.function else { throw .errno(.ENODEV) }
    guard function.tdi != nil else { throw .errno(.ENODEV) }
    var updated = function
    let result: R
    do { result = try body(&updated, &trace) } catch { throw .tdisp(code: error.code, name: error.name) }
    try? vfio.withFunction(of: id) { (f: inout PCIFunction) throws(Errno) in f = updated }
    relayTDIState(id)
    return result
  }

  func tdiStateName(_ id: VFIODeviceID) throws(OpFailure) -> String {
    guard let state = vfio.device(id)?.function.tdi?.state else { throw .errno(.ENODEV) }
    return state.specName
  }
}
