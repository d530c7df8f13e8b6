import KernelCore
import PCI
import DmaBuf
import VFIO
import KVM
import TDX

extension Machine {
  /// The first step of an operation: validate its handles and either run it as one atomic
  /// region (most ioctls), or turn the frame into its path and run the path's first region.
  /// Every operation has a case here; none falls through to an errno.
  mutating func begin(_ op: Operation, frame: inout Frame, thread: KernelThread,
                      choices: inout Contention) throws(LockViolation) -> FrameStep {
    let ctx = thread.context
    switch op {
    // MARK: One region, no lock another path holds across regions
    // The TDX Connect host calls (DEVIF create and remove, MMIOMT add, the stream block) are
    // one SEAMCALL each from the TSM, which holds no VFIO or KVM lock around them: the module
    // serialises them itself (its own locks answer TDX_OPERAND_BUSY, which only the driver's
    // Contention injects here), and whatever they find mapped (TDX_DEVIF_HAS_MAPPED_MMIO) is
    // the state other paths left between their regions.
    case .vfioOpen, .vfioBindIOMMUFD, .vfioRegionInfo, .vfioMmap, .tdispReport, .kvmCreateVM,
         .kvmCreateVCPU, .tdxDevifRemove, .tdxMMIOMTAdd, .tdxStreamBlock, .tdxSeamcall, .tdxDevifCreate,
         .kvmCheckExtension, .kvmCreateGuestMemfd:
      return .ranAndReturned(Self.label(op), oneRegion(op))
    case .kvmSetMemoryAttributes(let vmFD, let address, let size, let attributes, let flags):
      // kvm_vm_set_mem_attributes(): slots_lock across the whole update, mmu_lock for write
      // around the unmap and the stores when a memslot overlaps the range
      // (kvm_handle_gfn_range()); the argument checks come before either.
      let vm: VMID
      do { vm = try liveVM(vmFD) } catch { return .ranAndReturned(Self.label(op), .failure(error)) }
      guard host.memoryAttributes else {
        return .ranAndReturned(Self.label(op), .failure(.errno(Errno.ENOTTY.because(
          "kvm_vm_ioctl", "KVM_SET_MEMORY_ATTRIBUTES: no such ioctl without CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES"))))
      }
      let args = KVMMemoryAttributesArgs(address: address, size: size, attributes: attributes, flags: flags)
      do throws(MemoryAttributesFailure) {
        let changed = try kvm.vms[vm]!.setMemoryAttributes(args, ctx: ctx)
        if changed {
          let kind = attributes & MemoryAttributes.private.rawValue != 0 ? "private" : "shared"
          trace.emit(.kvmSetMemoryAttributes,
                     "vm\(vm.rawValue): KVM_SET_MEMORY_ATTRIBUTES [0x\(String(address, radix: 16)), +0x\(String(size, radix: 16))) -> \(kind)",
                     [.vm(vm), .hex("address", address), .hex("size", size), .text("attributes", kind)])
        }
        return .ranAndReturned(Self.label(op), .success(.none))
      } catch {
        switch error {
        case .wait(let wait): return .blocked(wait)
        case .errno(let e): return .ranAndReturned(Self.label(op), .failure(.errno(e)))
        case .lockViolation(let violation): throw violation
        }
      }

    // MARK: A config write of PCI_COMMAND: VFIO's revoke or restore
    case .vfioWrite(let fd, let index, let offset, let size, let value)
      where index == VFIOPCIRegion.config && VFIOPCIDriver.configWriteReachesCommand(offset: offset, size: size):
      // vfio_pci_config_rw() splits the write into aligned pieces; the one at PCI_COMMAND goes
      // to vfio_basic_config_write(), which revokes (memory bit clear: zap and memory_lock for
      // write, vfio_pci_dma_buf_move(vdev, true)) or restores under memory_lock: the path
      // vfio.set_memory_decode runs, begun here. The model keeps only the command register's
      // memory bit.
      let enable = (value >> ((4 - offset) * 8)) & UInt64(PCICommand.memorySpace.rawValue) != 0
      return try begin(.vfioSetMemoryDecode(fd: fd, enable: enable), frame: &frame, thread: thread, choices: &choices)

    // MARK: One region under a lock another path may hold
    case .vfioRead(let fd, let index, _, _), .vfioWrite(let fd, let index, _, _, _):
      // vfio_pci_bar_rw() checks memory decode under memory_lock held for read.
      if index < VFIOPCIRegion.rom, let wait = memoryLockWait(fd, write: false, ctx: ctx) { return .blocked(wait) }
      return .ranAndReturned(Self.label(op), oneRegion(op))
    case .vfioDmaBuf(let fd, _, _, _, _):
      // vfio_pci_core_feature_dma_buf() adds the buffer to vdev->dmabufs and decides whether
      // it starts revoked under memory_lock held for write.
      if let wait = memoryLockWait(fd, write: true, ctx: ctx) { return .blocked(wait) }
      return .ranAndReturned(Self.label(op), oneRegion(op))
    case .dmabufAttach(let fd, _, _, _):
      // dma_buf_dynamic_attach() adds the attachment to the buffer's list under its resv.
      if case .dmaBuf(let id)? = files[fd], let wait = dmabufCore.resvWait(buffer: id, context: ctx) {
        return .blocked(wait)
      }
      return .ranAndReturned(Self.label(op), oneRegion(op))
    case .dmabufDetach(let attachment):
      // dma_buf_detach() unlinks the attachment under the resv lock; the importer's put may be
      // the buffer's last reference, and its release then runs on this thread.
      if let wait = dmabufCore.resvWait(for: attachment, context: ctx) { return .blocked(wait) }
      let released: DmaBufObject?
      do { released = try dmabufCore.detach(attachment, trace: &trace) } catch {
        return .ranAndReturned(Self.label(op), .failure(.errno(error)))
      }
      guard let released else { return .ranAndReturned(Self.label(op), .success(.none)) }
      frame = .returning(.success(.none))
      return .ranThenCall(Self.label(op), .dmaBufRelease(VFIOPCIDmaBufRelease(buffer: released.id)))
    case .dmabufPin(let attachment), .dmabufGetPfn(let attachment, _):
      // dma_buf_detach() and dma_buf_pin() run under the resv lock, and the PFN lookup takes it
      // around the exporter's callback.
      if let wait = dmabufCore.resvWait(for: attachment, context: ctx) { return .blocked(wait) }
      return .ranAndReturned(Self.label(op), oneRegion(op))

    // MARK: A region, then VFIO's revoke or restore when the TDI's state moved it
    case .tdispStop(let name) where deviceNames[name].flatMap({ vfio.tsmUnbind($0, context: ctx) }) != nil:
      // reviewed, a device bound private: the TSM's unbind goes through VFIO, which revokes
      // (KVM blocks the Secure-EPT entries) before the interface is stopped.
      guard let device = deviceNames[name], var path = vfio.tsmUnbind(device, context: ctx) else {
        throw LockViolation(lock: "vdev->memory_lock", message: "TSM unbind path vanished")
      }
      defer { frame = .dmaBufMove(path, result: .success(.tdiState(TDIState.configUnlocked.specName))) }
      return try stepDmaBufMove(&path, result: .success(.tdiState(TDIState.configUnlocked.specName)), ctx: ctx)
    case .tdispLock, .tdispStart, .tdispStop, .pciFLR, .pciWriteCommand:
      let (result, device) = tdispOrConfigRegion(op)
      guard case .success = result, let device, let path = vfio.tsmStateChanged(device, context: ctx) else {
        return .ranAndReturned(Self.label(op), result)
      }
      frame = .dmaBufMove(path, result: result)
      return .ran(Self.label(op))

    // MARK: Paths
    case .vfioSetMemoryDecode(let fd, let enable):
      return try startMove(op, frame: &frame, thread: thread, use: .positional(write: true)) { (d: VFIOPCIDriver, f) throws(Errno) in
        try d.setMemoryDecode(f, enable: enable, context: ctx)
      } fd: { fd }
    case .vfioSetPower(let fd, let state):
      return try startMove(op, frame: &frame, thread: thread, use: .positional(write: true)) { (d: VFIOPCIDriver, f) throws(Errno) in
        try d.setPowerState(f, state: state == .d0 ? .d0 : .d3hot, context: ctx)
      } fd: { fd }
    case .vfioReset(let fd), .vfioFLR(let fd), .vfioHotReset(let fd):
      let kind: VFIOPCIDriver.ResetKind = switch op {
      case .vfioReset: .ioctl
      case .vfioFLR: .configFLR
      default: .hotReset
      }
      // A config-space FLR is a pwrite; VFIO_DEVICE_RESET and the hot reset are ioctls.
      return try startMove(op, frame: &frame, thread: thread, use: kind == .configFLR ? .positional(write: true) : .ioctl) {
        (d: VFIOPCIDriver, f) throws(Errno) in try d.reset(f, kind: kind, context: ctx)
      } fd: { fd }
    case .vfioClose(let fd), .dmabufClose(let fd), .kvmDestroyVM(let fd):
      return try close(fd, op: op, frame: &frame, ctx: ctx)
    case .kvmSetUserMemoryRegion2(let vmFD, let region), .kvmSetUserMemoryRegion(let vmFD, let region):
      let vm: VMID
      do { vm = try liveVM(vmFD) } catch { return .ranAndReturned(Self.label(op), .failure(error)) }
      let ioctl: MemoryRegionIoctl = if case .kvmSetUserMemoryRegion = op { .region } else { .region2 }
      frame = .setMemoryRegion(KVMSetMemoryRegion(vm: vm, region: region, ioctl: ioctl))
      return try stepAgain(&frame, thread: thread, choices: &choices)
    case .guestRead(let vmFD, let gpa, let size, let vcpu), .guestWrite(let vmFD, let gpa, let size, let vcpu, _):
      let access: AccessKind = if case .guestWrite = op { .write } else { .read }
      let stored: UInt64 = if case .guestWrite(_, _, _, _, let value) = op { value } else { 0 }
      do throws(OpFailure) {
        let vm = try guestVCPU(vmFD, vcpu)
        guard [1, 2, 4, 8].contains(size), gpa.pageOffset + size <= pageSize else {
          throw OpFailure.errno(Errno.EINVAL.because("kvm_arch_vcpu_ioctl_run", "the model's guest accesses are 1, 2, 4 or 8 bytes inside one page"))
        }
        frame = .vcpuRun(VCPURun(vm: vm, vcpu: vcpu, kind: .access(gpa, size: size, access), stored: stored))
      } catch { return .ranAndReturned(Self.label(op), .failure(error)) }
      return try stepAgain(&frame, thread: thread, choices: &choices)
    case .guestAcceptMMIO(let vmFD, let gpa, let expectHPA, let vcpu):
      do throws(OpFailure) {
        let vm = try guestVCPU(vmFD, vcpu)
        guard kvm.tds[vm] != nil else {
          throw OpFailure.errno(Errno.EINVAL.because("TDG.MMIO.ACCEPT", "the VM is not a TD: only a TD guest issues TDCALLs"))
        }
        guard let expected = expectHPA ?? reportedHPA(vm, gpa: gpa) else {
          throw OpFailure.errno(Errno.EINVAL.because("TDG.MMIO.ACCEPT", "no interface-report range backs \(gpa): the guest has no HPA to expect"))
        }
        frame = .vcpuRun(VCPURun(vm: vm, vcpu: vcpu, kind: .accept(gpa, expectedHPA: expected)))
      } catch { return .ranAndReturned(Self.label(op), .failure(error)) }
      return try stepAgain(&frame, thread: thread, choices: &choices)
    }
  }

  /// Steps the frame `begin` just replaced (the path's first region is this step's region).
  private mutating func stepAgain(_ frame: inout Frame, thread: KernelThread,
                                  choices: inout Contention) throws(LockViolation) -> FrameStep {
    switch frame {
    case .vcpuRun(var run):
      defer { frame = .vcpuRun(run) }
      return try run.step(&self, ctx: thread.context, choices: &choices)
    case .setMemoryRegion(var path):
      defer { frame = .setMemoryRegion(path) }
      return try path.step(&self, ctx: thread.context)
    default:
      throw LockViolation(lock: "thread", message: "no path to step after \(thread.operation.name)")
    }
  }

  /// A VFIO revoke/restore path started from a device fd; a bad fd fails at once.
  private mutating func startMove(_ op: Operation, frame: inout Frame, thread: KernelThread, use: FileUse,
                                  _ make: (VFIOPCIDriver, VFIOFileID) throws(Errno) -> DmaBufMovePath,
                                  fd: () -> FD) throws(LockViolation) -> FrameStep {
    var path: DmaBufMovePath
    do { path = try make(vfio, try vfioFile(fd(), use)) } catch { return .ranAndReturned(Self.label(op), .failure(.errno(error))) }
    defer { frame = .dmaBufMove(path, result: .success(.none)) }
    return try stepDmaBufMove(&path, result: .success(.none), ctx: thread.context)
  }

  /// The label a one-region operation's step carries.
  static func label(_ op: Operation) -> StaticString {
    switch op {
    case .vfioOpen: "open"
    case .vfioBindIOMMUFD: "VFIO_DEVICE_BIND_IOMMUFD"
    case .vfioRegionInfo: "VFIO_DEVICE_GET_REGION_INFO"
    case .vfioRead: "pread: memory_lock read, BAR access"
    case .vfioWrite: "pwrite: memory_lock read, BAR access"
    case .vfioMmap: "mmap"
    case .vfioDmaBuf: "VFIO_DEVICE_FEATURE_DMA_BUF: memory_lock write, export"
    case .dmabufAttach: "dma_buf_dynamic_attach: resv"
    case .dmabufDetach: "dma_buf_detach: resv"
    case .dmabufPin: "dma_buf_pin: resv"
    case .dmabufGetPfn: "dma_buf_get_pfn_unlocked: resv around get_pfn"
    case .tdispLock: "TDISP LOCK_INTERFACE, relay to the TDX module"
    case .tdispStart: "TDISP START_INTERFACE, relay to the TDX module"
    case .tdispStop: "TDISP STOP_INTERFACE, relay to the TDX module"
    case .tdispReport: "TDISP GET_DEVICE_INTERFACE_REPORT"
    case .pciFLR: "FLR from outside VFIO, relay"
    case .pciWriteCommand: "command register write from outside VFIO, relay"
    case .kvmCreateVM: "KVM_CREATE_VM"
    case .kvmCreateVCPU: "KVM_CREATE_VCPU"
    case .kvmCheckExtension: "KVM_CHECK_EXTENSION"
    case .kvmCreateGuestMemfd: "KVM_CREATE_GUEST_MEMFD"
    case .kvmSetMemoryAttributes: "KVM_SET_MEMORY_ATTRIBUTES: slots_lock, mmu_lock write, unmap, store"
    case .kvmSetUserMemoryRegion: "KVM_SET_USER_MEMORY_REGION"
    case .tdxDevifCreate: "TDH.DEVIF.CREATE"
    case .tdxDevifRemove: "TDH.DEVIF.REMOVE"
    case .tdxMMIOMTAdd: "TDH.MMIO.MT.ADD"
    case .tdxStreamBlock: "IDE stream blocked"
    case .tdxSeamcall: "SEAMCALL"
    case .vfioSetMemoryDecode, .vfioSetPower, .vfioReset, .vfioFLR, .vfioHotReset: "VFIO config write or reset: bad fd"
    case .vfioClose, .dmabufClose, .kvmDestroyVM: "close"
    case .kvmSetUserMemoryRegion2: "KVM_SET_USER_MEMORY_REGION2"
    case .guestRead, .guestWrite: "KVM_RUN"
    case .guestAcceptMMIO: "TDG.MMIO.ACCEPT"
    }
  }

  /// What waiting for the `memory_lock` of the device behind `fd` means for `ctx` now.
  private func memoryLockWait(_ fd: FD, write: Bool, ctx: ContextID) -> Wait? {
    guard case .vfioDevice(let file)? = files[fd], let device = vfio.file(file)?.device,
          let lock = vfio.device(device)?.memoryLock else { return nil }
    return write ? lock.writeWait(for: ctx) : lock.readWait(for: ctx)
  }

  /// A live VM behind `fd` with vCPU `vcpu` created, for a guest operation.
  private func guestVCPU(_ fd: FD, _ vcpu: UInt32) throws(OpFailure) -> VMID {
    let vm = try liveVM(fd)
    guard kvm.vms[vm]?.vcpus.contains(vcpu) == true else {
      throw .errno(Errno.EINVAL.because("kvm_vcpu_ioctl", "vCPU \(vcpu) of this VM was never created (KVM_CREATE_VCPU)"))
    }
    return vm
  }
}
