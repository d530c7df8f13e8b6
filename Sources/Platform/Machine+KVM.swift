import KernelCore
import PCI
import DmaBuf
import VFIO
import KVM
import TDX

extension Machine {
  mutating func performKVM(_ op: Operation, context: ContextID) throws(OpFailure) -> OpValue {
    switch op {
    case .kvmCreateVM(let type): return try createVM(type)
    case .kvmCreateVCPU(let vmFD, let vcpu): return try createVCPU(vmFD, vcpu)
    case .kvmSetUserMemoryRegion2(let vmFD, let region): return try setUserMemoryRegion2(vmFD, region, context: context)
    case .kvmDestroyVM(let vmFD):
      _ = try errno { () throws(Errno) in try vm(vmFD) }
      return try errno { () throws(Errno) in try close(vmFD, context: context) }
    case .guestRead(let vmFD, let gpa, let size): return try guestAccess(vmFD, gpa, size, .read, context: context)
    case .guestWrite(let vmFD, let gpa, let size): return try guestAccess(vmFD, gpa, size, .write, context: context)
    case .guestAcceptMMIO(let vmFD, let gpa, let expectHPA): return try acceptMMIO(vmFD, gpa, expectHPA, context: context)
    default: throw .errno(.EINVAL)
    }
  }

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
    guard let vm = kvm.vms[id], !vm.isDead else { throw .errno(.EIO) }
    return id
  }

  // MARK: VM and vCPU creation

  /// `KVM_CREATE_VM`; a TDX VM also builds its TD in the TDX module.
  mutating func createVM(_ type: VMTypeName) throws(OpFailure) -> OpValue {
    try errno { () throws(Errno) in try requireFreeFD() }
    let id = kvm.vms.keys.max()?.next ?? VMID(1)
    if type == .tdx {
      kvm.tds[id] = try status { () throws(TDXStatus) in try kvm.tdx.tdhMngCreate(vcpuCount: KVMHost.tdVCPUs) }
      trace.absorb(&kvm.tdx.trace)
    }
    let fd = try errno { () throws(Errno) in try files.install(.vm(id)) }
    kvm.vms[id] = VirtualMachine(id: id, type: type == .tdx ? .tdx : .default)
    trace.emit(.kvm, "KVM_CREATE_VM type \(type == .tdx ? "KVM_X86_TDX_VM" : "KVM_X86_DEFAULT_VM") -> vm\(id.rawValue) (\(fd))")
    return .fd(fd)
  }

  /// `KVM_CREATE_VCPU`; a TD's vCPU enters the guest (TDH.VP.ENTER) and stays there, so TLB
  /// tracking must kick it.
  mutating func createVCPU(_ vmFD: FD, _ vcpu: UInt32) throws(OpFailure) -> OpValue {
    let id = try liveVM(vmFD)
    if kvm.tds[id] != nil, vcpu >= KVMHost.tdVCPUs { throw .errno(.EINVAL) }
    try errno { () throws(Errno) in try kvm.vms[id]!.createVCPU(vcpu) }
    trace.emit(.kvm, "KVM_CREATE_VCPU vm\(id.rawValue) vcpu \(vcpu)")
    if let td = kvm.tds[id] { try? kvm.tdx.tdhVPEnter(td: td, vcpu: vcpu) }
    return .none
  }

  // MARK: Memslots

  /// `KVM_SET_USER_MEMORY_REGION2`: validate, resolve and check the dma-buf (patches 6 and 10),
  /// attach as a dynamic importer, zap what a TD loses, then commit; unwinds the attach if the
  /// commit fails.
  mutating func setUserMemoryRegion2(_ vmFD: FD, _ region: MemoryRegion2, context: ContextID) throws(OpFailure) -> OpValue {
    let id = try liveVM(vmFD)
    let plan = try errno { () throws(Errno) in try kvm.vms[id]!.prepareSetUserMemoryRegion2(region, variant: variant) }
    var binding: DmaBufBinding?
    if let fd = plan.dmaBufFD {
      binding = try errno { () throws(Errno) in try bindDmaBuf(fd, plan: plan, vm: id) }
    }
    if let td = kvm.tds[id], let old = plan.old, plan.change != .create, plan.change != .unchanged {
      zapPrivate(id, td: td, gfns: old.gfns, context: context)
    }
    let commit: MemslotCommit
    do {
      commit = try kvm.vms[id]!.commitSetUserMemoryRegion2(plan, binding: binding)
    } catch {
      if let binding, let released = try? dmabufCore.detach(binding.attachment, trace: &trace) {
        vfio.releaseDmaBuf(released.id, trace: &trace)
      }
      throw .errno(error)
    }
    for attachment in commit.detach {
      if let released = try? dmabufCore.detach(attachment, trace: &trace) { vfio.releaseDmaBuf(released.id, trace: &trace) }
    }
    trace.emit(.kvm, "vm\(id.rawValue): KVM_SET_USER_MEMORY_REGION2 slot \(region.slot) \(commit.change)"
               + (commit.leftDangling.isEmpty ? "" : " (attachment \(commit.leftDangling.map { String($0.rawValue) }.joined(separator: ",")) left bound to the freed slot)"))
    return .none
  }

  /// The RFC's `kvm_vfio_dmabuf_bind`: `dma_buf_get()`, the exporter's data, the size and
  /// sanity checks, then a dynamic attach whose `move_notify` zaps the slot.
  mutating func bindDmaBuf(_ fd: FD, plan: MemslotPlan, vm id: VMID) throws(Errno) -> DmaBufBinding {
    let buffer = try dmaBuf(fd)
    guard let object = dmabufCore.buffer(buffer) else { throw .EBADF }
    let data = try? vfio.exporterData(buffer: object)
    let description = DmaBufDescription(id: buffer, size: object.size,
                                        vfio: data.map { VFIODmaBufData(isPrivate: $0.isPrivate, vm: $0.vm) })
    try plan.checkDmaBuf(description, variant: variant)
    try kvm.vms[id]!.vfioDmaBufSanityCheck(description)
    let attachment = try dmabufCore.attach(
      buffer, importer: "kvm vm\(id.rawValue) slot \(plan.key.id)",
      ops: ImporterOps(dynamic: true, hasMoveNotify: true, allowPeer2Peer: true), exporter: vfio, trace: &trace)
    return DmaBufBinding(dmaBuf: buffer, attachment: attachment, pgoff: PageIndex(plan.region.guestMemfdOffset.pages))
  }

  /// Unmaps a TD's private MMIO in `gfns` through the TDX module before the slot goes away.
  mutating func zapPrivate(_ id: VMID, td: TDID, gfns: Range<GFN>, context: ContextID) {
    guard kvm.vms[id]?.mmu.leaves(in: gfns).isEmpty == false else { return }
    do {
      guard let path = try ZapPath.begin(&kvm.vms[id]!, gfns: gfns, ctx: context) else { return }
      let outcome = try kvm.drive(path, vm: id, trace: &trace)
      trace.emit(.kvm, "vm\(id.rawValue): zap of private MMIO for the slot change: \(outcome)")
    } catch {
      kvm.bugs.append("vm\(id.rawValue): lock rule broken in a slot zap: \(error)")
    }
  }

  /// `kvm_destroy_vm()` on the last close of the VM fd: frees every slot (detaching its
  /// dma-buf) and, for a TD, tears the TD down in the TDX module.
  mutating func destroyVM(_ id: VMID, context: ContextID) {
    guard kvm.vms[id] != nil else { return }
    let (detach, leaked) = kvm.vms[id]!.destroy()
    for attachment in detach {
      if let released = try? dmabufCore.detach(attachment, trace: &trace) { vfio.releaseDmaBuf(released.id, trace: &trace) }
    }
    kvm.leaked.formUnion(leaked)
    if let td = kvm.tds[id] {
      try? kvm.tdx.tdTeardown(td: td)
      trace.absorb(&kvm.tdx.trace)
      kvm.tds[id] = nil
    }
    kvm.vms[id] = nil
    trace.emit(.kvm, "destroy vm\(id.rawValue)" + (leaked.isEmpty ? "" : " (attachment \(leaked.map { String($0.rawValue) }.joined(separator: ",")) leaked)"))
  }

  // MARK: Guest accesses

  /// A whole guest access by vCPU 0: a mapped page completes without an exit; otherwise the
  /// EPT violation runs the fault path (for a TD the Secure EPT decides first: an unaccepted
  /// MMIO page kills the TD).
  mutating func guestAccess(_ vmFD: FD, _ gpa: GPA, _ size: UInt64, _ access: AccessKind,
                            context: ContextID) throws(OpFailure) -> OpValue {
    let id = try liveVM(vmFD)
    guard kvm.vms[id]!.vcpus.isEmpty == false else { throw .errno(.EINVAL) }
    guard [1, 2, 4, 8].contains(size), gpa.pageOffset + size <= pageSize else { throw .errno(.EINVAL) }
    if let td = kvm.tds[id] {
      let wasPending = kvm.tdx.septEntry(td: td, gpa: GPA(gpa.rawValue & ~(pageSize - 1)))?.state == .mmioPending
      let first = kvm.tdx.guestAccess(td: td, gpa: gpa)
      trace.absorb(&kvm.tdx.trace)
      if wasPending, first != .killedTD { kvm.unpunishedPendingAccesses += 1 }
      switch first {
      case .mapped: return .guestAccess(FaultOutcome.alreadyMapped.rawValue)
      case .killedTD, .tdNotRunnable: return .guestAccess(FaultOutcome.killed.rawValue)
      case .virtualizationException: return .guestAccess("ve")
      case .eptViolation: break
      }
      let outcome = try fault(id, gpa: gpa, access: access, context: context)
      guard outcome == .mapped || outcome == .alreadyMapped else { return try report(outcome) }
      // The vCPU re-executes the access against the new entry.
      let again = kvm.tdx.guestAccess(td: td, gpa: gpa)
      trace.absorb(&kvm.tdx.trace)
      switch again {
      case .killedTD, .tdNotRunnable: return .guestAccess(FaultOutcome.killed.rawValue)
      default: return try report(outcome)
      }
    }
    if let leaf = kvm.vms[id]!.mmu.lookup(gpa.gfn), access != .write || leaf.spte.isWritable {
      return .guestAccess(FaultOutcome.alreadyMapped.rawValue)
    }
    return try report(try fault(id, gpa: gpa, access: access, context: context))
  }

  /// `KVM_RUN` fails with `EIO`/`EFAULT` for those outcomes; the others are how it returned.
  func report(_ outcome: FaultOutcome) throws(OpFailure) -> OpValue {
    switch outcome {
    case .eio: throw .errno(.EIO)
    case .efault: throw .errno(.EFAULT)
    default: return .guestAccess(outcome.rawValue)
    }
  }

  /// Drives one ``FaultPath`` to its end in `context`: PFNs from the exporter (locked as the
  /// variant orders it), a TD's mapping through `TDH.MMIO.MAP`.
  mutating func fault(_ id: VMID, gpa: GPA, access: AccessKind, context: ContextID) throws(OpFailure) -> FaultOutcome {
    var path = FaultPath(ctx: context, gpa: gpa, access: access)
    do {
      var action = try path.step(&kvm.vms[id]!)
      for _ in 0..<1_000 {
        switch action {
        case .resolvePFN(let request):
          action = path.pfnResolved(resolvePFN(request, context: context))
        case .secureMap(let gpa, let hpa, let level):
          guard let td = kvm.tds[id] else { throw OpFailure.errno(.EIO) }
          let result = kvm.seamcall(id, "TDH.MMIO.MAP \(gpa)", trace: &trace) { (m: inout TDXModule) throws(TDXStatus) in
            try m.tdhMMIOMap(td: td, gpa: gpa, level: SEPTLevel(level), hpa: hpa)
          }
          action = try path.secureMapCompleted(result, vm: &kvm.vms[id]!)
        case .proceed:
          action = try path.step(&kvm.vms[id]!)
        case .blocked:
          throw OpFailure.errno(.EAGAIN)
        case .complete(let outcome):
          trace.emit(.mmu, "vm\(id.rawValue): fault at \(gpa) -> \(outcome.rawValue)\(path.retries > 0 ? " after \(path.retries) retries" : "")")
          return outcome
        }
      }
      throw OpFailure.errno(.EAGAIN)
    } catch let failure as OpFailure {
      throw failure
    } catch {
      kvm.bugs.append("vm\(id.rawValue): lock rule broken in the fault path: \(error)")
      throw .errno(.EIO)
    }
  }

  /// Where a fault's PFN comes from: the dma-buf exporter for a dma-buf slot; for ordinary
  /// slots the model gives each host page of user memory or guest_memfd a RAM PFN.
  func resolvePFN(_ request: PFNRequest, context: ContextID) -> Result<ResolvedPFN, Errno> {
    switch request.source {
    case .dmaBuf(let binding):
      do {
        let lookup = try lookupPfn(binding.attachment, pgoff: request.pgoff, context: context)
        return .success(ResolvedPFN(pfn: lookup.pfn, order: lookup.order))
      } catch { return .failure(error) }
    case .userspace(let hva):
      return .success(ResolvedPFN(pfn: PFN((hva >> pageShift) & 0xF_FFFF)))
    case .guestMemfd(let offset):
      return .success(ResolvedPFN(pfn: PFN((offset >> pageShift) & 0xF_FFFF)))
    }
  }

  /// `TDG.MMIO.ACCEPT` by vCPU 0 of a TD. An unmapped GPA first takes the EPT violation (the
  /// fault maps it MMIO_PENDING), then the accept is retried, as a guest's accept loop does.
  /// Without `expectHPA` the guest expects what the interface report gives for that BAR offset.
  mutating func acceptMMIO(_ vmFD: FD, _ gpa: GPA, _ expectHPA: HPA?, context: ContextID) throws(OpFailure) -> OpValue {
    let id = try liveVM(vmFD)
    guard let td = kvm.tds[id] else { throw .errno(.EINVAL) }
    guard let expected = expectHPA ?? reportedHPA(id, gpa: gpa) else { throw .errno(.EINVAL) }
    for _ in 0..<3 {
      let outcome = try status { () throws(TDXStatus) in
        try kvm.tdx.tdgMMIOAccept(td: td, vcpu: 0, gpa: gpa, expectedHPA: expected)
      }
      trace.absorb(&kvm.tdx.trace)
      switch outcome {
      case .accepted:
        return .guestAccess("accepted")
      case .eptViolation:

        let fault = try fault(id, gpa: gpa, access: .read, context: context)
        guard fault == .mapped || fault == .alreadyMapped else { return try report(fault) }
      }
    }
    throw .errno(.EAGAIN)
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
