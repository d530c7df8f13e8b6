import KernelCore
import DmaBuf
import VFIO
import KVM

/// A part of the machine a step may read or write, as coarse as keeps the reduction sound.
public enum Resource: Hashable, Sendable {
  /// A VFIO device: its function (command register, TDI), `memory_lock`, buffer list.
  case device(VFIODeviceID)
  /// Every device (a read of any TDI state).
  case anyDevice
  /// A dma-buf: its VFIO exporter object (`revoked`), the core's buffer, resv, attachments.
  case buffer(DmaBufID)
  /// Every buffer (a read of whatever buffer a slot names).
  case anyBuffer
  /// A VM's TDP MMU, `mmu_lock` and invalidation state.
  case vmMMU(VMID)
  /// A VM's memslots, bindings and `slots_lock`.
  case vmSlots(VMID)
  /// One context's entry in a VM's SRCU readers.
  case srcuEntry(VMID, ContextID)
  /// A VM's TD in the TDX module: its vCPUs, epochs, Secure EPT.
  case td(VMID)
  /// A VM's pending vCPU kicks.
  case kicks(VMID)
  /// The TDX module's DEVIFs and MMIO metadata table.
  case tdxGlobal
  /// The process's fd table and VFIO's open files.
  case files

  func conflicts(with other: Resource) -> Bool {
    switch (self, other) {
    case (.anyBuffer, .anyBuffer), (.anyBuffer, .buffer), (.buffer, .anyBuffer): true
    case (.anyDevice, .anyDevice), (.anyDevice, .device), (.device, .anyDevice): true
    default: self == other
    }
  }
}

/// What a thread's next step may read and write (its footprint), predicted before it runs.
/// Two steps of different threads whose footprints do not conflict commute: run in either
/// order they reach the same state, and neither enables or disables the other. History
/// (``Observed`` counters and logs) and traces are not part of a footprint.
public struct Footprint: Hashable, Sendable {
  public var reads: [Resource]
  public var writes: [Resource]
  /// The step may touch anything (a start of an operation, a memslot update, a destroy).
  public var everything: Bool

  public init(reads: [Resource] = [], writes: [Resource] = [], everything: Bool = false) {
    self.reads = reads; self.writes = writes; self.everything = everything
  }

  public static let all = Footprint(everything: true)

  /// Whether the two steps commute (see the type's doc).
  public func isIndependent(of other: Footprint) -> Bool {
    if everything || other.everything { return false }
    for w in writes {
      if other.writes.contains(where: w.conflicts) || other.reads.contains(where: w.conflicts) { return false }
    }
    for w in other.writes where reads.contains(where: w.conflicts) { return false }
    return true
  }
}

extension Machine {
  /// The footprint of `thread`'s next step.
  public func footprint(of thread: KernelThread) -> Footprint {
    guard let top = thread.stack.last, thread.result == nil else { return Footprint() }
    let ctx = thread.context
    switch top {
    case .start(let op):
      return footprint(starting: op)
    case .returning, .setMemoryRegion, .destroyVM, .dmaBufRelease:
      return .all
    case .dmaBufMove(let path, _):
      let device = Resource.device(path.device)
      switch path.nextRegion {
      case .none: return Footprint()
      case .lockMemory, .unlockMemory: return Footprint(writes: [device])
      case .deviceWork: return Footprint(reads: [.anyBuffer], writes: [device, .tdxGlobal])
      case .unlockResv(let buffer): return Footprint(writes: [device, .buffer(buffer)])
      case .flip:
        // A flip marks the importers' attachments; KVM's importer work is a frame of its own.
        var writes: [Resource] = [device, .tdxGlobal]
        writes += path.flipCandidates(vfio).map { .buffer($0) }
        return Footprint(reads: [.anyBuffer], writes: writes)
      }
    case .moveNotify(let notify):
      return Footprint(reads: [.vmSlots(notify.vm), .anyBuffer], writes: [.vmMMU(notify.vm)])
    case .secureZap(let zap):
      return Footprint(reads: [.vmSlots(zap.vm)], writes: [.vmMMU(zap.vm), .td(zap.vm), .tdxGlobal, .kicks(zap.vm)])
    case .vcpuRun(let run):
      let vm = run.vm
      // Once no fd refers to the VM, the step that ends this KVM_RUN may drop the VM's last
      // reference and destroy it on this thread; which of two runs ends last decides that.
      // While an fd refers to it, ends only count down (commuting), and only a close (which
      // touches everything) reads the count.
      if thread.heldVM != nil, !vmReferenced(vm) { return .all }
      let td = kvm.tds[vm] != nil
      switch run.state {
      case .guest:
        // The access against the TDP MMU or the Secure EPT; a completed access reads the
        // buffer and TDI behind it for the access properties, and a load reads (a store
        // writes) the registers of the device it reaches.
        let registers: [Resource] = run.isStore ? [.anyDevice] : []
        if td {
          return Footprint(reads: [.vmMMU(vm), .vmSlots(vm), .anyBuffer, .anyDevice, .tdxGlobal],
                           writes: [.td(vm), .kicks(vm)] + registers)
        }
        return Footprint(reads: [.vmMMU(vm), .vmSlots(vm), .anyBuffer, .anyDevice], writes: registers)
      case .fault(let path, let request):
        if request != nil {
          return Footprint(reads: [.anyBuffer, .vmMMU(vm)], writes: [.srcuEntry(vm, ctx)])
        }
        if path.recordedSeq == nil {
          return Footprint(reads: [.vmSlots(vm), .vmMMU(vm)], writes: [.srcuEntry(vm, ctx)])
        }
        var writes: [Resource] = [.vmMMU(vm), .srcuEntry(vm, ctx)]
        if td { writes += [.td(vm), .tdxGlobal] }
        return Footprint(reads: [.vmSlots(vm), .anyBuffer], writes: writes)
      }
    }
  }

  /// The footprint of an operation's first step (which also resolves its fds).
  func footprint(starting op: Operation) -> Footprint {
    func vmID(_ fd: FD) -> VMID? {
      if case .vm(let id)? = files[fd] { return id }
      return nil
    }
    func deviceID(_ fd: FD) -> VFIODeviceID? {
      if case .vfioDevice(let file)? = files[fd] { return vfio.file(file)?.device }
      return nil
    }
    switch op {
    case .guestRead(let fd, _, _, _), .guestWrite(let fd, _, _, _, _), .guestAcceptMMIO(let fd, _, _, _):
      guard let vm = vmID(fd) else { return .all }
      // An access that completes at once reads (a store writes) the device's registers.
      var guest = Footprint(reads: [.files, .vmMMU(vm), .vmSlots(vm), .anyBuffer, .anyDevice])
      if case .guestWrite = op { guest.writes += [.anyDevice] }
      if kvm.tds[vm] != nil {
        guest.reads += [.tdxGlobal]
        guest.writes += [.td(vm), .kicks(vm)]
      }
      return guest
    case .vfioSetMemoryDecode(let fd, _), .vfioSetPower(let fd, _), .vfioReset(let fd), .vfioFLR(let fd),
         .vfioHotReset(let fd):
      // The first region is down_write(memory_lock).
      guard let device = deviceID(fd) else { return .all }
      return Footprint(reads: [.files], writes: [.device(device)])
    default:
      return .all
    }
  }

  /// The footprint of `vcpu` answering a kick's IPI (a TD exit and entry).
  public func footprintOfKickAnswer(_ vcpu: VCPURef) -> Footprint {
    Footprint(writes: [.td(vcpu.vm), .kicks(vcpu.vm)])
  }
}
