import KernelCore
import DmaBuf

/// KVM's named invariants. Each returns the violations it found (empty: it held), phrased
/// so a counterexample says what broke.
public enum KVMInvariants {
  /// Every leaf KVM maps for `vm`: its TDP root (a TD's mirror of the Secure EPT) and, for a
  /// TD, the shared root of GPAs with the shared bit (keyed without it).
  public static func allLeaves(_ vm: VirtualMachine) -> [MappedLeaf] {
    vm.type == .tdx ? vm.mmu.leaves() + vm.sharedMMU.leaves() : vm.mmu.leaves()
  }

  /// `NoSPTEOutsideMemslot`: every mapped GFN lies inside some memslot. `leaves`: the VM's
  /// (``allLeaves(_:)``) when the caller has them. A leaf is looked up in address space 0's
  /// slot index (a search, not a scan of the slots); only a leaf not found there is compared
  /// with every slot.
  public static func noSPTEOutsideMemslot(_ vm: VirtualMachine, leaves: [MappedLeaf]? = nil) -> [String] {
    func within(_ leaf: MappedLeaf, _ slot: Memslot) -> Bool {
      leaf.gfn >= slot.baseGFN && leaf.gfn.rawValue + leaf.level.pages <= slot.baseGFN.rawValue + slot.npages
    }
    return (leaves ?? allLeaves(vm)).compactMap { leaf in
      if let slot = vm.memslot(containing: leaf.gfn), within(leaf, slot) { return nil }
      let inside = vm.memslots.values.contains { within(leaf, $0) }
      return inside ? nil : "vm \(vm.id): \(leaf) is outside every memslot"
    }
  }

  /// `MMIOSPTEsUncached`: an SPTE mapping an MMIO PFN is UC and honours the guest PAT.
  public static func mmioSPTEsUncached(_ vm: VirtualMachine, leaves: [MappedLeaf]? = nil) -> [String] {
    (leaves ?? allLeaves(vm)).compactMap { leaf in
      guard vm.isMMIOPFN(leaf.spte.pfn) else { return nil }
      let ok = leaf.spte.memoryType == .uncachable && !leaf.spte.ignoresPAT
      return ok ? nil : "vm \(vm.id): MMIO \(leaf) is not uncached"
    }
  }

  /// `SPTEMatchesExporter`: an SPTE in a dma-buf slot maps the PFN the exporter describes for
  /// that buffer page, and a huge leaf stays inside one physical range. `physRanges` answers
  /// a buffer's ranges (`nil` when it is gone). One pass per leaf over the buffer's ranges:
  /// the cost is leaves times ranges, never pages.
  public static func sptePFNMatchesBinding(_ vm: VirtualMachine, leaves: [MappedLeaf]? = nil,
                                           physRanges: (DmaBufID) -> [PhysRange]?) -> [String] {
    var out: [String] = []
    for leaf in leaves ?? allLeaves(vm) {
      guard let slot = vm.memslot(containing: leaf.gfn), let b = slot.dmaBuf, let ranges = physRanges(b.dmaBuf) else { continue }
      let firstPage = b.pgoff.rawValue + (leaf.gfn.rawValue - slot.baseGFN.rawValue)
      var start: UInt64 = 0
      var matches = false
      for range in ranges {
        let pages = range.length.pages
        if firstPage < start + pages {
          let pfn = range.start.pfn.rawValue + (firstPage - start)
          matches = pfn == leaf.spte.pfn.rawValue && firstPage + leaf.level.pages <= start + pages
          break
        }
        start += pages
      }
      if !matches {
        out.append("vm \(vm.id): \(leaf) but buffer \(b.dmaBuf) page \(firstPage) is elsewhere")
      }
    }
    return out
  }

  /// `RevokedImpliesNoSPTE`: no present SPTE in the GFNs of a binding whose buffer was
  /// revoked and whose `move_notify` has returned (`revoked`: those attachments, from the
  /// caller). A blocked mirror entry of a TD is not present: no vCPU reaches it.
  public static func noSPTEForRevokedBinding(_ vm: VirtualMachine, revoked: Set<AttachmentID>) -> [String] {
    vm.bindings.values.filter { revoked.contains($0.binding.attachment) }.compactMap { b in
      var left = vm.mmu.leaves(in: b.gfns).filter { !vm.blockedMirror.contains($0.gfn) }
      if vm.type == .tdx { left += vm.sharedMMU.leaves(in: b.gfns) }
      return left.isEmpty ? nil
        : "vm \(vm.id): \(left.count) SPTE(s) still map revoked buffer \(b.binding.dmaBuf) (attachment \(b.binding.attachment))"
    }
  }

  /// `NoDanglingBinding`: every attachment KVM holds belongs to a live slot that holds it.
  public static func noDanglingBinding(_ vm: VirtualMachine) -> [String] {
    vm.bindings.values.compactMap { b in
      let live = !b.isStale && vm.memslots[b.slot]?.dmaBuf?.attachment == b.binding.attachment
      return live ? nil : "vm \(vm.id): attachment \(b.binding.attachment) is bound to freed \(b.slot)"
    }
  }
}
