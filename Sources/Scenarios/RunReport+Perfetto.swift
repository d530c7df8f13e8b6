import Foundation
import KernelCore

/// A Chrome trace event (the JSON format Perfetto's UI and `chrome://tracing` open).
struct ChromeTraceEvent: Codable {
  var name: String
  var cat: String
  var ph: String
  var ts: UInt64
  var dur: UInt64?
  /// Instant-event scope: `t` (the thread's track).
  var s: String?
  var pid: Int
  var tid: UInt32
  var args: [String: String]?
}

struct ChromeTrace: Codable {
  var traceEvents: [ChromeTraceEvent]
  var displayTimeUnit: String
}

extension RunReport {
  /// The run as Chrome/Perfetto JSON trace events: one track (thread) per kernel context
  /// (`ioctl` for `steps`, `ctx1`… for concurrent paths).
  ///
  /// Time is the model's step clock, not wall time: an event at REGION.N is at
  /// `REGION × W + 2N` µs, where W is a power of ten above twice the most events any region
  /// has, so regions follow each other and no two events share a time. On each track a step
  /// is a slice (its arguments: text, result, reason, verdict, measured `ns`); inside it the
  /// path frames the thread pushed are nested slices (a revoke contains each importer's
  /// `move_notify`, which for a TD contains the Secure-EPT zap), and each event is a slice of
  /// 1 µs named by its SEAMCALL leaf or its event name, with its fields as arguments. The end
  /// of each atomic region is an instant event named by the region's label.
  public func perfettoJSON() -> String {
    var events: [ChromeTraceEvent] = []
    var tracks: [String: UInt32] = ["setup": 0]
    func track(_ context: String) -> UInt32 {
      if let tid = tracks[context] { return tid }
      let tid = UInt32(tracks.count)
      tracks[context] = tid
      return tid
    }
    let perRegion = steps.flatMap { $0.trace.map(\.time.index) + $0.marks.map(\.time.index) } + setupTrace.map(\.time.index)
    var width: UInt64 = 10
    while width <= 2 * UInt64(perRegion.max() ?? 0) + 2 { width *= 10 }
    func ts(_ time: TraceTime) -> UInt64 { time.region &* width &+ 2 * UInt64(time.index) }

    func eventSlice(_ line: TraceLine, tid: UInt32) -> ChromeTraceEvent {
      var args = Dictionary(line.fields.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
      args["message"] = line.message
      args["event"] = line.event
      args["time"] = line.time.description
      let name = line.fields.first { $0.key == "leaf" }?.value ?? line.event
      return ChromeTraceEvent(name: name, cat: line.subsystem, ph: "X", ts: ts(line.time), dur: 1, pid: 1, tid: tid,
                              args: args)
    }
    for line in setupTrace { events.append(eventSlice(line, tid: track("setup"))) }

    var previousEnd: UInt64 = 0
    for step in steps {
      let tid = track(step.context)
      let times = step.trace.map { ts($0.time) } + step.marks.map { ts($0.time) }
      let start = max((times.min() ?? previousEnd + 2) - 1, previousEnd)
      let end = max((times.max() ?? start) + 1, start + 1)
      previousEnd = end
      var args = ["text": step.text, "result": step.result.text, "verdict": step.verdict.rawValue,
                  "ns": String(step.nanoseconds), "at": "\(step.location):\(step.column)"]
      if let reason = step.result.reason { args["reason"] = reason.description }
      if let meaning = step.result.meaning { args["meaning"] = meaning }
      if let e = step.expectation { args["expect"] = e }
      if let m = step.mismatch { args["mismatch"] = m }
      for (n, m) in (step.stateMismatches ?? []).enumerated() { args["state mismatch \(n + 1)"] = m }
      for v in step.invariantViolations { args["violated " + v.name] = v.message }
      events.append(ChromeTraceEvent(name: step.op, cat: "step", ph: "X", ts: start, dur: end - start, pid: 1, tid: tid,
                                     args: args))
      for line in step.trace { events.append(eventSlice(line, tid: tid)) }
      // Frames below the operation's own (the step slice stands for it), balanced within the step.
      var open = 0
      for mark in step.marks {
        switch mark.kind {
        case .begin where mark.depth != 1:
          open += 1
          events.append(ChromeTraceEvent(name: mark.name ?? "", cat: "path", ph: "B", ts: ts(mark.time), pid: 1, tid: tid))
        case .end where mark.depth != 1 && open > 0:
          open -= 1
          events.append(ChromeTraceEvent(name: "", cat: "path", ph: "E", ts: ts(mark.time), pid: 1, tid: tid))
        case .region:
          events.append(ChromeTraceEvent(name: mark.name ?? "", cat: "region", ph: "i", ts: ts(mark.time), s: "t",
                                         pid: 1, tid: tid, args: ["time": mark.time.description]))
        default:
          break
        }
      }
      for _ in 0 ..< open {
        events.append(ChromeTraceEvent(name: "", cat: "path", ph: "E", ts: end, pid: 1, tid: tid))
      }
    }
    for (context, tid) in tracks.sorted(by: { $0.value < $1.value }) {
      events.append(ChromeTraceEvent(name: "thread_name", cat: "__metadata", ph: "M", ts: 0, pid: 1, tid: tid,
                                     args: ["name": context]))
    }
    events.append(ChromeTraceEvent(name: "process_name", cat: "__metadata", ph: "M", ts: 0, pid: 1, tid: 0,
                                   args: ["name": "pmmio \(scenario) (\(variant))"]))
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    guard let data = try? encoder.encode(ChromeTrace(traceEvents: events, displayTimeUnit: "ns")) else { return "{}" }
    return String(decoding: data, as: UTF8.self) + "\n"
  }
}
