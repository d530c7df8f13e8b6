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
  /// `KVM_RUN` fails with `EFAULT` (a memory-fault exit).
  case efault
  /// `KVM_RUN` fails with `EIO`: exporter error, or the VM is dead.
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
  /// guest_memfd at this byte offset (`kvm_gmem_get_pfn()`).
  case guestMemfd(offset: UInt64)
}

/// The PFN a fault needs: slot, GFN and the page offset inside the slot's backing.
public struct PFNRequest: Hashable, Sendable {
  public let slot: SlotKey
  public let gfn: GFN
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
/// maps `TDX_SUCCESS` / `TDX_OPERAND_BUSY` / anything else onto these).
public enum SecureCallResult: Hashable, Sendable {
  case success
  /// `TDX_OPERAND_BUSY`: contended, try again.
  case busy
  /// Any other status: a KVM bug from KVM's point of view.
  case failed(status: UInt64)
}

/// What the caller must do next for a fault.
public enum FaultAction: Hashable, Sendable {
  /// Ask the PFN's source, then call ``FaultPath/pfnResolved(_:)``. Not under `mmu_lock`.
  case resolvePFN(PFNRequest)
  /// `TDH.MMIO.MAP(gpa, level, hpa)` with `mmu_lock` held (read) by the fault; then call
  /// ``FaultPath/secureMapCompleted(_:vm:)``.
  case secureMap(gpa: GPA, hpa: HPA, level: PGLevel)
  /// `mmu_lock` is held for write by another context: call ``FaultPath/step(_:)`` later.
  case blocked
  /// Call ``FaultPath/step(_:)`` again (a retry went back to the start).
  case proceed
  /// The fault is over.
  case complete(FaultOutcome)
}

/// One vCPU's EPT-violation handling for one GPA as a state machine
/// (`kvm_tdp_page_fault()` → `kvm_faultin_pfn()` → `is_page_fault_stale()` →
/// `kvm_tdp_mmu_map()` in `arch/x86/kvm/mmu/`; for a TD, `tdx_sept_set_private_spte()` with
/// `TDH.MMIO.MAP`, patch 12).
///
/// Each call performs one atomic region and says what comes next:
/// 1. `step`: read `mmu_invalidate_seq`, find the slot (none, or a write to a read-only slot:
///    `exit_mmio`), emit ``FaultAction/resolvePFN(_:)``.
/// 2. `pfnResolved`: record the PFN (an exporter error is `eio`, never `efault`, which user
///    space would read as a private/shared conversion request).
/// 3. `step`: take `mmu_lock` for read; if an invalidation covers the GFN or the sequence
///    moved, drop everything and start over; else install the SPTE and unlock (`mapped`), or
///    for a TD keep the lock and emit ``FaultAction/secureMap(gpa:hpa:level:)``.
/// 4. `secureMapCompleted`: success installs the mirror SPTE; busy unlocks and retries; any
///    other status marks the VM dead (`KVM_BUG_ON`) and ends with `eio`.
public struct FaultPath: Hashable, Sendable {
  enum State: Hashable, Sendable {
    case start
    case resolving(mmuSeq: UInt64, slot: Memslot)
    case resolved(mmuSeq: UInt64, slot: Memslot, pfn: ResolvedPFN)
    case mapping(gfn: GFN, level: PGLevel, spte: SPTE)
    case done(FaultOutcome)
  }

  public let ctx: ContextID
  public let gpa: GPA
  public let access: AccessKind
  var state: State = .start
  /// How often the fault went back to the start (stale sequence, invalidation, busy).
  public private(set) var retries = 0

  public init(ctx: ContextID, gpa: GPA, access: AccessKind) {
    self.ctx = ctx; self.gpa = gpa; self.access = access
  }

  /// The outcome, once the fault is over.
  public var outcome: FaultOutcome? {
    if case .done(let o) = state { return o }
    return nil
  }

  /// Whether the fault holds `mmu_lock` (only while a TD's `TDH.MMIO.MAP` is outstanding).
  public var holdsMMULock: Bool {
    if case .mapping = state { return true }
    return false
  }

  private mutating func finish(_ outcome: FaultOutcome) -> FaultAction {
    state = .done(outcome)
    return .complete(outcome)
  }

  /// Runs the next atomic region that needs no input (start, or lock-check-install).
  public mutating func step(_ vm: inout VirtualMachine) throws(LockViolation) -> FaultAction {
    switch state {
    case .start:
      guard !vm.isDead else { return finish(.eio) }
      let gfn = gpa.gfn
      if let leaf = vm.mmu.lookup(gfn), access != .write || leaf.spte.isWritable {
        return finish(.alreadyMapped)
      }
      // The sequence is read before the slot and the PFN: whatever invalidation starts
      // after this point is seen under mmu_lock.
      let mmuSeq = vm.invalidation.seq
      // No slot: ordinary guests exit to user space to emulate MMIO; a private-memory guest's
      // GPA is never emulated, KVM exits with KVM_EXIT_MEMORY_FAULT and KVM_RUN fails EFAULT.
      guard let slot = vm.memslot(containing: gfn) else { return finish(vm.type.hasPrivateMemory ? .efault : .exitMMIO) }
      if access == .write && slot.flags.contains(.readonly) { return finish(.exitMMIO) }
      let rel = gfn.rawValue - slot.baseGFN.rawValue
      let request: PFNRequest
      if let binding = slot.dmaBuf {
        request = PFNRequest(slot: slot.key, gfn: gfn, pgoff: PageIndex(binding.pgoff.rawValue + rel),
                             source: .dmaBuf(binding))
      } else if slot.flags.contains(.guestMemfd) {
        let offset = slot.guestMemfdOffset + (rel << pageShift)
        request = PFNRequest(slot: slot.key, gfn: gfn, pgoff: PageIndex(offset >> pageShift),
                             source: .guestMemfd(offset: offset))
      } else {
        request = PFNRequest(slot: slot.key, gfn: gfn, pgoff: PageIndex(rel),
                             source: .userspace(hva: slot.userspaceAddr + (rel << pageShift)))
      }
      state = .resolving(mmuSeq: mmuSeq, slot: slot)
      return .resolvePFN(request)

    case .resolving:
      return .blocked  // waiting for pfnResolved; nothing to do without it

    case .resolved(let mmuSeq, let slot, let resolved):
      guard try vm.mmuLock.tryLockRead(ctx) else { return .blocked }
      try vm.mmuLock.assertHeld(by: ctx)
      let gfn = gpa.gfn
      if vm.isDead {
        try vm.mmuLock.unlock(ctx)
        return finish(.eio)
      }
      // is_page_fault_stale(): an invalidation ran or is running over this GFN since the
      // sequence was read, so the PFN may be revoked: drop it and fault again.
      if vm.invalidation.mustRetry(gfn: gfn, since: mmuSeq) {
        try vm.mmuLock.unlock(ctx)
        retries += 1
        state = .start
        return .proceed
      }
      if let leaf = vm.mmu.lookup(gfn), access != .write || leaf.spte.isWritable {
        try vm.mmuLock.unlock(ctx)
        return finish(.alreadyMapped)  // another vCPU raced ahead: a spurious fault
      }
      let maxLevel: PGLevel = vm.type == .tdx ? .level4K : .level1G
      let level = mmuHugepageAdjust(gfn: gfn, pfn: resolved.pfn, slotGFNs: slot.gfns,
                                    exporterOrder: resolved.order, maxLevel: maxLevel)
      let mask = level.pages - 1
      let baseGFN = GFN(gfn.rawValue & ~mask)
      let basePFN = PFN(resolved.pfn.rawValue & ~mask)
      let spte = SPTE(pfn: basePFN, level: level, writable: !slot.flags.contains(.readonly),
                      executable: true, mmio: vm.isMMIOPFN(resolved.pfn))
      if vm.type == .tdx {
        state = .mapping(gfn: baseGFN, level: level, spte: spte)
        return .secureMap(gpa: baseGFN.gpa, hpa: basePFN.hpa, level: level)
      }
      vm.mmu.mapUnchecked(baseGFN, level: level, spte: spte)
      try vm.mmuLock.unlock(ctx)
      return finish(.mapped)

    case .mapping:
      return .blocked  // waiting for secureMapCompleted

    case .done(let outcome):
      return .complete(outcome)
    }
  }

  /// The PFN source answered (`dma_buf_get_pfn_unlocked()` and friends). An error ends the
  /// fault with `eio`. Runs no lock: the answer is only recorded.
  public mutating func pfnResolved(_ result: Result<ResolvedPFN, Errno>) -> FaultAction {
    guard case .resolving(let mmuSeq, let slot) = state else { return .blocked }
    switch result {
    case .failure: return finish(.eio)
    case .success(let resolved):
      state = .resolved(mmuSeq: mmuSeq, slot: slot, pfn: resolved)
      return .proceed
    }
  }

  /// `TDH.MMIO.MAP` returned. Success installs the mirror SPTE; `busy` unlocks and retries
  /// the fault (-EBUSY inside KVM); anything else is `KVM_BUG_ON`: the VM is dead, `eio`.
  public mutating func secureMapCompleted(_ result: SecureCallResult,
                                          vm: inout VirtualMachine) throws(LockViolation) -> FaultAction {
    guard case .mapping(let gfn, let level, let spte) = state else { return .blocked }
    try vm.mmuLock.assertHeld(by: ctx)
    switch result {
    case .success:
      vm.mmu.mapUnchecked(gfn, level: level, spte: spte)
      try vm.mmuLock.unlock(ctx)
      return finish(.mapped)
    case .busy:
      try vm.mmuLock.unlock(ctx)
      retries += 1
      state = .start
      return .proceed
    case .failed:
      vm.markDead()
      try vm.mmuLock.unlock(ctx)
      return finish(.eio)
    }
  }
}
