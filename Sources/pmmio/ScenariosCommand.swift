import ArgumentParser
import KernelCore
import Scenarios

/// `pmmio scenarios`: the scenarios built into the binary.
struct ScenariosCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "scenarios",
    abstract: "List the built-in scenarios, or print one: pmmio scenarios show NAME.",
    subcommands: [List.self, Show.self],
    defaultSubcommand: List.self)

  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the built-in scenarios.")
    func run() {
      for scenario in BuiltinScenarios.all {
        print("\(scenario.name)  \(scenario.summary)")
      }
    }
  }

  struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "show", abstract: "Print a built-in scenario's YAML (the same as Examples/NAME.yaml).")

    @Argument(help: "The scenario's name (see pmmio scenarios).")
    var name: String

    func run() throws {
      guard let yaml = BuiltinScenarios.named(name) else {
        let names = BuiltinScenarios.all.map(\.name)
        let hint = Suggestion.closest(to: name, among: names).map { " (did you mean '\($0)'?)" } ?? ""
        throw InputProblem("no built-in scenario '\(name)'\(hint); the built-ins are \(names.joined(separator: ", "))")
      }
      print(yaml, terminator: "")
    }
  }
}
