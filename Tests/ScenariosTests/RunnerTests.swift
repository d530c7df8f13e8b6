import Testing
import KernelCore
import Platform
@testable import Scenarios

/// A machine that answers from a script, so the runner's bookkeeping is tested on its own.
struct ScriptedMachine: ScenarioMachine {
  var results: [OpResult]
  var violationsAfter: [Int: String] = [:]
  var performed: [Operation] = []
  var contexts: [ContextID] = []
  var trace = Trace()

  mutating func perform(_ op: Operation, context: ContextID) -> OpResult {
    performed.append(op)
    contexts.append(context)
    trace.emit(.vfio, "performed \(performed.count)")
    return performed.count <= results.count ? results[performed.count - 1] : .failure(.errno(.ENOSYS))
  }
  func checkInvariants(quiescent: Bool) -> [InvariantCheck] {
    [InvariantCheck(name: "NoHostMappingOfPrivateMMIO", violation: violationsAfter[performed.count]),
     InvariantCheck(name: "AttachmentsBalance", violation: nil)]
  }
  func vmFD(named name: String) -> FD? { name == "td0" ? FD(9) : nil }
}

let runnerYAML = """
  machine: { devices: [ { name: nic0, bars: [] } ], vms: [ { name: td0, type: tdx } ] }
  steps:
    - { op: vfio.open, device: nic0, as: dev, expect: ok }
    - { op: vfio.bind_iommufd, fd: dev, private: true, vm: td0, expect: { errno: EINVAL } }
    - { op: vfio.close, fd: dev }
  concurrent:
    - [ { op: vfio.reset, fd: dev, expect: error } ]
  """

@Test("the runner resolves names, judges each step and counts invariants")
func scriptedRun() throws {
  let scenario = try ScenarioParser.parse(runnerYAML, file: "r.yaml")
  let machine = ScriptedMachine(results: [.success(.fd(FD(3))), .failure(.errno(.EINVAL)), .success(.none),
                                          .failure(.errno(.EBADF))])
  let report = ScenarioRunner.run(scenario, on: machine, variant: .reviewed)
  #expect(report.steps.map(\.result.text) == ["ok fd 3", "errno EINVAL", "ok", "errno EBADF"])
  #expect(report.steps.map(\.verdict) == [.asExpected, .asExpected, .unchecked, .asExpected])
  #expect(report.steps.map(\.context) == ["ioctl", "ioctl", "ioctl", "ctx1"])
  #expect(report.steps.map { $0.trace.map(\.description) } == (1...4).map { ["vfio: performed \($0)"] })
  #expect(report.steps.map { $0.trace.map(\.time.description) } == (1...4).map { ["1.00\($0)"] })
  #expect(report.counters.asExpected == 3)
  #expect(report.counters.succeeded == 2)
  #expect(report.counters.returnedError == 2)
  #expect(report.counters.unchecked == 1)
  #expect(report.counters.invariantChecks == 8)
  #expect(report.counters.invariantsChecked == 2)
  #expect(report.exitStatus == 0)
  #expect(report.text.hasSuffix("PASS\n"))
}

@Test("a failed expectation or a broken invariant makes the run fail")
func failures() throws {
  let scenario = try ScenarioParser.parse(runnerYAML, file: "r.yaml")
  let wrong = ScriptedMachine(results: [.success(.fd(FD(3))), .success(.none), .success(.none), .failure(.errno(.EBADF))])
  let failed = ScenarioRunner.run(scenario, on: wrong, variant: .reviewed)
  #expect(failed.steps[1].mismatch == "expected errno EINVAL, got ok")
  #expect(failed.exitStatus == 1)

  var broken = ScriptedMachine(results: [.success(.fd(FD(3))), .failure(.errno(.EINVAL)), .success(.none), .failure(.errno(.EBADF))])
  broken.violationsAfter = [3: "SPTE maps revoked dma-buf"]
  let violated = ScenarioRunner.run(scenario, on: broken, variant: .reviewed)
  #expect(violated.counters.notAsExpected == 0)
  #expect(violated.counters.invariantsViolated == 1)
  #expect(violated.invariants.first { $0.name == "NoHostMappingOfPrivateMMIO" }?.firstViolationStep == 3)
  #expect(violated.steps[2].invariantViolations == [InvariantViolation(name: "NoHostMappingOfPrivateMMIO", message: "SPTE maps revoked dma-buf")])
  #expect(violated.exitStatus == 1)
}

@Test("names resolve to what earlier steps returned, or -1 when they failed")
func resolution() throws {
  let scenario = try ScenarioParser.parse(runnerYAML, file: "r.yaml")
  var machine = ScriptedMachine(results: [.success(.fd(FD(3)))])
  var handles = HandleEnvironment(vmFDs: ["td0": FD(9)])
  for step in scenario.allSteps {
    let result = machine.perform(step.operation(in: handles), context: step.path.context)
    if let name = step.binding { handles.bind(name, to: result) }
  }
  #expect(machine.contexts == [.ioctl, .ioctl, .ioctl, ContextID(rawValue: 1)])
  #expect(machine.performed == [.vfioOpen(device: "nic0"), .vfioBindIOMMUFD(fd: FD(3), private: true, vm: FD(9)),
                                .vfioClose(fd: FD(3)), .vfioReset(fd: FD(3))])
  var failing = ScriptedMachine(results: [.failure(.errno(.ENODEV))])
  handles = HandleEnvironment(vmFDs: ["td0": FD(9)])
  for step in scenario.steps {
    let result = failing.perform(step.operation(in: handles), context: step.path.context)
    if let name = step.binding { handles.bind(name, to: result) }
  }
  #expect(failing.performed[1] == .vfioBindIOMMUFD(fd: FD(-1), private: true, vm: FD(9)))
}

@Test("closing an fd that is not open is EBADF: that expectation holds and ok fails")
func closeOfABadFD() throws {
  let pass = try ScenarioParser.parse("steps: [ { op: vfio.close, fd: 99, expect: { errno: EBADF } } ]", file: "s.yaml")
  let passed = try ScenarioRunner.run(pass)
  #expect(passed.steps[0].result.text == "errno EBADF")
  #expect(passed.exitStatus == 0)
  let fail = try ScenarioParser.parse("steps: [ { op: vfio.close, fd: 99, expect: ok } ]", file: "s.yaml")
  let report = try ScenarioRunner.run(fail)
  #expect(report.exitStatus == 1)
  #expect(report.counters.notAsExpected == 1)
}

@Test("the variant: an explicit choice wins, then the scenario's, then reviewed", arguments: [
  (Variant?.none, Variant?.none, Variant.reviewed), (.none, .rfcV1, .rfcV1), (.reviewed, .rfcV1, .reviewed), (.rfcV1, .none, .rfcV1),
])
func variantChoice(_ flag: Variant?, _ file: Variant?, _ expected: Variant) throws {
  var scenario = try ScenarioParser.parse("steps: []", file: "v.yaml")
  scenario.variant = file
  #expect(ScenarioRunner.effectiveVariant(scenario, override: flag) == expected)
  #expect(try ScenarioRunner.run(scenario, variant: flag).variant == expected.rawValue)
}

