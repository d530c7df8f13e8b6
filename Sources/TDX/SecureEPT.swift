import KernelCore

/// A TD's Secure-EPT leaf entries, kept as runs of guest pages.
///
/// One run holds consecutive entries of one level, state and block epoch that map consecutive
/// host pages: a BAR mapped (or accepted, or blocked) in page order is one run whatever its
/// size, and a page whose state changes on its own splits its run in at most three, which
/// merge again once the neighbours catch up. A FREE entry has no state at all.
///
/// It reads as a dictionary from the GPA of an entry's first byte to the entry
/// (``subscript(_:)``, iteration in GPA order), as the module's walk finds leaves.
public struct SecureEPT: Hashable, Sendable, Sequence {
  /// Entries of one level, state and block epoch mapping consecutive host pages.
  struct Run: PageRun {
    /// The first GFN (aligned to `level`).
    var first: UInt64
    /// 4 KiB pages covered (a multiple of the level's pages).
    var pages: UInt64
    /// The host address the first page maps.
    var hpa: UInt64
    var bepoch: UInt64
    let state: SEPTState
    let level: SEPTLevel

    func isContinued(by next: Run) -> Bool {
      next.state == state && next.level == level && next.bepoch == bepoch && next.hpa == hpa &+ pages << pageShift
    }

    func suffix(from offset: UInt64) -> Run {
      Run(first: first + offset, pages: pages - offset, hpa: hpa &+ offset << pageShift, bepoch: bepoch,
          state: state, level: level)
    }

    var entryPages: UInt64 { level.pages }

    /// The entry whose first page is `gfn` (inside the run).
    func entry(at gfn: UInt64) -> SEPTEntry {
      SEPTEntry(state: state, level: level, hpa: HPA(hpa &+ (gfn - first) << pageShift), bepoch: bepoch)
    }
  }

  private(set) var table = PageRuns<Run>()

  public init() {}

  /// Whether every entry is FREE.
  public var isEmpty: Bool { table.isEmpty }
  /// Leaf entries that are not FREE (a 2 MiB leaf counts once).
  public var count: Int { table.entryCount }
  /// Runs the entries are kept as (for the model's own memory figures and tests).
  public var runCount: Int { table.runs.count }
  /// Bytes of model state the entries hold.
  public var modelBytes: Int { table.modelBytes }

  /// The leaf entry whose first byte is `gpa`; `nil` for FREE, and for a GPA inside a larger
  /// leaf other than its first. Setting an entry replaces the pages it covers; setting `nil`
  /// makes the entry that starts at `gpa`, if any, FREE.
  public subscript(_ gpa: GPA) -> SEPTEntry? {
    get {
      let gfn = gpa.rawValue >> pageShift
      guard gpa.isPageAligned else { return nil }
      return table.run(withEntryAt: gfn)?.entry(at: gfn)
    }
    set {
      let gfn = gpa.rawValue >> pageShift
      if let entry = newValue {
        table.set(Run(first: gfn, pages: entry.level.pages, hpa: entry.hpa.rawValue, bepoch: entry.bepoch,
                      state: entry.state, level: entry.level))
      } else if let old = self[gpa] {
        table.remove(gfn, gfn + old.level.pages)
      }
    }
  }

  /// The leaf whose block holds `gpa`, with the GPA of its first byte: what the CPU's walk
  /// of the Secure EPT ends at.
  public func leaf(covering gpa: GPA) -> (first: GPA, entry: SEPTEntry)? {
    let gfn = gpa.rawValue >> pageShift
    guard let run = table.run(containing: gfn) else { return nil }
    let first = gfn & ~(run.level.pages - 1)
    return (GFN(first).gpa, run.entry(at: first))
  }

  /// Whether a leaf of a level below `level` lies in the `level`-sized block at `gpa`.
  func hasLeaf(below level: SEPTLevel, inBlockAt gpa: GPA) -> Bool {
    let gfn = gpa.rawValue >> pageShift
    return table.overlapping(gfn, gfn + level.pages).contains { $0.level.rawValue < level.rawValue }
  }

  /// The entries in GPA order, each as (GPA of its first byte, entry).
  public struct Iterator: IteratorProtocol {
    var entries: PageRuns<Run>.Entries

    public mutating func next() -> (key: GPA, value: SEPTEntry)? {
      entries.next().map { e in (GFN(e.page).gpa, e.run.entry(at: e.page)) }
    }
  }

  public func makeIterator() -> Iterator { Iterator(entries: table.entries) }
}
