import Testing
import KernelCore
import DmaBuf
@testable import KVM

let gib: UInt64 = 1 << 30

func region(_ slot: UInt32 = 1, _ flags: MemslotFlags = [], gpa: UInt64 = 0x8000_0000, size: UInt64 = 0x20_0000,
            uaddr: UInt64 = 0, offset: UInt64 = 0, fd: UInt32 = 7) -> UserspaceMemoryRegion2 {
  UserspaceMemoryRegion2(slot: slot, flags: flags, guestPhysAddr: gpa, memorySize: size,
                         userspaceAddr: uaddr, guestMemfdOffset: offset, guestMemfd: fd)
}

/// A VM with one plain slot 0 at GPA 0..1 GiB.
func vmWithRAMSlot(_ type: VMType) throws -> VirtualMachine {
  var vm = VirtualMachine(id: VMID(1), type: type)
  let plan = try vm.prepareSetUserMemoryRegion2(region(0, gpa: 0, size: gib, uaddr: 0x7000_0000_0000), variant: .reviewed)
  _ = try vm.commitSetUserMemoryRegion2(plan)
  return vm
}

struct SlotCase: CustomTestStringConvertible, Sendable {
  let name: String
  let type: VMType
  let variant: Variant
  let region: UserspaceMemoryRegion2
  let errno: Errno?
  var testDescription: String { "\(name) [\(type), \(variant)]" }
}

let slotCases: [SlotCase] = {
  var c: [SlotCase] = []
  for v in Variant.allCases {
    c += [
      SlotCase(name: "slot id >= KVM_USER_MEM_SLOTS", type: .tdx, variant: v, region: region(32764), errno: .EINVAL),
      SlotCase(name: "unknown flag", type: .tdx, variant: v, region: region(1, MemslotFlags(rawValue: 1 << 5)), errno: .EINVAL),
      SlotCase(name: "readonly on TD", type: .tdx, variant: v, region: region(1, .readonly), errno: .EINVAL),
      SlotCase(name: "dmabuf + guest_memfd", type: .tdx, variant: v, region: region(1, [.vfioDmaBuf, .guestMemfd]), errno: .EINVAL),
      SlotCase(name: "dmabuf + dirty log", type: .tdx, variant: v, region: region(1, [.vfioDmaBuf, .logDirtyPages]), errno: .EINVAL),
      SlotCase(name: "dmabuf + readonly", type: .default, variant: v, region: region(1, [.vfioDmaBuf, .readonly]), errno: .EINVAL),
      SlotCase(name: "unaligned size", type: .default, variant: v, region: region(size: 0x1800), errno: .EINVAL),
      SlotCase(name: "unaligned gpa", type: .default, variant: v, region: region(gpa: 0x8000_0800), errno: .EINVAL),
      SlotCase(name: "unaligned uaddr", type: .default, variant: v, region: region(uaddr: 0x10), errno: .EINVAL),
      SlotCase(name: "uaddr beyond user space", type: .default, variant: v, region: region(uaddr: MemslotLimits.taskSizeMax), errno: .EINVAL),
      SlotCase(name: "unaligned guest_memfd offset", type: .tdx, variant: v, region: region(1, .guestMemfd, offset: 0x10), errno: .EINVAL),
      SlotCase(name: "guest_memfd offset overflow", type: .tdx, variant: v, region: region(1, .guestMemfd, offset: ~UInt64(0xfff)), errno: .EINVAL),
      SlotCase(name: "address space 1 on TD", type: .tdx, variant: v, region: region(1 << 16 | 1), errno: .EINVAL),
      SlotCase(name: "address space 2 on default VM", type: .default, variant: v, region: region(2 << 16 | 1), errno: .EINVAL),
      SlotCase(name: "address space 1 (SMM) on default VM", type: .default, variant: v, region: region(1 << 16 | 1), errno: nil),
      SlotCase(name: "gpa + size wraps", type: .default, variant: v, region: region(gpa: ~UInt64(0xfff), size: 0x2000), errno: .EINVAL),
      SlotCase(name: "too many pages", type: .default, variant: v, region: region(gpa: 0, size: 1 << 43), errno: .EINVAL),
      SlotCase(name: "past the largest GFN", type: .default, variant: v, region: region(gpa: 1 << 48, size: 0x1000), errno: .EINVAL),
      SlotCase(name: "overlap", type: .default, variant: v, region: region(gpa: gib - 0x1000), errno: .EEXIST),
      SlotCase(name: "delete missing slot", type: .default, variant: v, region: region(9, size: 0), errno: .EINVAL),
      SlotCase(name: "resize existing", type: .default, variant: v, region: region(0, gpa: 0, size: 2 * gib, uaddr: 0x7000_0000_0000), errno: .EINVAL),
      SlotCase(name: "readonly toggle", type: .default, variant: v, region: region(0, .readonly, gpa: 0, size: gib, uaddr: 0x7000_0000_0000), errno: .EINVAL),
      SlotCase(name: "plain create", type: .default, variant: v, region: region(), errno: nil),
      SlotCase(name: "dmabuf on TD", type: .tdx, variant: v, region: region(1, .vfioDmaBuf), errno: nil),
    ]
  }
  c += [
    // check_memory_region_flags(): the RFC's base (6.13) takes GUEST_MEMFD only with private
    // memory; 6.18 ("KVM: x86: Enable KVM_GUEST_MEMFD for all 64-bit builds") on every VM.
    SlotCase(name: "guest_memfd on default VM", type: .default, variant: .rfcV1, region: region(1, .guestMemfd), errno: .EINVAL),
    SlotCase(name: "guest_memfd on default VM", type: .default, variant: .reviewed, region: region(1, .guestMemfd), errno: nil),
    SlotCase(name: "dmabuf on default VM", type: .default, variant: .rfcV1, region: region(1, .vfioDmaBuf), errno: .EINVAL),
    SlotCase(name: "dmabuf on default VM", type: .default, variant: .reviewed, region: region(1, .vfioDmaBuf), errno: nil),
    SlotCase(name: "dmabuf offset != 0", type: .tdx, variant: .rfcV1, region: region(1, .vfioDmaBuf, offset: 0x1000), errno: .EINVAL),
    SlotCase(name: "dmabuf page-aligned slice", type: .tdx, variant: .reviewed, region: region(1, .vfioDmaBuf, offset: 0x1000), errno: nil),
    SlotCase(name: "dmabuf unaligned offset", type: .tdx, variant: .reviewed, region: region(1, .vfioDmaBuf, offset: 0x10), errno: .EINVAL),
  ]
  return c
}()

@Test(arguments: slotCases)
func memslotValidation(_ c: SlotCase) throws {
  let vm = try vmWithRAMSlot(c.type)
  do {
    let plan = try vm.prepareSetUserMemoryRegion2(c.region, variant: c.variant)
    #expect(c.errno == nil, "expected \(c.errno?.name ?? "") but got a plan \(plan.change)")
  } catch {
    #expect(error == c.errno)
  }
}

@Test func changesAreClassifiedAsKvmSetMemslotDoes() throws {
  var vm = try vmWithRAMSlot(.default)
  let base = region(0, gpa: 0, size: gib, uaddr: 0x7000_0000_0000)
  #expect(try vm.prepareSetUserMemoryRegion2(base, variant: .reviewed).change == .unchanged)
  var moved = base; moved.guestPhysAddr = 4 * gib
  #expect(try vm.prepareSetUserMemoryRegion2(moved, variant: .reviewed).change == .move)
  var logged = base; logged.flags = MemslotFlags.logDirtyPages.rawValue
  #expect(try vm.prepareSetUserMemoryRegion2(logged, variant: .reviewed).change == .flagsOnly)
  var deleted = base; deleted.memorySize = 0
  let plan = try vm.prepareSetUserMemoryRegion2(deleted, variant: .reviewed)
  #expect(plan.change == .delete)
  _ = try vm.commitSetUserMemoryRegion2(plan)
  #expect(vm.memslots.isEmpty)
}

@Test func guestMemfdSlotCannotBeMoved() throws {
  var vm = VirtualMachine(id: VMID(1), type: .tdx)
  let r = region(1, .guestMemfd)
  try vm.addGuestMemfdSlot(r)
  var moved = r; moved.guestPhysAddr += gib
  #expect(throws: Errno.EINVAL) { try vm.prepareSetUserMemoryRegion2(moved, variant: .rfcV1) }
}

func buffer(size: UInt64 = 0x20_0000, isPrivate: Bool = true, vm: VMID? = VMID(1)) -> DmaBufDescription {
  DmaBufDescription(id: DmaBufID(3), size: size, vfio: VFIODmaBufData(isPrivate: isPrivate, vm: vm))
}

func binding(_ att: UInt32 = 10, pgoff: UInt64 = 0) -> DmaBufBinding {
  DmaBufBinding(dmaBuf: DmaBufID(3), attachment: AttachmentID(att), pgoff: PageIndex(pgoff))
}

/// Creates a TD dma-buf slot 1 at 2 GiB (2 MiB) through plan, checks and commit.
func tdWithDmaBufSlot(_ variant: Variant) throws -> VirtualMachine {
  var vm = VirtualMachine(id: VMID(1), type: .tdx)
  let plan = try vm.prepareSetUserMemoryRegion2(region(1, .vfioDmaBuf), variant: variant)
  #expect(plan.dmaBufFD == FD(7))
  try plan.checkDmaBuf(buffer(), variant: variant)
  try vm.vfioDmaBufSanityCheck(buffer())
  _ = try vm.commitSetUserMemoryRegion2(plan, binding: binding())
  return vm
}

@Test(arguments: [
  (Variant.rfcV1, UInt64(0x20_0000), UInt64(0), UInt64(0x40_0000), Errno?.some(.EINVAL)),   // size != buffer
  (Variant.rfcV1, 0x20_0000, 0, 0x20_0000, nil),
  (Variant.reviewed, 0x10_0000, 0x10_0000, 0x20_0000, nil),                                  // slice at the end
  (Variant.reviewed, 0x10_0000, 0x20_0000, 0x20_0000, .EINVAL),                              // slice past the end
  (Variant.reviewed, 0x1000, 0x20_0000, 0x20_0000, .EINVAL),
])
func dmaBufSizeRules(variant: Variant, size: UInt64, offset: UInt64, bufSize: UInt64, errno: Errno?) throws {
  let vm = VirtualMachine(id: VMID(1), type: .tdx)
  let plan = try vm.prepareSetUserMemoryRegion2(region(1, .vfioDmaBuf, size: size, offset: offset), variant: variant)
  if let errno {
    #expect(throws: errno) { try plan.checkDmaBuf(buffer(size: bufSize), variant: variant) }
  } else {
    #expect(throws: Never.self) { try plan.checkDmaBuf(buffer(size: bufSize), variant: variant) }
  }
}

@Test(arguments: [
  (VMType.tdx, true, UInt32?.some(1), Errno?.none),
  (VMType.tdx, false, nil, .EINVAL),          // shared buffer in a TD
  (VMType.tdx, true, 2, .EINVAL),             // bound to another VM
  (VMType.default, true, 1, .EINVAL),         // private buffer in a normal VM
  (VMType.default, false, nil, nil),
])
func patch10SanityChecks(type: VMType, isPrivate: Bool, owner: UInt32?, errno: Errno?) {
  let vm = VirtualMachine(id: VMID(1), type: type)
  let buf = buffer(isPrivate: isPrivate, vm: owner.map { VMID($0) })
  if let errno {
    #expect(throws: errno) { try vm.vfioDmaBufSanityCheck(buf) }
  } else {
    #expect(throws: Never.self) { try vm.vfioDmaBufSanityCheck(buf) }
  }
}

@Test func nonVFIODmaBufIsRefused() {
  let vm = VirtualMachine(id: VMID(1), type: .tdx)
  #expect(throws: Errno.EINVAL) { try vm.vfioDmaBufSanityCheck(DmaBufDescription(id: DmaBufID(1), size: 0x1000, vfio: nil)) }
}

@Test func reviewedDmaBufSlotsAreImmutable() throws {
  let vm = try tdWithDmaBufSlot(.reviewed)
  var moved = region(1, .vfioDmaBuf); moved.guestPhysAddr += gib
  #expect(throws: Errno.EINVAL) { try vm.prepareSetUserMemoryRegion2(moved, variant: .reviewed) }
  #expect(throws: Errno.EINVAL) { try vm.prepareSetUserMemoryRegion2(region(1, []), variant: .reviewed) }
}

@Test func rfcV1MoveLeavesTheOldBindingDangling() throws {
  var vm = try tdWithDmaBufSlot(.rfcV1)
  #expect(KVMInvariants.noDanglingBinding(vm).isEmpty)
  var moved = region(1, .vfioDmaBuf); moved.guestPhysAddr += gib
  let plan = try vm.prepareSetUserMemoryRegion2(moved, variant: .rfcV1)
  #expect(plan.change == .move)
  let commit = try vm.commitSetUserMemoryRegion2(plan, binding: binding(11))
  #expect(commit.detach.isEmpty && commit.leftDangling == [AttachmentID(10)])
  #expect(vm.bindings[AttachmentID(10)]?.isStale == true)
  #expect(KVMInvariants.noDanglingBinding(vm).count == 1)
  // destroying the VM cannot detach it either
  let freed = vm.destroy()
  #expect(freed.detach == [AttachmentID(11)] && freed.leaked == [AttachmentID(10)])
}

@Test func deletingADmaBufSlotDetaches() throws {
  var vm = try tdWithDmaBufSlot(.reviewed)
  let plan = try vm.prepareSetUserMemoryRegion2(region(1, .vfioDmaBuf, size: 0), variant: .reviewed)
  let commit = try vm.commitSetUserMemoryRegion2(plan)
  #expect(commit.change == .delete && commit.detach == [AttachmentID(10)])
  #expect(vm.bindings.isEmpty && vm.memslots.isEmpty)
}

@Test func failedPrepareChangesNothingAndSlotsLockSerialisesUpdates() throws {
  var vm = try vmWithRAMSlot(.default)
  let before = vm
  #expect(throws: Errno.EEXIST) { try vm.prepareSetUserMemoryRegion2(region(2, gpa: 0), variant: .reviewed) }
  #expect(vm == before)
  // The ioctl holds slots_lock from its checks to its commit: another update waits for it,
  // so no plan can be made against memslots that change before it commits.
  try vm.lockSlots(ioctlThread)
  let other = ContextID(rawValue: 2)
  #expect(vm.slotsLock.wait(for: other) == .lock("kvm->slots_lock", heldBy: ioctlThread))
  #expect(throws: LockViolation.self) { try vm.lockSlots(other) }
  try vm.unlockSlots(ioctlThread)
  #expect(vm.slotsLock.wait(for: other) == nil)
}

@Test(arguments: [(UInt32(0), Errno?.none), (4095, nil), (4096, .EINVAL)])
func createVCPUIDLimit(id: UInt32, errno: Errno?) {
  var vm = VirtualMachine(id: VMID(1), type: .default)
  if let errno { #expect(throws: errno) { try vm.createVCPU(id) } }
  else { #expect(throws: Never.self) { try vm.createVCPU(id) } }
}

@Test func duplicateVCPUIsEEXISTAndDeadVMIsEIO() throws {
  var vm = VirtualMachine(id: VMID(1), type: .default)
  try vm.createVCPU(0)
  #expect(throws: Errno.EEXIST) { try vm.createVCPU(0) }
  vm.markDead()
  #expect(throws: Errno.EIO) { try vm.createVCPU(1) }
  #expect(throws: Errno.EIO) { try vm.prepareSetUserMemoryRegion2(region(), variant: .reviewed) }
}

@Test func mmioPFNIsOutsideRAM() {
  let vm = VirtualMachine(id: VMID(1), type: .default, ramPFNs: [PFN(0) ..< PFN(0x1000)])
  #expect(!vm.isMMIOPFN(PFN(0xfff)))
  #expect(vm.isMMIOPFN(PFN(0x1000)))
}

/// The order of `__kvm_set_memory_region()`'s checks (virt/kvm/kvm_main.c, 6.19 and the RFC's
/// base) and where patch 6 put its own: two violations at once, the earlier check answers, with
/// its function and check in the reason.
@Suite struct MemslotCheckOrderTests {
  struct Pair: CustomTestStringConvertible, Sendable {
    let name: String
    let variant: Variant
    let region: UserspaceMemoryRegion2
    let errno: Errno
    let reason: String
    var testDescription: String { "\(name) [\(variant)]" }
  }

  static let pairs: [Pair] = [
    // check_memory_region_flags (patch 6): mutual exclusion is tested before anything else.
    Pair(name: "private flags together beat an unaligned size", variant: .rfcV1,
         region: region(1, [.vfioDmaBuf, .guestMemfd], size: 0x1800), errno: .EINVAL,
         reason: "check_memory_region_flags: private flags are mutually exclusive"),
    // Patch 6 checks guest_memfd_offset != 0 in the bind branch, after the overlap check.
    Pair(name: "rfc-v1: overlap before the dma-buf offset", variant: .rfcV1,
         region: region(1, .vfioDmaBuf, gpa: gib - 0x1000, offset: 0x1000), errno: .EEXIST,
         reason: "__kvm_set_memory_region: overlaps slot 0 [0x0, +0x40000000)"),
    Pair(name: "rfc-v1: the dma-buf offset after the overlap check", variant: .rfcV1,
         region: region(1, .vfioDmaBuf, offset: 0x1000), errno: .EINVAL,
         reason: "__kvm_set_memory_region: KVM_MEM_VFIO_DMABUF with guest_memfd_offset != 0"),
    // reviewed treats the dma-buf offset like guest_memfd's: checked with the general checks.
    Pair(name: "reviewed: the slice offset before the overlap", variant: .reviewed,
         region: region(1, .vfioDmaBuf, gpa: gib - 0x1000, offset: 0x10), errno: .EINVAL,
         reason: "__kvm_set_memory_region: guest_memfd_offset not page aligned or offset + size wraps"),
    // The delete path runs the flag checks, then only "does the slot exist".
    Pair(name: "rfc-v1: delete ignores the dma-buf offset", variant: .rfcV1,
         region: region(9, .vfioDmaBuf, size: 0, offset: 0x1000), errno: .EINVAL,
         reason: "__kvm_set_memory_region: delete of slot 9, which does not exist"),
    Pair(name: "alignment before the address space", variant: .reviewed,
         region: region(1 << 16 | 1, size: 0x1800), errno: .EINVAL,
         reason: "__kvm_set_memory_region: memory_size not page aligned"),
    Pair(name: "the slot id first", variant: .reviewed,
         region: region(32764, MemslotFlags(rawValue: 1 << 5)), errno: .EINVAL,
         reason: "kvm_vm_ioctl_set_memory_region: (u16)mem->slot 32764 >= KVM_USER_MEM_SLOTS"),
  ]

  @Test(arguments: pairs)
  func theEarlierCheckAnswers(_ p: Pair) throws {
    let vm = try vmWithRAMSlot(.tdx)
    do {
      _ = try vm.prepareSetUserMemoryRegion2(p.region, variant: p.variant)
      Issue.record("expected \(p.errno)")
    } catch {
      #expect(error == p.errno)
      #expect(error.reason?.description == p.reason)
    }
  }

  /// Patch 6 moves nothing for a delete: with the slot present, a dma-buf flag and a bad offset
  /// still delete it.
  @Test func rfcDeleteOfADmaBufSlotTakesNoOffsetCheck() throws {
    var vm = try vmWithRAMSlot(.tdx)
    let plan = try vm.prepareSetUserMemoryRegion2(region(1, .vfioDmaBuf), variant: .rfcV1)
    _ = try vm.commitSetUserMemoryRegion2(plan, binding: binding())
    #expect(try vm.prepareSetUserMemoryRegion2(region(1, .vfioDmaBuf, size: 0, offset: 0x1000), variant: .rfcV1).change == .delete)
  }

  /// kvm_vfio_dmabuf_bind (patches 6 and 10): the size first, then the VFIO data.
  @Test func bindChecksSizeThenVFIOData() throws {
    let vm = try vmWithRAMSlot(.tdx)
    let plan = try vm.prepareSetUserMemoryRegion2(region(1, .vfioDmaBuf), variant: .rfcV1)
    let wrongSize = DmaBufDescription(id: DmaBufID(1), size: 0x1000, vfio: nil)
    #expect(throws: Errno.EINVAL) { try plan.checkDmaBuf(wrongSize, variant: .rfcV1) }
    do { try plan.checkDmaBuf(wrongSize, variant: .rfcV1) } catch {
      #expect(error.reason?.function == "kvm_vfio_dmabuf_bind")
    }
    let notVFIO = DmaBufDescription(id: DmaBufID(1), size: 0x20_0000, vfio: nil)
    try plan.checkDmaBuf(notVFIO, variant: .rfcV1)
    for (data, check) in [(ExporterData(isPrivate: false, vm: vm.id), "!data->is_private"),
                          (ExporterData(isPrivate: true, vm: VMID(9)), "data->kvm != kvm")] {
      do { try vm.vfioDmaBufSanityCheck(DmaBufDescription(id: DmaBufID(1), size: 0x20_0000, vfio: data)); Issue.record("accepted") }
      catch { #expect(error == .EINVAL && error.reason?.check == check) }
    }
  }

  @Test func createVCPUReasons() throws {
    var vm = VirtualMachine(id: VMID(1), type: .tdx)
    try vm.createVCPU(0)
    do { try vm.createVCPU(0); Issue.record("twice") } catch { #expect(error == .EEXIST && error.reason?.function == "kvm_vm_ioctl_create_vcpu") }
    do { try vm.createVCPU(VirtualMachine.maxVCPUIDs); Issue.record("id") } catch { #expect(error == .EINVAL) }
  }
}

/// The default host RAM leaves the 32-bit PCI hole out: a 32-bit BAR there is MMIO (mapped
/// uncached), the RAM on either side is not.
@Test(arguments: [(UInt64(0xbffff), false), (0xc0000, true), (0xfebff, true), (0xfffff, true),
                  (0x100000, false), (0x3fffff, false), (0x4000000, true)])
func defaultRAMLeavesThe32BitHoleOut(pfn: UInt64, mmio: Bool) {
  #expect(VirtualMachine(id: VMID(1), type: .default).isMMIOPFN(PFN(pfn)) == mmio)
}
