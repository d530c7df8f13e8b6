import Scenarios

/// The explorer's visited set: which states are known, by their index in the search's list of
/// states.
///
/// An open-addressing table of indices with each state's hash kept beside it, so a state is
/// hashed once, when it is generated: a lookup compares stored hashes before it compares
/// states, and growing the table moves indices by their stored hashes without hashing a
/// state again. The states themselves stay in the search's list, not copied into a key.
struct VisitedSet {
  /// Slots holding a state's index, or -1.
  private var slots: [Int32] = Array(repeating: -1, count: 1024)
  /// Each known state's hash, by index.
  private(set) var hashes: [Int] = []

  var count: Int { hashes.count }

  /// The index of the state equal to `state` (whose hash is `hash`) among `states`, if known.
  /// - Complexity: O(1) expected, one state comparison per stored state with the same hash.
  func index(of state: Interleaving, hash: Int, in states: [Interleaving]) -> Int32? {
    let mask = slots.count - 1
    var i = hash & mask
    // The stored states are compared where they are, not copied out.
    return states.withUnsafeBufferPointer { stored in
      while true {
        let j = slots[i]
        if j < 0 { return nil }
        if hashes[Int(j)] == hash, stored[Int(j)] == state { return j }
        i = (i + 1) & mask
      }
    }
  }

  /// Records that the state at `index` (the next one, `count`) has `hash`; the caller checked
  /// that it is not known.
  mutating func insert(_ index: Int32, hash: Int) {
    precondition(Int(index) == hashes.count, "visited states are numbered in order")
    hashes.append(hash)
    if hashes.count * 2 > slots.count { grow() } else { place(index, hash: hash) }
  }

  private mutating func place(_ index: Int32, hash: Int) {
    let mask = slots.count - 1
    var i = hash & mask
    while slots[i] >= 0 { i = (i + 1) & mask }
    slots[i] = index
  }

  /// Doubles the table and puts every index back by its stored hash.
  private mutating func grow() {
    slots = Array(repeating: -1, count: slots.count * 2)
    for (j, hash) in hashes.enumerated() { place(Int32(j), hash: hash) }
  }
}
