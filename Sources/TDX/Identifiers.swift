import KernelCore

/// Marks a TD handle (in the ABI: the HPA of the TD's TDR page).
public enum TDTag {}
/// A TD as the module knows it. Allocated by `tdhMngCreate(vcpuCount:)`, never reused.
public typealias TDID = ObjectID<TDTag>

/// Marks a DEVIF handle (in the ABI: the HPA of the DEVIF's root control page, DEVIFCS,
/// passed in R8 of TDH.DEVIF.CREATE). Later leaves name the DEVIF by its function id.
public enum DevifTag {}
/// A device-interface object, allocated by `tdhDevifCreate(td:interface:)`, never reused.
public typealias DevifID = ObjectID<DevifTag>

/// The TDI a DEVIF stands for: the module's `FUNCTION_ID` (`fucntion_id_t` in the TDX Connect
/// TDISP definitions): the requester id (bus/device/function) in bits 15:0, the segment in
/// bits 23:16, "segment valid" in bit 24 (must be 0), bits 31:25 reserved. The DEVIF metadata
/// table (DEVIFMT) is indexed by it: one live DEVIF per function id.
@frozen
public struct DeviceInterfaceID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
  public let rawValue: UInt32
  @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
  @inlinable public init(_ raw: UInt32) { rawValue = raw }
  @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
  public var description: String { "rid 0x" + String(rawValue, radix: 16) }
  /// Whether the reserved bits 31:24 are clear (`verify_function_id()` refuses them).
  public var isValid: Bool { rawValue & 0xFF00_0000 == 0 }
}

/// A Secure-EPT mapping level, as the ABI encodes it in bits 2:0 of the GPA operand
/// (`page_info_api_input_t.level` in `include/tdx_api_defs.h`; `ept_level_t` LVL_PT = 0,
/// LVL_PD = 1, LVL_PDPT = 2). The MMIO leaves accept LVL_PT..LVL_PDPT
/// (`verify_page_info_input(gpa_mapping, LVL_PT, LVL_PDPT)` in `tdh_mmio_map.c`).
public enum SEPTLevel: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  case level4K = 0
  case level2M = 1
  case level1G = 2

  /// Bytes covered by one entry at this level.
  public var size: UInt64 { pageSize << (9 * UInt64(rawValue)) }
  /// 4 KiB pages covered by one entry at this level.
  public var pages: UInt64 { 1 << (9 * UInt64(rawValue)) }
  public var description: String { ["4K", "2M", "1G"][Int(rawValue)] }
}

/// The state of a Secure-EPT leaf entry, by the module's internal encoding (bits PS:D of the
/// entry): `SEPT_STATE_*_ENCODING` in `include/auto_gen_2_0/sept_state_lookup.h` (commit
/// `1666adc4`, generated from architecture commit `74b9c954`). ``publicState`` is the
/// architectural value TDH.MEM.SEPT.RD reports (`sept_special_flags_lookup[].public_state`
/// in `sept_state_lookup.c`).
public enum SEPTState: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  case free = 0x0E
  case blocked = 0x68
  case pending = 0x70
  case mapped = 0x60
  case mmioMapped = 0x40
  case mmioBlocked = 0x48
  case mmioPending = 0x50

  /// Whether the entry maps (or mapped, until UNMAP) device MMIO.
  public var isMMIO: Bool { self == .mmioMapped || self == .mmioBlocked || self == .mmioPending }

  /// The public state number: FREE 0, BLOCKED 1, PENDING 2, MAPPED 4, MMIO_MAPPED 32,
  /// MMIO_BLOCKED 33, MMIO_PENDING 34.
  public var publicState: UInt8 {
    switch self {
    case .free: 0
    case .blocked: 1
    case .pending: 2
    case .mapped: 4
    case .mmioMapped: 32
    case .mmioBlocked: 33
    case .mmioPending: 34
    }
  }

  /// `guest_accessible_leaf` in `sept_special_flags_lookup` (MAPPED and MMIO_MAPPED here):
  /// a TDG.MMIO.ACCEPT that meets such a leaf answers `TDX_PAGE_ALREADY_ACCEPTED`.
  public var isGuestAccessibleLeaf: Bool { self == .mapped || self == .mmioMapped }

  public var description: String {
    switch self {
    case .free: "FREE"
    case .blocked: "BLOCKED"
    case .pending: "PENDING"
    case .mapped: "MAPPED"
    case .mmioMapped: "MMIO_MAPPED"
    case .mmioBlocked: "MMIO_BLOCKED"
    case .mmioPending: "MMIO_PENDING"
    }
  }
}

/// The TDISP state of a TDI, as the module has last seen it in a TDISP response it relayed
/// (PCIe TDISP: `CONFIG_UNLOCKED 0`, `CONFIG_LOCKED 1`, `RUN 2`, `ERROR 3`).
public enum DevifTDISPState: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  case configUnlocked = 0
  case configLocked = 1
  case run = 2
  case error = 3

  /// Whether the TDI's MMIO may be trusted by the TD: the interface is locked or running.
  /// `CONFIG_UNLOCKED` (after STOP_INTERFACE or a conventional reset) and `ERROR` (after an
  /// FLR or a security-relevant config write while locked) both end that trust. The module
  /// itself never asks this: TDH.MMIO.UNMAP and TDH.DEVIF.REMOVE test for CONFIG_UNLOCKED
  /// exactly (`tdisp_sts != TDISP_STATE_CONFIG_UNLOCKED`), so ERROR does not let them pass.
  public var isTrusted: Bool { self == .configLocked || self == .run }

  public var description: String {
    switch self {
    case .configUnlocked: "CONFIG_UNLOCKED"
    case .configLocked: "CONFIG_LOCKED"
    case .run: "RUN"
    case .error: "ERROR"
    }
  }
}

/// The attributes of an interface-report MMIO range (PCIe TDISP, DEVICE_INTERFACE_REPORT).
///
/// The module's MMIO metadata table keeps none of these (`mmiomt_data_t` holds a function id,
/// a `mapped` flag and the block epoch only): they are what the *host* reads to decide which
/// pages to assign with TDH.MMIO.MT.SET. ``TDXModule/tdhMMIOMTAdd(devif:first:count:attributes:)``
/// uses them that way.
@frozen
public struct MMIOMTAttributes: OptionSet, Hashable, Sendable {
  public let rawValue: UInt32
  @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
  /// The range holds the MSI-X table.
  public static let msixTable = MMIOMTAttributes(rawValue: 1 << 0)
  /// The range holds the MSI-X pending-bit array.
  public static let msixPBA = MMIOMTAttributes(rawValue: 1 << 1)
  /// `IS_NON_TEE_MEM`: shared MMIO; it must never be mapped privately.
  public static let isNonTEEMem = MMIOMTAttributes(rawValue: 1 << 2)
  /// `IS_MEM_ATTR_UPDATABLE`.
  public static let isMemAttrUpdatable = MMIOMTAttributes(rawValue: 1 << 3)
  /// Every bit the report defines; others are reserved.
  public static let all: MMIOMTAttributes = [.msixTable, .msixPBA, .isNonTEEMem, .isMemAttrUpdatable]
}
