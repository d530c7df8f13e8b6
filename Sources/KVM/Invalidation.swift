import KernelCore

/// The MMU-notifier-style invalidation state of a VM: `kvm->mmu_invalidate_seq`,
/// `mmu_invalidate_in_progress` and `mmu_invalidate_range_start/end`
/// (`virt/kvm/kvm_main.c`, `include/linux/kvm_host.h`).
///
/// A fault records ``seq`` before resolving its PFN without `mmu_lock` and installs only if
/// ``mustRetry(gfn:since:)`` is false under `mmu_lock`: either no invalidation covers the
/// GFN now, and none completed in between.
///
/// Only differences of ``seq`` matter to the kernel (a fault compares the value it recorded
/// with the current one), so the platform keeps it relative: ``rebase(by:)`` subtracts what no
/// fault in flight can see, and with no fault in flight the sequence is 0. Two machines that
/// differ only by how many invalidations ended long ago compare equal.
public struct MMUInvalidation: Hashable, Sendable {
  /// `mmu_invalidate_seq`: bumped when an invalidation ends.
  public private(set) var seq: UInt64 = 0
  /// `mmu_invalidate_in_progress`: invalidations begun and not ended.
  public private(set) var inProgress: Int = 0
  /// `[mmu_invalidate_range_start, mmu_invalidate_range_end)`: the union of the ranges of
  /// the invalidations in progress; empty while ``inProgress`` is 0 (the kernel resets it to
  /// `INVALID_GPA` when the last one ends).
  public private(set) var range: Range<GFN> = GFN(0) ..< GFN(0)

  public init() {}

  /// `kvm_mmu_invalidate_begin()` + `kvm_mmu_invalidate_range_add()`: the first invalidation
  /// sets the range, concurrent ones widen it.
  public mutating func begin(_ gfns: Range<GFN>) {
    if inProgress == 0 {
      range = gfns
    } else {
      range = min(range.lowerBound, gfns.lowerBound) ..< max(range.upperBound, gfns.upperBound)
    }
    inProgress += 1
  }

  /// `kvm_mmu_invalidate_end()`: the sequence moves before `in_progress` drops, so a fault
  /// that saw neither is caught by one of them.
  /// - Returns: `false` (and changes nothing) when no invalidation is in progress, which the
  ///   kernel treats as a bug (`KVM_BUG_ON(kvm->mmu_invalidate_in_progress < 0)`).
  @discardableResult
  public mutating func end() -> Bool {
    guard inProgress > 0 else { return false }
    seq &+= 1
    inProgress -= 1
    if inProgress == 0 { range = GFN(0) ..< GFN(0) }
    return true
  }

  /// `mmu_invalidate_retry_gfn(kvm, mmu_seq, gfn)`.
  public func mustRetry(gfn: GFN, since mmuSeq: UInt64) -> Bool {
    if inProgress > 0 && range.contains(gfn) { return true }
    return seq != mmuSeq
  }

  /// Subtracts `base` (at most ``seq``) from the sequence: the caller subtracts the same from
  /// every value a fault in flight recorded.
  public mutating func rebase(by base: UInt64) { seq &-= min(base, seq) }
}

/// A VM's SRCU (`kvm->srcu`): vCPUs read the memslots inside a read-side section, and a
/// memslot update waits (`synchronize_srcu()`) until every section that could still see the
/// old memslots has ended.
///
/// Readers are recorded by context, in ascending order, so equal states compare equal.
public struct SRCUState: Hashable, Sendable {
  public private(set) var readers: [ContextID] = []
  public init() {}

  /// `srcu_read_lock(&kvm->srcu)`.
  public mutating func readLock(_ ctx: ContextID) throws(LockViolation) {
    guard !readers.contains(ctx) else {
      throw LockViolation(lock: "kvm->srcu", message: "\(ctx) enters a read section it is already in")
    }
    readers.insert(ctx, at: readers.firstIndex(where: { $0 > ctx }) ?? readers.endIndex)
  }

  /// `srcu_read_unlock(&kvm->srcu, idx)`.
  public mutating func readUnlock(_ ctx: ContextID) throws(LockViolation) {
    guard let i = readers.firstIndex(of: ctx) else {
      throw LockViolation(lock: "kvm->srcu", message: "\(ctx) leaves a read section it is not in")
    }
    readers.remove(at: i)
  }

  public func isReading(_ ctx: ContextID) -> Bool { readers.contains(ctx) }
}
