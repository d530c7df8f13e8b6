import Testing
import KernelCore
import DmaBuf
@testable import VFIO
@testable import KVM
@testable import Platform

/// Every errno path of `VFIO_DEVICE_FEATURE_DMA_BUF`, `dma_buf_get_pfn_unlocked()` and
/// `KVM_SET_USER_MEMORY_REGION(2)`, run as a VMM runs them, with the full reason the result
/// carries (`function: check`, what the text report, the trace and `--json` print), in each
/// variant where the two differ.
struct ReasonCase: CustomTestStringConvertible, Sendable {
  let name: String
  let variant: Variant
  /// Sets the machine up and returns the op that must fail.
  let setup: @Sendable (inout Bench) throws -> Operation
  let errno: Errno
  let reason: String
  var testDescription: String { "\(name) [\(variant)]" }

  init(_ name: String, _ variant: Variant, _ errno: Errno, _ reason: String,
       _ setup: @escaping @Sendable (inout Bench) throws -> Operation) {
    self.name = name; self.variant = variant; self.errno = errno; self.reason = reason; self.setup = setup
  }

  /// The same case in both variants.
  static func both(_ name: String, _ errno: Errno, _ reason: String,
                   _ setup: @escaping @Sendable (inout Bench) throws -> Operation) -> [ReasonCase] {
    Variant.allCases.map { ReasonCase(name, $0, errno, reason, setup) }
  }

  func check() throws {
    var bench = try Bench(variant)
    let op = try setup(&bench)
    let result = bench.machine.perform(op)
    guard case .failure(let failure) = result else { Issue.record("\(op) returned \(result)"); return }
    #expect(failure.errno == errno, "\(failure)")
    #expect(failure.reason?.description == reason)
  }
}

let pageBytes: UInt64 = 0x1000

extension Bench {
  /// A VFIO_DEVICE_FEATURE_DMA_BUF of `ranges` of BAR `region` on a device opened and bound
  /// (shared).
  mutating func exportOp(_ region: UInt32, _ ranges: [(UInt64, UInt64)], flags: UInt32 = 0) throws -> Operation {
    let dev = try openDevice(private: false)
    return .vfioDmaBuf(fd: dev, regionIndex: region, ranges: ranges.map { DmaRange(offset: $0.0, length: $0.1) },
                       openFlags: 0, flags: flags)
  }

  /// A buffer of all of BAR0 with a test importer attached.
  mutating func attachedBuffer() throws -> (device: FD, buffer: FD, attachment: AttachmentID) {
    let dev = try openDevice(private: false)
    let buf = try exportBAR0(dev)
    return (dev, buf, try attach(buf))
  }
}

@Suite struct DmaBufExportReasonTests {
  static let cases: [ReasonCase] = ([
    // The ioctl's entry, both variants.
    ReasonCase.both("the device fd is not open", .EBADF, "sys_ioctl: no file is open at fd 99") { _ in
      .vfioDmaBuf(fd: FD(99), regionIndex: 0, ranges: [DmaRange(offset: 0, length: pageBytes)], openFlags: 0, flags: 0)
    },
    ReasonCase.both("the device fd was closed", .EBADF, "sys_ioctl: no file is open at fd 5") { b in
      let dev = try b.openDevice(private: false)
      try b.ok(.vfioClose(fd: dev))
      return .vfioDmaBuf(fd: dev, regionIndex: 0, ranges: [DmaRange(offset: 0, length: pageBytes)], openFlags: 0, flags: 0)
    },
    ReasonCase.both("not bound to iommufd", .EINVAL,
                    "vfio_device_fops_unl_ioctl: !df->access_granted: the device is not bound to iommufd (VFIO_DEVICE_BIND_IOMMUFD)") { b in
      let dev = try b.fd(.vfioOpen(device: "nic0"))
      return .vfioDmaBuf(fd: dev, regionIndex: 0, ranges: [DmaRange(offset: 0, length: pageBytes)], openFlags: 0, flags: 0)
    },
    ReasonCase.both("vfio_device_try_get_registration fails", .ENODEV,
                    "vfio_pci_core_feature_dma_buf: vfio_device_try_get_registration failed") { b in
      let op = try b.exportOp(0, [(0, pageBytes)])
      b.machine.vfio.devices[VFIODeviceID(1)]!.registrations = 0
      return op
    },
    ReasonCase.both("no fd left for the buffer", .EMFILE,
                    "alloc_fd: every fd below the process's limit of 1024 (RLIMIT_NOFILE) is open: 1021 files and the 3 standard streams") { b in
      let op = try b.exportOp(0, [(0, pageBytes)])
      while case .success = b.machine.perform(.vfioOpen(device: "nic0")) {}
      return op
    },
    // 6.19 (reviewed): vfio_pci_core_feature_dma_buf, validate_dmabuf_input,
    // vfio_pci_core_get_dmabuf_phys, vfio_pci_core_fill_phys_vec, in that order.
    [ReasonCase("no ranges", .reviewed, .EINVAL, "vfio_pci_core_feature_dma_buf: nr_ranges is 0") { try $0.exportOp(0, []) }],
    [ReasonCase("flags set", .reviewed, .EINVAL, "vfio_pci_core_feature_dma_buf: flags 0x1 are not 0") {
      try $0.exportOp(0, [(0, pageBytes)], flags: 1)
    }],
    [ReasonCase("ROM region", .reviewed, .ENODEV, "vfio_pci_core_feature_dma_buf: region_index 6 >= VFIO_PCI_ROM_REGION_INDEX") {
      try $0.exportOp(6, [(0, pageBytes)])
    }],
    [ReasonCase("empty range", .reviewed, .EINVAL, "validate_dmabuf_input: range 0: length 0 or offset/length not page aligned") {
      try $0.exportOp(0, [(0, 0)])
    }],
    [ReasonCase("unaligned offset of the second range", .reviewed, .EINVAL,
               "validate_dmabuf_input: range 1: length 0 or offset/length not page aligned") {
      try $0.exportOp(0, [(0, pageBytes), (0x800, pageBytes)])
    }],
    [ReasonCase("total length overflows", .reviewed, .EINVAL, "validate_dmabuf_input: total length overflows at range 1") {
      try $0.exportOp(0, [(0, 1 << 63), (0, 1 << 63)])
    }],
    [ReasonCase("total length has DMA_IOVA_USE_SWIOTLB", .reviewed, .EINVAL, "validate_dmabuf_input: length & DMA_IOVA_USE_SWIOTLB") {
      try $0.exportOp(0, [(0x1000, 0xFFFF_FFFF_FFFF_F000)])
    }],
    [ReasonCase("no such BAR", .reviewed, .EINVAL, "vfio_pci_core_get_dmabuf_phys: no p2pdma provider for BAR 1") {
      try $0.exportOp(1, [(0, pageBytes)])
    }],
    [ReasonCase("physical address overflows", .reviewed, .EOVERFLOW, "vfio_pci_core_fill_phys_vec: range 0: check_add_overflow") {
      try $0.exportOp(0, [(0xFFFF_FFFF_FFFF_0000, pageBytes)])
    }],
    [ReasonCase("range past the BAR", .reviewed, .EINVAL, "vfio_pci_core_fill_phys_vec: range 0 ends past BAR 0") {
      try $0.exportOp(0, [(0x1F_F000, 2 * pageBytes)])
    }],
    // The RFC (patch 4's check_dma_ranges): every refusal EINVAL.
    [ReasonCase("no ranges", .rfcV1, .EINVAL,
               "vfio_pci_core_feature_dma_buf: model: nr_ranges is 0 (the RFC would export an empty buffer)") { try $0.exportOp(0, []) },
    ReasonCase("ROM region", .rfcV1, .EINVAL, "check_dma_ranges: range 0: region_index 6 >= VFIO_PCI_ROM_REGION_INDEX") {
      try $0.exportOp(6, [(0, pageBytes)])
    }],
    [ReasonCase("no such BAR", .rfcV1, .EINVAL, "check_dma_ranges: range 0: BAR 1 has size 0") { try $0.exportOp(1, [(0, pageBytes)]) }],
    [ReasonCase("unaligned offset", .rfcV1, .EINVAL, "check_dma_ranges: range 0: [0x800, +0x1000) unaligned or past the BAR") {
      try $0.exportOp(0, [(0x800, pageBytes)])
    }],
    [ReasonCase("range past the BAR", .rfcV1, .EINVAL, "check_dma_ranges: range 0: [0x1ff000, +0x2000) unaligned or past the BAR") {
      try $0.exportOp(0, [(0x1F_F000, 2 * pageBytes)])
    }],
    [ReasonCase("offset + length wraps", .rfcV1, .EINVAL,
               "check_dma_ranges: range 0: [0xffffffffffff0000, +0x100000) unaligned or past the BAR") {
      try $0.exportOp(0, [(0xFFFF_FFFF_FFFF_0000, 0x10_0000)])
    }],
    [ReasonCase("an empty range inside the BAR", .rfcV1, .EINVAL, "check_dma_ranges: model: range 0 has length 0") {
      try $0.exportOp(0, [(pageBytes, 0)])
    }],
  ] as [[ReasonCase]]).flatMap { $0 }

  @Test(arguments: cases)
  func reason(_ c: ReasonCase) throws { try c.check() }

  /// The RFC's request names a BAR per range; the model's op gives every range the request's
  /// BAR, so the mismatch is reached through the driver alone.
  @Test func rfcRangeOfAnotherBAR() throws {
    var bench = try Bench(.rfcV1)
    let dev = try bench.openDevice(private: false)
    guard case .vfioDevice(let file) = try bench.machine.files.lookup(dev) else { Issue.record("not a device"); return }
    var core = bench.machine.dmabufCore, trace = Trace()
    do {
      _ = try bench.machine.vfio.exportDmaBuf(file, request: VFIODeviceFeatureDmaBuf(
        regionIndex: 0, openFlags: 0, flags: 0, ranges: [VFIODmaRange(regionIndex: 2, offset: 0, length: pageBytes)]),
                                              dmabufCore: &core, trace: &trace)
      Issue.record("exported")
    } catch {
      #expect(error == .EINVAL)
      #expect(error.reason?.description == "check_dma_ranges: model: range 0 names BAR 2, the request BAR 0")
    }
  }
}

@Suite struct GetPfnReasonTests {
  static let cases: [ReasonCase] = ([
    ReasonCase.both("no such attachment", .EINVAL, "dma_buf_get_pfn_unlocked: no such attachment") { _ in
      .dmabufGetPfn(attachment: AttachmentID(99), pgoff: PageIndex(0))
    },
    ReasonCase.both("revoked", .ENODEV, "vfio_pci_dma_buf_get_pfn: priv->revoked") { b in
      let (dev, _, attachment) = try b.attachedBuffer()
      try b.ok(.vfioSetMemoryDecode(fd: dev, enable: false))
      return .dmabufGetPfn(attachment: attachment, pgoff: PageIndex(0))
    },
    ReasonCase.both("at the buffer's end", .EINVAL, "vfio_pci_dma_buf_get_pfn: offset 0x200000 >= priv->dmabuf->size 0x200000 (pgoff 0x200)") { b in
      .dmabufGetPfn(attachment: try b.attachedBuffer().attachment, pgoff: PageIndex(0x200))
    },
    ReasonCase.both("the attach's dma-buf fd is not open", .EBADF, "dma_buf_get: no file is open at fd 42") { _ in
      .dmabufAttach(fd: FD(42), importer: "imp", dynamic: true, peer2peer: true)
    },
    ReasonCase.both("the attach's fd is a VM", .EINVAL, "dma_buf_get: fd 4 is not a dma-buf (is_dma_buf_file() fails)") { b in
      .dmabufAttach(fd: b.plain, importer: "imp", dynamic: true, peer2peer: true)
    },
  ] as [[ReasonCase]]).flatMap { $0 }

  @Test(arguments: cases)
  func reason(_ c: ReasonCase) throws { try c.check() }
}

/// A region for `KVM_SET_USER_MEMORY_REGION2`.
func memslot(_ id: UInt32 = 1, _ flags: MemslotFlags = [], gpa: UInt64 = 0x8000_0000, size: UInt64 = 0x20_0000,
          uaddr: UInt64 = 0x7000_0000_0000, offset: UInt64 = 0, fd: FD = FD(0)) -> MemoryRegion2 {
  MemoryRegion2(slot: id, flags: flags, guestPhysAddr: gpa, memorySize: size, userspaceAddr: uaddr,
                guestMemfdOffset: offset, guestMemfd: UInt32(bitPattern: fd.rawValue))
}

extension Bench {
  /// All of BAR0 exported from the device bound private to td0 (locked and started).
  mutating func privateBuffer() throws -> FD { try exportBAR0(try openDevice(private: true)) }

  mutating func region2(_ vm: FD, _ r: MemoryRegion2) -> Operation { .kvmSetUserMemoryRegion2(vm: vm, region: r) }
}

@Suite struct MemslotReasonTests {
  static let set = "__kvm_set_memory_region"
  static let cases: [ReasonCase] = ([
    // kvm_vm_ioctl's entry and the dead VM.
    ReasonCase.both("the VM fd is not open", .EBADF, "sys_ioctl: no file is open at fd 99") { b in b.region2(FD(99), memslot()) },
    ReasonCase.both("a VM that KVM_BUG_ON killed", .EIO, "kvm_vm_ioctl: the VM is bugged (KVM_BUG_ON)") { b in
      b.machine.kvm.vms[VMID(1)]!.markDead()
      return b.region2(b.td, memslot())
    },
    ReasonCase.both("KVM_SET_USER_MEMORY_REGION with a v2 flag", .EINVAL,
                    "kvm_vm_ioctl: KVM_SET_USER_MEMORY_REGION: mem.flags 0x4 & ~KVM_SET_USER_MEMORY_REGION_V1_FLAGS") { b in
      .kvmSetUserMemoryRegion(vm: b.td, region: memslot(1, .guestMemfd))
    },
    ReasonCase.both("slot id", .EINVAL, "kvm_vm_ioctl_set_memory_region: (u16)mem->slot 32764 >= KVM_USER_MEM_SLOTS") { b in
      b.region2(b.td, memslot(32764))
    },
    // check_memory_region_flags.
    ReasonCase.both("private flags together", .EINVAL, "check_memory_region_flags: private flags are mutually exclusive") { b in
      b.region2(b.td, memslot(1, [.guestMemfd, .vfioDmaBuf]))
    },
    // A TD's valid flags: LOG_DIRTY_PAGES and its private flags (the RFC: GUEST_MEMFD only when
    // asked for; reviewed: GUEST_MEMFD and VFIO_DMABUF always), never LOG_DIRTY_PAGES with one.
    [ReasonCase("an unknown flag", .reviewed, .EINVAL, "check_memory_region_flags: mem->flags 0x20 & ~valid_flags 0xd") { b in
      b.region2(b.td, memslot(1, MemslotFlags(rawValue: 1 << 5)))
    }],
    [ReasonCase("an unknown flag", .rfcV1, .EINVAL, "check_memory_region_flags: mem->flags 0x20 & ~valid_flags 0x1") { b in
      b.region2(b.td, memslot(1, MemslotFlags(rawValue: 1 << 5)))
    }],
    [ReasonCase("a dma-buf slot in a VM without private memory", .rfcV1, .EINVAL,
                "check_memory_region_flags: mem->flags 0x8 & ~valid_flags 0x0") { b in
      b.region2(b.plain, memslot(1, .vfioDmaBuf, fd: try b.privateBuffer()))
    }],
    [ReasonCase("dirty logging of a private slot", .reviewed, .EINVAL, "check_memory_region_flags: mem->flags 0x5 & ~valid_flags 0xc") { b in
      b.region2(b.td, memslot(1, [.guestMemfd, .logDirtyPages]))
    }],
    [ReasonCase("dirty logging of a private slot", .rfcV1, .EINVAL, "check_memory_region_flags: mem->flags 0x5 & ~valid_flags 0x4") { b in
      b.region2(b.td, memslot(1, [.guestMemfd, .logDirtyPages]))
    }],
    // __kvm_set_memory_region's own checks, in order.
    ReasonCase.both("unaligned size", .EINVAL, "\(set): memory_size not page aligned") { b in b.region2(b.td, memslot(size: 0x1800)) },
    ReasonCase.both("unaligned GPA", .EINVAL, "\(set): guest_phys_addr not page aligned") { b in b.region2(b.td, memslot(gpa: 0x8000_0800)) },
    ReasonCase.both("unaligned user address", .EINVAL, "\(set): userspace_addr not page aligned or !access_ok") { b in
      b.region2(b.td, memslot(uaddr: 0x7000_0000_0800))
    },
    ReasonCase.both("user address past TASK_SIZE_MAX", .EINVAL, "\(set): userspace_addr not page aligned or !access_ok") { b in
      b.region2(b.td, memslot(uaddr: 1 << 47))
    },
    ReasonCase.both("unaligned guest_memfd offset", .EINVAL, "\(set): guest_memfd_offset not page aligned or offset + size wraps") { b in
      b.region2(b.td, memslot(1, .guestMemfd, offset: 0x800, fd: try b.gmem(b.td)))
    },
    [ReasonCase("unaligned dma-buf slice offset", .reviewed, .EINVAL, "\(set): guest_memfd_offset not page aligned or offset + size wraps") { b in
      b.region2(b.td, memslot(1, .vfioDmaBuf, offset: 0x800, fd: try b.privateBuffer()))
    }],
    ReasonCase.both("address space", .EINVAL, "\(set): as_id 1 >= kvm_arch_nr_memslot_as_ids (1)") { b in
      b.region2(b.td, memslot(1 << 16 | 1))
    },
    ReasonCase.both("GPA + size wraps", .EINVAL, "\(set): guest_phys_addr + memory_size wraps") { b in
      b.region2(b.td, memslot(gpa: 0xFFFF_FFFF_FFF0_0000, size: 0x20_0000, uaddr: 0))
    },
    ReasonCase.both("too many pages", .EINVAL, "\(set): memory_size >> PAGE_SHIFT > KVM_MEM_MAX_NR_PAGES") { b in
      b.region2(b.td, memslot(gpa: 0, size: 1 << 43, uaddr: 0))
    },
    ReasonCase.both("delete of no slot", .EINVAL, "\(set): delete of slot 9, which does not exist") { b in
      b.region2(b.td, memslot(9, size: 0))
    },
    ReasonCase.both("a plain slot made private", .EINVAL, "\(set): Private memslots are immutable, they can only be deleted") { b in
      try b.ok(b.region2(b.td, memslot()))
      return b.region2(b.td, memslot(1, .guestMemfd, fd: try b.gmem(b.td)))
    },
    [ReasonCase("a guest_memfd slot made plain", .reviewed, .EINVAL,
               "\(set): (mem->flags ^ old->flags) & KVM_MEM_GUEST_MEMFD: toggling KVM_MEM_GUEST_MEMFD on an existing memslot") { b in
      try b.ok(b.region2(b.td, memslot(1, .guestMemfd, fd: try b.gmem(b.td))))
      return b.region2(b.td, memslot(1, gpa: 0x9000_0000))
    }],
    [ReasonCase("a dma-buf slot moved", .reviewed, .EINVAL,
               "\(set): model (reviewed): dma-buf memslots are immutable, they can only be deleted") { b in
      let buf = try b.privateBuffer()
      try b.ok(b.region2(b.td, memslot(1, .vfioDmaBuf, fd: buf)))
      return b.region2(b.td, memslot(1, .vfioDmaBuf, gpa: 0x9000_0000, fd: buf))
    }],
    ReasonCase.both("a modify that changes the user address", .EINVAL,
                    "\(set): modify changes userspace_addr, npages or KVM_MEM_READONLY") { b in
      try b.ok(b.region2(b.td, memslot()))
      return b.region2(b.td, memslot(uaddr: 0x7000_1000_0000))
    },
    ReasonCase.both("overlap", .EEXIST, "\(set): overlaps slot 1 [0x80000000, +0x200000)") { b in
      try b.ok(b.region2(b.td, memslot()))
      return b.region2(b.td, memslot(2, gpa: 0x8010_0000))
    },
    [ReasonCase("a dma-buf slot with an offset", .rfcV1, .EINVAL, "\(set): KVM_MEM_VFIO_DMABUF with guest_memfd_offset != 0") { b in
      b.region2(b.td, memslot(1, .vfioDmaBuf, offset: pageBytes, fd: try b.privateBuffer()))
    }],
    // kvm_arch_prepare_memory_region, on the typical host (MAXPHYADDR 46): kvm_mmu_max_gfn()
    // is below a TD's shared bit (GPA bit 47), so a slot reaches the limit first.
    ReasonCase.both("past the MMU's last GFN", .EINVAL,
                    "kvm_arch_prepare_memory_region: last GFN 0x400000000 > kvm_mmu_max_gfn() 0x3ffffffff") { b in
      b.region2(b.plain, memslot(gpa: 1 << 46, size: pageBytes))
    },
    ReasonCase.both("a TD slot at its shared bit, past the MMU's last GFN", .EINVAL,
                    "kvm_arch_prepare_memory_region: last GFN 0x8000001ff > kvm_mmu_max_gfn() 0x3ffffffff") { b in
      b.region2(b.td, memslot(gpa: 1 << 47))
    },
    // kvm_gmem_bind.
    ReasonCase.both("the guest_memfd is not open", .EBADF, "kvm_gmem_bind: no file is open at fd 99") { b in
      b.region2(b.td, memslot(1, .guestMemfd, fd: FD(99)))
    },
    ReasonCase.both("the guest_memfd is a VM", .EINVAL, "kvm_gmem_bind: file->f_op != &kvm_gmem_fops: not a guest_memfd") { b in
      b.region2(b.td, memslot(1, .guestMemfd, fd: b.plain))
    },
    [ReasonCase("another VM's guest_memfd", .reviewed, .EINVAL, "kvm_gmem_bind: f->kvm != kvm: the guest_memfd belongs to vm2") { b in
      b.region2(b.td, memslot(1, .guestMemfd, fd: try b.gmem(b.plain)))
    }],
    ReasonCase.both("past the guest_memfd's end", .EINVAL,
                    "kvm_gmem_bind: offset 0x200000 + size 0x200000 > i_size_read(inode) 0x200000") { b in
      b.region2(b.td, memslot(1, .guestMemfd, offset: 0x20_0000, fd: try b.gmem(b.td, size: 0x20_0000)))
    },
    ReasonCase.both("pages already bound", .EINVAL,
                    "kvm_gmem_bind: xa_find(&f->bindings): pages [0x0, 0x200) of the file are bound to slot 1") { b in
      let file = try b.gmem(b.td)
      try b.ok(b.region2(b.td, memslot(1, .guestMemfd, fd: file)))
      return b.region2(b.td, memslot(2, .guestMemfd, gpa: 0x9000_0000, fd: file))
    },
    // kvm_vfio_dmabuf_bind: dma_buf_get, the size, the exporter's data, the attach.
    ReasonCase.both("the dma-buf fd is not open", .EBADF, "dma_buf_get: no file is open at fd 99") { b in
      b.region2(b.td, memslot(1, .vfioDmaBuf, fd: FD(99)))
    },
    ReasonCase.both("the dma-buf fd is a VM", .EINVAL, "dma_buf_get: fd 4 is not a dma-buf (is_dma_buf_file() fails)") { b in
      b.region2(b.td, memslot(1, .vfioDmaBuf, fd: b.plain))
    },
    [ReasonCase("a size other than the buffer's", .rfcV1, .EINVAL, "kvm_vfio_dmabuf_bind: size 0x1000 != dmabuf->size 0x200000") { b in
      b.region2(b.td, memslot(1, .vfioDmaBuf, size: pageBytes, fd: try b.privateBuffer()))
    }],
    [ReasonCase("a slice past the buffer's end", .reviewed, .EINVAL,
               "kvm_vfio_dmabuf_bind: model (reviewed): offset + size past the dma-buf's end") { b in
      b.region2(b.td, memslot(1, .vfioDmaBuf, offset: pageBytes, fd: try b.privateBuffer()))
    }],
    ReasonCase.both("a shared buffer in a TD", .EINVAL, "kvm_vfio_dmabuf_bind: !data->is_private") { b in
      b.region2(b.td, memslot(1, .vfioDmaBuf, fd: try b.exportBAR0(try b.openDevice(private: false))))
    },
    [ReasonCase("a private buffer in a VM without private memory", .reviewed, .EINVAL,
               "kvm_vfio_dmabuf_bind: model (reviewed): a private buffer for a VM without private memory") { b in
      b.region2(b.plain, memslot(1, .vfioDmaBuf, fd: try b.privateBuffer()))
    }],
    [ReasonCase("a revoked buffer", .reviewed, .ENODEV, "vfio_pci_dma_buf_attach: priv->revoked") { b in
      let dev = try b.openDevice(private: false)
      try b.ok(.vfioSetMemoryDecode(fd: dev, enable: false))
      return b.region2(b.plain, memslot(1, .vfioDmaBuf, fd: try b.exportBAR0(dev)))
    }],
  ] as [[ReasonCase]]).flatMap { $0 }

  @Test(arguments: cases)
  func reason(_ c: ReasonCase) throws { try c.check() }

  /// `kvm_is_gfn_alias()` is reached where the MMU's GFNs go past the TD's shared bit: a host
  /// with MAXPHYADDR 52 (the TD's GPA width 52, shared bit 51).
  @Test(arguments: Variant.allCases)
  func aTDSlotOnItsSharedBit(_ variant: Variant) throws {
    var configuration = Bench.configuration
    configuration.host = HostCapabilities(smm: true, maxPhysAddr: 52, vmTypes: [.default, .tdx], memoryAttributes: true)
    var bench = try Bench(variant)
    bench.machine = try Machine(configuration: configuration, variant: variant)
    let result = bench.machine.perform(bench.region2(bench.td, memslot(gpa: 1 << 51)))
    guard case .failure(let failure) = result else { Issue.record("\(result)"); return }
    #expect(failure.errno == .EINVAL)
    #expect(failure.reason?.description
            == "kvm_arch_prepare_memory_region: kvm_is_gfn_alias(): the slot reaches the TD's shared bit (GPA 0x8000000000000)")
  }

  /// `data->kvm != kvm` needs a second TD: the buffer is private to one, the slot is the other's.
  @Test(arguments: Variant.allCases)
  func anotherTDsBuffer(_ variant: Variant) throws {
    var configuration = Bench.configuration
    configuration.vms.append(VMConfiguration(name: "td1", type: .tdx))
    var bench = try Bench(variant)
    bench.machine = try Machine(configuration: configuration, variant: variant)
    let buffer = try bench.privateBuffer()
    let other = try #require(bench.machine.vmFD(named: "td1"))
    let result = bench.machine.perform(.kvmSetUserMemoryRegion2(vm: other, region: memslot(1, .vfioDmaBuf, fd: buffer)))
    guard case .failure(let failure) = result else { Issue.record("\(result)"); return }
    #expect(failure.errno == .EINVAL)
    #expect(failure.reason?.description == "kvm_vfio_dmabuf_bind: data->kvm != kvm")
  }
}

/// The other fd lookups name the syscall (or the function) that looked the fd up.
@Suite struct BadFDReasonTests {
  static let cases: [ReasonCase] = ([
    ReasonCase.both("region info", .EBADF, "sys_ioctl: no file is open at fd 99") { _ in .vfioRegionInfo(fd: FD(99), regionIndex: 0) },
    ReasonCase.both("pread", .EBADF, "ksys_pread64: no file is open at fd 99") { _ in
      .vfioRead(fd: FD(99), regionIndex: 0, offset: 0, size: 4)
    },
    ReasonCase.both("pwrite", .EBADF, "ksys_pwrite64: no file is open at fd 99") { _ in
      .vfioWrite(fd: FD(99), regionIndex: 0, offset: 0, size: 4, value: 0)
    },
    ReasonCase.both("mmap", .EBADF, "ksys_mmap_pgoff: no file is open at fd 99") { _ in .vfioMmap(fd: FD(99), regionIndex: 0) },
    ReasonCase.both("a config write of the command register", .EBADF, "ksys_pwrite64: no file is open at fd 99") { _ in
      .vfioSetMemoryDecode(fd: FD(99), enable: false)
    },
    ReasonCase.both("VFIO_DEVICE_RESET", .EBADF, "sys_ioctl: no file is open at fd 99") { _ in .vfioReset(fd: FD(99)) },
    ReasonCase.both("close", .EBADF, "sys_close: no file is open at fd 99") { _ in .vfioClose(fd: FD(99)) },
    ReasonCase.both("the bind's VM fd", .EBADF, "iommufd_ctx_from_fd: no file is open at fd 99") { b in
      .vfioBindIOMMUFD(fd: try b.fd(.vfioOpen(device: "nic0")), private: true, vm: FD(99))
    },
    ReasonCase.both("KVM_CREATE_GUEST_MEMFD", .EBADF, "sys_ioctl: no file is open at fd 99") { _ in
      .kvmCreateGuestMemfd(vm: FD(99), size: pageBytes, flags: 0)
    },
    ReasonCase.both("an unknown device", .ENODEV, "vfio_device_fops_cdev_open: no device named nic9 in the machine") { _ in
      .vfioOpen(device: "nic9")
    },
    ReasonCase.both("a TDISP request to an unknown device", .ENODEV, "pci_tsm: no device named nic9 in the machine") { _ in
      .tdispLock(device: "nic9")
    },
  ] as [[ReasonCase]]).flatMap { $0 }

  @Test(arguments: cases)
  func reason(_ c: ReasonCase) throws { try c.check() }
}
