import ArgumentParser
import Explorer
import Foundation
import Reports
import Scenarios

/// `pmmio explore FILE`: every interleaving of a scenario's concurrent paths.
struct ExploreCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "explore",
    abstract: "Explore every interleaving of a scenario's concurrent paths; report a shortest counterexample.",
    discussion: """
      After the scenario's steps, every thread of its concurrent paths (and every vCPU that a \
      kick makes leave guest mode) takes one atomic region at a time, in every order, breadth \
      first. Every invariant is checked in every state (the quiescent ones where no thread is \
      inside a path). The first violation, deadlock or model bug found has a shortest schedule; \
      once the search is complete, a cycle no thread can leave is a livelock. \
      --out FILE writes the counterexample as a scenario with a schedule: that pmmio run FILE \
      replays region by region. --all searches on to the end and reports a shortest \
      counterexample for every invariant that breaks (a first violation can hide the harm it \
      leads to). Expectations of the concurrent steps are not judged here: \
      each interleaving gives its own results. \
      Exit status: 0 complete and nothing found, 1 a violation, deadlock or livelock found, \
      2 bad input or usage, 3 a limit stopped the search first and nothing was found.
      """)

  @OptionGroup var options: CommonOptions

  @Option(name: .customLong("max-states"), help: "Stop once this many distinct states are known (the state being expanded is finished first: a few more may be reported).")
  var maxStates: Int = 5_000_000

  @Option(name: .customLong("max-depth"), help: "Expand no state more than this many steps after the scenario's steps.")
  var maxDepth: Int = 1_000_000

  @Flag(name: .customLong("no-reduction"), help: "Explore every interleaving, without partial-order reduction.")
  var noReduction = false

  @Flag(help: "Search to the end and report a shortest counterexample for every invariant that breaks, not only the first.")
  var all = false

  @Option(help: "Write the (first) counterexample as a scenario with a 'schedule:' that pmmio run replays.")
  var out: String?

  func validate() throws {
    guard maxStates > 0 else { throw ValidationError("--max-states must be at least 1") }
    guard maxDepth > 0 else { throw ValidationError("--max-depth must be at least 1") }
    if let out, out == "-", !options.json { return }
    if out == "-" && options.json { throw ValidationError("--out - and --json would both write standard output") }
  }

  func run() throws {
    let (scenario, text) = try options.loadScenarioWithText()
    guard !scenario.concurrent.isEmpty else {
      let hint = options.file == nil ? "; name a race scenario, e.g. pmmio explore close-vs-fault (pmmio scenarios lists them)" : ""
      throw InputProblem("\(scenario.name) has no 'concurrent:' paths: there is nothing to interleave (pmmio run replays it)\(hint)")
    }
    if let out, out != "-", let problem = OutputFile.unwritable(out) { throw InputProblem("--out \(out): \(problem)") }
    if scenario.schedule != nil {
      FileHandle.standardError.write(Data("pmmio: explore: the file's schedule: is not followed; every interleaving is explored (pmmio run FILE replays the schedule)\n".utf8))
    }
    let progress = TerminalProgress("pmmio: exploring \(scenario.name)")
    defer { progress.finish() }
    let report = try Explorer.explore(
      scenario, variant: options.variant,
      options: ExploreOptions(maxStates: maxStates, maxDepth: maxDepth, reduction: !noReduction, allFindings: all, progress: { p in
        progress.update("pmmio: exploring \(scenario.name): \(p.distinctStates) states, depth \(p.depth)")
      }))
    progress.finish()
    if let out, let finding = report.finding {
      let yaml = ScheduleWriter.scenario(text, variant: report.variant, schedule: finding.schedule)
      do { try OutputFile.write(yaml, to: out) } catch { throw InputProblem("--out: \(error)") }
    }
    if options.json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
      let data = try encoder.encode(report)
      print(String(decoding: data, as: UTF8.self))
    } else {
      print(ExploreText.render(report), terminator: "")
    }
    if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
  }
}
