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
  /// `kvm->vm_bugged`.
  public internal(set) var isDead = false
  /// Host RAM, as PFN ranges: a PFN outside all of them is MMIO (``isMMIOPFN(_:)``).
  public let ramPFNs: [Range<PFN>]
  /// Bumped by every committed memslot change; a plan made before one is refused.
  public private(set) var memslotGeneration: UInt64 = 0

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

  /// The slot containing `gfn` in address space 0 (`gfn_to_memslot()`).
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
      MemslotPlan(key: key, change: change, region: mem, old: old, dmaBufFD: fd,
                  generation: memslotGeneration)
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

  /// Applies a plan (`kvm_set_memslot()`): the mutating half of `KVM_SET_USER_MEMORY_REGION2`.
  ///
  /// A delete or move first zaps the old slot's GFNs inside an invalidation (so a fault in
  /// flight on them retries); for a TD the caller runs the private-MMIO ``ZapPath`` over the
  /// slot before committing, and this zap then only clears what is left of the mirror.
  /// - Parameter binding: the new attachment, when the plan asked for a dma-buf.
  /// - Throws: `EIO` on a dead VM; `EAGAIN` when the memslots changed since the plan was made
  ///   (the kernel holds `slots_lock` across the whole ioctl, so a caller that does the same
  ///   never sees it); `EINVAL` when a dma-buf slot is committed without a binding.
  public mutating func commitSetUserMemoryRegion2(_ plan: MemslotPlan,
                                                  binding: DmaBufBinding? = nil) throws(Errno) -> MemslotCommit {
    guard !isDead else { throw .EIO }
    guard plan.generation == memslotGeneration else { throw .EAGAIN }
    guard (plan.dmaBufFD == nil) == (binding == nil) else { throw .EINVAL }
    if plan.change == .unchanged {
      return MemslotCommit(change: .unchanged, detach: [], leftDangling: [], zapped: TDPMMU.Zapped())
    }
    var detach: [AttachmentID] = []
    var dangling: [AttachmentID] = []
    var zapped = TDPMMU.Zapped()
    if let old = plan.old {
      if plan.change == .delete || plan.change == .move {
        invalidation.begin(old.gfns)
        zapped = mmu.zap(old.gfns)
        invalidation.end()
      }
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
    memslotGeneration &+= 1
    return MemslotCommit(change: plan.change, detach: detach, leftDangling: dangling, zapped: zapped)
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
  @discardableResult
  public mutating func zapRange(_ gfns: Range<GFN>, ctx: ContextID) throws(LockViolation) -> TDPMMU.Zapped {
    try mmuLock.assertHeldWrite(by: ctx)
    return mmu.zap(gfns)
  }

  /// `kvm_mmu_invalidate_end()` with `mmu_lock` held for write by `ctx`.
  public mutating func invalidateEnd(ctx: ContextID) throws(LockViolation) {
    try mmuLock.assertHeldWrite(by: ctx)
    guard invalidation.end() else {
      throw LockViolation(lock: mmuLock.name, message: "mmu_invalidate_in_progress underflow")
    }
  }

  /// KVM's `move_notify` for a dma-buf slot (patch 6): take `mmu_lock` for write, invalidate
  /// begin over the whole slot, zap it (private and shared), invalidate end, unlock.
  ///
  /// For a TD this returns a ``ZapPath`` that owns the rest of the region: the caller drives
  /// it (its SEAMCALLs) and it ends the invalidation and drops `mmu_lock` when it completes.
  /// Through a stale binding (`rfc-v1`) it zaps the GFNs the freed slot had.
  /// - Returns: `nil` when the work is done, or the TD's zap path; `.blocked` if `mmu_lock`
  ///   is held by another context (try again later).
  /// - Throws: a lock violation (e.g. `ctx` already holds `mmu_lock`).
  public mutating func dmaBufMoveNotify(_ attachment: AttachmentID,
                                        ctx: ContextID) throws(LockViolation) -> MoveNotifyResult {
    guard let bound = bindings[attachment] else { return .notBound }
    guard try mmuLock.tryLockWrite(ctx) else { return .blocked }
    let gfns = bound.gfns
    invalidation.begin(gfns)
    if type == .tdx {
      return .secureZap(ZapPath(vm: self, gfns: gfns, ctx: ctx))
    }
    mmu.zap(gfns)
    _ = invalidation.end()
    try mmuLock.unlock(ctx)
    return .done(staleSlot: bound.isStale)
  }
}

/// What ``VirtualMachine/dmaBufMoveNotify(_:ctx:)`` did.
public enum MoveNotifyResult: Hashable, Sendable {
  /// The slot's mappings are gone and the invalidation ended. `staleSlot`: the attachment's
  /// slot had been freed (the `rfc-v1` move bug), so the zap used freed memory.
  case done(staleSlot: Bool)
  /// A TD: drive this path to unmap the Secure EPT entries; it ends the invalidation.
  case secureZap(ZapPath)
  /// `mmu_lock` is held by another context; nothing changed.
  case blocked
  /// KVM holds no such attachment; nothing changed.
  case notBound
}
