import ArgumentParser
import Foundation
import Reports
import Scenarios

/// `pmmio show [FILE] [--at STEP]`: the machine after a step, as `info mtree` and debugfs show it.
struct ShowCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "show",
    abstract: "Print the machine after a step: devices, fds, dma-bufs, memslots, TDP MMU, Secure EPT, DEVIFs, MMIOMT.",
    discussion: """
      Runs the scenario's steps up to STEP (default: all of them) and prints the machine as it \
      is then. --json prints the same as one JSON document; --svg OUT also draws the address \
      spaces (BARs, dma-buf ranges, each VM's memslots and mapped pages, GPA -> HPA) as SVG. \
      Exit status: 0, or 2 for bad input or usage.
      """)

  @OptionGroup var options: CommonOptions

  @Option(help: "Show the machine after this step (1-based, in run order; 0: before the first step). Default: the last.")
  var at: Int?

  @Option(help: ArgumentHelp("Also draw the address spaces as SVG into OUT (- : standard output, instead of the text).",
                             valueName: "out"))
  var svg: String?

  func validate() throws {
    if let at, at < 0 { throw ValidationError("--at must be a step number, 0 or more (got \(at))") }
    try checkDistinctOutputs(svg.map { [("--svg", $0)] } ?? [], json: options.json)
  }

  /// What `--json` prints.
  struct Document: Encodable {
    var schema = MachineState.currentSchema
    var scenario: String
    var variant: String
    /// The step the state follows (0: none yet), and how many the scenario has.
    var at: Int
    var steps: Int
    /// That step's report, when one ran.
    var step: StepReport?
    var state: MachineState
  }

  func run() throws {
    let scenario = try options.loadScenario()
    let total = scenario.allSteps.count
    let at = self.at ?? total
    guard at <= total else {
      throw InputProblem("--at \(at): \(scenario.name) has \(total) step(s) (0 is the machine before the first)")
    }
    let report = try ScenarioRunner.run(scenario, variant: options.variant,
                                        options: RunOptions(stopAfterStep: at, keepState: true))
    guard let state = report.state else { throw InputProblem("the machine has no state to show") }
    let step = report.steps.last
    let title = "\(report.scenario) (variant \(report.variant)), " + (step.map { "after step \($0.index) of \(total)" } ?? "before the first step")
    if let svg {
      do {
        try OutputFile.write(AddressMap(state, title: title, caption: step.map { "\($0.location): \($0.text)" }).svg, to: svg)
      } catch {
        throw InputProblem("--svg: \(error)")
      }
    }
    if options.json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
      let data = try encoder.encode(Document(scenario: report.scenario, variant: report.variant, at: at, steps: total,
                                             step: step, state: state))
      print(String(decoding: data, as: UTF8.self))
    } else if svg != "-" {
      var text = "scenario \(title)\n"
      if let step {
        text += "  \(step.location): \(step.text)\n  = \(step.result.explained)\n"
      }
      let earlier = report.steps.filter { $0.verdict == .notAsExpected }.map { String($0.index) }
      if !earlier.isEmpty { text += "  note: step(s) \(earlier.joined(separator: ", ")) were not as expected\n" }
      print(text + "\n" + state.text, terminator: "")
    }
  }
}
