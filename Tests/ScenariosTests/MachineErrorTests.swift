import Testing
import KernelCore
import Platform
@testable import Scenarios

/// A machine that cannot be built is reported at the entry at fault, with the real reason.
@Suite struct MachineErrorTests {
  static func buildError(_ yaml: String) throws -> String? {
    let scenario = try ScenarioParser.parse(yaml, file: "m.yaml")
    do { _ = try ScenarioRunner.run(scenario); return nil } catch { return error.description }
  }

  static func devices(_ bars: String...) -> String {
    "machine:\n  devices:\n    - name: nic0\n      bars:\n" + bars.map { "        - \($0)\n" }.joined() + "steps: []\n"
  }

  @Test("BARs that cannot be placed or clash are reported at their own line", arguments: [
    // A 32-bit BAR of 1 GiB does not fit in the window below 4 GiB (0xC000_0000 ..< 0xFEC0_0000).
    (devices("{ index: 0, size: 0x1000 }", "{ index: 2, size: 0x40000000, is64: false }"),
     "m.yaml:6:11: machine: BAR 2 of nic0 cannot be placed in the 32-bit (below 4 GiB) MMIO window: pci_assign_resource: "
       + "no space for 1 GiB aligned to its size in window [0xc0000000-0xfebfffff]: 1004 MiB left from 0xc0000000"),
    // Two 2^51 BARs: the second does not fit below MAXPHYADDR.
    (devices("{ index: 0, size: 0x8000000000000 }", "{ index: 2, size: 0x8000000000000 }"),
     "m.yaml:6:11: machine: BAR 2 of nic0 cannot be placed in the 64-bit MMIO window: pci_assign_resource: "
       + "no space for 2 PiB aligned to its size in window [0x4000000000-0xfffffffffffff]: 0 bytes left from 0x10000000000000"),
    (devices("{ index: 0, size: 0x1000 }", "{ index: 1, size: 0x1000 }"),
     "m.yaml:6:11: machine: BAR 1 of nic0: register 1 is the upper half of 64-bit BAR 0"),
    (devices("{ index: 0, size: 0x1000, is64: false }", "{ index: 5, size: 0x1000 }"),
     "m.yaml:6:11: machine: BAR 5 of nic0: BAR 5 cannot be 64-bit: a 64-bit BAR takes two registers and there is no register 6"),
    (devices("{ index: 0, size: 0x2000, msix_table: [0x1000, 0x1001] }"),
     "m.yaml:5:11: machine: BAR 0 of nic0: msix_table [0x1000, +0x1001) is empty or does not fit in the BAR's 0x2000 bytes"),
  ])
  func barErrors(yaml: String, message: String) throws {
    #expect(try Self.buildError(yaml) == message)
  }

  @Test("32-bit BARs go below 4 GiB, 64-bit ones in the 64-bit window, each aligned to its size")
  func placement() throws {
    let yaml = """
      machine:
        devices:
          - name: nic0
            bars:
              - { index: 0, size: 0x200000, is64: false }
              - { index: 1, size: 0x1000, is64: false }
              - { index: 2, size: 0x4000 }
          - name: nic1
            bars: [ { index: 0, size: 0x1000000000 } ]
      steps: []
      """
    let scenario = try ScenarioParser.parse(yaml, file: "m.yaml")
    let machine = try Machine(configuration: scenario.machine)
    let bases = machine.vfio.devices.values.sorted { $0.id < $1.id }.map { $0.function.bars.map(\.base) }
    #expect(bases == [[HPA(0xC000_0000), HPA(0xC020_0000), HPA(0x40_0000_0000)], [HPA(0x50_0000_0000)]])
  }

  @Test("a VM that cannot be created says which ioctl failed and why, at the VM's line")
  func tooManyVMs() throws {
    let vms = (0..<1100).map { "    - { name: td\($0), type: tdx }\n" }.joined()
    let message = try Self.buildError("machine:\n  vms:\n" + vms + "steps: []\n")
    // fds 3...1023 hold the first 1021 VMs; td1021 is on line 3 + 1021.
    #expect(message == "m.yaml:1024:7: machine: VM td1021 cannot be created: KVM_CREATE_VM failed with errno EMFILE "
            + "(alloc_fd: every fd below the process's limit of 1024 (RLIMIT_NOFILE) is open: 1021 files and the 3 standard streams)")
  }

  @Test("a duplicate VM name in a hand-built scenario points at the second VM")
  func duplicateVM() throws {
    var positions = MachinePositions()
    positions.vms = [SourcePosition(file: "h", line: 2, column: 3), SourcePosition(file: "h", line: 3, column: 3)]
    let scenario = Scenario(name: "h", variant: nil,
                            machine: MachineConfiguration(vms: [VMConfiguration(name: "v", type: .default),
                                                                VMConfiguration(name: "v", type: .tdx)]),
                            machinePosition: SourcePosition(file: "h", line: 1, column: 1), steps: [], concurrent: [],
                            machinePositions: positions)
    #expect(throws: ScenarioError(SourcePosition(file: "h", line: 3, column: 3), "machine: VM v is defined twice")) {
      try ScenarioRunner.run(scenario)
    }
  }
}
