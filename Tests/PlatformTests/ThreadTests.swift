import Testing
import KernelCore
import DmaBuf
@testable import VFIO
@testable import KVM
import TDX
@testable import Platform

/// A context standing for another kernel thread that holds a lock.
let holder = ContextID(rawValue: 99)

extension Bench {
  /// The VM behind the default VM's fd.
  var plainVM: VMID {
    guard case .vm(let id)? = try? machine.files.lookup(plain) else { return VMID(0) }
    return id
  }
  var tdVM: VMID {
    guard case .vm(let id)? = try? machine.files.lookup(td) else { return VMID(0) }
    return id
  }

  /// Steps `thread` alone until it finishes, letting vCPUs answer kicks; fails on a wait
  /// nothing else will end.
  mutating func finish(_ thread: inout KernelThread, sourceLocation: SourceLocation = #_sourceLocation) -> OpResult? {
    var contention = Contention()
    for _ in 0 ..< 10_000 {
      switch machine.step(&thread, choices: &contention) {
      case .finished(let result): return result
      case .ran: continue
      case .blocked(let wait):
        let responders = machine.kickResponders().filter { $0 != thread.vcpu }
        guard !responders.isEmpty else {
          Issue.record("\(thread.name) waits for \(wait) with nothing to end it", sourceLocation: sourceLocation)
          return nil
        }
        for vcpu in responders { try? machine.answerKick(vcpu) }
      }
    }
    Issue.record("\(thread.name) did not finish in 10000 steps", sourceLocation: sourceLocation)
    return nil
  }

  /// Steps `thread` until it answers `blocked`; returns the wait.
  mutating func stepUntilBlocked(_ thread: inout KernelThread) -> Wait? {
    var contention = Contention()
    for _ in 0 ..< 1_000 {
      switch machine.step(&thread, choices: &contention) {
      case .blocked(let wait): return wait
      case .finished: return nil
      case .ran: continue
      }
    }
    return nil
  }
}

/// One fixed interleaving of a fault and a decode-off revoke, driven by hand: the fault reads
/// the sequence and the PFN, the revoke zaps and ends its invalidation, and the fault finds
/// the sequence moved under mmu_lock, retries, and this time the exporter refuses: EIO.
@Suite struct InterleavingTests {
  @Test func faultRetriesAfterARevokeBetweenLookupAndInstall() throws {
    var bench = try Bench(.reviewed)
    let (dev, _) = try bench.sharedSlot()
    var expected = bench.machine
    #expect(expected.perform(.vfioSetMemoryDecode(fd: dev, enable: false)) == .success(.none))

    var fault = bench.machine.startThread(.guestRead(vm: bench.plain, gpa: GPA(gpaBase), size: 4),
                                          context: ContextID(rawValue: 1), name: "vcpu0")
    var revoke = bench.machine.startThread(.vfioSetMemoryDecode(fd: dev, enable: false),
                                           context: ContextID(rawValue: 2), name: "ctx2")
    var c = Contention()
    func label(_ step: ThreadStep) -> String {
      switch step {
      case .ran(let label): "\(label)"
      case .blocked(let wait): "blocked: \(wait)"
      case .finished(let result): "finished: \(result)"
      }
    }
    #expect(label(bench.machine.step(&fault, choices: &c)) == "guest: access, EPT violation, VM exit")
    #expect(label(bench.machine.step(&fault, choices: &c)) == "fault: srcu_read_lock, read mmu_invalidate_seq, find the slot")
    #expect(label(bench.machine.step(&fault, choices: &c)) == "fault: get_pfn under resv")
    #expect(label(bench.machine.step(&revoke, choices: &c)) == "down_write(memory_lock)")
    #expect(label(bench.machine.step(&revoke, choices: &c)) == "dma_resv_lock, flip, move_notify")
    #expect(label(bench.machine.step(&revoke, choices: &c)) == "move_notify: mmu_lock write, invalidate, zap the slot, unlock")
    #expect(label(bench.machine.step(&revoke, choices: &c)) == "dma_resv_unlock")
    #expect(label(bench.machine.step(&revoke, choices: &c)) == "config write: command register")
    #expect(label(bench.machine.step(&revoke, choices: &c)) == "finished: success(Platform.OpValue.none)")
    // The fault holds a PFN of a revoked buffer; mmu_invalidate_seq moved since it read it.
    #expect(label(bench.machine.step(&fault, choices: &c)) == "fault: mmu_lock read, seq checked, install SPTE")
    #expect(fault.retries == 1)
    #expect(bench.vm(bench.plain)?.mmu.mappedPages == 0)
    #expect(label(bench.machine.step(&fault, choices: &c)) == "guest: access, EPT violation, VM exit")
    #expect(label(bench.machine.step(&fault, choices: &c)) == "fault: srcu_read_lock, read mmu_invalidate_seq, find the slot")
    #expect(label(bench.machine.step(&fault, choices: &c)) == "finished: failure(errno EIO)")
    bench.machine.canonicalize()
    #expect(bench.machine == expected, "the end state is the revoke's alone")
    #expect(bench.violated().isEmpty)
    #expect(bench.machine.locksHeld(by: ContextID(rawValue: 1)).isEmpty && bench.machine.locksHeld(by: ContextID(rawValue: 2)).isEmpty)
  }
}

/// Two machines no operation can tell apart compare and hash equal.
@Suite struct CanonicalStateTests {
  @Test func revokeRestoreRefaultEqualsOneFault() throws {
    var once = try Bench(.reviewed)
    let (dev1, _) = try once.sharedSlot()
    var again = once
    _ = dev1
    #expect(once.access(once.plain, gpaBase) == .success(.guestAccess("mapped", value: 0)))
    #expect(again.access(again.plain, gpaBase) == .success(.guestAccess("mapped", value: 0)))
    try again.ok(.vfioSetMemoryDecode(fd: dev1, enable: false))
    try again.ok(.vfioSetMemoryDecode(fd: dev1, enable: true))
    #expect(again.access(again.plain, gpaBase) == .success(.guestAccess("mapped", value: 0)))
    #expect(again.machine == once.machine)
    #expect(again.machine.hashValue == once.machine.hashValue)
  }

  @Test func aTDRevokeRestoreReacceptEqualsOneAccept() throws {
    var once = try Bench(.reviewed)
    _ = try once.tdSlot()
    var again = once
    try once.ok(.guestAcceptMMIO(vm: once.td, gpa: GPA(gpaBase), expectHPA: nil))
    try again.ok(.guestAcceptMMIO(vm: again.td, gpa: GPA(gpaBase), expectHPA: nil))
    // STOP revokes (block, track, kick, unmap); LOCK and START restore; the guest accepts again.
    try again.ok(.tdispStop(device: "nic0"))
    try again.ok(.tdispLock(device: "nic0"))
    try again.ok(.tdispStart(device: "nic0", nonce: .echo))
    try again.ok(.guestAcceptMMIO(vm: again.td, gpa: GPA(gpaBase), expectHPA: nil))
    #expect(again.machine == once.machine)
    #expect(again.machine.hashValue == once.machine.hashValue)
  }

  @Test(arguments: [false, true])
  func independentAccessesInEitherOrder(td: Bool) throws {
    var base = try Bench(.reviewed)
    let vm: FD
    if td { _ = try base.tdSlot(); vm = base.td } else {
      _ = try base.sharedSlot(); vm = base.plain
    }
    let a: Operation = td ? .guestAcceptMMIO(vm: vm, gpa: GPA(gpaBase), expectHPA: nil) : .guestRead(vm: vm, gpa: GPA(gpaBase), size: 4)
    let b: Operation = td ? .guestAcceptMMIO(vm: vm, gpa: GPA(gpaBase + 0x3000), expectHPA: nil)
      : .guestWrite(vm: vm, gpa: GPA(gpaBase + 0x3000), size: 4)
    var ab = base, ba = base
    try ab.ok(a); try ab.ok(b)
    try ba.ok(b); try ba.ok(a)
    #expect(ab.machine == ba.machine)
    #expect(ab.machine.hashValue == ba.machine.hashValue)
  }

  /// After every step of every shipped flow no lock is held and no invalidation is in progress.
  @Test(arguments: Variant.allCases)
  func nothingIsHeldBetweenOperations(variant: Variant) throws {
    var bench = try Bench(variant)
    let (dev, buf) = try bench.tdSlot()
    let ops: [Operation] = [
      .guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil),
      .guestRead(vm: bench.td, gpa: GPA(gpaBase), size: 4),
      .vfioReset(fd: dev), .tdispStop(device: "nic0"), .vfioSetMemoryDecode(fd: dev, enable: false),
      .kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: 0)),
      .dmabufClose(fd: buf), .vfioClose(fd: dev), .kvmDestroyVM(vm: bench.td),
    ]
    for op in ops {
      _ = bench.machine.perform(op)
      for ctx in [ContextID.ioctl, ContextID(rawValue: 1)] { #expect(bench.machine.locksHeld(by: ctx).isEmpty, "\(op)") }
      for vm in bench.machine.kvm.vms.values {
        #expect(vm.invalidation.inProgress == 0 && vm.invalidation.seq == 0 && vm.pendingKicks.isEmpty, "\(op)")
      }
    }
  }
}

/// What a driver must find rather than cap: a fault that can never succeed.
@Suite struct LivelockTests {
  /// rfc-v1's map path: tdx_mmio_map() turns every failed TDH.MMIO.MAP into -EBUSY, so a
  /// fault whose MAP cannot succeed (no DEVIF, no MMIOMT) retries for ever. reviewed: the
  /// status comes from the host's own setup, so the fault is a memory-fault exit (EFAULT) and
  /// the TD lives.
  @Test(arguments: Variant.allCases)
  func aMapThatAlwaysFails(variant: Variant) throws {
    var bench = try Bench(variant)
    let dev = try bench.fd(.vfioOpen(device: "nic0"))
    try bench.ok(.vfioBindIOMMUFD(fd: dev, private: true, vm: bench.td))
    try bench.ok(.tdispLock(device: "nic0"))
    try bench.ok(.tdispStart(device: "nic0", nonce: .echo))
    let buf = try bench.exportBAR0(dev)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: Bench.bar0, guestMemfd: buf.rawValue)))
    try bench.ok(.kvmSetMemoryAttributes(vm: bench.td, address: gpaBase, size: Bench.bar0, attributes: 1 << 3, flags: 0))
    let result = bench.access(bench.td, gpaBase)
    switch variant {
    case .reviewed:
      #expect(result == .failure(.memoryFault(MemoryFaultExit(isPrivate: true, gfn: GPA(gpaBase).gfn))))
      #expect(bench.vm(bench.td)?.isDead == false)
      #expect(bench.violated().isEmpty)
    case .rfcV1:
      guard case .failure(.livelock(let what)) = result else { Issue.record("expected a livelock, got \(result)"); return }
      #expect(what.hasPrefix("ioctl: guest.read retries for ever"))
      #expect(bench.vm(bench.td)?.isDead == false)
      #expect(bench.violated().isEmpty)
    }
  }

  /// Contention the driver chooses: a busy TDH.MMIO.MAP is retried, in both variants.
  @Test(arguments: Variant.allCases)
  func busyIsRetried(variant: Variant) throws {
    var bench = try Bench(variant)
    _ = try bench.tdSlot()
    var contention = Contention(busy: [.init(.mmioMap), .init(.mmioMap)])
    #expect(bench.machine.perform(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil), context: .ioctl,
                                  contention: &contention) == .success(.guestAccess("accepted")))
    #expect(contention.busy.isEmpty)
    #expect(bench.machine.trace.events.contains { $0.description.contains("after 2 retries") })
    #expect(bench.violated().isEmpty)
  }

  /// Patch 12 retries BLOCK and UNMAP only on exactly TDX_ERROR_SEPT_BUSY: a busy status
  /// naming another operand (the module reports a busy Secure-EPT entry with operand RCX) is
  /// KVM_BUG_ON in rfc-v1; reviewed retries any TDX_OPERAND_BUSY, as tdx_operand_busy() does.
  /// (reviewed refuses to delete a slot that maps private MMIO of a live buffer, so its retry is
  /// pinned on the revoke's zap in PrivateMMIOSlotDeleteTests.)
  @Test(arguments: Variant.allCases, [TDXOperand.sept, TDXOperand.rcx])
  func busyBlockWithAnOperand(variant: Variant, operand: UInt32) throws {
    var bench = try Bench(variant)
    _ = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
    try bench.ok(.tdxStreamBlock(device: "nic0"))   // so UNMAP may succeed with the TDI running
    var contention = Contention(busy: [.init(.mmioBlock, operand: operand)])
    let result = bench.machine.perform(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: 0)), context: .ioctl, contention: &contention)
    if variant == .reviewed {
      #expect(result == .failure(.errno(.EBUSY)))
      #expect(contention.busy.count == 1, "nothing was blocked")
      #expect(bench.violated().isEmpty)
      return
    }
    #expect(result == .success(.none))
    let killed = variant == .rfcV1 && operand != TDXOperand.sept
    #expect(bench.vm(bench.td)?.isDead == killed)
    // KVM_BUG_ON in the flush: the slot goes, the TD's mapping stays (unreachable, the TD is dead).
    #expect(bench.violated() == (killed ? ["NoSPTEOutsideMemslot", "NoKVMBugOn"] : []))
  }
}
