import Scenarios

/// How `pmmio explore` prints a report for people.
public enum ExploreText {
  public static func render(_ r: ExploreReport) -> String {
    var out = "explore \(r.scenario) (variant \(r.variant), reduction \(r.reduction ? "on" : "off"))\n"
    out += "  states \(r.states), distinct states \(r.distinctStates), transitions \(r.transitions), "
      + "maximum depth \(r.maxDepth), \(format(r.seconds)) s, \(Int(r.statesPerSecond.rounded())) states/s\n"
    guard let f = r.finding else {
      if r.complete {
        out += "no invariant violated, \(r.distinctStates) states, complete\n"
      } else {
        out += "stopped by \(r.stoppedBy ?? "a limit") after \(r.distinctStates) states: nothing found so far, not complete\n"
      }
      return out
    }
    switch f.kind {
    case .violation: out += "VIOLATED: \(f.invariant ?? "?"): \(f.message)\n"
    case .deadlock: out += "DEADLOCK: \(f.message)\n"
    case .livelock: out += "LIVELOCK: \(f.message)\n"
    case .modelBug: out += "MODEL BUG: \(f.message)\n"
    case .steps: out += "STEPS NOT AS EXPECTED: \(f.message)\n"
    }
    if f.steps.isEmpty {
      out += "counterexample: the scenario's steps alone\n"
      return out
    }
    out += "counterexample (\(f.steps.count) step\(f.steps.count == 1 ? "" : "s") after the scenario's steps):\n"
    for step in f.steps {
      if let start = f.cycleStart, step.index == start + 1 { out += "  -- the cycle: from here the threads come back to this state for ever\n" }
      out += "  \(pad(step.index))  \(step.thread): \(step.region)\n"
      for event in step.events { out += "        \(event)\n" }
      if let completed = step.completed { out += "      = \(completed)\n" }
    }
    out += "schedule: [\(f.schedule.joined(separator: ", "))]\n"
    return out
  }

  static func pad(_ n: Int) -> String {
    let s = String(n)
    return String(repeating: " ", count: max(0, 3 - s.count)) + s
  }

  static func format(_ seconds: Double) -> String {
    let millis = Int((seconds * 1000).rounded())
    return "\(millis / 1000).\(String(repeating: "0", count: 3 - String(millis % 1000).count))\(millis % 1000)"
  }
}

/// Writes a counterexample as a scenario `pmmio run` replays.
public enum ScheduleWriter {
  /// The scenario text with its `variant:` and `schedule:` set (an existing `schedule:` key, as
  /// the last top-level key written by an earlier run, is replaced).
  public static func scenario(_ text: String, variant: String, schedule: [String]) -> String {
    var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    if let i = lines.firstIndex(where: { $0.hasPrefix("schedule:") }) {
      var end = i + 1
      while end < lines.count, lines[end].hasPrefix(" ") || lines[end].hasPrefix("-") { end += 1 }
      lines.removeSubrange(i ..< end)
    }
    if let i = lines.firstIndex(where: { $0.hasPrefix("variant:") }) {
      lines[i] = "variant: \(variant)"
    } else {
      lines.insert("variant: \(variant)", at: lines.firstIndex(where: { $0.hasPrefix("name:") }).map { $0 + 1 } ?? 0)
    }
    while lines.last == "" { lines.removeLast() }
    lines.append("# The counterexample pmmio explore found: each entry steps that thread one atomic region.")
    lines.append("schedule: [\(schedule.joined(separator: ", "))]")
    return lines.joined(separator: "\n") + "\n"
  }
}
