import Testing
import KernelCore
import Platform
@testable import Scenarios

/// `expect: { state: { ... } }` checks the machine after the step, over the documented keys.
@Suite struct StateExpectationTests {
  static func run(_ stepsAfterSetUp: String) throws -> RunReport {
    let yaml = BuiltinScenarios.defaultYAML.components(separatedBy: "\nsteps:\n")[0] + "\nsteps:\n" + stepsAfterSetUp
    return try ScenarioRunner.run(try ScenarioParser.parse(yaml, file: "s.yaml"))
  }

  static let setUp = """
      - { op: vfio.open, device: nic0, as: dev }
      - { op: vfio.bind_iommufd, fd: dev, private: true, vm: td0 }
      - { op: tdisp.lock, device: nic0 }
      - { op: tdx.devif_create, vm: td0, device: nic0 }
      - { op: tdx.mmio_mt_add, device: nic0 }
      - { op: tdisp.start, device: nic0 }
      - { op: vfio.dma_buf, fd: dev, region_index: 0, ranges: [[0, 0x200000]], as: buf }
      - { op: kvm.set_user_memory_region2, vm: td0, slot: 1, flags: [vfio_dmabuf],
          guest_phys_addr: 0x80000000, memory_size: 0x200000, fd: buf }
      - { op: kvm.set_memory_attributes, vm: td0, address: 0x80000000, size: 0x200000 }

    """

  @Test func everyKeyHoldsOnTheDefaultFlow() throws {
    let report = try Self.run(Self.setUp + """
        - { op: guest.read, vm: td0, gpa: 0x80001000,
            expect: { ok, state: { tdi: { nic0: RUN }, memory: { nic0: true }, dmabuf: { buf: live }, memslots: { td0: 1 },
                                   mapped: { td0: 1 }, sept: { td0: { 0x80001000: MMIO_PENDING, 0x80000000: FREE } },
                                   vm: { td0: live }, devif: { nic0: RUN } } } }
      """)
    let last = try #require(report.steps.last)
    #expect(last.stateMismatches == nil)
    #expect(last.verdict == .asExpected)
    #expect(last.result.fault == "killed")
  }

  @Test func aStateThatDoesNotHoldFailsTheStepAndSaysWhat() throws {
    let report = try Self.run(Self.setUp + """
        - { op: tdisp.stop, device: nic0, expect: { state: { tdi: { nic0: RUN }, dmabuf: { buf: live }, sept: { td0: { 0x80000000: FREE } } } } }
      """)
    let last = try #require(report.steps.last)
    #expect(last.verdict == .notAsExpected)
    #expect(last.stateMismatches == ["state tdi nic0: expected RUN, found CONFIG_UNLOCKED",
                                     "state dmabuf buf: expected live, found revoked"])
    #expect(report.text.contains("FAILED s.yaml:21: state tdi nic0: expected RUN, found CONFIG_UNLOCKED"))
    #expect(report.exitStatus == 1)
  }

  @Test func aScalarStateIsStillTheTDIStateARequestReturned() throws {
    let report = try Self.run("  - { op: tdisp.lock, device: nic0, expect: { state: CONFIG_LOCKED } }\n")
    #expect(report.steps[0].verdict == .asExpected)
    #expect(report.steps[0].expectation == "state CONFIG_LOCKED")
  }

  @Test("bad state keys and values are refused before anything runs", arguments: [
    ("{ state: { tdl: { nic0: RUN } } }", "s.yaml:11:64: unknown key 'tdl' in state: did you mean 'tdi'? (expected: tdi, memory, dmabuf, memslots, mapped, sept, vm, devif)"),
    ("{ state: { tdi: { nic1: RUN } } }", "s.yaml:11:71: unknown device 'nic1': did you mean 'nic0'? (expected: nic0)"),
    ("{ state: { tdi: { nic0: RNU } } }", "s.yaml:11:77: unknown value 'RNU': did you mean 'RUN'? (expected: CONFIG_UNLOCKED, CONFIG_LOCKED, RUN, ERROR, none)"),
    ("{ state: { dmabuf: { buf: live } } }", "s.yaml:11:74: 'buf' is not bound to an fd by an earlier 'as:'"),
    ("{ state: { sept: { td0: { 0x80000000: MMIO_MAPED } } } }", "s.yaml:11:91: unknown SEPT state 'MMIO_MAPED': did you mean 'MMIO_MAPPED'? (expected: FREE, PENDING, MAPPED, BLOCKED, MMIO_PENDING, MMIO_MAPPED, MMIO_BLOCKED)"),
    ("{ state: { vm: { td9: live } } }", "s.yaml:11:70: 'td9' is not bound: no earlier step has 'as: td9' and no VM of machine.vms has that name"),
    ("{ state: { } }", "s.yaml:11:62: 'state' names nothing to check"),
  ])
  func badState(expect: String, message: String) throws {
    let yaml = BuiltinScenarios.defaultYAML.components(separatedBy: "\nsteps:\n")[0]
      + "\nsteps:\n  - { op: vfio.open, device: nic0, as: dev, expect: \(expect) }\n"
    #expect(throws: (any Error).self) { try ScenarioParser.parse(yaml, file: "s.yaml") }
    do { _ = try ScenarioParser.parse(yaml, file: "s.yaml") } catch { #expect(error.description == message) }
  }

  @Test func aScriptedMachineHasNoStateToCheck() throws {
    let scenario = try ScenarioParser.parse("""
      machine: { vms: [ { name: td0, type: tdx } ] }
      steps: [ { op: kvm.create_vcpu, vm: td0, expect: { state: { vm: { td0: live } } } } ]
      """, file: "x.yaml")
    let report = ScenarioRunner.run(scenario, on: ScriptedMachine(results: [.success(.none)]), variant: .reviewed)
    #expect(report.steps[0].stateMismatches == ["state: this machine has no state to check"])
  }
}

/// The reason a call was refused, and the plain words for an outcome, reach every output.
@Suite struct ReasonDisplayTests {
  static let refused = OpResult.failure(.errno(Errno.EINVAL.because("vfio_pci_core_feature_dma_buf", "nr_ranges is 0")))

  static func report() throws -> RunReport {
    let scenario = try ScenarioParser.parse("""
      machine: { vms: [ { name: td0, type: tdx } ] }
      steps:
        - { op: vfio.close, fd: 3, expect: { errno: EINVAL } }
        - { op: guest.read, vm: td0, gpa: 0x1000, expect: ok }
      """, file: "r.yaml")
    return ScenarioRunner.run(scenario, on: ScriptedMachine(results: [refused, .success(.guestAccess("killed"))]),
                              variant: .reviewed)
  }

  @Test func textShowsTheReasonAndTheMeaning() throws {
    let text = try Self.report().text
    #expect(text.contains("      = errno EINVAL (vfio_pci_core_feature_dma_buf: nr_ranges is 0)   as expected (errno EINVAL)\n"))
    #expect(text.contains("      = ok fault killed (the TD was terminated: it touched an unaccepted MMIO page, or was already terminated)"))
  }

  @Test func traceShowsTheReason() throws {
    #expect(try Self.report().traceText.contains("ioctl = errno EINVAL (vfio_pci_core_feature_dma_buf: nr_ranges is 0)\n"))
    #expect(try Self.report().perfettoJSON().contains("\"reason\":\"vfio_pci_core_feature_dma_buf: nr_ranges is 0\""))
  }

  @Test func jsonHasTheReasonAsFields() throws {
    let step = try Self.report().steps[0]
    #expect(step.result.reason == StepResult.Reason(function: "vfio_pci_core_feature_dma_buf", check: "nr_ranges is 0"))
    #expect(step.result.errno == "EINVAL")
    #expect(step.result.errnoValue == 22)
    #expect(try Self.report().jsonString().contains("\"function\" : \"vfio_pci_core_feature_dma_buf\""))
  }

  @Test("every guest outcome the platform returns has plain words", arguments: ["mapped", "already_mapped", "exit_mmio", "killed", "ve", "accepted"])
  func meanings(outcome: String) {
    #expect(StepResult.meaning(ofFault: outcome) != nil)
  }
}

@Suite struct SuggestionTests {
  @Test(arguments: [
    ("vfio.opne", ["vfio.open", "vfio.close"], "vfio.open" as String?), ("EINVL", ["EINVAL", "ENOENT"], "EINVAL"),
    ("TDX_OPERAND_BUSSY", ["TDX_OPERAND_BUSY", "TDX_SUCCESS"], "TDX_OPERAND_BUSY"), ("frobnicate", ["run", "show", "kvm"], nil),
    ("shwo", ["run", "show"], "show"), ("RUN", ["RUN"], "RUN"), ("x", ["run"], nil),
  ])
  func closest(word: String, candidates: [String], expected: String?) {
    #expect(Suggestion.closest(to: word, among: candidates) == expected)
  }

  @Test("unknown names get a suggestion", arguments: [
    ("{ op: vfio.close, fd: 3, expect: { errno: EINVL } }", "t.yaml:1:52: unknown errno 'EINVL': did you mean 'EINVAL'?"),
    ("{ op: tdx.seamcall, leaf: 1, expect: { tdx: TDX_OPERAND_BUSSY } }",
     "t.yaml:1:54: unknown TDX status 'TDX_OPERAND_BUSSY': did you mean 'TDX_OPERAND_BUSY'?"),
    ("{ op: vfio.close, fdd: 3 }", "t.yaml:1:28: unknown key 'fdd' in op vfio.close: did you mean 'fd'? (expected: op, fd, expect)"),
    ("{ op: vfio.close, fd: 3, expect: okk }", "t.yaml:1:43: unknown expectation 'okk': did you mean 'ok'? (ok, error, livelock, deadlock, or { errno | tdx | tdisp | pfn | state | flags | fault | value | memory_fault: ... })"),
  ])
  func parserSuggests(step: String, message: String) {
    #expect(throws: (any Error).self) { try ScenarioParser.parse("steps: [ \(step) ]", file: "t.yaml") }
    do { _ = try ScenarioParser.parse("steps: [ \(step) ]", file: "t.yaml") } catch { #expect(error.description == message) }
  }
}
