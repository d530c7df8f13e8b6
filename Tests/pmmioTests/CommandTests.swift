import Foundation
import Testing
import Scenarios

private let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().appendingPathComponent("Examples")

private func json(_ text: String) throws -> [String: Any] {
  try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
}

@Suite struct SmallCommandLineTests {
  @Test func version() throws {
    let result = try pmmio(["--version"])
    #expect(result.status == 0)
    #expect(result.stdout.hasPrefix("pmmio 0.2.0 (scenario format 1, JSON schema 1, "))
  }

  @Test("a mistyped command is a usage error, not a file to read", arguments: [
    ("frobnicate", "pmmio: unknown command 'frobnicate'; the commands are run, explore, fuzz, show, scenarios, kvm. "
       + "A scenario file is run by its path: pmmio ./frobnicate\n"),
    ("shwo", "pmmio: unknown command 'shwo' (did you mean 'show'?); the commands are run, explore, fuzz, show, scenarios, kvm. "
       + "A scenario file is run by its path: pmmio ./shwo\n"),
  ])
  func unknownCommand(word: String, message: String) throws {
    let result = try pmmio([word])
    #expect(result.status == 2)
    #expect(result.stderr == message)
    #expect(!result.stderr.contains("cannot read"))
  }

  /// A built-in's name is a scenario, not a mistyped command: `pmmio NAME` runs it.
  @Test func aBuiltInNameRuns() throws {
    let result = try pmmio(["fault-vs-decode-off"])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.hasPrefix("scenario fault-vs-decode-off (variant reviewed)"))
  }

  @Test func aMistypedScenariosSubCommandGetsASuggestion() throws {
    let result = try pmmio(["scenarios", "shwo", "default"])
    #expect(result.status == 2)
    #expect(result.stderr == "pmmio: scenarios: unknown sub-command 'shwo' (did you mean 'show'?); the sub-commands are list, show\n")
  }

  @Test func scenariosListsTheBuiltIns() throws {
    let result = try pmmio(["scenarios"])
    #expect(result.status == 0)
    #expect(result.stdout.hasPrefix("default  "))
  }

  @Test func theBuiltInDefaultIsExamplesDefault() throws {
    let result = try pmmio(["scenarios", "show", "default"])
    #expect(result.status == 0)
    #expect(result.stdout == (try String(contentsOf: examples.appendingPathComponent("default.yaml"), encoding: .utf8)))
  }

  @Test func anUnknownBuiltInSuggestsOne() throws {
    let result = try pmmio(["scenarios", "show", "defualt"])
    #expect(result.status == 2)
    let names = BuiltinScenarios.all.map(\.name).joined(separator: ", ")
    #expect(result.stderr == "pmmio: no built-in scenario 'defualt' (did you mean 'default'?); the built-ins are \(names)\n")
    #expect(names.hasPrefix("default, "))
  }

  @Test("with --json, bad input is a JSON document on stderr", arguments: [
    (["run", "--json", "/nonexistent.yaml"], "/nonexistent.yaml", nil as Int?, "no such file"),
    (["show", "--json", "--at", "99"], nil, nil, "--at 99: private-mmio-td has 23 step(s) (0 is the machine before the first)"),
  ])
  func jsonErrors(arguments: [String], file: String?, line: Int?, message: String) throws {
    let result = try pmmio(arguments)
    #expect(result.status == 2)
    #expect(result.stdout.isEmpty)
    let document = try json(result.stderr)
    #expect(document["schema"] as? Int == 1)
    #expect(document["exitStatus"] as? Int == 2)
    let error = try #require(document["error"] as? [String: Any])
    #expect(error["message"] as? String == message)
    #expect(error["file"] as? String == file)
  }

  @Test func jsonParseErrorsCarryTheirPosition() throws {
    let result = try pmmio(["run", "--json", "-"], stdin: Data("steps:\n  - { op: vfio.opne }\n".utf8))
    #expect(result.status == 2)
    let error = try #require(try json(result.stderr)["error"] as? [String: Any])
    #expect(error["file"] as? String == "<stdin>")
    #expect(error["line"] as? Int == 2)
    #expect(error["column"] as? Int == 11)
    #expect(error["message"] as? String == "unknown op 'vfio.opne': did you mean 'vfio.open'?")
  }

  @Test func usageErrorsAreJSONToo() throws {
    let result = try pmmio(["run", "--json", "--variant", "rfc-v3"])
    #expect(result.status == 2)
    #expect(try json(result.stderr)["exitStatus"] as? Int == 2)
  }
}

@Suite struct VerdictTests {
  static let failingThenMore = """
    steps:
      - { op: vfio.close, fd: 99, expect: ok }
      - { op: vfio.close, fd: 98, expect: error }
      - { op: vfio.close, fd: 97, expect: error }
    """

  @Test func stopOnFailureStopsAtTheFirstStepNotAsExpected() throws {
    let result = try pmmio(["run", "--stop-on-failure", "-"], stdin: Data(Self.failingThenMore.utf8))
    #expect(result.status == 1)
    #expect(result.stdout.contains("FAILED <stdin>:2: expected ok, got errno EBADF"))
    #expect(result.stdout.contains("summary: 1 step: 0 as expected, 1 not as expected"))
    #expect(result.stdout.contains("stopped after step 1 (--stop-on-failure): 2 step(s) not run"))
    #expect(!result.stdout.contains("   2  "))
  }

  /// rfc-v1 answers a refused `TDH.MMIO.MAP` with -EBUSY (patch 12 tests `err & TDX_OPERAND_BUSY`,
  /// true for every error), so the accept retries for ever: a step that never finishes is
  /// never "as expected" for `error` or "without expect"; `expect: livelock` states it.
  @Test("a livelock fails the run unless the step expects it", arguments: [
    ("expect: { memory_fault: { flags: [PRIVATE], gpa: 0xc000000000, size: 0x1000, errno: EFAULT } }", Int32(1),
     "FAILED <stdin>:24: expected memory_fault flags [PRIVATE] gpa 0xc000000000 size 0x1000 errno EFAULT, got livelock: "),
    ("expect: error", 1, "FAILED <stdin>:24: expected error, got livelock: "),
    ("vcpu: 0", 1, "FAILED <stdin>:24: the step never finishes (livelock: "),
    ("expect: livelock", 0, "as expected (livelock)"),
  ])
  func livelock(expect: String, status: Int32, text: String) throws {
    var yaml = try String(contentsOf: examples.appendingPathComponent("map-refused-by-the-module.yaml"), encoding: .utf8)
    let written = "expect: { memory_fault: { flags: [PRIVATE], gpa: 0xc000000000, size: 0x1000, errno: EFAULT } }"
    #expect(yaml.contains(written))
    yaml = yaml.replacingOccurrences(of: written, with: expect)
    let result = try pmmio(["run", "--variant", "rfc-v1", "-"], stdin: Data(yaml.utf8))
    #expect(result.status == status, "\(result.stdout)")
    #expect(result.stdout.contains(text), "\(result.stdout)")
  }

  /// Under a schedule a step that never finishes has no result: `expect: livelock` there is
  /// refused where it is written.
  @Test func livelockIsNotAnExpectationUnderASchedule() throws {
    let yaml = """
      steps:
        - { op: kvm.create_vm, as: vm }
      concurrent:
        - [ { op: kvm.destroy_vm, vm: vm, expect: livelock } ]
      schedule: [ctx1]
      """
    let result = try pmmio(["run", "-"], stdin: Data(yaml.utf8))
    #expect(result.status == 2)
    #expect(result.stderr.contains("<stdin>:4:"), "\(result.stderr)")
    #expect(result.stderr.contains("expect: livelock cannot be judged under a schedule"), "\(result.stderr)")
  }

  @Test func withoutItEveryStepRuns() throws {
    let result = try pmmio(["run", "-"], stdin: Data(Self.failingThenMore.utf8))
    #expect(result.status == 1)
    #expect(result.stdout.contains("summary: 3 steps: 2 as expected, 1 not as expected, 0 without expect (0 succeeded, 3 returned an error)"))
  }

  @Test func jsonHasOneFieldPerValue() throws {
    let result = try pmmio(["run", "--json"])
    #expect(result.status == 0)
    let document = try json(result.stdout)
    #expect(document["schema"] as? Int == 1)
    let steps = try #require(document["steps"] as? [[String: Any]])
    let open = try #require(steps.first?["result"] as? [String: Any])
    #expect(open["ok"] as? Bool == true)
    #expect(open["fd"] as? Int == 4)
    let read = try #require(steps[3]["result"] as? [String: Any])
    #expect(read["ok"] as? Bool == false)
    #expect(read["errno"] as? String == "EINVAL")
    #expect(read["errnoValue"] as? Int == 22)
    #expect(steps[3]["verdict"] as? String == "as expected")
    #expect(steps[3]["file"] as? String == "<builtin:default>")
    #expect(!result.stdout.contains("\"ok fd"), "no value packed into a string")
  }
}

@Suite struct ShowCommandTests {
  @Test func showPrintsEverySection() throws {
    let result = try pmmio(["show", "--at", "15"])
    #expect(result.status == 0)
    for section in ["devices", "fds", "dma-bufs", "  memslots", "  TDP MMU", "  Secure EPT", "TDX module", "  MMIOMT"] {
      #expect(result.stdout.contains("\n\(section)"), "\(section)")
    }
    #expect(result.stdout.contains("0000000080000000-0000000080001fff -> 0000004000000000  2 x 4K  MMIO_MAPPED"))
    #expect(result.stdout.contains("after step 15 of 23"))
  }

  @Test func atZeroIsTheMachineBeforeTheFirstStep() throws {
    let result = try pmmio(["show", "--at", "0"])
    #expect(result.status == 0)
    #expect(result.stdout.contains("before the first step"))
    #expect(result.stdout.contains("unbound"))
  }

  @Test func jsonCarriesTheSameState() throws {
    let result = try pmmio(["show", "--at", "15", "--json"])
    #expect(result.status == 0)
    let document = try json(result.stdout)
    #expect(document["at"] as? Int == 15)
    let state = try #require(document["state"] as? [String: Any])
    let devices = try #require(state["devices"] as? [[String: Any]])
    #expect(devices.first?["tdi"] as? String == "RUN")
    let tds = try #require((state["tdx"] as? [String: Any])?["tds"] as? [[String: Any]])
    let sept = try #require(tds.first?["sept"] as? [[String: Any]])
    #expect(sept.first?["state"] as? String == "MMIO_MAPPED")
    #expect(sept.first?["count"] as? Int == 2)
  }

  @Test func svgIsWritten() throws {
    let dir = try scratchDirectory()
    let result = try pmmio(["show", "--at", "15", "--svg", dir + "/map.svg"])
    #expect(result.status == 0)
    #expect(try String(contentsOfFile: dir + "/map.svg", encoding: .utf8).hasPrefix("<svg "))
  }

  @Test func negativeStepIsAUsageError() throws {
    #expect(try pmmio(["show", "--at", "-1"]).status == 2)
  }
}

@Suite struct KVMOptionTests {
  @Test("options that do nothing in the mode asked for are refused", arguments: [
    (["--trapped", "--revoke-after", "5"], "--revoke-after does nothing with --trapped"),
    (["--trapped", "--guest-memfd"], "--guest-memfd does nothing with --trapped"),
    (["--exporter", "in-memory", "--variant", "rfc-v1"], "--variant does nothing with --exporter in-memory"),
  ])
  func refused(arguments: [String], message: String) throws {
    let result = try pmmio(["kvm"] + arguments)
    #expect(result.status == 2)
    #expect(result.stderr.contains(message))
  }
}
