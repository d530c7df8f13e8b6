import KernelCore
import DmaBuf
import VFIO
import KVM
import TDX

/// `KVM_SET_USER_MEMORY_REGION2` (`kvm_vm_ioctl_set_memory_region()` →
/// `kvm_set_memory_region()` → `kvm_set_memslot()` in `virt/kvm/kvm_main.c`, with the RFC's
/// dma-buf bind of patches 6 and 10), under `kvm->slots_lock`.
///
/// Regions:
/// 1. `slots_lock`, the checks (``VirtualMachine/prepareSetUserMemoryRegion2(_:variant:)``);
///    a create or flags change without a dma-buf commits in the same region.
/// 2. for a dma-buf: `dma_buf_get()`, the exporter's data, the size and sanity checks, the
///    dynamic attach (under the buffer's resv).
/// 3. for a delete or move, `kvm_invalidate_memslot()`: the slot is marked INVALID and swapped
///    in; the vCPUs then reading the memslots under SRCU are waited for
///    (`synchronize_srcu()`), and the slot's mappings flushed under `mmu_lock` for write
///    (for a TD, through the Secure-EPT zap).
/// 4. the commit; then each attachment a delete drops is detached (under its resv), and
///    `slots_lock` is released with the last region.
struct KVMSetMemoryRegion: Hashable, Sendable {
  enum State: Hashable, Sendable {
    case lock
    case bind(MemslotPlan)
    /// Invalidated; waiting for the SRCU readers that were in a read section then.
    case invalidated(MemslotPlan, DmaBufBinding?, readers: [ContextID])
    /// A TD's Secure-EPT zap of the old slot runs.
    case flushing(MemslotPlan, DmaBufBinding?)
    case commit(MemslotPlan, DmaBufBinding?)
    case detach([AttachmentID])
    /// Everything is done; a child (a buffer's release) may still have run.
    case finished
  }

  let vm: VMID
  let region: MemoryRegion2
  var state: State = .lock

  init(vm: VMID, region: MemoryRegion2) { self.vm = vm; self.region = region }

  mutating func childReturned(_: OpResult) {
    if case .flushing(let plan, let binding) = state { state = .commit(plan, binding) }
  }

  mutating func step(_ m: inout Machine, ctx: ContextID) throws(LockViolation) -> FrameStep {
    guard m.kvm.vms[vm] != nil else {
      throw LockViolation(lock: "kvm->slots_lock", message: "the VM went away during a memslot update")
    }
    switch state {
    case .lock:
      if let wait = m.kvm.vms[vm]!.slotsLock.wait(for: ctx) { return .blocked(wait) }
      try m.kvm.vms[vm]!.lockSlots(ctx)
      let plan: MemslotPlan
      do { plan = try m.kvm.vms[vm]!.prepareSetUserMemoryRegion2(region, variant: m.variant) } catch {
        return try fail(.errno(error), &m, ctx: ctx, label: "slots_lock, check the region")
      }
      if plan.dmaBufFD != nil {
        state = .bind(plan)
        return .ran("slots_lock, check the region")
      }
      return try afterBind(plan, nil, &m, ctx: ctx, label: "slots_lock, check the region")

    case .bind(let plan):
      guard let fd = plan.dmaBufFD else { throw LockViolation(lock: "kvm->slots_lock", message: "bind without a dma-buf") }
      if case .dmaBuf(let id)? = try? m.files.lookup(fd), let wait = m.dmabufCore.resvWait(buffer: id, context: ctx) {
        return .blocked(wait)
      }
      let binding: DmaBufBinding
      do { binding = try m.bindDmaBuf(fd, plan: plan, vm: vm) } catch {
        return try fail(.errno(error), &m, ctx: ctx, label: "kvm_vfio_dmabuf_bind")
      }
      return try afterBind(plan, binding, &m, ctx: ctx, label: "kvm_vfio_dmabuf_bind: dma_buf_get, checks, attach")

    case .invalidated(let plan, let binding, let readers):
      // synchronize_srcu(): every vCPU that could still see the valid slot has left its
      // read section (a new reader sees it INVALID and retries).
      let srcu = m.kvm.vms[vm]!.srcu
      if let reader = readers.first(where: { srcu.isReading($0) }) {
        return .blocked(.event("synchronize_srcu: \(reader) is in a kvm->srcu read section"))
      }
      guard let old = plan.old else { throw LockViolation(lock: "kvm->slots_lock", message: "invalidated a slot that did not exist") }
      if m.kvm.tds[vm] != nil {
        switch try m.kvm.vms[vm]!.beginSecureZap(old.gfns, ctx: ctx) {
        case .failure(let wait): return .blocked(wait.wait)
        case .success(let zap):
          state = .flushing(plan, binding)
          return .ranThenCall("kvm_arch_flush_shadow_memslot: mmu_lock write, invalidate begin",
                              .secureZap(TDXSEPTZap(vm: vm, zap: zap, purpose: "zap of private MMIO for the slot change")))
        }
      }
      if let wait = m.kvm.vms[vm]!.mmuLock.writeWait(for: ctx) { return .blocked(wait) }
      try m.kvm.vms[vm]!.flushShadowMemslot(old.gfns, ctx: ctx)
      return try commit(plan, binding, &m, ctx: ctx, label: "synchronize_srcu, flush the slot under mmu_lock, commit")

    case .finished:
      return .returned(.success(.none))

    case .flushing:
      throw LockViolation(lock: "kvm->mmu_lock", message: "memslot update stepped while its zap runs")

    case .commit(let plan, let binding):
      return try commit(plan, binding, &m, ctx: ctx, label: "commit the memslot change")

    case .detach(var remaining):
      guard let attachment = remaining.first else { throw LockViolation(lock: "kvm->slots_lock", message: "nothing to detach") }
      if let wait = m.dmabufCore.resvWait(for: attachment, context: ctx) { return .blocked(wait) }
      remaining.removeFirst()
      let released: DmaBufObject?
      do { released = try m.dmabufCore.detach(attachment, trace: &m.trace) } catch {
        throw LockViolation(lock: "dmabuf->resv", message: "KVM detaches attachment \(attachment.rawValue) it does not hold: \(error)")
      }
      if remaining.isEmpty { try m.kvm.vms[vm]!.unlockSlots(ctx) }
      state = .detach(remaining)
      if let released {
        // The slot held the buffer's last reference: its release runs next, on this thread.
        if remaining.isEmpty { state = .finished }
        return .ranThenCall(remaining.isEmpty ? "dma_buf_detach, slots_lock unlock" : "dma_buf_detach",
                            .dmaBufRelease(VFIOPCIDmaBufRelease(buffer: released.id)))
      }
      return remaining.isEmpty ? .ranAndReturned("dma_buf_detach, slots_lock unlock", .success(.none)) : .ran("dma_buf_detach")
    }
  }

  /// After the checks and the bind: invalidate a slot being deleted or moved, else commit.
  private mutating func afterBind(_ plan: MemslotPlan, _ binding: DmaBufBinding?, _ m: inout Machine,
                                  ctx: ContextID, label: StaticString) throws(LockViolation) -> FrameStep {
    guard plan.change == .delete || plan.change == .move, let old = plan.old else {
      return try commit(plan, binding, &m, ctx: ctx, label: label)
    }
    m.kvm.vms[vm]!.invalidateMemslot(old.key)
    state = .invalidated(plan, binding, readers: m.kvm.vms[vm]!.srcu.readers.filter { $0 != ctx })
    return .ran(label)
  }

  private mutating func commit(_ plan: MemslotPlan, _ binding: DmaBufBinding?, _ m: inout Machine,
                               ctx: ContextID, label: StaticString) throws(LockViolation) -> FrameStep {
    let commit = try m.kvm.vms[vm]!.commitSetUserMemoryRegion2(plan, binding: binding, ctx: ctx)
    m.trace.emit(.kvmSetMemoryRegion, "vm\(vm.rawValue): KVM_SET_USER_MEMORY_REGION2 slot \(region.slot) \(commit.change)"
                 + (commit.leftDangling.isEmpty ? "" : " (attachment \(commit.leftDangling.map { String($0.rawValue) }.joined(separator: ",")) left bound to the freed slot)"),
                 [.vm(vm), .int("slot", region.slot), .text("change", "\(commit.change)"), .hex("gpa", region.guestPhysAddr),
                  .hex("size", region.memorySize), .hex("flags", UInt64(region.flags))])
    if !commit.detach.isEmpty {
      state = .detach(commit.detach)
      return .ran(label)
    }
    try m.kvm.vms[vm]!.unlockSlots(ctx)
    return .ranAndReturned(label, .success(.none))
  }

  /// The ioctl fails: `slots_lock` is dropped in the same region.
  private func fail(_ failure: OpFailure, _ m: inout Machine, ctx: ContextID,
                    label: StaticString) throws(LockViolation) -> FrameStep {
    try m.kvm.vms[vm]!.unlockSlots(ctx)
    return .ranAndReturned(label, .failure(failure))
  }
}

extension Machine {
  /// The RFC's `kvm_vfio_dmabuf_bind`: `dma_buf_get()`, the exporter's data, the size and
  /// sanity checks, then a dynamic attach whose `move_notify` zaps the slot.
  mutating func bindDmaBuf(_ fd: FD, plan: MemslotPlan, vm id: VMID) throws(Errno) -> DmaBufBinding {
    let buffer = try dmaBuf(fd)
    guard let object = dmabufCore.buffer(buffer) else { throw Errno.EBADF.because("dma_buf_get", "the buffer is gone") }
    let data: ExporterData?
    do { data = try vfio.exporterData(buffer: object) } catch { data = nil }
    let description = DmaBufDescription(id: buffer, size: object.size,
                                        vfio: data.map { VFIODmaBufData(isPrivate: $0.isPrivate, vm: $0.vm) })
    try plan.checkDmaBuf(description, variant: variant)
    try kvm.vms[id]!.vfioDmaBufSanityCheck(description)
    let attachment = try dmabufCore.attach(
      buffer, importer: "kvm vm\(id.rawValue) slot \(plan.key.id)",
      ops: ImporterOps(dynamic: true, hasMoveNotify: true, allowPeer2Peer: true), exporter: vfio, trace: &trace)
    return DmaBufBinding(dmaBuf: buffer, attachment: attachment, pgoff: PageIndex(plan.region.guestMemfdOffset.pages))
  }
}
