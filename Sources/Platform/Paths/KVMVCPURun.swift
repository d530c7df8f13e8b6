import KernelCore
import DmaBuf
import KVM
import TDX

/// A vCPU running the guest until one access completes (`KVM_RUN`: `vcpu_enter_guest()`, for a
/// TD `tdx_vcpu_run()` and `tdx_handle_ept_violation()` in `arch/x86/kvm/`), or the guest's
/// `TDG.MMIO.ACCEPT` until it is accepted.
///
/// Regions, each one step of the vCPU's thread:
/// - guest mode: the access (or the TDCALL) against the TDP MMU, or for a TD the Secure EPT;
///   a mapped page completes it. Not present: an EPT violation, the vCPU leaves guest mode.
///   A kick that is pending while the vCPU is in guest mode is taken first (its IPI: exit
///   and re-enter), as an interrupt is.
/// - the fault (``FaultPath``): SRCU, sequence and slot; the PFN lookup; `mmu_lock` for read,
///   the staleness check and the install (a TD's `TDH.MMIO.MAP` inside it).
/// - back in guest mode (`TDH.VP.ENTER` for a TD), the access again: whatever happened in the
///   meantime (a revoke's zap) it faults again. No retry is ever capped: a fault that can
///   never succeed loops, and whoever drives the thread finds the loop.
struct VCPURun: Hashable, Sendable {
  enum Kind: Hashable, Sendable {
    case access(GPA, size: UInt64, AccessKind)
    case accept(GPA, expectedHPA: HPA)
  }

  enum State: Hashable, Sendable {
    case guest
    case fault(FaultPath, request: PFNRequest?)
  }

  let vm: VMID
  let vcpu: UInt32
  let kind: Kind
  /// What a store writes (its low `size` bytes).
  let stored: UInt64
  var state: State = .guest
  /// This access installed a mapping (the outcome is `mapped`, not `already_mapped`).
  var faulted = false
  /// Faults that went back to the guest (history).
  var retries = Observed(0)

  init(vm: VMID, vcpu: UInt32, kind: Kind, stored: UInt64 = 0) {
    self.vm = vm; self.vcpu = vcpu; self.kind = kind; self.stored = stored
  }

  var ref: VCPURef { VCPURef(vm: vm, index: vcpu) }

  /// A guest store: when it completes it writes the registers of the device it reaches.
  var isStore: Bool {
    if case .access(_, _, .write) = kind { return true }
    return false
  }

  var gpa: GPA {
    switch kind {
    case .access(let gpa, _, _), .accept(let gpa, _): gpa
    }
  }

  /// The sequence the fault in flight recorded, if it holds one.
  var recordedSeq: UInt64? {
    if case .fault(let path, _) = state { return path.recordedSeq }
    return nil
  }

  mutating func rebase(by base: UInt64) {
    if case .fault(var path, let request) = state {
      path.rebase(by: base)
      state = .fault(path, request: request)
    }
  }

  mutating func childReturned(_: OpResult) {}

  mutating func step(_ m: inout Machine, ctx: ContextID, choices: inout Contention) throws(LockViolation) -> FrameStep {
    guard m.kvm.vms[vm] != nil else {
      // KVM_RUN holds its vCPU file, and the file the VM (kvm->users_count): the VM cannot go.
      throw LockViolation(lock: "kvm->users_count", message: "the VM went away during KVM_RUN")
    }
    switch state {
    case .guest:
      return try inGuest(&m, ctx: ctx)
    case .fault(var path, let request):
      if let request {
        // Region 2: the PFN, outside mmu_lock. A dma-buf's exporter is asked under its resv lock.
        if case .dmaBuf(let binding) = request.source,
           let wait = m.dmabufCore.resvWait(for: binding.attachment, context: ctx) {
          return .blocked(wait)
        }
        let answer = m.resolvePFN(request)
        if let action = try path.pfnResolved(answer, vm: &m.kvm.vms[vm]!) {
          return try faultOver(action, &m, label: "fault: get_pfn refused")
        }
        state = .fault(path, request: nil)
        return .ran(m.variant == .rfcV1 ? "fault: dma_buf_get_pfn_unlocked (resv around get_pfn)"
                                        : "fault: get_pfn under resv")
      }
      if path.recordedSeq == nil {
        // Region 1: SRCU, the sequence, the slot.
        let action = try path.begin(&m.kvm.vms[vm]!)
        if case .resolvePFN(let next) = action {
          state = .fault(path, request: next)
          return .ran("fault: srcu_read_lock, read mmu_invalidate_seq, find the slot")
        }
        return try faultOver(action, &m, label: "fault: srcu_read_lock, find the slot")
      }
      // Region 3: mmu_lock, staleness, install.
      switch try path.install(&m.kvm.vms[vm]!) {
      case .blocked(let wait):
        return .blocked(wait)
      case .secureMap(let gpa, let hpa, let level):
        guard let td = m.kvm.tds[vm] else {
          throw LockViolation(lock: "kvm->mmu_lock", message: "a secure map on a VM without a TD")
        }
        let contended = choices.takeBusy(.mmioMap)
        let result = m.kvm.seamcall(vm, .mmioMap, variant: m.variant, contended: contended, trace: &m.trace,
                                    "\(gpa)", [.gpa(gpa), .hpa(hpa)]) { (module: inout TDXModule) throws(TDXStatus) in
          try module.tdhMMIOMap(td: td, gpa: gpa, level: SEPTLevel(level), hpa: hpa)
        }
        let action = try path.secureMapCompleted(result, vm: &m.kvm.vms[vm]!)
        return try faultOver(action, &m, label: "fault: mmu_lock read, seq ok, TDH.MMIO.MAP, install mirror SPTE")
      case let other:
        return try faultOver(other, &m, label: "fault: mmu_lock read, seq checked, install SPTE")
      }
    }
  }

  /// Guest mode: the access, or the TDCALL, once the vCPU runs.
  private mutating func inGuest(_ m: inout Machine, ctx: ContextID) throws(LockViolation) -> FrameStep {
    // KVM_RUN: kvm_run no longer holds an earlier memory-fault exit.
    m.kvm.vms[vm]!.clearMemoryFault(vcpu: vcpu)
    let td = m.kvm.tds[vm]
    // A TD's access to a shared GPA (shared bit set) goes through its direct root, not the
    // Secure EPT: it completes, or faults, as an ordinary VM's does.
    let sharedTDAccess: Bool = if case .access(let gpa, _, _) = kind, td != nil {
      !m.kvm.vms[vm]!.isPrivateAccess(gpa)
    } else { false }
    guard let td, !sharedTDAccess else {
      guard case .access(let gpa, let size, let access) = kind else {
        throw LockViolation(lock: "vcpu", message: "an accept on a VM without a TD")
      }
      let current = m.kvm.vms[vm]!
      let gfn = current.faultGFN(gpa)
      if let leaf = sharedTDAccess ? current.sharedMMU.lookup(gfn) : current.presentLeaf(gfn),
         access != .write || leaf.spte.isWritable {
        m.noteCompletedAccess(vm, gpa: gpa, accept: false)
        // The access reaches whatever the SPTE maps, which may no longer be what the exporter hands out.
        let hpa = leaf.spte.pfn.hpa.advanced(by: gpa.rawValue - leaf.gfn.gpa.rawValue)
        return complete(faulted ? .mapped : .alreadyMapped,
                        value: m.mmioAccess(vm, gpa: gpa, hpa: hpa, size: size, store: access == .write ? stored : nil))
      }
      state = .fault(FaultPath(ctx: ctx, gpa: gpa, access: access), request: nil)
      return .ran("guest: access, EPT violation, VM exit")
    }
    // An IPI that arrived while the vCPU was in guest mode is taken before the next instruction.
    if m.kvm.vms[vm]!.pendingKicks.contains(vcpu), m.kvm.vcpusInGuest(vm).contains(vcpu) {
      try m.answerKick(ref)
      return .ran("IPI: exit guest mode, enter again")
    }
    // KVM_RUN: TDH.VP.ENTER if the vCPU is not in guest mode yet (or came back from a fault).
    try m.kvm.enterGuest(ref, traced: false, trace: &m.trace)
    switch kind {
    case .access(let gpa, let size, let access):
      let page = GPA(gpa.rawValue & ~(pageSize - 1))
      let wasPending = m.kvm.tdx.septEntry(td: td, gpa: page)?.state == .mmioPending
      let result = m.kvm.tdx.guestAccess(td: td, gpa: gpa)
      m.trace.absorb(&m.kvm.tdx.trace)
      if wasPending, result != .killedTD { m.kvm.observed.value.unpunishedPendingAccesses += 1 }
      switch result {
      case .mapped(let hpa):
        m.noteCompletedAccess(vm, gpa: gpa, accept: false)
        return complete(faulted ? .mapped : .alreadyMapped,
                        value: m.mmioAccess(vm, gpa: gpa, hpa: hpa, size: size, store: access == .write ? stored : nil))
      case .killedTD, .tdNotRunnable: return complete(.killed)
      case .virtualizationException: return .ranAndReturned("guest: access, #VE", .success(.guestAccess("ve")))
      case .eptViolation:
        try m.kvm.leaveGuest(ref, traced: false, trace: &m.trace)
        state = .fault(FaultPath(ctx: ctx, gpa: gpa, access: access), request: nil)
        return .ran("guest: access, EPT violation, TD exit")
      }
    case .accept(let gpa, let expected):
      let outcome: MMIOAcceptOutcome
      do {
        outcome = try m.kvm.tdx.tdgMMIOAccept(td: td, vcpu: vcpu, gpa: gpa, expectedHPA: expected)
      } catch {
        m.trace.absorb(&m.kvm.tdx.trace)
        // A warning (bit 63 clear), such as TDX_PAGE_ALREADY_ACCEPTED, completes the TDCALL.
        if !error.isError { return .ranAndReturned("guest: TDG.MMIO.ACCEPT", .success(.guestAccess("already_accepted"))) }
        return .ranAndReturned("guest: TDG.MMIO.ACCEPT", .failure(.tdx(error)))
      }
      m.trace.absorb(&m.kvm.tdx.trace)
      switch outcome {
      case .accepted:
        m.noteCompletedAccess(vm, gpa: gpa, accept: true)
        return .ranAndReturned("guest: TDG.MMIO.ACCEPT", .success(.guestAccess("accepted")))
      case .eptViolation:
        try m.kvm.leaveGuest(ref, traced: false, trace: &m.trace)
        state = .fault(FaultPath(ctx: ctx, gpa: gpa, access: .read), request: nil)
        return .ran("guest: TDG.MMIO.ACCEPT, EPT violation, TD exit")
      }
    }
  }

  /// A fault action that may end the fault: back to the guest, or `KVM_RUN` returns.
  private mutating func faultOver(_ action: FaultAction, _ m: inout Machine, label: StaticString) throws(LockViolation) -> FrameStep {
    guard case .complete(let result) = action else {
      throw LockViolation(lock: "fault path", message: "unexpected \(action) at the end of a region")
    }
    switch result {
    case .retry:
      retries.value += 1
      state = .guest
      return .ran(label)
    case .outcome(let outcome):
      m.trace.emit(.kvmMMUFault, "vm\(vm.rawValue): fault at \(gpa) -> \(outcome.rawValue)\(retries.value > 0 ? " after \(retries.value) retries" : "")",
                   [.vm(vm), .gpa(gpa), .text("outcome", outcome.rawValue), .int("retries", retries.value)])
      switch outcome {
      case .mapped:
        faulted = true
        state = .guest
        m.noteInstall(vm, gpa: gpa)
        return .ran(label)
      case .alreadyMapped:
        state = .guest
        return .ran(label)
      case .eio:
        // An EIO carries its check: the fault path ends in `.failed(errno)`.
        throw LockViolation(lock: "fault path", message: "an EIO outcome without the check that failed")
      case .efault:
        return .ranAndReturned(label, .failure(.errno(Errno.EFAULT.because("kvm_mmu_faultin_pfn", "KVM_EXIT_MEMORY_FAULT"))))
      case .exitMMIO, .killed:
        return .ranAndReturned(label, .success(.guestAccess(outcome.rawValue)))
      }
    case .memoryFault(let exit):
      // kvm_prepare_memory_fault_exit(): kvm_run says why, KVM_RUN returns the errno.
      m.kvm.vms[vm]!.recordMemoryFault(exit, vcpu: vcpu)
      m.trace.emit(.kvmMMUFault, "vm\(vm.rawValue): fault at \(gpa) -> \(exit)",
                   [.vm(vm), .gpa(gpa), .text("outcome", "\(exit)"), .int("retries", retries.value)])
      return .ranAndReturned(label, .failure(.memoryFault(exit.because("kvm_mmu_faultin_pfn", "\(exit)"))))
    case .notModelled(let function, let what):
      return .ranAndReturned(label, .failure(.errno(Errno.EOPNOTSUPP.because(function, what))))
    case .failed(let errno):
      m.trace.emit(.kvmMMUFault, "vm\(vm.rawValue): fault at \(gpa) -> \(FaultOutcome.eio.rawValue)\(retries.value > 0 ? " after \(retries.value) retries" : "")",
                   [.vm(vm), .gpa(gpa), .text("outcome", FaultOutcome.eio.rawValue), .int("retries", retries.value)])
      return .ranAndReturned(label, .failure(.errno(errno)))
    }
  }

  /// The access completed; `value` is what a load read.
  private func complete(_ outcome: FaultOutcome, value: UInt64? = nil) -> FrameStep {
    .ranAndReturned("guest: access completes", .success(.guestAccess(outcome.rawValue, value: value)))
  }
}

extension Machine {
  /// A fault installed a mapping at `gpa` of `vm`: the PFN must be one its exporter still hands
  /// out, unless the importer is being told of a move right now (and will zap it). A fault
  /// whose PFN lookup raced a revoke and that installed anyway broke the sequence check.
  mutating func noteInstall(_ vm: VMID, gpa: GPA) {
    guard let state = kvm.vms[vm], let slot = state.memslot(containing: state.faultGFN(gpa)), let binding = slot.dmaBuf,
          vfio.dmaBuf(binding.dmaBuf)?.revoked ?? true,
          dmabufCore.attachment(binding.attachment)?.inMoveNotify != true else { return }
    kvm.observed.value.stalePFNInstalls.append(
      "vm\(vm.rawValue): a fault installed \(gpa) from dmabuf\(binding.dmaBuf.rawValue), which its exporter no longer hands out")
  }

  /// The access properties of a guest access that completes at `gpa` of `vm`: it must not
  /// touch a page of a buffer whose revoke has returned (KVM's `move_notify` is over), and
  /// an accept must be of MMIO whose TDI runs.
  mutating func noteCompletedAccess(_ vm: VMID, gpa: GPA, accept: Bool) {
    guard let state = kvm.vms[vm], let slot = state.memslot(containing: state.faultGFN(gpa)), let binding = slot.dmaBuf else { return }
    let buffer = vfio.dmaBuf(binding.dmaBuf)
    if buffer?.revoked ?? true, dmabufCore.attachment(binding.attachment)?.inMoveNotify != true {
      kvm.observed.value.accessesToRevokedMMIO.append(
        "vm\(vm.rawValue): an access to \(gpa) completed on revoked dmabuf\(binding.dmaBuf.rawValue)")
    }
    if accept, let device = buffer?.device, let tdi = vfio.device(device)?.function.tdiState, tdi != .run {
      kvm.observed.value.acceptsOfUntrustedTDI.append(
        "vm\(vm.rawValue): TDG.MMIO.ACCEPT of \(gpa) succeeded while the TDI of vfio-dev\(device.rawValue) is \(tdi.specName)")
    }
  }
}
