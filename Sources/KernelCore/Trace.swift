/// The tracing seam: every subsystem reports what it does here, the way the kernel's
/// tracepoints do (`kvm_page_fault`, `vfio_pci_dma_buf_move`, a SEAMCALL and its status).
///
/// A trace is an observation of the machine, not part of its state: two machines that differ
/// only in their traces are equal, so the explorer's visited set and the "a failed op changes
/// nothing" property ignore it.
///
/// Events are named as ftrace names them, `subsystem:event` (``TraceEventName``), carry
/// structured fields (`gpa`, `hpa`, `status` …) besides their message, and are stamped by
/// the model's step clock (``TraceTime``): the number of atomic regions the machine has run,
/// and the event's place within its region, so no two events share a time. Besides events the
/// trace records marks: a path frame pushed or popped on a thread's stack (a slice begins or
/// ends), and the end of each atomic region. With tracing off, or an event filtered out,
/// nothing is built: messages and fields are autoclosures.

/// The subsystem that reported an event, as a kernel log prefix would show it.
public enum Subsystem: String, Hashable, Sendable, CaseIterable, Comparable {
  case pci, tdisp, dmabuf, vfio, kvm, mmu, tdx, guest, platform

  public static func < (a: Subsystem, b: Subsystem) -> Bool {
    allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
  }
}

/// When an event happened by the model's step clock: `region` counts the atomic regions the
/// machine has run (the one running now is `regions + 1`), `index` numbers the records within
/// the region from 1. Printed `12.003`.
public struct TraceTime: Hashable, Sendable, Comparable, Codable, CustomStringConvertible {
  public var region: UInt64
  public var index: UInt32
  public init(region: UInt64, index: UInt32) { self.region = region; self.index = index }
  public static func < (a: TraceTime, b: TraceTime) -> Bool { (a.region, a.index) < (b.region, b.index) }
  public var description: String {
    let n = String(index)
    return "\(region)." + String(repeating: "0", count: max(0, 3 - n.count)) + n
  }
}

/// One field of an event, `key=value` (`gpa=0x80000000`, `status=TDX_SUCCESS`). Values are
/// text as the kernel's trace output prints them: addresses in hex, ids in decimal.
public struct TraceField: Hashable, Sendable, CustomStringConvertible {
  public let key: String
  public let value: String
  public init(_ key: String, _ value: String) { self.key = key; self.value = value }
  /// `key=value`; a value with a space in it is quoted (`purpose="move_notify zap"`).
  public var description: String { value.contains(" ") ? "\(key)=\"\(value)\"" : "\(key)=\(value)" }

  public static func gpa(_ address: GPA) -> TraceField { TraceField("gpa", address.description) }
  public static func hpa(_ address: HPA) -> TraceField { TraceField("hpa", address.description) }
  /// `key=0x…`.
  public static func hex(_ key: String, _ value: UInt64) -> TraceField { TraceField(key, "0x" + String(value, radix: 16)) }
  public static func int<I: BinaryInteger>(_ key: String, _ value: I) -> TraceField { TraceField(key, "\(value)") }
  /// An object id by its number (`vm=1`, `buffer=3`).
  public static func id<Tag>(_ key: String, _ id: ObjectID<Tag>) -> TraceField { TraceField(key, "\(id.rawValue)") }
  public static func vm(_ id: VMID) -> TraceField { .id("vm", id) }
  public static func fd(_ fd: FD) -> TraceField { TraceField("fd", "\(fd.rawValue)") }
  public static func errno(_ errno: Errno) -> TraceField { TraceField("errno", errno.name) }
  public static func text(_ key: String, _ value: String) -> TraceField { TraceField(key, value) }
  public static func flag(_ key: String, _ value: Bool) -> TraceField { TraceField(key, value ? "1" : "0") }
}

/// One traced event: `vfio:dmabuf_move: revoke dmabuf1` with `buffer=1 revoked=1`.
public struct TraceEvent: Hashable, Sendable, CustomStringConvertible {
  public let name: TraceEventName
  public let message: String
  public let fields: [TraceField]
  /// When it happened; set as it enters a trace.
  public internal(set) var time: TraceTime

  public init(_ name: TraceEventName, _ message: String, fields: [TraceField] = [],
              time: TraceTime = TraceTime(region: 0, index: 0)) {
    self.name = name; self.message = message; self.fields = fields; self.time = time
  }

  /// An event without a name of its own: `subsystem:log`.
  public init(_ subsystem: Subsystem, _ message: String) { self.init(.log(subsystem), message) }

  public var subsystem: Subsystem { name.subsystem }
  /// `vfio: revoke dmabuf1`, as a kernel log line shows it.
  public var description: String { "\(subsystem.rawValue): \(message)" }
}

/// What a thread's stack or clock did, between events.
public struct TraceMark: Hashable, Sendable {
  public enum Kind: Hashable, Sendable {
    /// A slice begins: a path frame was pushed (or a path began a stage that contains others,
    /// such as a buffer's revoke and its importers' `move_notify`). `depth` is the thread's
    /// stack depth with the frame (1: the operation itself).
    case begin(String, depth: Int)
    /// The innermost open slice of the thread ends.
    case end(depth: Int)
    /// An atomic region ended (the step clock ticks after it), with the label a schedule shows.
    case region(String)
  }
  public let kind: Kind
  /// The thread it happened on; `nil` where the caller did not say.
  public let thread: String?
  public let time: TraceTime
}

/// Where a trace stood, to go back to when a step turns out to have been blocked.
public struct TracePosition: Hashable, Sendable {
  let events: Int
  let marks: Int
  let regions: UInt64
  let index: UInt32
}

/// An append-only list of events and marks, excluded from equality and hashing.
public struct Trace: Hashable, Sendable {
  public private(set) var events: [TraceEvent] = []
  public private(set) var marks: [TraceMark] = []
  /// Exploration turns tracing off: millions of states need no trace.
  public var isEnabled: Bool
  /// Which events are recorded (`--events`); marks are always recorded while enabled.
  public var filter: TraceFilter = .all
  /// The step clock: atomic regions run so far.
  public private(set) var regions: UInt64 = 0
  /// Records stamped in the current region so far.
  private var index: UInt32 = 0

  public init(enabled: Bool = true, filter: TraceFilter = .all) {
    isEnabled = enabled
    self.filter = filter
  }

  /// Whether an event named `name` would be recorded now.
  @inlinable public func records(_ name: TraceEventName) -> Bool { isEnabled && filter.includes(name) }

  /// Records `message` from `subsystem` as the event `subsystem:log`. The message is built
  /// only when tracing is on.
  @inlinable
  public mutating func emit(_ subsystem: Subsystem, _ message: @autoclosure () -> String) {
    if records(.log(subsystem)) { append(TraceEvent(.log(subsystem), message())) }
  }

  /// Records the event `name` with its message and fields. Neither is built when tracing is
  /// off or the filter leaves the event out.
  @inlinable
  public mutating func emit(_ name: TraceEventName, _ message: @autoclosure () -> String,
                            _ fields: @autoclosure () -> [TraceField] = []) {
    if records(name) { append(TraceEvent(name, message(), fields: fields())) }
  }

  @usableFromInline mutating func append(_ event: TraceEvent) {
    var stamped = event
    stamped.time = stamp()
    events.append(stamped)
  }

  private mutating func stamp() -> TraceTime {
    index &+= 1
    return TraceTime(region: regions &+ 1, index: index)
  }

  // MARK: Marks

  /// A slice named `name` begins on `thread`, at stack depth `depth`.
  public mutating func begin(_ name: @autoclosure () -> String, depth: Int, thread: String? = nil) {
    guard isEnabled else { return }
    marks.append(TraceMark(kind: .begin(name(), depth: depth), thread: thread, time: stamp()))
  }

  /// The slice at stack depth `depth` of `thread` ends.
  public mutating func end(depth: Int, thread: String? = nil) {
    guard isEnabled else { return }
    marks.append(TraceMark(kind: .end(depth: depth), thread: thread, time: stamp()))
  }

  /// An atomic region labelled `label` ran on `thread`: the step clock ticks.
  public mutating func regionRan(_ label: StaticString, thread: String? = nil) {
    if isEnabled { marks.append(TraceMark(kind: .region("\(label)"), thread: thread, time: stamp())) }
    regions &+= 1
    index = 0
  }

  /// Where the trace stands now.
  public var position: TracePosition {
    TracePosition(events: events.count, marks: marks.count, regions: regions, index: index)
  }

  /// Forgets what was recorded since `position` (a step that blocked did nothing).
  public mutating func rollback(to position: TracePosition) {
    if events.count > position.events { events.removeLast(events.count - position.events) }
    if marks.count > position.marks { marks.removeLast(marks.count - position.marks) }
    regions = position.regions
    index = position.index
  }

  // MARK: Moving events

  /// Moves every event and mark of `other` (a subsystem's own trace) to the end of this one,
  /// stamped by this trace's clock.
  public mutating func absorb(_ other: inout Trace) {
    if isEnabled {
      // In the order `other` recorded them: events and marks interleave by their own times.
      var e = other.events.startIndex, m = other.marks.startIndex
      while e < other.events.endIndex || m < other.marks.endIndex {
        if m == other.marks.endIndex || (e < other.events.endIndex && other.events[e].time < other.marks[m].time) {
          if filter.includes(other.events[e].name) { append(other.events[e]) }
          e += 1
        } else {
          let mark = other.marks[m]
          marks.append(TraceMark(kind: mark.kind, thread: mark.thread, time: stamp()))
          m += 1
        }
      }
    }
    other.events.removeAll(keepingCapacity: true)
    other.marks.removeAll(keepingCapacity: true)
  }

  /// Drops and returns the events recorded so far (a step's events); marks are dropped too.
  public mutating func drain() -> [TraceEvent] {
    defer {
      events.removeAll(keepingCapacity: true)
      marks.removeAll(keepingCapacity: true)
    }
    return events
  }

  /// Drops and returns the events and marks recorded so far.
  public mutating func drainAll() -> (events: [TraceEvent], marks: [TraceMark]) {
    defer {
      events.removeAll(keepingCapacity: true)
      marks.removeAll(keepingCapacity: true)
    }
    return (events, marks)
  }

  public static func == (_: Trace, _: Trace) -> Bool { true }
  public func hash(into _: inout Hasher) {}
}
