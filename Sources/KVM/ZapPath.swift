import KernelCore

/// A firmware call the zap of private MMIO needs. TDX names; an SEV-TIO (`RMPUPDATE`) or
/// CCA (`RMI_VDEV_UNMAP`) back end maps these steps onto its own calls.
public enum SecureZapAction: Hashable, Sendable {
  /// `TDH.MMIO.BLOCK(gpa, level)`.
  case secureBlock(gpa: GPA, level: PGLevel)
  /// `TDH.MEM.TRACK`: start a new TLB epoch.
  case secureTrack
  /// Kick every vCPU out of guest mode (`kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)`).
  case kickVCPUs
  /// `TDH.MMIO.UNMAP(gpa, level)`.
  case secureUnmap(gpa: GPA, level: PGLevel)
  /// The zap is over: the invalidation has ended and `mmu_lock` is released.
  case complete(ZapOutcome)
}

/// How a private-MMIO zap ended.
public enum ZapOutcome: Hashable, Sendable {
  /// Every entry was unmapped.
  case zapped(entries: Int)
  /// A call failed with a status other than busy: `KVM_BUG_ON`, the VM is dead.
  case vmDead
}

/// A TD's zap of private MMIO in a GFN range (patch 12's unmap: block every entry, track the
/// TLB epoch, kick all vCPUs, unmap every entry; busy retried, anything else fatal), run with
/// `mmu_lock` held for write inside an invalidation that this path ends.
public struct ZapPath: Hashable, Sendable {
  enum State: Hashable, Sendable {
    case block(Int)
    case track
    case kick
    case unmap(Int)
    /// Work is over; the invalidation is still open.
    case finishing(ZapOutcome)
    case done(ZapOutcome)
  }

  public let ctx: ContextID
  public let gfns: Range<GFN>
  /// The mirror's leaves in the range when the zap began.
  public let entries: [MappedLeaf]
  var state: State

  /// Builds the path for a VM whose `mmu_lock` `ctx` holds for write and whose invalidation
  /// over `gfns` has begun.
  init(vm: VirtualMachine, gfns: Range<GFN>, ctx: ContextID) {
    self.ctx = ctx
    self.gfns = gfns
    entries = vm.mmu.leaves(in: gfns)
    state = entries.isEmpty ? .finishing(.zapped(entries: 0)) : .block(0)
  }

  /// Takes `mmu_lock` for write, begins an invalidation over `gfns` and returns the path
  /// (for a memslot delete on a TD); `nil` if another context holds `mmu_lock`.
  public static func begin(_ vm: inout VirtualMachine, gfns: Range<GFN>,
                           ctx: ContextID) throws(LockViolation) -> ZapPath? {
    guard try vm.mmuLock.tryLockWrite(ctx) else { return nil }
    vm.invalidation.begin(gfns)
    return ZapPath(vm: vm, gfns: gfns, ctx: ctx)
  }

  public var outcome: ZapOutcome? {
    if case .done(let o) = state { return o }
    return nil
  }

  /// The call to make now (or, once the work is over, end the invalidation and unlock).
  public mutating func step(_ vm: inout VirtualMachine) throws(LockViolation) -> SecureZapAction {
    switch state {
    case .block(let i): return .secureBlock(gpa: entries[i].gfn.gpa, level: entries[i].level)
    case .track: return .secureTrack
    case .kick: return .kickVCPUs
    case .unmap(let i): return .secureUnmap(gpa: entries[i].gfn.gpa, level: entries[i].level)
    case .finishing(let outcome):
      try vm.invalidateEnd(ctx: ctx)
      try vm.mmuLock.unlock(ctx)
      state = .done(outcome)
      return .complete(outcome)
    case .done(let outcome): return .complete(outcome)
    }
  }

  /// The call from ``step(_:)`` returned. Busy repeats the same call; success moves on (an
  /// unmap also removes the mirror SPTE); any other status marks the VM dead.
  public mutating func completed(_ result: SecureCallResult,
                                 vm: inout VirtualMachine) throws(LockViolation) {
    try vm.mmuLock.assertHeldWrite(by: ctx)
    switch result {
    case .busy: return
    case .failed:
      vm.markDead()
      state = .finishing(.vmDead)
      return
    case .success: break
    }
    switch state {
    case .block(let i): state = i + 1 < entries.count ? .block(i + 1) : .track
    case .track: state = .kick
    case .kick: state = .unmap(0)
    case .unmap(let i):
      vm.mmu.zap(entries[i].range)
      state = i + 1 < entries.count ? .unmap(i + 1) : .finishing(.zapped(entries: entries.count))
    case .finishing, .done: break
    }
  }
}
