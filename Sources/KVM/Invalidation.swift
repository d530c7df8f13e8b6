import KernelCore

/// The MMU-notifier-style invalidation state of a VM: `kvm->mmu_invalidate_seq`,
/// `mmu_invalidate_in_progress` and `mmu_invalidate_range_start/end`
/// (`virt/kvm/kvm_main.c`, `include/linux/kvm_host.h`).
///
/// A fault records ``seq`` before resolving its PFN without `mmu_lock` and installs only if
/// ``mustRetry(gfn:since:)`` is false under `mmu_lock`: either no invalidation covers the
/// GFN now, and none completed in between.
public struct MMUInvalidation: Hashable, Sendable {
  /// `mmu_invalidate_seq`: bumped when an invalidation ends.
  public private(set) var seq: UInt64 = 0
  /// `mmu_invalidate_in_progress`: invalidations begun and not ended.
  public private(set) var inProgress: Int = 0
  /// `[mmu_invalidate_range_start, mmu_invalidate_range_end)`: the union of the ranges of
  /// the invalidations in progress; meaningless while ``inProgress`` is 0.
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
    return true
  }

  /// `mmu_invalidate_retry_gfn(kvm, mmu_seq, gfn)`.
  public func mustRetry(gfn: GFN, since mmuSeq: UInt64) -> Bool {
    if inProgress > 0 && range.contains(gfn) { return true }
    return seq != mmuSeq
  }
}
