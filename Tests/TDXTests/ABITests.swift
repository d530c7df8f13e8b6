import Testing
import KernelCore
@testable import TDX

/// The register layouts of `include/tdxio/tdxio_vmm_api_handlers.h` and the handlers (commit 6e66b9d2).
@Suite struct RawABITests {
  @Test(arguments: [UInt64(9999), 6, 3, 7, 29, 139, 140, 164])
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

  /// DEVIF.CREATE: RCX devif id (function id 63:32), RDX TDR; MMIO.MT.ADD: RCX index, RDX page;
  /// MMIO.MT.SET: RCX index, RDX set info; DEVIF.REMOVE: RCX function id.
  @Test func theWholeFlowThroughRegisters() throws {
    var m = TDXModule()
    guard case .success(let tdOut) = m.seamcall(leaf: 9, args: [2]) else { Issue.record("MNG.CREATE"); return }
    let td = tdOut[0], function: UInt64 = 0x0100, bar: UInt64 = 0xFE00_0000
    #expect(m.seamcall(leaf: 137, args: [function << 32, td, 0x1000, 0x2000, 0x3000]) == .success([]))
    let devif = try #require(m.devif(for: DeviceInterfaceID(UInt32(function))))
    for level in stride(from: UInt64(5), through: 1, by: -1) {
      #expect(m.seamcall(leaf: 154, args: [bar | level, 0x4000]) == .success([]), "MT.ADD level \(level)")
    }
    #expect(m.seamcall(leaf: 155, args: [bar + 0x1000, function << 12 | 1]) == .success([]))
    try m.observeTDISPState(devif: devif, state: .run)
    let gpaLevel: UInt64 = 0x8000_0000 | 0   // 4K
    #expect(m.seamcall(leaf: 158, args: [gpaLevel, td, bar + 0x1000]) == .success([]))
    #expect(m.seamcall(leaf: 0, args: [td << 32 | 1]) == .success([]))
    let tdid = TDID(UInt32(td))
    #expect(m.tdcall(td: tdid, vcpu: 1, leaf: 71, args: [gpaLevel, bar + 0x1000]) == .success([0]))
    #expect(m.tdcall(td: tdid, vcpu: 1, leaf: 71, args: [gpaLevel, bar + 0x1000]) == .failure(.pageAlreadyAccepted))
    #expect(m.tdcall(td: tdid, vcpu: 1, leaf: 71, args: [0x9000_0000, bar]) == .success([1]))
    #expect(m.septEntry(td: tdid, gpa: GPA(0x8000_0000))?.state == .mmioMapped)
    #expect(m.seamcall(leaf: 159, args: [gpaLevel, td]) == .success([]))
    #expect(m.seamcall(leaf: 38, args: [td]) == .success([]))
    try m.observeTDISPState(devif: devif, state: .configUnlocked)
    #expect(m.seamcall(leaf: 160, args: [gpaLevel, td]) == .failure(.tlbTrackingNotDone.with(operand: TDXOperand.rcx)))
    try m.tdExit(td: tdid, vcpu: 1)
    #expect(m.seamcall(leaf: 160, args: [gpaLevel, td]) == .success([bar + 0x1000]))
    #expect(m.seamcall(leaf: 138, args: [function]) == .success([0, 0, td]))
    #expect(m.invariantViolations().isEmpty)
  }

  /// RCX as `page_info_api_input_t`: reserved bits and levels above LVL_PDPT are refused first.
  static let badRCX: [UInt64] = [0x8000_0003, 0x8000_0008, 0x8000_0800, 0x0010_0000_8000_0000]

  @Test(arguments: badRCX)
  func badMappingInfoInRCX(_ rcx: UInt64) throws {
    var m = TDXModule()
    let td = try m.tdhMngCreate(vcpuCount: 1)
    #expect(m.seamcall(leaf: 158, args: [rcx, UInt64(td.rawValue), 0xFE00_0000])
            == .failure(.operandInvalid.with(operand: TDXOperand.rcx)))
  }

  struct BadOperand: Sendable, CustomTestStringConvertible {
    let leaf: UInt64, args: [UInt64], expected: TDXStatus
    var testDescription: String { "leaf \(leaf) args \(args)" }
  }
  static let badOperands: [BadOperand] = [
    BadOperand(leaf: 158, args: [0x8000_0000, 0, 0xFE00_0000], expected: .operandInvalid.with(operand: TDXOperand.rdx)),
    BadOperand(leaf: 158, args: [0x8000_0000, 1 << 32, 0xFE00_0000], expected: .operandInvalid.with(operand: TDXOperand.rdx)),
    BadOperand(leaf: 38, args: [0], expected: .operandInvalid.with(operand: TDXOperand.rcx)),
    BadOperand(leaf: 38, args: [7], expected: .operandInvalid.with(operand: TDXOperand.rcx)),
    BadOperand(leaf: 138, args: [5], expected: .devifmtNotPresent.with(operand: TDXOperand.rcx)),
    BadOperand(leaf: 138, args: [1 << 32 | 5], expected: .operandInvalid.with(operand: TDXOperand.rcx)),
    BadOperand(leaf: 154, args: [0xFE00_0000 | 0, 0x4000], expected: .operandInvalid.with(operand: TDXOperand.rcx)),
    BadOperand(leaf: 154, args: [0xFE00_0008 | 5, 0x4000], expected: .operandInvalid.with(operand: TDXOperand.rcx)),
    BadOperand(leaf: 154, args: [0xFE00_0000 | 5, 0x4010], expected: .operandInvalid.with(operand: TDXOperand.rdx)),
    // tdh_mmio_mt_set.c: mmiomt_walk() (RCX) before "Verify MMIOMT_SET_INFO" (RDX).
    BadOperand(leaf: 155, args: [0xFE00_0000, 0x100 << 12 | 2], expected: .mmiomtNotPresent.with(operand: TDXOperand.rcx)),
    BadOperand(leaf: 9, args: [0], expected: .operandInvalid.with(operand: TDXOperand.rcx)),
    BadOperand(leaf: 137, args: [0x100 << 32, 1 << 32], expected: .operandInvalid.with(operand: TDXOperand.rdx)),
    BadOperand(leaf: 137, args: [0x100 << 32 | 1 << 24, 1], expected: .operandInvalid.with(operand: TDXOperand.rcx)),
  ]

  @Test(arguments: badOperands)
  func badOperandsAreRefusedWithTheirRegister(_ c: BadOperand) throws {
    var m = TDXModule()
    _ = try m.tdhMngCreate(vcpuCount: 1)
    #expect(m.seamcall(leaf: c.leaf, args: c.args) == .failure(c.expected))
  }

  /// TDH.MMIO.MT.SET's RDX against `mmiomt_set_info_t` (`mmiomt_defs.h`, commit 6e66b9d2:
  /// `type:2, rsvd1:10, function_id:32, rsvd2:20`) and `tdh_mmio_mt_set.c`'s order: the index
  /// (RCX), `mmiomt_walk()` (`TDX_MMIOMT_NOT_PRESENT`, RCX), then "Verify MMIOMT_SET_INFO"
  /// (`rsvd1 || rsvd2 || type > MMIOMT_DATA || ...`: `TDX_OPERAND_INVALID`, RDX).
  static let badSetInfos: [UInt64] = [
    0x100 << 12 | 1 | 1 << 2,    // rsvd1, lowest bit
    0x100 << 12 | 1 | 1 << 11,   // rsvd1, highest bit
    0x100 << 12 | 1 | 1 << 44,   // rsvd2, lowest bit (the old 63:52 mask let 51:44 through)
    0x100 << 12 | 1 | 1 << 51,
    0x100 << 12 | 1 | 1 << 63,   // rsvd2, highest bit
    0x100 << 12 | 2,             // type > MMIOMT_DATA
    0x100 << 12 | 3,
    0x100 << 12 | 0,             // QNODE with a function id
    1,                           // DATA without one
  ]

  @Test(arguments: badSetInfos)
  func mtSetVerifiesTheSetInfoAfterTheWalk(_ rdx: UInt64) throws {
    var m = TDXModule()
    guard case .success(let tdOut) = m.seamcall(leaf: 9, args: [2]) else { Issue.record("MNG.CREATE"); return }
    let function: UInt64 = 0x0100, bar: UInt64 = 0xFE00_0000
    #expect(m.seamcall(leaf: 137, args: [function << 32, tdOut[0], 0x1000, 0x2000, 0x3000]) == .success([]))
    var before = m
    #expect(m.seamcall(leaf: 155, args: [bar, rdx]) == .failure(.mmiomtNotPresent.with(operand: TDXOperand.rcx)))
    #expect(m == before)
    for level in stride(from: UInt64(5), through: 1, by: -1) {
      #expect(m.seamcall(leaf: 154, args: [bar | level, 0x4000]) == .success([]), "MT.ADD level \(level)")
    }
    before = m
    #expect(m.seamcall(leaf: 155, args: [bar, rdx]) == .failure(.operandInvalid.with(operand: TDXOperand.rdx)))
    #expect(m == before)
    // The same entry with a well-formed set info is assigned: the refusal was the set info's.
    #expect(m.seamcall(leaf: 155, args: [bar, function << 12 | 1]) == .success([]))
    #expect(m.mmiomt[PFN(bar >> 12)]?.function == DeviceInterfaceID(UInt32(function)))
  }

  @Test func missingRegistersReadAsZero() {
    var m = TDXModule()
    #expect(m.seamcall(leaf: 38, args: []) == .failure(.operandInvalid.with(operand: TDXOperand.rcx)))
  }
}
