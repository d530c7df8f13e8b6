import KernelCore

/// A page-table level of the TDP MMU, numbered as `enum pg_level` in
/// `arch/x86/include/asm/kvm_host.h` (`PG_LEVEL_4K = 1` … `PG_LEVEL_512G = 4`).
public enum PGLevel: Int, Hashable, Sendable, Comparable, CaseIterable, CustomStringConvertible {
  case level4K = 1
  case level2M = 2
  case level1G = 3
  /// The root table's level; never a leaf here (KVM maps at most 1 GiB).
  case level512G = 4

  public static func < (a: PGLevel, b: PGLevel) -> Bool { a.rawValue < b.rawValue }

  /// 4 KiB pages one entry at this level covers (`KVM_PAGES_PER_HPAGE(level)`).
  @inlinable public var pages: UInt64 { 1 << (9 * UInt64(rawValue - 1)) }
  /// Bytes one entry at this level covers (`KVM_HPAGE_SIZE(level)`).
  @inlinable public var bytes: UInt64 { pages << pageShift }
  /// The order (log2 of 4 KiB pages) of a mapping at this level.
  @inlinable public var order: UInt8 { UInt8(9 * (rawValue - 1)) }
  /// Bit position of this level's 9-bit index in a GFN (`SPTE_LEVEL_SHIFT(level) - PAGE_SHIFT`).
  @inlinable var gfnShift: UInt64 { 9 * UInt64(rawValue - 1) }
  /// The next smaller level; `nil` at 4 KiB.
  @inlinable public var lower: PGLevel? { PGLevel(rawValue: rawValue - 1) }
  /// Levels a leaf SPTE may live at.
  public static let leafLevels: [PGLevel] = [.level4K, .level2M, .level1G]

  public var description: String {
    switch self {
    case .level4K: "4K"
    case .level2M: "2M"
    case .level1G: "1G"
    case .level512G: "512G"
    }
  }
}

/// An EPT memory type, bits 5:3 of a leaf EPT entry (`VMX_EPT_MT_EPTE_SHIFT` = 3,
/// values as the MTRR types `MTRR_TYPE_UNCACHABLE` 0 … `MTRR_TYPE_WRBACK` 6).
public enum EPTMemoryType: UInt8, Hashable, Sendable {
  case uncachable = 0
  case writeCombining = 1
  case writeThrough = 4
  case writeProtected = 5
  case writeBack = 6
}

/// A shadow page-table entry of the TDP MMU in EPT format (`u64 spte`, built by `make_spte()`
/// in `arch/x86/kvm/mmu/spte.c`; bits from `arch/x86/include/asm/vmx.h` and `spte.h`).
///
/// The model stores leaf SPTEs only; a non-leaf entry is the child table itself.
@frozen public struct SPTE: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: UInt64
  @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// `VMX_EPT_READABLE_MASK`, bit 0.
  public static let readableMask: UInt64 = 1 << 0
  /// `VMX_EPT_WRITABLE_MASK`, bit 1.
  public static let writableMask: UInt64 = 1 << 1
  /// `VMX_EPT_EXECUTABLE_MASK`, bit 2.
  public static let executableMask: UInt64 = 1 << 2
  /// `VMX_EPT_MT_EPTE_SHIFT`: the memory type lives in bits 5:3.
  public static let memoryTypeShift: UInt64 = 3
  /// `VMX_EPT_IPAT_BIT`, bit 6: ignore the guest's PAT.
  public static let ignorePATMask: UInt64 = 1 << 6
  /// `PT_PAGE_SIZE_MASK` (EPT bit 7): a leaf above 4 KiB.
  public static let largeMask: UInt64 = 1 << 7
  /// `SPTE_MMU_PRESENT_MASK`, bit 11: KVM's own "shadow present" marker, so an entry with
  /// no access bits is still recognisably present.
  public static let mmuPresentMask: UInt64 = 1 << 11
  /// `SPTE_BASE_ADDR_MASK`: physical address bits 51:12.
  public static let baseAddressMask: UInt64 = ((1 << 52) - 1) & ~(pageSize - 1)

  /// An SPTE as `make_spte()` builds it for `pfn` at `level`. MMIO is uncached and honours
  /// the guest PAT (IPAT clear), RAM is write-back with IPAT set: `vmx_get_mt_mask()`.
  public init(pfn: PFN, level: PGLevel, writable: Bool, executable: Bool, mmio: Bool) {
    var raw = SPTE.mmuPresentMask | SPTE.readableMask | ((pfn.rawValue << pageShift) & SPTE.baseAddressMask)
    if writable { raw |= SPTE.writableMask }
    if executable { raw |= SPTE.executableMask }
    if mmio {
      raw |= UInt64(EPTMemoryType.uncachable.rawValue) << SPTE.memoryTypeShift
    } else {
      raw |= UInt64(EPTMemoryType.writeBack.rawValue) << SPTE.memoryTypeShift | SPTE.ignorePATMask
    }
    if level > .level4K { raw |= SPTE.largeMask }
    rawValue = raw
  }

  /// `is_shadow_present_pte()`.
  @inlinable public var isPresent: Bool { rawValue & SPTE.mmuPresentMask != 0 }
  @inlinable public var isReadable: Bool { rawValue & SPTE.readableMask != 0 }
  @inlinable public var isWritable: Bool { rawValue & SPTE.writableMask != 0 }
  @inlinable public var isExecutable: Bool { rawValue & SPTE.executableMask != 0 }
  /// `is_large_pte()`.
  @inlinable public var isLarge: Bool { rawValue & SPTE.largeMask != 0 }
  @inlinable public var ignoresPAT: Bool { rawValue & SPTE.ignorePATMask != 0 }
  /// The raw memory-type field (bits 5:3).
  @inlinable public var memoryTypeBits: UInt8 { UInt8((rawValue >> SPTE.memoryTypeShift) & 7) }
  public var memoryType: EPTMemoryType? { EPTMemoryType(rawValue: memoryTypeBits) }
  /// `spte_to_pfn()`.
  @inlinable public var pfn: PFN { PFN((rawValue & SPTE.baseAddressMask) >> pageShift) }

  /// The `index`-th child-level piece of a huge mapping, as `make_small_spte()` builds it when
  /// a huge SPTE is split: same attributes, PFN advanced, large bit only above 4 KiB.
  func splitPiece(index: UInt64, childLevel: PGLevel) -> SPTE {
    var raw = rawValue & ~SPTE.baseAddressMask & ~SPTE.largeMask
    raw |= ((pfn.rawValue &+ index &* childLevel.pages) << pageShift) & SPTE.baseAddressMask
    if childLevel > .level4K { raw |= SPTE.largeMask }
    return SPTE(rawValue: raw)
  }

  public var description: String {
    let perms = (isReadable ? "r" : "-") + (isWritable ? "w" : "-") + (isExecutable ? "x" : "-")
    let mt = memoryType.map { "\($0)" } ?? "mt\(memoryTypeBits)"
    return "spte(pfn \(pfn) \(perms) \(mt)\(ignoresPAT ? " ipat" : "")\(isLarge ? " large" : ""))"
  }
}
