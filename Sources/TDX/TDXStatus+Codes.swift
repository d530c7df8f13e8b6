/// The TDX Connect (TDX-IO) statuses and the operand IDs.
///
/// Source: `intel/tdx-module`, `include/auto_gen_2_0/tdx_error_codes_defs.h` at commit
/// `6e66b9d2070aa49562518087160b2c6ae6418555` (see ``TDXStatus``). Which handler returns each
/// status, and for which check, is in the doc of the leaf that throws it and in
/// `docs/audit.md`.
extension TDXStatus {
  /// `TDX_DEVIF_INVALID_STATE`: TDH.DEVIF.REMOVE while the TDI is neither CONFIG_UNLOCKED nor
  /// behind a blocked IDE stream (`tdh_devif_remove.c`).
  public static let devifInvalidState = TDXStatus(rawValue: 0xC000_0F11_0000_0000)
  /// `TDX_DEVIF_TDISP_INVALID_STATE`: TDH.MMIO.UNMAP while the TDI is not CONFIG_UNLOCKED and
  /// its IDE stream is not blocked (`tdh_mmio_unmap.c`).
  public static let devifTDISPInvalidState = TDXStatus(rawValue: 0xC000_0F10_0000_0000)
  /// `TDX_DEVIF_HAS_MAPPED_MMIO`: TDH.DEVIF.REMOVE while pages of the DEVIF are mapped in a
  /// live TD (`devifcs->mmio_page_cnt` non-zero).
  public static let devifHasMappedMMIO = TDXStatus(rawValue: 0xC000_0F13_0000_0000)
  /// `TDX_IDE_STREAM_BLOCKED`: TDH.MMIO.MAP while the DEVIF's IDE stream is blocked.
  public static let ideStreamBlocked = TDXStatus(rawValue: 0xC000_0F19_0000_0000)
  /// `TDX_IDE_STREAM_INVALID_STATE`: TDH.DEVIF.CREATE on a stream that is not a configured,
  /// unblocked selective IDE stream.
  public static let ideStreamInvalidState = TDXStatus(rawValue: 0xC000_0F24_0000_0000)
  /// `TDX_MMIO_INVALID_PAGE_METADATA`: the MMIOMT entry is of the wrong type (not DATA for
  /// MAP, not QNODE for MT.ADD / MT.SET) or is already mapped, or the qnode is present.
  public static let mmioInvalidPageMetadata = TDXStatus(rawValue: 0xC000_0F25_0000_0000)
  /// `TDX_MMIO_ACCEPT_SIZE_MISMATCH`: TDG.MMIO.ACCEPT at a level where the entry is a non-leaf.
  public static let mmioAcceptSizeMismatch = TDXStatus(rawValue: 0xC000_0F26_0000_0000)
  /// `TDX_MMIO_DEVIF_OWNER_MISMATCH`: TDH.MMIO.MAP of a page whose DEVIF belongs to another TD.
  public static let mmioDevifOwnerMismatch = TDXStatus(rawValue: 0xC000_0F27_0000_0000)
  /// `TDX_MMIO_PAGE_ALREADY_ACCEPTED`: a warning the header defines (bit 63 clear). No handler
  /// of the published source returns it: a repeated TDG.MMIO.ACCEPT answers
  /// `TDX_PAGE_ALREADY_ACCEPTED` (see ``TDXModule/tdgMMIOAccept(td:vcpu:gpa:expectedHPA:)``).
  public static let mmioPageAlreadyAccepted = TDXStatus(rawValue: 0x0000_0F28_0000_0000)
  /// `TDX_DEVIF_HAS_MAPPED_DMA`: TDH.DEVIF.REMOVE while DMA remapping is set up for it.
  public static let devifHasMappedDMA = TDXStatus(rawValue: 0xC000_0F3F_0000_0000)
  /// `TDX_DEVIFMT_NOT_PRESENT`: no DEVIF exists for the function id (`devifmt_get_devifcs()`).
  public static let devifmtNotPresent = TDXStatus(rawValue: 0xC000_0F40_0000_0000)
  /// `TDX_DEVIFMT_ALREADY_PRESENT`: TDH.DEVIF.CREATE for a function id that has a DEVIF.
  public static let devifmtAlreadyPresent = TDXStatus(rawValue: 0xC000_0F42_0000_0000)
  /// `TDX_MMIOMT_NOT_PRESENT`: the MMIOMT walk met a table page that was never added, or a
  /// DATA entry above the requested level (`mmiomt_walk()`).
  public static let mmiomtNotPresent = TDXStatus(rawValue: 0xC000_0F47_0000_0000)
  /// `TDX_MMIO_INVALID_HPA_OFFSET`: TDG.MMIO.ACCEPT names a device page other than the one the
  /// Secure-EPT entry maps.
  public static let mmioInvalidHPAOffset = TDXStatus(rawValue: 0xC000_0F4D_0000_0000)

  /// The TDX Connect statuses, by ABI name.
  static var connectNamed: [(name: String, status: TDXStatus)] {
    [
      ("TDX_DEVIF_INVALID_STATE", .devifInvalidState),
      ("TDX_DEVIF_TDISP_INVALID_STATE", .devifTDISPInvalidState),
      ("TDX_DEVIF_HAS_MAPPED_MMIO", .devifHasMappedMMIO),
      ("TDX_IDE_STREAM_BLOCKED", .ideStreamBlocked),
      ("TDX_IDE_STREAM_INVALID_STATE", .ideStreamInvalidState),
      ("TDX_MMIO_INVALID_PAGE_METADATA", .mmioInvalidPageMetadata),
      ("TDX_MMIO_ACCEPT_SIZE_MISMATCH", .mmioAcceptSizeMismatch),
      ("TDX_MMIO_DEVIF_OWNER_MISMATCH", .mmioDevifOwnerMismatch),
      ("TDX_MMIO_PAGE_ALREADY_ACCEPTED", .mmioPageAlreadyAccepted),
      ("TDX_DEVIF_HAS_MAPPED_DMA", .devifHasMappedDMA),
      ("TDX_DEVIFMT_NOT_PRESENT", .devifmtNotPresent),
      ("TDX_DEVIFMT_ALREADY_PRESENT", .devifmtAlreadyPresent),
      ("TDX_MMIOMT_NOT_PRESENT", .mmiomtNotPresent),
      ("TDX_MMIO_INVALID_HPA_OFFSET", .mmioInvalidHPAOffset),
    ]
  }
}

/// The operand field (bits 31:0) of a status: which register or object it is about.
///
/// Values are the `OPERAND_ID_*` of `include/auto_gen_2_0/tdx_error_codes_defs.h` (commit
/// `6e66b9d2`): registers by number, objects from 128 up.
public enum TDXOperand {
  /// `OPERAND_ID_RAX` (0).
  public static let rax: UInt32 = 0
  /// `OPERAND_ID_RCX` (1).
  public static let rcx: UInt32 = 1
  /// `OPERAND_ID_RDX` (2).
  public static let rdx: UInt32 = 2
  /// `OPERAND_ID_R8` (8).
  public static let r8: UInt32 = 8
  /// `OPERAND_ID_R9` (9).
  public static let r9: UInt32 = 9
  /// `OPERAND_ID_R10` (10).
  public static let r10: UInt32 = 10
  /// `OPERAND_ID_TDR` (128).
  public static let tdr: UInt32 = 128
  /// `OPERAND_ID_TDCS` (144).
  public static let tdcs: UInt32 = 144
  /// `OPERAND_ID_TDVPS` (145 = 0x91).
  public static let tdvps: UInt32 = 145
  /// `OPERAND_ID_SEPT_TREE` (146 = 0x92): the TD's Secure-EPT lock. The kernel's
  /// `TDX_OPERAND_ID_SEPT` is this value, and `TDX_ERROR_SEPT_BUSY` is
  /// `TDX_OPERAND_BUSY | 0x92`.
  public static let sept: UInt32 = 146
  /// `OPERAND_ID_SEPT_ENTRY` (147).
  public static let septEntry: UInt32 = 147
  /// `OPERAND_ID_TD_EPOCH` (169 = 0xA9).
  public static let tdEpoch: UInt32 = 169
  /// `OPERAND_ID_MMIOMT` (257 = 0x101).
  public static let mmiomt: UInt32 = 257
}
