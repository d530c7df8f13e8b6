/// "Did you mean": the known word nearest a misspelt one, as compilers suggest a fix-it.
public enum Suggestion {
  /// The candidate closest to `word` by edit distance (insertions, deletions, substitutions
  /// and swaps of neighbours, case ignored), when it is close enough to be a typo: at most a
  /// third of the word's length, and at least 1. `nil` when nothing is that close.
  public static func closest(to word: String, among candidates: some Sequence<String>) -> String? {
    let target = Array(word.lowercased())
    let limit = max(1, target.count / 3)
    var best: (word: String, distance: Int)?
    for candidate in candidates {
      let d = distance(target, Array(candidate.lowercased()), limit: limit)
      guard d <= limit, d < (best?.distance ?? .max) else { continue }
      best = (candidate, d)
    }
    return best?.word
  }

  /// ` (did you mean 'vfio.open'?)`, or nothing when no candidate is close.
  public static func didYouMean(_ word: String, among candidates: some Sequence<String>) -> String {
    closest(to: word, among: candidates).map { " (did you mean '\($0)'?)" } ?? ""
  }

  /// Optimal string alignment distance; gives up (returns `limit + 1`) once every path is
  /// past `limit`.
  static func distance(_ a: [Character], _ b: [Character], limit: Int) -> Int {
    if abs(a.count - b.count) > limit { return limit + 1 }
    if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
    var previous2 = [Int](repeating: 0, count: b.count + 1)
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
      current[0] = i
      var rowMinimum = current[0]
      for j in 1...b.count {
        let cost = a[i - 1] == b[j - 1] ? 0 : 1
        var d = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
        if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] { d = min(d, previous2[j - 2] + 1) }
        current[j] = d
        rowMinimum = min(rowMinimum, d)
      }
      if rowMinimum > limit { return limit + 1 }
      (previous2, previous, current) = (previous, current, previous2)
    }
    return previous[b.count]
  }
}
