import KernelCore
import DmaBuf
import HashTreeCollections

/// A dma-buf attachment KVM holds for a memslot, and whether that slot still exists.
public struct SlotBinding: Hashable, Sendable {
  public let binding: DmaBufBinding
  /// The slot whose importer data the attachment carries.
  public let slot: SlotKey
  /// The GFNs of that slot when it was bound: what a `move_notify` through this attachment
  /// zaps, even after the slot is gone.
  public let gfns: Range<GFN>
  /// The slot was freed without detaching (the `rfc-v1` move bug): `move_notify` through
  /// this attachment would use freed memory.
  public internal(set) var isStale: Bool
}

/// One VM (`struct kvm`): vCPUs, memslots, the TDP MMU, invalidation state, `mmu_lock`.
///
/// Every ioctl-level method fails with `EIO` once the VM is dead (`KVM_BUG_ON` marked it
/// bugged: `kvm_vm_bugged()` makes `kvm_vm_ioctl()` and `kvm_vcpu_ioctl()` return -EIO).
public struct VirtualMachine: Hashable, Sendable {
  /// `KVM_MAX_VCPU_IDS` on x86 without `CONFIG_MAXSMP`: `KVM_MAX_VCPUS` (1024) times
  /// `KVM_VCPU_ID_RATIO` (4).
  public static let maxVCPUIDs: UInt32 = 4096

  public let id: VMID
  public let type: VMType
  public private(set) var vcpus: TreeSet<UInt32> = []
  public private(set) var memslots: TreeDictionary<SlotKey, Memslot> = [:]
  /// Every dma-buf attachment KVM holds, live or dangling.
  public private(set) var bindings: TreeDictionary<AttachmentID, SlotBinding> = [:]
  public internal(set) var mmu = TDPMMU()
  public internal(set) var invalidation = MMUInvalidation()
  /// `kvm->mmu_lock` (an rwlock on x86: faults read, invalidations write).
  public internal(set) var mmuLock = KernelRWSemaphore("kvm->mmu_lock")
  /// `kvm->slots_lock`: held across a whole memslot update.
  public internal(set) var slotsLock = KernelMutex("kvm->slots_lock")
  /// `kvm->srcu`: vCPUs read memslots inside it; memslot updates synchronize on it.
  public internal(set) var srcu = SRCUState()
  /// vCPUs with `KVM_REQ_OUTSIDE_GUEST_MODE` pending whose IPI has not been answered: each
  /// must leave guest mode before the kicker (`kvm_make_all_cpus_request()` waits) goes on.
  public internal(set) var pendingKicks: TreeSet<UInt32> = []
  /// `kvm->vm_bugged`.
  public internal(set) var isDead = false
  /// Host RAM, as PFN ranges: a PFN outside all of them is MMIO (``isMMIOPFN(_:)``).
  public let ramPFNs: [Range<PFN>]

  public init(id: VMID, type: VMType, ramPFNs: [Range<PFN>] = [PFN(0) ..< PFN(0x100000)]) {
    self.id = id; self.type = type; self.ramPFNs = ramPFNs
  }

  /// `kvm_is_mmio_pfn()` (patch 11): a PFN with no `struct page` of RAM behind it.
  public func isMMIOPFN(_ pfn: PFN) -> Bool { !ramPFNs.contains { $0.contains(pfn) } }

  /// `KVM_BUG_ON()`: the VM is dead from now on.
  public mutating func markDead() { isDead = true }

  // MARK: vCPUs

  /// `KVM_CREATE_VCPU` (`kvm_vm_ioctl_create_vcpu()` in `virt/kvm/kvm_main.c`).
  /// - Throws: `EIO` on a dead VM; `EINVAL` for `id >= KVM_MAX_VCPU_IDS`; `EEXIST` for an id
  ///   already in use.
  public mutating func createVCPU(_ vcpuID: UInt32) throws(Errno) {
    guard !isDead else { throw .EIO }
    guard vcpuID < VirtualMachine.maxVCPUIDs else { throw .EINVAL }
    guard !vcpus.contains(vcpuID) else { throw .EEXIST }
    vcpus.insert(vcpuID)
  }

  // MARK: Memslots

  /// The slot containing `gfn` in address space 0 (`gfn_to_memslot()`); a slot being deleted
  /// or moved is returned with ``Memslot/isInvalid`` set.
  public func memslot(containing gfn: GFN, asID: UInt16 = 0) -> Memslot? {
    memslots.values.first { $0.key.asID == asID && $0.contains(gfn) }
  }

  /// `check_memory_region_flags()`, extended by patch 6 (and, in `reviewed`, for every VM).
  static func checkFlags(_ flags: MemslotFlags, type: VMType, variant: Variant) throws(Errno) {
    var valid: MemslotFlags = [.logDirtyPages]
    if type.hasPrivateMemory { valid.insert(.guestMemfd) }
    if type.hasPrivateMemory || variant == .reviewed { valid.insert(.vfioDmaBuf) }
    // Dirty logging of fd-backed memory is not supported; read-only slots emulate writes,
    // which private memory and MMIO handed out by fd cannot have.
    if flags.contains(.guestMemfd) { valid.remove(.logDirtyPages) }
    if flags.contains(.vfioDmaBuf) { valid.subtract([.logDirtyPages, .guestMemfd]) }
    if type.hasReadonlyMemory && !flags.contains(.guestMemfd) && !flags.contains(.vfioDmaBuf) {
      valid.insert(.readonly)
    }
    guard flags.rawValue & ~valid.rawValue == 0 else { throw .EINVAL }
  }

  /// The checks of `KVM_SET_USER_MEMORY_REGION2`, in the kernel's order
  /// (`kvm_vm_ioctl_set_memory_region()` then `__kvm_set_memory_region()`), and the
  /// classification of `kvm_set_memslot()`. Changes nothing.
  ///
  /// - Throws: `EIO` on a dead VM. `EINVAL`: slot id >= `KVM_USER_MEM_SLOTS`; an unknown flag
  ///   or one not allowed for this VM type or combination; size, GPA or userspace address
  ///   not page aligned; `userspace_addr + size` beyond user space; a guest_memfd offset
  ///   unaligned or overflowing; a dma-buf offset not 0 (`rfc-v1`) or unaligned or
  ///   overflowing (`reviewed`); address-space id out of range; GPA + size wrapping; more
  ///   than `KVM_MEM_MAX_NR_PAGES` pages; deleting a slot that does not exist; changing a
  ///   guest_memfd slot, or its size, userspace address or READONLY flag; changing a dma-buf
  ///   slot in `reviewed`; a slot past the largest mappable GFN. `EEXIST`: a new or moved slot
  ///   overlapping another.
  public func prepareSetUserMemoryRegion2(_ mem: UserspaceMemoryRegion2,
                                          variant: Variant) throws(Errno) -> MemslotPlan {
    guard !isDead else { throw .EIO }
    guard mem.id < MemslotLimits.userMemSlots else { throw .EINVAL }
    let flags = MemslotFlags(rawValue: mem.flags)
    try VirtualMachine.checkFlags(flags, type: type, variant: variant)
    guard mem.memorySize.isPageAligned, mem.guestPhysAddr.isPageAligned else { throw .EINVAL }
    let (uEnd, uOverflow) = mem.userspaceAddr.addingReportingOverflow(mem.memorySize)
    guard mem.userspaceAddr.isPageAligned, !uOverflow, uEnd <= MemslotLimits.taskSizeMax else {
      throw .EINVAL
    }
    if flags.contains(.guestMemfd) || (flags.contains(.vfioDmaBuf) && variant == .reviewed) {
      let (_, overflow) = mem.guestMemfdOffset.addingReportingOverflow(mem.memorySize)
      guard mem.guestMemfdOffset.isPageAligned, !overflow else { throw .EINVAL }
    }
    if flags.contains(.vfioDmaBuf) && variant == .rfcV1 && mem.guestMemfdOffset != 0 {
      throw .EINVAL
    }
    guard mem.asID < type.addressSpaces else { throw .EINVAL }
    let (_, gpaOverflow) = mem.guestPhysAddr.addingReportingOverflow(mem.memorySize)
    guard !gpaOverflow, mem.memorySize.pages <= MemslotLimits.maxPages else { throw .EINVAL }

    let key = SlotKey(asID: mem.asID, id: mem.id)
    let old = memslots[key]
    let baseGFN = GPA(mem.guestPhysAddr).gfn
    let npages = mem.memorySize.pages
    func plan(_ change: MemslotChange, fd: FD? = nil) -> MemslotPlan {
      MemslotPlan(key: key, change: change, region: mem, old: old, dmaBufFD: fd)
    }
    let dmaBufFD: FD? = flags.contains(.vfioDmaBuf) ? FD(Int32(bitPattern: mem.guestMemfd)) : nil

    if mem.memorySize == 0 {
      guard old != nil else { throw .EINVAL }
      return plan(.delete)
    }
    let change: MemslotChange
    if let old {
      // "Private memslots are immutable": the posted series tests only GUEST_MEMFD here, so
      // in rfc-v1 a dma-buf slot can be moved or re-flagged; the review forbids it.
      if flags.contains(.guestMemfd) { throw .EINVAL }
      if variant == .reviewed && (flags.contains(.vfioDmaBuf) || old.flags.contains(.vfioDmaBuf)) {
        throw .EINVAL
      }
      guard mem.userspaceAddr == old.userspaceAddr, npages == old.npages,
            !flags.symmetricDifference(old.flags).contains(.readonly) else { throw .EINVAL }
      if baseGFN != old.baseGFN { change = .move }
      else if flags != old.flags { change = .flagsOnly }
      else { return plan(.unchanged) }
    } else {
      change = .create
    }
    if change == .create || change == .move {
      let end = baseGFN.rawValue + npages
      let overlaps = memslots.values.contains {
        $0.key.asID == key.asID && $0.key != key
          && $0.baseGFN.rawValue < end && baseGFN.rawValue < $0.baseGFN.rawValue + $0.npages
      }
      if overlaps { throw .EEXIST }
    }
    // kvm_arch_prepare_memory_region(): the slot must be mappable by the TDP MMU.
    if change == .create || change == .move {
      guard baseGFN.rawValue + npages - 1 <= TDPMMU.maxGFN.rawValue else { throw .EINVAL }
    }
    return plan(change, fd: dmaBufFD)
  }

  /// Patch 10's sanity checks on a dma-buf offered for a memslot (`kvm_vfio_dmabuf_...`
  /// checks in the RFC): a TD takes only a private VFIO buffer bound to itself; any other VM
  /// refuses private buffers.
  ///
  /// - Throws: `EINVAL` for a buffer not exported by VFIO (the RFC's error path there returns
  ///   an unset value; the model returns `EINVAL`), a TD offered a shared buffer or one bound
  ///   to another VM, or a non-TD offered a private one.
  public func vfioDmaBufSanityCheck(_ buffer: DmaBufDescription) throws(Errno) {
    guard let data = buffer.vfio else { throw .EINVAL }
    if type.hasPrivateMemory {
      guard data.isPrivate, data.vm == id else { throw .EINVAL }
    } else {
      guard !data.isPrivate else { throw .EINVAL }
    }
  }

  /// `kvm_invalidate_memslot()`: a slot about to be deleted or moved is marked
  /// `KVM_MEMSLOT_INVALID` in the active memslots, so a fault that finds it retries; the
  /// caller then waits for SRCU readers and flushes the slot's mappings.
  public mutating func invalidateMemslot(_ key: SlotKey) {
    memslots[key]?.isInvalid = true
  }

  /// Applies a plan (`kvm_set_memslot()`'s create, delete, move or flags-only): the mutating
  /// half of `KVM_SET_USER_MEMORY_REGION2`, with `slots_lock` held by `ctx`. A delete or move
  /// has been invalidated, synchronized and flushed by the caller before this.
  /// - Parameter binding: the new attachment, when the plan asked for a dma-buf.
  /// - Throws: a lock violation when `ctx` does not hold `slots_lock`.
  public mutating func commitSetUserMemoryRegion2(_ plan: MemslotPlan, binding: DmaBufBinding? = nil,
                                                  ctx: ContextID) throws(LockViolation) -> MemslotCommit {
    try slotsLock.assertHeld(by: ctx)
    guard (plan.dmaBufFD == nil) == (binding == nil) else {
      throw LockViolation(lock: slotsLock.name, message: "a dma-buf slot committed without its attachment")
    }
    if plan.change == .unchanged {
      return MemslotCommit(change: .unchanged, detach: [], leftDangling: [])
    }
    var detach: [AttachmentID] = []
    var dangling: [AttachmentID] = []
    if let old = plan.old {
      memslots[old.key] = nil
      if let b = old.dmaBuf {
        if plan.change == .delete {
          bindings[b.attachment] = nil
          detach.append(b.attachment)
        } else {
          // kvm_set_memslot() frees the old slot of a MOVE / FLAGS_ONLY change with kfree()
          // alone: nothing detaches, and the attachment's importer data is now dangling.
          bindings[b.attachment]?.isStale = true
          dangling.append(b.attachment)
        }
      }
    }
    if plan.change != .delete {
      let mem = plan.region
      let slot = Memslot(key: plan.key, baseGFN: GPA(mem.guestPhysAddr).gfn, npages: plan.npages,
                         flags: MemslotFlags(rawValue: mem.flags), userspaceAddr: mem.userspaceAddr,
                         guestMemfdOffset: mem.guestMemfdOffset, dmaBuf: binding)
      memslots[plan.key] = slot
      if let binding {
        bindings[binding.attachment] = SlotBinding(binding: binding, slot: plan.key, gfns: slot.gfns,
                                                   isStale: false)
      }
    }
    return MemslotCommit(change: plan.change, detach: detach, leftDangling: dangling)
  }

  /// `kvm_destroy_vm()`: frees every slot (detaching its dma-buf) and the MMU.
  /// - Returns: attachments to detach, and those left dangling by earlier `rfc-v1` moves,
  ///   which nothing will ever detach.
  public mutating func destroy() -> (detach: [AttachmentID], leaked: [AttachmentID]) {
    let live = bindings.values.filter { !$0.isStale }.map(\.binding.attachment).sorted()
    let stale = bindings.values.filter(\.isStale).map(\.binding.attachment).sorted()
    memslots = [:]
    bindings = [:]
    mmu = TDPMMU()
    return (live, stale)
  }

  // MARK: Invalidation

  /// `kvm_mmu_invalidate_begin()` with `mmu_lock` held for write by `ctx`.
  public mutating func invalidateBegin(_ gfns: Range<GFN>, ctx: ContextID) throws(LockViolation) {
    try mmuLock.assertHeldWrite(by: ctx)
    invalidation.begin(gfns)
  }

  /// Zaps `gfns` from the TDP MMU directly (a non-TD VM; a TD's private MMIO goes through
  /// ``ZapPath``), with `mmu_lock` held for write by `ctx`.
  /// - Returns: how many 4 KiB pages were unmapped.
  @discardableResult
  public mutating func zapRange(_ gfns: Range<GFN>, ctx: ContextID) throws(LockViolation) -> UInt64 {
    try mmuLock.assertHeldWrite(by: ctx)
    let before = mmu.mappedPages
    mmu.zap(gfns)
    return before - mmu.mappedPages
  }

  /// `kvm_mmu_invalidate_end()` with `mmu_lock` held for write by `ctx`.
  public mutating func invalidateEnd(ctx: ContextID) throws(LockViolation) {
    try mmuLock.assertHeldWrite(by: ctx)
    guard invalidation.end() else {
      throw LockViolation(lock: mmuLock.name, message: "mmu_invalidate_in_progress underflow")
    }
  }

  /// Whether a `move_notify` through `attachment` would have slot mappings to zap, and where.
  public func moveNotifyTarget(_ attachment: AttachmentID) -> SlotBinding? { bindings[attachment] }

  /// KVM's `move_notify` for a dma-buf slot of a VM without a TDX module (patch 6), as one
  /// region: take `mmu_lock` for write, invalidate begin over the whole slot, zap it (private
  /// and shared), flush, invalidate end, unlock. Through a stale binding (`rfc-v1`) it zaps
  /// the GFNs the freed slot had.
  /// - Returns: what `ctx` waits for when `mmu_lock` is held (nothing changed), else `nil`.
  public mutating func dmaBufMoveNotify(_ attachment: AttachmentID,
                                        ctx: ContextID) throws(LockViolation) -> Wait? {
    guard let bound = bindings[attachment] else { return nil }
    if let wait = mmuLock.writeWait(for: ctx) { return wait }
    _ = try mmuLock.tryLockWrite(ctx)
    invalidation.begin(bound.gfns)
    mmu.zap(bound.gfns)
    _ = invalidation.end()
    try mmuLock.unlock(ctx)
    return nil
  }

  /// The start of a TD's `move_notify` or slot flush: `mmu_lock` for write and an
  /// invalidation over `gfns`; the returned ``ZapPath`` unmaps the Secure-EPT entries and
  /// ends both.
  /// - Returns: the path, or what `ctx` waits for (nothing changed).
  public mutating func beginSecureZap(_ gfns: Range<GFN>,
                                      ctx: ContextID) throws(LockViolation) -> Result<ZapPath, WaitError> {
    if let wait = mmuLock.writeWait(for: ctx) { return .failure(WaitError(wait: wait)) }
    _ = try mmuLock.tryLockWrite(ctx)
    invalidation.begin(gfns)
    return .success(ZapPath(vm: self, gfns: gfns, ctx: ctx))
  }

  // MARK: Locks the platform's paths take

  /// `mutex_lock(&kvm->slots_lock)`; the caller checked that it is free.
  public mutating func lockSlots(_ ctx: ContextID) throws(LockViolation) {
    guard try slotsLock.tryLock(ctx) else {
      throw LockViolation(lock: slotsLock.name, message: "\(ctx) takes it while \(slotsLock.holder.map(\.description) ?? "someone") holds it")
    }
  }

  /// `mutex_unlock(&kvm->slots_lock)`.
  public mutating func unlockSlots(_ ctx: ContextID) throws(LockViolation) { try slotsLock.unlock(ctx) }

  /// `kvm_arch_flush_shadow_memslot()` for a VM without a TDX module, as one region: `mmu_lock`
  /// for write, zap the slot's GFNs, unlock. The caller checked that `mmu_lock` is free.
  public mutating func flushShadowMemslot(_ gfns: Range<GFN>, ctx: ContextID) throws(LockViolation) {
    guard try mmuLock.tryLockWrite(ctx) else {
      throw LockViolation(lock: mmuLock.name, message: "\(ctx) takes it for write while it is held")
    }
    mmu.zap(gfns)
    try mmuLock.unlock(ctx)
  }

  /// Subtracts `base` from `mmu_invalidate_seq` (see ``MMUInvalidation/rebase(by:)``).
  public mutating func rebaseInvalidationSeq(by base: UInt64) { invalidation.rebase(by: base) }

  // MARK: vCPU kicks

  /// `kvm_make_all_cpus_request(kvm, KVM_REQ_OUTSIDE_GUEST_MODE)` with `KVM_REQUEST_WAIT`:
  /// the request goes to every vCPU in `inGuestMode`, and the caller waits until each has
  /// answered the IPI by leaving guest mode (``answerKick(_:)``).
  public mutating func requestOutsideGuestMode(_ inGuestMode: [UInt32]) {
    for vcpu in inGuestMode { pendingKicks.insert(vcpu) }
  }

  /// The IPI reached `vcpu`, or it left guest mode for another reason first.
  public mutating func answerKick(_ vcpu: UInt32) { pendingKicks.remove(vcpu) }
}

/// A wait carried as an error value, for APIs that either begin a region or must wait.
public struct WaitError: Error, Hashable, Sendable {
  public let wait: Wait
  public init(wait: Wait) { self.wait = wait }
}
