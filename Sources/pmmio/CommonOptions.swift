import ArgumentParser
import KernelCore

/// Options every scenario-running subcommand (`run`, later `explore`, `fuzz`) shares.
struct CommonOptions: ParsableArguments {
  @Flag(help: "Print one JSON document on stdout instead of the text report.")
  var json = false

  @Option(help: "rfc-v1 or reviewed (default: the scenario's 'variant:', else reviewed).")
  var variant: Variant?

  @Option(help: ArgumentHelp("Also write the trace: 'text FILE' (kernel-log style) or 'perfetto FILE' (Chrome/Perfetto JSON). Repeatable.",
                             valueName: "format> <file"))
  var trace: [TraceRequest] = []
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
