import KernelCore
import DmaBuf
import VFIO
import KVM
import TDX

/// `KVM_SET_USER_MEMORY_REGION2` and `KVM_SET_USER_MEMORY_REGION`
/// (`kvm_vm_ioctl_set_memory_region()` → `kvm_set_memory_region()` → `kvm_set_memslot()` in
/// `virt/kvm/kvm_main.c`, with the RFC's dma-buf bind of patches 6 and 10), under
/// `kvm->slots_lock`.
///
/// Regions:
/// 1. `slots_lock`, the checks (``VirtualMachine/prepareSetUserMemoryRegion2(_:variant:ioctl:)``);
///    a guest_memfd slot's `kvm_gmem_bind()` (``VirtualMachine/checkGuestMemfdBind(_:file:)``);
///    a create or flags change without a dma-buf commits in the same region.
/// 2. for a dma-buf: `dma_buf_get()`, the exporter's data, the size and sanity checks, the
///    dynamic attach (under the buffer's resv).
/// 3. for a delete or move, `kvm_invalidate_memslot()`: the slot is marked INVALID and swapped
///    in; the vCPUs then reading the memslots under SRCU are waited for
///    (`synchronize_srcu()`), and the slot's mappings flushed under `mmu_lock` for write
///    (for a TD, through the Secure-EPT zap). In `reviewed`, a TD's dma-buf slot whose mirror
///    still maps private MMIO once the readers are gone is not flushed: the delete is refused
///    with `EBUSY` and the slot made valid again (the private MMIO slot delete protocol,
///    README "Deleting a private MMIO slot").
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
  let ioctl: MemoryRegionIoctl
  var state: State = .lock
  /// The guest_memfd binding `kvm_gmem_bind()` checked in region 1, for a new GUEST_MEMFD slot.
  var gmem: GuestMemfdSlotBinding?

  init(vm: VMID, region: MemoryRegion2, ioctl: MemoryRegionIoctl = .region2) {
    self.vm = vm; self.region = region; self.ioctl = ioctl
  }

  mutating func childReturned(_: OpResult) {
    if case .flushing(let plan, let binding) = state { state = .commit(plan, binding) }
  }

  mutating func step(_ m: inout Machine, ctx: ContextID) throws(LockViolation) -> FrameStep {
    guard m.kvm.vms[vm] != nil else {
      // The ioctl holds the VM fd's file (fdget), and the file the VM: the VM cannot go.
      throw LockViolation(lock: "kvm->users_count", message: "the VM went away during a memslot update")
    }
    switch state {
    case .lock:
      if let wait = m.kvm.vms[vm]!.slotsLock.wait(for: ctx) { return .blocked(wait) }
      try m.kvm.vms[vm]!.lockSlots(ctx)
      let plan: MemslotPlan
      do throws(Errno) {
        plan = try m.kvm.vms[vm]!.prepareSetUserMemoryRegion2(region, variant: m.variant, ioctl: ioctl)
        if let fd = plan.gmemFD {
          // kvm_gmem_bind(): fget() (EBADF), then the file's checks.
          let file = try m.guestMemfdLookup(fd)
          gmem = try m.kvm.vms[vm]!.checkGuestMemfdBind(plan, file: file)
        }
      } catch {
        return try fail(.errno(error), &m, ctx: ctx, label: "slots_lock, check the region")
      }
      if plan.dmaBufFD != nil {
        state = .bind(plan)
        return .ran("slots_lock, check the region")
      }
      return try afterBind(plan, nil, &m, ctx: ctx, label: "slots_lock, check the region")

    case .bind(let plan):
      guard let fd = plan.dmaBufFD else { throw LockViolation(lock: "kvm->slots_lock", message: "bind without a dma-buf") }
      if case .dmaBuf(let id)? = m.files[fd], let wait = m.dmabufCore.resvWait(buffer: id, context: ctx) {
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
        return .blocked(.srcuReader(reader))
      }
      guard let old = plan.old else { throw LockViolation(lock: "kvm->slots_lock", message: "invalidated a slot that did not exist") }
      // The private MMIO slot delete protocol (reviewed): no fault of the old slot is in flight
      // any more and new ones retry on the invalid slot, so the mirror is final here. Private
      // MMIO it still maps (or holds blocked) cannot be unmapped while the exporter says the
      // interface is trusted (the module wants CONFIG_UNLOCKED or a blocked stream, and a
      // refused TDH.MMIO.UNMAP is KVM_BUG_ON). So KVM refuses: the slot becomes valid again
      // (kvm_set_memslot()'s error path, kvm_activate_memslot(kvm, invalid_slot, old)), and the
      // VMM must revoke first.
      if m.variant == .reviewed, m.kvm.tds[vm] != nil, let binding = old.dmaBuf,
         m.exporterData(of: binding.dmaBuf)?.interfaceTrusted == true,
         let mapped = m.kvm.vms[vm]!.mmu.leaves(in: old.gfns).first {
        m.kvm.vms[vm]!.revalidateMemslot(old.key)
        m.trace.emit(.kvmSetMemoryRegion, "vm\(vm.rawValue): KVM_SET_USER_MEMORY_REGION2 slot \(region.slot) delete refused: private MMIO \(mapped.gfn.gpa) is mapped",
                     [.vm(vm), .int("slot", region.slot), .text("change", "delete refused"), .gpa(mapped.gfn.gpa)])
        return try fail(.errno(Errno.EBUSY.because("kvm_set_memslot", "model (reviewed): slot \(old.key.id) still maps private MMIO at \(mapped.gfn.gpa) of a live buffer; revoke it (stop the interface) before deleting the slot")),
                        &m, ctx: ctx, label: "synchronize_srcu, private MMIO still mapped: slot valid again, EBUSY")
      }
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
    let commit = try m.kvm.vms[vm]!.commitSetUserMemoryRegion2(plan, binding: binding, gmem: gmem, ctx: ctx)
    m.trace.emit(.kvmSetMemoryRegion, "vm\(vm.rawValue): \(ioctl == .region ? "KVM_SET_USER_MEMORY_REGION" : "KVM_SET_USER_MEMORY_REGION2") slot \(region.slot) \(commit.change)"
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
  /// The RFC's `kvm_vfio_dmabuf_bind`: `dma_buf_get()` (`EBADF`), the exporter's data, the
  /// size and sanity checks (`EINVAL`), then a dynamic attach whose `move_notify` zaps the
  /// slot; then `kvm_set_memslot()` -> `kvm_arch_prepare_memory_region()` (RFC patch 6's
  /// `__kvm_set_memory_region()` binds before it sets the memslot). Every check, the attach's
  /// own and the max-GFN one included, runs before the attach takes effect, in that order, so
  /// a refused bind changes nothing and answers the kernel's first errno.
  mutating func bindDmaBuf(_ fd: FD, plan: MemslotPlan, vm id: VMID) throws(Errno) -> DmaBufBinding {
    let buffer = try dmaBuf(fd)
    guard let object = dmabufCore.buffer(buffer) else { throw Errno.EBADF.because("dma_buf_get", "the buffer is gone") }
    let data: ExporterData?
    do { data = try vfio.exporterData(buffer: object) } catch { data = nil }
    let description = DmaBufDescription(id: buffer, size: object.size,
                                        vfio: data.map { VFIODmaBufData(isPrivate: $0.isPrivate, vm: $0.vm) })
    try plan.checkDmaBuf(description, variant: variant)
    try kvm.vms[id]!.vfioDmaBufSanityCheck(description)
    let ops = ImporterOps(dynamic: true, hasMoveNotify: true, allowPeer2Peer: true)
    try dmabufCore.checkAttach(buffer, ops: ops, exporter: vfio)
    try kvm.vms[id]!.checkArchPrepare(plan)
    let attachment = try dmabufCore.attach(buffer, importer: "kvm vm\(id.rawValue) slot \(plan.key.id)",
                                           ops: ops, exporter: vfio, trace: &trace)
    return DmaBufBinding(dmaBuf: buffer, attachment: attachment, pgoff: PageIndex(plan.region.guestMemfdOffset.pages))
  }
}
