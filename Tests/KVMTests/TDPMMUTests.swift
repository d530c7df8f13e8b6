import Testing
import KernelCore
@testable import KVM

func mmioSPTE(_ pfn: UInt64, _ level: PGLevel) -> SPTE {
  SPTE(pfn: PFN(pfn), level: level, writable: true, executable: true, mmio: true)
}

@Test func spteBitsAreTheEPTOnes() {
  let mmio = mmioSPTE(0x12345, .level2M)
  #expect(mmio.rawValue & 0b111 == 0b111)
  #expect(mmio.memoryTypeBits == 0)            // UC
  #expect(!mmio.ignoresPAT)
  #expect(mmio.rawValue & (1 << 7) != 0)       // large
  #expect(mmio.pfn == PFN(0x12345))
  let ram = SPTE(pfn: PFN(1), level: .level4K, writable: false, executable: false, mmio: false)
  #expect(ram.memoryTypeBits == 6 && ram.ignoresPAT && !ram.isLarge && !ram.isWritable)
}

@Test(arguments: [
  // (gfn, pfn, slot base, slot pages, order, cap, expected)
  (0x200, 0x80200, 0x200, 512, 9, PGLevel.level1G, PGLevel.level2M),                 // aligned 2M
  (0x40000, 0x100000, 0x40000, 1 << 18, 18, PGLevel.level1G, PGLevel.level1G),       // aligned 1G
  (0x201, 0x80201, 0x200, 512, 9, PGLevel.level1G, PGLevel.level2M),                 // inside block
  (0x200, 0x80201, 0x200, 512, 9, PGLevel.level1G, PGLevel.level4K),                 // HPA misaligned
  (0x200, 0x80200, 0x200, 512, 0, PGLevel.level1G, PGLevel.level4K),                 // exporter order 0
  (0x3ff, 0x803ff, 0x201, 511, 9, PGLevel.level1G, PGLevel.level4K),                 // slice at slot edge
  (0x400, 0x80400, 0x200, 1024, 9, PGLevel.level1G, PGLevel.level2M),                // second 2M block
  (0x200, 0x80200, 0x200, 512, 9, PGLevel.level4K, PGLevel.level4K),                 // TD cap
  (0x40000, 0x100000, 0x40000, 1 << 18, 9, PGLevel.level1G, PGLevel.level2M),        // order caps at 2M
])
func hugepageLevelChoice(gfn: UInt64, pfn: UInt64, base: UInt64, pages: UInt64, order: UInt8,
                         cap: PGLevel, expected: PGLevel) {
  let level = mmuHugepageAdjust(gfn: GFN(gfn), pfn: PFN(pfn), slotGFNs: GFN(base) ..< GFN(base + pages),
                                exporterOrder: order, maxLevel: cap)
  #expect(level == expected)
}

@Test func mapLookupAndCounters() throws {
  var mmu = TDPMMU()
  try mmu.map(GFN(0x200), level: .level2M, spte: mmioSPTE(0x80200, .level2M))
  try mmu.map(GFN(0x5), level: .level4K, spte: mmioSPTE(0x99, .level4K))
  #expect(mmu.mappedPages == 513 && mmu.leafCount == 2)
  let hit = try #require(mmu.lookup(GFN(0x3ff)))
  #expect(hit.level == .level2M && hit.gfn == GFN(0x200) && hit.spte.pfn == PFN(0x80200))
  #expect(mmu.lookup(GFN(0x6)) == nil)
  #expect(throws: Errno.EINVAL) { try mmu.map(GFN(0x201), level: .level2M, spte: mmioSPTE(0, .level2M)) }
}

@Test func zapSplitsAPartlyCoveredHugeEntry() throws {
  var mmu = TDPMMU()
  try mmu.map(GFN(0x200), level: .level2M, spte: mmioSPTE(0x80200, .level2M))
  #expect(mmu.leaves(in: GFN(0x210) ..< GFN(0x212)).map(\.gfn) == [GFN(0x200)])   // the huge leaf
  let removed = mmu.zap(GFN(0x210) ..< GFN(0x212))
  #expect(removed.leaves == 2 && removed.pages == 2)
  #expect(mmu.mappedPages == 510 && mmu.leafCount == 510)
  #expect(mmu.lookup(GFN(0x210)) == nil)
  let rest = try #require(mmu.lookup(GFN(0x212)))
  #expect(rest.level == .level4K && rest.spte.pfn == PFN(0x80212) && !rest.spte.isLarge)
  #expect(rest.spte.memoryType == .uncachable)
  // Zapping the rest frees the split table and leaves an MMU equal to a fresh one.
  mmu.zap(GFN(0) ..< GFN(0x1000))
  #expect(mmu == TDPMMU() && mmu.tableCount == 0)
}

@Test func zapOfUnmappedRangeChangesNothing() throws {
  var mmu = TDPMMU()
  try mmu.map(GFN(0x5), level: .level4K, spte: mmioSPTE(0x99, .level4K))
  let before = mmu
  #expect(mmu.zap(GFN(0x100000) ..< GFN(0x200000)).isEmpty)
  #expect(mmu == before)
}

@Test func copyIsO1AndMutationCopiesOnlyThePath() throws {
  var a = TDPMMU()
  for i in UInt64(0) ..< 1024 { try a.map(GFN(i), level: .level4K, spte: mmioSPTE(0x80000 + i, .level4K)) }
  var b = a
  #expect(b.sharesStorage(with: a))
  try b.map(GFN(0x7), level: .level4K, spte: mmioSPTE(0x1, .level4K))
  #expect(!b.sharesStorage(with: a))
  #expect(a.lookup(GFN(0x7))?.spte.pfn == PFN(0x80007))      // the original is untouched
  #expect(b.lookup(GFN(0x7))?.spte.pfn == PFN(0x1))
  // The other 4K table (GFNs 512..1023) is still shared; the mutated path is not.
  #expect(b.sharedTablesOnPath(to: GFN(0x200), with: a) == (shared: 1, walked: 4))
  #expect(b.sharedTablesOnPath(to: GFN(0x7), with: a) == (shared: 0, walked: 4))
  #expect(a != b)
}

@Test func oneGiBAt4KCostsAtMost32BytesPerPage() throws {
  var mmu = TDPMMU()
  let pages: UInt64 = 1 << 18
  for i in UInt64(0) ..< pages {
    mmu.mapUnchecked(GFN(0x40000 + i), level: .level4K, spte: mmioSPTE(0x100000 + i, .level4K))
  }
  #expect(mmu.mappedPages == pages)
  #expect(mmu.modelBytes <= Int(pages) * 32)
}

// MARK: Costs, pinned by counting tables (never by time)

/// A 1 GiB block at GFN 0x40000 mapped at 4 KiB: below the root, one 1G-level table, one
/// 2M-level table and 512 4K tables.
func fullyMapped1GiB() -> TDPMMU {
  var mmu = TDPMMU()
  for i in UInt64(0) ..< (1 << 18) {
    mmu.mapUnchecked(GFN(0x40000 + i), level: .level4K, spte: mmioSPTE(0x100000 + i, .level4K))
  }
  return mmu
}

@Test func aFaultWalksFourTablesAndAllocatesOnlyMissingLevels() throws {
  var mmu = TDPMMU()
  try mmu.map(GFN(0x40000), level: .level4K, spte: mmioSPTE(0x100000, .level4K))
  // Root copied from the shared empty root, then three new levels.
  #expect(mmu.work == TDPMMU.Work(tablesWalked: 4, tablesCopied: 1, tablesAllocated: 3))
  try mmu.map(GFN(0x40001), level: .level4K, spte: mmioSPTE(0x100001, .level4K))
  #expect(mmu.work == TDPMMU.Work(tablesWalked: 8, tablesCopied: 1, tablesAllocated: 3))   // in place
  try mmu.map(GFN(0x40200), level: .level4K, spte: mmioSPTE(0x100200, .level4K))
  #expect(mmu.work == TDPMMU.Work(tablesWalked: 12, tablesCopied: 1, tablesAllocated: 4)) // one new 4K table
  #expect(mmu.tableCount == 4)
}

@Test func aFaultAfterACopyCopiesOnlyItsPath() throws {
  let original = fullyMapped1GiB()
  var copy = original
  let before = copy.work
  try copy.map(GFN(0x80000), level: .level4K, spte: mmioSPTE(0x1, .level4K))
  #expect(copy.work.tablesCopied - before.tablesCopied == 2)          // the root and the 1G-level table
  #expect(copy.work.tablesAllocated - before.tablesAllocated == 2)    // a 2M table and a 4K table
  var again = original
  try again.map(GFN(0x40005), level: .level4K, spte: mmioSPTE(0x2, .level4K))
  #expect(again.work.tablesCopied - original.work.tablesCopied == 4)  // root, 1G, 2M, 4K
  #expect(original.lookup(GFN(0x40005))?.spte.pfn == PFN(0x100005))
}

@Test(arguments: [
  // (first GFN, pages, tables walked): a range wholly covering 2M tables drops them unwalked.
  (UInt64(0x40000), UInt64(1 << 18), 2),   // root and 1G-level table: the 2M table is dropped whole
  (UInt64(0x40001), UInt64(1 << 18) - 1, 4),  // the first 4K table is walked, the other 511 dropped
  (UInt64(0x40000), UInt64(512), 3),      // one 4K table dropped from its 2M table
  (UInt64(0x40010), UInt64(16), 4),        // inside one 4K table
])
func zapWalksOnlyTheTablesAtTheEndsOfItsRange(first: UInt64, pages: UInt64, walked: Int) {
  var mmu = fullyMapped1GiB()
  let before = mmu.work.tablesWalked
  let removed = mmu.zap(GFN(first) ..< GFN(first + pages))
  #expect(removed == TDPMMU.Zapped(leaves: Int(pages), pages: pages))
  #expect(mmu.work.tablesWalked - before == walked)
  #expect(mmu.mappedPages == (1 << 18) - pages && mmu.leafCount == (1 << 18) - Int(pages))
}

@Test func zapOfASharedTreeCopiesOnlyTheEnds() {
  let original = fullyMapped1GiB()
  var copy = original
  let before = copy.work.tablesCopied
  copy.zap(GFN(0x40001) ..< GFN(0x80000))
  #expect(copy.work.tablesCopied - before == 4)    // root, 1G, 2M and the first 4K table
  #expect(copy.mappedPages == 1 && original.mappedPages == 1 << 18)
  #expect(copy.tableCount == 3)
}

@Test func equalityWalksOnlyTheTablesTwoMMUsDoNotShare() throws {
  let a = fullyMapped1GiB()
  var b = a
  var visited = 0
  #expect(TDPMMU.equal(a.root, b.root, visited: &visited) && visited == 0)
  try b.map(GFN(0x40007), level: .level4K, spte: mmioSPTE(0x1, .level4K))
  visited = 0
  #expect(!TDPMMU.equal(a.root, b.root, visited: &visited) && visited == 1)   // the root digests differ
  try b.map(GFN(0x40007), level: .level4K, spte: mmioSPTE(0x100007, .level4K))   // back to a's mapping
  visited = 0
  #expect(TDPMMU.equal(a.root, b.root, visited: &visited) && visited == 4)    // only the copied path
  #expect(a == b && a.hashValue == b.hashValue)
}

/// Random maps and zaps over a small GFN window: the incremental digest and counters always
/// equal those recomputed from scratch, and an MMU built in another order is equal with the
/// same hash.
@Test(arguments: [1, 2, 3, 4])
func digestAndCountersMatchAFullRecount(seed: UInt64) throws {
  var rng = SplitMix(seed)
  var mmu = TDPMMU()
  var model: [UInt64: (level: PGLevel, spte: UInt64)] = [:]   // block base -> leaf
  for step in 0 ..< 400 {
    let level = [PGLevel.level4K, .level4K, .level4K, .level2M, .level1G][Int(rng.next() % 5)]
    let gfn = (rng.next() % (1 << 19)) & ~(level.pages - 1)
    if rng.next() % 3 == 0 {
      let end = gfn + 1 + rng.next() % 2048
      mmu.zap(GFN(gfn) ..< GFN(end))
    } else {
      try mmu.map(GFN(gfn), level: level, spte: mmioSPTE(0x400000 + gfn, level))
    }
    #expect(mmu.root.head.pointee.totals.digest == mmu.recomputedDigest(), "step \(step)")
    #expect(mmu.occupancyMatchesEntries(), "step \(step)")
    let leaves = mmu.leaves()
    #expect(mmu.leafCount == leaves.count && mmu.mappedPages == leaves.reduce(0) { $0 + $1.level.pages })
    model = Dictionary(uniqueKeysWithValues: leaves.map { ($0.gfn.rawValue, ($0.level, $0.spte.rawValue)) })
  }
  // The same mappings installed afresh, in reverse order.
  var rebuilt = TDPMMU()
  for (gfn, leaf) in model.sorted(by: { $0.key > $1.key }) {
    try rebuilt.map(GFN(gfn), level: leaf.level, spte: SPTE(rawValue: leaf.spte))
  }
  #expect(rebuilt == mmu && rebuilt.hashValue == mmu.hashValue && rebuilt.tableCount == mmu.tableCount)
}

@Test func hashSeparatesMMUsThatDifferInOneBit() throws {
  var a = TDPMMU(), b = TDPMMU()
  try a.map(GFN(0x5), level: .level4K, spte: mmioSPTE(0x99, .level4K))
  try b.map(GFN(0x5), level: .level4K, spte: SPTE(rawValue: mmioSPTE(0x99, .level4K).rawValue & ~SPTE.writableMask))
  #expect(a != b && a.hashValue != b.hashValue)
  var c = TDPMMU()
  try c.map(GFN(0x6), level: .level4K, spte: mmioSPTE(0x99, .level4K))   // same SPTE, next entry
  #expect(a != c && a.hashValue != c.hashValue)
}

@Test func forEachLeafAndHasLeavesSeeWhatLeavesSees() throws {
  var mmu = TDPMMU()
  try mmu.map(GFN(0x200), level: .level2M, spte: mmioSPTE(0x80200, .level2M))
  try mmu.map(GFN(0x5), level: .level4K, spte: mmioSPTE(0x99, .level4K))
  var seen: [MappedLeaf] = []
  mmu.forEachLeaf(in: GFN(0) ..< GFN(0x1000)) { seen.append($0) }
  #expect(seen == mmu.leaves(in: GFN(0) ..< GFN(0x1000)) && seen.map(\.gfn) == [GFN(0x5), GFN(0x200)])
  #expect(mmu.hasLeaves(in: GFN(0x3ff) ..< GFN(0x400)))
  #expect(!mmu.hasLeaves(in: GFN(0x6) ..< GFN(0x200)))
  #expect(!TDPMMU().hasLeaves(in: GFN(0) ..< GFN(0x1000)))
}

/// A tiny deterministic generator for the property test.
struct SplitMix {
  var state: UInt64
  init(_ seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9e37_79b9_7f4a_7c15
    var z = state
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}
