import Testing
import KernelCore
@testable import TDX

/// TDH.MMIO.MAP against `tdh_mmio_map()` (`src/vmm_dispatcher/api_calls/tdxio/tdh_mmio_map.c`,
/// intel/tdx-module commit 6e66b9d2).
@Suite struct MMIOMapTests {
  /// Each precondition of TDH.MMIO.MAP, violated alone, in the module's order.
  enum Violation: String, CaseIterable, Sendable, Comparable {
    case busy, unknownTD, fatalTD, unalignedGPA, unalignedHPA, leafAbove, entryNotFree, noMMIOMTPage,
         notData, mappedElsewhere, devifRemoved, otherTDsDevif, streamBlocked
    static func < (a: Self, b: Self) -> Bool { allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)! }
  }

  /// The status and the module line it follows.
  static func expected(_ v: Violation) -> TDXStatus {
    switch v {
    case .busy: .operandBusy.with(operand: TDXOperand.sept)                              // injected
    case .unknownTD: .operandInvalid.with(operand: TDXOperand.rdx)                       // check_lock_and_map_explicit_tdr(tdr_pa, OPERAND_ID_RDX, ...)
    case .fatalTD: .tdFatal                                                              // TDR fatal -> TDX_TD_FATAL
    case .unalignedGPA: .operandInvalid.with(operand: TDXOperand.rcx)                    // verify_page_info_input(...) -> OPERAND_ID_RCX
    case .unalignedHPA: .operandInvalid.with(operand: TDXOperand.r8)                     // shared_hpa_check_with_pwr_2_alignment -> OPERAND_ID_R8
    case .leafAbove: .eptWalkFailed.with(operand: TDXOperand.rcx)                        // lock_sept_check_and_walk_private_gpa(OPERAND_ID_RCX)
    case .entryNotFree: .eptEntryStateIncorrect.with(operand: TDXOperand.rcx)            // !sept_state_is_seamcall_leaf_allowed -> OPERAND_ID_RCX
    case .noMMIOMTPage: .mmiomtNotPresent.with(operand: TDXOperand.rcx)                  // mmiomt_walk errc -> OPERAND_ID_RCX
    case .notData, .mappedElsewhere: .mmioInvalidPageMetadata.with(operand: TDXOperand.rcx) // type != MMIOMT_DATA || data.mapped
    case .devifRemoved: .devifmtNotPresent.with(operand: TDXOperand.r8)                  // tdh_devifmt_get_devifcs(..., OPERAND_ID_R8, ...)
    case .otherTDsDevif: .mmioDevifOwnerMismatch.with(operand: TDXOperand.rdx)           // devifcs tdr_pa != tdr_pa -> OPERAND_ID_RDX
    case .streamBlocked: .ideStreamBlocked.with(operand: TDXOperand.r8)                  // stream_block == 1 -> OPERAND_ID_R8
    }
  }

  struct Call { var td: TDID; var gpa = Fixture.gpa; var level = SEPTLevel.level4K; var hpa = Fixture.bar }

  /// Sets the fixture up so that `v` is violated (and the call made with `call`).
  static func apply(_ v: Violation, _ f: inout Fixture, _ call: inout Call) throws {
    switch v {
    case .busy: f.module.busyInjections = [BusyInjection(.seamcall(.mmioMap), td: f.td, operand: TDXOperand.sept)]
    case .unknownTD: call.td = TDID(99)
    case .fatalTD:
      try f.map(GPA(0x9000_0000), Fixture.bar.advanced(by: 2 * pageSize))
      #expect(f.module.guestAccess(td: f.td, gpa: GPA(0x9000_0000)) == .killedTD)
    case .unalignedGPA: call.gpa = GPA(0x8000_1000); call.level = .level2M
    case .unalignedHPA: call.hpa = call.hpa.advanced(by: 0x10)
    case .leafAbove:   // forged: a 2M leaf covering the GPA
      f.module.tds[f.td]?.sept[GPA(0x8000_0000)] = SEPTEntry(state: .mmioMapped, level: .level2M, hpa: HPA(0x4000_0000))
      call.gpa = GPA(0x8000_1000)
    case .entryNotFree: try f.map(call.gpa, Fixture.bar.advanced(by: pageSize))
    case .noMMIOMTPage: call.hpa = HPA(0xFC00_0000)
    case .notData: call.hpa = Fixture.nonTEEPage
    case .mappedElsewhere: try f.map(GPA(0x9000_0000), call.hpa)
    case .devifRemoved:
      try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
      try f.module.tdhDevifRemove(devif: f.devif)
    case .otherTDsDevif: call.hpa = Fixture.otherBar
    case .streamBlocked: try f.module.ideStreamBlocked(devif: f.devif)
    }
  }

  @Test(arguments: Violation.allCases)
  func preconditionViolated(_ v: Violation) throws {
    var f = try Fixture()
    var call = Call(td: f.td)
    try Self.apply(v, &f, &call)
    var before = f.module
    before.busyInjections = []
    let got = status { () throws(TDXStatus) in try f.module.tdhMMIOMap(td: call.td, gpa: call.gpa, level: call.level, hpa: call.hpa) }
    #expect(got == Self.expected(v), "\(v.rawValue)")
    #expect(got?.reason?.function == (v == .busy ? nil : "TDH.MMIO.MAP"), "every refusal names the leaf")
    #expect(f.module == before, "a failed MAP changes nothing (\(v.rawValue))")
  }

  /// Two violations at once: the one the module checks first wins.
  @Test(arguments: [(Violation.unknownTD, Violation.unalignedHPA), (.unalignedGPA, .entryNotFree),
                    (.unalignedHPA, .noMMIOMTPage), (.entryNotFree, .otherTDsDevif), (.noMMIOMTPage, .streamBlocked),
                    (.notData, .streamBlocked), (.otherTDsDevif, .streamBlocked), (.fatalTD, .unalignedHPA)])
  func theEarlierCheckWins(_ first: Violation, _ second: Violation) throws {
    var f = try Fixture()
    var call = Call(td: f.td)
    try Self.apply(second, &f, &call)
    try Self.apply(first, &f, &call)
    let got = status { () throws(TDXStatus) in try f.module.tdhMMIOMap(td: call.td, gpa: call.gpa, level: call.level, hpa: call.hpa) }
    #expect(got == Self.expected(min(first, second)))
  }

  @Test func mapMakesEntryPendingAndRecordsTheMapping() throws {
    var f = try Fixture()
    try f.map()
    #expect(f.module.septEntry(td: f.td, gpa: Fixture.gpa) == SEPTEntry(state: .mmioPending, level: .level4K, hpa: Fixture.bar))
    #expect(f.module.mmiomt[Fixture.bar.pfn]?.mapping == MMIOMTMapping(td: f.td, gpa: Fixture.gpa))
    #expect(f.module.devifs[f.devif]?.mappedPages == 1)
    #expect(f.module.invariantViolations().isEmpty)
  }

  /// `tdh_mmio_map.c` checks no TDISP state: only the owner and the IDE stream block.
  @Test(arguments: DevifTDISPState.allCases)
  func mapChecksNoTDISPState(_ s: DevifTDISPState) throws {
    var f = try Fixture()
    try f.module.observeTDISPState(devif: f.devif, state: s)
    try f.map()
    #expect(f.state == .mmioPending)
  }

  /// `verify_page_info_input(gpa_mapping, LVL_PT, LVL_PDPT)`: the module maps 4K to 1G; the 4K
  /// limit is KVM's. A 2M block needs a 2M MMIOMT DATA entry (the walk is at the map level).
  @Test func aTwoMegabyteMappingAcceptedAndUsed() throws {
    var f = try Fixture()
    let block = HPA(0x2_0000_0000), gpa = GPA(0xC000_0000)
    try f.assign2M(block)
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOMap(td: f.td, gpa: gpa, level: .level4K, hpa: block) }
            == .mmiomtNotPresent.with(operand: TDXOperand.rcx), "no L0 page below a 2M DATA entry")
    try f.module.tdhMMIOMap(td: f.td, gpa: gpa, level: .level2M, hpa: block)
    #expect(f.module.devifs[f.devif]?.mappedPages == 1, "MMIO_PAGE_CNT counts MAP calls, not 4K pages")
    #expect(try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: gpa, level: .level2M, expectedHPA: block) == .accepted)
    // A 4K accept inside the accepted 2M leaf: case 1.1, operand the leaf's level (1).
    #expect(status { () throws(TDXStatus) in
      try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: gpa.advanced(by: pageSize), expectedHPA: block.advanced(by: pageSize))
    } == .pageAlreadyAccepted.with(operand: 1))
    #expect(f.module.guestAccess(td: f.td, gpa: gpa.advanced(by: 0x12_3456)) == .mapped(block.advanced(by: 0x12_3456)))
    #expect(f.module.invariantViolations().isEmpty)
  }
}

/// TDH.MMIO.BLOCK and TDH.MMIO.UNMAP against `tdh_mmio_block.c` and `tdh_mmio_unmap.c`.
@Suite struct MMIOBlockUnmapTests {
  @Test func blockRecordsTheCurrentEpoch() throws {
    var f = try Fixture()
    try f.mapAccepted()
    try f.module.tdhMemTrack(td: f.td)
    try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K)
    #expect(f.state == .mmioBlocked)
    #expect(f.module.septEntry(td: f.td, gpa: Fixture.gpa)?.bepoch == 2)
  }

  @Test func blockOfAnUnacceptedEntryIsAllowed() throws {
    var f = try Fixture()
    try f.map()
    try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K)
    #expect(f.state == .mmioBlocked)
  }

  enum BlockViolation: String, CaseIterable, Sendable { case unknownTD, unalignedGPA, free, alreadyBlocked, wrongLevel }

  /// Order: TDR (RDX), page info (RCX), walk, `sept_state_is_seamcall_leaf_allowed(TDH_MMIO_BLOCK_LEAF)`
  /// allows MMIO_MAPPED and MMIO_PENDING only (`seamcall_sept_state_lookup[159]`).
  @Test(arguments: BlockViolation.allCases)
  func blockPreconditionViolated(_ v: BlockViolation) throws {
    var f = try Fixture()
    var td = f.td, level = SEPTLevel.level4K, gpa = Fixture.gpa
    let expected: TDXStatus
    switch v {
    case .unknownTD: td = TDID(42); expected = .operandInvalid.with(operand: TDXOperand.rdx)
    case .unalignedGPA: level = .level2M; gpa = GPA(0x8000_1000); expected = .operandInvalid.with(operand: TDXOperand.rcx)
    case .free: expected = .eptEntryStateIncorrect.with(operand: TDXOperand.rcx)
    case .alreadyBlocked:
      try f.map()
      try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K)
      expected = .eptEntryStateIncorrect.with(operand: TDXOperand.rcx)
    case .wrongLevel:   // a 2M block request over a 4K leaf: the 2M entry is a non-leaf
      try f.map(); level = .level2M; expected = .eptEntryStateIncorrect.with(operand: TDXOperand.rcx)
    }
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOBlock(td: td, gpa: gpa, level: level) } == expected)
    #expect(f.module == before)
  }

  enum UnmapViolation: String, CaseIterable, Sendable { case free, notBlocked, notTracked, devifRemoved, tdiRun, tdiLocked, tdiError }

  /// Order: state MMIO_BLOCKED (`seamcall_sept_state_lookup[160]`), `is_tlb_and_iotlb_tracked`,
  /// `tdh_devifmt_get_devifcs(..., OPERAND_ID_RCX)`, `tdisp_sts != TDISP_STATE_CONFIG_UNLOCKED
  /// && stream_block != 1` -> TDX_DEVIF_TDISP_INVALID_STATE, all RCX. ERROR is not unlocked.
  @Test(arguments: UnmapViolation.allCases)
  func unmapPreconditionViolated(_ v: UnmapViolation) throws {
    var f = try Fixture()
    let expected: TDXStatus
    switch v {
    case .free:
      expected = .eptEntryStateIncorrect.with(operand: TDXOperand.rcx)
    case .notBlocked:
      try f.mapAccepted()
      try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
      expected = .eptEntryStateIncorrect.with(operand: TDXOperand.rcx)
    case .notTracked:
      try f.mapAccepted()
      try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K)
      try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
      expected = .tlbTrackingNotDone.with(operand: TDXOperand.rcx)
    case .devifRemoved:   // only a fatal TD's DEVIF can go while mapped; forged here
      try f.readyToUnmap()
      f.module.devifs[f.devif] = nil
      expected = .devifmtNotPresent.with(operand: TDXOperand.rcx)
    case .tdiRun, .tdiLocked, .tdiError:
      try f.readyToUnmap()
      try f.module.observeTDISPState(devif: f.devif, state: v == .tdiRun ? .run : v == .tdiLocked ? .configLocked : .error)
      expected = .devifTDISPInvalidState.with(operand: TDXOperand.rcx)
    }
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOUnmap(td: f.td, gpa: Fixture.gpa, level: .level4K) } == expected)
    #expect(f.module == before)
  }

  enum Untrusted: String, CaseIterable, Sendable { case configUnlocked, streamBlockedWhileRun, streamBlockedInError }

  @Test(arguments: Untrusted.allCases)
  func unmapOnceUnlockedOrStreamBlocked(_ u: Untrusted) throws {
    var f = try Fixture()
    try f.readyToUnmap()
    switch u {
    case .configUnlocked: break
    case .streamBlockedWhileRun, .streamBlockedInError:
      try f.module.observeTDISPState(devif: f.devif, state: u == .streamBlockedWhileRun ? .run : .error)
      try f.module.ideStreamBlocked(devif: f.devif)
    }
    #expect(try f.module.tdhMMIOUnmap(td: f.td, gpa: Fixture.gpa, level: .level4K) == Fixture.bar)
    #expect(f.state == nil)
    #expect(f.module.mmiomt[Fixture.bar.pfn]?.mapping == nil)
    #expect(f.module.devifs[f.devif]?.mappedPages == 0)
    #expect(f.module.invariantViolations().isEmpty)
  }
}

@Suite struct EpochTests {
  @Test func trackWhileAVCPURunsInThePreviousEpochIsBusy() throws {
    var f = try Fixture()
    try f.module.tdhVPEnter(td: f.td, vcpu: 0)      // enters in epoch 1
    try f.module.tdhMemTrack(td: f.td)              // 1 -> 2: epoch 0 is empty
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhMemTrack(td: f.td) }?.code == .previousTLBEpochBusy)
    #expect(f.module == before)
    try f.module.tdExit(td: f.td, vcpu: 0)
    try f.module.tdhMemTrack(td: f.td)
    #expect(f.module.tds[f.td]?.epoch == 3)
  }

  @Test func unmapWaitsForEveryVCPUToLeaveTheBlockEpoch() throws {
    var f = try Fixture()
    try f.mapAccepted()
    try f.module.tdhVPEnter(td: f.td, vcpu: 0)
    try f.module.tdhVPEnter(td: f.td, vcpu: 1)
    try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K)   // bepoch 1
    try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
    let unmap = { (m: inout TDXModule) in
      status { () throws(TDXStatus) in try m.tdhMMIOUnmap(td: f.td, gpa: Fixture.gpa, level: .level4K) }
    }
    let notDone = TDXStatus.tlbTrackingNotDone.with(operand: TDXOperand.rcx)
    #expect(unmap(&f.module) == notDone, "no TRACK yet")
    try f.module.tdhMemTrack(td: f.td)
    #expect(unmap(&f.module) == notDone, "both vCPUs still in epoch 1")
    try f.module.tdExit(td: f.td, vcpu: 0)
    try f.module.tdhVPEnter(td: f.td, vcpu: 0)
    #expect(unmap(&f.module) == notDone, "vCPU 1 still in epoch 1")
    try f.module.tdExit(td: f.td, vcpu: 1)
    #expect(f.module.tlbTracked(td: f.td, bepoch: 1))
    #expect(unmap(&f.module) == nil)
    #expect(f.state == nil)
  }

  @Test(arguments: [(UInt64(1), UInt64(1), UInt32(0), false), (1, 2, 0, true), (1, 2, 1, false),
                    (1, 3, 0, true), (2, 2, 0, false)])
  func trackedRule(bepoch: UInt64, epoch: UInt64, refcountOfBepoch: UInt32, tracked: Bool) {
    var s = TDState(vcpuCount: 1)
    s.epoch = epoch
    s.refcount[Int(bepoch & 1)] = refcountOfBepoch
    #expect(TDXModule.tracked(s, bepoch: bepoch) == tracked)
  }

  @Test func enteringARunningVCPUIsBusyAndExitingAStoppedOneIsInvalid() throws {
    var f = try Fixture()
    try f.module.tdhVPEnter(td: f.td, vcpu: 1)
    #expect(status { () throws(TDXStatus) in try f.module.tdhVPEnter(td: f.td, vcpu: 1) }
            == .operandBusy.with(operand: TDXOperand.tdvps))
    #expect(status { () throws(TDXStatus) in try f.module.tdhVPEnter(td: f.td, vcpu: 2) }
            == .operandInvalid.with(operand: TDXOperand.rcx))
    #expect(status { () throws(TDXStatus) in try f.module.tdExit(td: f.td, vcpu: 0) }
            == .operandInvalid.with(operand: TDXOperand.rcx))
    #expect(f.module.tds[f.td]?.refcount == [0, 1])
    #expect(f.module.invariantViolations().isEmpty)
  }
}

/// TDH.DEVIF.CREATE / REMOVE against `tdh_devif_create.c` / `tdh_devif_remove.c`.
@Suite struct DevifTests {
  @Test func removeWithMappedPagesFails() throws {
    var f = try Fixture()
    try f.map()
    try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifRemove(devif: f.devif) }
            == .devifHasMappedMMIO.with(operand: TDXOperand.rcx))
    #expect(f.module == before)
  }

  /// `tdisp_sts != TDISP_STATE_CONFIG_UNLOCKED && stream_block != 1` -> TDX_DEVIF_INVALID_STATE,
  /// checked before the mapped-page count.
  @Test(arguments: [DevifTDISPState.configLocked, .run, .error])
  func removeNeedsAnUnlockedTDIOrABlockedStream(_ s: DevifTDISPState) throws {
    var f = try Fixture()
    try f.map()
    try f.module.observeTDISPState(devif: f.devif, state: s)
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifRemove(devif: f.devif) }
            == .devifInvalidState.with(operand: TDXOperand.rcx))
    try f.module.ideStreamBlocked(devif: f.devif)
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifRemove(devif: f.devif) }
            == .devifHasMappedMMIO.with(operand: TDXOperand.rcx), "a blocked stream passes the state check")
  }

  /// `!tdr->management_fields.fatal && mmio_page_cnt`: a fatal TD's DEVIF goes even while mapped.
  @Test func aFatalTDsDevifCanBeRemovedWithPagesMapped() throws {
    var f = try Fixture()
    try f.map()
    #expect(f.module.guestAccess(td: f.td, gpa: Fixture.gpa) == .killedTD)
    try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
    try f.module.tdhDevifRemove(devif: f.devif)
    #expect(f.module.devifs[f.devif] == nil)
    #expect(f.module.invariantViolations().isEmpty)
  }

  @Test func removeKeepsTheMMIOMTEntries() throws {
    var f = try Fixture()
    try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
    try f.module.tdhDevifRemove(devif: f.devif)
    #expect(f.module.devifs[f.devif] == nil)
    #expect(f.module.mmiomt[Fixture.bar.pfn]?.function == Fixture.function)
    #expect(f.module.invariantViolations().isEmpty)
  }

  @Test func removeOfAnUnknownDevifIsNotPresent() throws {
    var f = try Fixture()
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifRemove(devif: DevifID(77)) }
            == .devifmtNotPresent.with(operand: TDXOperand.rcx))
  }

  @Test func createChecksTheTDThenTheFunctionIDThenTheDEVIFMT() throws {
    var f = try Fixture()
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifCreate(td: TDID(9), interface: DeviceInterfaceID(0x0300)) }
            == .operandInvalid.with(operand: TDXOperand.rdx))
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifCreate(td: f.otherTD, interface: DeviceInterfaceID(0x0100_0300)) }
            == .operandInvalid.with(operand: TDXOperand.rcx), "segment-valid bit set")
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifCreate(td: f.otherTD, interface: Fixture.function) }
            == .devifmtAlreadyPresent.with(operand: TDXOperand.rcx))
    try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
    try f.module.tdhDevifRemove(devif: f.devif)
    let again = try f.module.tdhDevifCreate(td: f.otherTD, interface: Fixture.function)
    // The lowest free handle: the module's state keeps no counter, so equal modules stay equal.
    #expect(again == f.devif)
    #expect(f.module.devif(for: Fixture.function) == again)
    #expect(f.module.devifs[again]?.tdispState == .configUnlocked, "DEVIFCS starts TDISP_STATE_CONFIG_UNLOCKED")
  }
}

/// TDH.MMIO.MT.ADD and TDH.MMIO.MT.SET against `tdh_mmio_mt_add.c` and `tdh_mmio_mt_set.c`.
@Suite struct MMIOMTTests {
  static let far = HPA(0x40_0000_0000)   // a region with no table pages yet

  @Test func mtAddBuildsTheTableTopDown() throws {
    var m = TDXModule()
    let page = HPA(0x5000)
    #expect(status { () throws(TDXStatus) in try m.tdhMMIOMTAdd(index: MMIOMTIndex(address: Self.far, level: 4), page: page) }
            == .mmiomtNotPresent.with(operand: TDXOperand.rcx), "the root has no L4 page yet")
    for level in stride(from: MMIOMTIndex.rootLevel, through: 1, by: -1) {
      try m.tdhMMIOMTAdd(index: MMIOMTIndex(address: Self.far, level: level), page: page)
      #expect(m.mmiomtPages.contains(MMIOMTNode.covering(Self.far.rawValue, level: level - 1)))
    }
    #expect(status { () throws(TDXStatus) in try m.tdhMMIOMTAdd(index: MMIOMTIndex(address: Self.far, level: 1), page: page) }
            == .mmioInvalidPageMetadata.with(operand: TDXOperand.rcx), "MMIOMT parent entry is already mapped")
    #expect(m.mmiomt.isEmpty, "MT.ADD assigns no device page")
  }

  enum AddViolation: String, CaseIterable, Sendable { case levelZero, levelSix, unalignedPage, missingAbove, dataEntry, present }

  @Test(arguments: AddViolation.allCases)
  func mtAddPreconditionViolated(_ v: AddViolation) throws {
    var f = try Fixture()
    var index = MMIOMTIndex(address: Fixture.bar, level: 1), page = HPA(0x7000)
    let expected: TDXStatus
    switch v {
    case .levelZero: index.level = 0; expected = .operandInvalid.with(operand: TDXOperand.rcx)   // is_valid_mmiomt_idx(idx, MMIOMT_L1)
    case .levelSix: index.level = 6; expected = .operandInvalid.with(operand: TDXOperand.rcx)
    case .unalignedPage: page = HPA(0x7010); expected = .operandInvalid.with(operand: TDXOperand.rdx)
    case .missingAbove: index = MMIOMTIndex(address: MMIOMTTests.far, level: 2); expected = .mmiomtNotPresent.with(operand: TDXOperand.rcx)
    case .dataEntry:
      try f.assign2M(HPA(0x2_0000_0000)); index = MMIOMTIndex(address: HPA(0x2_0000_0000), level: 1)
      expected = .mmioInvalidPageMetadata.with(operand: TDXOperand.rcx)                          // type != MMIOMT_QNODE
    case .present: expected = .mmioInvalidPageMetadata.with(operand: TDXOperand.rcx)             // parent->p
    }
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOMTAdd(index: index, page: page) } == expected)
    #expect(f.module == before)
  }

  enum SetViolation: String, CaseIterable, Sendable { case levelThree, missingPage, qnodeWithFunction, dataWithoutFunction,
                                                      qnodeOfQnode, qnodeOfMapped, dataOfData, dataOverChildren, noDevif }

  @Test(arguments: SetViolation.allCases)
  func mtSetPreconditionViolated(_ v: SetViolation) throws {
    var f = try Fixture()
    var index = MMIOMTIndex(address: Fixture.nonTEEPage, level: 0)
    var type = MMIOMTEntryType.data, function = Fixture.function
    let expected: TDXStatus
    switch v {
    case .levelThree: index.level = 3; expected = .operandInvalid.with(operand: TDXOperand.rcx)        // level > MMIOMT_L2
    case .missingPage: index.address = HPA(0xFC00_0000); expected = .mmiomtNotPresent.with(operand: TDXOperand.rcx)
    case .qnodeWithFunction: type = .qnode; expected = .operandInvalid.with(operand: TDXOperand.rdx)
    case .dataWithoutFunction: function = DeviceInterfaceID(0); expected = .operandInvalid.with(operand: TDXOperand.rdx)
    case .qnodeOfQnode: type = .qnode; function = DeviceInterfaceID(0); expected = .mmioInvalidPageMetadata.with(operand: TDXOperand.mmiomt)
    case .qnodeOfMapped:
      try f.map(); index.address = Fixture.bar; type = .qnode; function = DeviceInterfaceID(0)
      expected = .mmioInvalidPageMetadata.with(operand: TDXOperand.mmiomt)
    case .dataOfData: index.address = Fixture.bar; expected = .mmioInvalidPageMetadata.with(operand: TDXOperand.mmiomt)
    case .dataOverChildren: index = MMIOMTIndex(address: HPA(0xFE00_0000), level: 1); expected = .mmioInvalidPageMetadata.with(operand: TDXOperand.mmiomt)
    case .noDevif: function = DeviceInterfaceID(0x0700); expected = .devifmtNotPresent.with(operand: TDXOperand.rdx)
    }
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOMTSet(index: index, type: type, function: function) } == expected)
    #expect(f.module == before)
  }

  @Test func mtSetAssignsAndReleasesAPage() throws {
    var f = try Fixture()
    try f.module.tdhMMIOMTSet(index: MMIOMTIndex(address: Fixture.nonTEEPage, level: 0), type: .data, function: Fixture.function)
    #expect(f.module.mmiomt[Fixture.nonTEEPage.pfn]?.function == Fixture.function)
    try f.map(Fixture.gpa, Fixture.nonTEEPage)
    #expect(f.state == .mmioPending)
    try f.module.tdhMMIOMTSet(index: MMIOMTIndex(address: Fixture.bar.advanced(by: pageSize), level: 0), type: .qnode, function: DeviceInterfaceID(0))
    #expect(f.module.mmiomt[Fixture.bar.advanced(by: pageSize).pfn] == nil)
  }

  enum PopulateViolation: String, CaseIterable, Sendable { case unknownDevif, unaligned, zeroCount, reservedAttr, otherFunction, tooMany, overflow }

  /// The host helper: its own refusals, then the leaves' (a page DATA for another function).
  @Test(arguments: PopulateViolation.allCases)
  func populationRefusals(_ v: PopulateViolation) throws {
    var f = try Fixture()
    var devif = f.devif, first = HPA(0xFB00_0000), count: UInt64 = 2, attrs: MMIOMTAttributes = []
    let expected: TDXStatus
    switch v {
    case .unknownDevif: devif = DevifID(50); expected = .operandInvalid.with(operand: TDXOperand.rdx)
    case .unaligned: first = HPA(0xFB00_0004); expected = .operandInvalid.with(operand: TDXOperand.rcx)
    case .zeroCount: count = 0; expected = .operandInvalid.with(operand: TDXOperand.r8)
    case .reservedAttr: attrs = MMIOMTAttributes(rawValue: 1 << 9); expected = .operandInvalid.with(operand: TDXOperand.r9)
    case .otherFunction: first = Fixture.otherBar; expected = .mmioInvalidPageMetadata.with(operand: TDXOperand.mmiomt)
    case .tooMany: count = TDXModule.maxMTAddPages + 1; expected = .operandInvalid.with(operand: TDXOperand.r8)
    case .overflow: first = HPA(0xF_FFFF_FFFF_F000); expected = .operandInvalid.with(operand: TDXOperand.rcx)
    }
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOMTAdd(devif: devif, first: first, count: count, attributes: attrs) } == expected)
    #expect(f.module == before, "all or nothing")
  }

  @Test func populationIsIdempotentForItsOwnFunction() throws {
    var f = try Fixture()
    let before = f.module
    try f.module.tdhMMIOMTAdd(devif: f.devif, first: Fixture.bar, count: 4, attributes: [])
    #expect(f.module == before)
  }
}

/// TDG.MMIO.ACCEPT against `tdg_mmio_accept.c` (commit 6e66b9d2; `tdg_tdi_mmio_accept()`).
@Suite struct AcceptAndAccessTests {
  @Test func acceptMakesThePageMapped() throws {
    var f = try Fixture()
    try f.map()
    #expect(try f.module.tdgMMIOAccept(td: f.td, vcpu: 1, gpa: Fixture.gpa, expectedHPA: Fixture.bar) == .accepted)
    #expect(f.state == .mmioMapped)
    #expect(f.module.guestAccess(td: f.td, gpa: Fixture.gpa.advanced(by: 0x10)) == .mapped(Fixture.bar.advanced(by: 0x10)))
  }

  /// `mmio_pa_with_hkid.page_4k_num != cached_sept_entry.base` -> TDX_MMIO_INVALID_HPA_OFFSET, OPERAND_ID_RCX.
  @Test func acceptWithTheWrongHPAFailsAndLeavesItPending() throws {
    var f = try Fixture()
    try f.map()
    let before = f.module
    #expect(status { () throws(TDXStatus) in
      try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar.advanced(by: pageSize))
    } == .mmioInvalidHPAOffset.with(operand: TDXOperand.rcx))
    #expect(f.module == before)
    #expect(f.state == .mmioPending)
  }

  /// Case 4.2/4.3: not MMIO_PENDING and not guest-accessible -> `ept_violation_exit()`.
  @Test func acceptOfANotPresentPageExitsWithAnEPTViolation() throws {
    var f = try Fixture()
    #expect(try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar) == .eptViolation)
    try f.map()
    try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K)
    #expect(try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar) == .eptViolation)
  }

  /// Case 4.1: `api_error_with_operand_id(TDX_PAGE_ALREADY_ACCEPTED, page_level_entry)`, a warning.
  @Test func acceptingTwiceIsAlreadyAcceptedAWarning() throws {
    var f = try Fixture()
    try f.mapAccepted()
    let s = status { () throws(TDXStatus) in try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar) }
    #expect(s == .pageAlreadyAccepted.with(operand: 0))
    #expect(s?.isError == false, "success class: bit 63 clear")
    #expect(s?.code != .mmioPageAlreadyAccepted, "the header's TDX_MMIO_PAGE_ALREADY_ACCEPTED is not what the handler returns")
  }

  /// Case 3: the walk ended at a non-leaf (2M requested, 4K mapped) -> TDX_MMIO_ACCEPT_SIZE_MISMATCH, operand the level.
  @Test func acceptAtTheWrongSizeIsASizeMismatch() throws {
    var f = try Fixture()
    try f.map()
    #expect(status { () throws(TDXStatus) in
      try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, level: .level2M, expectedHPA: HPA(0xFE00_0000))
    } == .mmioAcceptSizeMismatch.with(operand: 1))
  }

  @Test func acceptOperandChecksComeFirst() throws {
    var f = try Fixture()
    try f.mapAccepted()
    #expect(status { () throws(TDXStatus) in
      try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: GPA(0x8000_1000), level: .level2M, expectedHPA: Fixture.bar)
    } == .operandInvalid.with(operand: TDXOperand.rcx), "GPA page info before anything")
    #expect(status { () throws(TDXStatus) in
      try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar.advanced(by: 0x10))
    } == .operandInvalid.with(operand: TDXOperand.rdx), "the MMIO offset is checked before the walk")
  }

  @Test func accessBeforeAcceptKillsTheTD() throws {
    var f = try Fixture()
    try f.map()
    try f.module.tdhVPEnter(td: f.td, vcpu: 0)
    #expect(f.module.guestAccess(td: f.td, gpa: Fixture.gpa) == .killedTD)
    #expect(f.module.tds[f.td]?.isFatal == true)
    #expect(f.module.tds[f.td]?.vcpus.allSatisfy { !$0.inGuest } == true)
    #expect(f.module.guestAccess(td: f.td, gpa: Fixture.gpa) == .tdNotRunnable)
    let dead = TDXStatus.tdFatal
    #expect(status { () throws(TDXStatus) in try f.module.tdhVPEnter(td: f.td, vcpu: 1) } == dead)
    #expect(status { () throws(TDXStatus) in try f.module.tdhMemTrack(td: f.td) } == dead)
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K) } == dead)
    #expect(status { () throws(TDXStatus) in
      try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar) } == dead)
    #expect(f.module.tds[f.otherTD]?.isFatal == false)
    try f.module.tdTeardown(td: f.td)
    #expect(f.module.tds[f.td] == nil && f.module.devifs[f.devif] == nil)
    #expect(f.module.mmiomt[Fixture.bar.pfn]?.mapping == nil)
    #expect(f.module.invariantViolations().isEmpty)
  }

  @Test(arguments: [(SEPTState?.none, GuestAccessResult.eptViolation), (.mmioBlocked, .eptViolation),
                    (.mmioMapped, .mapped(Fixture.bar))])
  func accessByEntryState(_ s: SEPTState?, _ expected: GuestAccessResult) throws {
    var f = try Fixture()
    if s != nil { try f.mapAccepted() }
    if s == .mmioBlocked { try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K) }
    #expect(f.module.guestAccess(td: f.td, gpa: Fixture.gpa) == expected)
  }
}

@Suite struct BusyInjectionTests {
  @Test func anInjectionFailsTheNextMatchingCallOnce() throws {
    var f = try Fixture()
    f.module.busyInjections = [BusyInjection(.seamcall(.mmioMap), td: f.otherTD, operand: TDXOperand.sept),
                               BusyInjection(.seamcall(.mmioMap), td: f.td, operand: TDXOperand.sept)]
    #expect(status { () throws(TDXStatus) in try f.map() } == .operandBusy.with(operand: TDXOperand.sept))
    #expect(f.state == nil)
    #expect(f.module.busyInjections.count == 1, "only the matching injection is consumed")
    try f.map()
    #expect(f.state == .mmioPending)
  }

  @Test(arguments: [TDXCall.seamcall(.mmioBlock), .seamcall(.mmioUnmap), .seamcall(.memTrack), .tdcall(.mmioAccept)])
  func everyRetriedCallCanBeMadeBusy(_ call: TDXCall) throws {
    var f = try Fixture()
    try f.map()
    f.module.busyInjections = [BusyInjection(call, operand: TDXOperand.tdr)]
    let got = status { () throws(TDXStatus) in
      switch call {
      case .seamcall(.mmioBlock): try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K)
      case .seamcall(.mmioUnmap): try f.module.tdhMMIOUnmap(td: f.td, gpa: Fixture.gpa, level: .level4K)
      case .seamcall(.memTrack): try f.module.tdhMemTrack(td: f.td)
      default: _ = try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar)
      }
    }
    #expect(got == .operandBusy.with(operand: TDXOperand.tdr))
    #expect(got?.code == .operandBusy && got?.isError == true && got?.isNonRecoverable == false)
    #expect(f.module.busyInjections.isEmpty)
  }
}

@Suite struct HappyPathTests {
  @Test func mapAcceptBlockTrackKickUnmapRemove() throws {
    var f = try Fixture()
    func check(_ step: String) { #expect(f.module.invariantViolations().isEmpty, "\(step)") }
    try f.module.tdhVPEnter(td: f.td, vcpu: 0)
    try f.module.tdhVPEnter(td: f.td, vcpu: 1)
    for i in UInt64(0)..<4 {
      try f.map(Fixture.gpa.advanced(by: i * pageSize), Fixture.bar.advanced(by: i * pageSize))
      #expect(try f.module.tdgMMIOAccept(td: f.td, vcpu: UInt32(i % 2), gpa: Fixture.gpa.advanced(by: i * pageSize),
                                         expectedHPA: Fixture.bar.advanced(by: i * pageSize)) == .accepted)
    }
    check("mapped")
    try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
    for i in UInt64(0)..<4 { try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa.advanced(by: i * pageSize), level: .level4K) }
    try f.module.tdhMemTrack(td: f.td)
    for v in UInt32(0)..<2 { try f.module.tdExit(td: f.td, vcpu: v); try f.module.tdhVPEnter(td: f.td, vcpu: v) }
    check("tracked")
    for i in UInt64(0)..<4 {
      #expect(try f.module.tdhMMIOUnmap(td: f.td, gpa: Fixture.gpa.advanced(by: i * pageSize), level: .level4K)
              == Fixture.bar.advanced(by: i * pageSize))
    }
    check("unmapped")
    #expect(f.module.tds[f.td]?.sept.isEmpty == true)
    try f.module.tdhDevifRemove(devif: f.devif)
    check("removed")
    #expect(f.module.devifs[f.devif] == nil)
  }
}

@Suite struct InvariantTests {
  /// States no sequence of calls reaches, forged through internal setters, so each named
  /// invariant is seen to fire.
  enum Breakage: String, CaseIterable, Sendable { case devifVanished, mappingForgotten, countDrift, refcountDrift }

  @Test(arguments: Breakage.allCases)
  func eachInvariantReportsItsBreakage(_ b: Breakage) throws {
    var f = try Fixture()
    try f.mapAccepted()
    #expect(f.module.invariantViolations().isEmpty)
    let expected: Set<String>
    switch b {
    case .devifVanished:
      f.module.devifs[f.devif] = nil
      expected = ["SEPTMMIOEntryOwnedByTD", "NoRemovedDevifHasMappedMMIO"]
    case .mappingForgotten:
      f.module.mmiomt[Fixture.bar.pfn]?.mapping = nil
      expected = ["SEPTMMIOEntryOwnedByTD", "DevifMappedCountBalances"]
    case .countDrift:
      f.module.devifs[f.devif]?.mappedPages = 0
      expected = ["DevifMappedCountBalances"]
    case .refcountDrift:
      f.module.tds[f.td]?.refcount = [1, 0]
      expected = ["EpochRefcountsBalance"]
    }
    #expect(Set(f.module.invariantViolations().map(\.name)) == expected)
  }
}
