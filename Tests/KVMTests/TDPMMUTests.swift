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
