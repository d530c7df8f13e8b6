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

  /// `KVM_CREATE_VM`; a TDX VM also builds its TD in the TDX module.
  mutating func createVM(_ type: VMTypeName) throws(OpFailure) -> OpValue {
    try errno { () throws(Errno) in try requireFreeFD() }
    let id = kvm.vms.keys.max()?.next ?? VMID(1)
    if type == .tdx {
      let td = try status { () throws(TDXStatus) in try kvm.tdx.tdhMngCreate(vcpuCount: KVMHost.tdVCPUs) }
      kvm.tds[id] = td
      kvm.epochsMoved.value.insert(td)
      trace.absorb(&kvm.tdx.trace)
    }
    let fd = try errno { () throws(Errno) in try files.install(.vm(id)) }
    kvm.vms[id] = VirtualMachine(id: id, type: type == .tdx ? .tdx : .default)
    trace.emit(.kvmCreateVM, "KVM_CREATE_VM type \(type == .tdx ? "KVM_X86_TDX_VM" : "KVM_X86_DEFAULT_VM") -> vm\(id.rawValue) (\(fd))",
               [.vm(id), .text("type", type.rawValue), .fd(fd)])
    return .fd(fd)
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
    case .guestMemfd(let offset):
      return .success(ResolvedPFN(pfn: PFN((offset >> pageShift) & 0xF_FFFF)))
    }
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
