import ArgumentParser
import Foundation
import KernelCore
import Scenarios

/// `pmmio run [FILE]`: replay a scenario, print each step's result and every invariant checked.
struct RunCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "run",
    abstract: "Replay a scenario: steps, then each concurrent path in order.",
    discussion: "Without FILE, runs the embedded default scenario. Exit status: 0 all expectations held and no invariant failed, 1 otherwise, 2 bad input.")

  @Argument(help: "A scenario YAML file (default: the embedded default scenario).")
  var file: String?

  @OptionGroup var options: CommonOptions

  func run() throws {
    let scenario = try loadScenario()
    if isatty(STDERR_FILENO) != 0 {
      standardError("pmmio: running \(scenario.name) (\(scenario.allSteps.count) steps)")
    }
    let report: RunReport
    do {
      report = try ScenarioRunner.run(scenario, variant: options.variant)
    } catch {
      standardError(error.description)
      throw ExitCode(2)
    }
    for request in options.trace {
      let contents = request.format == .text ? report.traceText : report.perfettoJSON()
      do {
        try contents.write(toFile: request.path, atomically: true, encoding: .utf8)
      } catch {
        standardError("pmmio: cannot write trace \(request.path): \(error.localizedDescription)")
        throw ExitCode(2)
      }
    }
    print(options.json ? report.jsonString() : report.text, terminator: "")
    if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
  }

  /// The scenario to run. - Throws: `ExitCode(2)` after printing why, for unreadable or bad input.
  func loadScenario() throws -> Scenario {
    do {
      guard let file else { return try BuiltinScenarios.defaultScenario() }
      let yaml: String
      do {
        yaml = try String(contentsOfFile: file, encoding: .utf8)
      } catch {
        standardError("pmmio: cannot read \(file): \(error.localizedDescription)")
        throw ExitCode(2)
      }
      return try ScenarioParser.parse(yaml, file: file)
    } catch let error as ScenarioError {
      standardError(error.description)
      throw ExitCode(2)
    }
  }
}

func standardError(_ line: String) {
  FileHandle.standardError.write(Data((line + "\n").utf8))
}
