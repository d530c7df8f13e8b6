import Foundation
import Testing

private let races = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().appendingPathComponent("Examples/races")

private func race(_ name: String) -> String { races.appendingPathComponent("\(name).yaml").path }

/// `pmmio explore` end to end: exit statuses, the text and JSON reports, `--out` and its replay.
@Suite struct ExploreCommandTests {
  @Test("exit status: 0 complete and nothing found, 1 found, 3 stopped by a limit", arguments: [
    (["explore", race("fault-vs-decode-off")], Int32(0), "no invariant violated, 106 states, complete\n"),
    (["explore", "--variant", "rfc-v1", race("close-vs-fault")], 1, "VIOLATED: NoResetUnderLiveImport: "),
    (["explore", "--max-states", "5", race("two-vcpus-same-page")], 3, "stopped by max-states after "),
    (["explore", "--max-depth", "1", race("two-vcpus-same-page")], 3, "stopped by max-depth after "),
  ])
  func exitStatus(arguments: [String], status: Int32, text: String) throws {
    let result = try pmmio(arguments)
    #expect(result.status == status, "\(result.stderr)")
    #expect(result.stdout.contains(text), "\(result.stdout)")
    #expect(result.stderr.isEmpty, "no progress line when stderr is not a terminal")
  }

  @Test("bad input and usage exit 2", arguments: [
    (["explore", "/nonexistent.yaml"], "no such file"),
    (["explore", "--max-states", "0", race("close-vs-fault")], "--max-states must be at least 1"),
    (["explore", "--json", "--out", "-", race("close-vs-fault")], "--out - and --json would both write standard output"),
    (["explore", "-"], "has no 'concurrent:' paths"),
    (["explore"], "name a race scenario, e.g. pmmio explore close-vs-fault"),
    (["explore", "--out", "/nonexistent-dir/cx.yaml", race("fault-vs-decode-off")], "--out /nonexistent-dir/cx.yaml: no such directory"),
  ])
  func badInput(arguments: [String], message: String) throws {
    let result = try pmmio(arguments, stdin: Data("name: calm\nsteps: []\n".utf8))
    #expect(result.status == 2)
    #expect(result.stderr.contains(message), "\(result.stderr)")
  }

  @Test func jsonCarriesTheFindingAndItsSchedule() throws {
    let result = try pmmio(["explore", "--json", "--variant", "rfc-v1", race("close-vs-fault")])
    #expect(result.status == 1)
    let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    let finding = try #require(report["finding"] as? [String: Any])
    #expect(finding["kind"] as? String == "violation")
    #expect(finding["invariant"] as? String == "NoResetUnderLiveImport")
    #expect(finding["schedule"] as? [String] == ["ctx2", "ctx2", "ctx2"])
    #expect((report["findings"] as? [Any])?.count == 1)
    #expect(report["variant"] as? String == "rfc-v1")
    #expect(report["complete"] as? Bool == false)
  }

  /// `--out` writes the counterexample as a scenario; `pmmio run` replays it to the same
  /// violation, reported at the last scheduled region, and exits 1.
  @Test func outReplaysWithRun() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pmmio-explore-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let out = dir.appendingPathComponent("cx.yaml").path
    let explored = try pmmio(["explore", "--variant", "rfc-v1", "--out", out, race("fault-vs-flr")])
    #expect(explored.status == 1)
    let written = try String(contentsOfFile: out, encoding: .utf8)
    #expect(written.contains("variant: rfc-v1\n"))
    #expect(written.hasSuffix("schedule: [ctx2, ctx2, ctx2, ctx2, ctx2, ctx2]\n"))
    let replay = try pmmio(["run", out])
    #expect(replay.status == 1)
    #expect(replay.stdout.contains("UsableDeviceBuffersRestored"), "\(replay.stdout)")
  }

  /// rfc-v1's STOP_INTERFACE revokes nothing: the first finding is the page the steps had
  /// accepted (1 step); the race, an accept mapped before the stop and completed after it, is
  /// the second (6 steps).
  @Test func tdAcceptVsStopShowsTheAcceptAfterTheStopUnderAll() throws {
    let result = try pmmio(["explore", "--all", "--variant", "rfc-v1", race("td-accept-vs-tdisp-stop")])
    #expect(result.status == 1)
    #expect(result.stdout.contains("[1] VIOLATED: PrivateMMIOOnlyWhileTDIRuns: "))
    #expect(result.stdout.contains("[2] VIOLATED: NoAcceptOfNonRunningTDI: "))
    #expect(result.stdout.contains("schedule: [vcpu1, vcpu1, vcpu1, vcpu1, ctx2, vcpu1]\n"), "\(result.stdout)")
  }

  @Test func allReportsEveryInvariantThatBreaks() throws {
    let result = try pmmio(["explore", "--all", "--variant", "rfc-v1", race("slot-move-vs-revoke")])
    #expect(result.status == 1)
    #expect(result.stdout.contains("2 findings, each with a shortest counterexample (the search is complete):"))
    #expect(result.stdout.contains("[1] VIOLATED: NoDanglingBinding: "))
    #expect(result.stdout.contains("[2] VIOLATED: NoMoveNotifyOnFreedSlot: "))
  }

  /// Two paths that run guest ops on one vCPU would be two threads in one vCPU: refused, since
  /// `kvm_vcpu_ioctl()` runs one `KVM_RUN` of a vCPU at a time (`vcpu->mutex`).
  @Test func twoPathsOnOneVCPUAreRefusedAtTheSecondPath() throws {
    let yaml = try String(contentsOfFile: race("two-vcpus-same-page"), encoding: .utf8)
    let oneVCPU = yaml.replacingOccurrences(of: "vcpu: 1", with: "vcpu: 0")
    #expect(oneVCPU != yaml)
    let result = try pmmio(["explore", "-"], stdin: Data(oneVCPU.utf8))
    #expect(result.status == 2)
    #expect(result.stderr.contains("concurrent paths 1 and 2 both run guest ops on vcpu 0 of vm0: a vCPU runs one KVM_RUN at a time"),
            "\(result.stderr)")
  }

  /// A bare name that is no file is the built-in scenario of that name, as the hint says.
  @Test func aBuiltInIsNamedByItsName() throws {
    let result = try pmmio(["explore", "--variant", "rfc-v1", "close-vs-fault"])
    #expect(result.status == 1, "\(result.stderr)")
    #expect(result.stdout.contains("VIOLATED: NoResetUnderLiveImport: "))
  }

  /// A file's `schedule:` is what `run` replays; `explore` says it explores every interleaving.
  @Test func aScheduleIsNotFollowedAndSaysSo() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pmmio-explore-sched-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let out = dir.appendingPathComponent("cx.yaml").path
    #expect(try pmmio(["explore", "--variant", "rfc-v1", "--out", out, race("close-vs-fault")]).status == 1)
    let again = try pmmio(["explore", "--variant", "rfc-v1", out])
    #expect(again.status == 1)
    #expect(again.stderr.contains("the file's schedule: is not followed; every interleaving is explored"), "\(again.stderr)")
  }
}
