import KernelCore

/// One errno an operation can fail with, and which function returns it.
public struct ErrnoSource: Hashable, Sendable, CustomStringConvertible {
  /// Where the answer comes from.
  public enum Origin: String, Hashable, Sendable {
    /// The kernel as released (6.18 KVM, 6.19 VFIO and dma-buf), or its documented uAPI.
    case kernel
    /// The RFC "Private MMIO support for private assigned dev" as posted (`rfc-v1`).
    case rfc
    /// A choice of this model where the kernel has no such path (its own ops, or a proposal the
    /// README's provenance table lists).
    case model
  }

  public let errno: Errno
  /// The C function that returns it, as the kernel names it (`__kvm_set_memory_region`).
  public let function: String
  public let origin: Origin
  /// When, in a few words.
  public let when: String

  public init(_ errno: Errno, _ function: String, _ origin: Origin, _ when: String) {
    self.errno = errno; self.function = function; self.origin = origin; self.when = when
  }

  /// A kernel answer.
  public init(_ errno: Errno, _ function: String, _ when: String) { self.init(errno, function, .kernel, when) }

  public var description: String { "\(errno.name) (\(function)\(origin == .kernel ? "" : ", \(origin.rawValue)"): \(when))" }
}

/// The errnos the kernel can return for one operation: what `pmmio fuzz` checks every failure
/// against. A model that answers an errno outside its op's table has a bug the kernel does not
/// have (or the table misses a path of the kernel, which is then added here with its source).
///
/// Tables list what the kernel's own paths can return for the call, including answers the
/// model never gives (`ENOMEM`, `EFAULT` from `copy_from_user()`): they are what a VMM must be
/// ready for. `EBADF` comes from `fdget()` for every call on an fd that is not open.
public struct OperationErrnoTable: Hashable, Sendable {
  /// The op, as scenarios name it (`kvm.set_user_memory_region2`).
  public let op: String
  /// The syscall or ioctl it is.
  public let call: String
  public let entries: [ErrnoSource]
  /// Whether the op may fail with a TDX module status (SEAMCALLs and the guest's TDCALLs).
  public let tdxStatus: Bool
  /// Whether the op may fail with a TDISP error response from the device.
  public let tdispError: Bool

  public init(_ op: String, _ call: String, tdxStatus: Bool = false, tdispError: Bool = false, _ entries: [ErrnoSource]) {
    self.op = op; self.call = call; self.entries = entries; self.tdxStatus = tdxStatus; self.tdispError = tdispError
  }

  /// The table's entries for `errno` (empty when the kernel cannot return it here).
  public func sources(of errno: Errno) -> [ErrnoSource] { entries.filter { $0.errno == errno } }

  public func contains(_ errno: Errno) -> Bool { entries.contains { $0.errno == errno } }

  /// Whether `failure` is an answer this op can give. Livelocks, deadlocks and the model's
  /// lock violations are never answers.
  public func allows(_ failure: OpFailure) -> Bool {
    switch failure {
    case .errno(let e): contains(e)
    case .memoryFault(let exit): contains(exit.errno)
    case .tdx: tdxStatus
    case .tdisp: tdispError
    case .livelock, .deadlock, .lockViolation: false
    }
  }

  /// The errnos by name, in table order, each once.
  public var errnoNames: [String] {
    var seen: Set<Int32> = []
    return entries.compactMap { seen.insert($0.errno.rawValue).inserted ? $0.errno.name : nil }
  }
}

extension Operation {
  /// This op's table (``OperationErrnoTable``).
  public var errnoTable: OperationErrnoTable { Operation.errnoTable(named: name) }

  /// The table of the op named `name`; an op without one has an empty table, so that every
  /// failure it returns is reported.
  public static func errnoTable(named name: String) -> OperationErrnoTable {
    errnoTables[name] ?? OperationErrnoTable(name, "?", [])
  }

  /// Every op's table, by op name.
  public static let errnoTables: [String: OperationErrnoTable] = Dictionary(
    uniqueKeysWithValues: ErrnoTables.all.map { ($0.op, $0) })
}

/// The tables, with the paths each errno comes from (6.18 `virt/kvm/kvm_main.c`,
/// `virt/kvm/guest_memfd.c`, `arch/x86/kvm/x86.c`; 6.19 `drivers/vfio/vfio_main.c`,
/// `drivers/vfio/device_cdev.c`, `drivers/vfio/pci/vfio_pci_core.c`, `vfio_pci_rdwr.c`,
/// `vfio_pci_config.c`, `vfio_pci_dmabuf.c`; `drivers/dma-buf/dma-buf.c`; the RFC's patches).
enum ErrnoTables {
  typealias E = ErrnoSource

  // MARK: Shared paths

  /// `fdget()` of an fd that is not open.
  static let badFD = E(.EBADF, "fdget", "the fd is not open")
  /// An ioctl on a file of another kind: that file's `unlocked_ioctl` has no such command.
  static let wrongFileIoctl = E(.ENOTTY, "vfs_ioctl", "the fd is another kind of file: its own handler (dma_buf_ioctl, kvm_vm_ioctl, vfio_pci_core_ioctl for a bound VFIO fd) has no such command, or it has none (a guest_memfd: vfs_ioctl)")
  /// `copy_from_user()` of the ioctl's argument.
  static let copyFault = E(.EFAULT, "copy_from_user", "the argument cannot be read")
  static let noMemory = E(.ENOMEM, "kzalloc", "an allocation failed")
  /// A new fd past `RLIMIT_NOFILE`.
  static let noFD = E(.EMFILE, "get_unused_fd_flags", "every fd below RLIMIT_NOFILE is open")

  /// A VM ioctl on a VFIO device cdev fd that is not bound: `vfio_device_fops_unl_ioctl()`
  /// refuses every command but BIND before it looks at the command.
  static let unboundVFIOIoctl = E(.EINVAL, "vfio_device_fops_unl_ioctl", "the fd is a VFIO device file not bound yet (!df->access_granted)")

  /// An ioctl on a VM fd: `kvm_vm_ioctl()`'s entry checks.
  static let vmIoctl = [badFD, wrongFileIoctl, unboundVFIOIoctl,
                        E(.EIO, "kvm_vm_ioctl", "kvm->mm != current->mm || kvm->vm_dead (KVM_BUG_ON marked the VM)")]

  /// An ioctl on a VFIO device cdev fd (`vfio_device_fops_unl_ioctl()`): before
  /// `VFIO_DEVICE_BIND_IOMMUFD`, every other ioctl is refused.
  static let vfioIoctl = [badFD, wrongFileIoctl,
                          E(.EINVAL, "vfio_device_fops_unl_ioctl", "!df->access_granted: the cdev fd is not bound yet")]

  /// `pread`/`pwrite` on a VFIO device fd (`vfio_device_fops_read()` / `_write()`).
  static let vfioRW = [badFD,
                       E(.ESPIPE, "ksys_pread64", "the fd is not a VFIO device but an anonymous-inode file (dma-buf, KVM VM, guest_memfd) without FMODE_PREAD/FMODE_PWRITE"),
                       E(.EINVAL, "vfio_device_fops_read", "!df->access_granted (not bound)"),
                       E(.EINVAL, "vfio_pci_rw", "the region index is past VFIO_PCI_NUM_REGIONS + num_regions"),
                       E(.EINVAL, "vfio_pci_bar_rw", "the BAR is absent, the access is past its end, or (RFC patch 8) the BAR is private"),
                       E(.EINVAL, "vfio_pci_config_rw", "the access is past config space"),
                       E(.EFAULT, "copy_to_user", "the user buffer cannot be written"),
                       E(.EIO, "vfio_pci_core_do_io_rw", "memory decode is off (__vfio_pci_memory_enabled())"),
                       E(.ENOMEM, "pci_iomap", "the BAR cannot be mapped into the kernel")]

  /// A VFIO config-space write (`pwrite` of the config region: command, PMCSR, DEVCTL).
  static let configWrite = vfioRW

  /// A close(2): the release runs later and its errors are not returned.
  static let close = [E(.EBADF, "sys_close", "file_close_fd() finds no file at the fd")]

  /// A guest access: `KVM_RUN` on the vCPU until the access completes.
  static let vcpuRun = vmIoctl + [
    E(.EINVAL, "kvm_vcpu_ioctl", .model, "the model's guest ops name the vCPU by index: one KVM_CREATE_VCPU never made has no fd (the kernel: EBADF on that fd)"),
    E(.EFAULT, "kvm_mmu_faultin_pfn", "KVM_EXIT_MEMORY_FAULT: a private access to a GFN whose attributes say shared, or a slot without private memory (kvm_prepare_memory_fault_exit)"),
    E(.EFAULT, "kvm_gmem_get_pfn", "the slot's guest_memfd was closed (slot->gmem.file is NULL)"),
    E(.EIO, "kvm_vfio_dmabuf_get_pfn", .rfc, "dma_buf_get_pfn_unlocked() failed: the exporter refused the PFN (RFC patch 11 turns any error into -EIO)"),
    E(.EIO, "tdx_sept_set_private_spte", .rfc, "KVM_BUG_ON: TDH.MMIO.MAP failed with a status KVM does not retry; the VM is dead"),
    E(.EIO, "vcpu_enter_guest", "KVM_REQ_VM_DEAD: KVM_BUG_ON marked the VM dead"),
    E(.EIO, "kvm_arch_vcpu_ioctl_run", "the VM died (KVM_BUG_ON) during the run"),
    E(.EINTR, "vcpu_run", "a signal is pending"),
    E(.EHWPOISON, "kvm_handle_error_pfn", "the page is poisoned"),
    E(.EOPNOTSUPP, "kvm_tdp_mmu_map", .model, "a TD's private RAM: TDH.MEM.PAGE.AUG is not modelled"),
  ]

  static let accessSize = E(.EINVAL, "kvm_arch_vcpu_ioctl_run", .model, "the model's guest accesses are 1, 2, 4 or 8 bytes inside one page")

  /// A request to the device's TDISP interface through the host's TSM.
  static let tdispRequest = [E(.ENODEV, "pci_tsm", .model, "the device has no TDISP interface (pci_tsm_ops absent)")]

  /// A TDX Connect call the host's TSM driver makes for a device.
  static let tsmCall = [E(.ENODEV, "pci_tsm", .model, "no such device"),
                        E(.ENOENT, "tdx_tsm", .model, "no DEVIF for the device: the host has no handle to pass")]

  // MARK: The tables

  static let all: [OperationErrnoTable] = [
    OperationErrnoTable("vfio.open", "open(\"/dev/vfio/devices/vfioN\")", [
      E(.ENODEV, "vfio_device_fops_cdev_open", "the device is unregistered (vfio_device_try_get_registration())"),
      noFD, noMemory,
    ]),
    OperationErrnoTable("vfio.bind_iommufd", "VFIO_DEVICE_BIND_IOMMUFD", [
      badFD, wrongFileIoctl, copyFault,
      E(.EINVAL, "vfio_df_ioctl_bind_iommufd", "argsz or flags wrong (6.19: flags outside VALID_FLAGS, TOKEN and the model's PRIVATE bit 1; RFC patch 8: flags other than VFIO_DEVICE_BIND_IOMMUFD_PRIVATE), or df->access_granted: the fd is bound already"),
      E(.EINVAL, "vfio_pci_core_match_token_uuid", "6.19: VFIO_DEVICE_BIND_FLAG_TOKEN on a device that is neither a VF nor a PF with a VF token"),
      E(.EINVAL, "vfio_df_open", "a cdev device is already open through another fd"),
      E(.EINVAL, "vfio_df_ioctl_bind_iommufd", .model, "a private bind with no VM (the RFC accepts it and fails in KVM's sanity check)"),
      E(.EINVAL, "kvm_get_kvm_safe", .model, "the vm fd is not a KVM VM (the model passes the VM for a private bind)"),
      E(.EBADF, "iommufd_ctx_from_fd", "the iommufd (or, for the model, the VM fd) is not open"),
      E(.EPERM, "iommufd_device_bind", "no IOMMU group isolation"),
      noMemory,
    ]),
    OperationErrnoTable("vfio.close", "close()", close),
    OperationErrnoTable("vfio.region_info", "VFIO_DEVICE_GET_REGION_INFO", vfioIoctl + [
      copyFault,
      E(.EINVAL, "vfio_pci_ioctl_get_region_info", "info.index >= VFIO_PCI_NUM_REGIONS + vdev->num_regions, or argsz too small"),
    ]),
    OperationErrnoTable("vfio.read", "pread()", vfioRW),
    OperationErrnoTable("vfio.write", "pwrite()", vfioRW),
    OperationErrnoTable("vfio.mmap", "mmap()", [
      badFD,
      E(.ENODEV, "do_mmap", "the file has no mmap (a VM fd; a guest_memfd without GUEST_MEMFD_FLAG_MMAP: kvm_gmem_mmap)"),
      E(.EINVAL, "dma_buf_mmap_internal", "a dma-buf whose exporter has no mmap (VFIO's has none)"),
      E(.EINVAL, "vfio_device_fops_mmap", "!df->access_granted (not bound)"),
      E(.EINVAL, "vfio_pci_core_mmap", "index >= VFIO_PCI_ROM_REGION_INDEX, the BAR cannot be mmapped (!vdev->bar_mmap_supported), or the range is past the BAR; RFC patch 8: the BAR is private"),
      noMemory,
    ]),
    OperationErrnoTable("vfio.set_memory_decode", "pwrite() of PCI_COMMAND", configWrite),
    OperationErrnoTable("vfio.reset", "VFIO_DEVICE_RESET", vfioIoctl + [
      E(.EINVAL, "vfio_pci_core_ioctl", "!vdev->reset_works"),
      E(.EBUSY, "pci_try_reset_function", "the device lock is contended"),
    ]),
    OperationErrnoTable("vfio.flr", "pwrite() of PCI_EXP_DEVCTL_BCR_FLR", configWrite),
    OperationErrnoTable("vfio.hot_reset", "VFIO_DEVICE_PCI_HOT_RESET", vfioIoctl + [
      copyFault,
      E(.EINVAL, "vfio_pci_ioctl_pci_hot_reset", "argsz, flags or the group/iommufd list"),
      E(.ENODEV, "vfio_pci_ioctl_pci_hot_reset", "no slot or bus reset for the device"),
      E(.EBUSY, "vfio_pci_dev_set_hot_reset", "another device of the set is in use"),
      E(.EPERM, "vfio_pci_dev_set_hot_reset", "a device of the set is not owned by the caller"),
      noMemory,
    ]),
    OperationErrnoTable("vfio.set_power", "pwrite() of PMCSR", configWrite),
    OperationErrnoTable("vfio.dma_buf", "VFIO_DEVICE_FEATURE (GET | DMA_BUF)", vfioIoctl + [
      copyFault, noFD, noMemory,
      E(.EINVAL, "vfio_ioctl_device_feature", "feature.argsz, flags or the feature's size check"),
      E(.EINVAL, "vfio_pci_core_feature_dma_buf", "nr_ranges is 0, flags are not 0, or the ranges do not fit"),
      E(.EINVAL, "validate_dmabuf_input", "a range of length 0 or not page aligned; the total length overflows"),
      E(.EINVAL, "vfio_pci_core_get_dmabuf_phys", "no p2pdma provider for the region (a missing BAR)"),
      E(.EINVAL, "vfio_pci_core_fill_phys_vec", "a range past the BAR's end"),
      E(.EOVERFLOW, "vfio_pci_core_fill_phys_vec", "check_add_overflow of a range's physical address"),
      E(.ENODEV, "vfio_pci_core_feature_dma_buf", "region_index >= VFIO_PCI_ROM_REGION_INDEX, or vfio_device_try_get_registration() fails"),
      E(.E2BIG, "vfio_pci_core_feature_dma_buf", "nr_ranges > DMA_BUF_MAX_RANGES"),
      E(.EOPNOTSUPP, "vfio_pci_core_feature_dma_buf", "no p2pdma support (CONFIG_PCI_P2PDMA off)"),
      E(.EINVAL, "vfio_pci_core_feature_dma_buf", .rfc, "RFC patch 4: every refusal of the posted series is EINVAL"),
    ]),
    OperationErrnoTable("dmabuf.attach", "dma_buf_dynamic_attach()", [
      badFD,
      E(.EINVAL, "dma_buf_get", "the fd is not a dma-buf (is_dma_buf_file() fails)"),
      E(.EINVAL, "dma_buf_dynamic_attach", "a dynamic importer without move_notify"),
      E(.EINVAL, "vfio_pci_dma_buf_attach", "the buffer is not VFIO's"),
      E(.EOPNOTSUPP, "vfio_pci_dma_buf_attach", "!attachment->peer2peer"),
      E(.ENODEV, "vfio_pci_dma_buf_attach", "priv->revoked"),
      noMemory,
    ]),
    OperationErrnoTable("dmabuf.detach", "dma_buf_detach()", [
      E(.EINVAL, "dma_buf_detach", .model, "no such attachment (the kernel's importer holds a pointer and cannot name a wrong one)"),
    ]),
    OperationErrnoTable("dmabuf.pin", "dma_buf_pin()", [
      E(.EINVAL, "dma_buf_pin", .model, "no such attachment"),
      E(.EOPNOTSUPP, "vfio_pci_dma_buf_pin", "6.19-rc fix: pinned importers cannot be revoked"),
      E(.EINVAL, "vfio_pci_dma_buf_pin", .rfc, "RFC patch 4: uses the dynamic interface, never pins"),
    ]),
    OperationErrnoTable("dmabuf.get_pfn", "dma_buf_get_pfn_unlocked() (RFC patch 1)", [
      E(.EINVAL, "dma_buf_get_pfn_unlocked", .rfc, "no such attachment, or pgoff past the buffer's end"),
      E(.ENOENT, "dma_buf_get_pfn_unlocked", .rfc, "the exporter has no get_pfn"),
      E(.ENODEV, "vfio_pci_dma_buf_get_pfn", .rfc, "priv->revoked"),
      E(.EINVAL, "vfio_pci_dma_buf_get_pfn", .rfc, "pgoff past the buffer's end"),
    ]),
    OperationErrnoTable("dmabuf.close", "close()", close),
    OperationErrnoTable("tdisp.lock", "TDISP LOCK_INTERFACE_REQUEST", tdispError: true, tdispRequest),
    OperationErrnoTable("tdisp.start", "TDISP START_INTERFACE_REQUEST", tdispError: true, tdispRequest),
    OperationErrnoTable("tdisp.stop", "TDISP STOP_INTERFACE_REQUEST", tdispError: true, tdispRequest),
    OperationErrnoTable("tdisp.report", "TDISP GET_DEVICE_INTERFACE_REPORT", tdispError: true, tdispRequest),
    OperationErrnoTable("pci.flr", "sysfs reset", [E(.ENODEV, "pci_reset_function", "no such device")]),
    OperationErrnoTable("pci.write_command", "config write of PCI_COMMAND", [E(.ENODEV, "pci_write_config_word", "no such device")]),
    OperationErrnoTable("kvm.create_vm", "KVM_CREATE_VM", [
      noFD, noMemory,
      E(.EINVAL, "kvm_arch_init_vm", "!kvm_is_vm_type_supported(type)"),
    ]),
    OperationErrnoTable("kvm.create_vcpu", "KVM_CREATE_VCPU", vmIoctl + [
      noFD, noMemory,
      E(.EINVAL, "kvm_vm_ioctl_create_vcpu", "id >= KVM_MAX_VCPU_IDS, or created_vcpus >= max_vcpus"),
      E(.EEXIST, "kvm_vm_ioctl_create_vcpu", "kvm_get_vcpu_by_id(kvm, id)"),
      E(.EINVAL, "tdx_vcpu_create", "a TD's vCPU id at or past its max_vcpus"),
    ]),
    OperationErrnoTable("kvm.check_extension", "KVM_CHECK_EXTENSION", vmIoctl),
    OperationErrnoTable("kvm.create_guest_memfd", "KVM_CREATE_GUEST_MEMFD", vmIoctl + [
      copyFault, noFD, noMemory,
      E(.EINVAL, "kvm_gmem_create", "flags & ~kvm_gmem_get_supported_flags(kvm), or size <= 0 or not page aligned"),
      E(.EBADF, "kvm_vm_ioctl", .model, "the VM behind the fd is gone"),
    ]),
    OperationErrnoTable("kvm.set_memory_attributes", "KVM_SET_MEMORY_ATTRIBUTES", vmIoctl + [
      copyFault, noMemory,
      E(.ENOTTY, "kvm_vm_ioctl", "no such ioctl without CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES"),
      E(.EINVAL, "kvm_vm_ioctl_set_mem_attributes", "flags, unsupported attributes, size 0, wrapping or unaligned"),
      E(.EBUSY, "kvm_arch_pre_set_memory_attributes", .model, "a TD's mapped private MMIO would be converted to shared"),
    ]),
    OperationErrnoTable("kvm.set_user_memory_region", "KVM_SET_USER_MEMORY_REGION", memslotIoctl),
    OperationErrnoTable("kvm.set_user_memory_region2", "KVM_SET_USER_MEMORY_REGION2", memslotIoctl + [
      E(.EBADF, "kvm_gmem_bind", "fget(mem->guest_memfd) finds no open file"),
      E(.EINVAL, "kvm_gmem_bind", "not a guest_memfd, another VM's, past its end, or pages already bound"),
      E(.EBADF, "dma_buf_get", .rfc, "RFC patch 6: the dma-buf fd is not open"),
      E(.EINVAL, "dma_buf_get", .rfc, "RFC patch 6: the fd is not a dma-buf"),
      E(.EINVAL, "kvm_vfio_dmabuf_bind", .rfc, "RFC patches 6 and 10: size, offset, or the exporter data (not VFIO's, not private, another VM)"),
      E(.EINVAL, "dma_buf_dynamic_attach", .rfc, "the attach refused by the exporter"),
      E(.ENODEV, "vfio_pci_dma_buf_attach", "the buffer is revoked (6.19's attach)"),
      E(.EOPNOTSUPP, "vfio_pci_dma_buf_attach", "the importer is not peer2peer"),
      E(.EBUSY, "kvm_set_memslot", .model, "reviewed: a TD's dma-buf slot still maps private MMIO of a trusted interface (README \"Deleting a private MMIO slot\")"),
    ]),
    OperationErrnoTable("kvm.destroy_vm", "close() of a VM fd", close),
    OperationErrnoTable("guest.read", "KVM_RUN (a guest load)", vcpuRun + [accessSize]),
    OperationErrnoTable("guest.write", "KVM_RUN (a guest store)", vcpuRun + [accessSize]),
    OperationErrnoTable("tdx.devif_create", "TDH.DEVIF.CREATE through the TSM", tdxStatus: true, vmIoctl + tsmCall + [
      E(.EINVAL, "tdx_tsm", .model, "the VM is not a TD"),
    ]),
    OperationErrnoTable("tdx.devif_remove", "TDH.DEVIF.REMOVE through the TSM", tdxStatus: true, vmIoctl + tsmCall),
    OperationErrnoTable("tdx.mmio_mt_add", "TDH.MMIO.MT.ADD through the TSM", tdxStatus: true, tdispError: true, tsmCall),
    OperationErrnoTable("tdx.stream_block", "IDE stream blocked through the TSM", tdxStatus: true, tsmCall),
    OperationErrnoTable("guest.accept_mmio", "TDG.MMIO.ACCEPT (after KVM_RUN's EPT violation)", tdxStatus: true, vcpuRun + [
      E(.EINVAL, "TDG.MMIO.ACCEPT", .model, "the VM is not a TD, or no interface-report range backs the GPA (the guest has no HPA to expect)"),
    ]),
    OperationErrnoTable("tdx.seamcall", "a raw SEAMCALL", tdxStatus: true, []),
  ]

  /// `KVM_SET_USER_MEMORY_REGION` and `..._REGION2` (`kvm_vm_ioctl()`,
  /// `kvm_vm_ioctl_set_memory_region()`, `__kvm_set_memory_region()`, `kvm_set_memslot()`,
  /// `kvm_arch_prepare_memory_region()`).
  static let memslotIoctl = vmIoctl + [
    copyFault, noMemory,
    E(.EINVAL, "kvm_vm_ioctl", "KVM_SET_USER_MEMORY_REGION with a flag outside KVM_SET_USER_MEMORY_REGION_V1_FLAGS"),
    E(.EINVAL, "kvm_vm_ioctl_set_memory_region", "(u16)mem->slot >= KVM_USER_MEM_SLOTS"),
    E(.EINVAL, "check_memory_region_flags", "a flag the VM does not support, or private flags together"),
    E(.EINVAL, "__kvm_set_memory_region", "unaligned size, GPA, user address or guest_memfd offset; !access_ok; as_id or id out of range; wrapping; too many pages; delete of no slot; a change of a private slot, its user address, size or READONLY"),
    E(.EEXIST, "__kvm_set_memory_region", "the new range overlaps another slot (kvm_check_memslot_overlap())"),
    E(.EIO, "__kvm_set_memory_region", "WARN_ON_ONCE(kvm->nr_memslot_pages < old->npages)"),
    E(.EINVAL, "kvm_arch_prepare_memory_region", "the last GFN past kvm_mmu_max_gfn(), or a TD's slot reaching the shared bit (kvm_is_gfn_alias())"),
  ]
}
