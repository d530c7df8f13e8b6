import KernelCore

extension TDXModule {
  /// Named invariants of the module's state, each with what broke it; empty when all hold.
  ///
  /// - `SEPTMMIOEntryOwnedByTD`: every MMIO Secure-EPT entry maps a page whose MMIOMT entry
  ///   exists, is TEE memory (not IS_NON_TEE_MEM), records this very mapping, and is owned by
  ///   a live DEVIF of the same TD.
  /// - `NoRemovedDevifHasMappedMMIO`: every MMIOMT entry's owner is a live DEVIF (DEVIF.REMOVE
  ///   drops a DEVIF's entries, so a stale owner means a removed DEVIF kept pages), and every
  ///   recorded mapping is backed by the SEPT entry it names.
  /// - `DevifMappedCountBalances`: each DEVIF's mapped-page count equals its mapped MMIOMT pages.
  /// - `EpochRefcountsBalance`: each TD's two refcounts equal the vCPUs in the guest per parity.
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
        guard let mt = mmiomt[entry.hpa.pfn] else {
          out.append(("SEPTMMIOEntryOwnedByTD", "\(what): no MMIOMT entry")); continue
        }
        if mt.attributes.contains(.isNonTEEMem) {
          out.append(("SEPTMMIOEntryOwnedByTD", "\(what): page is IS_NON_TEE_MEM"))
        }
        if mt.mapping != MMIOMTMapping(td: td, gpa: gpa) {
          out.append(("SEPTMMIOEntryOwnedByTD", "\(what): MMIOMT records \(String(describing: mt.mapping))"))
        }
        if devifs[mt.owner]?.td != td {
          out.append(("SEPTMMIOEntryOwnedByTD", "\(what): owner devif \(mt.owner) is not a live DEVIF of this TD"))
        }
      }
    }

    for (pfn, mt) in mmiomt {
      if devifs[mt.owner] == nil {
        out.append(("NoRemovedDevifHasMappedMMIO", "page \(pfn.hpa): owner devif \(mt.owner) was removed"
                    + (mt.mapping.map { " but it is mapped at td \($0.td) gpa \($0.gpa)" } ?? "")))
      }
      if let mapping = mt.mapping {
        mappedPerDevif[mt.owner, default: 0] += 1
        if tds[mapping.td]?.sept[mapping.gpa]?.hpa != pfn.hpa {
          out.append(("NoRemovedDevifHasMappedMMIO",
                      "page \(pfn.hpa): MMIOMT says mapped at td \(mapping.td) gpa \(mapping.gpa), SEPT disagrees"))
        }
      }
    }

    for (id, devif) in devifs where devif.mappedPages != mappedPerDevif[id, default: 0] {
      out.append(("DevifMappedCountBalances",
                  "devif \(id): count \(devif.mappedPages), mapped pages \(mappedPerDevif[id, default: 0])"))
    }
    return out
  }
}
