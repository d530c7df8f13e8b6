import KernelCore

/// What KVM keeps per VM (the VMs themselves, the TD behind each TDX VM), by VM id: a
/// machine has a handful of VMs, so the table is the ids in order beside their values, and a
/// lookup is a short search of the ids, with no hashing.
///
/// It reads as a dictionary: `table[id]` gets, sets and modifies in place (the value is moved
/// out for the access and back, so a VM modified through the table is never shared with a
/// copy and never copied), iteration yields `(key:, value:)` in id order, and ``keys`` and
/// ``values`` are collections in that order. Equal tables have the same ids and values.
public struct VMTable<Value: Hashable & Sendable>: Hashable, Sendable, Sequence, ExpressibleByDictionaryLiteral {
  /// The ids, ascending.
  public private(set) var keys: [VMID] = []
  /// The values by position in `keys`; `nil` only while one is being modified in place.
  private var slots: [Value?] = []

  public init() {}

  public init(dictionaryLiteral elements: (VMID, Value)...) {
    for (id, value) in elements { self[id] = value }
  }

  public var count: Int { keys.count }
  public var isEmpty: Bool { keys.isEmpty }

  /// The position of `id` in `keys`, or where it would go.
  @inline(__always) private func position(of id: VMID) -> (index: Int, found: Bool) {
    var i = 0
    while i < keys.count, keys[i] < id { i += 1 }
    return (i, i < keys.count && keys[i] == id)
  }

  public subscript(id: VMID) -> Value? {
    get {
      let (i, found) = position(of: id)
      return found ? slots[i] : nil
    }
    _modify {
      let (i, found) = position(of: id)
      var value: Value?
      if found { swap(&value, &slots[i]) }
      defer {
        switch (found, value == nil) {
        case (true, false): swap(&value, &slots[i])
        case (true, true): keys.remove(at: i); slots.remove(at: i)
        case (false, false): keys.insert(id, at: i); slots.insert(value, at: i)
        case (false, true): break
        }
      }
      yield &value
    }
  }

  /// The values in id order.
  public var values: Values { Values(slots: slots) }

  /// The values of a ``VMTable``, in id order.
  public struct Values: RandomAccessCollection, Sendable {
    let slots: [Value?]
    public var startIndex: Int { 0 }
    public var endIndex: Int { slots.count }
    public subscript(position: Int) -> Value {
      guard let value = slots[position] else { preconditionFailure("a VM table's value read while it is modified") }
      return value
    }
  }

  public func makeIterator() -> Iterator { Iterator(table: self) }

  /// `(key:, value:)` in id order.
  public struct Iterator: IteratorProtocol {
    let table: VMTable
    var i = 0
    public mutating func next() -> (key: VMID, value: Value)? {
      guard i < table.keys.count, let value = table.slots[i] else { return nil }
      defer { i += 1 }
      return (table.keys[i], value)
    }
  }
}
