import KernelCore

// The trace's view of threads: a slice per path frame, from its push to its pop, and the step
// clock's tick at the end of each atomic region. `Machine.step` calls these where frames are
// pushed and popped; a step that blocks rolls the trace back with the thread.

extension Machine {
  /// Records only the events `filter` lets through, in the machine's trace and the TDX
  /// module's (whose events are otherwise built before the machine's trace drops them).
  public mutating func setTraceFilter(_ filter: TraceFilter) {
    trace.filter = filter
    kvm.tdx.trace.filter = filter
  }

  /// A thread's first step: its operation's slice begins (depth 1).
  mutating func traceThreadBegins(_ thread: KernelThread) {
    guard trace.isEnabled, case .start(let op)? = thread.stack.first, thread.stack.count == 1 else { return }
    trace.begin(op.name, depth: 1, thread: thread.name)
  }

  /// What one frame step did, as marks: a region that ran ticks the clock (after the TDX
  /// module's events of the region are in), a child frame pushed begins its slice.
  mutating func traceFrameStep(_ outcome: FrameStep, thread: KernelThread) {
    switch outcome {
    case .ran(let label), .ranAndReturned(let label, _):
      if trace.isEnabled { trace.absorb(&kvm.tdx.trace) }
      trace.regionRan(label, thread: thread.name)
    case .ranThenCall(let label, let child):
      if trace.isEnabled { trace.absorb(&kvm.tdx.trace) }
      trace.regionRan(label, thread: thread.name)
      trace.begin(child.traceName, depth: thread.stack.count + 1, thread: thread.name)
    case .call(let child):
      trace.begin(child.traceName, depth: thread.stack.count + 1, thread: thread.name)
    case .blocked, .returned:
      break
    }
  }
}

extension Frame {
  /// The frame's slice name: the kernel function the path is, or what it does.
  var traceName: String {
    switch self {
    case .start(let op): op.name
    case .returning: "return"
    case .dmaBufMove(let path, _): "vfio-pci revoke/restore vfio-dev\(path.device.rawValue)"
    case .moveNotify(let path): "kvm_vfio_dmabuf_move_notify vm\(path.vm.rawValue) attachment \(path.attachment.rawValue)"
    case .secureZap(let path): "private MMIO zap vm\(path.vm.rawValue)"
    case .vcpuRun(let run): "kvm_arch_vcpu_ioctl_run vm\(run.vm.rawValue) vcpu\(run.vcpu)"
    case .setMemoryRegion(let path): "kvm_set_memory_region vm\(path.vm.rawValue)"
    case .destroyVM(let path): "kvm_destroy_vm vm\(path.vm.rawValue)"
    case .dmaBufRelease(let path): "vfio_pci_dma_buf_release dmabuf\(path.buffer.rawValue)"
    }
  }
}

extension OpFailure {
  /// The fields of a `platform:error` event: what failed, and the function and check that
  /// refused it.
  var traceFields: [TraceField] {
    var fields: [TraceField]
    switch self {
    case .errno(let e): fields = [.errno(e)]
    case .memoryFault(let exit):
      fields = [.errno(exit.errno), .hex("flags", exit.flags), .hex("gpa", exit.gpa), .hex("size", exit.size)]
    case .tdx(let s): fields = [.text("status", s.name)] + (s.operand == 0 ? [] : [.hex("operand", UInt64(s.operand))])
    case .tdisp(_, let name): fields = [.text("tdisp", name)]
    case .livelock: fields = [.text("failure", "livelock")]
    case .deadlock: fields = [.text("failure", "deadlock")]
    case .lockViolation: fields = [.text("failure", "lock_violation")]
    }
    if let reason { fields += [.text("function", reason.function), .text("check", reason.check)] }
    return fields
  }
}
