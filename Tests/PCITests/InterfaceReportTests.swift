import KernelCore
import Testing
@testable import PCI

/// A range as the tests spell it: first page relative to the BAR, count, attributes, BAR.
struct ExpectedRange: Hashable, Sendable, CustomStringConvertible {
  let page: UInt64
  let count: UInt32
  let attributes: TDISPMMIORange.Attributes
  let bar: UInt16
  var description: String { "bar\(bar) +\(page) x\(count) attr \(attributes.rawValue)" }
}

func relative(_ report: TDISPInterfaceReport, bars: [BAR]) -> [ExpectedRange] {
  report.mmioRanges.map { range in
    let base = bars.first { UInt16($0.index) == range.rangeID }?.base.pfn.rawValue ?? 0
    return ExpectedRange(page: report.hostFirstPage(of: range).rawValue - base, count: range.numberOfPages,
                         attributes: range.attributes, bar: range.rangeID)
  }
}

struct MSIXLayout: Sendable, CustomTestStringConvertible {
  let label: String
  let table: BARSpan?
  let pba: BARSpan?
  let expected: [ExpectedRange]
  var testDescription: String { label }
}

@Suite("TDISP: the device interface report")
struct InterfaceReportTests {
  static let nonTEE = TDISPMMIORange.Attributes.isNonTEEMem
  static let table: TDISPMMIORange.Attributes = [.msixTable, .isNonTEEMem]
  static let pba: TDISPMMIORange.Attributes = [.msixPBA, .isNonTEEMem]

  /// A 2 MiB BAR 0 (512 pages) with MSI-X structures placed in different ways.
  static let layouts: [MSIXLayout] = [
    MSIXLayout(label: "no MSI-X: one range", table: nil, pba: nil,
               expected: [ExpectedRange(page: 0, count: 512, attributes: [], bar: 0)]),
    MSIXLayout(label: "table and PBA on their own pages mid-BAR",
               table: BARSpan(offset: 0x1_0000, size: 0x800), pba: BARSpan(offset: 0x1_1000, size: 8),
               expected: [ExpectedRange(page: 0, count: 16, attributes: [], bar: 0),
                          ExpectedRange(page: 16, count: 1, attributes: table, bar: 0),
                          ExpectedRange(page: 17, count: 1, attributes: pba, bar: 0),
                          ExpectedRange(page: 18, count: 494, attributes: [], bar: 0)]),
    MSIXLayout(label: "table and PBA share a page",
               table: BARSpan(offset: 0x1_0000, size: 0x100), pba: BARSpan(offset: 0x1_0800, size: 8),
               expected: [ExpectedRange(page: 0, count: 16, attributes: [], bar: 0),
                          ExpectedRange(page: 16, count: 1, attributes: [.msixTable, .msixPBA, .isNonTEEMem], bar: 0),
                          ExpectedRange(page: 17, count: 495, attributes: [], bar: 0)]),
    MSIXLayout(label: "unaligned table straddles two pages",
               table: BARSpan(offset: 0x1_0F00, size: 0x200), pba: nil,
               expected: [ExpectedRange(page: 0, count: 16, attributes: [], bar: 0),
                          ExpectedRange(page: 16, count: 2, attributes: table, bar: 0),
                          ExpectedRange(page: 18, count: 494, attributes: [], bar: 0)]),
    MSIXLayout(label: "table first, PBA last",
               table: BARSpan(offset: 0, size: 0x2000), pba: BARSpan(offset: 0x1F_F000, size: 0x1000),
               expected: [ExpectedRange(page: 0, count: 2, attributes: table, bar: 0),
                          ExpectedRange(page: 2, count: 509, attributes: [], bar: 0),
                          ExpectedRange(page: 511, count: 1, attributes: pba, bar: 0)]),
  ]

  @Test(arguments: layouts)
  func msixPagesAreSplitOut(_ layout: MSIXLayout) throws {
    let bars = [BAR(index: 0, size: 0x20_0000, base: bar0Base, msixTable: layout.table, msixPBA: layout.pba)]
    var function = try makeNIC(bars: bars)
    var trace = Trace()
    _ = try function.tdispLockInterface(trace: &trace)
    let report = try function.tdispInterfaceReport()
    #expect(relative(report, bars: bars) == layout.expected)
    #expect(report.mmioRanges.reduce(0) { $0 + UInt64($1.numberOfPages) } == 512)
  }

  @Test func everyBARIsReportedInOrderWithItsIndexAsRangeID() throws {
    let function = try makeNIC(in: .configLocked)
    let report = try function.tdispInterfaceReport()
    #expect(report.mmioRanges.map(\.rangeID) == [0, 0, 0, 0, 2])
    #expect(report.mmioRanges.first?.firstPage == bar0Base.pfn)
    #expect(report.mmioRanges.last == TDISPMMIORange(firstPage: bar2Base.pfn, numberOfPages: 16,
                                                    attributes: [], rangeID: 2))
    #expect(report.interfaceInfo == [.dmaWithoutPASID])
    #expect(report.mmioReportingOffset == 0)
  }

  @Test func onlyTEEMemoryIsPrivate() throws {
    let report = try makeNIC(in: .configLocked).tdispInterfaceReport()
    #expect(report.privateRanges.map(\.numberOfPages) == [16, 494, 16])
    #expect(report.mmioRanges.filter { !$0.isPrivate }.map(\.attributes) == [Self.table, Self.pba])
  }

  @Test func lockMSIXTakesTheMSIXStructuresIntoTheTEE() throws {
    let function = try makeNIC(in: .configLocked, parameters: TDISPLockParameters(flags: [.lockMSIX]))
    let report = try function.tdispInterfaceReport()
    #expect(report.mmioRanges.map(\.attributes) == [[], [.msixTable], [.msixPBA], [], []])
    #expect(report.privateRanges.count == 5)
  }

  @Test func noFWUpdateIsReflectedInInterfaceInfo() throws {
    let function = try makeNIC(in: .configLocked, parameters: TDISPLockParameters(flags: [.noFWUpdate]))
    #expect(try function.tdispInterfaceReport().interfaceInfo == [.dmaWithoutPASID, .noFWUpdateAfterLock])
  }

  @Test func reportingOffsetIsAddedToEveryFirstPage() throws {
    let offset: UInt64 = 0x1000_0000_0000
    let function = try makeNIC(in: .configLocked, parameters: TDISPLockParameters(mmioReportingOffset: offset))
    let report = try function.tdispInterfaceReport()
    #expect(report.mmioReportingOffset == offset)
    #expect(report.mmioRanges.first?.firstPage == PFN(bar0Base.pfn.rawValue + offset.pages))
    #expect(relative(report, bars: nicBARs).first == ExpectedRange(page: 0, count: 16, attributes: [], bar: 0))
  }

  @Test func theReportInRunEqualsTheReportUnderLock() throws {
    let parameters = TDISPLockParameters(flags: [.lockMSIX], mmioReportingOffset: 0x10_0000)
    let locked = try makeNIC(in: .configLocked, parameters: parameters).tdispInterfaceReport()
    let running = try makeNIC(in: .run, parameters: parameters).tdispInterfaceReport()
    #expect(locked == running)
  }

  @Test(arguments: [
    ("unaligned reporting offset", TDISPLockParameters(mmioReportingOffset: 0x800)),
    ("reporting offset wraps", TDISPLockParameters(mmioReportingOffset: 0xFFFF_FFC0_0000_0000)),
    ("P2P binding not supported", TDISPLockParameters(flags: [.bindP2P])),
    ("request redirect not supported", TDISPLockParameters(flags: [.allRequestRedirect])),
  ])
  func badLockParametersAreRefused(_ label: String, _ parameters: TDISPLockParameters) throws {
    var function = try makeNIC()
    let before = function
    var trace = Trace()
    #expect(throws: TDISPError.invalidRequest) { try function.tdispLockInterface(parameters, trace: &trace) }
    #expect(function == before)
  }

  @Test func aBARLargerThanOneRangeCanDescribeIsSplit() throws {
    // 32 TiB is 2^33 pages; NUMBER_OF_PAGES is 32 bits.
    let huge = BAR(index: 0, size: 1 << 45, base: HPA(1 << 45))
    var function = try makeNIC(bars: [huge])
    var trace = Trace()
    _ = try function.tdispLockInterface(trace: &trace)
    let report = try function.tdispInterfaceReport()
    #expect(report.mmioRanges.map(\.numberOfPages) == [UInt32.max, UInt32.max, 2])
    #expect(report.mmioRanges[1].firstPage == PFN((1 << 33) + UInt64(UInt32.max)))
  }

  @Test(arguments: [(TDIState.configUnlocked, false), (.configLocked, true), (.run, true), (.error, false)])
  func reportIsValidOnlyUnderLock(_ state: TDIState, valid: Bool) throws {
    let function = try makeNIC(in: state)
    if valid {
      #expect(try function.tdispInterfaceReport().mmioRanges.count == 5)
    } else {
      #expect(throws: TDISPError.invalidInterfaceState) { try function.tdispInterfaceReport() }
    }
  }

  @Test(arguments: [(TDISPMMIORange.Attributes.msixTable, UInt16(0x1)), (.msixPBA, 0x2),
                    (.isNonTEEMem, 0x4), (.isMemAttrUpdatable, 0x8)])
  func attributeBitsAreTheSpecificationsValues(_ attribute: TDISPMMIORange.Attributes, raw: UInt16) {
    #expect(attribute.rawValue == raw)
  }
}
