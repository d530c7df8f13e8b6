import KernelCore

/// The largest level a fault may map at (`kvm_mmu_hugepage_adjust()` and
/// `kvm_mmu_max_mapping_level()` in `arch/x86/kvm/mmu/mmu.c`), as a pure function.
///
/// A level is allowed when the exporter reported a block at least that large (`max_order`),
/// the GFN and PFN have the same offset inside a block of that size (so one huge SPTE maps
/// both aligned), and the whole GFN block lies inside the slot.
/// - Parameter maxLevel: the VM's cap (a TD maps private MMIO at 4 KiB only, patch 12).
public func mmuHugepageAdjust(gfn: GFN, pfn: PFN, slotGFNs: Range<GFN>, exporterOrder: UInt8,
                              maxLevel: PGLevel = .level1G) -> PGLevel {
  for level in [PGLevel.level1G, .level2M] where level <= maxLevel && level.order <= exporterOrder {
    let mask = level.pages - 1
    guard (gfn.rawValue ^ pfn.rawValue) & mask == 0 else { continue }
    let base = gfn.rawValue & ~mask
    guard base >= slotGFNs.lowerBound.rawValue,
          base + level.pages <= slotGFNs.upperBound.rawValue else { continue }
    return level
  }
  return .level4K
}

/// How a guest access ended, as the platform reports it (`guest.read` … `expect: { fault: … }`).
public enum FaultOutcome: String, Hashable, Sendable, CaseIterable {
  /// The fault installed a mapping; the access completes.
  case mapped
  /// A mapping was already there (no fault, or a spurious one).
  case alreadyMapped = "already_mapped"
  /// No slot, or a write to a read-only slot: `KVM_EXIT_MMIO` to user space.
  case exitMMIO = "exit_mmio"
  /// `KVM_RUN` fails with `EFAULT` (a memory-fault exit: `KVM_EXIT_MEMORY_FAULT` in
  /// `kvm_run`, see ``MemoryFaultExit``).
  case efault
  /// `KVM_RUN` fails with `EIO`: exporter error, or the VM is dead (the fault path's
  /// ``FaultResult/failed(_:)`` says which).
  case eio
  /// The guest was terminated (a TD touching an unaccepted page; decided by the platform).
  case killed
}

/// The kind of guest access that faulted.
public enum AccessKind: Hashable, Sendable { case read, write, fetch }

/// Where the fault's PFN comes from, for the caller to ask.
public enum PFNSource: Hashable, Sendable {
  /// The dma-buf exporter (`dma_buf_get_pfn_unlocked()`, patch 1/7).
  case dmaBuf(DmaBufBinding)
  /// The host page tables behind the slot's user address (`hva_to_pfn()`).
  case userspace(hva: UInt64)
  /// guest_memfd at this byte offset (`kvm_gmem_get_pfn()`); `file` is `slot->gmem.file`,
  /// `nil` once the file was closed (`kvm_gmem_get_pfn()` then answers `-EFAULT`).
  case guestMemfd(file: GuestMemfdID?, offset: UInt64)
}

/// The PFN a fault needs: slot, GFN and the page offset inside the slot's backing.
public struct PFNRequest: Hashable, Sendable {
  public let slot: SlotKey
  public let gfn: GFN
  /// `fault->is_private`.
  public var isPrivate = false
  /// The page inside the backing object (for a dma-buf: the buffer page).
  public let pgoff: PageIndex
  public let source: PFNSource
}

/// A PFN as an exporter reports it, with the order of the contiguous block it starts.
public struct ResolvedPFN: Hashable, Sendable {
  public let pfn: PFN
  public let order: UInt8
  public init(pfn: PFN, order: UInt8 = 0) { self.pfn = pfn; self.order = order }
}

/// A firmware call's result as KVM classifies it (KVM never sees TDX types; the platform
/// maps `TDX_SUCCESS` / `TDX_OPERAND_BUSY` / anything else onto these, the way the variant's
/// glue tests the status).
public enum SecureCallResult: Hashable, Sendable {
  case success
  /// Contended: KVM tries again (`-EBUSY` / `-EAGAIN` inside KVM).
  case busy
  /// Any other status: a KVM bug from KVM's point of view (`KVM_BUG_ON`). `reason` is the
  /// module's check, when it gave one (KVM sees only the status; the model keeps the why).
  case failed(status: UInt64, reason: Refusal? = nil)
  /// (`reviewed`) The module refused for a reason in the host's own setup of the interface,
  /// which the VMM can put right (no DEVIF, no MMIOMT entry, the page mapped elsewhere, the
  /// DEVIF another TD's, the IDE stream blocked): not a KVM bug, and the TD lives. The fault
  /// ends in `KVM_EXIT_MEMORY_FAULT` and `KVM_RUN` fails `EFAULT`.
  case refused(status: UInt64)
}

/// How one fault ended: an outcome of the guest's access, or `RET_PF_RETRY` (the vCPU goes
/// back into the guest, re-executes the access and faults again).
public enum FaultResult: Hashable, Sendable {
  case outcome(FaultOutcome)
  case retry
  /// `kvm_mmu_prepare_memory_fault_exit()`: `KVM_RUN` returns the exit's errno (EFAULT) with
  /// `KVM_EXIT_MEMORY_FAULT` in `kvm_run`. The outcome is ``FaultOutcome/efault``.
  case memoryFault(MemoryFaultExit)
  /// The kernel would go on in a way the model does not have (a TD's private RAM needs
  /// `TDH.MEM.PAGE.AUG`, which the TDX module model lacks): `KVM_RUN` is refused, saying so.
  case notModelled(function: StaticString, what: String)
  /// `KVM_RUN` fails with this errno (`EIO`, the outcome ``FaultOutcome/eio``), whose reason
  /// says which check failed: the exporter's refusal (passed through), `KVM_BUG_ON` of a
  /// firmware call, or a VM already dead. Equal by errno, as errnos are.
  case failed(Errno)

  public static func == (a: FaultResult, b: FaultResult) -> Bool {
    switch (a, b) {
    case (.outcome(let x), .outcome(let y)): x == y
    case (.retry, .retry): true
    case (.memoryFault(let x), .memoryFault(let y)): x == y
    case (.notModelled(_, let x), .notModelled(_, let y)): x == y
    case (.failed(let x), .failed(let y)): x == y
    default: false
    }
  }

  public func hash(into hasher: inout Hasher) {
    switch self {
    case .outcome(let o): hasher.combine(0); hasher.combine(o)
    case .retry: hasher.combine(1)
    case .memoryFault(let e): hasher.combine(2); hasher.combine(e)
    case .notModelled(_, let what): hasher.combine(3); hasher.combine(what)
    case .failed(let e): hasher.combine(4); hasher.combine(e)
    }
  }
}

/// What the caller must do after a step of a ``FaultPath``.
public enum FaultAction: Hashable, Sendable {
  /// The region is over; the next one is the caller's: ask the PFN's source (taking what lock
  /// it needs, outside `mmu_lock`), then call ``FaultPath/pfnResolved(_:vm:)``.
  case resolvePFN(PFNRequest)
  /// Inside the install region, with `mmu_lock` held for read: `TDH.MMIO.MAP(gpa, level,
  /// hpa)`, then ``FaultPath/secureMapCompleted(_:vm:)`` in the same region.
  case secureMap(gpa: GPA, hpa: HPA, level: PGLevel)
  /// `mmu_lock` is held for write by another context: nothing changed; step again later.
  case blocked(Wait)
  /// The fault is over; the vCPU has left its SRCU read section.
  case complete(FaultResult)
}

/// One vCPU's EPT-violation handling for one GPA as a state machine
/// (`kvm_tdp_page_fault()` → `kvm_mmu_faultin_pfn()` → `is_page_fault_stale()` →
/// `kvm_tdp_mmu_map()` in `arch/x86/kvm/mmu/`; for a TD, `tdx_sept_set_private_spte()` with
/// `TDH.MMIO.MAP`, patch 12).
///
/// Its atomic regions, each one step of the vCPU's thread:
/// 1. ``begin(_:)``: `srcu_read_lock`, read `mmu_invalidate_seq`, find the slot. No slot, or a
///    write to a read-only slot, ends the fault (`exit_mmio`, or `efault` for a private-memory
///    VM); a slot being deleted or moved (`KVM_MEMSLOT_INVALID`) is `RET_PF_RETRY`. Otherwise
///    the caller must resolve the PFN.
/// 2. the caller's PFN lookup, then ``pfnResolved(_:vm:)``: an exporter error ends the fault
///    with `eio` (never `efault`, which user space would read as a private/shared conversion).
/// 3. ``install(_:)``: take `mmu_lock` for read; an invalidation over the GFN, or a moved
///    sequence, drops the PFN (`RET_PF_RETRY`); a mapping another vCPU installed meanwhile is a
///    spurious fault; else install the SPTE (a TD: `TDH.MMIO.MAP` first, through
///    ``secureMapCompleted(_:vm:)``), unlock, leave SRCU.
public struct FaultPath: Hashable, Sendable {
  enum State: Hashable, Sendable {
    case begin
    case resolving(mmuSeq: UInt64, slot: Memslot)
    case resolved(mmuSeq: UInt64, slot: Memslot, pfn: ResolvedPFN)
    case mapping(gfn: GFN, level: PGLevel, spte: SPTE)
    case done(FaultResult)
  }

  public let ctx: ContextID
  public let gpa: GPA
  public let access: AccessKind
  var state: State = .begin
  /// `fault->is_private`, decided in ``begin(_:)``.
  public private(set) var isPrivate = false

  public init(ctx: ContextID, gpa: GPA, access: AccessKind) {
    self.ctx = ctx; self.gpa = gpa; self.access = access
  }

  /// How the fault ended, once it has.
  public var result: FaultResult? {
    if case .done(let r) = state { return r }
    return nil
  }

  /// The `mmu_invalidate_seq` value the fault recorded, while it holds one.
  public var recordedSeq: UInt64? {
    switch state {
    case .resolving(let seq, _), .resolved(let seq, _, _): seq
    default: nil
    }
  }

  /// Subtracts `base` from the recorded sequence (see ``MMUInvalidation/rebase(by:)``).
  public mutating func rebase(by base: UInt64) {
    switch state {
    case .resolving(let seq, let slot): state = .resolving(mmuSeq: seq &- base, slot: slot)
    case .resolved(let seq, let slot, let pfn): state = .resolved(mmuSeq: seq &- base, slot: slot, pfn: pfn)
    default: break
    }
  }

  /// Whether the fault holds `mmu_lock` (only while a TD's `TDH.MMIO.MAP` is outstanding).
  public var holdsMMULock: Bool {
    if case .mapping = state { return true }
    return false
  }

  /// Ends the fault: leave the SRCU read section.
  private mutating func finish(_ result: FaultResult, _ vm: inout VirtualMachine) throws(LockViolation) -> FaultAction {
    try vm.srcu.readUnlock(ctx)
    state = .done(result)
    return .complete(result)
  }

  /// Region 1: `srcu_read_lock`, the sequence, the private/shared check, the slot
  /// (`kvm_mmu_faultin_pfn()` and `__kvm_mmu_faultin_pfn()`, `arch/x86/kvm/mmu/mmu.c`, 6.18,
  /// with the RFC's dma-buf slots of patch 7):
  /// - `fault->is_private` is the access (``VirtualMachine/isPrivateAccess(_:)``); if it differs
  ///   from `kvm_mem_is_private(kvm, gfn)` the fault ends in `KVM_EXIT_MEMORY_FAULT` (flags
  ///   PRIVATE when the access was private) and `KVM_RUN` fails `EFAULT`;
  /// - no slot (`kvm_handle_noslot_fault()`): a private access is a memory-fault exit, a shared
  ///   one is emulated MMIO (`exit_mmio`);
  /// - a slot being deleted or moved (`KVM_MEMSLOT_INVALID`) is `RET_PF_RETRY`;
  /// - a dma-buf slot takes its PFN from the exporter, private or shared ("vfio_dmabuf slot is
  ///   also applicable for shared mapping");
  /// - a private access, or any access to a `KVM_MEMSLOT_GMEM_ONLY` slot, goes to
  ///   `kvm_mmu_faultin_pfn_gmem()`: a slot without guest_memfd (`!kvm_slot_has_gmem()`) is a
  ///   memory-fault exit, else `kvm_gmem_get_pfn()`;
  /// - a shared access to any other slot goes to the user address (`hva_to_pfn()`).
  public mutating func begin(_ vm: inout VirtualMachine) throws(LockViolation) -> FaultAction {
    guard case .begin = state else { throw misuse("begin") }
    try vm.srcu.readLock(ctx)
    guard !vm.isDead else { return try finish(.failed(Self.vmDead), &vm) }
    let gfn = vm.faultGFN(gpa)
    let isPrivate = vm.isPrivateAccess(gpa)
    self.isPrivate = isPrivate
    // The sequence is read before the attributes, the slot and the PFN: whatever invalidation
    // (or attribute change) starts after this point is seen under mmu_lock.
    let mmuSeq = vm.invalidation.seq
    // "Now that we have a snapshot of mmu_invalidate_seq we can check for a private vs. shared
    // mismatch."
    if isPrivate != vm.memoryAttributes.isPrivate(gfn) {
      return try finish(.memoryFault(MemoryFaultExit(isPrivate: isPrivate, gfn: gfn)), &vm)
    }
    guard let slot = vm.memslot(containing: gfn) else {
      if isPrivate { return try finish(.memoryFault(MemoryFaultExit(isPrivate: true, gfn: gfn)), &vm) }
      return try finish(.outcome(.exitMMIO), &vm)
    }
    // kvm_mmu_faultin_pfn(): "Retry the page fault if the gfn hit a memslot that is being
    // deleted or moved."
    if slot.isInvalid { return try finish(.retry, &vm) }
    if access == .write && slot.flags.contains(.readonly) { return try finish(.outcome(.exitMMIO), &vm) }
    let rel = gfn.rawValue - slot.baseGFN.rawValue
    var request: PFNRequest
    if let binding = slot.dmaBuf {
      request = PFNRequest(slot: slot.key, gfn: gfn, pgoff: PageIndex(binding.pgoff.rawValue + rel),
                           source: .dmaBuf(binding))
    } else if isPrivate || slot.isGmemOnly {
      // kvm_mmu_faultin_pfn_gmem(): "if (!kvm_slot_has_gmem(fault->slot))" -> memory fault.
      guard slot.flags.contains(.guestMemfd) else {
        return try finish(.memoryFault(MemoryFaultExit(isPrivate: isPrivate, gfn: gfn)), &vm)
      }
      let offset = slot.guestMemfdOffset + (rel << pageShift)
      request = PFNRequest(slot: slot.key, gfn: gfn, pgoff: PageIndex(offset >> pageShift),
                           source: .guestMemfd(file: slot.gmemFile, offset: offset))
    } else {
      request = PFNRequest(slot: slot.key, gfn: gfn, pgoff: PageIndex(rel),
                           source: .userspace(hva: slot.userspaceAddr + (rel << pageShift)))
    }
    request.isPrivate = isPrivate
    state = .resolving(mmuSeq: mmuSeq, slot: slot)
    return .resolvePFN(request)
  }

  /// The PFN source answered (inside the caller's lookup region). An error ends the fault
  /// with `eio`.
  public mutating func pfnResolved(_ answer: Result<ResolvedPFN, Errno>,
                                   vm: inout VirtualMachine) throws(LockViolation) -> FaultAction? {
    guard case .resolving(let mmuSeq, let slot) = state else { throw misuse("pfnResolved") }
    switch answer {
    case .failure(let errno) where slot.dmaBuf == nil:
      // kvm_mmu_faultin_pfn_gmem(): any error of kvm_gmem_get_pfn() prepares the memory-fault
      // exit and is what KVM_RUN returns.
      return try finish(.memoryFault(MemoryFaultExit(isPrivate: isPrivate, gfn: vm.faultGFN(gpa), errno: errno)), &vm)
    case .failure(let errno):
      // kvm_vfio_dmabuf_get_pfn() (RFC patch 11): any error of dma_buf_get_pfn_unlocked() is -EIO.
      let why = errno.reason.map { ": \($0)" } ?? ""
      return try finish(.failed(Errno.EIO.because("kvm_vfio_dmabuf_get_pfn", "dma_buf_get_pfn_unlocked returned \(errno.name)\(why)")), &vm)
    case .success(let resolved):
      state = .resolved(mmuSeq: mmuSeq, slot: slot, pfn: resolved)
      return nil
    }
  }

  /// Region 3: `mmu_lock` for read, the staleness check, the install.
  public mutating func install(_ vm: inout VirtualMachine) throws(LockViolation) -> FaultAction {
    guard case .resolved(let mmuSeq, let slot, let resolved) = state else { throw misuse("install") }
    if let wait = vm.mmuLock.readWait(for: ctx) { return .blocked(wait) }
    _ = try vm.mmuLock.tryLockRead(ctx)
    let gfn = vm.faultGFN(gpa)
    // A TD's shared GPAs live in its direct root; everything else in the (mirror) root.
    let shared = vm.type == .tdx && !isPrivate
    if vm.isDead {
      try vm.mmuLock.unlock(ctx)
      return try finish(.failed(Self.vmDead), &vm)
    }
    // is_page_fault_stale(): an invalidation ran or is running over this GFN since the
    // sequence was read, so the PFN may be revoked: drop it and fault again.
    if vm.invalidation.mustRetry(gfn: gfn, since: mmuSeq) {
      try vm.mmuLock.unlock(ctx)
      return try finish(.retry, &vm)
    }
    if let leaf = shared ? vm.sharedMMU.lookup(gfn) : vm.presentLeaf(gfn), access != .write || leaf.spte.isWritable {
      try vm.mmuLock.unlock(ctx)
      return try finish(.outcome(.alreadyMapped), &vm)  // another vCPU raced ahead: a spurious fault
    }
    let mmio = vm.isMMIOPFN(resolved.pfn)
    if vm.type == .tdx && isPrivate && !mmio {
      // tdx_sept_set_private_spte() would TDH.MEM.PAGE.AUG a private RAM page.
      try vm.mmuLock.unlock(ctx)
      return try finish(.notModelled(function: "tdx_sept_set_private_spte",
                                     what: "model: a TD's private RAM (TDH.MEM.PAGE.AUG) is not modelled"), &vm)
    }
    guard gfn <= TDPMMU.maxGFN else {
      try vm.mmuLock.unlock(ctx)
      return try finish(.notModelled(function: "kvm_tdp_mmu_map",
                                     what: "model: the TDP MMU is 4-level; GFN \(gfn.rawValue) is past 48-bit GPAs"), &vm)
    }
    let maxLevel: PGLevel = vm.type == .tdx && isPrivate ? .level4K : .level1G
    let level = mmuHugepageAdjust(gfn: gfn, pfn: resolved.pfn, slotGFNs: slot.gfns,
                                  exporterOrder: resolved.order, maxLevel: maxLevel)
    let mask = level.pages - 1
    let baseGFN = GFN(gfn.rawValue & ~mask)
    let basePFN = PFN(resolved.pfn.rawValue & ~mask)
    let spte = SPTE(pfn: basePFN, level: level, writable: !slot.flags.contains(.readonly),
                    executable: true, mmio: mmio)
    if vm.type == .tdx && isPrivate {
      state = .mapping(gfn: baseGFN, level: level, spte: spte)
      return .secureMap(gpa: baseGFN.gpa, hpa: basePFN.hpa, level: level)
    }
    if shared { vm.sharedMMU.mapUnchecked(baseGFN, level: level, spte: spte) }
    else { vm.mmu.mapUnchecked(baseGFN, level: level, spte: spte) }
    try vm.mmuLock.unlock(ctx)
    return try finish(.outcome(.mapped), &vm)
  }

  /// `TDH.MMIO.MAP` returned, still inside the install region. Success installs the mirror
  /// SPTE; `busy` unlocks and retries the fault; anything else is `KVM_BUG_ON`: the VM is
  /// dead and the fault ends with `eio`.
  public mutating func secureMapCompleted(_ result: SecureCallResult,
                                          vm: inout VirtualMachine) throws(LockViolation) -> FaultAction {
    guard case .mapping(let gfn, let level, let spte) = state else { throw misuse("secureMapCompleted") }
    try vm.mmuLock.assertHeld(by: ctx)
    switch result {
    case .success:
      vm.mmu.mapUnchecked(gfn, level: level, spte: spte)
      try vm.mmuLock.unlock(ctx)
      return try finish(.outcome(.mapped), &vm)
    case .busy:
      try vm.mmuLock.unlock(ctx)
      return try finish(.retry, &vm)
    case .failed(let status, let reason):
      vm.markDead()
      try vm.mmuLock.unlock(ctx)
      let why = reason.map { " (\($0))" } ?? ""
      return try finish(.failed(Errno.EIO.because(
        "tdx_sept_set_private_spte", "KVM_BUG_ON: TDH.MMIO.MAP returned 0x\(String(status, radix: 16, uppercase: true))\(why); the VM is dead")), &vm)
    case .refused:
      try vm.mmuLock.unlock(ctx)
      return try finish(.memoryFault(MemoryFaultExit(isPrivate: true, gfn: gfn)), &vm)
    }
  }

  /// A fault on a VM that `KVM_BUG_ON` marked dead: `vcpu_enter_guest()` handles
  /// `KVM_REQ_VM_DEAD` with `-EIO`.
  static var vmDead: Errno {
    Errno.EIO.because("vcpu_enter_guest", "KVM_REQ_VM_DEAD: KVM_BUG_ON marked the VM dead")
  }

  private func misuse(_ call: String) -> LockViolation {
    LockViolation(lock: "fault path", message: "\(call) called in state \(state)")
  }
}
