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
///
/// A value whose fields live behind one reference (``VMFields`` in a ``VMStorage``): copying
/// a VM, or reading one out of the host's dictionary, costs one reference count whatever the
/// VM holds, and the fields are copied once, on the first write after a copy (each field's
/// `_modify` makes the storage unique first). Equality and hashing are the fields'.
public struct VirtualMachine: Hashable, Sendable {
  /// `KVM_MAX_VCPU_IDS` on x86 without `CONFIG_MAXSMP`: `KVM_MAX_VCPUS` (1024) times
  /// `KVM_VCPU_ID_RATIO` (4).
  public static let maxVCPUIDs: UInt32 = 4096

  var storage: VMStorageRef
  /// The fields, in place. Valid while this VM holds its storage.
  @inline(__always) var fields: UnsafeMutablePointer<VMFields> { storage.object.fields }

  /// Makes the storage uniquely referenced before a write: a VM shared with a copy gets its
  /// own fields.
  @inline(__always) mutating func makeUnique() {
    if !isKnownUniquelyReferenced(&storage.object) { storage = VMStorageRef(copying: storage.object) }
  }

  public var id: VMID { fields.pointee.id }
  public var type: VMType { fields.pointee.type }
  public private(set) var vcpus: TreeSet<UInt32> {
    get { fields.pointee.vcpus }
    _modify { makeUnique(); yield &fields.pointee.vcpus }
  }
  public private(set) var memslots: TreeDictionary<SlotKey, Memslot> {
    get { fields.pointee.memslots }
    _modify {
      makeUnique()
      // The lookup index follows every change of the slots, also an aborted one.
      defer { fields.pointee.slotIndex = MemslotIndex(fields.pointee.memslots) }
      yield &fields.pointee.memslots
    }
  }
  /// Every dma-buf attachment KVM holds, live or dangling.
  public private(set) var bindings: TreeDictionary<AttachmentID, SlotBinding> {
    get { fields.pointee.bindings }
    _modify { makeUnique(); yield &fields.pointee.bindings }
  }
  public internal(set) var mmu: TDPMMU {
    get { fields.pointee.mmu }
    _modify { makeUnique(); yield &fields.pointee.mmu }
  }
  public internal(set) var invalidation: MMUInvalidation {
    get { fields.pointee.invalidation }
    _modify { makeUnique(); yield &fields.pointee.invalidation }
  }
  /// `kvm->mmu_lock` (an rwlock on x86: faults read, invalidations write).
  public internal(set) var mmuLock: KernelRWSemaphore {
    get { fields.pointee.mmuLock }
    _modify { makeUnique(); yield &fields.pointee.mmuLock }
  }
  /// `kvm->slots_lock`: held across a whole memslot update.
  public internal(set) var slotsLock: KernelMutex {
    get { fields.pointee.slotsLock }
    _modify { makeUnique(); yield &fields.pointee.slotsLock }
  }
  /// `kvm->srcu`: vCPUs read memslots inside it; memslot updates synchronize on it.
  public internal(set) var srcu: SRCUState {
    get { fields.pointee.srcu }
    _modify { makeUnique(); yield &fields.pointee.srcu }
  }
  /// vCPUs with `KVM_REQ_OUTSIDE_GUEST_MODE` pending whose IPI has not been answered: each
  /// must leave guest mode before the kicker (`kvm_make_all_cpus_request()` waits) goes on.
  public internal(set) var pendingKicks: TreeSet<UInt32> {
    get { fields.pointee.pendingKicks }
    _modify { makeUnique(); yield &fields.pointee.pendingKicks }
  }
  /// Mirror SPTEs whose Secure-EPT entries a zap blocked and left mapped, because their
  /// interface was still trusted: not present to the guest or to a fault, and unmapped by a
  /// later zap (the TDX mirror SPTE between BLOCK and UNMAP).
  public internal(set) var blockedMirror: TreeSet<GFN> {
    get { fields.pointee.blockedMirror }
    _modify { makeUnique(); yield &fields.pointee.blockedMirror }
  }
  /// `kvm->vm_bugged`.
  public internal(set) var isDead: Bool {
    get { fields.pointee.isDead }
    _modify { makeUnique(); yield &fields.pointee.isDead }
  }
  /// Host RAM, as PFN ranges: a PFN outside all of them is MMIO (``isMMIOPFN(_:)``).
  public var ramPFNs: [Range<PFN>] { fields.pointee.ramPFNs }
  /// A host's RAM as firmware lays it out around the 32-bit PCI hole: below 3 GiB, and from
  /// 4 GiB to 16 GiB. The hole (0xc0000000-0xffffffff) holds 32-bit BARs, which are MMIO; the
  /// 64-bit BARs start at 256 GiB.
  public static let defaultRAMPFNs: [Range<PFN>] = [PFN(0) ..< PFN(0xc0000), PFN(0x100000) ..< PFN(0x400000)]
  /// What the host allows this VM: address spaces, the largest GFN, a TD's shared bit.
  public var limits: VMLimits { fields.pointee.limits }
  /// `kvm->mem_attr_array` (`KVM_SET_MEMORY_ATTRIBUTES`).
  public internal(set) var memoryAttributes: MemoryAttributeMap {
    get { fields.pointee.memoryAttributes }
    _modify { makeUnique(); yield &fields.pointee.memoryAttributes }
  }
  /// The guest_memfd files created on this VM (`KVM_CREATE_GUEST_MEMFD`), open or not yet
  /// released.
  public internal(set) var guestMemfds: TreeDictionary<GuestMemfdID, GuestMemfd> {
    get { fields.pointee.guestMemfds }
    _modify { makeUnique(); yield &fields.pointee.guestMemfds }
  }
  /// A TD's shared (direct) root: mappings of GPAs with the shared bit, which never go through
  /// the TDX module. ``mmu`` is the mirror of the Secure EPT for a TD, the only root otherwise.
  public internal(set) var sharedMMU: TDPMMU {
    get { fields.pointee.sharedMMU }
    _modify { makeUnique(); yield &fields.pointee.sharedMMU }
  }
  /// What each vCPU's `struct kvm_run` holds after a `KVM_RUN` that failed with a memory-fault
  /// exit (`exit_reason = KVM_EXIT_MEMORY_FAULT`), by vCPU id; cleared by the next entry.
  public internal(set) var memoryFaultExits: TreeDictionary<UInt32, MemoryFaultExit> {
    get { fields.pointee.memoryFaultExits }
    _modify { makeUnique(); yield &fields.pointee.memoryFaultExits }
  }

  public init(id: VMID, type: VMType, ramPFNs: [Range<PFN>] = VirtualMachine.defaultRAMPFNs,
              limits: VMLimits? = nil) {
    storage = VMStorageRef(VMFields(id: id, type: type, ramPFNs: ramPFNs, limits: limits ?? .standard(type)))
  }

  /// Compares the fields, at once when the two VMs share their storage.
  public static func == (a: VirtualMachine, b: VirtualMachine) -> Bool {
    a.storage.object === b.storage.object || a.fields.pointee == b.fields.pointee
  }

  public func hash(into hasher: inout Hasher) { fields.pointee.hash(into: &hasher) }

  /// Whether two VMs share their storage (no write since one was copied from the other).
  public func sharesStorage(with other: VirtualMachine) -> Bool { storage.object === other.storage.object }

  /// `kvm_is_private_gpa()`: a TD's GPA without the shared bit, or a software-protected VM's
  /// GFN whose attributes say private (`kvm_mmu_page_fault()` sets `PFERR_PRIVATE_ACCESS` from
  /// the attributes for VMs without hardware protection). Always false for a default VM.
  public func isPrivateAccess(_ gpa: GPA) -> Bool {
    switch type {
    case .default: false
    case .swProtected: memoryAttributes.isPrivate(gpa.gfn)
    case .tdx: gpa.gfn.rawValue & limits.gfnDirectBits == 0
    }
  }

  /// The GFN a fault works on: `gpa_to_gfn(gpa) & ~kvm_gfn_direct_bits(kvm)`.
  public func faultGFN(_ gpa: GPA) -> GFN { GFN(gpa.gfn.rawValue & ~limits.gfnDirectBits) }

  /// `KVM_RUN` failed with a memory-fault exit on `vcpu`: what `struct kvm_run` now says.
  public mutating func recordMemoryFault(_ exit: MemoryFaultExit, vcpu: UInt32) { memoryFaultExits[vcpu] = exit }

  /// `KVM_RUN` entered the guest again on `vcpu`: `kvm_run` no longer holds the old exit.
  public mutating func clearMemoryFault(vcpu: UInt32) {
    // Read first: a VM with nothing to clear is not written (a write would unshare it).
    guard fields.pointee.memoryFaultExits[vcpu] != nil else { return }
    memoryFaultExits[vcpu] = nil
  }

  /// `kvm_is_mmio_pfn()` (patch 11): a PFN with no `struct page` of RAM behind it.
  public func isMMIOPFN(_ pfn: PFN) -> Bool { !ramPFNs.contains { $0.contains(pfn) } }

  /// `KVM_BUG_ON()`: the VM is dead from now on.
  public mutating func markDead() { isDead = true }

  // MARK: vCPUs

  /// `KVM_CREATE_VCPU` (`kvm_vm_ioctl_create_vcpu()` in `virt/kvm/kvm_main.c`): a dead VM
  /// answers `EIO` before the ioctl runs (`kvm_vm_ioctl()`: `if (kvm->vm_dead) return -EIO`);
  /// `id >= KVM_MAX_VCPU_IDS` -> `EINVAL`; an id in use -> `EEXIST` (`kvm_get_vcpu_by_id()`,
  /// checked under `kvm->lock`).
  public mutating func createVCPU(_ vcpuID: UInt32) throws(Errno) {
    guard !isDead else { throw Errno.EIO.because("kvm_vm_ioctl", "kvm->vm_dead") }
    guard vcpuID < VirtualMachine.maxVCPUIDs else {
      throw Errno.EINVAL.because("kvm_vm_ioctl_create_vcpu", "id \(vcpuID) >= KVM_MAX_VCPU_IDS")
    }
    guard !vcpus.contains(vcpuID) else {
      throw Errno.EEXIST.because("kvm_vm_ioctl_create_vcpu", "kvm_get_vcpu_by_id(kvm, \(vcpuID)) exists")
    }
    vcpus.insert(vcpuID)
  }

  // MARK: Memslots

  /// The slot containing `gfn` in address space `asID` (`gfn_to_memslot()`, which searches
  /// the address space's GFN tree); a slot being deleted or moved is returned with
  /// ``Memslot/isInvalid`` set.
  /// - Complexity: O(log slots), a binary search of the slots by first GFN.
  public func memslot(containing gfn: GFN, asID: UInt16 = 0) -> Memslot? {
    fields.pointee.slotIndex.key(containing: gfn, asID: asID).flatMap { memslots[$0] }
  }

  /// `check_memory_region_flags()` (`virt/kvm/kvm_main.c`), as patch 6 extends it:
  /// 1. `private_flag & (private_flag - 1)`: GUEST_MEMFD and VFIO_DMABUF together -> `EINVAL`;
  /// 2. GUEST_MEMFD is valid `if (IS_ENABLED(CONFIG_KVM_GUEST_MEMFD))`, i.e. for every VM of
  ///    an x86-64 kernel since 6.18 ("KVM: x86: Enable KVM_GUEST_MEMFD for all 64-bit builds";
  ///    `reviewed`), and only `if (kvm_arch_has_private_mem(kvm))` in the RFC's base (`rfcV1`);
  ///    VFIO_DMABUF is valid for private-memory VMs (`rfcV1`), for every VM in `reviewed` (the
  ///    model's proposal after the review's "for every VM");
  /// 3. no LOG_DIRTY_PAGES with a private flag ("Dirty logging private memory is not
  ///    currently supported");
  /// 4. READONLY only `if (kvm_arch_has_readonly_mem(kvm) && !private_flag)`;
  /// 5. `mem->flags & ~valid_flags` -> `EINVAL`.
  static func checkFlags(_ flags: MemslotFlags, type: VMType, variant: Variant) throws(Errno) {
    let privateFlags = flags.intersection([.guestMemfd, .vfioDmaBuf])
    if privateFlags == [.guestMemfd, .vfioDmaBuf] {
      throw Errno.EINVAL.because("check_memory_region_flags", "private flags are mutually exclusive")
    }
    var valid: MemslotFlags = [.logDirtyPages]
    if type.hasPrivateMemory { valid.formUnion(privateFlags) }
    if variant == .reviewed { valid.formUnion([.vfioDmaBuf, .guestMemfd]) }
    if !privateFlags.isEmpty { valid.remove(.logDirtyPages) }
    if type.hasReadonlyMemory && privateFlags.isEmpty { valid.insert(.readonly) }
    guard flags.rawValue & ~valid.rawValue == 0 else {
      throw Errno.EINVAL.because("check_memory_region_flags",
                                 "mem->flags 0x\(String(flags.rawValue, radix: 16)) & ~valid_flags 0x\(String(valid.rawValue, radix: 16))")
    }
  }

  /// `KVM_SET_USER_MEMORY_REGION_V1_FLAGS`: what the old ioctl takes (`kvm_vm_ioctl()`).
  public static let v1Flags: MemslotFlags = [.logDirtyPages, .readonly]

  /// The checks of `KVM_SET_USER_MEMORY_REGION2` that come before the memslot is bound, in the
  /// kernel's order (`kvm_vm_ioctl()`, `kvm_vm_ioctl_set_memory_region()` then
  /// `__kvm_set_memory_region()`), and the classification of `kvm_set_memslot()`. Changes
  /// nothing. Every refusal names the function and check, e.g.
  /// `__kvm_set_memory_region: overlaps slot 2 [0x80000000, +0x200000)`.
  ///
  /// 1. (dead VM) `EIO`; `KVM_SET_USER_MEMORY_REGION` with a flag outside
  ///    `KVM_SET_USER_MEMORY_REGION_V1_FLAGS` -> `EINVAL` (its struct has no `guest_memfd`
  ///    fields: they read as 0); `(u16)mem->slot >= KVM_USER_MEM_SLOTS` -> `EINVAL`;
  /// 2. ``checkFlags(_:type:variant:)`` (runs on delete too);
  /// 3. `memory_size` not page aligned; GPA not page aligned; `userspace_addr` not page aligned
  ///    or `!access_ok()` -> `EINVAL`;
  /// 4. GUEST_MEMFD (and in `reviewed` VFIO_DMABUF, a slice): offset unaligned or `offset +
  ///    size` wrapping -> `EINVAL`;
  /// 5. `as_id >= kvm_arch_nr_memslot_as_ids(kvm)` or `id` out of range; GPA + size wrapping;
  ///    more than `KVM_MEM_MAX_NR_PAGES` pages -> `EINVAL`;
  /// 6. delete (`memory_size == 0`): no such slot -> `EINVAL`; nothing else runs;
  /// 7. modify: "Private memslots are immutable" (GUEST_MEMFD in the new flags; since "KVM:
  ///    Disallow toggling KVM_MEM_GUEST_MEMFD on an existing memslot" (6.19-rc1, 6.18.y) in the
  ///    old ones too, `reviewed`; `reviewed` also VFIO_DMABUF, old or new); `userspace_addr`,
  ///    size or READONLY changed -> `EINVAL`; identical -> done;
  /// 8. create or move: overlap -> `EEXIST`;
  /// 9. `rfcV1` only, patch 6 in the bind branch: VFIO_DMABUF with `guest_memfd_offset != 0`
  ///    -> `EINVAL` (after the overlap check);
  /// 10. `kvm_arch_prepare_memory_region()` (``checkArchPrepare(_:)``): the last GFN past
  ///    `kvm_mmu_max_gfn()`, or (a TD) with the shared bit (`kvm_is_gfn_alias()`) -> `EINVAL`.
  ///    The kernel runs it after binding, so it runs here only for a slot with nothing to
  ///    bind: a guest_memfd slot's is ``checkGuestMemfdBind(_:file:)``'s last check (an fd
  ///    that is not open is `EBADF` first, as 6.18 answers); a dma-buf slot's comes after
  ///    `kvm_vfio_dmabuf_bind()`'s checks and before its attach takes effect (the platform's
  ///    bind: RFC patch 6's `__kvm_set_memory_region()` calls `kvm_vfio_dmabuf_bind()`, then
  ///    `kvm_set_memslot()` -> `kvm_arch_prepare_memory_region()`).
  public func prepareSetUserMemoryRegion2(_ mem: UserspaceMemoryRegion2, variant: Variant,
                                          ioctl: MemoryRegionIoctl = .region2) throws(Errno) -> MemslotPlan {
    let setRegion: StaticString = "__kvm_set_memory_region"
    guard !isDead else { throw Errno.EIO.because("kvm_vm_ioctl", "kvm->vm_dead") }
    var mem = mem
    if ioctl == .region {
      guard mem.flags & ~VirtualMachine.v1Flags.rawValue == 0 else {
        throw Errno.EINVAL.because("kvm_vm_ioctl", "KVM_SET_USER_MEMORY_REGION: mem.flags 0x\(String(mem.flags, radix: 16)) & ~KVM_SET_USER_MEMORY_REGION_V1_FLAGS")
      }
      mem.guestMemfdOffset = 0
      mem.guestMemfd = 0
    }
    guard mem.id < MemslotLimits.userMemSlots else {
      throw Errno.EINVAL.because("kvm_vm_ioctl_set_memory_region", "(u16)mem->slot \(mem.id) >= KVM_USER_MEM_SLOTS")
    }
    let flags = MemslotFlags(rawValue: mem.flags)
    try VirtualMachine.checkFlags(flags, type: type, variant: variant)
    guard mem.memorySize.isPageAligned else { throw Errno.EINVAL.because(setRegion, "memory_size not page aligned") }
    guard mem.guestPhysAddr.isPageAligned else { throw Errno.EINVAL.because(setRegion, "guest_phys_addr not page aligned") }
    let (uEnd, uOverflow) = mem.userspaceAddr.addingReportingOverflow(mem.memorySize)
    guard mem.userspaceAddr.isPageAligned, !uOverflow, uEnd <= MemslotLimits.taskSizeMax else {
      throw Errno.EINVAL.because(setRegion, "userspace_addr not page aligned or !access_ok")
    }
    if flags.contains(.guestMemfd) || (flags.contains(.vfioDmaBuf) && variant == .reviewed) {
      let (_, overflow) = mem.guestMemfdOffset.addingReportingOverflow(mem.memorySize)
      guard mem.guestMemfdOffset.isPageAligned, !overflow else {
        throw Errno.EINVAL.because(setRegion, "guest_memfd_offset not page aligned or offset + size wraps")
      }
    }
    guard mem.asID < limits.addressSpaces else {
      throw Errno.EINVAL.because(setRegion, "as_id \(mem.asID) >= kvm_arch_nr_memslot_as_ids (\(limits.addressSpaces))")
    }
    let (_, gpaOverflow) = mem.guestPhysAddr.addingReportingOverflow(mem.memorySize)
    guard !gpaOverflow else { throw Errno.EINVAL.because(setRegion, "guest_phys_addr + memory_size wraps") }
    guard mem.memorySize.pages <= MemslotLimits.maxPages else {
      throw Errno.EINVAL.because(setRegion, "memory_size >> PAGE_SHIFT > KVM_MEM_MAX_NR_PAGES")
    }

    let key = SlotKey(asID: mem.asID, id: mem.id)
    let old = memslots[key]
    let baseGFN = GPA(mem.guestPhysAddr).gfn
    let npages = mem.memorySize.pages
    func plan(_ change: MemslotChange, fd: FD? = nil) -> MemslotPlan {
      MemslotPlan(key: key, change: change, region: mem, old: old, dmaBufFD: fd)
    }
    let dmaBufFD: FD? = flags.contains(.vfioDmaBuf) ? FD(Int32(bitPattern: mem.guestMemfd)) : nil

    if mem.memorySize == 0 {
      guard old != nil else { throw Errno.EINVAL.because(setRegion, "delete of slot \(mem.id), which does not exist") }
      return plan(.delete)
    }
    let change: MemslotChange
    if let old {
      // "Private memslots are immutable": the posted series tests only GUEST_MEMFD in the new
      // flags, so in rfc-v1 a dma-buf slot can be moved or re-flagged and GUEST_MEMFD dropped;
      // 6.18.y refuses the toggle too, and the review forbids changing a dma-buf slot.
      if flags.contains(.guestMemfd) {
        throw Errno.EINVAL.because(setRegion, "Private memslots are immutable, they can only be deleted")
      }
      if variant == .reviewed && old.flags.contains(.guestMemfd) {
        throw Errno.EINVAL.because(setRegion, "(mem->flags ^ old->flags) & KVM_MEM_GUEST_MEMFD: toggling KVM_MEM_GUEST_MEMFD on an existing memslot")
      }
      if variant == .reviewed && (flags.contains(.vfioDmaBuf) || old.flags.contains(.vfioDmaBuf)) {
        throw Errno.EINVAL.because(setRegion, "model (reviewed): dma-buf memslots are immutable, they can only be deleted")
      }
      guard mem.userspaceAddr == old.userspaceAddr, npages == old.npages,
            !flags.symmetricDifference(old.flags).contains(.readonly) else {
        throw Errno.EINVAL.because(setRegion, "modify changes userspace_addr, npages or KVM_MEM_READONLY")
      }
      if baseGFN != old.baseGFN { change = .move }
      else if flags != old.flags { change = .flagsOnly }
      else { return plan(.unchanged) }
    } else {
      change = .create
    }
    if change == .create || change == .move {
      let end = baseGFN.rawValue + npages
      if let other = memslots.values.first(where: {
        $0.key.asID == key.asID && $0.key != key
          && $0.baseGFN.rawValue < end && baseGFN.rawValue < $0.baseGFN.rawValue + $0.npages
      }) {
        throw Errno.EEXIST.because(setRegion, "overlaps slot \(other.key.id) [\(other.baseGFN.gpa), +0x\(String(other.npages << pageShift, radix: 16)))")
      }
    }
    // Patch 6: the offset check sits in the bind branch, after the overlap check.
    if flags.contains(.vfioDmaBuf) && variant == .rfcV1 && mem.guestMemfdOffset != 0 {
      throw Errno.EINVAL.because(setRegion, "KVM_MEM_VFIO_DMABUF with guest_memfd_offset != 0")
    }
    var result = plan(change, fd: dmaBufFD)
    if change == .create && flags.contains(.guestMemfd) {
      result.gmemFD = FD(Int32(bitPattern: mem.guestMemfd))
    }
    // kvm_arch_prepare_memory_region() runs in kvm_set_memslot(), after kvm_gmem_bind() and
    // (RFC patch 6) kvm_vfio_dmabuf_bind(): a guest_memfd slot's is checkGuestMemfdBind()'s
    // last check (an unopened fd is EBADF before it, as the fuzz oracle found against 6.18); a
    // dma-buf slot's runs in the platform's bind, after the bind's checks (dma_buf_get EBADF,
    // the size, the sanity checks, the attach's) and before the attach.
    if result.gmemFD == nil && result.dmaBufFD == nil { try checkArchPrepare(result) }
    return result
  }

  /// `kvm_arch_prepare_memory_region()` (`arch/x86/kvm/x86.c`) for a create or move: the slot's
  /// last GFN past `kvm_mmu_max_gfn()`, or (a TD) reaching the shared bit (`kvm_is_gfn_alias()`),
  /// -> `EINVAL`.
  public func checkArchPrepare(_ plan: MemslotPlan) throws(Errno) {
    guard plan.change == .create || plan.change == .move else { return }
    let last = GPA(plan.region.guestPhysAddr).gfn.rawValue + plan.npages - 1
    guard last <= limits.maxGFN.rawValue else {
      throw Errno.EINVAL.because("kvm_arch_prepare_memory_region", "last GFN 0x\(String(last, radix: 16)) > kvm_mmu_max_gfn() 0x\(String(limits.maxGFN.rawValue, radix: 16))")
    }
    guard last & limits.gfnDirectBits == 0 else {
      throw Errno.EINVAL.because("kvm_arch_prepare_memory_region", "kvm_is_gfn_alias(): the slot reaches the TD's shared bit (GPA 0x\(String(limits.gfnDirectBits << pageShift, radix: 16)))")
    }
  }

  /// `kvm_gmem_bind()` (`virt/kvm/guest_memfd.c`) for a new GUEST_MEMFD slot, after `fget()`
  /// found an open file (a closed fd is `EBADF` before this):
  /// 1. `file->f_op != &kvm_gmem_fops` -> `EINVAL`;
  /// 2. `f->kvm != kvm` -> `EINVAL`;
  /// 3. `offset < 0 || !PAGE_ALIGNED(offset) || offset + size > i_size_read(inode)` -> `EINVAL`;
  /// 4. a binding already in `[start, end)` of the file (`xa_find(&f->bindings)`) -> `EINVAL`;
  /// then, as `kvm_set_memslot()` runs it next, ``checkArchPrepare(_:)``.
  /// Changes nothing; the commit records the binding.
  public func checkGuestMemfdBind(_ plan: MemslotPlan, file: GuestMemfdLookup) throws(Errno) -> GuestMemfdSlotBinding {
    let bind: StaticString = "kvm_gmem_bind"
    guard case .guestMemfd(let gmem) = file else {
      throw Errno.EINVAL.because(bind, "file->f_op != &kvm_gmem_fops: not a guest_memfd")
    }
    guard gmem.vm == id else { throw Errno.EINVAL.because(bind, "f->kvm != kvm: the guest_memfd belongs to vm\(gmem.vm.rawValue)") }
    let offset = plan.region.guestMemfdOffset
    let (end, overflow) = offset.addingReportingOverflow(plan.region.memorySize)
    guard offset.isPageAligned, !overflow, end <= gmem.size else {
      throw Errno.EINVAL.because(bind, "offset 0x\(String(offset, radix: 16)) + size 0x\(String(plan.region.memorySize, radix: 16)) > i_size_read(inode) 0x\(String(gmem.size, radix: 16))")
    }
    let pages = offset.pages ..< end.pages
    if let other = gmem.bindings.first(where: { $0.pages.overlaps(pages) }) {
      throw Errno.EINVAL.because(bind, "xa_find(&f->bindings): pages [0x\(String(pages.lowerBound, radix: 16)), 0x\(String(pages.upperBound, radix: 16))) of the file are bound to \(other.slot)")
    }
    // Then kvm_set_memslot() -> kvm_arch_prepare_memory_region().
    try checkArchPrepare(plan)
    return GuestMemfdSlotBinding(file: gmem.id, pgoff: pages.lowerBound, gmemOnly: gmem.flags.contains(.mmap))
  }

  /// Patch 10's sanity checks in `kvm_vfio_dmabuf_bind()` (`virt/kvm/vfio_dmabuf.c`), which
  /// run after the size check (``MemslotPlan/checkDmaBuf(_:variant:)``):
  /// `kvm_vfio_dma_buf_get_data()` -> `vfio_dma_buf_get_data()` answers `ERR_PTR(-EINVAL)` for
  /// a buffer whose ops are not VFIO's, and the RFC then jumps to its error exit without
  /// setting `ret` (it returns an unset value; the model answers `EINVAL`); then
  /// `!data->is_private || data->kvm != kvm` -> `EINVAL`. A VM without private memory never
  /// gets here in `rfcV1` (the flag is invalid for it); in `reviewed` it takes shared buffers
  /// only (the model's proposal).
  public func vfioDmaBufSanityCheck(_ buffer: DmaBufDescription) throws(Errno) {
    let bind: StaticString = "kvm_vfio_dmabuf_bind"
    guard let data = buffer.vfio else {
      throw Errno.EINVAL.because(bind, "vfio_dma_buf_get_data: not a VFIO dma-buf (the RFC returns an unset ret here)")
    }
    if type.hasPrivateMemory {
      guard data.isPrivate else { throw Errno.EINVAL.because(bind, "!data->is_private") }
      guard data.vm == id else { throw Errno.EINVAL.because(bind, "data->kvm != kvm") }
    } else {
      guard !data.isPrivate else { throw Errno.EINVAL.because(bind, "model (reviewed): a private buffer for a VM without private memory") }
    }
  }

  /// `kvm_invalidate_memslot()`: a slot about to be deleted or moved is marked
  /// `KVM_MEMSLOT_INVALID` in the active memslots, so a fault that finds it retries; the
  /// caller then waits for SRCU readers and flushes the slot's mappings.
  public mutating func invalidateMemslot(_ key: SlotKey) {
    memslots[key]?.isInvalid = true
  }

  /// `kvm_activate_memslot(kvm, invalid_slot, old)`: an invalidated slot whose update failed
  /// is the valid slot again.
  public mutating func revalidateMemslot(_ key: SlotKey) {
    memslots[key]?.isInvalid = false
  }

  /// Applies a plan (`kvm_set_memslot()`'s create, delete, move or flags-only): the mutating
  /// half of `KVM_SET_USER_MEMORY_REGION2`, with `slots_lock` held by `ctx`. A delete or move
  /// has been invalidated, synchronized and flushed by the caller before this.
  /// - Parameter binding: the new attachment, when the plan asked for a dma-buf.
  /// - Throws: a lock violation when `ctx` does not hold `slots_lock`.
  public mutating func commitSetUserMemoryRegion2(_ plan: MemslotPlan, binding: DmaBufBinding? = nil,
                                                  gmem: GuestMemfdSlotBinding? = nil,
                                                  ctx: ContextID) throws(LockViolation) -> MemslotCommit {
    try slotsLock.assertHeld(by: ctx)
    guard (plan.dmaBufFD == nil) == (binding == nil), (plan.gmemFD == nil) == (gmem == nil) else {
      throw LockViolation(lock: slotsLock.name, message: "a dma-buf or guest_memfd slot committed without its binding")
    }
    if plan.change == .unchanged {
      return MemslotCommit(change: .unchanged, detach: [], leftDangling: [])
    }
    var detach: [AttachmentID] = []
    var dangling: [AttachmentID] = []
    if let old = plan.old {
      memslots[old.key] = nil
      // kvm_gmem_unbind(): a deleted guest_memfd slot leaves its file's bindings.
      if plan.change == .delete, let file = old.gmemFile {
        guestMemfds[file]?.bindings.removeAll { $0.slot == old.key }
      }
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
      var slot = Memslot(key: plan.key, baseGFN: GPA(mem.guestPhysAddr).gfn, npages: plan.npages,
                         flags: MemslotFlags(rawValue: mem.flags), userspaceAddr: mem.userspaceAddr,
                         guestMemfdOffset: mem.guestMemfdOffset, dmaBuf: binding)
      if let gmem {
        // kvm_gmem_bind(): slot->gmem.file, slot->gmem.pgoff, KVM_MEMSLOT_GMEM_ONLY, and the
        // file's bindings over [pgoff, pgoff + npages).
        slot.gmemFile = gmem.file
        slot.isGmemOnly = gmem.gmemOnly
        guestMemfds[gmem.file]?.bindings.append(
          GuestMemfdBinding(pages: gmem.pgoff ..< gmem.pgoff + plan.npages, slot: plan.key))
      }
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
    sharedMMU = TDPMMU()
    guestMemfds = [:]
    blockedMirror = []
    return (live, stale)
  }

  // MARK: guest_memfd

  /// `KVM_CREATE_GUEST_MEMFD`'s checks (`kvm_gmem_create()`, `virt/kvm/guest_memfd.c`), in
  /// order, after `kvm_vm_ioctl()`'s dead-VM check:
  /// 1. `flags & ~kvm_gmem_get_supported_flags(kvm)` -> `EINVAL`;
  /// 2. `size <= 0 || !PAGE_ALIGNED(size)` (`loff_t`: a size past `LLONG_MAX` is negative) ->
  ///    `EINVAL`.
  /// `__kvm_gmem_create()` then takes an fd (`EMFILE`): the caller's part.
  public func checkCreateGuestMemfd(_ args: KVMCreateGuestMemfdArgs) throws(Errno) -> GuestMemfd {
    guard !isDead else { throw Errno.EIO.because("kvm_vm_ioctl", "kvm->vm_dead") }
    let supported = GuestMemfdFlags.supported(for: type)
    guard args.flags & ~supported.rawValue == 0 else {
      throw Errno.EINVAL.because("kvm_gmem_create", "flags 0x\(String(args.flags, radix: 16)) & ~kvm_gmem_get_supported_flags(kvm) 0x\(String(supported.rawValue, radix: 16))")
    }
    guard Int64(bitPattern: args.size) > 0, args.size.isPageAligned else {
      throw Errno.EINVAL.because("kvm_gmem_create", "size 0x\(String(args.size, radix: 16)) <= 0 or not page aligned")
    }
    let id = guestMemfds.keys.max()?.next ?? GuestMemfdID(1)
    return GuestMemfd(id: id, vm: self.id, size: args.size, flags: GuestMemfdFlags(rawValue: args.flags))
  }

  /// `__kvm_gmem_create()` succeeded: the file exists.
  public mutating func installGuestMemfd(_ file: GuestMemfd) { guestMemfds[file.id] = file }

  /// `kvm_gmem_release()` of the file's last reference, with `slots_lock` free, and `mmu_lock`
  /// (for write) free when the file has a binding (`kvm_gmem_invalidate_begin()` and `_end()`
  /// in `virt/kvm/guest_memfd.c` take it only once `xa_for_each_range()` finds a bound slot;
  /// see ``releaseTakesMMULock(_:)``): every slot bound to it loses its file (`slot->gmem.file = NULL`, so a later
  /// private fault gets `EFAULT`) and the SPTEs of the bound ranges are zapped (a file without
  /// `INIT_SHARED` zaps private mappings only, `KVM_FILTER_PRIVATE`; the model zaps the slot's
  /// pages that the attributes call private, or every page for an `INIT_SHARED` file). A TD's
  /// private RAM is not modelled, so a TD has nothing to zap here.
  /// - Returns: how many 4 KiB pages were unmapped.
  @discardableResult
  public mutating func releaseGuestMemfd(_ file: GuestMemfdID, ctx: ContextID) throws(LockViolation) -> UInt64 {
    guard let gmem = guestMemfds[file] else { return 0 }
    guard try slotsLock.tryLock(ctx) else {
      throw LockViolation(lock: slotsLock.name, message: "kvm_gmem_release takes it while it is held")
    }
    let takesMMULock = releaseTakesMMULock(file)
    if takesMMULock, try !mmuLock.tryLockWrite(ctx) {
      throw LockViolation(lock: mmuLock.name, message: "kvm_gmem_release takes it while it is held")
    }
    let before = mmu.mappedPages
    for binding in gmem.bindings {
      guard let slot = memslots[binding.slot] else { continue }
      memslots[binding.slot]?.gmemFile = nil
      guard type != .tdx else { continue }
      invalidation.begin(slot.gfns)
      for gfn in slot.gfns.lowerBound.rawValue ..< slot.gfns.upperBound.rawValue
      where gmem.flags.contains(.initShared) || memoryAttributes.isPrivate(GFN(gfn)) {
        mmu.zap(GFN(gfn) ..< GFN(gfn + 1))
      }
      _ = invalidation.end()
    }
    guestMemfds[file] = nil
    if takesMMULock { try mmuLock.unlock(ctx) }
    try slotsLock.unlock(ctx)
    return before - mmu.mappedPages
  }

  /// Whether `kvm_gmem_release()` of `file` takes `mmu_lock`: only when a slot is bound to it
  /// (`found_memslot` in `kvm_gmem_invalidate_begin()`, `xa_find()` in `_end()`).
  public func releaseTakesMMULock(_ file: GuestMemfdID) -> Bool {
    guestMemfds[file].map { !$0.bindings.isEmpty } ?? false
  }

  // MARK: Memory attributes

  /// `kvm_supported_mem_attributes()`: PRIVATE for a VM with private memory (and for the
  /// system fd), nothing for a default VM.
  public var supportedMemoryAttributes: MemoryAttributes { type.hasPrivateMemory ? .private : [] }

  /// `KVM_SET_MEMORY_ATTRIBUTES` (`kvm_vm_ioctl_set_mem_attributes()` then
  /// `kvm_vm_set_mem_attributes()`, `virt/kvm/kvm_main.c`), with `slots_lock` free for `ctx`, and
  /// `mmu_lock` (for write) free when a memslot overlaps the range (`kvm_handle_gfn_range()`
  /// takes it only then); one region. Checks in order, after the dead-VM check:
  /// 1. `attrs->flags` -> `EINVAL` ("flags is currently not used");
  /// 2. `attrs->attributes & ~kvm_supported_mem_attributes(kvm)` -> `EINVAL`;
  /// 3. `attrs->size == 0 || attrs->address + attrs->size < attrs->address` -> `EINVAL`;
  /// 4. `!PAGE_ALIGNED(attrs->address) || !PAGE_ALIGNED(attrs->size)` -> `EINVAL`;
  /// then under `slots_lock`: nothing to do when the range already has the attributes;
  /// `kvm_arch_pre_set_memory_attributes()` unmaps what the change makes invalid inside
  /// memslots (to private: shared mappings; to shared: private ones; a VM without a mirror has
  /// one root and loses both), the attributes are stored, `kvm_mmu_invalidate_end()`.
  ///
  /// A TD whose conversion to shared would unmap private MMIO (mirror SPTEs in the range) is
  /// refused with `EBUSY` (the model's proposal, as for deleting the slot: the Secure-EPT zap
  /// cannot unmap MMIO of a trusted interface, and the kernel would `KVM_BUG_ON`).
  /// - Returns: whether anything changed.
  @discardableResult
  public mutating func setMemoryAttributes(_ attrs: KVMMemoryAttributesArgs,
                                           ctx: ContextID) throws(MemoryAttributesFailure) -> Bool {
    let ioctl: StaticString = "kvm_vm_ioctl_set_mem_attributes"
    guard !isDead else { throw .errno(Errno.EIO.because("kvm_vm_ioctl", "kvm->vm_dead")) }
    guard attrs.flags == 0 else { throw .errno(Errno.EINVAL.because(ioctl, "attrs->flags 0x\(String(attrs.flags, radix: 16)): flags is currently not used")) }
    guard attrs.attributes & ~supportedMemoryAttributes.rawValue == 0 else {
      throw .errno(Errno.EINVAL.because(ioctl, "attrs->attributes 0x\(String(attrs.attributes, radix: 16)) & ~kvm_supported_mem_attributes(kvm) 0x\(String(supportedMemoryAttributes.rawValue, radix: 16))"))
    }
    let (end, overflow) = attrs.address.addingReportingOverflow(attrs.size)
    guard attrs.size != 0, !overflow else {
      throw .errno(Errno.EINVAL.because(ioctl, "attrs->size == 0 || attrs->address + attrs->size < attrs->address"))
    }
    guard attrs.address.isPageAligned, attrs.size.isPageAligned else {
      throw .errno(Errno.EINVAL.because(ioctl, "!PAGE_ALIGNED(attrs->address) || !PAGE_ALIGNED(attrs->size)"))
    }
    let range = attrs.address.pages ..< end.pages
    let wanted = MemoryAttributes(rawValue: attrs.attributes)
    if let wait = slotsLock.wait(for: ctx) { throw .wait(wait) }
    // "Nothing to do if the entire range has the desired attributes."
    if memoryAttributes.rangeHas(range, wanted) { return false }
    let inSlots = memslots.values.compactMap { slot -> Range<GFN>? in
      let lo = max(slot.gfns.lowerBound.rawValue, range.lowerBound), hi = min(slot.gfns.upperBound.rawValue, range.upperBound)
      return lo < hi ? GFN(lo) ..< GFN(hi) : nil
    }
    // kvm_handle_gfn_range() takes mmu_lock (KVM_MMU_LOCK) only once it finds a memslot in the
    // range (`found_memslot`): attributes of GFNs outside every slot change without it.
    let takesMMULock = !inSlots.isEmpty
    if takesMMULock, let wait = mmuLock.writeWait(for: ctx) { throw .wait(wait) }
    let mirror = mmu
    if type == .tdx, !wanted.contains(.private),
       let mapped = inSlots.lazy.compactMap({ mirror.leaves(in: $0).first }).first {
      throw .errno(Errno.EBUSY.because("kvm_arch_pre_set_memory_attributes",
        "model (reviewed): converting \(mapped.gfn.gpa) to shared would zap private MMIO the TDX module will not unmap while its interface is trusted"))
    }
    do throws(LockViolation) {
      guard try slotsLock.tryLock(ctx) else {
        throw LockViolation(lock: "kvm->slots_lock", message: "KVM_SET_MEMORY_ATTRIBUTES took a lock it saw free")
      }
      if takesMMULock, try !mmuLock.tryLockWrite(ctx) {
        throw LockViolation(lock: "kvm->mmu_lock", message: "KVM_SET_MEMORY_ATTRIBUTES took a lock it saw free")
      }
    } catch { throw .lockViolation(error) }
    for gfns in inSlots {
      invalidation.begin(gfns)
      switch type {
      case .default, .swProtected: mmu.zap(gfns)
      case .tdx: if wanted.contains(.private) { sharedMMU.zap(gfns) }
      }
    }
    memoryAttributes.set(range, wanted)
    for _ in inSlots { _ = invalidation.end() }
    do throws(LockViolation) {
      if takesMMULock { try mmuLock.unlock(ctx) }
      try slotsLock.unlock(ctx)
    } catch { throw .lockViolation(error) }
    return true
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
  public mutating func beginSecureZap(_ gfns: Range<GFN>, ctx: ContextID,
                                      unmap: Bool = true) throws(LockViolation) -> Result<ZapPath, WaitError> {
    if let wait = mmuLock.writeWait(for: ctx) { return .failure(WaitError(wait: wait)) }
    _ = try mmuLock.tryLockWrite(ctx)
    invalidation.begin(gfns)
    // The TD's shared (direct) root needs no SEAMCALL: its mappings of the range go at once.
    sharedMMU.zap(gfns)
    return .success(ZapPath(vm: self, gfns: gfns, ctx: ctx, unmap: unmap))
  }

  /// The leaf mapping `gfn` that a guest access or a fault sees: a blocked mirror entry is not
  /// present.
  public func presentLeaf(_ gfn: GFN) -> MappedLeaf? {
    guard let leaf = mmu.lookup(gfn), blockedMirror.isEmpty || !blockedMirror.contains(leaf.gfn) else { return nil }
    return leaf
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
    sharedMMU.zap(gfns)
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

/// Why `KVM_SET_MEMORY_ATTRIBUTES` did not complete: its errno, a lock it must wait for
/// (nothing changed), or the model's own lock mistake.
public enum MemoryAttributesFailure: Error, Hashable, Sendable {
  case errno(Errno)
  case wait(Wait)
  case lockViolation(LockViolation)
}

/// A wait carried as an error value, for APIs that either begin a region or must wait.
public struct WaitError: Error, Hashable, Sendable {
  public let wait: Wait
  public init(wait: Wait) { self.wait = wait }
}
