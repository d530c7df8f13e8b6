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
  public func invariantViolations() -> [(name: String, message: String)] {
    var out: [(name: String, message: String)] = []
    var mappedPerDevif: [DevifID: UInt64] = [:]

    for (td, state) in tds {
      var inGuest: [UInt32] = [0, 0]
      for vcpu in state.vcpus where vcpu.inGuest { inGuest[Int(vcpu.enteredEpoch & 1)] += 1 }
      if inGuest != state.refcount {
        out.append(("EpochRefcountsBalance", "td \(td): refcount \(state.refcount), vCPUs in guest \(inGuest)"))
      }
      for (gpa, entry) in state.sept where entry.state.isMMIO {
        let what = "td \(td) gpa \(gpa) \(entry.state) hpa \(entry.hpa)"
        let first = PFN(entry.hpa.pfn.rawValue & ~(entry.level.pages - 1))
        guard let mt = mmiomt[first], mt.level == entry.level else {
          out.append(("SEPTMMIOEntryOwnedByTD", "\(what): no MMIOMT DATA entry at \(entry.level)")); continue
        }
        if mt.mapping != MMIOMTMapping(td: td, gpa: gpa) {
          out.append(("SEPTMMIOEntryOwnedByTD", "\(what): MMIOMT records \(String(describing: mt.mapping))"))
        }
        let owner = devif(for: mt.function)
        if owner.flatMap({ devifs[$0]?.td }) != td && !state.isFatal {
          out.append(("SEPTMMIOEntryOwnedByTD", "\(what): function \(mt.function) has no live DEVIF of this TD"))
        }
      }
    }

    for (pfn, mt) in mmiomt {
      guard let mapping = mt.mapping else { continue }
      let owner = devif(for: mt.function)
      if let owner { mappedPerDevif[owner, default: 0] += 1 }
      if owner == nil && tds[mapping.td]?.isFatal != true {
        out.append(("NoRemovedDevifHasMappedMMIO",
                    "page \(pfn.hpa): mapped at td \(mapping.td) gpa \(mapping.gpa) but \(mt.function) has no DEVIF"))
      }
      if tds[mapping.td]?.sept[mapping.gpa]?.hpa != pfn.hpa {
        out.append(("NoRemovedDevifHasMappedMMIO",
                    "page \(pfn.hpa): MMIOMT says mapped at td \(mapping.td) gpa \(mapping.gpa), SEPT disagrees"))
      }
    }

    for (id, devif) in devifs where devif.mappedPages != mappedPerDevif[id, default: 0] {
      out.append(("DevifMappedCountBalances",
                  "devif \(id): count \(devif.mappedPages), mapped pages \(mappedPerDevif[id, default: 0])"))
    }
    return out
  }
}
