import KernelCore

/// A firmware call the zap of private MMIO needs. TDX names; an SEV-TIO (`RMPUPDATE`) or
/// CCA (`RMI_VDEV_UNMAP`) back end maps these steps onto its own calls.
public enum SecureZapAction: Hashable, Sendable {
  /// `TDH.MMIO.BLOCK(gpa, level)`.
  case secureBlock(gpa: GPA, level: PGLevel)
  /// `TDH.MEM.TRACK`: start a new TLB epoch.
  case secureTrack
  /// Send `KVM_REQ_OUTSIDE_GUEST_MODE` to every vCPU in guest mode
  /// (``VirtualMachine/requestOutsideGuestMode(_:)``); the path then waits for their IPIs.
  case kickVCPUs
  /// `TDH.MMIO.UNMAP(gpa, level)`.
  case secureUnmap(gpa: GPA, level: PGLevel)
  /// Some vCPU has not yet answered the kick's IPI: nothing changed; step again later.
  case blocked(Wait)
  /// The zap is over: the invalidation has ended and `mmu_lock` is released.
  case complete(ZapOutcome)
}

/// How a private-MMIO zap ended.
public enum ZapOutcome: Hashable, Sendable {
  /// Every entry was unmapped.
  case zapped(entries: Int)
  /// Every entry was blocked and tracked, and left mapped until the interface is stopped.
  case blocked(entries: Int)
  /// A call failed with a status other than busy: `KVM_BUG_ON`, the VM is dead.
  case vmDead
}

/// A TD's zap of private MMIO in a GFN range (patch 12's unmap: block every entry, track the
/// TLB epoch, kick all vCPUs, unmap every entry; busy retried, anything else fatal), run with
/// `mmu_lock` held for write inside an invalidation that this path ends.
///
/// Every call is one atomic region of the zapping thread; the kick is a region that sends the
/// IPIs, followed by a wait until every vCPU that was in guest mode has left it.
///
/// When the interface is still trusted (`unmap` false) the zap stops after the kick: the
/// entries stay MMIO_BLOCKED (no vCPU can access or accept them) and KVM remembers them in
/// ``VirtualMachine/blockedMirror``; a later zap, once the interface is stopped, unmaps them
/// without blocking or tracking them again.
public struct ZapPath: Hashable, Sendable {
  enum State: Hashable, Sendable {
    case block(Int)
    case track
    case kick
    /// The kick was sent; waiting for every IPI to be answered before the first UNMAP.
    case kicked
    case unmap(Int)
    /// Work is over; the invalidation is still open.
    case finishing(ZapOutcome)
    case done(ZapOutcome)
  }

  public let ctx: ContextID
  public let gfns: Range<GFN>
  /// The mirror's leaves in the range when the zap began.
  public let entries: [MappedLeaf]
  /// The entries still to block (those not blocked by an earlier zap), by index in `entries`.
  let toBlock: [Int]
  /// Whether the entries are unmapped after the kick, or only left blocked.
  public let unmap: Bool
  var state: State

  /// Builds the path for a VM whose `mmu_lock` `ctx` holds for write and whose invalidation
  /// over `gfns` has begun (``VirtualMachine/beginSecureZap(_:ctx:unmap:)``).
  init(vm: VirtualMachine, gfns: Range<GFN>, ctx: ContextID, unmap: Bool = true) {
    self.ctx = ctx
    self.gfns = gfns
    self.unmap = unmap
    let leaves = vm.mmu.leaves(in: gfns)
    entries = leaves
    toBlock = leaves.indices.filter { !vm.blockedMirror.contains(leaves[$0].gfn) }
    if let first = toBlock.first {
      state = .block(first)
    } else if unmap, !entries.isEmpty {
      state = .unmap(0)   // blocked and tracked by an earlier zap
    } else {
      state = .finishing(.zapped(entries: 0))
    }
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
    case .kicked:
      // kvm_make_all_cpus_request() returns once every IPI it sent has been acknowledged.
      if let vcpu = vm.pendingKicks.first {
        return .blocked(.guestModeExit(vm: vm.id.rawValue, vcpu: vcpu))
      }
      guard unmap else {
        // The interface is still trusted: leave the entries blocked and tracked.
        for entry in entries { vm.blockedMirror.insert(entry.gfn) }
        try vm.invalidateEnd(ctx: ctx)
        try vm.mmuLock.unlock(ctx)
        state = .done(.blocked(entries: entries.count))
        return .complete(.blocked(entries: entries.count))
      }
      state = .unmap(0)
      return .secureUnmap(gpa: entries[0].gfn.gpa, level: entries[0].level)
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
    case .failed, .refused:
      vm.markDead()
      state = .finishing(.vmDead)
      return
    case .success: break
    }
    switch state {
    case .block(let i):
      // `toBlock` ascends: the entry just blocked is found by bisection, not a scan per BLOCK.
      let next = Self.position(of: i, in: toBlock).map { $0 + 1 } ?? toBlock.count
      state = next < toBlock.count ? .block(toBlock[next]) : .track
    case .track: state = .kick
    case .kick: state = .kicked
    case .unmap(let i):
      vm.mmu.zap(entries[i].range)
      vm.blockedMirror.remove(entries[i].gfn)
      state = i + 1 < entries.count ? .unmap(i + 1) : .finishing(.zapped(entries: entries.count))
    case .kicked, .finishing, .done: break
    }
  }

  /// The index of `value` in the ascending `sorted`, or `nil`.
  static func position(of value: Int, in sorted: [Int]) -> Int? {
    var low = 0, high = sorted.count
    while low < high {
      let mid = (low + high) / 2
      if sorted[mid] < value { low = mid + 1 } else { high = mid }
    }
    return low < sorted.count && sorted[low] == value ? low : nil
  }
}
