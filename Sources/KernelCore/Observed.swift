/// A value the model keeps for people, not for the kernel: a counter, a log, a retry count.
///
/// Two machines that differ only in what they observed are the same machine: no operation
/// can tell them apart. So an `Observed` value takes no part in `==` or hashing, as the
/// trace does, and the explorer's visited set and the "a failed op changes nothing" check
/// ignore it. Invariants that are about history (a `move_notify` that reached a freed slot)
/// read it, and the explorer checks them on every transition it generates.
@frozen
public struct Observed<Value: Sendable>: Hashable, Sendable {
  public var value: Value
  @inlinable public init(_ value: Value) { self.value = value }
  @inlinable public static func == (_: Self, _: Self) -> Bool { true }
  @inlinable public func hash(into _: inout Hasher) {}
}

extension Observed: ExpressibleByIntegerLiteral where Value == Int {
  @inlinable public init(integerLiteral value: Int) { self.value = value }
}

extension Observed: ExpressibleByArrayLiteral where Value: RangeReplaceableCollection {
  @inlinable public init(arrayLiteral elements: Value.Element...) { self.value = Value(elements) }
}
