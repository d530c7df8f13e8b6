import Foundation

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
  /// (`ioctl` for `steps`, `ctx1`… for concurrent paths), a slice per step, an instant event
  /// per traced kernel event. Time is logical (step N spans 100 µs from N × 100 µs), so the
  /// picture shows order, not speed; measured times are in `args.ns`.
  public func perfettoJSON() -> String {
    var events: [ChromeTraceEvent] = []
    var tracks: [String: UInt32] = ["setup": 0]
    func track(_ context: String) -> UInt32 {
      if let tid = tracks[context] { return tid }
      let tid = UInt32(tracks.count)
      tracks[context] = tid
      return tid
    }
    for (n, line) in setupTrace.enumerated() {
      events.append(ChromeTraceEvent(name: line.description, cat: line.subsystem, ph: "i", ts: UInt64(n), s: "t",
                                     pid: 1, tid: track("setup")))
    }
    for step in steps {
      let start = UInt64(step.index) * 100
      let tid = track(step.context)
      var args = ["text": step.text, "result": step.result.text, "verdict": step.verdict.rawValue,
                  "ns": String(step.nanoseconds), "at": "\(step.location):\(step.column)"]
      if let reason = step.result.reason { args["reason"] = reason.description }
      if let meaning = step.result.meaning { args["meaning"] = meaning }
      if let e = step.expectation { args["expect"] = e }
      if let m = step.mismatch { args["mismatch"] = m }
      for (n, m) in (step.stateMismatches ?? []).enumerated() { args["state mismatch \(n + 1)"] = m }
      for v in step.invariantViolations { args["violated " + v.name] = v.message }
      events.append(ChromeTraceEvent(name: step.op, cat: "step", ph: "X", ts: start, dur: 90, pid: 1, tid: tid, args: args))
      for (n, line) in step.trace.enumerated() {
        events.append(ChromeTraceEvent(name: line.description, cat: line.subsystem, ph: "i",
                                       ts: start + UInt64(min(n + 1, 89)), s: "t", pid: 1, tid: tid))
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
    guard let data = try? encoder.encode(ChromeTrace(traceEvents: events, displayTimeUnit: "ms")) else { return "{}" }
    return String(decoding: data, as: UTF8.self) + "\n"
  }
}
