import Testing
import KernelCore
import TDX
import Platform
import KVM
@testable import Scenarios

let privateExit = MemoryFaultExit(isPrivate: true, gfn: GPA(0x8000_1000).gfn)

struct MatchCase: CustomTestStringConvertible, Sendable {
  let expectation: StepExpectation
  let result: OpResult
  let matches: Bool
  var testDescription: String { "\(expectation) vs \(ResultText.describe(result)) -> \(matches)" }
}

@Test("an expectation matches exactly the results it names", arguments: [
  MatchCase(expectation: .ok, result: .success(.none), matches: true),
  MatchCase(expectation: .ok, result: .success(.fd(FD(3))), matches: true),
  MatchCase(expectation: .ok, result: .failure(.errno(.EINVAL)), matches: false),
  MatchCase(expectation: .error, result: .failure(.errno(.EINVAL)), matches: true),
  MatchCase(expectation: .error, result: .failure(.tdx(.operandBusy)), matches: true),
  MatchCase(expectation: .error, result: .success(.none), matches: false),
  MatchCase(expectation: .errno(.EINVAL), result: .failure(.errno(.EINVAL)), matches: true),
  MatchCase(expectation: .errno(.EINVAL), result: .failure(.errno(.ENODEV)), matches: false),
  MatchCase(expectation: .errno(.EINVAL), result: .success(.none), matches: false),
  MatchCase(expectation: .tdx(.operandBusy), result: .failure(.tdx(.operandBusy.with(operand: 0x11))), matches: true),
  MatchCase(expectation: .tdx(.operandBusy), result: .failure(.tdx(.eptEntryStateIncorrect)), matches: false),
  MatchCase(expectation: .tdx(.operandBusy), result: .failure(.errno(.EBUSY)), matches: false),
  MatchCase(expectation: .tdx(.success), result: .success(.seamcall([0])), matches: true),
  MatchCase(expectation: .tdx(.operandBusy), result: .success(.seamcall([0])), matches: false),
  MatchCase(expectation: .tdisp("INVALID_NONCE"), result: .failure(.tdisp(code: 0x102, name: "INVALID_NONCE")), matches: true),
  MatchCase(expectation: .tdisp("INVALID_NONCE"), result: .failure(.tdisp(code: 4, name: "INVALID_INTERFACE_STATE")), matches: false),
  MatchCase(expectation: .pfn(0x1000, order: nil), result: .success(.pfn(PFN(0x1000), order: 9)), matches: true),
  MatchCase(expectation: .pfn(0x1000, order: 0), result: .success(.pfn(PFN(0x1000), order: 9)), matches: false),
  MatchCase(expectation: .pfn(0x1000, order: 0), result: .success(.pfn(PFN(0x1001), order: 0)), matches: false),
  MatchCase(expectation: .state("RUN"), result: .success(.tdiState("RUN")), matches: true),
  MatchCase(expectation: .state("RUN"), result: .success(.tdiState("ERROR")), matches: false),
  MatchCase(expectation: .flags(["READ", "PRIVATE"]),
            result: .success(.regionInfo(flags: ["VFIO_REGION_INFO_FLAG_PRIVATE", "VFIO_REGION_INFO_FLAG_READ"], size: 0, offset: 0)),
            matches: true),
  MatchCase(expectation: .flags(["READ"]), result: .success(.regionInfo(flags: ["READ", "MMAP"], size: 0, offset: 0)), matches: false),
  MatchCase(expectation: .fault(.mapped), result: .success(.guestAccess("mapped")), matches: true),
  MatchCase(expectation: .fault(.alreadyMapped), result: .success(.guestAccess("mapped")), matches: false),
  MatchCase(expectation: .fault(.killed), result: .success(.guestAccess("killed")), matches: true),
  MatchCase(expectation: .fault(.eio), result: .failure(.errno(.EIO)), matches: true),
  MatchCase(expectation: .fault(.efault), result: .failure(.errno(.EFAULT)), matches: true),
  MatchCase(expectation: .fault(.efault), result: .failure(.errno(.EIO)), matches: false),
  MatchCase(expectation: .value(0xdead), result: .success(.read(0xdead)), matches: true),
  MatchCase(expectation: .value(0xdead), result: .success(.read(0xbeef)), matches: false),
  // KVM_EXIT_MEMORY_FAULT: each key given must match, and it is errno EFAULT as well.
  MatchCase(expectation: .memoryFault(MemoryFaultExpectation(flags: 8, gpa: 0x8000_1000, size: 0x1000)),
            result: .failure(.memoryFault(privateExit)), matches: true),
  MatchCase(expectation: .memoryFault(MemoryFaultExpectation()), result: .failure(.memoryFault(privateExit)), matches: true),
  MatchCase(expectation: .memoryFault(MemoryFaultExpectation(flags: 0)), result: .failure(.memoryFault(privateExit)), matches: false),
  MatchCase(expectation: .memoryFault(MemoryFaultExpectation(gpa: 0x8000_0000)), result: .failure(.memoryFault(privateExit)), matches: false),
  MatchCase(expectation: .memoryFault(MemoryFaultExpectation(errno: .EIO)), result: .failure(.memoryFault(privateExit)), matches: false),
  MatchCase(expectation: .memoryFault(MemoryFaultExpectation()), result: .failure(.errno(.EFAULT)), matches: false),
  MatchCase(expectation: .errno(.EFAULT), result: .failure(.memoryFault(privateExit)), matches: true),
  MatchCase(expectation: .fault(.efault), result: .failure(.memoryFault(privateExit)), matches: true),
])
func matching(_ c: MatchCase) {
  #expect(c.expectation.matches(c.result) == c.matches)
  #expect((c.expectation.mismatch(c.result) == nil) == c.matches)
}

@Test("a mismatch says what was expected and what came back")
func mismatchText() {
  #expect(StepExpectation.errno(.EINVAL).mismatch(.failure(.errno(.ENODEV))) == "expected errno EINVAL, got errno ENODEV")
  #expect(StepExpectation.ok.mismatch(.failure(.tdx(.operandBusy))) == "expected ok, got tdx TDX_OPERAND_BUSY")
  #expect(StepExpectation.state("RUN").mismatch(.success(.fd(FD(4)))) == "expected state RUN, got ok fd 4")
}

@Test("expect: forms parse to their expectation", arguments: [
  ("vfio.close, fd: 3", "ok", StepExpectation.ok), ("vfio.close, fd: 3", "error", .error),
  ("vfio.close, fd: 3", "{ errno: ENODEV }", .errno(.ENODEV)),
  ("tdx.seamcall, leaf: 158", "{ tdx: TDX_OPERAND_BUSY }", .tdx(.operandBusy)),
  ("tdisp.start, device: nic0", "{ tdisp: INVALID_NONCE }", .tdisp("INVALID_NONCE")),
  ("dmabuf.get_pfn, attachment: 1", "{ pfn: 0x10, order: 9 }", .pfn(0x10, order: 9)),
  ("dmabuf.get_pfn, attachment: 1", "{ pfn: 16 }", .pfn(16, order: nil)),
  ("tdisp.lock, device: nic0", "{ state: CONFIG_LOCKED }", .state("CONFIG_LOCKED")),
  ("vfio.region_info, fd: 3, region_index: 0", "{ flags: [READ, MMAP] }", .flags(["READ", "MMAP"])),
  ("guest.write, vm: 3, gpa: 0", "{ fault: exit_mmio }", .fault(.exitMMIO)),
  ("vfio.read, fd: 3, region_index: 0", "{ value: 0xff }", .value(0xFF)),
  ("guest.read, vm: 3, gpa: 0", "{ value: 0xff }", .value(0xFF)),
  ("guest.read, vm: 3, gpa: 0", "{ fault: already_mapped, value: 0x10 }", .fault(.alreadyMapped, value: 0x10)),
  ("guest.read, vm: 3, gpa: 0", "{ value: 0x10, fault: mapped }", .fault(.mapped, value: 0x10)),
])
func expectForms(_ step: String, _ text: String, _ expected: StepExpectation) throws {
  let yaml = "machine: { devices: [ { name: nic0, bars: [ { index: 0, size: 0x1000 } ], tdisp: true } ] }\n"
    + "steps: [ { op: \(step), expect: \(text) } ]"
  let scenario = try ScenarioParser.parse(yaml, file: "e.yaml")
  #expect(scenario.steps.first?.expectation == expected)
}

@Test("a guest load's value is checked with its fault, or alone", arguments: [
  MatchCase(expectation: .fault(.alreadyMapped, value: 0x10), result: .success(.guestAccess("already_mapped", value: 0x10)), matches: true),
  MatchCase(expectation: .fault(.alreadyMapped, value: 0x10), result: .success(.guestAccess("already_mapped", value: 0x14)), matches: false),
  MatchCase(expectation: .fault(.alreadyMapped, value: 0x10), result: .success(.guestAccess("mapped", value: 0x10)), matches: false),
  MatchCase(expectation: .fault(.alreadyMapped, value: 0x10), result: .success(.guestAccess("already_mapped")), matches: false),
  MatchCase(expectation: .fault(.eio, value: 0x10), result: .failure(.errno(.EIO)), matches: false),
  MatchCase(expectation: .fault(.alreadyMapped), result: .success(.guestAccess("already_mapped", value: 0x14)), matches: true),
  MatchCase(expectation: .value(0xffff_ffff), result: .success(.guestAccess("already_mapped", value: 0xffff_ffff)), matches: true),
  MatchCase(expectation: .value(0xffff_ffff), result: .success(.guestAccess("already_mapped", value: 0)), matches: false),
  MatchCase(expectation: .value(0), result: .success(.guestAccess("already_mapped")), matches: false),
  MatchCase(expectation: .value(0), result: .success(.none), matches: false),
])
func loadValues(_ c: MatchCase) {
  #expect(c.expectation.matches(c.result) == c.matches)
}

/// A key that names a result the op never returns is refused where it is written, with the
/// keys the op does take.
@Test("expect: keys that cannot apply to an op are refused with the op's keys", arguments: [
  ("vfio.close, fd: 3", "{ value: 1 }", "e.yaml:2:45: 'value' cannot apply to vfio.close (vfio.close takes expect: ok, error, errno, state)"),
  ("guest.write, vm: 3, gpa: 0", "{ fault: mapped, value: 1 }",
   "e.yaml:2:69: 'value' cannot apply to guest.write (guest.write takes expect: ok, error, errno, state, fault, memory_fault)"),
  ("vfio.read, fd: 3, region_index: 0", "{ fault: mapped }",
   "e.yaml:2:61: 'fault' cannot apply to vfio.read (vfio.read takes expect: ok, error, errno, state, value)"),
  ("vfio.close, fd: 3", "{ state: RUN }",
   "e.yaml:2:45: 'state: WORD' cannot apply to vfio.close (vfio.close takes expect: ok, error, errno, state)"),
  ("tdisp.report, device: nic0", "{ state: RUN }",
   "e.yaml:2:54: 'state: WORD' cannot apply to tdisp.report (tdisp.report takes expect: ok, error, errno, state, tdisp)"),
  ("guest.read, vm: 3, gpa: 0", "{ pfn: 1 }",
   "e.yaml:2:53: 'pfn' cannot apply to guest.read (guest.read takes expect: ok, error, errno, state, value, fault, memory_fault)"),
  ("kvm.create_vcpu, vm: 3", "{ tdx: TDX_OPERAND_BUSY }",
   "e.yaml:2:50: 'tdx' cannot apply to kvm.create_vcpu (kvm.create_vcpu takes expect: ok, error, errno, state)"),
])
func inapplicableKeys(_ step: String, _ text: String, _ error: String) {
  let yaml = "machine: { devices: [ { name: nic0, bars: [ { index: 0, size: 0x1000 } ], tdisp: true } ] }\n"
    + "steps: [ { op: \(step), expect: \(text) } ]"
  do {
    _ = try ScenarioParser.parse(yaml, file: "e.yaml")
    Issue.record("parsed")
  } catch let refusal {
    #expect(refusal.description == error)
  }
}

@Test("memory_fault: flags by name, gpa, size and errno, each optional; unknown flags refused")
func memoryFaultExpectationParses() throws {
  let yaml = { (expect: String) in
    "machine: { vms: [ { name: vm0, type: sw_protected } ] }\nsteps: [ { op: guest.read, vm: vm0, gpa: 0, expect: \(expect) } ]"
  }
  let full = try ScenarioParser.parse(yaml("{ memory_fault: { flags: [PRIVATE], gpa: 0x80001000, size: 0x1000, errno: EFAULT } }"), file: "m.yaml")
  #expect(full.steps[0].expectation == .memoryFault(MemoryFaultExpectation(flags: 8, gpa: 0x8000_1000, size: 0x1000, errno: .EFAULT)))
  let shared = try ScenarioParser.parse(yaml("{ memory_fault: { flags: [] } }"), file: "m.yaml")
  #expect(shared.steps[0].expectation == .memoryFault(MemoryFaultExpectation(flags: 0)))
  #expect(StepExpectation.memoryFault(MemoryFaultExpectation(flags: 8, gpa: 0x1000)).description == "memory_fault flags [PRIVATE] gpa 0x1000")
  #expect(throws: ScenarioError.self) { try ScenarioParser.parse(yaml("{ memory_fault: { flags: [PRIVAT] } }"), file: "m.yaml") }
  #expect(throws: ScenarioError.self) { try ScenarioParser.parse(yaml("{ memory_fault: { gfn: 1 } }"), file: "m.yaml") }
  #expect(StepResult(.failure(.memoryFault(privateExit))).text
    == "errno EFAULT, KVM_EXIT_MEMORY_FAULT flags [PRIVATE] gpa 0x80001000 size 0x1000")
}

/// The table names only ops that exist.
@Test func resultKeysNameRealOps() {
  let ops = Set(OpSpec.all.map(\.name))
  for entry in StepExpectation.resultKeys { #expect(entry.ops.isSubset(of: ops), "\(entry.key): \(entry.ops.subtracting(ops))") }
}

/// The machine's state is every op's to check, whatever the op returns.
@Test func stateAsAMappingAppliesToEveryOp() throws {
  for spec in OpSpec.all {
    #expect(StepExpectation.keys(for: spec.name).starts(with: StepExpectation.universalKeys), "\(spec.name)")
    #expect(StepExpectation.applies("state", to: spec.name, isWord: false))
  }
}
