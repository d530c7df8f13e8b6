import Testing
import KernelCore
@testable import TDX

@Suite struct RawABITests {
  @Test(arguments: [UInt64(9999), 6, 3, 7, 29, 139, 140])
  func unsupportedLeafIsOperandInvalid(_ leaf: UInt64) {
    var m = TDXModule()
    let before = m
    #expect(m.seamcall(leaf: leaf, args: [1, 2, 3]) == .failure(.operandInvalid.with(operand: TDXOperand.rax)))
    #expect(m == before)
  }

  @Test func unknownTDCALLIsOperandInvalid() throws {
    var m = TDXModule()
    let td = try m.tdhMngCreate(vcpuCount: 1)
    #expect(m.tdcall(td: td, vcpu: 0, leaf: 72, args: []) == .failure(.operandInvalid.with(operand: TDXOperand.rax)))
  }

  @Test func theWholeFlowThroughRegisters() throws {
    var m = TDXModule()
    guard case .success(let tdOut) = m.seamcall(leaf: 9, args: [2]) else { Issue.record("MNG.CREATE"); return }
    let td = tdOut[0]
    guard case .success(let devOut) = m.seamcall(leaf: 137, args: [td, 0x0100]) else { Issue.record("DEVIF.CREATE"); return }
    let devif = devOut[0]
    #expect(m.seamcall(leaf: 154, args: [0xFE00_0000, devif, 2, 0]) == .success([]))
    try m.observeTDISPState(devif: DevifID(UInt32(devif)), state: .run)
    let gpaLevel: UInt64 = 0x8000_0000 | 0   // 4K
    #expect(m.seamcall(leaf: 158, args: [gpaLevel, td, 0xFE00_1000]) == .success([]))
    #expect(m.seamcall(leaf: 0, args: [td << 32 | 1]) == .success([]))
    let tdid = TDID(UInt32(td))
    #expect(m.tdcall(td: tdid, vcpu: 1, leaf: 71, args: [gpaLevel, 0xFE00_1000]) == .success([0]))
    #expect(m.tdcall(td: tdid, vcpu: 1, leaf: 71, args: [0x9000_0000, 0xFE00_0000]) == .success([1]))
    #expect(m.septEntry(td: tdid, gpa: GPA(0x8000_0000))?.state == .mmioMapped)
    #expect(m.seamcall(leaf: 159, args: [gpaLevel, td]) == .success([]))
    #expect(m.seamcall(leaf: 38, args: [td]) == .success([]))
    try m.observeTDISPState(devif: DevifID(UInt32(devif)), state: .configUnlocked)
    #expect(m.seamcall(leaf: 160, args: [gpaLevel, td]) == .failure(.tlbTrackingNotDone.with(operand: TDXOperand.tdEpoch)))
    try m.tdExit(td: tdid, vcpu: 1)
    #expect(m.seamcall(leaf: 160, args: [gpaLevel, td]) == .success([0xFE00_1000]))
    #expect(m.seamcall(leaf: 138, args: [devif]) == .success([]))
    #expect(m.invariantViolations().isEmpty)
  }

  /// RCX as GPA | level: reserved bits and unknown levels are refused before anything else.
  static let badRCX: [UInt64] = [0x8000_0003, 0x8000_0008, 0x8000_0800, 0x0010_0000_8000_0000, 0x8000_0001]

  @Test(arguments: badRCX)
  func badMappingInfoInRCX(_ rcx: UInt64) throws {
    var m = TDXModule()
    let td = try m.tdhMngCreate(vcpuCount: 1)
    #expect(m.seamcall(leaf: 158, args: [rcx, UInt64(td.rawValue), 0xFE00_0000])
            == .failure(.operandInvalid.with(operand: TDXOperand.rcx)))
  }

  struct BadHandle: Sendable, CustomTestStringConvertible {
    let leaf: UInt64, args: [UInt64], operand: UInt32
    var testDescription: String { "leaf \(leaf) args \(args)" }
  }
  static let badHandles: [BadHandle] = [
    BadHandle(leaf: 158, args: [0x8000_0000, 0, 0xFE00_0000], operand: TDXOperand.rdx),
    BadHandle(leaf: 158, args: [0x8000_0000, 1 << 32, 0xFE00_0000], operand: TDXOperand.rdx),
    BadHandle(leaf: 38, args: [0], operand: TDXOperand.rcx),
    BadHandle(leaf: 38, args: [7], operand: TDXOperand.rcx),
    BadHandle(leaf: 138, args: [5], operand: TDXOperand.rcx),
    BadHandle(leaf: 154, args: [0xFE00_0000, 0, 1, 0], operand: TDXOperand.rdx),
    BadHandle(leaf: 9, args: [0], operand: TDXOperand.rcx),
    BadHandle(leaf: 137, args: [1, 1 << 32], operand: TDXOperand.rdx),
  ]

  @Test(arguments: badHandles)
  func badHandlesAreOperandInvalid(_ c: BadHandle) throws {
    var m = TDXModule()
    _ = try m.tdhMngCreate(vcpuCount: 1)
    #expect(m.seamcall(leaf: c.leaf, args: c.args) == .failure(.operandInvalid.with(operand: c.operand)))
  }

  @Test func missingRegistersReadAsZero() {
    var m = TDXModule()
    #expect(m.seamcall(leaf: 38, args: []) == .failure(.operandInvalid.with(operand: TDXOperand.rcx)))
  }
}

@Suite struct StatusAndLeafTests {
  @Test(arguments: [("TDX_OPERAND_INVALID", UInt64(0xC000_0100_0000_0000)),
                    ("TDX_NON_RECOVERABLE_TD", 0x4000_0002_0000_0000),
                    ("TDX_OPERAND_BUSY", 0x8000_0200_0000_0000),
                    ("TDX_PREVIOUS_TLB_EPOCH_BUSY", 0x8000_0201_0000_0000),
                    ("TDX_EPT_ENTRY_STATE_INCORRECT", 0xC000_0B0D_0000_0000),
                    ("TDX_TLB_TRACKING_NOT_DONE", 0xC000_0B08_0000_0000)])
  func statusNamesRoundTrip(name: String, value: UInt64) {
    #expect(TDXStatus(name: name)?.rawValue == value)
    #expect(TDXStatus(rawValue: value | 0x92).name == name)
  }

  @Test func everyStatusNameIsDistinct() {
    let all = TDXStatus.allNamed
    #expect(Set(all.map(\.name)).count == all.count)
    #expect(Set(all.map(\.status)).count == all.count)
  }

  @Test(arguments: [("TDH.MEM.TRACK", UInt64(38)), ("TDH.DEVIF.CREATE", 137), ("TDH.DEVIF.REMOVE", 138),
                    ("TDH.MMIO.MT.ADD", 154), ("TDH.MMIO.MAP", 158), ("TDH.MMIO.BLOCK", 159),
                    ("TDH.MMIO.UNMAP", 160), ("TDH.MEM.PAGE.AUG", 6), ("TDH.VP.ENTER", 0)])
  func leafNumbers(name: String, number: UInt64) {
    #expect(SeamcallLeaf(rawValue: number).description == name)
  }

  @Test func septStateEncodings() {
    #expect(SEPTState.mmioMapped.rawValue == 0x40)
    #expect(SEPTState.mmioBlocked.rawValue == 0x48)
    #expect(SEPTState.mmioPending.rawValue == 0x50)
    #expect(TdcallLeaf.mmioAccept.rawValue == 71)
  }
}
