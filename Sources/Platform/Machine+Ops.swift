import KernelCore
import PCI
import DmaBuf
import VFIO
import KVM
import TDX

extension Machine {
  /// Runs an operation that is one atomic region (the caller checked the locks it needs).
  mutating func oneRegion(_ op: Operation) -> OpResult {
    do throws(OpFailure) {
      return .success(try oneRegionValue(op))
    } catch {
      return .failure(error)
    }
  }

  private mutating func oneRegionValue(_ op: Operation) throws(OpFailure) -> OpValue {
    switch op {
    case .vfioOpen(let name):
      return try errno { () throws(Errno) in
        let id = try device(named: name, by: "vfio_device_fops_cdev_open")
        try requireFreeFD()
        let file = try vfio.openCdev(id, trace: &trace)
        return .fd(try files.install(.vfioDevice(file)))
      }

    case .vfioBindIOMMUFD(let fd, let isPrivate, let vmFD, let token):
      return try errno { () throws(Errno) in
        let file = try vfioFile(fd)
        let flags = (isPrivate ? VFIOBindFlags.private(variant) : []).union(token ? .token : [])
        let machine = self
        try vfio.bindIOMMUFD(file, flags: flags, resolvingVM: { () throws(Errno) in
          try vmFD.map { (fd) throws(Errno) in try machine.vm(fd, .other, lookedUpBy: "iommufd_ctx_from_fd") }
        }, trace: &trace)
        return .none
      }

    case .vfioRegionInfo(let fd, let index):
      return try errno { () throws(Errno) in
        let info = try vfio.regionInfo(try vfioFile(fd), index: index)
        return .regionInfo(flags: info.flags.names, size: info.size, offset: info.offset)
      }

    case .vfioRead(let fd, let index, let offset, let size), .vfioWrite(let fd, let index, let offset, let size, _):
      let isWrite = if case .vfioWrite = op { true } else { false }
      let stored: UInt64 = if case .vfioWrite(_, _, _, _, let value) = op { value } else { 0 }
      return try errno { () throws(Errno) in
        let value = try vfio.regionAccess(try vfioFile(fd, .positional(write: isWrite)), index: index, offset: offset, size: size,
                                          isWrite: isWrite, value: stored, trace: &trace)
        return isWrite ? .none : .read(value)
      }

    case .vfioMmap(let fd, let index):
      return try errno { () throws(Errno) in
        // kvm_gmem_mmap() maps a guest_memfd created with GUEST_MEMFD_FLAG_MMAP (its shared
        // pages); the model keeps no user mappings of guest memory.
        if case .guestMemfd(let vm, let id)? = files[fd], kvm.vms[vm]?.guestMemfds[id]?.flags.contains(.mmap) == true {
          return .none
        }
        try vfio.mmap(try vfioFile(fd, .mmap), index: index, trace: &trace)
        return .none
      }

    case .vfioDmaBuf(let fd, let index, let ranges, let openFlags, let flags):
      return try errno { () throws(Errno) in
        let file = try vfioFile(fd)
        try requireFreeFD()
        let request = VFIODeviceFeatureDmaBuf(
          regionIndex: index, openFlags: openFlags, flags: flags,
          ranges: ranges.map { VFIODmaRange(regionIndex: index, offset: $0.offset, length: $0.length) })
        let buffer = try vfio.exportDmaBuf(file, request: request, dmabufCore: &dmabufCore, trace: &trace)
        return .fd(try files.install(.dmaBuf(buffer)))
      }

    case .dmabufAttach(let fd, let importer, let dynamic, let peer2peer):
      return try errno { () throws(Errno) in
        let buffer = try dmaBuf(fd)
        let ops = ImporterOps(dynamic: dynamic, hasMoveNotify: dynamic, allowPeer2Peer: peer2peer)
        return .attachment(try dmabufCore.attach(buffer, importer: importer, ops: ops, exporter: vfio, trace: &trace))
      }

    case .dmabufPin(let attachment):
      return try errno { () throws(Errno) in
        try dmabufCore.pin(attachment, exporter: vfio)
        return .none
      }

    case .dmabufGetPfn(let attachment, let pgoff):
      return try errno { () throws(Errno) in
        let lookup = try lookupPfn(attachment, pgoff: pgoff)
        trace.emit(.dmabufGetPfn, "get_pfn attachment \(attachment.rawValue) pgoff \(pgoff.rawValue) -> pfn \(lookup.pfn) order \(lookup.order)",
                   [.id("attachment", attachment), .hex("pgoff", pgoff.rawValue), .hex("pfn", lookup.pfn.rawValue), .int("order", lookup.order)])
        return .pfn(lookup.pfn, order: lookup.order)
      }

    case .tdispReport(let name):
      let id = try pciDevice(named: name, by: "pci_tsm")
      guard let function = vfio.device(id)?.function else {
        throw .errno(Errno.ENODEV.because("pci_tsm", "vfio-pci has no device \(name)"))
      }
      do {
        let report = try function.tdispInterfaceReport()
        return .report(report.mmioRanges.map(\.description))
      } catch {
        throw .tdisp(code: error.code, name: error.name)
      }

    case .kvmCreateVM(let type): return try createVM(type)
    case .kvmCheckExtension(let vmFD, let number): return .read(try checkExtension(vm: vmFD, number))
    case .kvmCreateGuestMemfd(let vmFD, let size, let flags): return try createGuestMemfd(vmFD, size: size, flags: flags)
    case .kvmCreateVCPU(let vmFD, let vcpu): return try createVCPU(vmFD, vcpu)
    case .tdxDevifCreate(let vmFD, let name): return try tdxDevifCreate(vmFD, device: name)
    case .tdxDevifRemove(let vmFD, let name): return try tdxDevifRemove(vmFD, device: name)
    case .tdxMMIOMTAdd(let name): return try tdxMMIOMTAdd(device: name)
    case .tdxStreamBlock(let name): return try tdxStreamBlock(device: name)
    case .tdxSeamcall(let leaf, let args): return try tdxSeamcall(leaf, args)

    case .vfioClose, .dmabufDetach, .vfioSetMemoryDecode, .vfioReset, .vfioFLR, .vfioHotReset, .vfioSetPower, .dmabufClose,
         .tdispLock, .tdispStart, .tdispStop, .pciFLR, .pciWriteCommand, .kvmSetUserMemoryRegion2, .kvmDestroyVM,
         .guestRead, .guestWrite, .guestAcceptMMIO, .kvmSetUserMemoryRegion, .kvmSetMemoryAttributes:
      // Paths, begun by `begin(_:frame:thread:choices:)`; never one region.
      throw .lockViolation(LockViolation(lock: "thread", message: "\(op.name) run as one region"))
    }
  }

  /// The importer-facing PFN lookup as each variant orders it against `move_notify`: the RFC's
  /// `dma_buf_get_pfn_unlocked()` (resv lock only around the callback), or the reviewed
  /// lookup under the resv lock, which the importer takes and drops around it. Both are one
  /// atomic region: another context's revoke holds resv across its flip and notify, so a
  /// lookup sees the buffer before or after it, and the fault's sequence check does the rest.
  func lookupPfn(_ attachment: AttachmentID, pgoff: PageIndex) throws(Errno) -> PFNLookup {
    switch variant {
    case .rfcV1: try dmabufCore.getPfnUnlocked(attachment, pgoff: pgoff, exporter: vfio)
    case .reviewed: try dmabufCore.getPfnWithResv(attachment, pgoff: pgoff, exporter: vfio)
    }
  }

  // MARK: close

  /// `close(fd)`: the fd goes at once; when that was the last reference to its file, the
  /// file's release runs as a path (a VFIO device's close revokes its buffers; a dma-buf's
  /// release leaves its device's list under `memory_lock`; a VM's destroy detaches every
  /// dma-buf slot).
  mutating func close(_ fd: FD, op: Operation, frame: inout Frame, ctx: ContextID) throws(LockViolation) -> FrameStep {
    let label = Self.label(op)
    let file: OpenFile
    do { file = try files.lookup(fd, by: "sys_close") } catch { return .ranAndReturned(label, .failure(.errno(error))) }
    // kvm_gmem_release() takes slots_lock, and mmu_lock when a slot is bound to the file; the
    // close waits for them before the fd goes.
    if case .guestMemfd(let vm, let id) = file, let state = kvm.vms[vm],
       let wait = state.slotsLock.wait(for: ctx) ?? (state.releaseTakesMMULock(id) ? state.mmuLock.writeWait(for: ctx) : nil) {
      return .blocked(wait)
    }
    // close(2) takes any open fd: `dmabuf.close` and `kvm.destroy_vm` name what the scenario
    // means to close, but the kernel does not check the kind.
    do { _ = try files.remove(fd) } catch { return .ranAndReturned(label, .failure(.errno(error))) }
    switch file {
    case .vfioDevice(let id):
      let path: DmaBufMovePath?
      do { path = try vfio.release(id, context: ctx, trace: &trace) } catch {
        return .ranAndReturned(label, .failure(.errno(error)))
      }
      guard let path else { return .ranAndReturned(label, .success(.none)) }
      frame = .dmaBufMove(path, result: .success(.none))
      return .ran(label)
    case .dmaBuf(let buffer):
      trace.emit(.dmabufClose, "close dmabuf\(buffer.rawValue) (\(fd))", [.id("buffer", buffer), .fd(fd)])
      guard let released = dmabufCore.put(buffer, trace: &trace) else { return .ranAndReturned(label, .success(.none)) }
      frame = .dmaBufRelease(VFIOPCIDmaBufRelease(buffer: released.id))
      return .ran(label)
    case .vm(let id):
      // A guest_memfd holds a reference to its VM (kvm_get_kvm() in __kvm_gmem_create()), and
      // so does every ioctl in flight on it (fdget()): kvm_destroy_vm() runs when the last of
      // them is dropped, on the thread that drops it.
      guard !vmReferenced(id), kvm.inFlight[id] == nil else { return .ranAndReturned(label, .success(.none)) }
      frame = .destroyVM(KVMDestroyVM(vm: id))
      return .ran(label)
    case .guestMemfd(let vm, let id):
      let unmapped: UInt64
      do { unmapped = try kvm.vms[vm]?.releaseGuestMemfd(id, ctx: ctx) ?? 0 } catch {
        return .ranAndReturned(label, .failure(.lockViolation(error)))
      }
      trace.emit(.kvmGmemRelease, "vm\(vm.rawValue): kvm_gmem_release guest_memfd \(id): bindings cleared, \(unmapped) page(s) unmapped",
                 [.vm(vm), .text("gmem", "\(id)"), .int("unmapped", unmapped)])
      // kvm_put_kvm(): the file's reference to its VM may be the last one.
      guard kvm.vms[vm] != nil, !vmReferenced(vm), kvm.inFlight[vm] == nil else {
        return .ranAndReturned(label, .success(.none))
      }
      frame = .destroyVM(KVMDestroyVM(vm: vm))
      return .ran(label)
    }
  }

  /// Whether an fd still refers to `vm`, itself or through one of its guest_memfd files.
  func vmReferenced(_ vm: VMID) -> Bool {
    files.contains { file in
      switch file {
      case .vm(let id), .guestMemfd(let id, _): id == vm
      case .vfioDevice, .dmaBuf: false
      }
    }
  }

  // MARK: PCI and TDISP

  /// The region of a TDISP request or a config change from outside VFIO: the device's answer,
  /// relayed to the TDX module; the caller then lets VFIO bring private buffers in line.
  /// - Returns: the result, and the device whose TDI state may have moved.
  mutating func tdispOrConfigRegion(_ op: Operation) -> (OpResult, VFIODeviceID?) {
    do throws(OpFailure) {
      switch op {
      case .tdispLock(let name):
        let id = try pciDevice(named: name, by: "pci_tsm")
        _ = try tdisp(id) { (f: inout PCIFunction, t: inout Trace) throws(TDISPError) in try f.tdispLockInterface(trace: &t) }
        return (.success(.tdiState(try tdiStateName(id))), id)
      case .tdispStart(let name, let choice):
        let id = try pciDevice(named: name, by: "pci_tsm")
        try tdisp(id) { (f: inout PCIFunction, t: inout Trace) throws(TDISPError) in
          // The device's nonce, echoed back or not: what a TSM that did or did not see the LOCK
          // response would send.
          let issued = f.tdi?.issuedStartNonce ?? TDISPNonce(rawValue: 0)
          try f.tdispStartInterface(nonce: choice == .echo ? issued : issued.complement, trace: &t)
        }
        return (.success(.tdiState(try tdiStateName(id))), id)
      case .tdispStop(let name):
        let id = try pciDevice(named: name, by: "pci_tsm")
        try tdisp(id) { (f: inout PCIFunction, t: inout Trace) throws(TDISPError) in try f.tdispStopInterface(trace: &t) }
        return (.success(.tdiState(try tdiStateName(id))), id)
      case .pciFLR(let name):
        let id = try pciDevice(named: name, by: "pci_reset_function")
        // A reset from outside VFIO (sysfs `reset`): pci_reset_function() saves and restores
        // config space, and vfio-pci has no reset_prepare/reset_done hooks to revoke around it.
        vfio.noteReset(of: id, dmabufCore: dmabufCore, trace: &trace)
        try errno { () throws(Errno) in
          try vfio.withFunction(of: id) { (f: inout PCIFunction) throws(Errno) in
            let saved = f.command
            f.functionLevelReset(trace: &trace)
            f.writeCommand(saved, trace: &trace)
          }
        }
        try relayTDIState(id)
        return (.success(.none), id)
      case .pciWriteCommand(let name, let memory, let busMaster):
        let id = try pciDevice(named: name, by: "pci_write_config_word")
        try errno { () throws(Errno) in
          try vfio.withFunction(of: id) { (f: inout PCIFunction) throws(Errno) in
            var command = f.command
            if let memory { if memory { command.insert(.memorySpace) } else { command.remove(.memorySpace) } }
            if let busMaster { if busMaster { command.insert(.busMaster) } else { command.remove(.busMaster) } }
            f.writeCommand(command, trace: &trace)
          }
        }
        try relayTDIState(id)
        return (.success(.none), id)
      default:
        throw .lockViolation(LockViolation(lock: "thread", message: "\(op.name) is not a TDISP or config op"))
      }
    } catch {
      return (.failure(error), nil)
    }
  }

  /// Tells the TDX module (through the TSM) the device's TDI state after a host-side change.
  mutating func relayTDIState(_ id: VFIODeviceID) throws(OpFailure) {
    guard let function = vfio.device(id)?.function else { return }
    do { try kvm.observe(id, function, trace: &trace) } catch { throw .lockViolation(error) }
  }

  /// Runs a TDISP request on a device's function; a device without TDISP answers `ENODEV`.
  @discardableResult
  mutating func tdisp<R>(_ id: VFIODeviceID, _ body: (inout PCIFunction, inout Trace) throws(TDISPError) -> R) throws(OpFailure) -> R {
    guard let function = vfio.device(id)?.function, function.tdi != nil else {
      throw .errno(Errno.ENODEV.because("pci_tsm", "the device has no TDISP interface"))
    }
    var updated = function
    let result: R
    do { result = try body(&updated, &trace) } catch { throw .tdisp(code: error.code, name: error.name) }
    try errno { () throws(Errno) in try vfio.withFunction(of: id) { (f: inout PCIFunction) throws(Errno) in f = updated } }
    try relayTDIState(id)
    return result
  }

  func tdiStateName(_ id: VFIODeviceID) throws(OpFailure) -> String {
    guard let state = vfio.device(id)?.function.tdi?.state else {
      throw .errno(Errno.ENODEV.because("pci_tsm", "the device has no TDISP interface"))
    }
    return state.specName
  }
}
