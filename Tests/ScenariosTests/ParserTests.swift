import Testing
import KernelCore
import Platform
@testable import Scenarios

@Test("a step's keys become the Operation, names resolved at run time")
func buildsOperations() throws {
  let scenario = try ScenarioParser.parse("""
    variant: rfc-v1
    machine:
      devices:
        - name: nic0
          bars: [ { index: 0, size: 0x200000, is64: false, msix_table: [0, 0x1000] } ]
          tdisp: true
      vms: [ { name: td0, type: tdx } ]
    steps:
      - { op: vfio.open, device: nic0, as: dev }
      - { op: vfio.dma_buf, fd: dev, ranges: [[0, 0x20_0000]], as: buf }
      - { op: dmabuf.attach, fd: buf, as: att }
      - { op: dmabuf.get_pfn, attachment: att, pgoff: 3, expect: { pfn: 0x1234, order: 0 } }
      - { op: kvm.set_user_memory_region2, vm: td0, slot: 1, flags: [vfio_dmabuf, readonly],
          guest_phys_addr: 0x8000_0000, memory_size: 0x200000, fd: buf }
      - { op: vfio.close, fd: -1, expect: { errno: EBADF } }
    concurrent:
      - [ { op: guest.accept_mmio, vm: td0, gpa: 0x80001000 } ]
      - [ { op: vfio.reset, fd: dev } ]
    """, file: "ok.yaml")
  #expect(scenario.name == "ok")
  #expect(scenario.variant == .rfcV1)
  #expect(scenario.machine == MachineConfiguration(
    devices: [DeviceConfiguration(name: "nic0", bars: [BARConfiguration(index: 0, size: 0x200000, is64Bit: false,
                                                                        msixTable: DmaRange(offset: 0, length: 0x1000))],
                                  tdisp: true)],
    vms: [VMConfiguration(name: "td0", type: .tdx)]))
  #expect(scenario.machinePosition == SourcePosition(file: "ok.yaml", line: 2, column: 1))
  #expect(scenario.allSteps.map(\.index) == [1, 2, 3, 4, 5, 6, 7, 8])
  #expect(scenario.concurrent.map { $0.map(\.path) } == [[.concurrent(0)], [.concurrent(1)]])
  #expect(scenario.steps[1].text == "{ op: vfio.dma_buf, fd: dev, ranges: [[0, 0x20_0000]], as: buf }")
  #expect(scenario.steps[3].expectation == .pfn(0x1234, order: 0))

  var handles = HandleEnvironment(vmFDs: ["td0": FD(5)])
  handles.bind("dev", to: .success(.fd(FD(3))))
  handles.bind("buf", to: .success(.fd(FD(7))))
  handles.bind("att", to: .success(.attachment(.init(2))))
  let ops = scenario.allSteps.map { $0.operation(in: handles) }
  #expect(ops == [
    .vfioOpen(device: "nic0"),
    .vfioDmaBuf(fd: FD(3), regionIndex: 0, ranges: [DmaRange(offset: 0, length: 0x200000)], openFlags: 0x80002, flags: 0),
    .dmabufAttach(fd: FD(7), importer: "test", dynamic: true, peer2peer: true),
    .dmabufGetPfn(attachment: .init(2), pgoff: PageIndex(3)),
    .kvmSetUserMemoryRegion2(vm: FD(5), region: MemoryRegion2(slot: 1, flags: 0b1010, guestPhysAddr: 0x8000_0000,
                                                               memorySize: 0x200000, guestMemfd: 7)),
    .vfioClose(fd: FD(-1)),
    .guestAcceptMMIO(vm: FD(5), gpa: GPA(0x80001000), expectHPA: nil),
    .vfioReset(fd: FD(3)),
  ])
}

@Test("a name whose binding step failed resolves to fd -1, as an unchecked C variable would")
func failedBindingIsMinusOne() {
  var handles = HandleEnvironment()
  handles.bind("dev", to: .success(.fd(FD(3))))
  handles.bind("dev", to: .failure(.errno(.ENOSYS)))
  #expect(handles.fd(.name("dev")) == FD(-1))
  #expect(handles.attachment(.name("att")) == .init(UInt32.max))
  #expect(handles.fd(.literal(42)) == FD(42))
}

@Test("a concurrent path sees names bound by steps, not by another path")
func pathScopes() {
  let yaml = """
    machine: { devices: [ { name: nic0, bars: [] } ] }
    steps: [ { op: vfio.open, device: nic0, as: dev } ]
    concurrent:
      - [ { op: vfio.dma_buf, fd: dev, ranges: [], as: buf } ]
      - [ { op: dmabuf.close, fd: buf } ]
    """
  #expect(throws: ScenarioError(SourcePosition(file: "p.yaml", line: 5, column: 31),
                                "'buf' is not bound: no earlier step has 'as: buf' and no VM of machine.vms has that name")) {
    try ScenarioParser.parse(yaml, file: "p.yaml")
  }
}

@Test("op names are unique and the reference table lists every op once")
func opTable() {
  let names = OpSpec.all.map(\.name)
  #expect(Set(names).count == names.count)
  #expect(names.count == 40)
  let table = OpSpec.referenceTable
  for name in names { #expect(table.contains("| `\(name)` |")) }
  #expect(table.contains("`open_flags`: u32 = 0x80002 (O_RDWR\\|O_CLOEXEC)"))   // escaped for Markdown
}

@Test("the built-in default scenario parses")
func builtinParses() throws {
  let scenario = try BuiltinScenarios.defaultScenario()
  #expect(scenario.name == "private-mmio-td")
  #expect(scenario.steps.count >= 10)
  #expect(scenario.steps.allSatisfy { $0.expectation != nil })
}
