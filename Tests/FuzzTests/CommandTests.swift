import Foundation
import Testing

/// `pmmio fuzz` end to end: exit status, what it prints and writes, and that what it writes
/// replays.
@Suite struct FuzzCommandTests {
  static func scratch() throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pmmio-fuzz-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
  }

  @Test func aCleanRunExitsZeroAndWritesNothing() throws {
    let dir = try Self.scratch()
    defer { try? FileManager.default.removeItem(at: dir) }
    let result = try pmmio(["fuzz", "--ops", "3000", "--seed", "5", "--out", dir.appendingPathComponent("out").path])
    #expect(result.status == 0, "\(result.stdout)")
    #expect(result.stdout.hasPrefix("fuzz seed 5, variant reviewed: 3000 ops in "))
    #expect(result.stdout.hasSuffix("no failure\n"))
    #expect(result.stderr.isEmpty, "no progress line when stderr is not a terminal")
    #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("out").path))
  }

  /// rfc-v1's config-space FLR bug: found, written, and replayed by `pmmio run` (exit 1, the
  /// invariant) and by `pmmio fuzz --replay` (exit 1, the same failure).
  @Test func aFailureIsWrittenAndReplays() throws {
    let dir = try Self.scratch()
    defer { try? FileManager.default.removeItem(at: dir) }
    let result = try pmmio(["fuzz", "--variant", "rfc-v1", "--ops", "20000", "--out", dir.path, "--json"])
    #expect(result.status == 1)
    let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    let finding = try #require(report["finding"] as? [String: Any])
    let file = try #require(finding["file"] as? String)
    #expect(file.hasPrefix(dir.path))
    #expect(report["exitStatus"] as? Int == 1)
    let run = try pmmio(["run", file])
    #expect(run.status == 1)
    #expect(run.stdout.contains("VIOLATED"))
    let replay = try pmmio(["fuzz", "--replay", file])
    #expect(replay.status == 1)
    #expect(replay.stdout.contains("FAILURE invariant"))
  }

  @Test("bad usage exits 2 with a precise message", arguments: [
    (["fuzz", "--ops", "0"], "--ops must be at least 1"),
    (["fuzz", "--ignore", "NoKVMBugOnn"], "no such invariant (did you mean 'NoKVMBugOn'?)"),
    (["fuzz", "--replay", "x.yaml", "--sequence", "3"], "--replay runs a scenario"),
    (["fuzz", "--replay", "x.yaml", "--seed", "3"], "--replay runs a scenario: --seed, --interleave and --sequence do nothing with it"),
    (["fuzz", "--oracle", "kvm", "--variant", "rfc-v1"], "--oracle kvm compares the model with the running kernel, which is what reviewed models"),
    (["fuzz", "--sequence", "3", "--ops", "10"], "--sequence runs one sequence"),
    (["fuzz", "--oracle", "kvm", "--strict"], "--oracle kvm compares answers"),
    (["fuzz", "--oracle", "xen"], "xen"),
  ] as [([String], String)])
  func usage(arguments: [String], message: String) throws {
    let result = try pmmio(arguments)
    #expect(result.status == 2)
    #expect(result.stderr.contains(message), "\(result.stderr)")
  }

  /// A trap ends the process: the run names the sequence and the command that runs it again;
  /// that command runs it in a child process and shrinks the trap to its one SEAMCALL. The trap
  /// is planted (the model's one real trap, a raw TDH.MNG.CREATE of 0xffffffff vCPUs, is fixed).
  @Test func aTrapIsNamedAndShrunkInAChild() throws {
    let dir = try Self.scratch()
    defer { try? FileManager.default.removeItem(at: dir) }
    let found = try pmmio(["fuzz", "--strict", "--ignore", "posted", "--ignore", "DecodeOffImpliesRevoked", "--ops", "100000",
                           "--out", dir.path, "--plant", "mng-create-traps"])
    #expect(found.status == 1)
    let line = try #require(found.stderr.split(separator: "\n").first { $0.contains("the model trapped in sequence") })
    let command = try #require(line.range(of: ": pmmio ").map { line[$0.upperBound...] })
    let arguments = command.components(separatedBy: " runs it in a child process")[0].split(separator: " ").map(String.init)
    #expect(arguments.contains("--sequence"))
    let shrunk = try pmmio(arguments)
    #expect(shrunk.status == 1)
    #expect(shrunk.stdout.contains("FAILURE trap"))
    #expect(shrunk.stdout.contains("{ op: tdx.seamcall, leaf: 9, args: [0x"), "\(shrunk.stdout)")
  }
}
