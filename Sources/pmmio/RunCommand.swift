import ArgumentParser
import Foundation
import KernelCore
import Reports
import Scenarios

/// `pmmio run [FILE]`: replay a scenario, print each step's result and every invariant checked.
struct RunCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "run",
    abstract: "Replay a scenario: steps, then each concurrent path in order.",
    discussion: """
      Without FILE, runs the embedded default scenario; FILE - reads standard input. \
      Exit status: 0 every step as expected and no invariant violated, 1 otherwise, 2 bad input or usage.
      """)

  @OptionGroup var options: CommonOptions

  @Option(help: ArgumentHelp("Also write the trace: 'text FILE' (kernel-log style) or 'perfetto FILE' (Chrome/Perfetto JSON); FILE - is standard output, instead of the report. Repeatable.",
                             valueName: "format> <file"))
  var trace: [TraceRequest] = []

  @Flag(name: .customLong("stop-on-failure"), help: "Stop at the first step not as expected or the first invariant violated.")
  var stopOnFailure = false

  @Option(help: ArgumentHelp("Record only these trace events, in the report and the traces: comma-separated globs over subsystem:event as ftrace's set_event takes them ('tdx:*,kvm:mmu*'; 'seamcall' in any subsystem; '!GLOB' leaves events out).",
                             valueName: "globs"))
  var events: String?

  func validate() throws {
    try checkDistinctOutputs(trace.map { ("--trace \($0.format.rawValue)", $0.path) }, json: options.json)
    _ = try eventFilter()
  }

  /// `--events` as a filter. - Throws: `ValidationError` naming the glob that matches nothing.
  func eventFilter() throws -> TraceFilter {
    guard let events else { return .all }
    do { return try TraceFilter(parsing: events) } catch { throw ValidationError(error.description) }
  }

  func run() throws {
    let scenario = try options.loadScenario()
    let progress = TerminalProgress("pmmio: \(scenario.name): building the machine")
    defer { progress.finish() }
    let total = scenario.allSteps.count
    let report = try ScenarioRunner.run(
      scenario, variant: options.variant,
      options: RunOptions(stopOnFailure: stopOnFailure, events: try eventFilter(), progress: { done, _ in
        progress.update("pmmio: \(scenario.name): step \(done) of \(total)")
      }))
    progress.finish()
    for request in trace {
      let contents = request.format == .text ? report.traceText : report.perfettoJSON()
      do {
        try OutputFile.write(contents, to: request.path)
      } catch {
        throw InputProblem("--trace \(request.format.rawValue): \(error)")
      }
    }
    // A trace on standard output takes the report's place.
    if !trace.contains(where: { $0.path == "-" }) {
      print(options.json ? report.jsonString() : report.text, terminator: "")
    }
    if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
  }
}
