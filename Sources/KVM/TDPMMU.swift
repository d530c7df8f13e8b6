import KernelCore

/// Sums over a subtree that every mutation keeps up to date along its path, so that counting,
/// hashing and dropping a whole subtree cost O(1). All fields add up: a parent's totals are its
/// own leaves' plus its children's totals.
struct Totals: Equatable {
  /// Tables at 4 KiB, 2 MiB and 1 GiB level (a root's own table is not counted).
  var tables4K = 0, tables2M = 0, tables1G = 0
  /// Leaf SPTEs (a 2 MiB leaf counts once).
  var leaves = 0
  /// 4 KiB pages mapped.
  var pages: UInt64 = 0
  /// The wrapping sum of ``leafDigest(_:gfn:level:)`` over the leaves: a multiset hash of
  /// (GFN, level, SPTE), so equal mappings have equal digests whatever the order they were
  /// made in, and a change adds or subtracts one term on each table of its path.
  var digest: UInt64 = 0

  /// The totals of one table of `level` with nothing in it.
  static func table(_ level: PGLevel) -> Totals {
    switch level {
    case .level4K: Totals(tables4K: 1)
    case .level2M: Totals(tables2M: 1)
    case .level1G: Totals(tables1G: 1)
    case .level512G: Totals()
    }
  }

  /// The totals of one leaf `raw` mapping the block at `gfn`.
  @inline(__always) static func leaf(_ raw: UInt64, gfn: UInt64, level: PGLevel) -> Totals {
    Totals(leaves: 1, pages: level.pages, digest: leafDigest(raw, gfn: gfn, level: level))
  }

  @inline(__always) static func += (a: inout Totals, b: Totals) {
    a.tables4K &+= b.tables4K; a.tables2M &+= b.tables2M; a.tables1G &+= b.tables1G
    a.leaves &+= b.leaves; a.pages &+= b.pages; a.digest &+= b.digest
  }

  @inline(__always) static func -= (a: inout Totals, b: Totals) {
    a.tables4K &-= b.tables4K; a.tables2M &-= b.tables2M; a.tables1G &-= b.tables1G
    a.leaves &-= b.leaves; a.pages &-= b.pages; a.digest &-= b.digest
  }

  /// A 64-bit finalizer (murmur3's fmix64): every input bit affects every output bit.
  @inline(__always) static func mix(_ x: UInt64) -> UInt64 {
    var x = x
    x ^= x >> 33; x &*= 0xff51_afd7_ed55_8ccd
    x ^= x >> 33; x &*= 0xc4ce_b9fe_1a85_ec53
    x ^= x >> 33
    return x
  }

  @inline(__always) static func leafDigest(_ raw: UInt64, gfn: UInt64, level: PGLevel) -> UInt64 {
    mix(raw &+ mix(gfn << 2 | UInt64(truncatingIfNeeded: level.rawValue)))
  }
}

/// Which of a table's 512 entries hold a leaf or a child: a bit each, so that walking a
/// sparse table visits its entries in use, not all 512.
struct Occupancy: Equatable {
  var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

  /// Every entry in use (a table split from a huge page).
  static let full = Occupancy(words: (~0, ~0, ~0, ~0, ~0, ~0, ~0, ~0))

  @inline(__always) func word(_ w: Int) -> UInt64 {
    withUnsafeBytes(of: words) { $0.load(fromByteOffset: w &* 8, as: UInt64.self) }
  }

  @inline(__always) mutating func update(_ i: Int, _ set: Bool) {
    withUnsafeMutableBytes(of: &words) { raw in
      let offset = (i >> 6) &* 8, bit = UInt64(1) << UInt64(i & 63)
      let old = raw.load(fromByteOffset: offset, as: UInt64.self)
      raw.storeBytes(of: set ? old | bit : old & ~bit, toByteOffset: offset, as: UInt64.self)
    }
  }

  /// Calls `body` with each entry in use from `first` through `last`, in order. Bits `body`
  /// changes for entries already visited do not matter.
  @inline(__always) func forEach(from first: Int, through last: Int, _ body: (Int) throws -> Void) rethrows {
    guard first <= last else { return }
    for w in (first >> 6) ... (last >> 6) {
      var bits = word(w)
      if w == first >> 6 { bits &= ~0 << UInt64(first & 63) }
      if w == last >> 6, last & 63 != 63 { bits &= (1 << UInt64((last & 63) + 1)) &- 1 }
      while bits != 0 {
        try body(w &* 64 &+ bits.trailingZeroBitCount)
        bits &= bits &- 1
      }
    }
  }

  static func == (a: Occupancy, b: Occupancy) -> Bool {
    (0 ..< 8).allSatisfy { a.word($0) == b.word($0) }
  }
}

/// A table's level, which of its entries are in use, and its subtree's ``Totals``.
struct TableHeader {
  let level: PGLevel
  /// Non-empty entries, so an emptied table can be freed and the tree stays canonical.
  var used = 0
  /// Which entries are in use (``used`` of them).
  var occupied = Occupancy()
  var totals: Totals

  init(level: PGLevel) {
    self.level = level
    totals = .table(level)
  }

  /// Entry `i`, empty until now, holds a leaf or a child.
  @inline(__always) mutating func occupy(_ i: Int) { used += 1; occupied.update(i, true) }
  /// Entry `i` no longer holds anything.
  @inline(__always) mutating func vacate(_ i: Int) { used -= 1; occupied.update(i, false) }
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
    let node = unsafeDowncast(TableNode.create(minimumCapacity: level == .level4K ? 512 : 1024) { _ in
      TableHeader(level: level)
    }, to: TableNode.self)
    let words = node.words
    words.initialize(repeating: 0, count: 512)
    if level != .level4K {
      UnsafeMutableRawPointer(words + 512).initializeMemory(as: TableNode?.self, repeating: nil, count: 512)
    }
    return node
  }

  /// The header, in place. Valid while the table is alive.
  @inline(__always) var head: UnsafeMutablePointer<TableHeader> { withUnsafeMutablePointerToHeader { $0 } }
  /// The entry words, in place. Valid while the table is alive.
  @inline(__always) var words: UnsafeMutablePointer<UInt64> { withUnsafeMutablePointerToElements { $0 } }
  /// The child slots of a table above 4 KiB. Valid while the table is alive.
  @inline(__always) var children: UnsafeMutablePointer<TableNode?> { TableNode.children(words) }
  @inline(__always) var level: PGLevel { head.pointee.level }

  /// A copy sharing every child (each gets one more reference).
  func copy() -> TableNode {
    let level = self.level
    let node = unsafeDowncast(TableNode.create(minimumCapacity: level == .level4K ? 512 : 1024) { _ in
      head.pointee
    }, to: TableNode.self)
    // One memcpy of the words, then one more reference to each child: what the generic
    // `initialize(from:count:)` of `TableNode?` does, without a value-witness call per slot.
    UnsafeMutableRawPointer(node.words).copyMemory(from: words, byteCount: (level == .level4K ? 512 : 1024) * 8)
    if level != .level4K { forEachChild { _ = $0.retain() } }
    return node
  }

  deinit {
    if level != .level4K { forEachChild { $0.release() } }
  }

  /// Calls `body` with each child of a table above 4 KiB, its slot read as a raw word.
  @inline(__always) func forEachChild(_ body: (Unmanaged<TableNode>) -> Void) {
    let slots = UnsafeRawPointer(words + 512)
    for i in 0 ..< 512 {
      let bits = slots.load(fromByteOffset: i * 8, as: UInt.self)
      if bits != 0 { body(Unmanaged.fromOpaque(UnsafeRawPointer(bitPattern: bits)!)) }
    }
  }

  /// The child slots of a table above 4 KiB whose entry words start at `words`.
  @inline(__always) static func children(_ words: UnsafeMutablePointer<UInt64>) -> UnsafeMutablePointer<TableNode?> {
    UnsafeMutableRawPointer(words + 512).assumingMemoryBound(to: TableNode?.self)
  }

  /// Whether the (non-empty) child slot holds the only reference to its table, checked in
  /// place so that no reference is taken.
  @inline(__always) static func isUnique(_ slot: UnsafeMutablePointer<TableNode?>) -> Bool {
    slot.withMemoryRebound(to: TableNode.self, capacity: 1) { isKnownUniquelyReferenced(&$0.pointee) }
  }

  /// The table in a non-empty child slot, without retaining it (valid while the slot holds it).
  @inline(__always) static func unmanaged(_ slot: UnsafeMutablePointer<TableNode?>) -> Unmanaged<TableNode> {
    Unmanaged.fromOpaque(UnsafeRawPointer(slot).load(as: UnsafeRawPointer.self))
  }

  /// The child in slot `i` without retaining it (valid while this table holds it).
  @inline(__always) func child(_ i: Int) -> Unmanaged<TableNode>? {
    let bits = UnsafeRawPointer(children + i).load(as: UInt.self)
    return bits == 0 ? nil : Unmanaged.fromOpaque(UnsafeRawPointer(bitPattern: bits)!)
  }

  /// A table of `level` whose 512 leaves are the pieces of the huge leaf `raw` one level up,
  /// covering GFNs from `gfn` (`make_small_spte()`).
  static func split(_ raw: UInt64, into level: PGLevel, gfn: UInt64) -> TableNode {
    let node = make(level: level)
    let huge = SPTE(rawValue: raw), leaves = node.words, head = node.head
    for j in 0 ..< 512 {
      let piece = huge.splitPiece(index: UInt64(j), childLevel: level).rawValue
      leaves[j] = piece
      head.pointee.totals += .leaf(piece, gfn: gfn + UInt64(j) * level.pages, level: level)
    }
    head.pointee.used = 512
    head.pointee.occupied = .full
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
  public var mappedPages: UInt64 { root.head.pointee.totals.pages }
  /// Leaf SPTEs currently installed (a 2 MiB leaf counts once).
  public var leafCount: Int { root.head.pointee.totals.leaves }
  /// Tables allocated below the root.
  public var tableCount: Int {
    let t = root.head.pointee.totals
    return Int(t.tables4K) + Int(t.tables2M) + Int(t.tables1G)
  }

  /// Bytes of model state the MMU holds (tables including the root), for the
  /// "at most 32 bytes per mapped 4 KiB page" budget.
  public var modelBytes: Int {
    let t = root.head.pointee.totals
    return TableNode.bytes(level: .level512G) + Int(t.tables4K) * TableNode.bytes(level: .level4K)
      + Int(t.tables2M) * TableNode.bytes(level: .level2M) + Int(t.tables1G) * TableNode.bytes(level: .level1G)
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
  /// - Complexity: O(1), at most four tables read, no reference counting.
  public func lookup(_ gfn: GFN) -> MappedLeaf? {
    guard gfn <= TDPMMU.maxGFN else { return nil }
    return withExtendedLifetime(storage) {
      var node = Unmanaged.passUnretained(root)
      while true {
        let (words, level) = node._withUnsafeGuaranteedRef { ($0.words, $0.level) }
        let i = TDPMMU.index(gfn.rawValue, level)
        let raw = words[i]
        if raw != 0 {
          return MappedLeaf(gfn: GFN(gfn.rawValue & ~(level.pages - 1)), level: level, spte: SPTE(rawValue: raw))
        }
        guard level != .level4K, let child = node._withUnsafeGuaranteedRef({ $0.child(i) }) else { return nil }
        node = child
      }
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
    let level = node.level, span = level.pages, leaves = node.words
    let lo = max(start, base), hi = min(end, base &+ 512 &* span)
    guard lo < hi else { return }
    // Only the entries in use: a sparse table costs what it holds, not 512 reads.
    try node.head.pointee.occupied.forEach(from: Int((lo - base) / span), through: Int((hi - 1 - base) / span)) { i in
      let entryBase = base + UInt64(i) * span
      if leaves[i] != 0 {
        try body(MappedLeaf(gfn: GFN(entryBase), level: level, spte: SPTE(rawValue: leaves[i])))
      } else if level != .level4K, let child = node.children[i] {
        try visit(child, base: entryBase, start, end, body)
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
  /// - Complexity: O(1): four tables walked and written in place (copied only if shared), a
  ///   new table only where a level is missing.
  @discardableResult
  public mutating func map(_ gfn: GFN, level: PGLevel, spte: SPTE) throws(Errno) -> SPTE? {
    guard level <= .level1G, gfn <= TDPMMU.maxGFN, gfn.rawValue & (level.pages - 1) == 0,
          spte.isPresent else {
      throw Errno.EINVAL.because("kvm_tdp_mmu_map", "no such SPTE: level \(level) above 1G, GFN 0x\(String(gfn.rawValue, radix: 16)) "
                                                    + "unaligned or past the 4-level MMU, or the SPTE not present")
    }
    return mapUnchecked(gfn, level: level, spte: spte)
  }

  @discardableResult
  mutating func mapUnchecked(_ gfn: GFN, level target: PGLevel, spte: SPTE) -> SPTE? {
    uniqueRoot()
    let replaced = withExtendedLifetime(storage) {
      TDPMMU.mapPath(root, gfn.rawValue, target: target, spte: spte.rawValue, &work)
    }
    return replaced == 0 ? nil : SPTE(rawValue: replaced)
  }

  /// The walk of ``map(_:level:spte:)`` from a uniquely referenced root down to `target`:
  /// each child is checked for uniqueness in its slot (no reference taken) and copied only
  /// when shared, a missing level is allocated. Every change of totals is added to the
  /// headers of the tables above it on the path. Returns the replaced leaf (0 for none).
  private static func mapPath(_ root: TableNode, _ gfn: UInt64, target: PGLevel, spte: UInt64,
                              _ work: inout Work) -> UInt64 {
    var path = Path(root.head)
    var words = root.words
    var level = PGLevel.level512G
    while level != target {
      work.tablesWalked += 1
      let i = index(gfn, level)
      let lowerRaw = level.rawValue &- 1
      let inTheWay = words[i]
      if inTheWay != 0 {
        words[i] = 0
        path.last.pointee.vacate(i)
        path.add(Totals.leaf(inTheWay, gfn: gfn & ~(level.pages &- 1), level: level), sign: -1)
      }
      let slot = TableNode.children(words) + i
      if slot.pointee == nil {
        let lower = PGLevel(rawValue: lowerRaw) ?? .level4K
        slot.pointee = TableNode.make(level: lower)
        work.tablesAllocated += 1
        path.last.pointee.occupy(i)
        path.add(.table(lower), sign: 1)
      } else if !TableNode.isUnique(slot) {
        slot.pointee = slot.pointee!.copy()
        work.tablesCopied += 1
      }
      let child = TableNode.unmanaged(slot)
      let next = child._withUnsafeGuaranteedRef { ($0.head, $0.words) }
      path.push(next.0)
      words = next.1
      level = next.0.pointee.level
    }
    work.tablesWalked += 1
    let i = index(gfn, level)
    var delta = Totals()
    let head = path.last
    if level != .level4K, let child = TableNode.children(words)[i].take() {
      delta -= child.head.pointee.totals
      head.pointee.vacate(i)
    }
    let old = words[i]
    if old != 0 { delta -= .leaf(old, gfn: gfn, level: level) } else { head.pointee.occupy(i) }
    words[i] = spte
    delta += .leaf(spte, gfn: gfn, level: level)
    path.add(delta, sign: 1)
    return old
  }

  /// The headers of the tables from the root down to the current one (at most four).
  struct Path {
    typealias Head = UnsafeMutablePointer<TableHeader>
    var heads: (Head, Head, Head, Head)
    var count = 1
    init(_ root: Head) { heads = (root, root, root, root) }
    var last: Head {
      switch count {
      case 1: heads.0
      case 2: heads.1
      case 3: heads.2
      default: heads.3
      }
    }
    mutating func push(_ head: Head) {
      switch count {
      case 1: heads.1 = head
      case 2: heads.2 = head
      default: heads.3 = head
      }
      count += 1
    }
    /// Adds (`sign` 1) or subtracts `delta` to every header on the path.
    @inline(__always) func add(_ delta: Totals, sign: Int) {
      func apply(_ h: Head) { if sign > 0 { h.pointee.totals += delta } else { h.pointee.totals -= delta } }
      apply(heads.0)
      if count > 1 { apply(heads.1) }
      if count > 2 { apply(heads.2) }
      if count > 3 { apply(heads.3) }
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
  /// wholly inside is dropped with its totals, without a walk. Emptied tables are freed.
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

  /// Zaps inside `node` (uniquely referenced); returns the change of its totals.
  @discardableResult
  private static func zapIn(_ node: TableNode, base: UInt64, _ start: UInt64, _ end: UInt64,
                            _ removed: inout Zapped, _ work: inout Work) -> Totals {
    work.tablesWalked += 1
    let head = node.head, leaves = node.words, level = head.pointee.level, span = level.pages
    var delta = Totals()
    let lo = max(start, base), hi = min(end, base &+ 512 &* span)
    guard lo < hi else { return delta }
    // Only entries in use: a zap walks what is mapped, not every slot of the range.
    let occupied = head.pointee.occupied   // the entries in use before the zap changes them
    occupied.forEach(from: Int((lo - base) / span), through: Int((hi - 1 - base) / span)) { i in
      let entryBase = base + UInt64(i) * span
      let covered = start <= entryBase && entryBase + span <= end
      let raw = leaves[i]
      if raw != 0 {
        leaves[i] = 0
        head.pointee.vacate(i)
        delta -= .leaf(raw, gfn: entryBase, level: level)
        if covered {
          removed.leaves += 1
          removed.pages += span
          return
        }
        // Partly covered huge page: split it so the rest of it stays mapped.
        guard let lower = level.lower else { return }
        let piece = TableNode.split(raw, into: lower, gfn: entryBase)
        work.tablesAllocated += 1
        head.pointee.occupy(i)
        delta += piece.head.pointee.totals
        node.children[i] = piece
      }
      guard level != .level4K, var child = node.children[i].take() else { return }
      if covered {
        let gone = child.head.pointee.totals
        head.pointee.vacate(i)
        delta -= gone
        removed.leaves += gone.leaves
        removed.pages += gone.pages
        return       // the subtree goes with `child`, freed if nobody shares it
      }
      if !isKnownUniquelyReferenced(&child) {
        child = child.copy()
        work.tablesCopied += 1
      }
      delta += zapIn(child, base: entryBase, start, end, &removed, &work)
      if child.head.pointee.used == 0 {
        head.pointee.vacate(i)
        delta -= child.head.pointee.totals   // an empty table: only itself is left to count
      } else {
        node.children[i] = child
      }
    }
    head.pointee.totals += delta
    return delta
  }

  // MARK: Value semantics

  /// Compares mappings, walking only tables the two MMUs do not share; totals that differ
  /// (a digest, a count) end the walk at once.
  public static func == (a: TDPMMU, b: TDPMMU) -> Bool {
    var visited = 0
    return equal(a.root, b.root, visited: &visited)
  }

  /// ``==`` that also counts the table pairs it had to compare.
  static func equal(_ a: TableNode, _ b: TableNode, visited: inout Int) -> Bool {
    if a === b { return true }
    visited += 1
    let x = a.head.pointee, y = b.head.pointee
    guard x.level == y.level, x.used == y.used, x.totals == y.totals, x.occupied == y.occupied else { return false }
    // The same entries are in use: compare those only.
    let la = a.words, lb = b.words
    struct Differs: Error {}
    do {
      try x.occupied.forEach(from: 0, through: 511) { i in
        guard la[i] == lb[i] else { throw Differs() }
        guard x.level != .level4K, la[i] == 0 else { return }
        switch (a.children[i], b.children[i]) {
        case let (p?, q?): if !equal(p, q, visited: &visited) { throw Differs() }
        default: throw Differs()
        }
      }
    } catch { return false }
    return true
  }

  /// O(1): the root's digest stands for every mapping (see ``Totals/digest``).
  public func hash(into hasher: inout Hasher) {
    let t = root.head.pointee.totals
    hasher.combine(t.digest)
    hasher.combine(t.pages)
  }

  /// The root digest computed from scratch by visiting every leaf (tests check the
  /// incremental one against it).
  func recomputedDigest() -> UInt64 {
    var d: UInt64 = 0
    forEachLeaf { d &+= Totals.leafDigest($0.spte.rawValue, gfn: $0.gfn.rawValue, level: $0.level) }
    return d
  }

  /// Whether every table's occupancy bits and count say exactly which of its 512 entries hold
  /// a leaf or a child (tests check the bits every walk relies on against a full scan).
  func occupancyMatchesEntries() -> Bool {
    func check(_ node: TableNode) -> Bool {
      let head = node.head.pointee
      var used = 0
      for i in 0 ..< 512 {
        let inUse = node.words[i] != 0 || (head.level != .level4K && node.children[i] != nil)
        let bit = head.occupied.word(i >> 6) & (1 << UInt64(i & 63)) != 0
        guard inUse == bit else { return false }
        if inUse { used += 1 }
        if head.level != .level4K, let child = node.children[i], !check(child) { return false }
      }
      return used == head.used
    }
    return check(root)
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
      let level = x.level
      guard level != .level4K, y.level == level else { break }
      let i = TDPMMU.index(gfn.rawValue, level)
      a = x.children[i]
      b = y.children[i]
    }
    return (shared, walked)
  }
}
