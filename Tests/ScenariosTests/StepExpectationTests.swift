import Testing
import KernelCore
import TDX
import Platform
@testable import Scenarios

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
  ("ok", StepExpectation.ok), ("error", .error), ("{ errno: ENODEV }", .errno(.ENODEV)),
  ("{ tdx: TDX_OPERAND_BUSY }", .tdx(.operandBusy)), ("{ tdisp: INVALID_NONCE }", .tdisp("INVALID_NONCE")),
  ("{ pfn: 0x10, order: 9 }", .pfn(0x10, order: 9)), ("{ pfn: 16 }", .pfn(16, order: nil)),
  ("{ state: CONFIG_LOCKED }", .state("CONFIG_LOCKED")), ("{ flags: [READ, MMAP] }", .flags(["READ", "MMAP"])),
  ("{ fault: exit_mmio }", .fault(.exitMMIO)), ("{ value: 0xff }", .value(0xFF)),
])
func expectForms(_ text: String, _ expected: StepExpectation) throws {
  let scenario = try ScenarioParser.parse("steps: [ { op: vfio.close, fd: 3, expect: \(text) } ]", file: "e.yaml")
  #expect(scenario.steps.first?.expectation == expected)
}
