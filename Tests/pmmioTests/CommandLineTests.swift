import Foundation
import Testing

/// Writes `contents` to a fresh file and returns its path.
private func scenarioFile(_ contents: String, name: String = "scenario.yaml") throws -> String {
  let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pmmio-tests-\(UUID().uuidString)")
  try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
  let url = dir.appendingPathComponent(name)
  try contents.write(to: url, atomically: true, encoding: .utf8)
  return url.path
}

// `fd: 99` was never opened: every machine, stub or model, fails that close.
private let holds = "steps: [ { op: vfio.close, fd: 99, expect: error } ]\n"
private let fails = "steps: [ { op: vfio.close, fd: 99, expect: ok } ]\n"

@Test("exit 0 when every expectation holds")
func exitZero() throws {
  let result = try pmmio(["run", try scenarioFile(holds)])
  #expect(result.status == 0)
  #expect(result.stdout.contains("PASS"))
}

@Test("exit 1 when an expectation fails")
func exitOne() throws {
  let path = try scenarioFile(fails)
  let result = try pmmio([path])
  #expect(result.status == 1)
  #expect(result.stdout.contains("FAILED \(path):1: expected ok, got errno EBADF"))
}

@Test("exit 2 with file:line:column on stderr for bad input")
func exitTwo() throws {
  let path = try scenarioFile("steps:\n  - { op: vfio.nope }\n")
  let result = try pmmio(["run", path])
  #expect(result.status == 2)
  #expect(result.stderr == "\(path):2:11: unknown op 'vfio.nope': did you mean 'vfio.open'?\n")
  #expect(result.stdout.isEmpty)
}

@Test("an unreadable file exits 2")
func missingFile() throws {
  #expect(try pmmio(["run", "/nonexistent/pmmio.yaml"]).status == 2)
}

@Test("usage errors exit 2, help exits 0", arguments: [
  (["--bogus"], 2), (["run", "--variant", "rfc-v3"], 2), (["run", "a.yaml", "b.yaml"], 2),
  (["run", "--trace", "svg", "x"], 2), (["--help"], 0), (["run", "--help"], 0),
] as [([String], Int32)])
func usage(_ arguments: [String], _ status: Int32) throws {
  #expect(try pmmio(arguments).status == status)
}

@Test("--json prints one JSON document with steps, counters and timings")
func json() throws {
  let result = try pmmio(["run", "--json", try scenarioFile(fails)])
  #expect(result.status == 1)
  let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
  let counters = try #require(object?["counters"] as? [String: Any])
  #expect(counters["notAsExpected"] as? Int == 1)
  #expect(object?["schema"] as? Int == 1)
  #expect((object?["steps"] as? [Any])?.count == 1)
  #expect(object?["timings"] != nil)
  #expect(object?["variant"] as? String == "reviewed")
}

@Test("--variant overrides the scenario's variant")
func variantFlag() throws {
  let path = try scenarioFile("variant: reviewed\n" + holds)
  let result = try pmmio(["run", "--json", "--variant", "rfc-v1", path])
  let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
  #expect(object?["variant"] as? String == "rfc-v1")
}

@Test("--trace text FILE and --trace perfetto FILE write both traces")
func traces() throws {
  let path = try scenarioFile(holds)
  let dir = URL(fileURLWithPath: path).deletingLastPathComponent()
  let text = dir.appendingPathComponent("trace.txt").path
  let perfetto = dir.appendingPathComponent("trace.json").path
  let result = try pmmio(["run", "--trace", "text", text, "--trace", "perfetto", perfetto, path])
  #expect(result.status == 0)
  #expect(try String(contentsOfFile: text, encoding: .utf8).contains(" ioctl step 1 "))
  let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: perfetto))) as? [String: Any]
  #expect((object?["traceEvents"] as? [Any])?.isEmpty == false)
}

@Test("plain pmmio runs the embedded default scenario")
func defaultScenario() throws {
  let result = try pmmio([])
  #expect(result.status == 0)
  #expect(result.stdout.hasPrefix("scenario private-mmio-td (variant reviewed)\n"))
  #expect(result.stdout.contains("summary: 23 steps: 23 as expected, 0 not as expected, 0 without expect (19 succeeded, 4 returned an error)"))
  #expect(result.stdout.contains("TDH.MMIO.UNMAP"))
}

@Test("the default scenario under rfc-v1 shows the TD still mapping a stopped interface")
func defaultScenarioRFC() throws {
  let result = try pmmio(["--variant", "rfc-v1"])
  #expect(result.status == 1)
  #expect(result.stdout.contains("FAILED <builtin:default>:37: expected fault eio, got ok fault already_mapped"))
  #expect(result.stdout.contains("violated: PrivateMMIOOnlyWhileTDIRuns"))
}

@Test("--events keeps only the matching events, in the report and the traces")
func eventFilter() throws {
  let report = try pmmio(["run", "--events", "tdx:seamcall,kvm:mmu*"])
  #expect(report.status == 0)
  let traced = report.stdout.split(separator: "\n").filter { $0.hasPrefix("        ") }
  #expect(!traced.isEmpty)
  #expect(traced.allSatisfy { $0.hasPrefix("        tdx: TDH.") || $0.hasPrefix("        kvm: vm1: ") }, "\(traced)")
  let text = try pmmio(["run", "--events", "guest:mmio_*", "--trace", "text", "-"])
  #expect(text.stdout.contains("] ioctl guest:mmio_read: vm1 load 0x80000010 size 4 -> nic0 BAR0 +0x10 = 0x10  vm=1 gpa=0x80000010 "
                               + "hpa=0x4000000010 device=nic0 bar=0 offset=0x10 size=4 value=0x10 decode=1\n"))
  #expect(!text.stdout.contains("tdx:seamcall"))
}

@Test("--events with a glob that matches no event is a usage error with the nearest event", arguments: [
  (["run", "--events", "kvm:mmu_falt"], "--events: 'kvm:mmu_falt' matches no event: did you mean 'kvm:mmu_fault'?"),
  (["run", "--events", "tdx:*,,kvm:*"], "--events: an empty event glob"),
])
func badEventFilter(_ arguments: [String], _ message: String) throws {
  let result = try pmmio(arguments)
  #expect(result.status == 2)
  #expect(result.stderr.contains(message))
}
