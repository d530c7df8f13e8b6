import KernelCore

/// What a table knows about itself and its subtree, kept up to date by every mutation so that
/// counting, hashing and dropping a whole subtree cost O(1).
struct TableHeader {
  /// The table's level (the root is ``PGLevel/level512G``).
  let level: PGLevel
  /// Non-empty entries, so an emptied table can be freed and the tree stays canonical.
  var used: Int32 = 0
  /// Tables in this subtree, this one included, at 4 KiB, 2 MiB and 1 GiB level (the root's
  /// own table is not counted).
  var tables4K: Int32 = 0, tables2M: Int32 = 0, tables1G: Int32 = 0
  /// Leaf SPTEs in this subtree (a 2 MiB leaf counts once).
  var leaves: Int = 0
  /// 4 KiB pages this subtree maps.
  var pages: UInt64 = 0
  /// Order-independent digest of the subtree: the wrapping sum, over non-empty entries, of a
  /// strong mix of (level, index, leaf SPTE) or (level, index, child digest). Equal subtrees
  /// have equal digests; a change updates the digests on its path only.
  var digest: UInt64 = 0

  init(level: PGLevel) {
    self.level = level
    switch level {
    case .level4K: tables4K = 1
    case .level2M: tables2M = 1
    case .level1G: tables1G = 1
    case .level512G: break
    }
  }

  /// Adds (`sign` 1) or removes (`sign` -1) the leaf `raw` at entry `i`.
  @inline(__always) mutating func account(leaf raw: UInt64, at i: Int, _ sign: Int) {
    used &+= Int32(truncatingIfNeeded: sign)
    leaves &+= sign
    let span = level.pages, d = TableHeader.leafDigest(level, i, raw)
    if sign > 0 { pages &+= span; digest &+= d } else { pages &-= span; digest &-= d }
  }

  /// Adds (`sign` 1) or removes (`sign` -1) a child whose header is `child` at entry `i`.
  @inline(__always) mutating func account(child: TableHeader, at i: Int, _ sign: Int) {
    let s = Int32(truncatingIfNeeded: sign)
    used &+= s
    tables4K &+= s &* child.tables4K
    tables2M &+= s &* child.tables2M
    tables1G &+= s &* child.tables1G
    leaves &+= sign &* child.leaves
    let d = TableHeader.childDigest(level, i, child.digest)
    if sign > 0 { pages &+= child.pages; digest &+= d } else { pages &-= child.pages; digest &-= d }
  }

  /// A 64-bit finalizer (murmur3's fmix64): every input bit affects every output bit.
  @inline(__always) static func mix(_ x: UInt64) -> UInt64 {
    var x = x
    x ^= x >> 33; x &*= 0xff51_afd7_ed55_8ccd
    x ^= x >> 33; x &*= 0xc4ce_b9fe_1a85_ec53
    x ^= x >> 33
    return x
  }

  @inline(__always) static func leafDigest(_ level: PGLevel, _ i: Int, _ raw: UInt64) -> UInt64 {
    mix(raw &+ mix(UInt64(truncatingIfNeeded: i) | UInt64(truncatingIfNeeded: level.rawValue) << 9))
  }

  @inline(__always) static func childDigest(_ level: PGLevel, _ i: Int, _ digest: UInt64) -> UInt64 {
    mix(digest &+ mix(UInt64(truncatingIfNeeded: i) | UInt64(truncatingIfNeeded: level.rawValue) << 9 | 1 << 12))
  }
}

/// One 512-entry page table of the TDP MMU (`struct kvm_mmu_page` with its `spt` page), with
/// its entries allocated in the same object.
///
/// Words 0..<512 are leaf SPTEs (0: none). A table above 4 KiB has 512 more words, bound to
/// `TableNode?`: its child tables. An entry holds a leaf, a child or nothing, never both.
/// Tables are shared between copies of a ``TDPMMU`` and copied on the first write after a
/// copy, so snapshotting a machine is O(1) and a later fault copies one path.
/// A table is mutated only while uniquely referenced (`isKnownUniquelyReferenced`), so no
/// shared instance is ever written: that is what makes ``TableRef`` `Sendable`.
final class TableNode: ManagedBuffer<TableHeader, UInt64> {
  static func make(level: PGLevel) -> TableNode {
    let words = level == .level4K ? 512 : 1024
    let node = unsafeDowncast(TableNode.create(minimumCapacity: words) { _ in TableHeader(level: level) },
                              to: TableNode.self)
    node.withUnsafeMutablePointerToElements { e in
      e.initialize(repeating: 0, count: 512)
      if level != .level4K {
        UnsafeMutableRawPointer(e + 512).initializeMemory(as: TableNode?.self, repeating: nil, count: 512)
      }
    }
    return node
  }

  /// A copy sharing every child (each gets one more reference).
  func copy() -> TableNode {
    let level = header.level
    let node = unsafeDowncast(TableNode.create(minimumCapacity: level == .level4K ? 512 : 1024) { _ in header },
                              to: TableNode.self)
    withUnsafeMutablePointerToElements { from in
      node.withUnsafeMutablePointerToElements { to in
        to.initialize(from: from, count: 512)
        if level != .level4K {
          TableNode.children(to).initialize(from: TableNode.children(from), count: 512)
        }
      }
    }
    return node
  }

  deinit {
    if header.level != .level4K {
      _ = withUnsafeMutablePointerToElements { e in TableNode.children(e).deinitialize(count: 512) }
    }
  }

  @inline(__always) static func children(_ elements: UnsafeMutablePointer<UInt64>) -> UnsafeMutablePointer<TableNode?> {
    UnsafeMutableRawPointer(elements + 512).assumingMemoryBound(to: TableNode?.self)
  }

  /// Runs `body` with the header, the leaf words and (above 4 KiB) the child slots.
  @inline(__always)
  func withEntries<R>(_ body: (UnsafeMutablePointer<TableHeader>, UnsafeMutablePointer<UInt64>,
                               UnsafeMutablePointer<TableNode?>?) throws -> R) rethrows -> R {
    try withUnsafeMutablePointers { h, e in
      try body(h, e, h.pointee.level == .level4K ? nil : TableNode.children(e))
    }
  }

  /// A table of `level` whose 512 leaves are the pieces of the huge leaf `raw` one level up
  /// (`make_small_spte()`).
  static func split(_ raw: UInt64, into level: PGLevel) -> TableNode {
    let node = make(level: level)
    let huge = SPTE(rawValue: raw)
    node.withEntries { h, leaves, _ in
      for j in 0 ..< 512 {
        let piece = huge.splitPiece(index: UInt64(j), childLevel: level).rawValue
        leaves[j] = piece
        h.pointee.account(leaf: piece, at: j, 1)
      }
    }
    return node
  }

  /// Approximate heap bytes of one table: object header, table header, entry words.
  static func bytes(level: PGLevel) -> Int {
    let objectHeader = 16
    let header = (MemoryLayout<TableHeader>.stride + 7) & ~7
    return objectHeader + header + (level == .level4K ? 512 : 1024) * 8
  }

}

/// A strong reference to a table, `Sendable` because tables are written only while uniquely
/// referenced (`ManagedBuffer` itself is never `Sendable`).
struct TableRef: @unchecked Sendable {
  var node: TableNode
  /// The table shared by every empty MMU, so `TDPMMU()` allocates nothing.
  static let emptyRoot = TableRef(node: TableNode.make(level: .level512G))
}

/// A leaf mapping as the MMU holds it: the first GFN it covers, its level and its SPTE.
public struct MappedLeaf: Hashable, Sendable, CustomStringConvertible {
  public let gfn: GFN
  public let level: PGLevel
  public let spte: SPTE
  /// GFNs the leaf covers.
  public var range: Range<GFN> { gfn ..< GFN(gfn.rawValue + level.pages) }
  public var description: String { "\(gfn.gpa) \(level) \(spte)" }
}

/// The per-VM two-dimensional paging structure KVM builds in software (the TDP MMU of
/// `arch/x86/kvm/mmu/tdp_mmu.c`, walked as `tdp_iter.h` does): a 4-level radix of 512-entry
/// tables mapping GFNs to leaf SPTEs at 4 KiB, 2 MiB or 1 GiB.
///
/// A value: copying is O(1) (tables are shared), a mutation after a copy copies only the
/// tables on its path, and a mutation of tables nobody shares happens in place. Every table
/// carries its subtree's counts and digest, so counters, `hash(into:)` and dropping a fully
/// zapped subtree are O(1), and `==` walks only the tables two MMUs do not share. Equality
/// compares mappings, not table identity; the tree is kept canonical (no empty tables), so
/// equal mappings give equal trees.
public struct TDPMMU: Hashable, Sendable {
  /// The largest GFN a 4-level (48-bit) EPT can map: `kvm_mmu_max_gfn()` with
  /// `MAXPHYADDR` 48.
  public static let maxGFN = GFN((1 << 36) - 1)

  var storage = TableRef.emptyRoot
  var root: TableNode { storage.node }
  /// What the MMU's mutations cost, counted (history: outside `==` and `hash`).
  public internal(set) var work = Work()

  /// Tables touched by mutations since the MMU was created, for tests that pin costs by
  /// counting instead of timing.
  public struct Work: Hashable, Sendable {
    /// Tables a map or zap walked into (each one's digest and counts were updated).
    public internal(set) var tablesWalked = 0
    /// Tables copied because another MMU still shared them.
    public internal(set) var tablesCopied = 0
    /// Tables allocated for new levels (or to split a huge page).
    public internal(set) var tablesAllocated = 0
  }

  public init() {}

  /// 4 KiB-equivalent pages currently mapped.
  public var mappedPages: UInt64 { root.header.pages }
  /// Leaf SPTEs currently installed (a 2 MiB leaf counts once).
  public var leafCount: Int { root.header.leaves }
  /// Tables allocated below the root.
  public var tableCount: Int {
    let h = root.header
    return Int(h.tables4K) + Int(h.tables2M) + Int(h.tables1G)
  }

  /// Bytes of model state the MMU holds (tables including the root), for the
  /// "at most 32 bytes per mapped 4 KiB page" budget.
  public var modelBytes: Int {
    let h = root.header
    return TableNode.bytes(level: .level512G) + Int(h.tables4K) * TableNode.bytes(level: .level4K)
      + Int(h.tables2M) * TableNode.bytes(level: .level2M) + Int(h.tables1G) * TableNode.bytes(level: .level1G)
  }

  @inline(__always) static func index(_ gfn: UInt64, _ level: PGLevel) -> Int {
    Int(truncatingIfNeeded: (gfn >> level.gfnShift) & 511)
  }

  /// Makes the root uniquely referenced before a mutation.
  @inline(__always) mutating func uniqueRoot() {
    if !isKnownUniquelyReferenced(&storage.node) {
      storage.node = storage.node.copy()
      work.tablesCopied += 1
    }
  }

  // MARK: Lookup

  /// The leaf covering `gfn`, if any (`kvm_tdp_mmu_get_walk()` to the last present level).
  public func lookup(_ gfn: GFN) -> MappedLeaf? {
    guard gfn <= TDPMMU.maxGFN else { return nil }
    var node = Unmanaged.passUnretained(root)
    while true {
      let step: (leaf: MappedLeaf?, next: Unmanaged<TableNode>?) = node._withUnsafeGuaranteedRef { n in
        n.withEntries { h, leaves, children in
          let level = h.pointee.level
          let i = TDPMMU.index(gfn.rawValue, level)
          let raw = leaves[i]
          if raw != 0 {
            let base = gfn.rawValue & ~(level.pages - 1)
            return (MappedLeaf(gfn: GFN(base), level: level, spte: SPTE(rawValue: raw)), nil)
          }
          guard let children, let child = children[i] else { return (nil, nil) }
          return (nil, Unmanaged.passUnretained(child))
        }
      }
      if let leaf = step.leaf { return leaf }
      guard let next = step.next else { return nil }
      node = next
    }
  }

  /// Every leaf overlapping `range`, in GFN order.
  public func leaves(in range: Range<GFN> = GFN(0) ..< GFN(TDPMMU.maxGFN.rawValue + 1)) -> [MappedLeaf] {
    var out: [MappedLeaf] = []
    forEachLeaf(in: range) { out.append($0) }
    return out
  }

  /// Calls `body` with every leaf overlapping `range`, in GFN order, without collecting them.
  public func forEachLeaf(in range: Range<GFN> = GFN(0) ..< GFN(TDPMMU.maxGFN.rawValue + 1),
                          _ body: (MappedLeaf) throws -> Void) rethrows {
    guard mappedPages > 0 else { return }
    try TDPMMU.visit(root, base: 0, range.lowerBound.rawValue, range.upperBound.rawValue, body)
  }

  /// Whether any leaf overlaps `range` (stops at the first).
  public func hasLeaves(in range: Range<GFN>) -> Bool {
    struct Found: Error {}
    do { try forEachLeaf(in: range) { _ in throw Found() } } catch { return true }
    return false
  }

  static func visit(_ node: TableNode, base: UInt64, _ start: UInt64, _ end: UInt64,
                    _ body: (MappedLeaf) throws -> Void) rethrows {
    try node.withEntries { h, leaves, children in
      let level = h.pointee.level, span = level.pages
      let lo = max(start, base), hi = min(end, base &+ 512 &* span)
      guard lo < hi else { return }
      for i in Int((lo - base) / span) ... Int((hi - 1 - base) / span) {
        let entryBase = base + UInt64(i) * span
        if leaves[i] != 0 {
          try body(MappedLeaf(gfn: GFN(entryBase), level: level, spte: SPTE(rawValue: leaves[i])))
        } else if let children, let child = children[i] {
          try visit(child, base: entryBase, start, end, body)
        }
      }
    }
  }

  // MARK: Map

  /// Installs `spte` for the `level`-sized, `level`-aligned GFN block at `gfn`, replacing
  /// whatever is there: a smaller table under it is freed (a huge page replaces it, as
  /// `tdp_mmu_map_handle_target_level()` does), a huge leaf above it is zapped because it is
  /// in the way (`kvm_tdp_mmu_map()`'s "hugepage is in the way" path).
  /// - Returns: the leaf that was replaced at exactly this block, if one was.
  /// - Throws: `EINVAL` for a leaf level above 1 GiB, a GFN not aligned to `level`, or one past
  ///   ``maxGFN`` (the kernel would never build such an SPTE).
  /// - Complexity: O(1): four tables walked, a new table only where a level is missing.
  @discardableResult
  public mutating func map(_ gfn: GFN, level: PGLevel, spte: SPTE) throws(Errno) -> SPTE? {
    guard level <= .level1G, gfn <= TDPMMU.maxGFN, gfn.rawValue & (level.pages - 1) == 0,
          spte.isPresent else { throw .EINVAL }
    return mapUnchecked(gfn, level: level, spte: spte)
  }

  @discardableResult
  mutating func mapUnchecked(_ gfn: GFN, level: PGLevel, spte: SPTE) -> SPTE? {
    uniqueRoot()
    let replaced = TDPMMU.mapIn(root, gfn.rawValue, target: level, spte: spte.rawValue, &work)
    return replaced == 0 ? nil : SPTE(rawValue: replaced)
  }

  /// Maps into `node`, which the caller made uniquely referenced; returns the replaced leaf
  /// (0 for none).
  private static func mapIn(_ node: TableNode, _ gfn: UInt64, target: PGLevel, spte: UInt64,
                            _ work: inout Work) -> UInt64 {
    work.tablesWalked += 1
    return node.withEntries { h, leaves, children in
      let level = h.pointee.level
      let i = index(gfn, level)
      if level == target {
        if let children, let child = children[i].take() {
          h.pointee.account(child: child.header, at: i, -1)
        }
        let old = leaves[i]
        if old != 0 { h.pointee.account(leaf: old, at: i, -1) }
        leaves[i] = spte
        h.pointee.account(leaf: spte, at: i, 1)
        return old
      }
      guard let children, let lower = level.lower else { return 0 }
      let inTheWay = leaves[i]
      if inTheWay != 0 {
        leaves[i] = 0
        h.pointee.account(leaf: inTheWay, at: i, -1)
      }
      var child: TableNode
      if children[i] != nil {
        child = children[i].take()!   // moved out, so the uniqueness check sees one reference
        h.pointee.account(child: child.header, at: i, -1)
        if !isKnownUniquelyReferenced(&child) {
          child = child.copy()
          work.tablesCopied += 1
        }
      } else {
        child = TableNode.make(level: lower)
        work.tablesAllocated += 1
      }
      let replaced = mapIn(child, gfn, target: target, spte: spte, &work)
      h.pointee.account(child: child.header, at: i, 1)
      children[i] = child
      return replaced
    }
  }

  // MARK: Zap

  /// What a zap removed.
  public struct Zapped: Hashable, Sendable {
    /// Leaf SPTEs removed (after splitting: the pieces that were unmapped).
    public internal(set) var leaves = 0
    /// 4 KiB pages unmapped.
    public internal(set) var pages: UInt64 = 0
    public var isEmpty: Bool { leaves == 0 }
  }

  /// Removes every mapping of GFNs in `range` (`kvm_tdp_mmu_zap_leafs()` over the range).
  ///
  /// A huge leaf that `range` covers only in part is split into next-level leaves with the
  /// same attributes and the uncovered pieces stay mapped. Only tables that hold mappings in
  /// the range and are not wholly inside it are walked (and copied, when shared); a table
  /// wholly inside is dropped with its counts, without a walk. Emptied tables are freed.
  /// Callers that need the leaves take ``leaves(in:)`` first.
  /// - Returns: how many leaves and pages were unmapped.
  /// - Complexity: O(tables crossing the range's two ends), plus freeing the dropped tables
  ///   nobody else shares.
  @discardableResult
  public mutating func zap(_ range: Range<GFN>) -> Zapped {
    var removed = Zapped()
    let start = range.lowerBound.rawValue, end = min(range.upperBound.rawValue, TDPMMU.maxGFN.rawValue + 1)
    guard start < end, mappedPages > 0 else { return removed }
    uniqueRoot()
    TDPMMU.zapIn(root, base: 0, start, end, &removed, &work)
    return removed
  }

  private static func zapIn(_ node: TableNode, base: UInt64, _ start: UInt64, _ end: UInt64,
                            _ removed: inout Zapped, _ work: inout Work) {
    work.tablesWalked += 1
    node.withEntries { h, leaves, children in
      let level = h.pointee.level, span = level.pages
      let lo = max(start, base), hi = min(end, base &+ 512 &* span)
      guard lo < hi else { return }
      for i in Int((lo - base) / span) ... Int((hi - 1 - base) / span) {
        let entryBase = base + UInt64(i) * span
        let covered = start <= entryBase && entryBase + span <= end
        let raw = leaves[i]
        if raw != 0 {
          leaves[i] = 0
          h.pointee.account(leaf: raw, at: i, -1)
          if covered {
            removed.leaves += 1
            removed.pages += span
            continue
          }
          // Partly covered huge page: split it so the rest of it stays mapped.
          guard let children, let lower = level.lower else { continue }
          let piece = TableNode.split(raw, into: lower)
          work.tablesAllocated += 1
          h.pointee.account(child: piece.header, at: i, 1)
          children[i] = piece
        }
        guard let children, var child = children[i].take() else { continue }
        let before = child.header
        h.pointee.account(child: before, at: i, -1)
        if covered {
          removed.leaves += before.leaves
          removed.pages += before.pages
          continue       // the subtree goes with `child`, freed if nobody shares it
        }
        if !isKnownUniquelyReferenced(&child) {
          child = child.copy()
          work.tablesCopied += 1
        }
        zapIn(child, base: entryBase, start, end, &removed, &work)
        let after = child.header
        if after.used != 0 {
          h.pointee.account(child: after, at: i, 1)
          children[i] = child
        }
      }
    }
  }

  // MARK: Value semantics

  /// Compares mappings, walking only tables the two MMUs do not share; a digest that differs
  /// ends the walk at once.
  public static func == (a: TDPMMU, b: TDPMMU) -> Bool {
    var visited = 0
    return equal(a.root, b.root, visited: &visited)
  }

  /// ``==`` that also counts the table pairs it had to compare.
  static func equal(_ a: TableNode, _ b: TableNode, visited: inout Int) -> Bool {
    if a === b { return true }
    visited += 1
    return a.withEntries { ha, la, ca in
      b.withEntries { hb, lb, cb in
        let x = ha.pointee, y = hb.pointee
        guard x.level == y.level, x.digest == y.digest, x.pages == y.pages, x.leaves == y.leaves,
              x.used == y.used else { return false }
        for i in 0 ..< 512 where la[i] != lb[i] { return false }
        guard let ca, let cb else { return true }
        for i in 0 ..< 512 {
          switch (ca[i], cb[i]) {
          case (nil, nil): continue
          case let (p?, q?): if !equal(p, q, visited: &visited) { return false }
          default: return false
          }
        }
        return true
      }
    }
  }

  /// O(1): the root's digest stands for every mapping (see ``TableHeader/digest``).
  public func hash(into hasher: inout Hasher) {
    let h = root.header
    hasher.combine(h.digest)
    hasher.combine(h.pages)
  }

  /// The root digest computed from scratch by walking every table (tests check the
  /// incremental one against it).
  static func recomputedDigest(_ node: TableNode) -> UInt64 {
    node.withEntries { h, leaves, children in
      var d: UInt64 = 0
      for i in 0 ..< 512 {
        if leaves[i] != 0 { d &+= TableHeader.leafDigest(h.pointee.level, i, leaves[i]) }
        if let children, let child = children[i] {
          d &+= TableHeader.childDigest(h.pointee.level, i, recomputedDigest(child))
        }
      }
      return d
    }
  }

  /// Whether two MMUs share their root table (no write since one was copied from the other).
  public func sharesStorage(with other: TDPMMU) -> Bool { root === other.root }

  /// How many tables on the way to `gfn` are shared with `other`: after a copy and one
  /// mutation, only the path to the mutated entry differs.
  public func sharedTablesOnPath(to gfn: GFN, with other: TDPMMU) -> (shared: Int, walked: Int) {
    var a: TableNode? = root, b: TableNode? = other.root
    var shared = 0, walked = 0
    while let x = a, let y = b {
      walked += 1
      if x === y { shared += 1 }
      let level = x.header.level
      guard level != .level4K, y.header.level == level else { break }
      let i = TDPMMU.index(gfn.rawValue, level)
      a = x.withEntries { _, _, c in c?[i] }
      b = y.withEntries { _, _, c in c?[i] }
    }
    return (shared, walked)
  }
}
