import KernelCore
import DmaBuf
import VFIO
import KVM
import TDX

/// A kernel thread running one operation: the ioctl context of a scenario's `steps`, one
/// concurrent path, a vCPU. It advances one atomic region per ``Machine/step(_:choices:)``.
///
/// The thread's state is a stack of path state machines (a revoke calls each importer's
/// `move_notify`, which for a TD calls the Secure-EPT zap), so the explorer's state is the
/// machine together with every thread. Equal threads are at the same point of the same path.
public struct KernelThread: Hashable, Sendable {
  /// The context its locks are held by.
  public let context: ContextID
  /// How reports and schedules name it (`ioctl`, `vcpu1`, `ctx2`).
  public let name: String
  /// The operation it runs.
  public let operation: Operation
  var stack: [Frame]
  /// Set once the operation is over.
  public private(set) var result: OpResult?
  /// The operation's VM was already dead when it began (an ioctl that then succeeds breaks
  /// `DeadVMAcceptsNoIoctl`; one whose VM dies during it does not).
  var beganOnDeadVM = false
  /// The VM whose `kvm->users_count` this thread holds a reference to while it is inside an
  /// ioctl of it (`fdget()` of the VM or vCPU fd pins the file, and the file its `kvm`), from
  /// the path's first region to its return. See ``KVMHost/inFlight``.
  var heldVM: VMID?
  /// Regions run (history, outside equality).
  public var observed = Observed(ThreadStatistics())

  public init(_ operation: Operation, context: ContextID = .ioctl, name: String? = nil) {
    self.operation = operation
    self.context = context
    self.name = name ?? context.description
    stack = [.start(operation)]
  }

  public var isFinished: Bool { result != nil }

  /// Whether the thread is inside a path: it has started and not finished, so it may hold
  /// locks or be between the regions of a revoke, a fault or a memslot update.
  public var isInsidePath: Bool {
    guard result == nil else { return false }
    if case .start = stack.first, stack.count == 1 { return false }
    return true
  }

  /// The vCPU whose guest the thread runs (for a guest op), if any.
  public var vcpu: VCPURef? {
    for frame in stack { if case .vcpuRun(let run) = frame { return VCPURef(vm: run.vm, index: run.vcpu) } }
    return nil
  }

  mutating func finish(_ result: OpResult) {
    self.result = result
    stack = []
  }
}

/// Counters a thread keeps for reports.
public struct ThreadStatistics: Sendable {
  /// Regions run so far.
  public var regions = 0
  /// The last region run (a counterexample names it when the thread finished with it).
  public var lastRegion: StaticString?
}

/// A vCPU: its VM and index.
public struct VCPURef: Hashable, Sendable, Comparable, CustomStringConvertible {
  public let vm: VMID
  public let index: UInt32
  public init(vm: VMID, index: UInt32) { self.vm = vm; self.index = index }
  public static func < (a: VCPURef, b: VCPURef) -> Bool { (a.vm, a.index) < (b.vm, b.index) }
  public var description: String { "vm\(vm.rawValue) vcpu\(index)" }
}

/// What one ``Machine/step(_:choices:)`` did.
public enum ThreadStep: Sendable {
  /// One atomic region ran; `label` names it as a counterexample prints it.
  case ran(label: StaticString)
  /// The next region cannot start: a lock is held, or a wait is not over. Nothing changed;
  /// the same step is tried again when the thread is next scheduled.
  case blocked(Wait)
  /// The operation is over (its last region, if it needed one, has run).
  case finished(OpResult)
}

/// What the driver of a run decides that the model cannot: contention inside the TDX module.
///
/// The module's calls are atomic here, so no other logical processor can hold one of their
/// operands; `TDX_OPERAND_BUSY` comes only from the driver. `busy` lists the calls to fail
/// with it, consumed in order by the first matching SEAMCALL: a `run` takes them from the
/// scenario, the explorer can branch on them.
public struct Contention: Hashable, Sendable {
  /// One forced `TDX_OPERAND_BUSY`: which call, and the operand the status names (the
  /// Secure-EPT lock by default, as `TDX_ERROR_SEPT_BUSY`).
  public struct Busy: Hashable, Sendable {
    public var call: SeamcallLeaf
    public var operand: UInt32
    public init(_ call: SeamcallLeaf, operand: UInt32 = TDXOperand.sept) { self.call = call; self.operand = operand }
  }

  public var busy: [Busy]
  public init(busy: [Busy] = []) { self.busy = busy }

  /// The busy status the next `call` is to return, if the driver chose one (consuming it).
  mutating func takeBusy(_ call: SeamcallLeaf) -> TDXStatus? {
    guard let i = busy.firstIndex(where: { $0.call == call }) else { return nil }
    var status = TDXStatus.operandBusy.with(operand: busy.remove(at: i).operand)
    status.reason = Refusal(function: "\(call)", check: "another logical processor holds the lock on operand 0x\(String(status.operand, radix: 16)) (the schedule's contention)")
    return status
  }
}

/// One path state machine on a thread's stack.
indirect enum Frame: Hashable, Sendable {
  /// The operation has not begun.
  case start(Operation)
  /// A child path runs; when it returns, this frame returns `result`.
  case returning(OpResult)
  /// vfio-pci's revoke/restore under `memory_lock`; returns `result` when over.
  case dmaBufMove(DmaBufMovePath, result: OpResult)
  /// One importer's `move_notify` (KVM's slot zap).
  case moveNotify(KVMDmaBufMoveNotify)
  /// A TD's Secure-EPT zap, with `mmu_lock` held for write.
  case secureZap(TDXSEPTZap)
  /// A vCPU running the guest: an access or an accept, with its EPT violations and faults.
  case vcpuRun(VCPURun)
  /// `KVM_SET_USER_MEMORY_REGION2`.
  case setMemoryRegion(KVMSetMemoryRegion)
  /// `kvm_destroy_vm()` after the last reference to the VM is gone.
  case destroyVM(KVMDestroyVM)
  /// `vfio_pci_dma_buf_release()` after a dma-buf's last reference is gone.
  case dmaBufRelease(VFIOPCIDmaBufRelease)
}

extension Frame {
  /// The VM a thread at the bottom of whose stack this frame is holds while inside it: an ioctl
  /// of the VM that runs over several regions (a memslot update) or `KVM_RUN`. One-region
  /// ioctls need no reference: nothing runs between their fdget and their return.
  var vmInUse: VMID? {
    switch self {
    case .setMemoryRegion(let path): path.vm
    case .vcpuRun(let run): run.vm
    case .start, .returning, .dmaBufMove, .moveNotify, .secureZap, .destroyVM, .dmaBufRelease: nil
    }
  }
}

/// What stepping one frame did.
enum FrameStep: Sendable {
  /// A region ran; the frame goes on.
  case ran(StaticString)
  /// A region ran and the frame now waits for `child`.
  case ranThenCall(StaticString, Frame)
  /// No region ran; the frame waits for `child`, which steps now.
  case call(Frame)
  case blocked(Wait)
  /// A region ran and the frame is over.
  case ranAndReturned(StaticString, OpResult)
  /// The frame is over without running a region (its caller goes on in the same step).
  case returned(OpResult)
}

extension Machine {
  /// Starts `operation` on a new thread of `context`: nothing runs until it is stepped.
  public func startThread(_ operation: Operation, context: ContextID = .ioctl, name: String? = nil) -> KernelThread {
    KernelThread(operation, context: context, name: name)
  }

  /// Runs the thread's next atomic region: the one driver loop every caller shares
  /// (`perform`, `run`, the explorer, the fuzzer).
  ///
  /// Bookkeeping between regions (a path calling a sub-path, a sub-path returning) happens in
  /// the same step as the region after or before it, so each step is exactly one region (a
  /// VM's destroy handed to the thread that dropped its last reference is the one step that
  /// runs none: it only starts the destroy). A step that answers ``ThreadStep/blocked(_:)``
  /// leaves the thread as it was, and the machine too, but for one piece of bookkeeping the
  /// retried step writes again identically: when an importer's `move_notify` returned and the
  /// next importer's blocks, the revoke has already marked the first one's call over.
  public mutating func step(_ thread: inout KernelThread, choices: inout Contention) -> ThreadStep {
    let outcome = stepRegion(&thread, choices: &choices)
    // The first region of a VM ioctl or KVM_RUN ran: from here to its return the thread holds
    // the VM (its fdget). Taken after the region so that a blocked first step changes nothing.
    if case .ran = outcome, thread.heldVM == nil, let vm = thread.stack.first?.vmInUse {
      thread.heldVM = vm
      kvm.takeInFlightReference(vm)
    }
    return outcome
  }

  private mutating func stepRegion(_ thread: inout KernelThread, choices: inout Contention) -> ThreadStep {
    if let result = thread.result { return .finished(result) }
    // The TDX module traces into its own buffer: it builds no event while the machine's
    // tracing is off.
    kvm.tdx.trace.isEnabled = trace.isEnabled
    defer { trace.absorb(&kvm.tdx.trace) }
    // A blocked step leaves the thread as it was. Keeping a copy of the whole thread would
    // make the first write to its stack copy the stack (and box its frames anew) on every
    // step; the step changes only the top frame until it calls or returns, so that frame is
    // what is kept, and the whole thread only before a call or a return changes more.
    let savedTop = thread.stack[thread.stack.count - 1]
    let savedBeganOnDeadVM = thread.beganOnDeadVM
    var saved: KernelThread?
    func keepWhole() {
      guard saved == nil else { return }
      var whole = thread
      whole.stack[whole.stack.count - 1] = savedTop
      whole.beganOnDeadVM = savedBeganOnDeadVM
      saved = whole
    }
    let savedTrace = trace.position
    if case .start(let op)? = thread.stack.first, thread.stack.count == 1 { thread.beganOnDeadVM = targetsDeadVM(op) }
    traceThreadBegins(thread)
    do throws(LockViolation) {
      while true {
        let outcome = try stepFrame(&thread.stack[thread.stack.count - 1], thread: thread, choices: &choices)
        traceFrameStep(outcome, thread: thread)
        switch outcome {
        case .blocked(let wait):
          if let saved {
            thread = saved
          } else {
            thread.stack[thread.stack.count - 1] = savedTop
            thread.beganOnDeadVM = savedBeganOnDeadVM
          }
          trace.rollback(to: savedTrace)
          return .blocked(wait)
        case .ran(let label):
          thread.observed.value.regions += 1
          thread.observed.value.lastRegion = label
          return .ran(label: label)
        case .ranThenCall(let label, let child):
          thread.stack.append(child)
          thread.observed.value.regions += 1
          thread.observed.value.lastRegion = label
          return .ran(label: label)
        case .call(let child):
          keepWhole()
          thread.stack.append(child)
        case .ranAndReturned(let label, let result):
          thread.observed.value.regions += 1
          thread.observed.value.lastRegion = label
          if let finished = try pop(&thread, result) { return .finished(finished) }
          return .ran(label: label)
        case .returned(let result):
          keepWhole()
          if let finished = try pop(&thread, result) { return .finished(finished) }
          // The caller goes on in this same step: its next region is this step's region.
        }
      }
    } catch {
      // The model broke a lock rule: that is the model's bug, never the kernel's errno.
      if let vm = thread.heldVM { kvm.dropInFlightReference(vm) }
      thread.heldVM = nil
      thread.finish(.failure(.lockViolation(error)))
      return .finished(.failure(.lockViolation(error)))
    }
  }

  /// Pops a finished frame and hands its result to its caller; the thread's result when it was
  /// the last frame.
  private mutating func pop(_ thread: inout KernelThread, _ result: OpResult) throws(LockViolation) -> OpResult? {
    thread.stack.removeLast()
    if thread.stack.isEmpty, let vm = thread.heldVM {
      // The ioctl returns: its fdput. When it held the VM's last reference (the VM fd and its
      // guest_memfd files are closed), kvm_put_kvm() runs kvm_destroy_vm() on this thread.
      // The reference passes to the destroy, which ends with the VM; it is not dropped here,
      // so a destroy that blocks at once leaves the machine as it was.
      thread.heldVM = nil
      if kvm.inFlight[vm] == 1, !vmReferenced(vm) {
        // The operation's slice (depth 1) stays open across the destroy.
        thread.stack = [.returning(result), .destroyVM(KVMDestroyVM(vm: vm))]
        trace.begin(thread.stack[1].traceName, depth: thread.stack.count, thread: thread.name)
        return nil
      }
      kvm.dropInFlightReference(vm)
    }
    trace.end(depth: thread.stack.count + 1, thread: thread.name)
    guard !thread.stack.isEmpty else {
      let final = try threadFinished(thread, result)
      thread.finish(final)
      return final
    }
    if let child = try resume(&thread.stack[thread.stack.count - 1], with: result, thread: thread) {
      thread.stack.append(child)
      trace.begin(child.traceName, depth: thread.stack.count, thread: thread.name)
    }
    return nil
  }

  /// A path is over: it must hold no lock. The result is the operation's, counted as an ioctl
  /// on a dead VM where one succeeded.
  private mutating func threadFinished(_ thread: KernelThread, _ result: OpResult) throws(LockViolation) -> OpResult {
    if let lock = locksHeld(by: thread.context).first {
      throw LockViolation(lock: lock, message: "\(thread.name) finished \(thread.operation.name) still holding it")
    }
    if case .success = result, thread.beganOnDeadVM { kvm.observed.value.deadVMIoctls += 1 }
    return result
  }

  /// Steps the top frame.
  private mutating func stepFrame(_ frame: inout Frame, thread: KernelThread,
                                  choices: inout Contention) throws(LockViolation) -> FrameStep {
    let ctx = thread.context
    switch frame {
    case .start(let op):
      return try begin(op, frame: &frame, thread: thread, choices: &choices)
    case .returning(let result):
      return .returned(result)
    case .dmaBufMove(var path, let result):
      defer { frame = .dmaBufMove(path, result: result) }
      return try stepDmaBufMove(&path, result: result, ctx: ctx)
    case .moveNotify(var path):
      defer { frame = .moveNotify(path) }
      return try path.step(&self, ctx: ctx)
    case .secureZap(var path):
      defer { frame = .secureZap(path) }
      return try path.step(&self, ctx: ctx, choices: &choices)
    case .vcpuRun(var run):
      defer { frame = .vcpuRun(run) }
      return try run.step(&self, ctx: ctx, choices: &choices)
    case .setMemoryRegion(var path):
      defer { frame = .setMemoryRegion(path) }
      return try path.step(&self, ctx: ctx)
    case .destroyVM(var path):
      defer { frame = .destroyVM(path) }
      return try path.step(&self, ctx: ctx)
    case .dmaBufRelease(var path):
      defer { frame = .dmaBufRelease(path) }
      return try path.step(&self, ctx: ctx)
    }
  }

  /// A child returned to `frame`. - Returns: a further child to run, which steps at once.
  private mutating func resume(_ frame: inout Frame, with result: OpResult,
                               thread: KernelThread) throws(LockViolation) -> Frame? {
    switch frame {
    case .dmaBufMove(var path, let opResult):
      defer { frame = .dmaBufMove(path, result: opResult) }
      // An importer's move_notify returned: the next importer of the buffer, if any, is told
      // in the same step (no region runs between them).
      return try tellImporters(&path, next: try path.importerReturned(dmabufCore: &dmabufCore), ctx: thread.context)
    case .moveNotify(var path):
      defer { frame = .moveNotify(path) }
      path.childReturned()
    case .setMemoryRegion(var path):
      defer { frame = .setMemoryRegion(path) }
      path.childReturned(result)
    case .vcpuRun(var run):
      defer { frame = .vcpuRun(run) }
      run.childReturned(result)
    case .destroyVM, .start, .returning, .secureZap, .dmaBufRelease:
      break
    }
    return nil
  }

  /// One region of a VFIO revoke/restore path; a flip hands each importer's `move_notify` to
  /// this thread in turn.
  mutating func stepDmaBufMove(_ path: inout DmaBufMovePath, result: OpResult,
                                       ctx: ContextID) throws(LockViolation) -> FrameStep {
    switch try path.step(&vfio, dmabufCore: &dmabufCore, sink: &kvm, trace: &trace) {
    case .ran(let label): return .ran(label)
    case .blocked(let wait): return .blocked(wait)
    case .finished: return .returned(result)
    case .notify(let attachment, _, let label):
      if let child = try tellImporters(&path, next: attachment, ctx: ctx) { return .ranThenCall(label, child) }
      return .ran(label)
    }
  }

  /// Tells importers of the buffer being flipped, starting with `next`: a test importer only
  /// hears of it (it returns at once); KVM's runs as a child path, returned here.
  private mutating func tellImporters(_ path: inout DmaBufMovePath, next: DmaBufAttachment?,
                                      ctx: ContextID) throws(LockViolation) -> Frame? {
    var current = next
    while let attachment = current {
      let revoked = path.revokedFlip ?? true
      if let vm = kvm.vm(holding: attachment.id) {
        return .moveNotify(KVMDmaBufMoveNotify(vm: vm, attachment: attachment.id, revoked: revoked))
      }
      trace.emit(.dmabufImporterNotified, "\(attachment.importer): move_notify (attachment \(attachment.id.rawValue), \(revoked ? "revoked" : "restored"))",
                 [.id("attachment", attachment.id), .text("importer", "\(attachment.importer)"), .flag("revoked", revoked)])
      current = try path.importerReturned(dmabufCore: &dmabufCore)
    }
    return nil
  }
}
