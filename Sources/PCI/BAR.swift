import KernelCore

/// A byte window inside a BAR: where the MSI-X table or the Pending Bit Array lives.
///
/// The PCI MSI-X capability gives each as a BAR indicator plus an offset (Table Offset/BIR,
/// PBA Offset/BIR); the sizes follow from the table size field (16 bytes per vector) and one
/// bit per vector for the PBA, rounded up to QWORDs.
public struct BARSpan: Hashable, Sendable, CustomStringConvertible {
  /// Offset of the first byte from the start of the BAR.
  public let offset: UInt64
  /// Length in bytes.
  public let size: UInt64

  public init(offset: UInt64, size: UInt64) {
    self.offset = offset
    self.size = size
  }

  /// One past the last byte, or `nil` when `offset + size` wraps.
  public var end: UInt64? {
    let (sum, overflow) = offset.addingReportingOverflow(size)
    return overflow ? nil : sum
  }

  /// The 4 KiB pages the span touches, counted from the BAR start. A device cannot protect
  /// less than a page, so a partly covered page takes the span's attributes.
  /// Only meaningful for a validated span (non-empty, not wrapping).
  var pages: Range<UInt64> {
    let last = offset &+ size &- 1
    return (offset >> pageShift)..<((last >> pageShift) &+ 1)
  }

  public var description: String {
    "[0x\(String(offset, radix: 16)), +0x\(String(size, radix: 16)))"
  }
}

/// One past the highest physical address an x86-64 CPU can generate (MAXPHYADDR 52).
public let maxPhysicalAddressLimit: UInt64 = 1 << 52

/// One memory BAR of a PCIe function, as the platform assigned it (the `pci_dev->resource[]`
/// entry for BAR `index`). The model has memory BARs only; an index that is not listed is
/// not implemented (a zero-sized resource in the kernel).
public struct BAR: Hashable, Sendable {
  /// The BAR register number, 0...5.
  public let index: UInt32
  /// The decoded size: a power of two of at least 4 KiB.
  public let size: UInt64
  /// The host physical address the BAR decodes at, naturally aligned to `size`.
  public let base: HPA
  /// A 64-bit BAR also occupies register `index + 1` (`PCI_BASE_ADDRESS_MEM_TYPE_64`).
  public let is64Bit: Bool
  /// `PCI_BASE_ADDRESS_MEM_PREFETCH`.
  public let prefetchable: Bool
  /// The MSI-X table, when this BAR holds it.
  public let msixTable: BARSpan?
  /// The MSI-X Pending Bit Array, when this BAR holds it.
  public let msixPBA: BARSpan?

  /// Describes a BAR; `PCIFunction.init` validates it against the rules of PCI.
  public init(index: UInt32, size: UInt64, base: HPA, is64Bit: Bool = true, prefetchable: Bool = true,
              msixTable: BARSpan? = nil, msixPBA: BARSpan? = nil) {
    self.index = index
    self.size = size
    self.base = base
    self.is64Bit = is64Bit
    self.prefetchable = prefetchable
    self.msixTable = msixTable
    self.msixPBA = msixPBA
  }

  /// The last host physical address the BAR decodes (`pci_resource_end`).
  public var last: HPA { base.advanced(by: size &- 1) }

  /// The number of 4 KiB pages the BAR spans.
  public var pageCount: UInt64 { size.pages }

  /// Whether `hpa` falls inside the BAR.
  public func contains(_ hpa: HPA) -> Bool { hpa >= base && hpa <= last }

  /// Checks one BAR on its own; `PCIFunction.init` checks BARs against each other.
  /// - Throws: `EINVAL` when the index is past 5, a 64-bit BAR starts at 5 (it would need
  ///   register 6), the size is not a power of two or below 4 KiB, the base is not aligned to
  ///   the size, the BAR ends past 2^52 (x86-64 MAXPHYADDR), a 32-bit BAR does not sit below 4 GiB,
  ///   or an MSI-X span is empty, wraps, leaves the BAR or overlaps the other one.
  func validate() throws(Errno) {
    if let problem { throw Errno.EINVAL.because("__pci_read_base", problem) }
  }

  /// What is wrong with this BAR on its own, in words; `nil` when nothing is (see ``validate()``).
  public var problem: String? {
    guard index <= 5 else { return "BAR index \(index) is past BAR 5" }
    if is64Bit && index == 5 {
      return "BAR 5 cannot be 64-bit: a 64-bit BAR takes two registers and there is no register 6"
    }
    guard size >= pageSize, size & (size &- 1) == 0 else {
      return "size 0x\(String(size, radix: 16)) is not a power of two of at least 4 KiB"
    }
    guard base.isAligned(to: size) else { return "base \(base) is not aligned to its size 0x\(String(size, radix: 16))" }
    // The CPU reaches no MMIO past its physical address width (52 bits on x86-64), and a
    // 32-bit memory BAR has no upper address bits to decode above 4 GiB.
    let (end, wraps) = base.rawValue.addingReportingOverflow(size)
    if !is64Bit, wraps || end > 1 << 32 { return "a 32-bit BAR must lie below 4 GiB, and \(base) + 0x\(String(size, radix: 16)) does not" }
    if wraps || end > maxPhysicalAddressLimit { return "it ends past 2^52, the x86-64 physical address limit" }
    for (name, span) in [("msix_table", msixTable), ("msix_pba", msixPBA)] {
      guard let span else { continue }
      guard span.size > 0, let spanEnd = span.end, spanEnd <= size else {
        return "\(name) \(span) is empty or does not fit in the BAR's 0x\(String(size, radix: 16)) bytes"
      }
    }
    if let table = msixTable, let pba = msixPBA, let tableEnd = table.end, let pbaEnd = pba.end,
       table.offset < pbaEnd, pba.offset < tableEnd {
      return "msix_table \(table) and msix_pba \(pba) overlap"
    }
    return nil
  }

  /// The first BAR of `bars` (in index order) that is wrong on its own or against an earlier
  /// one, as its position in `bars` and what is wrong, in words: what `PCIFunction.init`
  /// refuses with `EINVAL`.
  public static func firstProblem(in bars: [BAR]) -> (position: Int, problem: String)? {
    let order = bars.indices.sorted { bars[$0].index < bars[$1].index }
    var owner: [UInt32: BAR] = [:]
    for (n, position) in order.enumerated() {
      let bar = bars[position]
      if let problem = bar.problem { return (position, problem) }
      for register in bar.is64Bit ? [bar.index, bar.index + 1] : [bar.index] {
        guard let other = owner[register] else { owner[register] = bar; continue }
        if other.index == register { return (position, "BAR \(register) is defined twice") }
        return (position, "register \(register) is the upper half of 64-bit BAR \(other.index)"
          + (register != bar.index ? " (a 64-bit BAR \(bar.index) needs registers \(bar.index) and \(register))" : ""))
      }
      // Naturally aligned power-of-two windows either nest or are disjoint.
      if let other = order[..<n].map({ bars[$0] }).first(where: { $0.base <= bar.last && bar.base <= $0.last }) {
        return (position, "its addresses [\(bar.base), \(bar.last)] overlap BAR \(other.index)'s")
      }
    }
    return nil
  }
}

/// Hands out naturally aligned BAR addresses from a host MMIO window, the way firmware or
/// `pci_assign_unassigned_resources()` places BARs: each BAR aligned to its own size.
public struct MMIOWindowAllocator: Hashable, Sendable {
  /// The window's first address.
  public let base: HPA
  /// The next free address.
  public private(set) var next: HPA
  /// One past the last usable address.
  public let limit: HPA

  public init(base: HPA, limit: HPA) {
    self.base = base
    next = base
    self.limit = limit
  }

  /// The 64-bit window: from 256 GiB, above any RAM the model has, up to MAXPHYADDR (2^52).
  public static let default64Bit = MMIOWindowAllocator(base: HPA(0x40_0000_0000), limit: HPA(maxPhysicalAddressLimit))
  /// The 32-bit window below 4 GiB, from `0xC000_0000` up to the IOAPIC at `0xFEC0_0000`.
  public static let default32Bit = MMIOWindowAllocator(base: HPA(0xC000_0000), limit: HPA(0xFEC0_0000))

  /// Reserves `size` bytes aligned to `size` and returns their base.
  /// - Throws: `EINVAL` for a size that is not a power of two of at least 4 KiB; `ENOSPC`
  ///   when the window has no room left (nothing is reserved then), with the reason
  ///   `pci_assign_resource()` prints ("no space for ...").
  public mutating func allocate(size: UInt64) throws(Errno) -> HPA {
    guard size >= pageSize, size & (size &- 1) == 0 else {
      throw .EINVAL.because("pci_assign_resource", "size 0x\(String(size, radix: 16)) is not a power of two of at least 4 KiB")
    }
    let mask = size &- 1
    let (bumped, o1) = next.rawValue.addingReportingOverflow(mask)
    let start = bumped & ~mask
    let (end, o2) = start.addingReportingOverflow(size)
    guard !o1, !o2, end <= limit.rawValue else {
      let free = limit.rawValue - min(next.rawValue, limit.rawValue)
      throw .ENOSPC.because("pci_assign_resource", "no space for \(Self.sizeText(size)) aligned to its size in "
        + "window [\(base)-\(HPA(limit.rawValue &- 1))]: "
        + "\(Self.sizeText(free)) left from \(next)")
    }
    next = HPA(end)
    return HPA(start)
  }

  /// `2 MiB`, `64 GiB`, `0x3000 bytes`: a size as people say it.
  public static func sizeText(_ bytes: UInt64) -> String {
    guard bytes > 0 else { return "0 bytes" }
    let units: [(UInt64, String)] = [(1 << 50, "PiB"), (1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
    for (unit, name) in units where bytes >= unit && bytes % unit == 0 { return "\(bytes / unit) \(name)" }
    return "0x\(String(bytes, radix: 16)) bytes"
  }
}
