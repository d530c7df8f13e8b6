import Testing
@testable import TDX

/// Every value the model takes from the TDX module source, pinned. Each row names its
/// `#define` / enum line in intel/tdx-module commit 6e66b9d2:
/// `include/auto_gen_2_0/tdx_error_codes_defs.h`, `include/tdx_api_defs.h`,
/// `include/auto_gen_2_0/sept_state_lookup.h`.
@Suite struct StatusValueTests {
  /// `#define TDX_... 0x...ULL` in tdx_error_codes_defs.h.
  static let statuses: [(String, UInt64)] = [
    ("TDX_SUCCESS", 0x0000_0000_0000_0000),
    ("TDX_NON_RECOVERABLE_TD", 0x6000_0002_0000_0000),
    ("TDX_OPERAND_INVALID", 0xC000_0100_0000_0000),
    ("TDX_OPERAND_BUSY", 0x8000_0200_0000_0000),
    ("TDX_PREVIOUS_TLB_EPOCH_BUSY", 0x8000_0201_0000_0000),
    ("TDX_OPERAND_BUSY_HOST_PRIORITY", 0x8000_0204_0000_0000),
    ("TDX_TD_FATAL", 0xE000_0604_0000_0000),
    ("TDX_EPT_WALK_FAILED", 0xC000_0B00_0000_0000),
    ("TDX_GPA_RANGE_NOT_BLOCKED", 0xC000_0B06_0000_0000),
    ("TDX_TLB_TRACKING_NOT_DONE", 0xC000_0B08_0000_0000),
    ("TDX_PAGE_ALREADY_ACCEPTED", 0x0000_0B0A_0000_0000),
    ("TDX_EPT_ENTRY_STATE_INCORRECT", 0xC000_0B0D_0000_0000),
    ("TDX_DEVIF_TDISP_INVALID_STATE", 0xC000_0F10_0000_0000),
    ("TDX_DEVIF_INVALID_STATE", 0xC000_0F11_0000_0000),
    ("TDX_DEVIF_HAS_MAPPED_MMIO", 0xC000_0F13_0000_0000),
    ("TDX_IDE_STREAM_BLOCKED", 0xC000_0F19_0000_0000),
    ("TDX_IDE_STREAM_INVALID_STATE", 0xC000_0F24_0000_0000),
    ("TDX_MMIO_INVALID_PAGE_METADATA", 0xC000_0F25_0000_0000),
    ("TDX_MMIO_ACCEPT_SIZE_MISMATCH", 0xC000_0F26_0000_0000),
    ("TDX_MMIO_DEVIF_OWNER_MISMATCH", 0xC000_0F27_0000_0000),
    ("TDX_MMIO_PAGE_ALREADY_ACCEPTED", 0x0000_0F28_0000_0000),
    ("TDX_DEVIF_HAS_MAPPED_DMA", 0xC000_0F3F_0000_0000),
    ("TDX_DEVIFMT_NOT_PRESENT", 0xC000_0F40_0000_0000),
    ("TDX_DEVIFMT_ALREADY_PRESENT", 0xC000_0F42_0000_0000),
    ("TDX_MMIOMT_NOT_PRESENT", 0xC000_0F47_0000_0000),
    ("TDX_MMIO_INVALID_HPA_OFFSET", 0xC000_0F4D_0000_0000),
  ]

  @Test(arguments: statuses)
  func statusValue(name: String, value: UInt64) {
    #expect(TDXStatus(name: name)?.rawValue == value)
    #expect(TDXStatus(rawValue: value | 0x92).name == name, "the operand does not change the name")
  }

  @Test func everyNamedStatusIsPinnedAndDistinct() {
    let all = TDXStatus.allNamed
    #expect(Set(all.map(\.name)) == Set(Self.statuses.map(\.0)))
    #expect(Set(all.map(\.status)).count == all.count)
  }

  /// The invented names of earlier versions are gone.
  @Test(arguments: ["TDX_MMIOMT_ENTRY_INVALID", "TDX_MMIO_PAGE_ALREADY_MAPPED", "TDX_DEVIF_TD_MISMATCH"])
  func inventedNamesAreNotKnown(_ name: String) { #expect(TDXStatus(name: name) == nil) }

  @Test func warningsAreSuccessClass() {
    #expect(!TDXStatus.pageAlreadyAccepted.isError && !TDXStatus.mmioPageAlreadyAccepted.isError)
    #expect(TDXStatus.devifTDISPInvalidState.isError && TDXStatus.tdFatal.isNonRecoverable)
  }

  /// `#define OPERAND_ID_... ULL`.
  @Test func operandIDs() {
    #expect([TDXOperand.rax, TDXOperand.rcx, TDXOperand.rdx, TDXOperand.r8, TDXOperand.r9, TDXOperand.r10] == [0, 1, 2, 8, 9, 10])
    #expect(TDXOperand.tdr == 128 && TDXOperand.tdcs == 144 && TDXOperand.tdvps == 145)
    #expect(TDXOperand.sept == 146 && TDXOperand.septEntry == 147 && TDXOperand.tdEpoch == 169)
    #expect(TDXOperand.mmiomt == 257)
  }

  /// `seamcall_leaf_opcode_e` / `tdcall_leaf_opcode_e` in tdx_api_defs.h.
  @Test(arguments: [("TDH.VP.ENTER", UInt64(0)), ("TDH.MEM.SEPT.ADD", 3), ("TDH.MEM.PAGE.AUG", 6), ("TDH.MEM.RANGE.BLOCK", 7),
                    ("TDH.MNG.CREATE", 9), ("TDH.MEM.PAGE.REMOVE", 29), ("TDH.MEM.TRACK", 38), ("TDH.MEM.RANGE.UNBLOCK", 39),
                    ("TDH.IDE.STREAM.BLOCK", 133), ("TDH.DEVIF.CREATE", 137), ("TDH.DEVIF.REMOVE", 138),
                    ("TDH.DEVIF.REQUEST", 139), ("TDH.DEVIF.RESPONSE", 140), ("TDH.MMIO.MT.ADD", 154),
                    ("TDH.MMIO.MT.SET", 155), ("TDH.MMIO.MT.RD", 156), ("TDH.MMIO.MT.REMOVE", 157), ("TDH.MMIO.MAP", 158),
                    ("TDH.MMIO.BLOCK", 159), ("TDH.MMIO.UNMAP", 160), ("TDH.DEVIF.MT.ADD", 164)])
  func leafNumbers(name: String, number: UInt64) {
    #expect(SeamcallLeaf(rawValue: number).description == name)
  }

  @Test func tdcallLeaf() { #expect(TdcallLeaf.mmioAccept.rawValue == 71) }

  /// `SEPT_STATE_*_ENCODING` in sept_state_lookup.h and `public_state` in sept_state_lookup.c.
  @Test(arguments: [(SEPTState.free, UInt8(0x0E), UInt8(0)), (.mapped, 0x60, 4), (.blocked, 0x68, 1), (.pending, 0x70, 2),
                    (.mmioMapped, 0x40, 32), (.mmioBlocked, 0x48, 33), (.mmioPending, 0x50, 34)])
  func septStateEncodings(_ s: SEPTState, encoding: UInt8, publicState: UInt8) {
    #expect(s.rawValue == encoding && s.publicState == publicState)
  }
}
