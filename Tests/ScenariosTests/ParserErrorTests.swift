import Testing
@testable import Scenarios

/// Seven lines of machine, so a step added after them is on line 7.
private let header = """
  machine:
    devices:
      - { name: nic0, bars: [ { index: 0, size: 0x1000 } ], tdisp: true }
    vms:
      - { name: td0, type: tdx }
  steps:

  """

private func parseError(_ yaml: String) -> String? {
  do {
    _ = try ScenarioParser.parse(yaml, file: "t.yaml")
    return nil
  } catch {
    return error.description
  }
}

struct BadInput: CustomTestStringConvertible, Sendable {
  let label: String
  let steps: String
  let error: String
  var testDescription: String { label }
}

@Test("every bad step is reported at its file:line:column", arguments: [
  BadInput(label: "unknown key", steps: "  - { op: vfio.open, device: nic0, colour: red }",
           error: "t.yaml:7:36: unknown key 'colour' in op vfio.open (expected: op, device, as, expect)"),
  BadInput(label: "unknown op", steps: "  - { op: vfio.opne, device: nic0 }",
           error: "t.yaml:7:11: unknown op 'vfio.opne': did you mean 'vfio.open'?"),
  BadInput(label: "bad errno name", steps: "  - { op: vfio.close, fd: 3, expect: { errno: EFOO } }",
           error: "t.yaml:7:47: unknown errno 'EFOO'"),
  BadInput(label: "bad TDX status", steps: "  - { op: tdx.seamcall, leaf: 158, expect: { tdx: TDX_NOPE } }",
           error: "t.yaml:7:51: unknown TDX status 'TDX_NOPE'"),
  BadInput(label: "bad TDISP name", steps: "  - { op: tdisp.start, device: nic0, expect: { tdisp: NOPE } }",
           error: "t.yaml:7:55: unknown TDISP error 'NOPE'"),
  BadInput(label: "wrong type", steps: "  - { op: vfio.region_info, fd: 3, region_index: [1] }",
           error: "t.yaml:7:50: 'region_index' must be a number, found a list"),
  BadInput(label: "wrong bool", steps: "  - { op: vfio.set_memory_decode, fd: 3, enable: yes }",
           error: "t.yaml:7:50: 'enable' must be true or false, found 'yes'"),
  BadInput(label: "missing key", steps: "  - { op: vfio.region_info, fd: 3 }",
           error: "t.yaml:7:5: missing key 'region_index' for op vfio.region_info"),
  BadInput(label: "missing op", steps: "  - { fd: 3 }",
           error: "t.yaml:7:5: missing key 'op' in step"),
  BadInput(label: "bad number", steps: "  - { op: vfio.region_info, fd: 3, region_index: 0xZZ }",
           error: "t.yaml:7:50: bad number '0xZZ' for 'region_index' (decimal or 0x-hex)"),
  BadInput(label: "number past u32", steps: "  - { op: vfio.region_info, fd: 3, region_index: 0x1_0000_0000 }",
           error: "t.yaml:7:50: 'region_index' is 0x1_0000_0000, past its maximum 0xffffffff"),
  BadInput(label: "unbound name", steps: "  - { op: vfio.close, fd: dev }",
           error: "t.yaml:7:27: 'dev' is not bound: no earlier step has 'as: dev' and no VM of machine.vms has that name"),
  BadInput(label: "name bound later", steps: "  - { op: vfio.close, fd: dev }\n  - { op: vfio.open, device: nic0, as: dev }",
           error: "t.yaml:7:27: 'dev' is not bound: no earlier step has 'as: dev' and no VM of machine.vms has that name"),
  BadInput(label: "duplicate as", steps: "  - { op: vfio.open, device: nic0, as: dev }\n  - { op: vfio.open, device: nic0, as: dev }",
           error: "t.yaml:8:40: duplicate name 'dev': already bound by 'as:' or a VM name"),
  BadInput(label: "as shadows a VM", steps: "  - { op: vfio.open, device: nic0, as: td0 }",
           error: "t.yaml:7:40: duplicate name 'td0': already bound by 'as:' or a VM name"),
  BadInput(label: "fd where an attachment goes", steps: "  - { op: vfio.open, device: nic0, as: dev }\n  - { op: dmabuf.detach, attachment: dev }",
           error: "t.yaml:8:38: 'dev' names an fd, not an attachment"),
  BadInput(label: "unknown device", steps: "  - { op: tdisp.lock, device: nic9 }",
           error: "t.yaml:7:31: unknown device 'nic9': did you mean 'nic0'? (machine.devices: nic0)"),
  BadInput(label: "unknown memory flag", steps: "  - { op: kvm.set_user_memory_region2, vm: td0, slot: 0, flags: [dirty], guest_phys_addr: 0, memory_size: 0x1000 }",
           error: "t.yaml:7:66: unknown memory flag 'dirty' (expected: log_dirty_pages, readonly, guest_memfd, vfio_dmabuf)"),
  BadInput(label: "bad choice", steps: "  - { op: vfio.set_power, fd: 3, state: D3cold }",
           error: "t.yaml:7:41: 'state' must be one of D0|D3hot, found 'D3cold'"),
  BadInput(label: "unknown expectation", steps: "  - { op: vfio.close, fd: 3, expect: fine }",
           error: "t.yaml:7:38: unknown expectation 'fine' (ok, error, livelock, deadlock, or { errno | tdx | tdisp | pfn | state | flags | fault | value | memory_fault: ... })"),
  BadInput(label: "two expectations", steps: "  - { op: vfio.read, fd: 3, region_index: 0, expect: { errno: EBADF, value: 1 } }",
           error: "t.yaml:7:54: expect needs one of ok, error, errno, tdx, tdisp, pfn, state, flags, fault, value, memory_fault (and may add state: { ... }; fault may add value)"),
  BadInput(label: "a value on an op that returns none", steps: "  - { op: vfio.close, fd: 3, expect: { value: 1 } }",
           error: "t.yaml:7:40: 'value' cannot apply to vfio.close (vfio.close takes expect: ok, error, errno, state)"),
  BadInput(label: "a value wider than the write", steps: "  - { op: guest.write, vm: td0, gpa: 0, size: 2, value: 0x10000 }",
           error: "t.yaml:7:57: value 0x10000 does not fit in 2 bytes (size: 2)"),
  BadInput(label: "malformed YAML", steps: "  - { op: vfio.close, fd: 3",
           error: "t.yaml:8:1: malformed YAML: did not find expected ',' or '}' (while parsing a flow mapping at 7:5)"),
])
func badStep(_ input: BadInput) {
  #expect(parseError(header + input.steps + "\n") == input.error)
}

@Test("bad top-level and machine input is reported at its position", arguments: [
  ("name: x\nfoo: 1\n", "t.yaml:2:1: unknown key 'foo' in the scenario (expected: name, variant, machine, steps, concurrent, schedule)"),
  ("variant: rfc-v2\n", "t.yaml:1:10: unknown variant 'rfc-v2': did you mean 'rfc-v1'? (expected: rfc-v1, reviewed)"),
  ("steps: []\nsteps: []\n", "t.yaml:1:1: duplicate key 'steps' in mapping"),
  ("steps:\n  - { op: vfio.close, fd: 3 }\n steps: []\n",
   "t.yaml:3:2: malformed YAML: did not find expected key (while parsing a block mapping at 1:1)"),
  ("machine:\n  devices:\n    - { name: a, bars: [ { index: 0, size: 4096, colour: 1 } ] }\n",
   "t.yaml:3:50: unknown key 'colour' in a BAR (expected: index, size, is64, prefetchable, msix_table, msix_pba)"),
  ("machine:\n  devices:\n    - { name: a, bars: [] }\n    - { name: a, bars: [] }\n", "t.yaml:4:7: duplicate device name 'a'"),
  ("machine:\n  vms:\n    - { name: v, type: sev }\n", "t.yaml:3:24: unknown VM type 'sev' (expected: default, sw_protected, tdx)"),
  ("machine:\n  devices:\n    - { bars: [] }\n", "t.yaml:3:7: missing key 'name' in a device"),
  ("machine:\n  devices:\n    - { name: a, bars: [ { index: 0, size: 0x8000000000000000 } ] }\n",
   "t.yaml:3:44: BAR size 0x8000000000000000 must be a power of two between 4 KiB and 2^51 bytes"),
  ("machine:\n  devices:\n    - { name: a, bars: [ { index: 0, size: 0x3000 } ] }\n",
   "t.yaml:3:44: BAR size 0x3000 must be a power of two between 4 KiB and 2^51 bytes"),
  ("machine:\n  devices:\n    - { name: a, bars: [ { index: 6, size: 0x1000 } ] }\n",
   "t.yaml:3:35: BAR index 6 is past BAR 5"),
  ("machine:\n  devices:\n    - { name: a, bars: [ { index: 1, size: 0x1000 }, { index: 1, size: 0x1000 } ] }\n",
   "t.yaml:3:63: BAR 1 is defined twice"),
  ("- 1\n", "t.yaml:1:1: the scenario must be a mapping, found a list"),
  ("", "t.yaml:1:1: empty scenario: expected a mapping with 'steps'"),
])
func badTopLevel(_ yaml: String, _ error: String) {
  #expect(parseError(yaml) == error)
}

@Test("numbers are decimal or 0x-hex with underscores", arguments: [
  ("0", UInt64?.some(0)), ("4096", 4096), ("0x1000", 0x1000), ("0X1f", 0x1F), ("0x8000_0000", 0x8000_0000),
  ("1_000", 1000), ("18446744073709551615", .max), ("18446744073709551616", nil), ("0x", nil),
  ("_1", nil), ("1_", nil), ("-1", nil), ("1.5", nil), ("one", nil), ("", nil), ("0b101", nil),
])
func numbers(_ text: String, _ value: UInt64?) {
  #expect(ScenarioReader.parseNumber(text) == value)
}
