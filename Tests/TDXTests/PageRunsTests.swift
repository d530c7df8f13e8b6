import KernelCore
import Testing
@testable import TDX

/// The MMIO metadata table and the Secure EPT keep runs of pages: these tests pin that they
/// read exactly as the per-entry dictionaries they replace, that a table's runs depend only on
/// its contents (so `==` and hashing are exact whatever the order of the writes), and how few
/// runs the usual patterns leave.
@Suite struct PageRunsTests {
  static let function = DeviceInterfaceID(0x0100)
  static let td = TDID(1)

  /// A small deterministic generator (SplitMix64), so every run of the test sees the same cases.
  struct Generator {
    var state: UInt64
    mutating func next() -> UInt64 {
      state &+= 0x9E37_79B9_7F4A_7C15
      var z = state
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func shuffled<T>(_ items: [T]) -> [T] {
      var out = items
      for i in stride(from: out.count - 1, to: 0, by: -1) { out.swapAt(i, below(i + 1)) }
      return out
    }
  }

  static func mapped(_ page: UInt64, gpaBase: UInt64 = 0x8000_0000) -> MMIOMTEntry {
    MMIOMTEntry(function: function, level: .level4K, mapping: MMIOMTMapping(td: td, gpa: GPA(gpaBase + page << 12)))
  }

  static func unmapped(_ function: DeviceInterfaceID = function, level: SEPTLevel = .level4K) -> MMIOMTEntry {
    MMIOMTEntry(function: function, level: level, mapping: nil)
  }

  // MARK: MMIOMT

  /// 512 pages assigned, then mapped at consecutive GPAs: in page order, in reverse, and in a
  /// shuffled order, the tables are equal, hash equal, and are one run.
  @Test(arguments: ["in order", "reversed", "shuffled"])
  func mmiomtOfABARMappedInAnyOrderIsOneRun(_ order: String) {
    var generator = Generator(state: 7)
    let pages = Array(UInt64(0) ..< 512)
    let sequence = order == "in order" ? pages : order == "reversed" ? pages.reversed() : generator.shuffled(pages)
    var table = MMIOMT()
    for page in sequence { table[PFN(0xFE000 + page)] = Self.unmapped() }
    #expect(table.runCount == 1)
    for page in sequence { table[PFN(0xFE000 + page)] = Self.mapped(page) }
    var reference = MMIOMT()
    for page in pages { reference[PFN(0xFE000 + page)] = Self.mapped(page) }
    #expect(table == reference)
    #expect(table.hashValue == reference.hashValue)
    #expect(table.runCount == 1)
    #expect(table.count == 512)
    #expect(Array(table.map(\.key)) == pages.map { PFN(0xFE000 + $0) })
  }

  /// Mapping one page in the middle of an assigned BAR splits its run in three; unmapping it
  /// merges them back, and the table equals one that never mapped it.
  @Test func oneMappedPageSplitsItsRunAndUnmappingMergesIt() {
    var table = MMIOMT()
    for page in UInt64(0) ..< 16 { table[PFN(0x100 + page)] = Self.unmapped() }
    let untouched = table
    table[PFN(0x105)]?.mapping = MMIOMTMapping(td: Self.td, gpa: GPA(0x9000_0000))
    #expect(table.runCount == 3)
    #expect(table[PFN(0x105)]?.mapping == MMIOMTMapping(td: Self.td, gpa: GPA(0x9000_0000)))
    #expect(table[PFN(0x104)]?.mapping == nil && table[PFN(0x106)]?.mapping == nil)
    #expect(table != untouched)
    table[PFN(0x105)]?.mapping = nil
    #expect(table.runCount == 1)
    #expect(table == untouched)
    #expect(table.hashValue == untouched.hashValue)
  }

  /// Runs merge only where the pages continue each other: another function, another level, a
  /// gap, another TD or a GPA that does not follow keep runs apart.
  @Test(arguments: ["function", "gap", "td", "gpa"])
  func runsStayApartWhereThePagesDoNotContinue(_ difference: String) {
    var table = MMIOMT()
    table[PFN(0x100)] = Self.mapped(0)
    let second: (PFN, MMIOMTEntry) = switch difference {
    case "function": (PFN(0x101), MMIOMTEntry(function: DeviceInterfaceID(0x0200), level: .level4K,
                                              mapping: MMIOMTMapping(td: Self.td, gpa: GPA(0x8000_1000))))
    case "gap": (PFN(0x102), Self.mapped(2))
    case "td": (PFN(0x101), MMIOMTEntry(function: Self.function, level: .level4K,
                                        mapping: MMIOMTMapping(td: TDID(2), gpa: GPA(0x8000_1000))))
    default: (PFN(0x101), Self.mapped(7))
    }
    table[second.0] = second.1
    #expect(table.runCount == 2)
    #expect(table[PFN(0x100)] == Self.mapped(0))
    #expect(table[second.0] == second.1)
  }

  /// A 2 MiB entry answers at its first page only; `entry(covering:)` finds it from any page.
  @Test func aTwoMegabyteEntryIsKeyedByItsFirstPage() {
    var table = MMIOMT()
    table[PFN(0x200)] = Self.unmapped(level: .level2M)
    #expect(table[PFN(0x200)] == Self.unmapped(level: .level2M))
    #expect(table[PFN(0x201)] == nil)
    #expect(table.entry(covering: PFN(0x3FF))?.first == PFN(0x200))
    #expect(table.entry(covering: PFN(0x400)) == nil)
    #expect(table.count == 1)
    table[PFN(0x201)] = nil                      // not an entry's first page: nothing to remove
    #expect(table.count == 1)
    table[PFN(0x200)] = nil
    #expect(table.isEmpty)
  }

  /// Clearing a TD's mappings (teardown) unmaps its runs and merges them with their
  /// unmapped neighbours.
  @Test func unmappingATDMergesItsRuns() {
    var table = MMIOMT()
    for page in UInt64(0) ..< 8 { table[PFN(0x100 + page)] = page % 3 == 0 ? Self.mapped(page * 5) : Self.unmapped() }
    #expect(table.runCount > 1)
    table.unmapAll(td: Self.td)
    #expect(table.runCount == 1)
    #expect(table.allSatisfy { $0.value.mapping == nil })
  }

  /// TDH.MMIO.MT.ADD+SET of a whole BAR leaves one run whatever the BAR's size: no state per
  /// page of a BAR nothing maps.
  @Test(arguments: [UInt64(4), 512, 65_536])
  func populatingABARKeepsOneRun(_ pages: UInt64) throws {
    var module = TDXModule()
    let td = try module.tdhMngCreate(vcpuCount: 1)
    let devif = try module.tdhDevifCreate(td: td, interface: Self.function)
    try module.tdhMMIOMTAdd(devif: devif, first: HPA(0x40_0000_0000), count: pages, attributes: [])
    #expect(module.mmiomt.runCount == 1)
    #expect(module.mmiomt.count == Int(pages))
    #expect(module.mmiomt.modelBytes == module.mmiomt.runCount * MemoryLayout<MMIOMT.Run>.stride)
  }

  /// The table's pages by level: found whatever the order they were added in, each once, and
  /// two sets with the same pages are equal.
  @Test func tablePagesAreFoundByLevelAndAddress() {
    // High levels cover all three addresses with one page: each page once.
    let nodes = Array(Set((0 ..< 5).flatMap { level in
      [UInt64(0x40_0000_0000), 0x40_4000_0000, 0x10_0000].map { MMIOMTNode.covering($0, level: UInt8(level)) }
    })).sorted()
    var forward = MMIOMTPages(), backward = MMIOMTPages()
    for node in nodes {
      let inserted = forward.insert(node)
      #expect(inserted)
    }
    for node in nodes.reversed() { backward.insert(node) }
    let again = forward.insert(nodes[3])
    #expect(!again)
    #expect(forward == backward && forward.hashValue == backward.hashValue)
    #expect(forward.count == nodes.count)
    #expect(nodes.allSatisfy(forward.contains))
    #expect(!forward.contains(MMIOMTNode.covering(0x50_0000_0000, level: 0)))
    #expect(!forward.contains(MMIOMTNode(level: 1, base: 0x40_0000_0000 + 0x1000)))
  }

  // MARK: Secure EPT

  static func entry(_ page: UInt64, _ state: SEPTState, bepoch: UInt64 = 0) -> SEPTEntry {
    SEPTEntry(state: state, level: .level4K, hpa: HPA(0xFE00_0000 + page << 12), bepoch: bepoch)
  }

  /// 64 pages mapped, then accepted in a shuffled order: the runs split and merge, ending as
  /// one MMIO_MAPPED run equal to a table built in page order.
  @Test func acceptingInAnyOrderEndsAsOneRun() {
    var generator = Generator(state: 11)
    var sept = SecureEPT()
    for page in UInt64(0) ..< 64 { sept[GPA(0x8000_0000 + page << 12)] = Self.entry(page, .mmioPending) }
    #expect(sept.runCount == 1)
    var most = 1
    for page in generator.shuffled(Array(UInt64(0) ..< 64)) {
      sept[GPA(0x8000_0000 + page << 12)]?.state = .mmioMapped
      most = max(most, sept.runCount)
    }
    var reference = SecureEPT()
    for page in UInt64(0) ..< 64 { reference[GPA(0x8000_0000 + page << 12)] = Self.entry(page, .mmioMapped) }
    #expect(most > 1)
    #expect(sept == reference)
    #expect(sept.hashValue == reference.hashValue)
    #expect(sept.runCount == 1)
  }

  /// Entries blocked in different epochs stay apart (each keeps its own block epoch); so do
  /// entries whose host pages do not follow each other.
  @Test func blockEpochsAndHostPagesKeepRunsApart() {
    var sept = SecureEPT()
    sept[GPA(0x1000)] = Self.entry(1, .mmioBlocked, bepoch: 3)
    sept[GPA(0x2000)] = Self.entry(2, .mmioBlocked, bepoch: 4)
    sept[GPA(0x3000)] = Self.entry(9, .mmioBlocked, bepoch: 4)
    #expect(sept.runCount == 3)
    #expect(sept[GPA(0x1000)]?.bepoch == 3 && sept[GPA(0x2000)]?.bepoch == 4)
    #expect(sept[GPA(0x3000)]?.hpa == HPA(0xFE00_9000))
  }

  /// The walk's questions: the leaf holding a GPA, and whether smaller leaves lie in a block.
  @Test func leafLookupsOfTheWalk() {
    var sept = SecureEPT()
    sept[GPA(0x20_0000)] = SEPTEntry(state: .mmioMapped, level: .level2M, hpa: HPA(0x4000_0000))
    sept[GPA(0x40_3000)] = Self.entry(3, .mmioPending)
    #expect(sept.leaf(covering: GPA(0x3F_F123))?.first == GPA(0x20_0000))
    #expect(sept.leaf(covering: GPA(0x3F_F123))?.entry.hpa == HPA(0x4000_0000))
    #expect(sept[GPA(0x20_1000)] == nil)
    #expect(sept.leaf(covering: GPA(0x40_3FFF))?.first == GPA(0x40_3000))
    #expect(sept.leaf(covering: GPA(0x40_4000)) == nil)
    #expect(sept.hasLeaf(below: .level2M, inBlockAt: GPA(0x40_0000)))
    #expect(!sept.hasLeaf(below: .level2M, inBlockAt: GPA(0x20_0000)))
    #expect(!sept.hasLeaf(below: .level1G, inBlockAt: GPA(0x4000_0000)))
    #expect(sept.count == 2)
  }

  // MARK: Against a dictionary

  /// Random writes and removals of 4 KiB entries: the run table reads exactly as a dictionary
  /// given the same writes, and its runs are those of a table built from that dictionary in
  /// page order (the runs are canonical).
  @Test(arguments: [1, 2, 3, 4, 5])
  func runsMatchADictionaryUnderRandomWrites(_ seed: UInt64) {
    var generator = Generator(state: seed)
    var sept = SecureEPT()
    var dictionary: [GPA: SEPTEntry] = [:]
    let states: [SEPTState] = [.mmioPending, .mmioMapped, .mmioBlocked]
    for _ in 0 ..< 2_000 {
      let page = UInt64(generator.below(96))
      let gpa = GPA(0x8000_0000 + page << 12)
      if generator.below(4) == 0 {
        sept[gpa] = nil
        dictionary[gpa] = nil
      } else {
        // Host pages follow the GPA, or not, so that runs both merge and stay apart.
        let hpaPage = generator.below(3) == 0 ? page + 1000 : page
        let entry = SEPTEntry(state: states[generator.below(3)], level: .level4K, hpa: HPA(0xFE00_0000 + hpaPage << 12),
                              bepoch: UInt64(generator.below(2)))
        sept[gpa] = entry
        dictionary[gpa] = entry
      }
    }
    for page in UInt64(0) ..< 96 {
      let gpa = GPA(0x8000_0000 + page << 12)
      #expect(sept[gpa] == dictionary[gpa])
    }
    var rebuilt = SecureEPT()
    for (gpa, entry) in dictionary.sorted(by: { $0.key < $1.key }) { rebuilt[gpa] = entry }
    #expect(sept == rebuilt)
    #expect(sept.hashValue == rebuilt.hashValue)
    #expect(sept.count == dictionary.count)
    #expect(sept.map(\.key) == dictionary.keys.sorted())
  }

  // MARK: Through the module

  /// A TD that maps and accepts every page of a 2 MiB BAR in order keeps one Secure-EPT run and
  /// one MMIOMT run, and the module's invariants hold: state per mapped page does not grow with
  /// the pages.
  /// A module with one TD whose DEVIF owns a BAR of `pages` pages at `bar`, each page mapped
  /// (MMIO_PENDING) at consecutive GPAs from 0x8000_0000, and accepted when `accept`.
  static func mappedBAR(pages: UInt64, accept: Bool) throws -> (TDXModule, TDID, DevifID) {
    var module = TDXModule()
    let td = try module.tdhMngCreate(vcpuCount: 1)
    let devif = try module.tdhDevifCreate(td: td, interface: Self.function)
    try module.tdhMMIOMTAdd(devif: devif, first: bar, count: pages, attributes: [])
    try module.observeTDISPState(devif: devif, state: .run)
    for page in UInt64(0) ..< pages {
      let gpa = GPA(0x8000_0000 + page << 12), hpa = bar.advanced(by: page << 12)
      try module.tdhMMIOMap(td: td, gpa: gpa, level: .level4K, hpa: hpa)
      if accept { _ = try module.tdgMMIOAccept(td: td, vcpu: 0, gpa: gpa, expectedHPA: hpa) }
    }
    return (module, td, devif)
  }

  static let bar = HPA(0x40_0000_0000)

  @Test func aBARMappedAndAcceptedInOrderIsOneRunInEachTable() throws {
    let (module, td, devif) = try Self.mappedBAR(pages: 512, accept: true)
    #expect(module.tds[td]?.sept.allSatisfy { $0.value.state == .mmioMapped } == true)
    #expect(module.tds[td]?.sept.runCount == 1)
    #expect(module.mmiomt.runCount == 1)
    #expect(module.devifs[devif]?.mappedPages == 512)
    #expect(module.invariantViolations().isEmpty)
  }

  /// The invariants' run-by-run check and their entry-by-entry messages agree: an MMIOMT
  /// mapping that names a GPA the Secure EPT does not map is reported for that page alone.
  @Test func aBrokenRunIsReportedPageByPage() throws {
    var (module, td, _) = try Self.mappedBAR(pages: 8, accept: false)
    module.tds[td]?.sept[GPA(0x8000_3000)] = nil
    let violations = module.invariantViolations()
    #expect(violations.map(\.name) == ["NoRemovedDevifHasMappedMMIO"])
    #expect(violations.first?.message.contains("page 0x4000003000") == true)
  }
}
