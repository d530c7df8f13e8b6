import KernelCore

/// The MMIO metadata table's DATA entries (`mmiomt_data_t`), kept as runs of host pages.
///
/// The module holds one entry per 4 KiB page (or 2 MiB / 1 GiB block) of every assigned BAR;
/// the model holds one run per stretch of entries with the same function and level that are
/// either all unmapped or mapped, in order, at consecutive GPAs of one TD. A BAR assigned and
/// never mapped is one run whatever its size, a BAR mapped in page order is one run, and a
/// page that is mapped out of order splits its run in at most three. Nothing is kept for a
/// page no DATA entry describes.
///
/// It reads as a dictionary from the first PFN of an entry to the entry (``subscript(_:)``,
/// iteration in PFN order), as the table is indexed.
public struct MMIOMT: Hashable, Sendable, Sequence {
  /// Entries of one function and level, mapped contiguously or not at all.
  struct Run: PageRun {
    /// The first PFN (aligned to `level`).
    var first: UInt64
    /// 4 KiB pages covered (a multiple of the level's pages).
    var pages: UInt64
    /// The GPA the first page is mapped at (0 while unmapped).
    var gpa: UInt64
    let function: DeviceInterfaceID
    /// The TD the entries are mapped into; `nil` while unmapped.
    var td: TDID?
    let level: SEPTLevel

    func isContinued(by next: Run) -> Bool {
      next.function == function && next.level == level && next.td == td
        && (td == nil || next.gpa == gpa &+ pages << pageShift)
    }

    func suffix(from offset: UInt64) -> Run {
      Run(first: first + offset, pages: pages - offset, gpa: td == nil ? 0 : gpa + offset << pageShift,
          function: function, td: td, level: level)
    }

    var entryPages: UInt64 { level.pages }

    /// The entry whose first page is `pfn` (inside the run, aligned to its level).
    func entry(at pfn: UInt64) -> MMIOMTEntry {
      MMIOMTEntry(function: function, level: level,
                  mapping: td.map { MMIOMTMapping(td: $0, gpa: GPA(gpa + (pfn - first) << pageShift)) })
    }
  }

  private(set) var table = PageRuns<Run>()

  public init() {}

  /// Whether no page has a DATA entry.
  public var isEmpty: Bool { table.isEmpty }
  /// DATA entries (a 2 MiB entry counts once).
  public var count: Int { table.entryCount }
  /// Runs the table is kept as (for the model's own memory figures and tests).
  public var runCount: Int { table.runs.count }
  /// Bytes of model state the table holds.
  public var modelBytes: Int { table.modelBytes }

  /// The DATA entry whose first page is `pfn`: `nil` when no entry starts there (a page inside
  /// a 2 MiB entry other than its first has none of its own). Setting an entry replaces the
  /// pages it covers; setting `nil` removes the entry that starts at `pfn`, if any.
  public subscript(_ pfn: PFN) -> MMIOMTEntry? {
    get {
      table.run(withEntryAt: pfn.rawValue)?.entry(at: pfn.rawValue)
    }
    set {
      if let entry = newValue {
        table.set(Run(first: pfn.rawValue, pages: entry.level.pages, gpa: entry.mapping?.gpa.rawValue ?? 0,
                      function: entry.function, td: entry.mapping?.td, level: entry.level))
      } else if let old = self[pfn] {
        table.remove(pfn.rawValue, pfn.rawValue + old.level.pages)
      }
    }
  }

  /// The DATA entry whose block holds page `pfn`, at whatever level it was set.
  public func entry(covering pfn: PFN) -> (first: PFN, entry: MMIOMTEntry)? {
    guard let run = table.run(containing: pfn.rawValue) else { return nil }
    let first = pfn.rawValue & ~(run.level.pages - 1)
    return (PFN(first), run.entry(at: first))
  }

  /// Clears the mapping of every entry mapped into `td` (a TD torn down).
  mutating func unmapAll(td: TDID) {
    guard table.runs.contains(where: { $0.td == td }) else { return }
    table.update { run in
      guard run.td == td else { return run }
      var unmapped = run
      unmapped.td = nil
      unmapped.gpa = 0
      return unmapped
    }
  }

  /// The entries in PFN order, each as (first PFN, entry).
  public struct Iterator: IteratorProtocol {
    var entries: PageRuns<Run>.Entries

    public mutating func next() -> (key: PFN, value: MMIOMTEntry)? {
      entries.next().map { e in (PFN(e.page), e.run.entry(at: e.page)) }
    }
  }

  public func makeIterator() -> Iterator { Iterator(entries: table.entries) }
}

/// The MMIO metadata table's pages (``MMIOMTNode``), by level: for each of the five levels
/// the first addresses of its pages, in order. Every MAP walks five of them, so a lookup is
/// a binary search of one level's pages, with no hashing.
public struct MMIOMTPages: Hashable, Sendable {
  /// The first address of each page, ascending, by level (0 ... 4).
  private var bases: [[UInt64]] = Array(repeating: [], count: 5)

  public init() {}

  /// How many pages the table has.
  public var count: Int { bases.reduce(0) { $0 + $1.count } }

  /// Where `base` is, or would go, among the pages of `level`.
  private func position(_ base: UInt64, level: Int) -> (index: Int, found: Bool) {
    let pages = bases[level]
    var lo = 0, hi = pages.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if pages[mid] < base { lo = mid + 1 } else { hi = mid }
    }
    return (lo, lo < pages.count && pages[lo] == base)
  }

  public func contains(_ node: MMIOMTNode) -> Bool {
    guard node.level < 5 else { return false }
    return position(node.base, level: Int(node.level)).found
  }

  /// Adds `node`. - Returns: whether it was not there yet.
  @discardableResult
  public mutating func insert(_ node: MMIOMTNode) -> Bool {
    guard node.level < 5 else { return false }
    let (i, found) = position(node.base, level: Int(node.level))
    guard !found else { return false }
    bases[Int(node.level)].insert(node.base, at: i)
    return true
  }
}
