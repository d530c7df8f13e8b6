import KernelCore
import KVM
import TDX

extension Machine {
  // MARK: vCPUs answering kicks

  /// Every vCPU that owes the answer to a kick: `KVM_REQ_OUTSIDE_GUEST_MODE` is pending and the
  /// vCPU is in guest mode. Each answers with one step of its own (the IPI makes it leave guest
  /// mode; it enters again at once), whether or not a thread of the scenario runs it.
  public func kickResponders() -> [VCPURef] {
    var out: [VCPURef] = []
    for (id, vm) in kvm.vms where !vm.pendingKicks.isEmpty {
      let inGuest = Set(kvm.vcpusInGuest(id))
      for vcpu in vm.pendingKicks where inGuest.contains(vcpu) { out.append(VCPURef(vm: id, index: vcpu)) }
    }
    return out.sorted()
  }

  /// `vcpu` takes the kick's IPI: it leaves guest mode (a TD exit) and enters again in the
  /// current TLB epoch (`TDH.VP.ENTER`). One atomic region of that vCPU.
  public mutating func answerKick(_ vcpu: VCPURef) throws(LockViolation) {
    try kvm.leaveGuest(vcpu, traced: true, trace: &trace)
    try kvm.enterGuest(vcpu, traced: true, trace: &trace)
  }

  // MARK: Canonical state

  /// Whether ``canonicalize(_:)-(inout [KernelThread])`` has nothing to do, whatever the
  /// threads: every VM's `mmu_invalidate_seq` is 0 and no TD's epochs moved. Most steps leave
  /// the machine so; checking costs a look at each VM.
  public var isCanonical: Bool {
    kvm.epochsMoved.value.isEmpty && kvm.vms.values.allSatisfy { $0.invalidation.seq == 0 }
  }

  /// Brings values the kernel uses only relatively to their canonical form, with no thread in
  /// flight: every VM's `mmu_invalidate_seq` is 0, TLB epochs are relative.
  public mutating func canonicalize() {
    var none: [KernelThread] = []
    canonicalize(&none)
  }

  /// ``canonicalize()`` with one thread in flight.
  public mutating func canonicalize(_ thread: inout KernelThread) {
    var threads = [thread]
    canonicalize(&threads)
    thread = threads[0]
  }

  /// Makes the state canonical for the machine and its threads together: each VM's
  /// `mmu_invalidate_seq` is rebased to the oldest value a fault in flight recorded (0 when
  /// none did), the faults' values with it; the TDX module's epochs are made relative.
  public mutating func canonicalize(_ threads: inout [KernelThread]) {
    // The VMs to rebase are found first, and written after: a loop that writes the table it
    // iterates copies the table (the optimizer makes it unique before the loop, while the
    // iterator still holds it), on every call.
    var moved: [(id: VMID, seq: UInt64)] = []
    for (id, vm) in kvm.vms where vm.invalidation.seq != 0 { moved.append((id, vm.invalidation.seq)) }
    for (id, seq) in moved {
      var base = seq
      for thread in threads {
        for seq in thread.recordedSeqs(vm: id) { base = min(base, seq) }
      }
      guard base > 0 else { continue }
      kvm.vms[id]!.rebaseInvalidationSeq(by: base)
      for i in threads.indices where !threads[i].recordedSeqs(vm: id).isEmpty {
        threads[i].rebaseSeqs(vm: id, by: base)
      }
    }
    for td in kvm.epochsMoved.value { kvm.tdx.normalizeEpochs(of: td) }
    kvm.epochsMoved.value.removeAll()
  }
}

extension KernelThread {
  /// The `mmu_invalidate_seq` values this thread's faults on `vm` recorded.
  func recordedSeqs(vm: VMID) -> [UInt64] {
    stack.compactMap { frame in
      if case .vcpuRun(let run) = frame, run.vm == vm { return run.recordedSeq }
      return nil
    }
  }

  mutating func rebaseSeqs(vm: VMID, by base: UInt64) {
    for i in stack.indices {
      if case .vcpuRun(var run) = stack[i], run.vm == vm {
        run.rebase(by: base)
        stack[i] = .vcpuRun(run)
      }
    }
  }

  /// Faults of this thread that went back to the guest.
  public var retries: Int {
    stack.reduce(0) { total, frame in
      if case .vcpuRun(let run) = frame { return total + run.retries.value }
      return total
    }
  }
}
