import ArgumentParser
import Foundation
import KernelCore
import Scenarios

/// Options every scenario command (`run`, `show`) shares.
struct CommonOptions: ParsableArguments {
  @Argument(help: "A scenario YAML file, - for standard input, or the name of a built-in scenario (pmmio scenarios; default: the embedded default scenario).")
  var file: String?

  @Flag(help: "Print one JSON document on stdout instead of text; errors become a JSON document on stderr.")
  var json = false

  @Option(help: "rfc-v1 or reviewed (default: the scenario's 'variant:', else reviewed).")
  var variant: Variant?

  /// The scenario to run: FILE, standard input for `-`, or the embedded default.
  /// - Throws: ``ScenarioError`` for a file that cannot be read or parsed.
  func loadScenario() throws(ScenarioError) -> Scenario {
    try loadScenarioWithText().scenario
  }

  /// ``loadScenario()`` with the text it was parsed from.
  func loadScenarioWithText() throws(ScenarioError) -> (scenario: Scenario, text: String) {
    guard let file else { return (try BuiltinScenarios.defaultScenario(), BuiltinScenarios.defaultYAML + "\n") }
    let input = try ScenarioInput.read(file)
    return (try ScenarioParser.parse(input.text, file: input.file), input.text)
  }
}

extension Variant: ExpressibleByArgument {}

/// `--trace text FILE` or `--trace perfetto FILE`.
struct TraceRequest: ExpressibleByArgument, Hashable {
  enum Format: String, CaseIterable { case text, perfetto }
  var format: Format
  var path: String

  /// ArgumentParser gives an option one value; `main` joins `--trace FORMAT FILE` into the one
  /// value `FORMAT:FILE` before parsing (see ``joiningPairs(_:)``).
  init?(argument: String) {
    guard let colon = argument.firstIndex(of: ":"),
          let format = Format(rawValue: String(argument[..<colon])) else { return nil }
    let path = String(argument[argument.index(after: colon)...])
    guard !path.isEmpty else { return nil }
    self.format = format; self.path = path
  }

  static var allValueStrings: [String] { Format.allCases.map { "\($0.rawValue) FILE" } }

  /// Rewrites `--trace FORMAT FILE` as `--trace FORMAT:FILE`; anything else passes unchanged
  /// (so a lone `--trace text` still reaches the parser and is reported as a usage error).
  static func joiningPairs(_ arguments: [String]) -> [String] {
    var out: [String] = []
    var i = 0
    while i < arguments.count {
      let arg = arguments[i]
      // After `--` everything is positional.
      if arg == "--" { out.append(contentsOf: arguments[i...]); break }
      if arg == "--trace", i + 2 < arguments.count, Format(rawValue: arguments[i + 1]) != nil {
        out.append(arg)
        out.append(arguments[i + 1] + ":" + arguments[i + 2])
        i += 3
        continue
      }
      out.append(arg)
      i += 1
    }
    return out
  }
}

/// Refuses two outputs that would land on one stream or file.
/// - Throws: `ValidationError` naming the two.
func checkDistinctOutputs(_ outputs: [(option: String, path: String)], json: Bool) throws {
  var seen: [String: String] = [:]
  if json { seen["-"] = "--json" }
  for output in outputs {
    let key = outputIdentity(output.path)
    if let other = seen[key] {
      let target = key == "-" ? "standard output" : output.path
      throw ValidationError("\(output.option) and \(other) both write to \(target)")
    }
    seen[key] = output.option
  }
}

/// What an output path writes to: `-` for standard output (also `/dev/stdout` and any other
/// name of the same open file), the file's device and inode for an existing file (so a link
/// and its target are one output), else the path as written.
func outputIdentity(_ path: String) -> String {
  if path == "-" { return "-" }
  var file = stat()
  guard stat(path, &file) == 0 else { return "path:" + path }
  var standardOutput = stat()
  if fstat(STDOUT_FILENO, &standardOutput) == 0, standardOutput.st_dev == file.st_dev, standardOutput.st_ino == file.st_ino {
    return "-"
  }
  return "file:\(file.st_dev):\(file.st_ino)"
}
