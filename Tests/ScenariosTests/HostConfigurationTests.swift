import Testing
import KernelCore
import KVM
import Platform
@testable import Scenarios

/// `machine: host:`: what the host's KVM offers, parsed with positions for bad values.
@Suite struct HostConfigurationTests {
  @Test func absentIsTheTypicalHost() throws {
    let s = try ScenarioParser.parse("steps: []\n", file: "h.yaml")
    #expect(s.machine.host == .typical)
    #expect(HostCapabilities.typical.maxGFN == GFN((1 << 34) - 1) && HostCapabilities.typical.tdGPAWidth == 48)
  }

  @Test func everyKeyIsRead() throws {
    let yaml = """
      machine:
        host: { smm: false, maxphyaddr: 52, vm_types: [default, tdx], memory_attributes: false }
      steps: []
      """
    let host = try ScenarioParser.parse(yaml, file: "h.yaml").machine.host
    #expect(host == HostCapabilities(smm: false, maxPhysAddr: 52, vmTypes: [.default, .tdx], memoryAttributes: false))
    #expect(host.tdGPAWidth == 52 && host.limits(for: .tdx).gfnDirectBits == 1 << (51 - 12))
  }

  @Test(arguments: [
    ("machine:\n  host: { maxphyaddr: 60 }\nsteps: []\n", "h.yaml:2:23: 'maxphyaddr' is 60: x86-64 MAXPHYADDR is between 32 and 52"),
    ("machine:\n  host: { vm_types: [tdx] }\nsteps: []\n", "h.yaml:2:21: 'vm_types' must contain default: every x86 KVM offers KVM_X86_DEFAULT_VM"),
    ("machine:\n  host: { vm_types: [default, sev] }\nsteps: []\n", "h.yaml:2:31: unknown VM type 'sev' (expected: default, sw_protected, tdx)"),
    ("machine:\n  host: { smp: true }\nsteps: []\n", "h.yaml:2:11: unknown key 'smp' in host: did you mean 'smm'? (expected: smm, maxphyaddr, vm_types, memory_attributes)"),
  ])
  func badHostsAreRefusedAtTheirPosition(yaml: String, error: String) {
    #expect(throws: ScenarioError.self) { try ScenarioParser.parse(yaml, file: "h.yaml") }
    do { _ = try ScenarioParser.parse(yaml, file: "h.yaml") } catch { #expect("\(error)" == error.description) }
    #expect(Self.message(yaml) == error)
  }

  static func message(_ yaml: String) -> String? {
    do { _ = try ScenarioParser.parse(yaml, file: "h.yaml"); return nil } catch { return error.description }
  }

  /// A VM of a type the host does not offer cannot be built: KVM_CREATE_VM is EINVAL.
  @Test func aVMTheHostDoesNotOffer() throws {
    let yaml = """
      machine:
        host: { vm_types: [default] }
        vms:
          - { name: sw, type: sw_protected }
      steps: []
      """
    let scenario = try ScenarioParser.parse(yaml, file: "h.yaml")
    #expect(throws: ConfigurationError.self) { try Machine(configuration: scenario.machine) }
  }

  /// The new ops run from a scenario: a software-protected VM, a guest_memfd slot (shared
  /// faults from the user address, private ones from guest_memfd once converted), the
  /// capability's value, the old ioctl refusing GUEST_MEMFD.
  @Test func theNewOpsRun() throws {
    let yaml = """
      machine:
        vms:
          - { name: sw, type: sw_protected }
      steps:
        - { op: kvm.check_extension, cap: vm_types, expect: { value: 0x23 } }
        - { op: kvm.check_extension, vm: sw, cap: guest_memfd_flags, expect: { value: 1 } }
        - { op: kvm.create_guest_memfd, vm: sw, size: 0x200000, as: gmem, expect: ok }
        - { op: kvm.create_guest_memfd, vm: sw, size: 0x200000, flags: 2, expect: { errno: EINVAL } }
        - { op: kvm.set_user_memory_region2, vm: sw, slot: 10, flags: [guest_memfd], guest_phys_addr: 0xc0000000,
            memory_size: 0x200000, userspace_addr: 0x7f0000000000, fd: gmem, expect: ok }
        - { op: guest.read, vm: sw, gpa: 0xc0000000, expect: { fault: mapped } }
        - { op: guest.read, vm: sw, gpa: 0xd0000000, expect: { fault: exit_mmio } }
        - { op: kvm.set_memory_attributes, vm: sw, address: 0xc0000000, size: 0x1000, expect: ok }
        - { op: guest.read, vm: sw, gpa: 0xc0000000, expect: { fault: mapped } }
        - { op: kvm.set_user_memory_region, vm: sw, slot: 11, flags: [guest_memfd], guest_phys_addr: 0x100000000,
            memory_size: 0x1000, expect: { errno: EINVAL } }
      """
    let report = try ScenarioRunner.run(try ScenarioParser.parse(yaml, file: "h.yaml"))
    #expect(report.steps.allSatisfy { $0.verdict == .asExpected }, "\(report.text)")
  }
}
