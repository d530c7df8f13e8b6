/// The tracing seam: every subsystem reports what it does here, the way the kernel's
/// tracepoints do (`kvm_page_fault`, `vfio_pci_dma_buf_move`, a SEAMCALL and its status).
///
/// A trace is an observation of the machine, not part of its state: two machines that differ
/// only in their traces are equal, so the explorer's visited set and the "a failed op changes
/// nothing" property ignore it.

/// The subsystem that reported an event, as a kernel log prefix would show it.
public enum Subsystem: String, Hashable, Sendable, CaseIterable {
  case pci, tdisp, dmabuf, vfio, kvm, mmu, tdx, guest, platform
}

/// One traced event: `vfio: revoke dmabuf 3 (FLR)`.
public struct TraceEvent: Hashable, Sendable, CustomStringConvertible {
  public let subsystem: Subsystem
  public let message: String
  public init(_ subsystem: Subsystem, _ message: String) {
    self.subsystem = subsystem
    self.message = message
  }
  public var description: String { "\(subsystem.rawValue): \(message)" }
}

/// An append-only list of events, excluded from equality and hashing.
public struct Trace: Hashable, Sendable {
  public private(set) var events: [TraceEvent] = []
  /// Exploration turns tracing off: millions of states need no trace.
  public var isEnabled: Bool

  public init(enabled: Bool = true) { isEnabled = enabled }

  /// Records `message` from `subsystem`. The message is built only when tracing is on.
  @inlinable
  public mutating func emit(_ subsystem: Subsystem, _ message: @autoclosure () -> String) {
    if isEnabled { append(TraceEvent(subsystem, message())) }
  }

  @usableFromInline mutating func append(_ event: TraceEvent) { events.append(event) }

  /// Moves every event of `other` (a subsystem's own trace) to the end of this one.
  public mutating func absorb(_ other: inout Trace) {
    if isEnabled { events.append(contentsOf: other.events) }
    other.events.removeAll(keepingCapacity: true)
  }

  /// Drops and returns what has been recorded so far (a step's events).
  public mutating func drain() -> [TraceEvent] {
    defer { events.removeAll(keepingCapacity: true) }
    return events
  }

  public static func == (_: Trace, _: Trace) -> Bool { true }
  public func hash(into _: inout Hasher) {}
}
