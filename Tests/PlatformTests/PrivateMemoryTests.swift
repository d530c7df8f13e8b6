import Testing
import KernelCore
import DmaBuf
import KVM
import TDX
@testable import Platform

// KVM's private-memory uAPI on the whole machine (Linux 6.18): guest_memfd, memory attributes,
// the memory-fault exit, VM types, capabilities, host configuration, and the private MMIO slot
// delete protocol. Where a selftest asserts the same thing, the test names its function.

private let gmemFlag: UInt32 = 1 << 2
private let privateAttr: UInt64 = 1 << 3

extension Bench {
  /// A VM of `type` with vCPU 0, created on this machine.
  mutating func newVM(_ type: VMTypeName) throws -> FD {
    let vm = try fd(.kvmCreateVM(type: type))
    try ok(.kvmCreateVCPU(vm: vm, id: 0))
    return vm
  }

  mutating func gmem(_ vm: FD, size: UInt64 = 0x40_0000, flags: UInt64 = 0) throws -> FD {
    try fd(.kvmCreateGuestMemfd(vm: vm, size: size, flags: flags))
  }

  /// `KVM_SET_USER_MEMORY_REGION2` with GUEST_MEMFD.
  func gmemSlot(_ vm: FD, slot: UInt32 = 10, gpa: UInt64 = 0xc000_0000, size: UInt64 = 0x20_0000,
                fd: FD, offset: UInt64 = 0, uaddr: UInt64 = 0) -> Operation {
    .kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: slot, flags: gmemFlag, guestPhysAddr: gpa, memorySize: size,
                                                           userspaceAddr: uaddr, guestMemfdOffset: offset, guestMemfd: fd.rawValue))
  }

  func attributes(_ vm: FD, _ gpa: UInt64, _ size: UInt64 = 0x1000, private isPrivate: Bool = true, flags: UInt64 = 0) -> Operation {
    .kvmSetMemoryAttributes(vm: vm, address: gpa, size: size, attributes: isPrivate ? privateAttr : 0, flags: flags)
  }

  /// What vCPU 0's `kvm_run` holds after a memory-fault exit.
  func memoryFault(_ vm: FD) -> MemoryFaultExit? { self.vm(vm)?.memoryFaultExits[0] }
}

@Suite struct GuestMemfdTests {
  /// `kvm_gmem_create()`: unsupported flags, then size <= 0 or unaligned, EINVAL; selftests
  /// `test_create_guest_memfd_invalid_sizes()` and `test_guest_memfd_flags()` (every bit not in
  /// KVM_CAP_GUEST_MEMFD_FLAGS is EINVAL).
  @Test(arguments: [
    (VMTypeName.default, UInt64(0x1000), UInt64(0), Errno?.none),
    (.default, 0x1000, 0x1, nil), (.default, 0x1000, 0x3, nil), (.default, 0x1000, 0x4, .EINVAL),
    (.default, 0x1000, 1 << 63, .EINVAL), (.swProtected, 0x1000, 0x1, nil), (.swProtected, 0x1000, 0x2, .EINVAL),
    (.tdx, 0x1000, 0x2, .EINVAL), (.tdx, 0x1000, 0x1, nil),
    (.default, 0, 0, .EINVAL), (.default, 0x800, 0, .EINVAL), (.default, 1, 0, .EINVAL), (.default, 0xfff, 0, .EINVAL),
    (.default, 1 << 63, 0, .EINVAL),   // a negative loff_t
  ])
  func createChecks(type: VMTypeName, size: UInt64, flags: UInt64, errno: Errno?) throws {
    var bench = try Bench()
    let vm = try bench.newVM(type)
    let before = bench.machine
    let result = bench.machine.perform(.kvmCreateGuestMemfd(vm: vm, size: size, flags: flags))
    if let errno {
      #expect(result == .failure(.errno(errno)))
      #expect(result.failureReason?.function == "kvm_gmem_create")
      #expect(bench.machine == before, "a refused create changes nothing")
    } else {
      guard case .success(.fd(let fd)) = result, case .guestMemfd(_, let id)? = try? bench.machine.files.lookup(fd) else {
        Issue.record("no guest_memfd fd: \(result)"); return
      }
      #expect(bench.vm(vm)?.guestMemfds[id]?.size == size)
    }
  }

  /// The flags are checked before the size: a bad flag with size 0 names the flags.
  @Test func flagsBeforeSize() throws {
    var bench = try Bench()
    let result = bench.machine.perform(.kvmCreateGuestMemfd(vm: bench.plain, size: 0, flags: 1 << 5))
    #expect(result.failureReason?.check.hasPrefix("flags 0x20") == true)
  }

  /// `test_create_guest_memfd_multiple()`: two files of one VM have their own sizes.
  @Test func multipleFilesKeepTheirSizes() throws {
    var bench = try Bench()
    let a = try bench.gmem(bench.plain, size: 0x1000), b = try bench.gmem(bench.plain, size: 0x2000)
    #expect(a != b)
    let files = bench.vm(bench.plain)?.guestMemfds.values.map(\.size).sorted()
    #expect(files == [0x1000, 0x2000])
  }

  /// `kvm_gmem_bind()`'s checks in order, and `__kvm_set_memory_region()`'s before them; the
  /// selftest `test_add_private_memory_region()` (the VM's fd, another VM's guest_memfd,
  /// unaligned offsets are EINVAL) and `test_add_overlapping_private_memory_regions()`
  /// (overlapping GPAs are EEXIST, before the bind).
  @Test(arguments: ["ebadf", "vm fd", "dma-buf fd", "other VM's", "unaligned offset", "past the end", "offset overlap", "gpa overlap first", "ok"])
  func bindChecks(_ name: String) throws {
    var bench = try Bench()
    let vm = try bench.newVM(.swProtected)
    let other = try bench.newVM(.swProtected)
    let mine = try bench.gmem(vm), theirs = try bench.gmem(other)
    try bench.ok(bench.gmemSlot(vm, slot: 11, gpa: 0x1_8000_0000, fd: mine, offset: 0x20_0000))
    let dev = try bench.openDevice(private: false)
    let buf = try bench.exportBAR0(dev)
    let (op, want): (Operation, Errno?) = switch name {
    case "ebadf": (bench.gmemSlot(vm, fd: FD(99)), .EBADF)
    case "vm fd": (bench.gmemSlot(vm, fd: vm), .EINVAL)
    case "dma-buf fd": (bench.gmemSlot(vm, fd: buf), .EINVAL)
    case "other VM's": (bench.gmemSlot(vm, fd: theirs), .EINVAL)
    case "unaligned offset": (bench.gmemSlot(vm, fd: mine, offset: 0x10), .EINVAL)
    case "past the end": (bench.gmemSlot(vm, fd: mine, offset: 0x30_0000), .EINVAL)
    case "offset overlap": (bench.gmemSlot(vm, fd: mine, offset: 0x10_0000), .EINVAL)
    case "gpa overlap first": (bench.gmemSlot(vm, gpa: 0x1_8000_0000, fd: FD(99)), .EEXIST)
    default: (bench.gmemSlot(vm, fd: mine, offset: 0), nil)
    }
    let before = bench.machine
    let result = bench.machine.perform(op)
    if let want {
      #expect(result == .failure(.errno(want)))
      #expect(bench.machine == before)
    } else {
      #expect(result == .success(.none))
      #expect(bench.vm(vm)?.memslots.values.first { $0.key.id == 10 }?.gmemFile != nil)
    }
  }

  /// A deleted slot leaves its file's bindings (`kvm_gmem_unbind()`): the range binds again.
  @Test func deleteUnbinds() throws {
    var bench = try Bench()
    let vm = try bench.newVM(.swProtected)
    let g = try bench.gmem(vm)
    try bench.ok(bench.gmemSlot(vm, fd: g))
    #expect(bench.errno(bench.gmemSlot(vm, slot: 12, gpa: 0x2_0000_0000, fd: g)) == .EINVAL)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: 10, flags: gmemFlag, guestPhysAddr: 0xc000_0000, memorySize: 0)))
    try bench.ok(bench.gmemSlot(vm, slot: 12, gpa: 0x2_0000_0000, fd: g))
  }

  /// `test_invalid_memory_region_flags()`: no dirty logging and no read-only with GUEST_MEMFD;
  /// KVM_SET_USER_MEMORY_REGION refuses every flag but LOG_DIRTY_PAGES and READONLY, and
  /// KVM_SET_USER_MEMORY_REGION2 every flag the VM does not support. On a 6.18 default VM
  /// GUEST_MEMFD is supported (check_memory_region_flags()).
  @Test(arguments: [VMTypeName.default, .swProtected])
  func invalidFlags(type: VMTypeName) throws {
    var bench = try Bench()
    let vm = try bench.newVM(type)
    let g = try bench.gmem(vm)
    func v1(_ flags: UInt32) -> Operation {
      .kvmSetUserMemoryRegion(vm: vm, region: MemoryRegion2(slot: 0, flags: flags, guestPhysAddr: 0, memorySize: 0x20_0000))
    }
    func v2(_ flags: UInt32) -> Operation {
      .kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: 0, flags: flags, guestPhysAddr: 0, memorySize: 0x20_0000))
    }
    for bit in 0 ..< 32 {
      let flag = UInt32(1) << UInt32(bit)
      if flag & 0b11 != 0 { continue }
      #expect(bench.errno(v1(flag)) == .EINVAL, "v1 flag \(flag)")
      #expect(bench.machine.perform(v1(flag)).failureReason?.function == "kvm_vm_ioctl")
      // GUEST_MEMFD is supported; bit 3 is the RFC's KVM_MEM_VFIO_DMABUF (any VM in reviewed).
      if flag == gmemFlag || flag == vfioDmaBuf { continue }
      #expect(bench.errno(v2(flag)) == .EINVAL, "v2 flag \(flag)")
    }
    #expect(bench.errno(bench.gmemSlot(vm, slot: 0, gpa: 0, fd: g).withFlags(gmemFlag | 1)) == .EINVAL)
    #expect(bench.errno(bench.gmemSlot(vm, slot: 0, gpa: 0, fd: g).withFlags(gmemFlag | 2)) == .EINVAL)
    try bench.ok(v1(0))   // the old ioctl still creates an ordinary slot
    try bench.ok(bench.gmemSlot(vm, slot: 1, gpa: 0x1_0000_0000, fd: g))
  }

  /// "Private memslots are immutable": a GUEST_MEMFD slot cannot be re-set, moved, or lose the
  /// flag (6.18.y, "KVM: Disallow toggling KVM_MEM_GUEST_MEMFD on an existing memslot").
  @Test(arguments: ["identical", "move", "drop the flag"])
  func guestMemfdSlotsAreImmutable(_ change: String) throws {
    var bench = try Bench()
    let vm = try bench.newVM(.default)
    let g = try bench.gmem(vm)
    try bench.ok(bench.gmemSlot(vm, fd: g))
    let op: Operation = switch change {
    case "identical": bench.gmemSlot(vm, fd: g)
    case "move": bench.gmemSlot(vm, gpa: 0x1_0000_0000, fd: g)
    default: bench.gmemSlot(vm, fd: g).withFlags(0)
    }
    #expect(bench.errno(op) == .EINVAL)
  }

  /// A guest_memfd holds its VM: closing the VM's fd leaves the VM; closing the last file
  /// destroys it. A closed file's slot answers a private fault with EFAULT (kvm_gmem_get_pfn()).
  @Test func theFileHoldsTheVM() throws {
    var bench = try Bench()
    let vm = try bench.newVM(.swProtected)
    let g = try bench.gmem(vm)
    try bench.ok(bench.gmemSlot(vm, fd: g))
    try bench.ok(bench.attributes(vm, 0xc000_0000))
    try bench.ok(.dmabufClose(fd: g))                     // close(2) of the guest_memfd
    #expect(bench.access(vm, 0xc000_0000) == .failure(.memoryFault(MemoryFaultExit(isPrivate: true, gfn: GPA(0xc000_0000).gfn))))
    #expect(bench.memoryFault(vm) == MemoryFaultExit(isPrivate: true, gfn: GPA(0xc000_0000).gfn))
    let g2 = try bench.gmem(vm)
    let id = bench.machine.kvm.vms.keys.max()!
    try bench.ok(.kvmDestroyVM(vm: vm))
    #expect(bench.machine.kvm.vms[id] != nil, "the guest_memfd still refers to the VM")
    try bench.ok(.dmabufClose(fd: g2))
    #expect(bench.machine.kvm.vms[id] == nil)
  }
}

extension Operation {
  /// The same memslot ioctl with other flags.
  func withFlags(_ flags: UInt32) -> Operation {
    guard case .kvmSetUserMemoryRegion2(let vm, var region) = self else { return self }
    region.flags = flags
    return .kvmSetUserMemoryRegion2(vm: vm, region: region)
  }
}

extension OpResult {
  var failureReason: Refusal? {
    if case .failure(let f) = self { return f.reason }
    return nil
  }
}

@Suite struct MemoryAttributesTests {
  /// `kvm_vm_ioctl_set_mem_attributes()`'s checks in order, all EINVAL, and a default VM
  /// supports no attribute (setting 0 is a no-op).
  @Test(arguments: [
    ("flags", VMTypeName.swProtected, UInt64(0x1000), UInt64(0x1000), privateAttr, UInt64(1), Errno?.some(.EINVAL), "attrs->flags"),
    ("unsupported attribute", .swProtected, 0x1000, 0x1000, 1, 0, .EINVAL, "attrs->attributes"),
    ("private on a default VM", .default, 0x1000, 0x1000, privateAttr, 0, .EINVAL, "attrs->attributes"),
    ("attribute before size", .swProtected, 0x1000, 0, 1, 0, .EINVAL, "attrs->attributes"),
    ("size 0", .swProtected, 0x1000, 0, privateAttr, 0, .EINVAL, "attrs->size == 0"),
    ("wraps", .swProtected, ~UInt64(0xfff), 0x2000, privateAttr, 0, .EINVAL, "attrs->size == 0"),
    ("unaligned address", .swProtected, 0x1800, 0x1000, privateAttr, 0, .EINVAL, "!PAGE_ALIGNED"),
    ("unaligned size", .swProtected, 0x1000, 0x800, privateAttr, 0, .EINVAL, "!PAGE_ALIGNED"),
    ("shared on a default VM", .default, 0x1000, 0x1000, 0, 0, nil, ""),
    ("private", .swProtected, 0x1000, 0x1000, privateAttr, 0, nil, ""),
    ("private on a TD", .tdx, 0x1000, 0x1000, privateAttr, 0, nil, ""),
  ])
  func checks(_ name: String, type: VMTypeName, address: UInt64, size: UInt64, attributes: UInt64, flags: UInt64,
              errno: Errno?, check: String) throws {
    var bench = try Bench()
    let vm = try bench.newVM(type)
    let before = bench.machine
    let result = bench.machine.perform(.kvmSetMemoryAttributes(vm: vm, address: address, size: size, attributes: attributes, flags: flags))
    if let errno {
      #expect(result == .failure(.errno(errno)))
      #expect(result.failureReason?.check.hasPrefix(check) == true, "\(result.failureReason.map(\.description) ?? "")")
      #expect(bench.machine == before)
    } else {
      #expect(result == .success(.none))
      #expect(bench.vm(vm)?.memoryAttributes.isPrivate(GPA(address).gfn) == (attributes != 0))
    }
  }

  /// Without CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES the ioctl does not exist (this machine's
  /// 6.18 PVM kernel answers ENOTTY).
  @Test func noSuchIoctlWithoutTheConfig() throws {
    var host = HostCapabilities.typical
    host.memoryAttributes = false
    var config = Bench.configuration
    config.host = host
    var machine = try Machine(configuration: config)
    let result = machine.perform(.kvmSetMemoryAttributes(vm: try #require(machine.vmFD(named: "vm0")), address: 0, size: 0x1000,
                                                         attributes: 0, flags: 0))
    #expect(result == .failure(.errno(.ENOTTY)))
  }
}

/// `kvm_mmu_faultin_pfn()` follows the attributes (6.18 `arch/x86/kvm/mmu/mmu.c`).
@Suite struct FaultFollowsAttributesTests {
  /// `private_mem_kvm_exits_test.c`, `test_private_access_memslot_not_private()`: a private
  /// access to a slot without guest_memfd exits with KVM_EXIT_MEMORY_FAULT, flags PRIVATE, the
  /// GPA and a page.
  @Test func privateAccessToASlotWithoutGuestMemfd() throws {
    var bench = try Bench()
    let vm = try bench.newVM(.swProtected)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: 10, flags: 0, guestPhysAddr: 0xc000_0000,
                                                                       memorySize: 0x1000, userspaceAddr: 0x7f00_0000_0000)))
    #expect(bench.access(vm, 0xc000_0000) == .success(.guestAccess("mapped")), "shared: the user address")
    try bench.ok(bench.attributes(vm, 0xc000_0000))
    #expect(bench.vm(vm)?.mmu.mappedPages == 0, "the conversion zapped the shared mapping")
    #expect(bench.access(vm, 0xc000_0000) == .failure(.memoryFault(MemoryFaultExit(isPrivate: true, gfn: GPA(0xc000_0000).gfn))))
    let exit = try #require(bench.memoryFault(vm))
    #expect(exit.flags == MemoryFaultExit.flagPrivate && exit.gpa == 0xc000_0000 && exit.size == 0x1000)
    #expect(MemoryFaultExit.exitReason == 39)
  }

  /// `test_private_access_memslot_deleted()`: the private page's slot is deleted under the
  /// vCPU; the access exits with KVM_EXIT_MEMORY_FAULT (flags PRIVATE, gpa, size).
  @Test func privateAccessAfterTheSlotIsDeleted() throws {
    var bench = try Bench()
    let vm = try bench.newVM(.swProtected)
    let g = try bench.gmem(vm, size: 0x1000)
    try bench.ok(bench.gmemSlot(vm, size: 0x1000, fd: g))
    try bench.ok(bench.attributes(vm, 0xc000_0000))
    #expect(bench.access(vm, 0xc000_0000) == .success(.guestAccess("mapped")), "private: guest_memfd")
    try bench.ok(.kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: 10, flags: gmemFlag, guestPhysAddr: 0xc000_0000, memorySize: 0)))
    #expect(bench.access(vm, 0xc000_0000) == .failure(.memoryFault(MemoryFaultExit(isPrivate: true, gfn: GPA(0xc000_0000).gfn))))
    #expect(bench.memoryFault(vm) == MemoryFaultExit(isPrivate: true, gfn: GPA(0xc000_0000).gfn))
    // The next KVM_RUN no longer holds the exit.
    try bench.ok(.kvmSetMemoryAttributes(vm: vm, address: 0xc000_0000, size: 0x1000, attributes: 0, flags: 0))
    #expect(bench.access(vm, 0xc000_0000) == .success(.guestAccess("exit_mmio")), "shared, no slot: emulated")
    #expect(bench.memoryFault(vm) == nil)
  }

  /// `guest_memfd_test.c`, `test_guest_memfd_guest()`: a default VM's GUEST_MEMFD slot of an
  /// MMAP | INIT_SHARED file, with no user address, serves shared faults from guest_memfd
  /// (KVM_MEMSLOT_GMEM_ONLY); KVM_CAP_GUEST_MEMFD_FLAGS offers both flags to a default VM.
  @Test func gmemOnlySlotOfADefaultVM() throws {
    var bench = try Bench()
    #expect(bench.machine.perform(.kvmCheckExtension(vm: bench.plain, capability: 244)) == .success(.read(0x3)))
    let g = try bench.gmem(bench.plain, size: 0x1000, flags: 0x3)
    try bench.ok(bench.gmemSlot(bench.plain, size: 0x1000, fd: g))
    #expect(bench.access(bench.plain, 0xc000_0000) == .success(.guestAccess("mapped")))
    #expect(bench.vm(bench.plain)?.memslots.values.first { $0.key.id == 10 }?.isGmemOnly == true)
  }

  /// A TD's private access to a RAM slot without guest_memfd is a memory-fault exit
  /// (`kvm_mmu_faultin_pfn_gmem()`, `!kvm_slot_has_gmem()`), not a TDH.MMIO.MAP of RAM.
  @Test func tdPrivateAccessToARAMSlot() throws {
    var bench = try Bench()
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(slot: 2, flags: 0, guestPhysAddr: 0x1000_0000,
                                                                             memorySize: 0x1000, userspaceAddr: 0x7f00_0000_0000)))
    try bench.ok(bench.attributes(bench.td, 0x1000_0000))
    #expect(bench.access(bench.td, 0x1000_0000) == .failure(.memoryFault(MemoryFaultExit(isPrivate: true, gfn: GPA(0x1000_0000).gfn))))
    #expect(bench.memoryFault(bench.td) == MemoryFaultExit(isPrivate: true, gfn: GPA(0x1000_0000).gfn))
    #expect(bench.violated().isEmpty)
    #expect(!bench.machine.trace.events.contains { $0.description.contains("TDH.MMIO.MAP") })
  }

  /// A TD's private access to a GFN whose attributes say shared: KVM_EXIT_MEMORY_FAULT with
  /// flags PRIVATE (user space is to convert it), for the dma-buf slot too (RFC "Handle page
  /// fault for private MMIO").
  @Test func tdPrivateAccessToASharedGFN() throws {
    var bench = try Bench()
    let dev = try bench.openDevice(private: true)
    try bench.bindToTD()
    let buf = try bench.exportBAR0(dev)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: Bench.bar0, guestMemfd: buf.rawValue)))
    #expect(bench.errno(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil)) == .EFAULT)
    #expect(bench.memoryFault(bench.td)?.isPrivate == true)
    try bench.ok(bench.attributes(bench.td, gpaBase, Bench.bar0))
    #expect(try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil)) == .guestAccess("accepted"))
  }

  /// A TD's GPA with the shared bit (bit 47: MAXPHYADDR 46, so 48-bit GPAs) is a shared
  /// access through the direct root: no Secure-EPT call; `memory_fault.gpa` has no shared bit.
  @Test func tdSharedBit() throws {
    var bench = try Bench()
    let shared: UInt64 = 1 << 47
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(slot: 2, flags: 0, guestPhysAddr: 0x1000_0000,
                                                                             memorySize: 0x1000, userspaceAddr: 0x7f00_0000_0000)))
    #expect(bench.access(bench.td, shared | 0x1000_0000) == .success(.guestAccess("mapped")))
    #expect(bench.vm(bench.td)?.sharedMMU.mappedPages == 1 && bench.vm(bench.td)?.mmu.mappedPages == 0)
    #expect(bench.access(bench.td, shared | 0x1000_0000) == .success(.guestAccess("already_mapped")))
    try bench.ok(bench.attributes(bench.td, 0x1000_0000))
    #expect(bench.vm(bench.td)?.sharedMMU.mappedPages == 0, "converting to private zaps the shared mapping")
    #expect(bench.access(bench.td, shared | 0x1000_0000) == .failure(.memoryFault(MemoryFaultExit(isPrivate: false, gfn: GPA(0x1000_0000).gfn))))
    #expect(bench.memoryFault(bench.td) == MemoryFaultExit(isPrivate: false, gfn: GPA(0x1000_0000).gfn))
    // A TD slot may not reach the shared bit (kvm_is_gfn_alias()).
    #expect(bench.errno(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(
      slot: 3, flags: 0, guestPhysAddr: shared, memorySize: 0x1000, userspaceAddr: 0x7f00_0000_0000))) == .EINVAL)
  }
}

@Suite struct VMTypeAndCapabilityTests {
  /// KVM_CHECK_EXTENSION on /dev/kvm and on a VM of each type, on the typical host.
  @Test(arguments: [
    (Optional<VMTypeName>.none, KVMCapabilityNumber.multiAddressSpace, UInt64(2)),
    (.default, .multiAddressSpace, 2), (.swProtected, .multiAddressSpace, 1), (.tdx, .multiAddressSpace, 1),
    (nil, .memoryAttributes, 8), (.default, .memoryAttributes, 0), (.swProtected, .memoryAttributes, 8), (.tdx, .memoryAttributes, 8),
    (nil, .guestMemfdFlags, 3), (.default, .guestMemfdFlags, 3), (.swProtected, .guestMemfdFlags, 1), (.tdx, .guestMemfdFlags, 1),
    (nil, .readonlyMem, 1), (.swProtected, .readonlyMem, 1), (.tdx, .readonlyMem, 0),
    (nil, .vmTypes, 0b10_0011), (.tdx, .vmTypes, 0b10_0011),
    (nil, .userMemory2, 1), (.tdx, .guestMemfd, 1), (.default, .guestMemfd, 1), (nil, .memoryFaultInfo, 1),
    (nil, .nrMemslots, 32764), (nil, .userMemory, 1),
  ])
  func typicalHost(on type: VMTypeName?, cap: KVMCapabilityNumber, value: UInt64) throws {
    var bench = try Bench()
    let vm = try type.map { t throws -> FD in try bench.newVM(t) }
    #expect(bench.machine.perform(.kvmCheckExtension(vm: vm, capability: cap.rawValue)) == .success(.read(value)), "\(cap)")
  }

  /// The answers of this machine's kernel (6.18.44 with a PVM KVM: no SMM, no TDP so
  /// kvm_mmu_max_gfn() uses 52 bits, the default VM type only, no memory attributes), taken with
  /// KVM_CHECK_EXTENSION on /dev/kvm and on a default VM: 3=1 10=32764 81=1 118=0 231=1 232=1
  /// 233=0 234=1 235=1 244=3; KVM_CREATE_VM type 1 and 5 EINVAL.
  @Test func thisMachinesKernel() throws {
    let host = HostCapabilities(smm: false, maxPhysAddr: 52, vmTypes: [.default], memoryAttributes: false)
    var machine = try Machine(configuration: MachineConfiguration(vms: [VMConfiguration(name: "vm0", type: .default)], host: host))
    let vm = try #require(machine.vmFD(named: "vm0"))
    let expected: [Int32: UInt64] = [3: 1, 10: 32764, 81: 1, 118: 0, 231: 1, 232: 1, 233: 0, 234: 1, 235: 1, 244: 3, 243: 0]
    for (cap, value) in expected {
      #expect(machine.perform(.kvmCheckExtension(vm: nil, capability: cap)) == .success(.read(value)), "system cap \(cap)")
      #expect(machine.perform(.kvmCheckExtension(vm: vm, capability: cap)) == .success(.read(value)), "vm cap \(cap)")
    }
    for type in [VMTypeName.swProtected, .tdx] {
      #expect(machine.perform(.kvmCreateVM(type: type)) == .failure(.errno(.EINVAL)))
    }
    // No SMM: one address space; 52-bit GPAs: a slot at 2^48 is fine, at 2^52 it is not.
    func slot(_ id: UInt32, _ gpa: UInt64) -> Operation {
      .kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: id, flags: 0, guestPhysAddr: gpa, memorySize: 0x1000,
                                                             userspaceAddr: 0x7f00_0000_0000))
    }
    #expect(machine.perform(slot(1 << 16 | 5, 0x3_0000_0000)) == .failure(.errno(.EINVAL)))
    #expect(machine.perform(slot(6, 1 << 48)) == .success(.none))
    #expect(machine.perform(slot(7, 1 << 52)) == .failure(.errno(.EINVAL)))
  }

  /// The typical host's MAXPHYADDR 46 bounds slots at GFN 2^34 - 1 (kvm_mmu_max_gfn()).
  @Test func maxPhysAddrBoundsSlots() throws {
    var bench = try Bench()
    func slot(_ gpa: UInt64) -> Operation {
      .kvmSetUserMemoryRegion2(vm: bench.plain, region: MemoryRegion2(slot: 5, flags: 0, guestPhysAddr: gpa, memorySize: 0x1000,
                                                                      userspaceAddr: 0x7f00_0000_0000))
    }
    #expect(bench.machine.perform(slot(1 << 46)).failureReason?.function == "kvm_arch_prepare_memory_region")
    try bench.ok(slot((1 << 46) - 0x1000))
  }

  /// A host configuration the model cannot have is refused when the machine is built.
  @Test(arguments: [UInt8(31), 53])
  func impossibleHosts(maxPhysAddr: UInt8) {
    var host = HostCapabilities.typical
    host.maxPhysAddr = maxPhysAddr
    #expect(throws: ConfigurationError.self) { try Machine(configuration: MachineConfiguration(host: host)) }
    host = .typical
    host.vmTypes = [.tdx]
    #expect(throws: ConfigurationError.self) { try Machine(configuration: MachineConfiguration(host: host)) }
  }
}

/// Deleting a private MMIO slot of a TD whose interface is RUN (README "Deleting a private
/// MMIO slot").
@Suite struct PrivateMMIOSlotDeleteTests {
  static let delete = Operation.kvmSetUserMemoryRegion2(vm: FD(4), region: MemoryRegion2(slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: 0))

  /// reviewed: EBUSY, the slot stays valid and mapped, the TD lives and still reads the page;
  /// after the interface is stopped (the revoke unmaps), the delete succeeds.
  /// rfc-v1: the flush's TDH.MMIO.UNMAP is refused and KVM_BUG_ON kills the TD.
  @Test(arguments: Variant.allCases)
  func deleteWhileMapped(variant: Variant) throws {
    var bench = try Bench(variant)
    _ = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
    let delete = Operation.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: 0))
    let result = bench.machine.perform(delete)
    switch variant {
    case .reviewed:
      #expect(result == .failure(.errno(.EBUSY)))
      #expect(result.failureReason?.function == "kvm_set_memslot")
      let slot = try #require(bench.vm(bench.td)?.memslots.values.first)
      #expect(!slot.isInvalid)
      #expect(bench.access(bench.td, gpaBase) == .success(.guestAccess("already_mapped", value: 0)))
      #expect(bench.violated().isEmpty)
      try bench.ok(.tdispStop(device: "nic0"))
      try bench.ok(delete)
      #expect(bench.vm(bench.td)?.memslots.isEmpty == true && bench.vm(bench.td)?.isDead == false)
    case .rfcV1:
      #expect(result == .success(.none))
      #expect(bench.vm(bench.td)?.isDead == true)
      #expect(bench.violated().contains("NoKVMBugOn"))
    }
  }

  /// Nothing mapped: the delete goes through in both variants.
  @Test(arguments: Variant.allCases)
  func deleteWithNothingMapped(variant: Variant) throws {
    var bench = try Bench(variant)
    _ = try bench.tdSlot()
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: 0)))
    #expect(bench.vm(bench.td)?.memslots.isEmpty == true)
    #expect(bench.violated().isEmpty)
  }

  /// The accept racing the delete, in each order of their regions: whatever the schedule, the
  /// TD never dies in reviewed. Hand-driven: the accept's fault runs up to its install, the
  /// delete invalidates and waits for it, the fault maps, the delete sees the mapping.
  @Test func acceptInFlightWhenTheDeleteInvalidates() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.tdSlot()
    var accept = bench.machine.startThread(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil),
                                           context: ContextID(rawValue: 7), name: "vcpu0")
    var delete = bench.machine.startThread(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: 0)))
    var none = Contention()
    // The accept: guest mode (EPT violation), SRCU + slot, PFN lookup.
    for _ in 0 ..< 3 { _ = bench.machine.step(&accept, choices: &none) }
    // The delete: checks and invalidation, then it waits for the accept's SRCU read section.
    _ = bench.machine.step(&delete, choices: &none)
    guard case .blocked = bench.machine.step(&delete, choices: &none) else { Issue.record("the delete did not wait for SRCU"); return }
    var result: OpResult?
    while result == nil {
      if case .finished(let r) = bench.machine.step(&accept, choices: &none) { result = r }
    }
    #expect(result == .success(.guestAccess("accepted")))
    var deleted: OpResult?
    while deleted == nil {
      if case .finished(let r) = bench.machine.step(&delete, choices: &none) { deleted = r }
    }
    #expect(deleted == .failure(.errno(.EBUSY)))
    #expect(bench.violated().isEmpty)
  }

  /// reviewed retries a busy TDH.MMIO.BLOCK whatever its operand (tdx_operand_busy()), on the
  /// revoke's zap.
  @Test(arguments: [TDXOperand.sept, TDXOperand.rcx])
  func busyBlockOnTheRevokeIsRetried(operand: UInt32) throws {
    var bench = try Bench(.reviewed)
    _ = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
    var contention = Contention(busy: [.init(.mmioBlock, operand: operand)])
    #expect(bench.machine.perform(.tdispStop(device: "nic0"), context: .ioctl, contention: &contention) == .success(.tdiState("CONFIG_UNLOCKED")))
    #expect(contention.busy.isEmpty)
    #expect(bench.vm(bench.td)?.isDead == false && bench.vm(bench.td)?.mmu.mappedPages == 0)
    #expect(bench.violated().isEmpty)
  }
}

