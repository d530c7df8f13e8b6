/// A run of consecutive 4 KiB pages that share their attributes: the unit in which the MMIO
/// metadata table and the Secure EPT keep their entries, so that a table describes a 1 GiB BAR
/// mapped in order with one run, not 262,144 entries.
///
/// Pages are numbered (a PFN, a GFN); a run covers `first ..< first + pages`. Fields that
/// advance with the page (the GPA a device page is mapped at, the HPA a guest page maps) are
/// stored for `first` and derived for the others.
protocol PageRun: Hashable, Sendable {
  /// The first page of the run.
  var first: UInt64 { get set }
  /// How many pages the run covers (at least one).
  var pages: UInt64 { get set }
  /// Whether `next`, which starts where this run ends, continues it: the same attributes, and
  /// every advancing field one page further on. Adjacent runs that continue each other are
  /// always merged, so a table's runs are unique for its contents.
  func isContinued(by next: Self) -> Bool
  /// The part of the run from page `first + offset` on (0 < offset < pages).
  func suffix(from offset: UInt64) -> Self
  /// Pages per entry of the run (an entry of a 2 MiB level covers 512).
  var entryPages: UInt64 { get }
}

extension PageRun {
  /// One past the last page.
  @inline(__always) var end: UInt64 { first &+ pages }
}

/// Disjoint runs, sorted by first page, maximal (no run continues the one before it): equal
/// contents give equal arrays, so `==` and `hash(into:)` are the array's and cost O(runs).
///
/// - Complexity: a lookup is a binary search, O(log runs); a change in place (the common case:
///   a page joins or leaves the run it borders) is O(log runs), and one that splits a run
///   shifts the runs after it, O(runs).
struct PageRuns<Run: PageRun>: Hashable, Sendable {
  private(set) var runs: [Run] = []

  var isEmpty: Bool { runs.isEmpty }
  /// Entries in all runs (a 2 MiB entry counts once).
  var entryCount: Int { runs.reduce(0) { $0 + Int($1.pages / $1.entryPages) } }
  /// Bytes of model state the runs hold.
  var modelBytes: Int { runs.count * MemoryLayout<Run>.stride }

  /// The first page of every entry, with its run, in page order.
  struct Entries: IteratorProtocol {
    var runs: [Run].Iterator
    var current: Run?
    var page: UInt64 = 0

    init(_ runs: [Run]) { self.runs = runs.makeIterator() }

    mutating func next() -> (page: UInt64, run: Run)? {
      while true {
        if let run = current, page < run.end {
          defer { page += run.entryPages }
          return (page, run)
        }
        guard let run = runs.next() else { return nil }
        current = run
        page = run.first
      }
    }
  }

  var entries: Entries { Entries(runs) }

  /// The index of the first run that ends after `page` (`runs.count` when none does).
  @inline(__always) func firstIndex(endingAfter page: UInt64) -> Int {
    var lo = 0, hi = runs.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if runs[mid].end <= page { lo = mid + 1 } else { hi = mid }
    }
    return lo
  }

  /// The run holding `page`, if any.
  @inline(__always) func run(containing page: UInt64) -> Run? {
    let i = firstIndex(endingAfter: page)
    guard i < runs.count, runs[i].first <= page else { return nil }
    return runs[i]
  }

  /// The run holding an entry whose first page is `page`; `nil` when no entry starts there.
  func run(withEntryAt page: UInt64) -> Run? {
    guard let run = run(containing: page), (page - run.first) % run.entryPages == 0 else { return nil }
    return run
  }

  /// The runs overlapping `lo ..< hi`, in order (the first and last may stick out).
  func overlapping(_ lo: UInt64, _ hi: UInt64) -> ArraySlice<Run> {
    let i = firstIndex(endingAfter: lo)
    var j = i
    while j < runs.count, runs[j].first < hi { j += 1 }
    return runs[i ..< j]
  }

  /// Takes the pages `lo ..< hi` out of every run, splitting runs that stick out.
  mutating func remove(_ lo: UInt64, _ hi: UInt64) {
    guard lo < hi else { return }
    let i = firstIndex(endingAfter: lo)
    guard i < runs.count, runs[i].first < hi else { return }
    var j = i
    while j < runs.count, runs[j].first < hi { j += 1 }
    let head = runs[i], tail = runs[j - 1]
    // Common cases in place: the range is the whole of one run, or trims one of its ends.
    if j == i + 1 {
      if head.first >= lo, head.end <= hi { runs.remove(at: i); return }
      if head.first >= lo { runs[i] = head.suffix(from: hi - head.first); return }
      if head.end <= hi { runs[i].pages = lo - head.first; return }
    }
    var pieces: [Run] = []
    if head.first < lo {
      var left = head
      left.pages = lo - head.first
      pieces.append(left)
    }
    if tail.end > hi { pieces.append(tail.suffix(from: hi - tail.first)) }
    runs.replaceSubrange(i ..< j, with: pieces)
  }

  /// Sets the pages of `run` to it, replacing whatever covered them, and merges it with the
  /// runs it continues or that continue it.
  mutating func set(_ run: Run) {
    remove(run.first, run.end)
    let k = firstIndex(endingAfter: run.first)
    let joinsLeft = k > 0 && runs[k - 1].end == run.first && runs[k - 1].isContinued(by: run)
    let joinsRight = k < runs.count && runs[k].first == run.end && run.isContinued(by: runs[k])
    switch (joinsLeft, joinsRight) {
    case (true, true):
      runs[k - 1].pages += run.pages + runs[k].pages
      runs.remove(at: k)
    case (true, false):
      runs[k - 1].pages += run.pages
    case (false, true):
      var merged = run
      merged.pages += runs[k].pages
      runs[k] = merged
    case (false, false):
      runs.insert(run, at: k)
    }
  }

  /// Replaces every run with `transform(run)` (which keeps its pages), merging the runs that
  /// now continue each other.
  mutating func update(_ transform: (Run) -> Run) {
    var out: [Run] = []
    out.reserveCapacity(runs.count)
    for run in runs {
      let new = transform(run)
      if let last = out.last, last.end == new.first, last.isContinued(by: new) {
        out[out.count - 1].pages += new.pages
      } else {
        out.append(new)
      }
    }
    runs = out
  }
}
