/// The fuzzer's own generator: xoshiro256** (Blackman and Vigna), seeded through SplitMix64.
///
/// Every choice the fuzzer makes comes from one of these, so a seed replays exactly, on every
/// platform and every Swift version (the standard library's generators are neither seedable
/// nor stable). Never `SystemRandomNumberGenerator`.
public struct FuzzRandom: RandomNumberGenerator, Sendable {
  private var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

  /// The four words of state from `seed`, by SplitMix64 as the authors recommend (a state of
  /// all zeros is impossible this way).
  public init(seed: UInt64) {
    var x = seed
    func splitMix() -> UInt64 {
      x &+= 0x9E37_79B9_7F4A_7C15
      var z = x
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    s0 = splitMix(); s1 = splitMix(); s2 = splitMix(); s3 = splitMix()
  }

  public mutating func next() -> UInt64 {
    let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
    let t = s1 << 17
    s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
    s2 ^= t
    s3 = s3 << 45 | s3 >> 19
    return result
  }

  /// A generator for a sub-task (one machine, one sequence) that does not disturb this one's
  /// stream beyond one draw.
  public mutating func fork() -> FuzzRandom { FuzzRandom(seed: next()) }

  /// A value in `0 ..< n` (`n` > 0), without modulo bias (Lemire's method).
  public mutating func below(_ n: Int) -> Int {
    precondition(n > 0, "below(0)")
    // Written out rather than `UInt64.random(in:using:)`, whose algorithm the standard library
    // may change: a seed must mean the same run for ever.
    let bound = UInt64(n)
    var m = next().multipliedFullWidth(by: bound)
    if m.low < bound {
      let threshold = (0 &- bound) % bound
      while m.low < threshold { m = next().multipliedFullWidth(by: bound) }
    }
    return Int(m.high)
  }

  /// True with probability `percent` / 100.
  public mutating func chance(_ percent: Int) -> Bool { below(100) < percent }

  /// One element of a non-empty array.
  public mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }

  /// An index chosen with the given weights (at least one positive).
  public mutating func weighted(_ weights: [Int]) -> Int {
    let total = weights.reduce(0, +)
    var r = below(total)
    for (i, w) in weights.enumerated() {
      if r < w { return i }
      r -= w
    }
    return weights.count - 1
  }

  /// An index chosen by cumulative weights (`cumulative[i]` is the sum of the weights up to
  /// and including `i`; the last is the total), in O(log n).
  public mutating func weighted(cumulative: [Int]) -> Int {
    let r = below(cumulative[cumulative.count - 1])
    var lo = 0, hi = cumulative.count - 1
    while lo < hi {
      let mid = (lo + hi) / 2
      if cumulative[mid] > r { hi = mid } else { lo = mid + 1 }
    }
    return lo
  }

  /// A value in `range`.
  public mutating func int(in range: ClosedRange<Int>) -> Int { range.lowerBound + below(range.count) }
}
