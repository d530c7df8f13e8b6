import KernelCore

/// One `MMIO_RANGE` entry of a TDISP device interface report.
public struct TDISPMMIORange: Hashable, Sendable, CustomStringConvertible {
  /// `RANGE_ATTRIBUTES`. Bit positions as in the TDISP specification (also libspdm's
  /// `PCI_TDISP_MMIO_RANGE_ATTRIBUTES_*`); bits 4–15 are reserved.
  public struct Attributes: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// The range holds the MSI-X table.
    public static let msixTable = Attributes(rawValue: 1 << 0)
    /// The range holds the MSI-X Pending Bit Array.
    public static let msixPBA = Attributes(rawValue: 1 << 1)
    /// The range is not TEE memory: the host may access it, the TVM must treat it as shared.
    public static let isNonTEEMem = Attributes(rawValue: 1 << 2)
    /// The TVM may change the range's attributes with SET_MMIO_ATTRIBUTE.
    public static let isMemAttrUpdatable = Attributes(rawValue: 1 << 3)
  }

  /// `FIRST_PAGE`: the page frame of the range's first byte **as reported**, that is host
  /// physical address plus the lock's `MMIO_REPORTING_OFFSET`, shifted by 12. With the
  /// default offset of 0 this is the host PFN; `TDISPInterfaceReport.hostFirstPage(of:)`
  /// undoes the offset.
  public let firstPage: PFN
  /// `NUMBER_OF_PAGES`: 4 KiB pages in the range.
  public let numberOfPages: UInt32
  public let attributes: Attributes
  /// `RANGE_ID`: the BAR the range belongs to.
  public let rangeID: UInt16

  public init(firstPage: PFN, numberOfPages: UInt32, attributes: Attributes, rangeID: UInt16) {
    self.firstPage = firstPage
    self.numberOfPages = numberOfPages
    self.attributes = attributes
    self.rangeID = rangeID
  }

  /// Only TEE memory is private MMIO: what the TSM may map into the TVM's secure EPT.
  public var isPrivate: Bool { !attributes.contains(.isNonTEEMem) }

  /// `bar0 0x4000000000+16 []`, `bar0 0x4000000010+1 [MSIX_TABLE IS_NON_TEE_MEM]`.
  public var description: String {
    var names: [String] = []
    if attributes.contains(.msixTable) { names.append("MSIX_TABLE") }
    if attributes.contains(.msixPBA) { names.append("MSIX_PBA") }
    if attributes.contains(.isNonTEEMem) { names.append("IS_NON_TEE_MEM") }
    if attributes.contains(.isMemAttrUpdatable) { names.append("IS_MEM_ATTR_UPDATABLE") }
    return "bar\(rangeID) \(firstPage.hpa)+\(numberOfPages) [\(names.joined(separator: " "))]"
  }
}

/// A TDISP DEVICE_INTERFACE_REPORT: what the device says the interface is, which the TVM
/// checks before it accepts the device's MMIO.
public struct TDISPInterfaceReport: Hashable, Sendable {
  /// `INTERFACE_INFO` bits.
  public struct InterfaceInfo: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// The device refuses firmware updates while locked.
    public static let noFWUpdateAfterLock = InterfaceInfo(rawValue: 1 << 0)
    /// The TDI issues DMA without a PASID.
    public static let dmaWithoutPASID = InterfaceInfo(rawValue: 1 << 1)
    public static let dmaWithPASID = InterfaceInfo(rawValue: 1 << 2)
    public static let atsSupported = InterfaceInfo(rawValue: 1 << 3)
    public static let prsSupported = InterfaceInfo(rawValue: 1 << 4)
  }

  public let interfaceInfo: InterfaceInfo
  /// The `MMIO_REPORTING_OFFSET` of the lock, added into every `firstPage`.
  public let mmioReportingOffset: UInt64
  /// Every memory BAR, in BAR order, split where the MSI-X table and PBA pages begin and end.
  public let mmioRanges: [TDISPMMIORange]

  public init(interfaceInfo: InterfaceInfo, mmioReportingOffset: UInt64, mmioRanges: [TDISPMMIORange]) {
    self.interfaceInfo = interfaceInfo
    self.mmioReportingOffset = mmioReportingOffset
    self.mmioRanges = mmioRanges
  }

  /// The host PFN of a range's first page: the reported page minus the reporting offset.
  public func hostFirstPage(of range: TDISPMMIORange) -> PFN {
    PFN(range.firstPage.rawValue &- mmioReportingOffset.pages)
  }

  /// The ranges the TVM may accept as private MMIO.
  public var privateRanges: [TDISPMMIORange] { mmioRanges.filter(\.isPrivate) }

  /// Builds the report of `bars` under `parameters`.
  ///
  /// Each BAR becomes consecutive ranges: pages touching the MSI-X table get `MSIX_TABLE`,
  /// pages touching the PBA `MSIX_PBA`, and both are `IS_NON_TEE_MEM` unless the lock took
  /// the MSI-X structures into the TEE (`LOCK_MSIX`). Adjacent pages with equal attributes
  /// form one range; a range longer than `NUMBER_OF_PAGES` can express is split.
  /// - Complexity: O(BARs), independent of BAR size.
  static func build(bars: [BAR], parameters: TDISPLockParameters) -> TDISPInterfaceReport {
    var ranges: [TDISPMMIORange] = []
    let offsetPages = parameters.mmioReportingOffset.pages
    for bar in bars {
      let msix: TDISPMMIORange.Attributes = parameters.flags.contains(.lockMSIX) ? [] : .isNonTEEMem
      let table = bar.msixTable?.pages
      let pba = bar.msixPBA?.pages
      var cuts: Set<UInt64> = [0, bar.pageCount]
      for span in [table, pba].compactMap({ $0 }) {
        cuts.insert(span.lowerBound)
        cuts.insert(span.upperBound)
      }
      let points = cuts.sorted()
      // Segments between cut points are uniform: no MSI-X boundary falls inside one.
      var segments: [(start: UInt64, count: UInt64, attributes: TDISPMMIORange.Attributes)] = []
      for (start, end) in zip(points, points.dropFirst()) {
        var attributes: TDISPMMIORange.Attributes = []
        if let table, table.contains(start) { attributes.formUnion([.msixTable]); attributes.formUnion(msix) }
        if let pba, pba.contains(start) { attributes.formUnion([.msixPBA]); attributes.formUnion(msix) }
        if let last = segments.last, last.attributes == attributes {
          segments[segments.count - 1].count += end - start
        } else {
          segments.append((start, end - start, attributes))
        }
      }
      let firstPFN = bar.base.pfn.rawValue &+ offsetPages
      for segment in segments {
        var start = segment.start
        var remaining = segment.count
        while remaining > 0 {
          let chunk = min(remaining, UInt64(UInt32.max))
          ranges.append(TDISPMMIORange(firstPage: PFN(firstPFN &+ start), numberOfPages: UInt32(chunk),
                                       attributes: segment.attributes, rangeID: UInt16(bar.index)))
          start += chunk
          remaining -= chunk
        }
      }
    }
    var info: InterfaceInfo = [.dmaWithoutPASID]
    if parameters.flags.contains(.noFWUpdate) { info.insert(.noFWUpdateAfterLock) }
    return TDISPInterfaceReport(interfaceInfo: info, mmioReportingOffset: parameters.mmioReportingOffset,
                                mmioRanges: ranges)
  }
}
