import KernelCore
import PCI
import DmaBuf
import VFIO
import KVM
import TDX

extension Machine {
  /// Runs `body`, turning an errno into an ``OpFailure``.
  func errno<R>(_ body: () throws(Errno) -> R) throws(OpFailure) -> R {
    do { return try body() } catch { throw .errno(error) }
  }

  /// Runs `body`, turning a TDX status into an ``OpFailure``.
  func status<R>(_ body: () throws(TDXStatus) -> R) throws(OpFailure) -> R {
    do { return try body() } catch { throw .tdx(error) }
  }

  /// A live VM behind `fd`. - Throws: `EBADF`/`EINVAL` for a bad fd; `EIO` once the VM is dead
  /// (`kvm_vm_ioctl()` refuses every ioctl of a bugged VM).
  func liveVM(_ fd: FD) throws(OpFailure) -> VMID {
    let id = try errno { () throws(Errno) in try vm(fd) }
    guard let vm = kvm.vms[id], !vm.isDead else {
      throw .errno(Errno.EIO.because("kvm_vm_ioctl", "the VM is bugged (KVM_BUG_ON)"))
    }
    return id
  }

  // MARK: VM and vCPU creation

  /// `KVM_CREATE_VM` (`kvm_dev_ioctl_create_vm()`): an fd first (`EMFILE`), then
  /// `kvm_arch_init_vm()`'s `!kvm_is_vm_type_supported(type)` -> `EINVAL` for a type the host
  /// does not offer. A TDX VM also builds its TD in the TDX module.
  mutating func createVM(_ name: VMTypeName) throws(OpFailure) -> OpValue {
    try errno { () throws(Errno) in try requireFreeFD() }
    let type = name.type
    guard host.vmTypes.contains(type) else {
      throw .errno(Errno.EINVAL.because("kvm_arch_init_vm", "!kvm_is_vm_type_supported(\(type.rawValue)): the host does not offer \(type.uapiName)"))
    }
    let id = kvm.vms.keys.max()?.next ?? VMID(1)
    if type == .tdx {
      let td = try status { () throws(TDXStatus) in try kvm.tdx.tdhMngCreate(vcpuCount: KVMHost.tdVCPUs) }
      kvm.tds[id] = td
      kvm.epochsMoved.value.insert(td)
      trace.absorb(&kvm.tdx.trace)
    }
    let fd = try errno { () throws(Errno) in try files.install(.vm(id)) }
    kvm.vms[id] = VirtualMachine(id: id, type: type, limits: host.limits(for: type))
    trace.emit(.kvmCreateVM, "KVM_CREATE_VM type \(type.uapiName) -> vm\(id.rawValue) (\(fd))",
               [.vm(id), .text("type", type.uapiName), .fd(fd)])
    return .fd(fd)
  }

  // MARK: Capabilities

  /// `KVM_CHECK_EXTENSION` (`kvm_vm_ioctl_check_extension_generic()` in
  /// `virt/kvm/kvm_main.c`, then `kvm_vm_ioctl_check_extension()` in `arch/x86/kvm/x86.c`),
  /// on `/dev/kvm` (`vm` nil, `kvm == NULL`) or on a VM, whose dead state answers `EIO`
  /// first. A capability the model does not have answers 0, as an unknown one does.
  func checkExtension(vm vmFD: FD?, _ number: Int32) throws(OpFailure) -> UInt64 {
    let type: VMType? = try vmFD.map { (fd) throws(OpFailure) in kvm.vms[try liveVM(fd)]!.type }
    guard let capability = KVMCapabilityNumber(rawValue: number) else { return 0 }
    switch capability {
    case .userMemory, .userMemory2, .memoryFaultInfo, .guestMemfd: return 1
    case .nrMemslots: return UInt64(MemslotLimits.userMemSlots)
    // x86: `r = kvm ? kvm_arch_has_readonly_mem(kvm) : 1`.
    case .readonlyMem: return type.map { $0.hasReadonlyMemory ? 1 : 0 } ?? 1
    // Only `#if KVM_MAX_NR_ADDRESS_SPACES > 1` (CONFIG_KVM_SMM): the VM's address spaces, or
    // KVM_MAX_NR_ADDRESS_SPACES for the system fd.
    case .multiAddressSpace:
      guard host.smm else { return 0 }
      return UInt64(type.map { $0.addressSpaces(smm: true) } ?? 2)
    // `kvm_supported_mem_attributes(kvm)`, under CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES.
    case .memoryAttributes:
      guard host.memoryAttributes else { return 0 }
      return type.map { $0.hasPrivateMemory ? MemoryAttributes.private.rawValue : 0 } ?? MemoryAttributes.private.rawValue
    // `kvm_caps.supported_vm_types`, a mask of `BIT(type)`.
    case .vmTypes: return host.vmTypes.reduce(0) { $0 | 1 << UInt64($1.rawValue) }
    case .guestMemfdFlags: return GuestMemfdFlags.supported(for: type).rawValue
    }
  }

  // MARK: guest_memfd

  /// `KVM_CREATE_GUEST_MEMFD`: `kvm_gmem_create()`'s checks, then `__kvm_gmem_create()` takes
  /// an fd (`EMFILE`) and the file exists.
  mutating func createGuestMemfd(_ vmFD: FD, size: UInt64, flags: UInt64) throws(OpFailure) -> OpValue {
    let id = try errno { () throws(Errno) in try vm(vmFD) }
    guard let vm = kvm.vms[id] else { throw .errno(Errno.EBADF.because("kvm_vm_ioctl", "the VM is gone")) }
    let file = try errno { () throws(Errno) in
      let file = try vm.checkCreateGuestMemfd(KVMCreateGuestMemfdArgs(size: size, flags: flags))
      try requireFreeFD()
      return file
    }
    kvm.vms[id]!.installGuestMemfd(file)
    let fd = try errno { () throws(Errno) in try files.install(.guestMemfd(id, file.id)) }
    trace.emit(.kvmCreateGuestMemfd,
               "vm\(id.rawValue): KVM_CREATE_GUEST_MEMFD size 0x\(String(size, radix: 16)) flags 0x\(String(flags, radix: 16)) -> guest_memfd \(file.id) (\(fd))",
               [.vm(id), .hex("size", size), .hex("flags", flags), .text("gmem", "\(file.id)"), .fd(fd)])
    return .fd(fd)
  }

  /// What `fget(fd)` finds for `kvm_gmem_bind()`: `EBADF` when no file is open at `fd`.
  func guestMemfdLookup(_ fd: FD) throws(Errno) -> GuestMemfdLookup {
    guard case .guestMemfd(let vm, let id) = try files.lookup(fd, by: "kvm_gmem_bind") else { return .otherFile }
    guard let file = kvm.vms[vm]?.guestMemfds[id] else { return .otherFile }
    return .guestMemfd(file)
  }

  /// `KVM_CREATE_VCPU`; a TD's vCPU enters the guest (TDH.VP.ENTER) and stays there, so TLB
  /// tracking must kick it.
  mutating func createVCPU(_ vmFD: FD, _ vcpu: UInt32) throws(OpFailure) -> OpValue {
    let id = try liveVM(vmFD)
    if kvm.tds[id] != nil, vcpu >= KVMHost.tdVCPUs {
      throw .errno(Errno.EINVAL.because("tdx_vcpu_create", "vCPU id \(vcpu) is not below the TD's max_vcpus (\(KVMHost.tdVCPUs))"))
    }
    try errno { () throws(Errno) in try kvm.vms[id]!.createVCPU(vcpu) }
    trace.emit(.kvmCreateVCPU, "KVM_CREATE_VCPU vm\(id.rawValue) vcpu \(vcpu)", [.vm(id), .int("vcpu", vcpu)])
    if kvm.tds[id] != nil {
      do { try kvm.enterGuest(VCPURef(vm: id, index: vcpu), traced: true, trace: &trace) } catch {
        throw .lockViolation(error)
      }
    }
    return .none
  }

  // MARK: Faults

  /// Where a fault's PFN comes from: the dma-buf exporter for a dma-buf slot; for ordinary
  /// slots the model gives each host page of user memory or guest_memfd a RAM PFN.
  func resolvePFN(_ request: PFNRequest) -> Result<ResolvedPFN, Errno> {
    switch request.source {
    case .dmaBuf(let binding):
      do {
        let lookup = try lookupPfn(binding.attachment, pgoff: request.pgoff)
        return .success(ResolvedPFN(pfn: lookup.pfn, order: lookup.order))
      } catch { return .failure(error) }
    case .userspace(let hva):
      return .success(ResolvedPFN(pfn: PFN((hva >> pageShift) & 0xF_FFFF)))
    case .guestMemfd(let file, let offset):
      // kvm_gmem_get_pfn(): "if (!file) return -EFAULT" once the file was closed.
      guard file != nil else {
        return .failure(Errno.EFAULT.because("kvm_gmem_get_pfn", "slot->gmem.file is NULL: the guest_memfd was closed"))
      }
      return .success(ResolvedPFN(pfn: PFN((offset >> pageShift) & 0xF_FFFF)))
    }
  }

  /// The exporter's private data for a buffer (patch 9), as KVM reads it through the dma-buf.
  func exporterData(of buffer: DmaBufID) -> ExporterData? {
    guard let object = dmabufCore.buffer(buffer) else { return nil }
    // vfio_dma_buf_get_data() refuses a buffer VFIO did not export (-ENOENT): no data, which
    // the callers turn into the kernel's answer for a foreign dma-buf.
    do { return try vfio.exporterData(buffer: object) } catch { return nil }
  }

  /// The HPA the device interface report gives for the BAR offset behind `gpa`: what a TD
  /// guest that read the report and knows where it placed the BAR expects to accept.
  func reportedHPA(_ id: VMID, gpa: GPA) -> HPA? {
    guard let slot = kvm.vms[id]?.memslot(containing: gpa.gfn), let binding = slot.dmaBuf,
          let buffer = vfio.dmaBuf(binding.dmaBuf) else { return nil }
    let page = binding.pgoff.rawValue + (gpa.gfn.rawValue - slot.baseGFN.rawValue)
    return buffer.locate(page: page).map { $0.pfn.hpa.advanced(by: gpa.pageOffset) }
  }
}
