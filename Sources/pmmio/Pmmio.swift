import ArgumentParser
import Foundation

/// `pmmio`: run, explore and fuzz private-MMIO scenarios.
///
/// Exit status (DESIGN.md, "Command-line contract"): 0 every expectation held and no invariant
/// broke; 1 an expectation or invariant failed; 2 bad input or usage.
@main
struct Pmmio: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pmmio",
    abstract: "An executable model of the Linux private-MMIO stack (VFIO dma-buf, KVM, TDX).",
    discussion: "Without a subcommand, runs `run`: `pmmio` alone replays the embedded default scenario.",
    subcommands: [RunCommand.self, KVMCommand.self],
    defaultSubcommand: RunCommand.self)

  /// Replaces ArgumentParser's `main()`, whose usage errors exit 64 (EX_USAGE): here they exit 2.
  static func main() {
    Foundation.exit(exitStatus(for: Array(CommandLine.arguments.dropFirst())))
  }

  /// Parses and runs `arguments`; returns the process exit status.
  static func exitStatus(for arguments: [String]) -> Int32 {
    do {
      var command = try parseAsRoot(TraceRequest.joiningPairs(arguments))
      try command.run()
      return 0
    } catch {
      let code = exitCode(for: error)
      let message = fullMessage(for: error)
      if code == .success {
        // --help and --version: their text is the output asked for.
        if !message.isEmpty { print(message) }
        return 0
      }
      if !message.isEmpty { FileHandle.standardError.write(Data((message + "\n").utf8)) }
      return code == .validationFailure ? 2 : code.rawValue
    }
  }
}
