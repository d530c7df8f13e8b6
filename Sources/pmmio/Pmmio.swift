import ArgumentParser
import Foundation
import KernelCore
import Scenarios

/// `pmmio`: run, show and measure private-MMIO scenarios.
///
/// Exit status (DESIGN.md, "Command-line contract"): 0 every expectation held and no invariant
/// broke; 1 an expectation or invariant failed; 2 bad input or usage.
@main
struct Pmmio: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pmmio",
    abstract: "An executable model of the Linux private-MMIO stack (VFIO dma-buf, KVM, TDX).",
    discussion: """
      Without a command, runs `run`: `pmmio` alone replays the embedded default scenario, and \
      `pmmio FILE` replays FILE.
      """,
    version: BuildInfo.versionText,
    subcommands: [RunCommand.self, ExploreCommand.self, FuzzCommand.self, ShowCommand.self, ScenariosCommand.self, KVMCommand.self],
    defaultSubcommand: RunCommand.self)

  /// Replaces ArgumentParser's `main()`, whose usage errors exit 64 (EX_USAGE): here they exit 2.
  static func main() {
    Foundation.exit(exitStatus(for: Array(CommandLine.arguments.dropFirst())))
  }

  static var commandNames: [String] {
    configuration.subcommands.compactMap { $0.configuration.commandName }
  }

  /// Parses and runs `arguments`; returns the process exit status.
  static func exitStatus(for arguments: [String]) -> Int32 {
    let json = arguments.prefix { $0 != "--" }.contains("--json")
    if let problem = unknownCommand(arguments) {
      problem.report(json: json)
      return 2
    }
    do {
      var command = try parseAsRoot(TraceRequest.joiningPairs(arguments))
      try command.run()
      return 0
    } catch let problem as InputProblem {
      problem.report(json: json)
      return 2
    } catch let error as ScenarioError {
      InputProblem(error).report(json: json)
      return 2
    } catch {
      let code = exitCode(for: error)
      let message = fullMessage(for: error)
      if code == .success {
        // --help and --version: their text is the output asked for.
        if !message.isEmpty { print(message) }
        return 0
      }
      if code == .validationFailure {
        var problem = InputProblem(message)
        problem.prefixed = false  // ArgumentParser's text already says "Error:" and shows usage
        problem.report(json: json)
        return 2
      }
      if !message.isEmpty { standardError(message) }
      return code.rawValue
    }
  }

  /// `pmmio frobnicate`: a first word that is neither a command nor a file, nor shaped like a
  /// path, is a mistyped command, not a scenario to read.
  static func unknownCommand(_ arguments: [String]) -> InputProblem? {
    // `pmmio scenarios shwo NAME`: `scenarios` takes only its sub-commands and no argument.
    if arguments.first == "scenarios", arguments.count > 1, let word = arguments.dropFirst().first, !word.hasPrefix("-") {
      let names = ScenariosCommand.configuration.subcommands.compactMap { $0.configuration.commandName }
      if !names.contains(word) {
        let hint = Suggestion.closest(to: word, among: names).map { " (did you mean '\($0)'?)" } ?? ""
        return InputProblem("scenarios: unknown sub-command '\(word)'\(hint); the sub-commands are \(names.joined(separator: ", "))")
      }
    }
    guard let first = arguments.first, !first.hasPrefix("-"), !commandNames.contains(first),
          !first.contains("/"), !first.contains("."), !FileManager.default.fileExists(atPath: first),
          BuiltinScenarios.named(first) == nil  // `pmmio close-vs-fault` runs the built-in
    else { return nil }
    let hint = Suggestion.closest(to: first, among: commandNames).map { " (did you mean '\($0)'?)" } ?? ""
    return InputProblem("unknown command '\(first)'\(hint); the commands are \(commandNames.joined(separator: ", ")). "
                        + "A scenario file is run by its path: pmmio ./\(first)")
  }
}

/// Bad input or usage: printed on stderr (as a JSON document with `--json`), exit status 2.
struct InputProblem: Error {
  var message: String
  var file: String?
  var line: Int?
  var column: Int?
  /// `pmmio: ` goes before a message that names no file.
  var prefixed = true

  init(_ message: String) { self.message = message }

  init(_ error: ScenarioError) {
    message = error.message
    file = error.file
    line = error.position?.line
    column = error.position?.column
  }

  /// `file:line:column: message`, or `pmmio: message` when no file is at fault.
  var text: String {
    guard let file else { return prefixed ? "pmmio: \(message)" : message }
    guard let line, let column else { return "\(file): \(message)" }
    return "\(file):\(line):\(column): \(message)"
  }

  /// The JSON error document for `--json`: `{"schema": 1, "error": {...}, "exitStatus": 2}`.
  struct Document: Encodable {
    struct Body: Encodable {
      var message: String
      var file: String?
      var line: Int?
      var column: Int?
      var text: String
    }
    var schema = RunReport.currentSchema
    var error: Body
    var exitStatus: Int32 = 2
  }

  func report(json: Bool) {
    guard json else { standardError(text); return }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    let document = Document(error: .init(message: message, file: file, line: line, column: column, text: text))
    let data = (try? encoder.encode(document)) ?? Data("{\"exitStatus\":2}".utf8)
    standardError(String(decoding: data, as: UTF8.self))
  }
}

/// What this binary is.
enum BuildInfo {
  static let version = "0.2.0"
  #if DEBUG
  static let configuration = "debug"
  #else
  static let configuration = "release"
  #endif
  static var versionText: String {
    "pmmio \(version) (scenario format 1, JSON schema \(RunReport.currentSchema), \(configuration) build)"
  }
}

func standardError(_ line: String) {
  FileHandle.standardError.write(Data((line + "\n").utf8))
}
