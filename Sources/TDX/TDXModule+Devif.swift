import KernelCore

/// An MMIO metadata-table index (`mmiomt_idx_t` in `src/common/data_structures/tdxio/
/// mmiomt_defs.h`): bits 2:0 the level (0 ... 4, 5 = the root), bits 11:3 reserved, bits 51:12
/// the host address, bits 63:52 reserved.
public struct MMIOMTIndex: Hashable, Sendable, CustomStringConvertible {
  /// `MMIOMT_L_ROOT`.
  public static let rootLevel: UInt8 = 5
  public var address: HPA
  public var level: UInt8
  public init(address: HPA, level: UInt8) { self.address = address; self.level = level }

  /// The register encoding.
  public var rawValue: UInt64 { (address.rawValue & 0x000F_FFFF_FFFF_F000) | UInt64(level & 0x7) }
  /// Decodes a register; `nil` when reserved bits are set (`is_valid_mmiomt_idx()`).
  public init?(rawValue: UInt64) {
    guard rawValue & 0xFFF0_0000_0000_0FF8 == 0 else { return nil }
    address = HPA(rawValue & ~0xFFF)
    level = UInt8(rawValue & 0x7)
  }
  public var description: String { "mmiomt_idx L\(level) 0x\(String(address.rawValue, radix: 16))" }
}

/// The type TDH.MMIO.MT.SET gives an entry (`mmiomt_type_e`): `MMIOMT_QNODE = 0`,
/// `MMIOMT_DATA = 1`.
public enum MMIOMTEntryType: UInt8, Hashable, Sendable {
  case qnode = 0
  case data = 1
}

/// TDH.MMIO.MT.SET's RDX, `mmiomt_set_info_t` (`src/common/data_structures/tdxio/mmiomt_defs.h`,
/// commit `6e66b9d2`): `type:2, rsvd1:10, function_id:32, rsvd2:20`, so bits 1:0 the type,
/// bits 43:12 the function id, bits 11:2 and 63:44 reserved. Kept raw: the module verifies
/// it only after the MMIOMT walk (``TDXModule/tdhMMIOMTSet(index:setInfo:)``).
public struct MMIOMTSetInfo: Hashable, Sendable, CustomStringConvertible {
  /// `rsvd1` (bits 11:2) and `rsvd2` (bits 63:44).
  public static let reservedMask: UInt64 = 0xFFFF_F000_0000_0FFC
  public var rawValue: UInt64
  public init(rawValue: UInt64) { self.rawValue = rawValue }
  public init(type: MMIOMTEntryType, function: DeviceInterfaceID) {
    rawValue = UInt64(function.rawValue) << 12 | UInt64(type.rawValue)
  }
  /// `type` (bits 1:0); `nil` for 2 and 3 (`type > MMIOMT_DATA`).
  public var type: MMIOMTEntryType? { MMIOMTEntryType(rawValue: UInt8(rawValue & 0x3)) }
  /// `function_id` (bits 43:12).
  public var function: DeviceInterfaceID { DeviceInterfaceID(UInt32(truncatingIfNeeded: rawValue >> 12)) }
  public var description: String {
    guard rawValue & Self.reservedMask == 0, let type else { return "set info 0x\(String(rawValue, radix: 16))" }
    return type == .data ? "DATA \(function)" : "QNODE"
  }
}

extension TDXModule {
  /// The most pages one host population (``tdhMMIOMTAdd(devif:first:count:attributes:)``)
  /// assigns: 2^24 pages, a 64 GiB BAR. A bound of the model's host helper, not of the module.
  public static let maxMTAddPages: UInt64 = 1 << 24

  /// The page the model hands TDH.MMIO.MT.ADD when the host populates the table: the model
  /// keeps no PAMT, so the leaf only checks that the page is 4 KiB aligned and not 0.
  static let mmiomtPagePlaceholder = HPA(0x1000)

  // MARK: DEVIF

  /// `TDH.DEVIF.CREATE` (leaf 137): creates the DEVIF through which `td` owns the TDI with
  /// function id `interface`. Its TDISP state starts CONFIG_UNLOCKED; the platform relays later
  /// states with ``observeTDISPState(devif:state:)``.
  ///
  /// ABI (`tdh_devif_create(devif_id, tdr_pa, devifcs_root_pa, td_tdisp_msg_buffer_pa,
  /// vmm_tdisp_msg_buffer_pa)`, `tdh_devif_create.c`, commit `6e66b9d2`): RCX the DEVIF id
  /// (function id in bits 63:32, DEVIF type in bits 31:24, IOMMU and stream ids below), RDX the
  /// TDR, R8 the DEVIFCS page, R9 and R10 the TD's and the VMM's TDISP message buffers.
  /// Checks, in the module's order: busy (injected); the DEVIFCS page (R8, not modelled);
  /// the TDR (`TDX_OPERAND_INVALID`, RDX) and the TD state (`TDX_TD_FATAL`); the two buffers
  /// (R9, R10, not modelled); a valid function id of type PF/VF (`TDX_OPERAND_INVALID`, RCX);
  /// no DEVIF yet for the function id (`TDX_DEVIFMT_ALREADY_PRESENT`, RCX). Not modelled (no
  /// state for them): the IOMMU configuration, the IDE stream state
  /// (`TDX_IDE_STREAM_INVALID_STATE`), the requester-id range and the SPDM session.
  public mutating func tdhDevifCreate(td: TDID, interface: DeviceInterfaceID) throws(TDXStatus) -> DevifID {
    try traced("TDH.DEVIF.CREATE td \(td) \(interface)", [.id("td", td), .text("interface", "\(interface)")]) { (m: inout TDXModule) throws(TDXStatus) -> DevifID in
      _ = try m.liveTD(td, register: TDXOperand.rdx, leaf: "TDH.DEVIF.CREATE")
      guard interface.isValid else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
          .because("TDH.DEVIF.CREATE", "devif_id invalid: function id \(interface) has reserved bits")
      }
      guard m.devif(for: interface) == nil else {
        throw TDXStatus.devifmtAlreadyPresent.with(operand: TDXOperand.rcx)
          .because("TDH.DEVIF.CREATE", "DEVIFMT entry for \(interface) is present")
      }
      let id = m.nextDevif
      m.devifs[id] = DevifState(td: td, interface: interface)
      return id
    }
  }

  /// `TDH.DEVIF.REMOVE` (leaf 138): destroys a DEVIF. ABI: RCX the function id; outputs RCX,
  /// RDX, R8 (the two TDISP buffers and the TDR, released).
  ///
  /// Follows `tdh_devif_remove()` (`tdh_devif_remove.c`, commit `6e66b9d2`): busy (injected);
  /// a DEVIF exists for the function id (`TDX_DEVIFMT_NOT_PRESENT`, RCX); its TDISP state is
  /// CONFIG_UNLOCKED or its IDE stream is blocked (`TDX_DEVIF_INVALID_STATE`, RCX); no DMA
  /// remapping (`TDX_DEVIF_HAS_MAPPED_DMA`, not modelled); unless the TD is fatal, none of its
  /// pages is mapped (`TDX_DEVIF_HAS_MAPPED_MMIO`, RCX). The MMIOMT entries naming the function
  /// stay: the host resets them with TDH.MMIO.MT.SET.
  public mutating func tdhDevifRemove(devif: DevifID) throws(TDXStatus) {
    try traced("TDH.DEVIF.REMOVE devif \(devif)", [.id("devif", devif)]) { (m: inout TDXModule) throws(TDXStatus) in
      guard let object = m.devifs[devif] else {
        throw TDXStatus.devifmtNotPresent.with(operand: TDXOperand.rcx)
          .because("TDH.DEVIF.REMOVE", "tdh_devifmt_get_devifcs: no DEVIF \(devif)")
      }
      guard object.tdispState == .configUnlocked || object.streamBlocked else {
        throw TDXStatus.devifInvalidState.with(operand: TDXOperand.rcx)
          .because("TDH.DEVIF.REMOVE", "TDISP state (=\(object.tdispState)) is not CONFIG_UNLOCKED, or stream is not blocked")
      }
      let fatal = m.tds[object.td]?.isFatal ?? true
      guard fatal || object.mappedPages == 0 else {
        throw TDXStatus.devifHasMappedMMIO.with(operand: TDXOperand.rcx)
          .because("TDH.DEVIF.REMOVE", "DEVIF has mapped MMIO (\(object.mappedPages) page(s))")
      }
      m.devifs[devif] = nil
    }
  }

  // MARK: MMIO metadata table

  /// `TDH.MMIO.MT.ADD` (leaf 154): adds the 4 KiB page `page` to the MMIO metadata table, as
  /// the table page that the QNODE entry of `index` points to for `index.address` (for the
  /// root, the single L4 page). It describes no device page by itself: TDH.MMIO.MT.SET does.
  /// ABI: RCX the MMIOMT index, RDX the page.
  ///
  /// Follows `tdh_mmio_mt_add()` (`tdh_mmio_mt_add.c`, commit `6e66b9d2`): busy (injected);
  /// `is_valid_mmiomt_idx(idx, MMIOMT_L1)`: level 1 ... 5 (`TDX_OPERAND_INVALID`, RCX);
  /// `check_and_lock_explicit_4k_private_hpa()` on the page (`TDX_OPERAND_INVALID`, RDX; the
  /// model keeps no PAMT, so only alignment); `mmiomt_walk()` to the level
  /// (`TDX_MMIOMT_NOT_PRESENT`, RCX); the entry is a QNODE (`TDX_MMIO_INVALID_PAGE_METADATA`,
  /// RCX); its pointer is not present yet (the same status).
  public mutating func tdhMMIOMTAdd(index: MMIOMTIndex, page: HPA) throws(TDXStatus) {
    try traced("TDH.MMIO.MT.ADD \(index) page \(page)", [.text("index", "\(index)"), .hpa(page)]) { (m: inout TDXModule) throws(TDXStatus) in
      try m.mmioMTAddChecked(index: index, page: page)
    }
  }

  mutating func mmioMTAddChecked(index: MMIOMTIndex, page: HPA) throws(TDXStatus) {
    guard (1...MMIOMTIndex.rootLevel).contains(index.level) else {
      throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
        .because("TDH.MMIO.MT.ADD", "Invalid mmiomt_idx: level \(index.level) not in 1...5")
    }
    guard page.isPageAligned, page.rawValue != 0 else {
      throw TDXStatus.operandInvalid.with(operand: TDXOperand.rdx)
        .because("TDH.MMIO.MT.ADD", "check_and_lock_explicit_4k_private_hpa: page \(page)")
    }
    if index.level < MMIOMTIndex.rootLevel {
      try mmiomtWalk(index.address, pageLevel: index.level, leaf: "TDH.MMIO.MT.ADD")
      if let level = SEPTLevel(rawValue: index.level),
         let data = mmiomt[PFN(index.address.pfn.rawValue & ~(level.pages - 1))], data.level == level {
        throw TDXStatus.mmioInvalidPageMetadata.with(operand: TDXOperand.rcx)
          .because("TDH.MMIO.MT.ADD", "MMIOMT entry type is MMIOMT_DATA, not MMIOMT_QNODE")
      }
    }
    let child = MMIOMTNode.covering(index.address.rawValue, level: index.level - 1)
    guard !mmiomtPages.contains(child) else {
      throw TDXStatus.mmioInvalidPageMetadata.with(operand: TDXOperand.rcx)
        .because("TDH.MMIO.MT.ADD", "MMIOMT parent entry is already mapped (\(child) present)")
    }
    mmiomtPages.insert(child)
  }

  /// The table pages of levels 4 down to `pageLevel` that cover `address` are all present
  /// (`mmiomt_walk()`; `TDX_MMIOMT_NOT_PRESENT`, RCX), and no DATA entry lies above.
  func mmiomtWalk(_ address: HPA, pageLevel: UInt8, leaf: StaticString) throws(TDXStatus) {
    for level in stride(from: UInt8(4), through: pageLevel, by: -1) {
      let node = MMIOMTNode.covering(address.rawValue, level: level)
      guard mmiomtPages.contains(node) else {
        throw TDXStatus.mmiomtNotPresent.with(operand: TDXOperand.rcx).because(leaf, "mmiomt_walk: no \(node)")
      }
      if level > pageLevel, let above = SEPTLevel(rawValue: level),
         let data = mmiomt[PFN(address.pfn.rawValue & ~(above.pages - 1))], data.level == above {
        throw TDXStatus.mmiomtNotPresent.with(operand: TDXOperand.rcx)
          .because(leaf, "mmiomt_walk: DATA entry at \(above) above level \(pageLevel)")
      }
    }
  }

  /// `TDH.MMIO.MT.SET` (leaf 155): makes the entry of `index` (level 0, 1 or 2) a DATA entry
  /// for function `function` — this is what assigns a device page (4 KiB, or a 2 MiB / 1 GiB
  /// block) to a DEVIF — or turns a DATA entry back into an empty QNODE. ABI: RCX the index,
  /// RDX `mmiomt_set_info_t` (``MMIOMTSetInfo``).
  ///
  /// Follows `tdh_mmio_mt_set()` (`tdh_mmio_mt_set.c`, commit `6e66b9d2`): busy (injected);
  /// level 0 ... 2 (`TDX_OPERAND_INVALID`, RCX); `mmiomt_walk()` (`TDX_MMIOMT_NOT_PRESENT`, RCX);
  /// only then "Verify MMIOMT_SET_INFO": reserved bits, type above DATA, QNODE with a function
  /// id, or DATA without one (`TDX_OPERAND_INVALID`, RDX); to QNODE: the entry is DATA and not
  /// mapped; to DATA: the entry is a QNODE with no table page below it (both
  /// `TDX_MMIO_INVALID_PAGE_METADATA`, operand MMIOMT); to DATA: a DEVIF exists for the
  /// function (`TDX_DEVIFMT_NOT_PRESENT`, RDX).
  public mutating func tdhMMIOMTSet(index: MMIOMTIndex, setInfo: MMIOMTSetInfo) throws(TDXStatus) {
    let type = setInfo.type
    try traced("TDH.MMIO.MT.SET \(index) \(setInfo)",
               [.text("index", "\(index)"), .text("type", type == .data ? "DATA" : type == .qnode ? "QNODE" : "\(setInfo)")]
                 + (type == .data ? [.text("function", "\(setInfo.function)")] : [])) { (m: inout TDXModule) throws(TDXStatus) in
      try m.mmioMTSetChecked(index: index, setInfo: setInfo)
    }
  }

  /// ``tdhMMIOMTSet(index:setInfo:)`` with a well-formed set info.
  public mutating func tdhMMIOMTSet(index: MMIOMTIndex, type: MMIOMTEntryType, function: DeviceInterfaceID) throws(TDXStatus) {
    try tdhMMIOMTSet(index: index, setInfo: MMIOMTSetInfo(type: type, function: function))
  }

  mutating func mmioMTSetChecked(index: MMIOMTIndex, setInfo: MMIOMTSetInfo) throws(TDXStatus) {
    guard let level = SEPTLevel(rawValue: index.level), index.address.isAligned(to: level.size) else {
      throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
        .because("TDH.MMIO.MT.SET", "MMIOMT index \(index) is not valid (level above L2 or address not aligned)")
    }
    try mmiomtWalk(index.address, pageLevel: level.rawValue, leaf: "TDH.MMIO.MT.SET")
    let function = setInfo.function
    guard setInfo.rawValue & MMIOMTSetInfo.reservedMask == 0, let type = setInfo.type,
          (type == .qnode) == (function.rawValue == 0) else {
      throw TDXStatus.operandInvalid.with(operand: TDXOperand.rdx)
        .because("TDH.MMIO.MT.SET", "Invalid MMIOMT set info (0x\(String(setInfo.rawValue, radix: 16)))")
    }
    let first = index.address.pfn
    let existing = mmiomt[first].flatMap { $0.level == level ? $0 : nil }
    switch type {
    case .qnode:
      guard let existing, existing.mapping == nil else {
        throw TDXStatus.mmioInvalidPageMetadata.with(operand: TDXOperand.mmiomt)
          .because("TDH.MMIO.MT.SET", "MMIOMT type QNODE: entry type is not MMIOMT_DATA or mapped flag is not clear")
      }
      mmiomt[first] = nil
    case .data:
      let childPresent = level != .level4K && (0..<4).contains { (quarter: UInt64) in
        mmiomtPages.contains(MMIOMTNode.covering(index.address.rawValue + quarter * level.size / 4, level: level.rawValue - 1))
      }
      guard existing == nil, !childPresent else {
        throw TDXStatus.mmioInvalidPageMetadata.with(operand: TDXOperand.mmiomt)
          .because("TDH.MMIO.MT.SET", "MMIOMT type DATA: entry type is not MMIOMT_QNODE or one of the present bits is set")
      }
      guard function.isValid, devif(for: function) != nil else {
        throw (function.isValid ? TDXStatus.devifmtNotPresent : .operandInvalid).with(operand: TDXOperand.rdx)
          .because("TDH.MMIO.MT.SET", "tdh_devifmt_get_devifcs: no DEVIF for \(function)")
      }
      mmiomt[first] = MMIOMTEntry(function: function, level: level, mapping: nil)
    }
  }

  /// The host's population of the MMIO metadata table for one interface-report range, as a
  /// TDX Connect host driver does before the guest maps anything: for every 4 KiB page of
  /// the range that is TEE memory (no `IS_NON_TEE_MEM`), TDH.MMIO.MT.ADD of each table page
  /// still missing on the way down (root, L4 ... L1), then TDH.MMIO.MT.SET of the page's L0
  /// entry to DATA for the DEVIF's function id. Pages already DATA for that function are left
  /// as they are, so a second population after TDH.DEVIF.REMOVE / CREATE is harmless.
  ///
  /// This is not a leaf: the leaves are ``tdhMMIOMTAdd(index:page:)`` and
  /// ``tdhMMIOMTSet(index:type:function:)``; this runs them in order, all or nothing, with
  /// one summary trace line. The host driver itself refuses (the model's own checks,
  /// `TDX_OPERAND_INVALID`) an unknown DEVIF (RDX), an unaligned first page (RCX), a count of 0
  /// or above ``maxMTAddPages`` (R8), reserved attribute bits (R9).
  /// - Throws: as above, or the first failing leaf's status.
  public mutating func tdhMMIOMTAdd(devif: DevifID, first: HPA, count: UInt64, attributes: MMIOMTAttributes) throws(TDXStatus) {
    let what = "TDH.MMIO.MT.ADD+SET devif \(devif) hpa \(first) pages \(count)"
    try traced(what, [.id("devif", devif), .hpa(first), .int("pages", count)]) { (m: inout TDXModule) throws(TDXStatus) in
      guard let object = m.devifs[devif] else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rdx).because("host MMIOMT population", "no DEVIF \(devif)")
      }
      guard first.isPageAligned else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx).because("host MMIOMT population", "first page \(first) not aligned")
      }
      guard count > 0, count <= TDXModule.maxMTAddPages else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.r8).because("host MMIOMT population", "page count \(count)")
      }
      guard attributes.isSubset(of: .all) else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.r9).because("host MMIOMT population", "reserved attribute bits")
      }
      guard count <= (1 << 40) &- first.pfn.rawValue else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx).because("host MMIOMT population", "range past the 52-bit address space")
      }
      // Shared MMIO is never assigned to a DEVIF: the TD can then never map it privately.
      if attributes.contains(.isNonTEEMem) { return }
      var work = m
      for i in 0..<count {
        let hpa = first.advanced(by: i * pageSize)
        if let data = work.mmiomt[hpa.pfn], data.level == .level4K, data.function == object.interface { continue }
        for level in stride(from: MMIOMTIndex.rootLevel, through: 1, by: -1)
        where !work.mmiomtPages.contains(MMIOMTNode.covering(hpa.rawValue, level: level - 1)) {
          try work.mmioMTAddChecked(index: MMIOMTIndex(address: hpa, level: level), page: TDXModule.mmiomtPagePlaceholder)
        }
        try work.mmioMTSetChecked(index: MMIOMTIndex(address: hpa, level: 0), setInfo: MMIOMTSetInfo(type: .data, function: object.interface))
      }
      m = work
    }
  }

  // MARK: What the module learns from TDISP and IDE

  /// The module has relayed a TDISP response showing the TDI behind `devif` in `state`: the
  /// model's stand-in for TDH.DEVIF.REQUEST / TDH.DEVIF.RESPONSE carrying LOCK_INTERFACE,
  /// START_INTERFACE, STOP_INTERFACE or GET_DEVICE_INTERFACE_STATE, which set
  /// `devifcs->tdisp_sts`. The platform calls this whenever the TDI's state changes.
  /// - Throws: `TDX_DEVIFMT_NOT_PRESENT` (RCX) for an unknown DEVIF.
  public mutating func observeTDISPState(devif: DevifID, state: DevifTDISPState) throws(TDXStatus) {
    guard devifs[devif] != nil else {
      throw TDXStatus.devifmtNotPresent.with(operand: TDXOperand.rcx).because("TDH.DEVIF.RESPONSE", "no DEVIF \(devif)")
    }
    devifs[devif]?.tdispState = state
    trace.emit(.tdxDevifState, "devif \(devif) TDISP state \(state)", [.id("devif", devif), .text("state", "\(state)")])
  }

  /// The IDE stream carrying `devif`'s traffic has been blocked (TDH.IDE.STREAM.BLOCK, leaf
  /// 133, or the root port's IDE engine reporting an integrity failure). The model keeps the
  /// flag on the DEVIF: it stays blocked for the DEVIF's life.
  /// - Throws: `TDX_DEVIFMT_NOT_PRESENT` (RCX) for an unknown DEVIF.
  public mutating func ideStreamBlocked(devif: DevifID) throws(TDXStatus) {
    guard devifs[devif] != nil else {
      throw TDXStatus.devifmtNotPresent.with(operand: TDXOperand.rcx).because("TDH.IDE.STREAM.BLOCK", "no DEVIF \(devif)")
    }
    devifs[devif]?.streamBlocked = true
    trace.emit(.tdxIDEStreamBlocked, "devif \(devif) IDE stream blocked", [.id("devif", devif)])
  }
}
