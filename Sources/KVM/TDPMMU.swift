import KernelCore

/// One 512-entry page table of the TDP MMU (`struct kvm_mmu_page` with its `spt` page).
///
/// A slot holds a leaf SPTE (`leaves[i] != 0`), a child table (`children[i] != nil`), or
/// nothing. Tables are shared between copies of a ``TDPMMU`` and copied on the first write
/// after a copy, so snapshotting a machine is O(1) and a later fault copies one path.
/// `@unchecked Sendable`: a table is mutated only while uniquely referenced
/// (`isKnownUniquelyReferenced`), so no shared instance is ever written.
final class TableNode: @unchecked Sendable {
  var leaves: ContiguousArray<UInt64>
  /// Child tables; empty at 4 KiB level, where every entry is a leaf.
  var children: ContiguousArray<TableNode?>
  /// Non-empty entries, so an emptied table can be freed and the tree stays canonical.
  var used: Int

  init(level: PGLevel) {
    leaves = ContiguousArray(repeating: 0, count: 512)
    children = level == .level4K ? [] : ContiguousArray(repeating: nil, count: 512)
    used = 0
  }

  init(copying other: TableNode) {
    leaves = other.leaves
    children = other.children
    used = other.used
  }

  /// Approximate heap bytes of one table: object header, two array buffers with headers.
  static func bytes(level: PGLevel) -> Int {
    let arrayHeader = 32, objectHeader = 16 + 24
    let leafBytes = arrayHeader + 512 * MemoryLayout<UInt64>.stride
    let childBytes = level == .level4K ? 0 : arrayHeader + 512 * MemoryLayout<TableNode?>.stride
    return objectHeader + leafBytes + childBytes
  }
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
/// tables on its path. Equality compares mappings, not table identity; the tree is kept
/// canonical (no empty tables), so equal mappings give equal trees.
public struct TDPMMU: Hashable, Sendable {
  /// The largest GFN a 4-level (48-bit) EPT can map: `kvm_mmu_max_gfn()` with
  /// `MAXPHYADDR` 48.
  public static let maxGFN = GFN((1 << 36) - 1)

  var root = TableNode(level: .level512G)
  /// 4 KiB-equivalent pages currently mapped.
  public private(set) var mappedPages: UInt64 = 0
  /// Leaf SPTEs currently installed (a 2 MiB leaf counts once).
  public private(set) var leafCount: Int = 0
  /// Tables below the root, by level (index 0 = 4 KiB tables).
  var tableCounts: [Int] = [0, 0, 0]

  public init() {}

  /// Tables allocated below the root.
  public var tableCount: Int { tableCounts.reduce(0, +) }

  /// Bytes of model state the MMU holds (tables including the root), for the
  /// "at most 32 bytes per mapped 4 KiB page" budget.
  public var modelBytes: Int {
    TableNode.bytes(level: .level512G)
      + tableCounts[0] * TableNode.bytes(level: .level4K)
      + tableCounts[1] * TableNode.bytes(level: .level2M)
      + tableCounts[2] * TableNode.bytes(level: .level1G)
  }

  @inline(__always) static func index(_ gfn: UInt64, _ level: PGLevel) -> Int {
    Int(truncatingIfNeeded: (gfn >> level.gfnShift) & 511)
  }

  @inline(__always) static func makeUnique(_ node: inout TableNode) {
    if !isKnownUniquelyReferenced(&node) { node = TableNode(copying: node) }
  }

  // MARK: Lookup

  /// The leaf covering `gfn`, if any (`kvm_tdp_mmu_get_walk()` to the last present level).
  public func lookup(_ gfn: GFN) -> MappedLeaf? {
    guard gfn <= TDPMMU.maxGFN else { return nil }
    var node = root
    var level = PGLevel.level512G
    while true {
      let i = TDPMMU.index(gfn.rawValue, level)
      let raw = node.leaves[i]
      if raw != 0 {
        let base = gfn.rawValue & ~(level.pages - 1)
        return MappedLeaf(gfn: GFN(base), level: level, spte: SPTE(rawValue: raw))
      }
      guard let lower = level.lower, let child = node.children[i] else { return nil }
      node = child
      level = lower
    }
  }

  /// Every leaf overlapping `range`, in GFN order.
  public func leaves(in range: Range<GFN> = GFN(0) ..< GFN(TDPMMU.maxGFN.rawValue + 1)) -> [MappedLeaf] {
    var out: [MappedLeaf] = []
    TDPMMU.collect(root, level: .level512G, base: 0, range.lowerBound.rawValue,
                   range.upperBound.rawValue, into: &out)
    return out
  }

  static func collect(_ node: TableNode, level: PGLevel, base: UInt64, _ start: UInt64, _ end: UInt64,
                      into out: inout [MappedLeaf]) {
    let span = level.pages
    let nodeEnd = base &+ 512 &* span
    let lo = max(start, base), hi = min(end, nodeEnd)
    guard lo < hi else { return }
    for i in Int((lo - base) / span) ... Int((hi - 1 - base) / span) {
      let entryBase = base + UInt64(i) * span
      if node.leaves[i] != 0 {
        out.append(MappedLeaf(gfn: GFN(entryBase), level: level, spte: SPTE(rawValue: node.leaves[i])))
      } else if let lower = level.lower, let child = node.children[i] {
        collect(child, level: lower, base: entryBase, start, end, into: &out)
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
  @discardableResult
  public mutating func map(_ gfn: GFN, level: PGLevel, spte: SPTE) throws(Errno) -> SPTE? {
    guard level <= .level1G, gfn <= TDPMMU.maxGFN, gfn.rawValue & (level.pages - 1) == 0,
          spte.isPresent else { throw .EINVAL }
    return mapUnchecked(gfn, level: level, spte: spte)
  }

  @discardableResult
  mutating func mapUnchecked(_ gfn: GFN, level: PGLevel, spte: SPTE) -> SPTE? {
    var replaced: SPTE? = nil
    var node = root
    root = TableNode(level: .level4K)  // drop our reference so `node` can be unique
    TDPMMU.makeUnique(&node)
    mapInto(&node, nodeLevel: .level512G, gfn.rawValue, target: level, spte: spte.rawValue, &replaced)
    root = node
    return replaced
  }

  private mutating func mapInto(_ node: inout TableNode, nodeLevel: PGLevel, _ gfn: UInt64,
                                target: PGLevel, spte: UInt64, _ replaced: inout SPTE?) {
    let i = TDPMMU.index(gfn, nodeLevel)
    if nodeLevel == target {
      if let child = node.children.isEmpty ? nil : node.children[i] {
        forget(child, level: nodeLevel.lower ?? .level4K, freeTable: true)
        node.children[i] = nil
        node.used -= 1
      }
      let old = node.leaves[i]
      if old != 0 {
        replaced = SPTE(rawValue: old)
        mappedPages -= nodeLevel.pages
        leafCount -= 1
        node.used -= 1
      }
      node.leaves[i] = spte
      node.used += 1
      mappedPages += nodeLevel.pages
      leafCount += 1
      return
    }
    guard let lower = nodeLevel.lower else { return }
    if node.leaves[i] != 0 {
      node.leaves[i] = 0
      node.used -= 1
      mappedPages -= nodeLevel.pages
      leafCount -= 1
    }
    var child: TableNode
    if let existing = node.children[i] {
      child = existing
      node.children[i] = nil
      TDPMMU.makeUnique(&child)
    } else {
      child = TableNode(level: lower)
      tableCounts[lower.rawValue - 1] += 1
      node.used += 1
    }
    mapInto(&child, nodeLevel: lower, gfn, target: target, spte: spte, &replaced)
    node.children[i] = child
  }

  /// Subtracts a subtree's leaves and tables from the counters (the subtree is being freed).
  private mutating func forget(_ node: TableNode, level: PGLevel, freeTable: Bool) {
    if freeTable { tableCounts[level.rawValue - 1] -= 1 }
    for i in 0 ..< 512 {
      if node.leaves[i] != 0 {
        mappedPages -= level.pages
        leafCount -= 1
      } else if let lower = level.lower, let child = node.children[i] {
        forget(child, level: lower, freeTable: true)
      }
    }
  }

  // MARK: Zap

  /// Removes every mapping of GFNs in `range` (`kvm_tdp_mmu_zap_leafs()` over the range).
  ///
  /// A huge leaf that `range` covers only in part is split into next-level leaves with the
  /// same attributes and the uncovered pieces stay mapped. Only tables that hold mappings in
  /// the range are visited (and copied, when shared). Emptied tables are freed.
  /// - Returns: the leaves removed, in GFN order (after splitting: what was unmapped).
  @discardableResult
  public mutating func zap(_ range: Range<GFN>) -> [MappedLeaf] {
    var removed: [MappedLeaf] = []
    let start = range.lowerBound.rawValue, end = min(range.upperBound.rawValue, TDPMMU.maxGFN.rawValue + 1)
    guard start < end, mappedPages > 0 else { return removed }
    var node = root
    root = TableNode(level: .level4K)
    TDPMMU.makeUnique(&node)
    zapIn(&node, level: .level512G, base: 0, start, end, &removed)
    root = node
    return removed
  }

  private mutating func zapIn(_ node: inout TableNode, level: PGLevel, base: UInt64,
                              _ start: UInt64, _ end: UInt64, _ removed: inout [MappedLeaf]) {
    let span = level.pages
    let lo = max(start, base), hi = min(end, base &+ 512 &* span)
    guard lo < hi else { return }
    for i in Int((lo - base) / span) ... Int((hi - 1 - base) / span) {
      let entryBase = base + UInt64(i) * span
      let covered = start <= entryBase && entryBase + span <= end
      let raw = node.leaves[i]
      if raw != 0 {
        if covered {
          removed.append(MappedLeaf(gfn: GFN(entryBase), level: level, spte: SPTE(rawValue: raw)))
          node.leaves[i] = 0
          node.used -= 1
          mappedPages -= span
          leafCount -= 1
          continue
        }
        // Partly covered huge page: split it so the rest of it stays mapped.
        guard let lower = level.lower else { continue }
        let child = TableNode(level: lower)
        let huge = SPTE(rawValue: raw)
        for j in 0 ..< 512 { child.leaves[j] = huge.splitPiece(index: UInt64(j), childLevel: lower).rawValue }
        child.used = 512
        node.leaves[i] = 0
        node.children[i] = child
        tableCounts[lower.rawValue - 1] += 1
        leafCount += 511
      }
      guard let lower = level.lower, var child = node.children[i] else { continue }
      node.children[i] = nil
      if covered {
        forgetCollecting(child, level: lower, base: entryBase, &removed)
        node.used -= 1
        continue
      }
      TDPMMU.makeUnique(&child)
      zapIn(&child, level: lower, base: entryBase, start, end, &removed)
      if child.used == 0 {
        tableCounts[lower.rawValue - 1] -= 1
        node.used -= 1
      } else {
        node.children[i] = child
      }
    }
  }

  private mutating func forgetCollecting(_ node: TableNode, level: PGLevel, base: UInt64,
                                         _ removed: inout [MappedLeaf]) {
    tableCounts[level.rawValue - 1] -= 1
    for i in 0 ..< 512 {
      let entryBase = base + UInt64(i) * level.pages
      if node.leaves[i] != 0 {
        removed.append(MappedLeaf(gfn: GFN(entryBase), level: level, spte: SPTE(rawValue: node.leaves[i])))
        mappedPages -= level.pages
        leafCount -= 1
      } else if let lower = level.lower, let child = node.children[i] {
        forgetCollecting(child, level: lower, base: entryBase, &removed)
      }
    }
  }

  // MARK: Value semantics

  public static func == (a: TDPMMU, b: TDPMMU) -> Bool {
    a.mappedPages == b.mappedPages && a.leafCount == b.leafCount
      && a.tableCounts == b.tableCounts && equal(a.root, b.root, hasChildren: true)
  }

  static func equal(_ a: TableNode, _ b: TableNode, hasChildren: Bool) -> Bool {
    if a === b { return true }
    guard a.used == b.used, a.leaves == b.leaves else { return false }
    guard hasChildren else { return true }
    for i in 0 ..< 512 {
      switch (a.children[i], b.children[i]) {
      case (nil, nil): continue
      case let (x?, y?): if !equal(x, y, hasChildren: !y.children.isEmpty) { return false }
      default: return false
      }
    }
    return true
  }

  /// Hashes every mapping: linear in the tables present, which is what a visited set of
  /// explored states needs; the explorer's machines map few pages.
  public func hash(into hasher: inout Hasher) {
    hasher.combine(mappedPages)
    hasher.combine(leafCount)
    TDPMMU.hashNode(root, into: &hasher)
  }

  static func hashNode(_ node: TableNode, into hasher: inout Hasher) {
    for i in 0 ..< 512 {
      if node.leaves[i] != 0 {
        hasher.combine(i)
        hasher.combine(node.leaves[i])
      } else if !node.children.isEmpty, let child = node.children[i] {
        hasher.combine(i &+ 512)
        hashNode(child, into: &hasher)
      }
    }
  }

  /// Whether two MMUs share their root table (no write since one was copied from the other).
  public func sharesStorage(with other: TDPMMU) -> Bool { root === other.root }

  /// How many tables on the way to `gfn` are shared with `other`: after a copy and one
  /// mutation, only the path to the mutated entry differs.
  public func sharedTablesOnPath(to gfn: GFN, with other: TDPMMU) -> (shared: Int, walked: Int) {
    var a: TableNode? = root, b: TableNode? = other.root
    var level: PGLevel? = .level512G
    var shared = 0, walked = 0
    while let x = a, let y = b, let l = level {
      walked += 1
      if x === y { shared += 1 }
      let i = TDPMMU.index(gfn.rawValue, l)
      guard !x.children.isEmpty, !y.children.isEmpty else { break }
      a = x.children[i]; b = y.children[i]; level = l.lower
    }
    return (shared, walked)
  }
}
