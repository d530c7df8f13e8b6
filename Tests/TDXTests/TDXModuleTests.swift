import Testing
import KernelCore
@testable import TDX

@Suite struct MMIOMapTests {
  /// Each precondition of TDH.MMIO.MAP, violated alone, in the module's order.
  enum Violation: String, CaseIterable, Sendable {
    case busy, unknownTD, fatalTD, level2M, unalignedGPA, unalignedHPA, entryNotFree, noMMIOMT,
         nonTEE, mappedElsewhere, otherTDsDevif, tdiUnlocked, tdiError, streamBlocked
  }

  static func expected(_ v: Violation) -> TDXStatus {
    switch v {
    case .busy: .operandBusy.with(operand: TDXOperand.sept)
    case .unknownTD: .operandInvalid.with(operand: TDXOperand.rdx)
    case .fatalTD: .nonRecoverableTD.with(operand: TDXOperand.tdr)
    case .level2M, .unalignedGPA: .operandInvalid.with(operand: TDXOperand.rcx)
    case .unalignedHPA: .operandInvalid.with(operand: TDXOperand.r8)
    case .entryNotFree: .eptEntryStateIncorrect.with(operand: TDXOperand.sept)
    case .noMMIOMT, .nonTEE: .mmioMTEntryInvalid.with(operand: TDXOperand.r8)
    case .mappedElsewhere: .mmioPageAlreadyMapped.with(operand: TDXOperand.r8)
    case .otherTDsDevif: .devifTDMismatch.with(operand: TDXOperand.devif)
    case .tdiUnlocked, .tdiError: .devifTDISPInvalidState.with(operand: TDXOperand.devif)
    case .streamBlocked: .ideStreamBlocked.with(operand: TDXOperand.devif)
    }
  }

  @Test(arguments: Violation.allCases)
  func preconditionViolated(_ v: Violation) throws {
    var f = try Fixture()
    var td = f.td, gpa = Fixture.gpa, level = SEPTLevel.level4K, hpa = Fixture.bar
    switch v {
    case .busy: f.module.busyInjections = [BusyInjection(.seamcall(.mmioMap), td: f.td, operand: TDXOperand.sept)]
    case .unknownTD: td = TDID(99)
    case .fatalTD:
      try f.map(GPA(0x9000_0000), Fixture.bar.advanced(by: pageSize))
      #expect(f.module.guestAccess(td: f.td, gpa: GPA(0x9000_0000)) == .killedTD)
    case .level2M: level = .level2M
    case .unalignedGPA: gpa = GPA(0x8000_0800)
    case .unalignedHPA: hpa = HPA(0xFE00_0010)
    case .entryNotFree: try f.map(Fixture.gpa, Fixture.bar.advanced(by: pageSize))
    case .noMMIOMT: hpa = HPA(0xFC00_0000)
    case .nonTEE: hpa = Fixture.nonTEEPage
    case .mappedElsewhere: try f.map(GPA(0x9000_0000), Fixture.bar)
    case .otherTDsDevif: hpa = Fixture.otherBar
    case .tdiUnlocked: try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
    case .tdiError: try f.module.observeTDISPState(devif: f.devif, state: .error)
    case .streamBlocked: try f.module.ideStreamBlocked(devif: f.devif)
    }
    var before = f.module
    before.busyInjections = []
    let got = status { () throws(TDXStatus) in try f.module.tdhMMIOMap(td: td, gpa: gpa, level: level, hpa: hpa) }
    #expect(got == Self.expected(v), "\(v.rawValue)")
    #expect(f.module == before, "a failed MAP changes nothing (\(v.rawValue))")
  }

  @Test func mapMakesEntryPendingAndRecordsTheMapping() throws {
    var f = try Fixture()
    try f.map()
    #expect(f.module.septEntry(td: f.td, gpa: Fixture.gpa) == SEPTEntry(state: .mmioPending, level: .level4K, hpa: Fixture.bar))
    #expect(f.module.mmiomt[Fixture.bar.pfn]?.mapping == MMIOMTMapping(td: f.td, gpa: Fixture.gpa))
    #expect(f.module.devifs[f.devif]?.mappedPages == 1)
    #expect(f.module.invariantViolations().isEmpty)
  }

  @Test(arguments: [DevifTDISPState.configLocked, .run])
  func mapAllowedWhileTDITrusted(_ s: DevifTDISPState) throws {
    var f = try Fixture()
    try f.module.observeTDISPState(devif: f.devif, state: s)
    try f.map()
    #expect(f.state == .mmioPending)
  }
}

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

  enum BlockViolation: String, CaseIterable, Sendable { case free, alreadyBlocked, unknownTD, level1G }

  @Test(arguments: BlockViolation.allCases)
  func blockPreconditionViolated(_ v: BlockViolation) throws {
    var f = try Fixture()
    var td = f.td, level = SEPTLevel.level4K
    let expected: TDXStatus
    switch v {
    case .free: expected = .eptEntryStateIncorrect.with(operand: TDXOperand.sept)
    case .alreadyBlocked:
      try f.map()
      try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K)
      expected = .eptEntryStateIncorrect.with(operand: TDXOperand.sept)
    case .unknownTD: td = TDID(42); expected = .operandInvalid.with(operand: TDXOperand.rdx)
    case .level1G: try f.map(); level = .level1G; expected = .operandInvalid.with(operand: TDXOperand.rcx)
    }
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOBlock(td: td, gpa: Fixture.gpa, level: level) } == expected)
    #expect(f.module == before)
  }

  enum UnmapViolation: String, CaseIterable, Sendable { case notBlocked, notTracked, tdiRun, tdiLocked, free }

  @Test(arguments: UnmapViolation.allCases)
  func unmapPreconditionViolated(_ v: UnmapViolation) throws {
    var f = try Fixture()
    let expected: TDXStatus
    switch v {
    case .free:
      expected = .eptEntryStateIncorrect.with(operand: TDXOperand.sept)
    case .notBlocked:
      try f.mapAccepted()
      try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
      expected = .eptEntryStateIncorrect.with(operand: TDXOperand.sept)
    case .notTracked:
      try f.mapAccepted()
      try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K)
      try f.module.observeTDISPState(devif: f.devif, state: .configUnlocked)
      expected = .tlbTrackingNotDone.with(operand: TDXOperand.tdEpoch)
    case .tdiRun, .tdiLocked:
      try f.readyToUnmap()
      try f.module.observeTDISPState(devif: f.devif, state: v == .tdiRun ? .run : .configLocked)
      expected = .devifTDISPInvalidState.with(operand: TDXOperand.devif)
    }
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOUnmap(td: f.td, gpa: Fixture.gpa, level: .level4K) } == expected)
    #expect(f.module == before)
  }

  enum Untrusted: String, CaseIterable, Sendable { case configUnlocked, error, streamBlockedWhileRun }

  @Test(arguments: Untrusted.allCases)
  func unmapOnceTheTDIIsNoLongerTrusted(_ u: Untrusted) throws {
    var f = try Fixture()
    try f.readyToUnmap()
    switch u {
    case .configUnlocked: break
    case .error: try f.module.observeTDISPState(devif: f.devif, state: .error)
    case .streamBlockedWhileRun:
      try f.module.observeTDISPState(devif: f.devif, state: .run)
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
    #expect(status { () throws(TDXStatus) in try f.module.tdhMemTrack(td: f.td) }
            == .previousTLBEpochBusy.with(operand: TDXOperand.tdEpoch))
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
    let notDone = TDXStatus.tlbTrackingNotDone.with(operand: TDXOperand.tdEpoch)
    #expect(unmap(&f.module) == notDone, "no TRACK yet")
    try f.module.tdhMemTrack(td: f.td)
    #expect(unmap(&f.module) == notDone, "both vCPUs still in epoch 1")
    // The IPI kick: vCPU 0 exits and re-enters in epoch 2, which does not hold tracking back.
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

@Suite struct DevifTests {
  @Test func removeWithMappedPagesFails() throws {
    var f = try Fixture()
    try f.map()
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifRemove(devif: f.devif) }
            == .devifHasMappedMMIO.with(operand: TDXOperand.devif))
    #expect(f.module == before)
  }

  @Test func removeDropsTheDevifsMMIOMTEntries() throws {
    var f = try Fixture()
    try f.module.tdhDevifRemove(devif: f.devif)
    #expect(f.module.devifs[f.devif] == nil)
    #expect(f.module.mmiomt[Fixture.bar.pfn] == nil && f.module.mmiomt[Fixture.nonTEEPage.pfn] == nil)
    #expect(f.module.mmiomt[Fixture.otherBar.pfn] != nil)
    #expect(f.module.invariantViolations().isEmpty)
  }

  @Test func removeOfAnUnknownDevifIsInvalid() throws {
    var f = try Fixture()
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifRemove(devif: DevifID(77)) }
            == .operandInvalid.with(operand: TDXOperand.rcx))
  }

  @Test func aTDIHasOneDevifAtATime() throws {
    var f = try Fixture()
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifCreate(td: f.otherTD, interface: DeviceInterfaceID(0x0100)) }
            == .operandInvalid.with(operand: TDXOperand.rdx))
    try f.module.tdhDevifRemove(devif: f.devif)
    let again = try f.module.tdhDevifCreate(td: f.otherTD, interface: DeviceInterfaceID(0x0100))
    // The lowest free handle: the module keeps no counter, so equal modules stay equal.
    #expect(again == f.devif)
    #expect(f.module.devif(for: DeviceInterfaceID(0x0100)) == again)
  }

  enum MTAddViolation: String, CaseIterable, Sendable { case unknownDevif, unaligned, zeroCount, reservedAttr, overlap, overlapOtherDevif, tooMany, overflow }

  @Test(arguments: MTAddViolation.allCases)
  func mtAddPreconditionViolated(_ v: MTAddViolation) throws {
    var f = try Fixture()
    var devif = f.devif, first = HPA(0xFB00_0000), count: UInt64 = 2, attrs: MMIOMTAttributes = []
    let expected: TDXStatus
    switch v {
    case .unknownDevif: devif = DevifID(50); expected = .operandInvalid.with(operand: TDXOperand.rdx)
    case .unaligned: first = HPA(0xFB00_0004); expected = .operandInvalid.with(operand: TDXOperand.rcx)
    case .zeroCount: count = 0; expected = .operandInvalid.with(operand: TDXOperand.r8)
    case .reservedAttr: attrs = MMIOMTAttributes(rawValue: 1 << 9); expected = .operandInvalid.with(operand: TDXOperand.r9)
    case .overlap: first = Fixture.bar.advanced(by: 3 * pageSize); expected = .operandInvalid.with(operand: TDXOperand.rcx)
    case .overlapOtherDevif:
      first = Fixture.otherBar.advanced(by: 0 &- pageSize); expected = .operandInvalid.with(operand: TDXOperand.rcx)
    case .tooMany: count = TDXModule.maxMTAddPages + 1; expected = .operandInvalid.with(operand: TDXOperand.r8)
    case .overflow: first = HPA(0xF_FFFF_FFFF_F000); count = 2; expected = .operandInvalid.with(operand: TDXOperand.rcx)
    }
    let before = f.module
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOMTAdd(devif: devif, first: first, count: count, attributes: attrs) } == expected)
    #expect(f.module == before)
  }

  @Test func mtSetChangesAttributesOfUnmappedPagesOnly() throws {
    var f = try Fixture()
    try f.module.tdhMMIOMTSet(hpa: Fixture.bar.advanced(by: pageSize), attributes: .isNonTEEMem)
    #expect(f.module.mmiomt[Fixture.bar.advanced(by: pageSize).pfn]?.attributes == .isNonTEEMem)
    try f.map()
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOMTSet(hpa: Fixture.bar, attributes: .isNonTEEMem) }
            == .mmioPageAlreadyMapped.with(operand: TDXOperand.rcx))
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOMTSet(hpa: HPA(0x1000), attributes: []) }
            == .operandInvalid.with(operand: TDXOperand.rcx))
  }
}

@Suite struct AcceptAndAccessTests {
  @Test func acceptMakesThePageMapped() throws {
    var f = try Fixture()
    try f.map()
    #expect(try f.module.tdgMMIOAccept(td: f.td, vcpu: 1, gpa: Fixture.gpa, expectedHPA: Fixture.bar) == .accepted)
    #expect(f.state == .mmioMapped)
    #expect(f.module.guestAccess(td: f.td, gpa: Fixture.gpa.advanced(by: 0x10)) == .mapped(Fixture.bar.advanced(by: 0x10)))
  }

  @Test func acceptWithTheWrongHPAFailsAndLeavesItPending() throws {
    var f = try Fixture()
    try f.map()
    let before = f.module
    #expect(status { () throws(TDXStatus) in
      try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar.advanced(by: pageSize))
    } == .mmioInvalidHPAOffset.with(operand: TDXOperand.rdx))
    #expect(f.module == before)
    #expect(f.state == .mmioPending)
  }

  @Test func acceptOfANotPresentPageExitsWithAnEPTViolation() throws {
    var f = try Fixture()
    #expect(try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar) == .eptViolation)
    try f.map()
    try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K)
    #expect(try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar) == .eptViolation)
  }

  @Test func acceptingTwiceIsAlreadyAccepted() throws {
    var f = try Fixture()
    try f.mapAccepted()
    let s = status { () throws(TDXStatus) in try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar) }
    #expect(s == .pageAlreadyAccepted.with(operand: TDXOperand.sept))
    #expect(s?.isError == false)
  }

  @Test func accessBeforeAcceptKillsTheTD() throws {
    var f = try Fixture()
    try f.map()
    try f.module.tdhVPEnter(td: f.td, vcpu: 0)
    #expect(f.module.guestAccess(td: f.td, gpa: Fixture.gpa) == .killedTD)
    #expect(f.module.tds[f.td]?.isFatal == true)
    #expect(f.module.tds[f.td]?.vcpus.allSatisfy { !$0.inGuest } == true)
    #expect(f.module.guestAccess(td: f.td, gpa: Fixture.gpa) == .tdNotRunnable)
    let dead = TDXStatus.nonRecoverableTD.with(operand: TDXOperand.tdr)
    #expect(status { () throws(TDXStatus) in try f.module.tdhVPEnter(td: f.td, vcpu: 1) } == dead)
    #expect(status { () throws(TDXStatus) in try f.module.tdhMemTrack(td: f.td) } == dead)
    #expect(status { () throws(TDXStatus) in try f.module.tdhMMIOBlock(td: f.td, gpa: Fixture.gpa, level: .level4K) } == dead)
    #expect(status { () throws(TDXStatus) in try f.module.tdhDevifRemove(devif: f.devif) } == dead)
    #expect(status { () throws(TDXStatus) in
      try f.module.tdgMMIOAccept(td: f.td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar) } == dead)
    // The other TD is unaffected, and teardown reclaims the dead one.
    #expect(f.module.tds[f.otherTD]?.isFatal == false)
    try f.module.tdTeardown(td: f.td)
    #expect(f.module.tds[f.td] == nil && f.module.devifs[f.devif] == nil)
    #expect(f.module.mmiomt[Fixture.bar.pfn] == nil)
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
    try f.map()   // the retry, as KVM's fault path does on -EBUSY
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
    // Revoke: the host stops the TDI, blocks every page, tracks, kicks, unmaps.
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
  enum Breakage: String, CaseIterable, Sendable { case devifVanished, nonTEEMapped, countDrift, refcountDrift }

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
    case .nonTEEMapped:
      f.module.mmiomt[Fixture.bar.pfn]?.attributes = .isNonTEEMem
      expected = ["SEPTMMIOEntryOwnedByTD"]
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
