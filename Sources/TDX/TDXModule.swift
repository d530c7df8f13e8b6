import KernelCore
import HashTreeCollections

/// The TDX module: every TD's control structures and Secure EPT, the DEVIFs and the MMIO
/// metadata table, as one value.
///
/// The module is a black box behind its ABI: it knows nothing of KVM, VFIO or PCI. Its callers
/// are the host VMM's TDX glue (SEAMCALLs), the guest (TDCALLs and memory accesses), and the
/// platform, which relays what the module learns from TDISP responses and IDE events.
///
/// Every SEAMCALL validates all of its preconditions before it changes anything, so a call
/// that returns an error leaves the module as it was. Each call is atomic, so no other logical
/// processor can hold one of its operands: `TDX_OPERAND_BUSY` is never the module's own answer
/// here, but a choice of whoever drives the model (the platform's `Contention`).
public struct TDXModule: Hashable, Sendable {
  /// Every TD by handle (TDR + TDCS).
  public internal(set) var tds: TreeDictionary<TDID, TDState> = [:]
  /// Every live DEVIF by handle.
  public internal(set) var devifs: TreeDictionary<DevifID, DevifState> = [:]
  /// The MMIO metadata table's DATA entries (`mmiomt_data_t`), by the first host page they
  /// describe: which function owns the device page, and where it is mapped. Kept as runs of
  /// pages (``MMIOMT``): no state for a page of no BAR, one run for a BAR mapped in order.
  public internal(set) var mmiomt = MMIOMT()
  /// The MMIO metadata table's pages, added by TDH.MMIO.MT.ADD: a page at a level holds the
  /// entries of that level for the address range it covers (see ``MMIOMTNode``).
  public internal(set) var mmiomtPages = MMIOMTPages()
  /// The handle a new TD gets: the lowest one no live TD has, so the module's state holds no
  /// counter and two modules with the same TDs compare equal.
  var nextTD: TDID { Self.lowestFree(tds.keys) }
  /// The handle a new DEVIF gets, chosen as ``nextTD`` is.
  var nextDevif: DevifID { Self.lowestFree(devifs.keys) }

  static func lowestFree<Tag, Keys: Sequence>(_ used: Keys) -> ObjectID<Tag> where Keys.Element == ObjectID<Tag> {
    let taken = Set(used.map(\.rawValue))
    var candidate: UInt32 = 1
    while taken.contains(candidate) { candidate += 1 }
    return ObjectID<Tag>(candidate)
  }

  /// What the module did, call by call. Excluded from equality.
  public var trace: Trace

  public init(trace: Trace = Trace()) { self.trace = trace }

  /// The Secure-EPT leaf entry at `gpa` in `td`; `nil` for FREE (or no such TD).
  public func septEntry(td: TDID, gpa: GPA) -> SEPTEntry? { tds[td]?.sept[gpa] }

  /// The live DEVIF bound to `interface`, if any (the module's DEVIFMT lookup by function id).
  public func devif(for interface: DeviceInterfaceID) -> DevifID? {
    devifs.first(where: { $0.value.interface == interface })?.key
  }

  /// The MMIOMT DATA entry describing host page `pfn`, at whatever level it was set.
  public func mmiomtEntry(covering pfn: PFN) -> (first: PFN, entry: MMIOMTEntry)? { mmiomt.entry(covering: pfn) }
}

/// A TD's control state: TDR/TDCS fields the model needs, its vCPUs, and its Secure EPT.
public struct TDState: Hashable, Sendable {
  /// The current TLB epoch (`TDCS.TD_EPOCH`); starts at 1, advanced by TDH.MEM.TRACK.
  public internal(set) var epoch: UInt64 = 1
  /// `TDCS.REFCOUNT[2]`: how many vCPUs are in TDX non-root mode having entered in an epoch
  /// of even (index 0) or odd (index 1) parity. Two counters suffice because TRACK refuses
  /// to advance while the previous epoch's counter is non-zero.
  public internal(set) var refcount: [UInt32] = [0, 0]
  /// Every vCPU, by index.
  public internal(set) var vcpus: [TDVCPUState]
  /// Private GPA -> leaf entry. Absent means FREE. Kept as runs of pages (``SecureEPT``).
  public internal(set) var sept = SecureEPT()
  /// MMIO entries in MMIO_BLOCKED (their `bepoch` refers to an epoch the TD must keep).
  public internal(set) var blockedEntries = 0
  /// Set once the TD has hit a fatal error (a guest access to an unaccepted MMIO page):
  /// no vCPU runs again and every SEAMCALL that checks the TD state fails `TDX_TD_FATAL`.
  public internal(set) var isFatal = false
  /// `TDR.RND_HPA_OFFSET`: the offset the module adds to host MMIO addresses in the TD's
  /// interface reports (`devifcs->mmio_reporting_offset`) and takes off the "MMIO offset" of
  /// TDG.MMIO.ACCEPT. The module picks it at random; the model uses 0, so the offset a guest
  /// passes equals the host address.
  public internal(set) var mmioReportingOffset: UInt64 = 0

  init(vcpuCount: UInt32) { vcpus = Array(repeating: TDVCPUState(), count: Int(vcpuCount)) }
}

/// A vCPU's TLB-tracking state (`TDVPS.VCPU_EPOCH` and whether it is in TDX non-root mode).
public struct TDVCPUState: Hashable, Sendable {
  /// Between TDH.VP.ENTER and the TD exit that returns from it.
  public internal(set) var inGuest = false
  /// The TD epoch at the last TDH.VP.ENTER; counted in `refcount[enteredEpoch & 1]` while
  /// `inGuest`.
  public internal(set) var enteredEpoch: UInt64 = 0
}

/// One Secure-EPT leaf entry, keyed in ``TDState/sept`` by the GPA of its first byte.
public struct SEPTEntry: Hashable, Sendable {
  public internal(set) var state: SEPTState
  public internal(set) var level: SEPTLevel
  public internal(set) var hpa: HPA
  /// The TD epoch when the entry was blocked (meaningful in BLOCKED / MMIO_BLOCKED). For MMIO
  /// the module keeps it in the page's MMIOMT entry (`mmiomt_data_t.bepoch`); the model keeps
  /// it here, next to the entry it belongs to.
  public internal(set) var bepoch: UInt64 = 0
}

/// A DEVIF: the module's view of one TDI assigned to one TD.
public struct DevifState: Hashable, Sendable {
  public let td: TDID
  public let interface: DeviceInterfaceID
  /// The TDI's TDISP state as last relayed (`observeTDISPState(devif:state:)`).
  public internal(set) var tdispState: DevifTDISPState = .configUnlocked
  /// The IDE stream carrying the TDI's traffic has been blocked (`ideStreamBlocked(devif:)`).
  public internal(set) var streamBlocked = false
  /// `DEVIFCS.MMIO_PAGE_CNT`: how many TDH.MMIO.MAP calls of its pages are not yet undone by
  /// TDH.MMIO.UNMAP (one per call, whatever the level).
  public internal(set) var mappedPages: UInt64 = 0
}

/// One DATA entry of the MMIO metadata table (`mmiomt_data_t`): the device page (or 2 MiB /
/// 1 GiB block) belongs to the DEVIF of `function`, and is mapped or not.
public struct MMIOMTEntry: Hashable, Sendable {
  /// The function id TDH.MMIO.MT.SET assigned; the DEVIF is looked up by it at MAP time.
  public let function: DeviceInterfaceID
  /// The level the entry was set at: MAP must map it at this level.
  public let level: SEPTLevel
  /// The TD and GPA whose Secure-EPT entry maps the page (MMIO_PENDING, MMIO_MAPPED or
  /// MMIO_BLOCKED); `nil` while unmapped. The module keeps a `mapped` bit; the model also
  /// remembers where, for the invariants.
  public internal(set) var mapping: MMIOMTMapping?
}

/// A page of the MMIO metadata table. The table is a radix tree over host addresses
/// (`mmiomt_idx_t` in `mmiomt_defs.h`): an entry at level L covers `2^(12 + 9L)` bytes
/// (L0 4 KiB, L1 2 MiB, L2 1 GiB, L3 512 GiB, L4 256 TiB); each entry of level L >= 1 is a
/// QNODE of four pointers, each to a page of level L - 1 covering a quarter of it. The root's
/// single pointer leads to the one L4 page. A page of level L covers `base ..< base + span`.
public struct MMIOMTNode: Hashable, Comparable, Sendable, CustomStringConvertible {
  /// The level of the entries in the page (0 ... 4).
  public let level: UInt8
  /// The first host address the page covers.
  public let base: UInt64
  public init(level: UInt8, base: UInt64) { self.level = level; self.base = base }

  /// Bytes covered by one entry of `level` (0 ... 4).
  static func entrySpan(_ level: UInt8) -> UInt64 { UInt64(1) << (12 + 9 * UInt64(level)) }
  /// Bytes covered by a page of this level: a quarter of one entry of the level above.
  public var span: UInt64 { level >= 4 ? UInt64(1) << 52 : MMIOMTNode.entrySpan(level + 1) / 4 }
  /// The page of `level` that would cover `address`.
  static func covering(_ address: UInt64, level: UInt8) -> MMIOMTNode {
    let span = level >= 4 ? UInt64(1) << 52 : entrySpan(level + 1) / 4
    return MMIOMTNode(level: level, base: level >= 4 ? 0 : address & ~(span - 1))
  }
  public static func < (a: Self, b: Self) -> Bool { (a.level, a.base) < (b.level, b.base) }
  public var description: String { "MMIOMT L\(level) page for 0x\(String(base, radix: 16))" }
}

/// Where an MMIO page is mapped.
public struct MMIOMTMapping: Hashable, Sendable {
  public let td: TDID
  public let gpa: GPA
}

extension TDXModule {
  /// The TD `td`, which must exist and be alive: the module's
  /// `check_lock_and_map_explicit_tdr()` (a handle naming no TDR fails with the register as
  /// operand) then the TD-state check (`tdr->management_fields.fatal` -> `TDX_TD_FATAL`, no
  /// operand). The model has no PAMT, so "names no TDR" is one status, `TDX_OPERAND_INVALID`.
  func liveTD(_ td: TDID, register: UInt32, leaf: StaticString) throws(TDXStatus) -> TDState {
    guard let state = tds[td] else {
      throw TDXStatus.operandInvalid.with(operand: register).because(leaf, "check_lock_and_map_explicit_tdr: not a TDR page")
    }
    guard !state.isFatal else { throw TDXStatus.tdFatal.because(leaf, "TDR state is fatal") }
    return state
  }

  /// Records a call's outcome in the trace and passes a failure on: the event `event`
  /// (`tdx:seamcall` by default) with the leaf, the call's operands `fields` and the status.
  mutating func traced<T>(_ what: @autoclosure () -> String, _ fields: @autoclosure () -> [TraceField] = [],
                          event: TraceEventName = .tdxSeamcall, tracingSuccess: Bool = true,
                          _ body: (inout TDXModule) throws(TDXStatus) -> T) throws(TDXStatus) -> T {
    do {
      let result = try body(&self)
      if tracingSuccess {
        trace.emit(event, "\(Self.withLeafNumber(what())) -> TDX_SUCCESS", Self.callFields(what(), fields(), status: .success))
      }
      return result
    } catch {
      trace.emit(event, "\(Self.withLeafNumber(what())) -> \(error)", Self.callFields(what(), fields(), status: error))
      throw error
    }
  }

  /// A call's trace fields: `leaf` (when the call is a SEAMCALL or TDCALL), its operands,
  /// `status` and a non-zero `operand`.
  static func callFields(_ call: String, _ operands: [TraceField], status: TDXStatus) -> [TraceField] {
    let leaf = withLeafNumber(String(call.prefix { $0 != " " }))
    return (leaf.contains("(") ? [TraceField.text("leaf", leaf)] : []) + operands + [.text("status", status.name)]
      + (status.operand == 0 ? [] : [.hex("operand", UInt64(status.operand))])
  }

  /// `TDH.MMIO.MAP td …` becomes `TDH.MMIO.MAP(158) td …`: a trace names each call by its ABI
  /// name and the leaf number in RAX.
  static func withLeafNumber(_ call: String) -> String {
    let name = call.prefix { $0 != " " }
    let leaf = SeamcallLeaf.allNamed.first { $0.name == name }?.leaf.rawValue
      ?? (name == "\(TdcallLeaf.mmioAccept)" ? TdcallLeaf.mmioAccept.rawValue : nil)
    guard let leaf else { return call }
    return "\(name)(\(leaf))" + call.dropFirst(name.count)
  }

  // MARK: TD creation and teardown

  /// The most vCPUs a TD may have: the module's `MAX_VCPUS_PER_TD` metadata field (KVM reads it
  /// as `td_conf.max_vcpus_per_td`, a `u16`); the model takes the largest such value.
  public static let maxVCPUsPerTD = UInt32(UInt16.max)

  /// Creates a TD with `vcpuCount` vCPUs, ready to run.
  ///
  /// Mirrors, as one step, the build sequence KVM's `tdx_td_init()` / `tdx_vcpu_init()`
  /// (`arch/x86/kvm/vmx/tdx.c`) drives: TDH.MNG.CREATE, TDH.MNG.KEY.CONFIG, TDH.MNG.ADDCX,
  /// TDH.MNG.INIT, TDH.VP.CREATE/INIT per vCPU, TDH.MR.FINALIZE. Private-MMIO behaviour does
  /// not depend on the steps in between.
  /// - Throws: `TDX_OPERAND_INVALID` (operand RCX) for zero vCPUs, or more than
  ///   ``maxVCPUsPerTD`` (TD_PARAMS' `max_vcpus`, which TDH.MNG.INIT checks, is 16 bits).
  public mutating func tdhMngCreate(vcpuCount: UInt32) throws(TDXStatus) -> TDID {
    try traced("TDH.MNG.CREATE vcpus \(vcpuCount)", [.int("vcpus", vcpuCount)]) { (m: inout TDXModule) throws(TDXStatus) -> TDID in
      guard vcpuCount > 0, vcpuCount <= TDXModule.maxVCPUsPerTD else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
          .because("TDH.MNG.INIT", "max_vcpus \(vcpuCount) is 0 or above MAX_VCPUS_PER_TD (\(TDXModule.maxVCPUsPerTD))")
      }
      let id = m.nextTD
      m.tds[id] = TDState(vcpuCount: vcpuCount)
      return id
    }
  }

  /// Tears a TD down and reclaims everything it held: its Secure EPT, the MMIOMT mappings
  /// into it, and its DEVIFs. MMIOMT DATA entries stay: the table is the platform's, not the
  /// TD's (TDH.DEVIF.REMOVE does not clear them either).
  ///
  /// Mirrors, as one step, KVM's VM destruction (`tdx_mmu_release_hkid()`,
  /// `tdx_vm_free()`): TDH.VP.FLUSH, TDH.MNG.VPFLUSHDONE, TDH.MNG.KEY.FREEID and
  /// TDH.PHYMEM.PAGE.RECLAIM of every page. Works on a fatal TD: that is how one is cleaned up.
  /// - Throws: `TDX_OPERAND_INVALID` (operand RCX) for an unknown TD.
  public mutating func tdTeardown(td: TDID) throws(TDXStatus) {
    try traced("teardown td \(td)", [.id("td", td)], event: .tdxTeardown) { (m: inout TDXModule) throws(TDXStatus) in
      guard m.tds[td] != nil else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
          .because("TDH.MNG.KEY.FREEID", "check_lock_and_map_explicit_tdr: td \(td) is not a TDR page")
      }
      for (id, devif) in m.devifs where devif.td == td { m.devifs[id] = nil }
      // Pages of other TDs' DEVIFs cannot be mapped here (MAP checks the owner), but clear any
      // mapping into this TD defensively so the table never points at a dead TD.
      m.mmiomt.unmapAll(td: td)
      m.tds[td] = nil
    }
  }

}
