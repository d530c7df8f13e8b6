extension TDXStatus {
  /// `TDX_OPERAND_INVALID`: an argument is malformed, out of range or names no object; also
  /// what an unknown leaf returns. Value from `arch/x86/include/asm/shared/tdx_errno.h`.
  public static let operandInvalid = TDXStatus(rawValue: 0xC000_0100_0000_0000)
  /// `TDX_NON_RECOVERABLE_TD`: the TD has hit a fatal error and runs no more; every later
  /// call on it fails with this. Value from `arch/x86/include/asm/shared/tdx_errno.h`.
  public static let nonRecoverableTD = TDXStatus(rawValue: 0x4000_0002_0000_0000)
  /// `TDX_PAGE_ALREADY_ACCEPTED`: a warning (bit 63 clear) from TDG.MEM.PAGE.ACCEPT on a page the
  /// guest already accepted. That TDG.MMIO.ACCEPT reuses it is an assumption; the value is
  /// the base ABI's and not certain.
  public static let pageAlreadyAccepted = TDXStatus(rawValue: 0x0000_0B0A_0000_0000)
  /// `TDX_MMIOMT_ENTRY_INVALID`: the HPA has no MMIO metadata-table entry describing TEE
  /// device memory (not added, or marked IS_NON_TEE_MEM). Name and value not certain
  /// (TDX Connect draft): defined once here.
  public static let mmioMTEntryInvalid = TDXStatus(rawValue: 0xC000_0F43_0000_0000)
  /// `TDX_MMIO_PAGE_ALREADY_MAPPED`: the device page is already mapped at another GPA or in
  /// another TD. Name and value not certain.
  public static let mmioPageAlreadyMapped = TDXStatus(rawValue: 0xC000_0F44_0000_0000)
  /// `TDX_DEVIF_TD_MISMATCH`: the page's owning DEVIF belongs to another TD. Name and value
  /// not certain.
  public static let devifTDMismatch = TDXStatus(rawValue: 0xC000_0F45_0000_0000)
  /// `TDX_IDE_STREAM_BLOCKED`: the owning DEVIF's IDE stream is blocked, so the link can no
  /// longer be trusted for new mappings. Name and value not certain.
  public static let ideStreamBlocked = TDXStatus(rawValue: 0xC000_0F46_0000_0000)

  /// Statuses beyond the ones STACK.md names.
  static var moreNamed: [(name: String, status: TDXStatus)] {
    [
      ("TDX_OPERAND_INVALID", .operandInvalid),
      ("TDX_NON_RECOVERABLE_TD", .nonRecoverableTD),
      ("TDX_PAGE_ALREADY_ACCEPTED", .pageAlreadyAccepted),
      ("TDX_MMIOMT_ENTRY_INVALID", .mmioMTEntryInvalid),
      ("TDX_MMIO_PAGE_ALREADY_MAPPED", .mmioPageAlreadyMapped),
      ("TDX_DEVIF_TD_MISMATCH", .devifTDMismatch),
      ("TDX_IDE_STREAM_BLOCKED", .ideStreamBlocked),
    ]
  }
}

/// The operand field (bits 31:0) of a status: which register or object it is about.
///
/// Register operands are the register's number (RCX 1, RDX 2, R8 8, R9 9); object operands
/// are the ABI's ids. RCX, TDR (0x80), SEPT (0x92) and TD_EPOCH (0xA9) are the upstream
/// `TDX_OPERAND_ID_*` values; the TDVPS, DEVIF and MMIOMT ids are not certain (TDX Connect draft).
public enum TDXOperand {
  public static let rax: UInt32 = 0x00
  public static let rcx: UInt32 = 0x01
  public static let rdx: UInt32 = 0x02
  public static let r8: UInt32 = 0x08
  public static let r9: UInt32 = 0x09
  public static let tdr: UInt32 = 0x80
  /// The vCPU's TDVPS; not certain.
  public static let tdvps: UInt32 = 0x90
  public static let sept: UInt32 = 0x92
  public static let tdEpoch: UInt32 = 0xA9
  /// Not certain.
  public static let devif: UInt32 = 0xB0
  /// Not certain.
  public static let mmiomt: UInt32 = 0xB1
}
