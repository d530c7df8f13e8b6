import KernelCore

/// Marks a TD handle (in the ABI: the HPA of the TD's TDR page).
public enum TDTag {}
/// A TD as the module knows it. Allocated by `tdhMngCreate(vcpuCount:)`, never reused.
public typealias TDID = ObjectID<TDTag>

/// Marks a DEVIF handle (in the ABI: the HPA of the DEVIF's control page).
public enum DevifTag {}
/// A device-interface object, allocated by `tdhDevifCreate(td:interface:)`, never reused.
public typealias DevifID = ObjectID<DevifTag>

/// The TDI a DEVIF stands for, as the host names it to the module: the function's PCIe
/// routing id (bus/device/function). The module never looks inside it; it only refuses
/// two live DEVIFs for one interface.
@frozen
public struct DeviceInterfaceID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
  public let rawValue: UInt32
  @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
  @inlinable public init(_ raw: UInt32) { rawValue = raw }
  @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
  public var description: String { "rid 0x" + String(rawValue, radix: 16) }
}

/// A Secure-EPT mapping level, as the ABI encodes it in bits 2:0 of the GPA operand.
public enum SEPTLevel: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  case level4K = 0
  case level2M = 1
  case level1G = 2

  /// Bytes covered by one entry at this level.
  public var size: UInt64 { pageSize << (9 * UInt64(rawValue)) }
  public var description: String { ["4K", "2M", "1G"][Int(rawValue)] }
}

/// The state of a Secure-EPT leaf entry.
///
/// The MMIO encodings (0x40, 0x48, 0x50) are the TDX Connect draft's. They read as a base
/// "MMIO" value with bit 3 for blocked and bit 4 for pending; the RAM encodings below follow
/// that pattern and are not certain.
public enum SEPTState: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  case free = 0x00
  /// Not certain.
  case blocked = 0x08
  /// Not certain.
  case pending = 0x10
  /// Not certain.
  case mapped = 0x20
  case mmioMapped = 0x40
  case mmioBlocked = 0x48
  case mmioPending = 0x50

  /// Whether the entry maps (or mapped, until UNMAP) device MMIO.
  public var isMMIO: Bool { rawValue & 0x40 != 0 }

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
  /// FLR or a security-relevant config write while locked) both end that trust.
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

/// The attributes of an interface-report MMIO range (PCIe TDISP, DEVICE_INTERFACE_REPORT),
/// kept per page in the MMIO metadata table.
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
