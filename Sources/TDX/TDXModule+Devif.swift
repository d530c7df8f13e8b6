import KernelCore

extension TDXModule {
  /// The most pages one TDH.MMIO.MT.ADD enters: 2^24 pages, a 64 GiB BAR. The draft ABI's
  /// own limit is not known; this bound keeps one call's cost proportional to a real BAR.
  public static let maxMTAddPages: UInt64 = 1 << 24

  /// `TDH.DEVIF.CREATE` (leaf 137, TDX Connect draft): creates the DEVIF through which `td`
  /// owns the TDI `interface`. Its mirrored TDISP state starts CONFIG_UNLOCKED; the platform
  /// relays later states with `observeTDISPState(devif:state:)`.
  /// - Throws: busy (injected); `TDX_OPERAND_INVALID` (RCX) for an unknown TD;
  ///   `TDX_NON_RECOVERABLE_TD`; `TDX_OPERAND_INVALID` (RDX) when `interface` already has a
  ///   live DEVIF (a TDI is assigned to one TD at a time).
  public mutating func tdhDevifCreate(td: TDID, interface: DeviceInterfaceID) throws(TDXStatus) -> DevifID {
    try traced("TDH.DEVIF.CREATE td \(td) \(interface)") { (m: inout TDXModule) throws(TDXStatus) -> DevifID in
      try m.consumeBusy(.seamcall(.devifCreate), td: td)
      _ = try m.liveTD(td, register: TDXOperand.rcx)
      guard m.devif(for: interface) == nil else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rdx) }
      let id = m.nextDevif
      m.devifs[id] = DevifState(td: td, interface: interface)
      return id
    }
  }

  /// `TDH.DEVIF.REMOVE` (leaf 138, TDX Connect draft): destroys a DEVIF and drops the MMIOMT
  /// entries it added.
  /// - Throws: busy (injected); `TDX_OPERAND_INVALID` (RCX) for an unknown DEVIF;
  ///   `TDX_NON_RECOVERABLE_TD` when its TD is fatal (teardown reclaims it instead);
  ///   `TDX_DEVIF_HAS_MAPPED_MMIO` (operand DEVIF) while any of its pages is in a Secure EPT.
  public mutating func tdhDevifRemove(devif: DevifID) throws(TDXStatus) {
    try traced("TDH.DEVIF.REMOVE devif \(devif)") { (m: inout TDXModule) throws(TDXStatus) in
      guard let object = m.devifs[devif] else {
        try m.consumeBusy(.seamcall(.devifRemove), td: nil)
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
      }
      try m.consumeBusy(.seamcall(.devifRemove), td: object.td)
      _ = try m.liveTD(object.td, register: TDXOperand.rcx)
      guard object.mappedPages == 0 else {
        throw TDXStatus.devifHasMappedMMIO.with(operand: TDXOperand.devif)
      }
      m.dropMMIOMT(of: object)
      m.devifs[devif] = nil
    }
  }

  /// `TDH.MMIO.MT.ADD` (leaf 154, TDX Connect draft): enters `count` device pages from
  /// `first` into the MMIO metadata table, owned by `devif`, with the attributes the
  /// interface report gives their range. The platform calls it per report range.
  /// - Throws: busy (injected); `TDX_OPERAND_INVALID` for an unknown DEVIF (RDX), an
  ///   unaligned or overflowing first page (RCX), a zero count (R8), reserved attribute bits
  ///   (R9), or a page already in the table (RCX); `TDX_NON_RECOVERABLE_TD`.
  ///   A count above `maxMTAddPages` is refused (R8): the model's bound, not the ABI's.
  public mutating func tdhMMIOMTAdd(devif: DevifID, first: HPA, count: UInt64, attributes: MMIOMTAttributes) throws(TDXStatus) {
    try traced("TDH.MMIO.MT.ADD devif \(devif) hpa \(first) pages \(count)") { (m: inout TDXModule) throws(TDXStatus) in
      try m.consumeBusy(.seamcall(.mmioMTAdd), td: m.devifs[devif]?.td)
      guard let object = m.devifs[devif] else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rdx) }
      _ = try m.liveTD(object.td, register: TDXOperand.rdx)
      guard first.isPageAligned else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx) }
      guard count > 0 else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.r8) }
      guard attributes.isSubset(of: .all) else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.r9) }
      guard count <= TDXModule.maxMTAddPages else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.r8) }
      let firstPFN = first.pfn
      // The last page must still be a page of the 52-bit physical address space.
      guard count <= (1 << 40) &- firstPFN.rawValue else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
      }
      // Every MMIOMT entry comes from some DEVIF's range, so comparing ranges finds an
      // overlap without walking the pages.
      let end = firstPFN.rawValue + count
      for other in m.devifs.values {
        for r in other.ranges where r.first.rawValue < end && firstPFN.rawValue < r.first.rawValue + r.count {
          throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
        }
      }
      for i in 0..<count {
        m.mmiomt[firstPFN.advanced(by: i)] = MMIOMTEntry(owner: devif, attributes: attributes, mapping: nil)
      }
      m.devifs[devif]?.ranges.append(MMIOMTRange(first: firstPFN, count: count))
    }
  }

  /// `TDH.MMIO.MT.SET` (leaf 155, TDX Connect draft): changes the attributes of one MMIOMT
  /// page (for instance after SET_MMIO_ATTRIBUTE), which must be unmapped.
  /// - Throws: busy (injected); `TDX_OPERAND_INVALID` for an unaligned HPA or one not in the
  ///   table (RCX), or reserved bits (RDX); `TDX_NON_RECOVERABLE_TD`;
  ///   `TDX_MMIO_PAGE_ALREADY_MAPPED` (RCX) while it is mapped.
  public mutating func tdhMMIOMTSet(hpa: HPA, attributes: MMIOMTAttributes) throws(TDXStatus) {
    try traced("TDH.MMIO.MT.SET hpa \(hpa)") { (m: inout TDXModule) throws(TDXStatus) in
      let entry = m.mmiomt[hpa.pfn]
      try m.consumeBusy(.seamcall(.mmioMTSet), td: entry.flatMap { m.devifs[$0.owner]?.td })
      guard hpa.isPageAligned, let entry else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx) }
      guard attributes.isSubset(of: .all) else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rdx) }
      if let owner = m.devifs[entry.owner] { _ = try m.liveTD(owner.td, register: TDXOperand.rcx) }
      guard entry.mapping == nil else { throw TDXStatus.mmioPageAlreadyMapped.with(operand: TDXOperand.rcx) }
      m.mmiomt[hpa.pfn]?.attributes = attributes
    }
  }

  /// The module has relayed a TDISP response showing the TDI behind `devif` in `state`
  /// (LOCK_INTERFACE, START_INTERFACE, STOP_INTERFACE or GET_DEVICE_INTERFACE_STATE via
  /// TDH.DEVIF.REQUEST/RESPONSE). The platform calls this whenever the TDI's state changes.
  /// - Throws: `TDX_OPERAND_INVALID` (RCX) for an unknown DEVIF.
  public mutating func observeTDISPState(devif: DevifID, state: DevifTDISPState) throws(TDXStatus) {
    guard devifs[devif] != nil else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx) }
    devifs[devif]?.tdispState = state
    trace.emit(.tdx, "devif \(devif) TDISP state \(state)")
  }

  /// The IDE stream carrying `devif`'s traffic has been blocked (the root port's IDE engine
  /// reported an integrity failure, or the host stopped the stream). A blocked stream stays
  /// blocked for the life of the DEVIF: the TDI must be set up again.
  /// - Throws: `TDX_OPERAND_INVALID` (RCX) for an unknown DEVIF.
  public mutating func ideStreamBlocked(devif: DevifID) throws(TDXStatus) {
    guard devifs[devif] != nil else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx) }
    devifs[devif]?.streamBlocked = true
    trace.emit(.tdx, "devif \(devif) IDE stream blocked")
  }
}
