import Testing
import KernelCore
import DmaBuf
@testable import KVM
@testable import Platform

/// The VM lives while anything holds a reference to it (`kvm->users_count`): its fd, a
/// guest_memfd file, an ioctl in flight (its `fdget()`). `kvm_destroy_vm()` runs on the
/// thread that drops the last one (`kvm_put_kvm()` in `virt/kvm/kvm_main.c`).
@Suite struct VMLifetimeTests {
  /// `KVM_RUN` inside its fault when the VM fd is closed: the close returns at once and the VM
  /// stays, the access completes (and installs its SPTE inside the live memslot), and the
  /// destroy then runs on the vCPU's thread, which still answers the access's result.
  @Test(arguments: Variant.allCases)
  func aVCPUInsideKVMRunKeepsTheVM(_ variant: Variant) throws {
    var bench = try Bench(variant)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.plain, region: ramSlot))
    let vm = bench.plainVM
    var run = bench.machine.startThread(.guestRead(vm: bench.plain, gpa: GPA(gpaBase), size: 4), context: ContextID(rawValue: 1))
    var contention = Contention()
    #expect(label(bench.machine.step(&run, choices: &contention)) == "guest: access, EPT violation, VM exit")
    #expect(label(bench.machine.step(&run, choices: &contention)) == "fault: srcu_read_lock, read mmu_invalidate_seq, find the slot")
    #expect(bench.machine.kvm.inFlight[vm] == 1)

    #expect(bench.machine.perform(.kvmDestroyVM(vm: bench.plain)) == .success(.none))
    #expect(bench.machine.kvm.vms[vm] != nil, "the close dropped a reference, not the last one")
    #expect(bench.violated().isEmpty)

    guard case .success(.guestAccess("mapped", _))? = bench.finish(&run) else {
      Issue.record("the access did not complete: \(String(describing: run.result))"); return
    }
    #expect(bench.machine.kvm.vms[vm] == nil, "the vCPU's thread ran kvm_destroy_vm")
    #expect(bench.machine.kvm.inFlight[vm] == nil)
    #expect(bench.violated().isEmpty)
  }

  /// The same with a dma-buf slot (`reviewed`: the posted series binds dma-bufs only for a
  /// TD): the destroy on the vCPU's thread detaches KVM's attachment.
  @Test func theDestroyOnTheVCPUThreadDetaches() throws {
    var bench = try Bench(.reviewed)
    let (_, buf) = try bench.sharedSlot()
    let vm = bench.plainVM
    var run = bench.machine.startThread(.guestRead(vm: bench.plain, gpa: GPA(gpaBase), size: 4), context: ContextID(rawValue: 1))
    var contention = Contention()
    _ = bench.machine.step(&run, choices: &contention)
    _ = bench.machine.step(&run, choices: &contention)
    #expect(bench.machine.perform(.kvmDestroyVM(vm: bench.plain)) == .success(.none))
    #expect(bench.finish(&run) == .success(.guestAccess("mapped", value: 0)))
    #expect(bench.machine.kvm.vms[vm] == nil)
    guard case .dmaBuf(let id)? = try? bench.machine.files.lookup(buf) else { Issue.record("no buffer"); return }
    #expect(bench.machine.dmabufCore.buffer(id)?.attachments == [])
    #expect(bench.machine.dmabufCore.buffer(id)?.fileRefs == 1)
    #expect(bench.violated().isEmpty)
  }

  /// A memslot update holds the VM across its regions: the close in the middle leaves it, and
  /// the update's own thread destroys the VM after the commit.
  @Test(arguments: Variant.allCases)
  func aMemslotUpdateKeepsTheVM(_ variant: Variant) throws {
    var bench = try Bench(variant)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.plain, region: ramSlot))
    let vm = bench.plainVM
    var delete = ramSlot
    delete.memorySize = 0
    var update = bench.machine.startThread(.kvmSetUserMemoryRegion2(vm: bench.plain, region: delete), context: ContextID(rawValue: 1))
    var contention = Contention()
    guard case .ran = bench.machine.step(&update, choices: &contention) else { Issue.record("the delete did not start"); return }
    #expect(bench.machine.kvm.inFlight[vm] == 1)

    #expect(bench.machine.perform(.kvmDestroyVM(vm: bench.plain)) == .success(.none))
    #expect(bench.machine.kvm.vms[vm] != nil)

    #expect(bench.finish(&update) == .success(.none))
    #expect(bench.machine.kvm.vms[vm] == nil)
    #expect(bench.machine.locksHeld(by: ContextID(rawValue: 1)).isEmpty)
    #expect(bench.violated().isEmpty)
  }

  /// With no ioctl in flight the close destroys the VM itself, as before; an ioctl that ran as
  /// one region (its fdget and its return together) holds nothing afterwards.
  @Test func aCloseWithNothingInFlightDestroys() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.sharedSlot()
    let vm = bench.plainVM
    #expect(bench.access(bench.plain, gpaBase) == .success(.guestAccess("mapped", value: 0)))
    #expect(bench.machine.kvm.inFlight.isEmpty)
    #expect(bench.machine.perform(.kvmDestroyVM(vm: bench.plain)) == .success(.none))
    #expect(bench.machine.kvm.vms[vm] == nil)
  }

  /// A first step that blocks takes no reference: the thread and the machine are as they were.
  @Test func aBlockedFirstStepHoldsNothing() throws {
    var bench = try Bench(.reviewed)
    let dev = try bench.openDevice(private: false)
    let buf = try bench.exportBAR0(dev)
    let vm = bench.plainVM
    try bench.machine.kvm.vms[vm]!.lockSlots(holder)
    var update = bench.machine.startThread(.kvmSetUserMemoryRegion2(vm: bench.plain, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: Bench.bar0, guestMemfd: buf.rawValue)),
      context: ContextID(rawValue: 1))
    let before = (bench.machine, update)
    var contention = Contention()
    guard case .blocked = bench.machine.step(&update, choices: &contention) else {
      Issue.record("the update did not wait for slots_lock"); return
    }
    #expect(bench.machine == before.0)
    #expect(update == before.1)
    #expect(bench.machine.kvm.inFlight.isEmpty)
  }

  /// 2 MiB of user memory at 2 GiB in slot 1.
  private let ramSlot = MemoryRegion2(slot: 1, guestPhysAddr: gpaBase, memorySize: Bench.bar0, userspaceAddr: 0x7f00_0000_0000)

  private func label(_ step: ThreadStep) -> String {
    if case .ran(let label) = step { return "\(label)" }
    return "\(step)"
  }
}
