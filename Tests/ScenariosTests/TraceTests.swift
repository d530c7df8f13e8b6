import Foundation
import Testing
import KernelCore
@testable import Scenarios

/// The trace of real runs: named, catalogued events with their fields, one time each by the
/// step clock, slices nested as the paths call each other.
@Suite struct TraceTests {
  static let files = ["default.yaml", "shared-mmio.yaml", "flr-while-run.yaml", "slot-move.yaml", "design-sample.yaml"]

  static func report(_ file: String, _ variant: Variant, events: TraceFilter = .all) throws -> RunReport {
    let url = ExampleScenarioTests.examples.appendingPathComponent(file)
    let scenario = try ScenarioParser.parse(String(contentsOf: url, encoding: .utf8), file: file)
    return try ScenarioRunner.run(scenario, variant: variant, options: RunOptions(events: events))
  }

  /// One entry of a step's timeline, events and marks in time order.
  enum Entry: Equatable {
    case event(String, String)   // event name, leaf or message
    case begin(String)
    case end
    case region
  }

  static func timeline(_ step: StepReport) -> [Entry] {
    let events = step.trace.map { (time: $0.time, entry: Entry.event($0.event, $0.fields.first { $0.key == "leaf" }?.value ?? $0.message)) }
    let marks = step.marks.map { mark -> (time: TraceTime, entry: Entry) in
      switch mark.kind {
      case .begin: (mark.time, .begin(mark.name ?? ""))
      case .end: (mark.time, .end)
      case .region: (mark.time, .region)
      }
    }
    return (events + marks).sorted { $0.time < $1.time }.map(\.entry)
  }

  /// Every event the examples emit is catalogued with a name of its own (no call site is left
  /// on `subsystem:log`), and carries only the catalogue's fields; times only grow.
  @Test(arguments: files, Variant.allCases)
  func everyEventIsCataloguedAndStampedOnce(file: String, variant: Variant) throws {
    let report = try Self.report(file, variant)
    let catalog = Dictionary(uniqueKeysWithValues: TraceEventName.catalog.map { ($0.name.description, $0.fields) })
    var last = TraceTime(region: 0, index: 0)
    for step in report.steps {
      for line in step.trace {
        let fields = try #require(catalog[line.event], "\(line.event) is not catalogued")
        #expect(!line.event.hasSuffix(":log"), "\(line.event): \(line.message)")
        if !fields.contains("…") {
          for field in line.fields { #expect(fields.contains(field.key), "\(line.event) has \(field.key)") }
        }
      }
      let times = (step.trace.map(\.time) + step.marks.map(\.time)).sorted()
      #expect(Set(times).count == times.count, "step \(step.index): two records share a time")
      if let first = times.first { #expect(last < first, "step \(step.index) starts before the previous one ended") }
      last = times.last ?? last
    }
  }

  /// The step's slices as an indented tree, SEAMCALLs by leaf (other events left out).
  static func tree(_ step: StepReport) -> [String] {
    var lines: [String] = []
    var depth = 0
    for entry in timeline(step) {
      let indent = String(repeating: "  ", count: depth)
      switch entry {
      case .begin(let name): lines.append(indent + name); depth += 1
      case .end: depth -= 1
      case .event("tdx:seamcall", let leaf): lines.append(indent + leaf)
      case .event, .region: break
      }
    }
    #expect(depth == 0, "every slice the step began, it ended")
    return lines
  }

  /// A revoke contains KVM's move_notify, which for a TD contains the Secure-EPT zap and its
  /// SEAMCALLs. `reviewed` stops the interface between the two: the revoke blocks and tracks,
  /// and once the interface is stopped the buffer's importers are told again and unmap.
  @Test func aRevokeContainsItsMoveNotifyWhichContainsTheZap() throws {
    let stop = try #require(try Self.report("default.yaml", .reviewed).steps.first { $0.op == "tdisp.stop" })
    #expect(Self.tree(stop) == [
      "tdisp.stop",
      "  revoke dmabuf1",
      "    kvm_vfio_dmabuf_move_notify vm1 attachment 1",
      "      private MMIO zap vm1",
      "        TDH.MMIO.BLOCK(159)", "        TDH.MMIO.BLOCK(159)", "        TDH.MEM.TRACK(38)", "        TDH.VP.ENTER(0)",
      "  renotify dmabuf1",
      "    kvm_vfio_dmabuf_move_notify vm1 attachment 1",
      "      private MMIO zap vm1",
      "        TDH.MMIO.UNMAP(160)", "        TDH.MMIO.UNMAP(160)",
    ])
    // The RFC's FLR revokes with the interface still trusted: BLOCK, TRACK and UNMAP (refused)
    // in the one revoke.
    let flr = try #require(try Self.report("flr-while-run.yaml", .rfcV1).steps.first { $0.op == "vfio.flr" })
    #expect(Self.tree(flr) == [
      "vfio.flr",
      "  revoke dmabuf1",
      "    kvm_vfio_dmabuf_move_notify vm1 attachment 1",
      "      private MMIO zap vm1",
      "        TDH.MMIO.BLOCK(159)", "        TDH.MEM.TRACK(38)", "        TDH.VP.ENTER(0)", "        TDH.MMIO.UNMAP(160)",
    ])
  }

  /// The Perfetto file nests: per track every E closes the last B, every event slice lies in
  /// its step's slice, and no two event slices share a timestamp.
  @Test(arguments: Variant.allCases)
  func perfettoSlicesNest(variant: Variant) throws {
    let report = try Self.report("default.yaml", variant)
    let trace = try JSONDecoder().decode(ChromeTrace.self, from: Data(report.perfettoJSON().utf8))
    var stacks: [UInt32: [String]] = [:]
    for event in trace.traceEvents.sorted(by: { $0.ts < $1.ts }) {
      switch event.ph {
      case "B": stacks[event.tid, default: []].append(event.name)
      case "E": #expect(stacks[event.tid]?.popLast() != nil, "an E without its B at \(event.ts)")
      default: break
      }
    }
    #expect(stacks.values.allSatisfy { $0.isEmpty })
    let steps = trace.traceEvents.filter { $0.cat == "step" }
    let slices = trace.traceEvents.filter { $0.ph == "X" && $0.cat != "step" }
    #expect(Set(slices.map(\.ts)).count == slices.count)
    for slice in slices {
      #expect(steps.contains { $0.tid == slice.tid && $0.ts <= slice.ts && slice.ts + 1 <= $0.ts + ($0.dur ?? 0) },
              "\(slice.name) at \(slice.ts) is in no step")
    }
    let unmap = try #require(slices.first { $0.name == "TDH.MMIO.UNMAP(160)" })
    #expect(unmap.args?["gpa"] == "0x80000000" && unmap.args?["status"] != nil && unmap.args?["level"] == "4K")
  }

  /// `--events` decides what is recorded: the steps' lines hold only what it lets through.
  @Test func aFilterKeepsOnlyItsEvents() throws {
    let report = try Self.report("default.yaml", .reviewed, events: try TraceFilter(parsing: "tdx:*,kvm:mmu*"))
    let names = Set(report.steps.flatMap { $0.trace.map(\.event) })
    #expect(names == ["tdx:seamcall", "tdx:tdcall", "tdx:devif_state", "tdx:devif_bind", "tdx:td_exit", "kvm:mmu_fault", "kvm:mmu_zap"])
    #expect(report.steps.contains { !$0.marks.isEmpty }, "marks are not events: the filter keeps them")
  }
}
