import KernelCore

extension TDXModule {
  /// Named invariants of the module's state, each with what broke it; empty when all hold.
  ///
  /// - `SEPTMMIOEntryOwnedByTD`: every MMIO Secure-EPT entry maps a device page whose MMIOMT
  ///   DATA entry records this very mapping and names the function of a live DEVIF of the same
  ///   TD. Harm when broken: a TD reaches device memory that the module never assigned to it
  ///   (TDH.MMIO.MAP checks the MMIOMT entry and `devifcs->tdr_pa`), so another TD's or the
  ///   host's device could be read or written through this TD's Secure EPT.
  /// - `NoRemovedDevifHasMappedMMIO`: every mapped MMIOMT entry is backed by the Secure-EPT
  ///   entry it names, and its function still has a DEVIF unless the TD is fatal. Harm: a page
  ///   stays mapped while nothing can unmap it any more (TDH.MMIO.UNMAP needs the DEVIF), so
  ///   the device could be handed to another owner while a TD still maps it.
  /// - `DevifMappedCountBalances`: each DEVIF's `MMIO_PAGE_CNT` equals its mapped MMIOMT
  ///   entries. Harm: TDH.DEVIF.REMOVE would pass with pages still mapped (or never pass).
  /// - `EpochRefcountsBalance`: each TD's two refcounts equal the vCPUs in the guest per
  ///   parity. Harm: TLB tracking would declare a blocked entry tracked while a vCPU can still
  ///   hold a stale translation of it.
  ///
  /// - Complexity: O(runs) of the Secure EPTs and the MMIOMT when they hold: each run is
  ///   checked against the runs it overlaps in the other table, and only a run that fails is
  ///   checked entry by entry, for the messages.
  public func invariantViolations() -> [(name: String, message: String)] {
    var out: [(name: String, message: String)] = []
    var mappedPerDevif: [DevifID: UInt64] = [:]

    for (td, state) in tds {
      var inGuest: [UInt32] = [0, 0]
      for vcpu in state.vcpus where vcpu.inGuest { inGuest[Int(vcpu.enteredEpoch & 1)] += 1 }
      if inGuest != state.refcount {
        out.append(("EpochRefcountsBalance", "td \(td): refcount \(state.refcount), vCPUs in guest \(inGuest)"))
      }
      for run in state.sept.table.runs where run.state.isMMIO && !septRunOwned(run, td: td, fatal: state.isFatal) {
        for gfn in stride(from: run.first, to: run.end, by: Int(run.level.pages)) {
          septEntryViolations(td: td, gpa: GFN(gfn).gpa, entry: run.entry(at: gfn), fatal: state.isFatal, into: &out)
        }
      }
    }

    for run in mmiomt.table.runs {
      guard let td = run.td else { continue }
      let owner = devif(for: run.function)
      if let owner { mappedPerDevif[owner, default: 0] += run.pages / run.level.pages }
      guard (owner != nil || tds[td]?.isFatal == true) && mappedRunBacked(run, td: td) else {
        for pfn in stride(from: run.first, to: run.end, by: Int(run.level.pages)) {
          mappedEntryViolations(pfn: PFN(pfn), entry: run.entry(at: pfn), owner: owner, into: &out)
        }
        continue
      }
    }

    for (id, devif) in devifs where devif.mappedPages != mappedPerDevif[id, default: 0] {
      out.append(("DevifMappedCountBalances",
                  "devif \(id): count \(devif.mappedPages), mapped pages \(mappedPerDevif[id, default: 0])"))
    }
    return out
  }

  /// Whether every entry of an MMIO Secure-EPT run of `td` is owned as
  /// `SEPTMMIOEntryOwnedByTD` requires: the MMIOMT runs over its host pages are DATA at its
  /// level, record this very mapping, and name functions of DEVIFs of `td` (or the TD is
  /// fatal). `false` sends the run to the entry-by-entry check.
  private func septRunOwned(_ run: SecureEPT.Run, td: TDID, fatal: Bool) -> Bool {
    let level = run.level.pages
    guard (run.hpa >> pageShift) & (level - 1) == 0 else { return false }
    let lo = run.hpa >> pageShift, hi = lo + run.pages
    var covered = lo
    for mt in mmiomt.table.overlapping(lo, hi) {
      guard mt.first <= covered, mt.level == run.level, mt.td == td,
            mt.gpa &- mt.first << pageShift == run.first << pageShift &- run.hpa else { return false }
      if !fatal, devif(for: mt.function).flatMap({ devifs[$0]?.td }) != td { return false }
      covered = mt.end
    }
    return covered >= hi
  }

  /// Whether every entry of a mapped MMIOMT run is backed by the Secure-EPT entry it names
  /// (`NoRemovedDevifHasMappedMMIO`'s second half): the Secure-EPT runs over its GPAs are at
  /// its level and map exactly its pages.
  private func mappedRunBacked(_ run: MMIOMT.Run, td: TDID) -> Bool {
    guard let sept = tds[td]?.sept else { return false }
    let level = run.level.pages
    let lo = run.gpa >> pageShift, hi = lo + run.pages
    guard run.gpa & (pageSize - 1) == 0, lo & (level - 1) == 0 else { return false }
    var covered = lo
    for entry in sept.table.overlapping(lo, hi) {
      guard entry.first <= covered, entry.level == run.level,
            entry.hpa &- entry.first << pageShift == run.first << pageShift &- run.gpa else { return false }
      covered = entry.end
    }
    return covered >= hi
  }

  /// `SEPTMMIOEntryOwnedByTD` for one MMIO Secure-EPT entry, with its messages.
  private func septEntryViolations(td: TDID, gpa: GPA, entry: SEPTEntry, fatal: Bool,
                                   into out: inout [(name: String, message: String)]) {
    let what = "td \(td) gpa \(gpa) \(entry.state) hpa \(entry.hpa)"
    let first = PFN(entry.hpa.pfn.rawValue & ~(entry.level.pages - 1))
    guard let mt = mmiomt[first], mt.level == entry.level else {
      out.append(("SEPTMMIOEntryOwnedByTD", "\(what): no MMIOMT DATA entry at \(entry.level)")); return
    }
    if mt.mapping != MMIOMTMapping(td: td, gpa: gpa) {
      out.append(("SEPTMMIOEntryOwnedByTD", "\(what): MMIOMT records \(String(describing: mt.mapping))"))
    }
    let owner = devif(for: mt.function)
    if owner.flatMap({ devifs[$0]?.td }) != td && !fatal {
      out.append(("SEPTMMIOEntryOwnedByTD", "\(what): function \(mt.function) has no live DEVIF of this TD"))
    }
  }

  /// `NoRemovedDevifHasMappedMMIO` for one mapped MMIOMT entry, with its messages.
  private func mappedEntryViolations(pfn: PFN, entry mt: MMIOMTEntry, owner: DevifID?,
                                     into out: inout [(name: String, message: String)]) {
    guard let mapping = mt.mapping else { return }
    if owner == nil && tds[mapping.td]?.isFatal != true {
      out.append(("NoRemovedDevifHasMappedMMIO",
                  "page \(pfn.hpa): mapped at td \(mapping.td) gpa \(mapping.gpa) but \(mt.function) has no DEVIF"))
    }
    if tds[mapping.td]?.sept[mapping.gpa]?.hpa != pfn.hpa {
      out.append(("NoRemovedDevifHasMappedMMIO",
                  "page \(pfn.hpa): MMIOMT says mapped at td \(mapping.td) gpa \(mapping.gpa), SEPT disagrees"))
    }
  }
}
