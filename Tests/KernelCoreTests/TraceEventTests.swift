import Testing
@testable import KernelCore

/// Counts how often an autoclosure ran: a message or a field list that is built.
final class BuildCounter: @unchecked Sendable {
  var count = 0
  func message() -> String { count += 1; return "built" }
  func fields() -> [TraceField] { count += 1; return [.int("n", 1)] }
}

@Suite struct TraceEventTests {
  struct FilterCase: Sendable, CustomTestStringConvertible {
    let globs: String
    let included: [String]
    let excluded: [String]
    var testDescription: String { globs }
  }

  /// ftrace's `set_event` forms: `subsystem:event` globs, `event` in any subsystem,
  /// `subsystem:` for all of it, `!` to leave out.
  @Test(arguments: [
    FilterCase(globs: "tdx:*,kvm:mmu*", included: ["tdx:seamcall", "tdx:tdcall", "kvm:mmu_fault", "kvm:mmu_zap"],
               excluded: ["kvm:move_notify", "vfio:dmabuf_move", "mmu:log"]),
    FilterCase(globs: "seamcall", included: ["tdx:seamcall"], excluded: ["tdx:tdcall"]),
    FilterCase(globs: "vfio:", included: ["vfio:open", "vfio:dmabuf_move", "vfio:log"], excluded: ["dmabuf:move_notify"]),
    FilterCase(globs: "*move*", included: ["vfio:dmabuf_move", "dmabuf:move_notify", "kvm:move_notify"], excluded: ["tdx:seamcall"]),
    FilterCase(globs: "!tdx:*", included: ["kvm:mmu_fault", "vfio:open"], excluded: ["tdx:seamcall", "tdx:devif_state"]),
    FilterCase(globs: "kvm:*, !kvm:mmu_?ault", included: ["kvm:mmu_zap", "kvm:kick"], excluded: ["kvm:mmu_fault", "tdx:seamcall"]),
  ])
  func filters(_ c: FilterCase) throws {
    let filter = try TraceFilter(parsing: c.globs)
    let byName = Dictionary(uniqueKeysWithValues: TraceEventName.all.map { ($0.description, $0) })
    for name in c.included { #expect(filter.includes(try #require(byName[name])), "\(name)") }
    for name in c.excluded { #expect(!filter.includes(try #require(byName[name])), "\(name)") }
  }

  @Test(arguments: [
    ("tdx:seamcal", "--events: 'tdx:seamcal' matches no event: did you mean 'tdx:seamcall'?"),
    ("kvm:*,nope", "--events: 'nope' matches no event"),
    ("tdx:*,", "--events: an empty event glob"),
    ("!", "--events: an empty event glob"),
  ])
  func badFilters(_ globs: String, _ message: String) {
    #expect(throws: TraceFilterError.self) { try TraceFilter(parsing: globs) }
    do { _ = try TraceFilter(parsing: globs) } catch { #expect(error.description == message) }
  }

  @Test(arguments: [("*", "", true), ("a*c", "abbc", true), ("a?c", "abc", true), ("a?c", "ac", false),
                    ("*_zap", "mmu_zap", true), ("mmu*", "move_notify", false), ("**x", "yx", true)])
  func globs(_ pattern: String, _ text: String, _ matches: Bool) {
    #expect(TraceFilter.glob(pattern, text) == matches)
  }

  /// Off, or filtered out: neither the message nor the fields are built.
  @Test func nothingIsBuiltWhenOffOrFilteredOut() throws {
    let counter = BuildCounter()
    var off = Trace(enabled: false)
    off.emit(.tdxSeamcall, counter.message(), counter.fields())
    off.emit(.tdx, counter.message())
    off.begin(counter.message(), depth: 2)
    var filtered = Trace(filter: try TraceFilter(parsing: "kvm:*"))
    filtered.emit(.tdxSeamcall, counter.message(), counter.fields())
    filtered.emit(.tdx, counter.message())
    #expect(counter.count == 0)
    #expect(off.events.isEmpty && off.marks.isEmpty && filtered.events.isEmpty)
    filtered.emit(.kvmKick, counter.message(), counter.fields())
    #expect(counter.count == 2)
  }

  /// The step clock: regions run, and each record's place in its region; no two records
  /// share a time, and a rollback forgets a blocked step's records and ticks.
  @Test func theStepClockStampsEveryRecordOnce() {
    var trace = Trace()
    trace.emit(.vfioOpen, "a")
    trace.begin("child", depth: 2)
    trace.regionRan("r1")
    trace.emit(.vfioOpen, "b")
    let position = trace.position
    trace.emit(.vfioOpen, "c")
    trace.regionRan("r2")
    trace.rollback(to: position)
    trace.end(depth: 2)
    trace.regionRan("r2")
    #expect(trace.events.map(\.time.description) == ["1.001", "2.001"])
    #expect(trace.marks.map(\.time.description) == ["1.002", "1.003", "2.002", "2.003"])
    #expect(trace.regions == 2)
    #expect(trace.events.map(\.message) == ["a", "b"])
  }

  /// A subsystem's own trace moves over in its order, stamped by the receiving clock.
  @Test func absorbRestampsInOrder() throws {
    var module = Trace()
    module.emit(.tdxSeamcall, "map")
    module.emit(.tdxDevifState, "state")
    var machine = Trace(filter: try TraceFilter(parsing: "tdx:seamcall"))
    machine.regionRan("r")
    machine.absorb(&module)
    #expect(machine.events.map(\.message) == ["map"])
    #expect(machine.events.map(\.time.description) == ["2.001"])
    #expect(module.events.isEmpty)
  }

  /// The old form keeps working: a message without an event name is `subsystem:log`.
  @Test func anUnnamedMessageIsTheSubsystemsLog() {
    var trace = Trace()
    trace.emit(.vfio, "revoke")
    #expect(trace.events.first?.name.description == "vfio:log")
    #expect(trace.events.first?.description == "vfio: revoke")
  }

  /// Every subsystem's log is catalogued, and no name is catalogued twice.
  @Test func theCatalogIsComplete() {
    #expect(Set(TraceEventName.all).count == TraceEventName.all.count)
    for subsystem in Subsystem.allCases { #expect(TraceEventName.all.contains(.log(subsystem))) }
  }
}
