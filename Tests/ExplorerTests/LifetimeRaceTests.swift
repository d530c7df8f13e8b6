import Testing
import KernelCore
@testable import Explorer
import Platform
import Scenarios

/// Races on the lifetime of a VM and of a dma-buf, explored in full.
///
/// A VM goes only when its last reference does (`kvm_destroy_vm()` from `kvm_put_kvm()`): an
/// ioctl in flight holds the VM fd's file (`fdget()`), `KVM_RUN` its vCPU's file. A dma-buf
/// whose last file reference is put is being released: the revoke passes it by
/// (`get_file_active()` in `vfio_pci_dma_buf_move()`), and nothing can reach it any more.
@Suite struct LifetimeRaceTests {
  struct Case: CustomTestStringConvertible, Sendable {
    let name: String
    let variant: Variant
    let yaml: String
    /// nil: complete and safe.
    var invariant: String?
    var length: Int?
    var testDescription: String { "\(name) (\(variant.rawValue))" }
  }

  static let device = """
    machine:
      devices:
        - name: nic0
          bars:
            - { index: 0, size: 0x200000 }
      vms:
        - { name: vm0, type: default }
    """

  static let exported = device + """

    steps:
      - { op: vfio.open, device: nic0, as: dev, expect: ok }
      - { op: vfio.bind_iommufd, fd: dev, private: false, expect: ok }
      - { op: vfio.dma_buf, fd: dev, region_index: 0, ranges: [[0, 0x200000]], as: buf, expect: ok }

    """

  /// The VM fd closed while a memslot update is between its regions.
  static let destroyVsMemslot = "name: destroy-vs-memslot\n" + exported + """
    concurrent:
      - [ { op: kvm.set_user_memory_region2, vm: vm0, slot: 1, flags: [vfio_dmabuf],
            guest_phys_addr: 0x80000000, memory_size: 0x200000, fd: buf } ]
      - [ { op: kvm.destroy_vm, vm: vm0 } ]
    """

  /// The VM fd closed while a vCPU faults on a dma-buf slot.
  static let destroyVsAccess = "name: destroy-vs-access\n" + exported + """
      - { op: kvm.set_user_memory_region2, vm: vm0, slot: 1, flags: [vfio_dmabuf], guest_phys_addr: 0x80000000,
          memory_size: 0x200000, fd: buf, expect: ok }
    concurrent:
      - [ { op: guest.read, vm: vm0, gpa: 0x80000000, size: 4, vcpu: 0 } ]
      - [ { op: kvm.destroy_vm, vm: vm0 } ]
    """

  /// The same on user memory, which both variants accept.
  static let destroyVsRAMAccess = "name: destroy-vs-ram-access\n" + device + """

    steps:
      - { op: kvm.set_user_memory_region2, vm: vm0, slot: 1, guest_phys_addr: 0x80000000, memory_size: 0x200000,
          userspace_addr: 0x7f0000000000, expect: ok }
    concurrent:
      - [ { op: guest.read, vm: vm0, gpa: 0x80000000, size: 4, vcpu: 0 } ]
      - [ { op: kvm.destroy_vm, vm: vm0 } ]
    """

  /// The buffer's last fd closed while a revoke walks the device's buffers.
  static func dmabufCloseVs(_ name: String, _ revoke: String) -> String {
    "name: dmabuf-close-vs-\(name)\n" + exported + """
    concurrent:
      - [ { op: dmabuf.close, fd: buf } ]
      - [ \(revoke) ]
    """
  }

  static let cases: [Case] = [
    Case(name: "destroy-vs-memslot", variant: .reviewed, yaml: destroyVsMemslot),
    Case(name: "destroy-vs-memslot", variant: .rfcV1, yaml: destroyVsMemslot),
    Case(name: "destroy-vs-access", variant: .reviewed, yaml: destroyVsAccess),
    Case(name: "destroy-vs-ram-access", variant: .reviewed, yaml: destroyVsRAMAccess),
    Case(name: "destroy-vs-ram-access", variant: .rfcV1, yaml: destroyVsRAMAccess),
  ] + Variant.allCases.flatMap { variant in
    [
      Case(name: "dmabuf-close-vs-d3hot", variant: variant,
           yaml: dmabufCloseVs("d3hot", "{ op: vfio.set_power, fd: dev, state: D3hot }")),
      Case(name: "dmabuf-close-vs-decode-off", variant: variant,
           yaml: dmabufCloseVs("decode-off", "{ op: vfio.set_memory_decode, fd: dev, enable: false }")),
    ]
  } + [
    Case(name: "dmabuf-close-vs-vfio-close", variant: .reviewed,
         yaml: dmabufCloseVs("vfio-close", "{ op: vfio.close, fd: dev }")),
    // The posted close order (README "close-vs-fault"): vfio_pci_core_close_device() disables
    // and resets the function before vfio_pci_dma_buf_cleanup() revokes, so the buffer is live
    // with decode off in between, whether or not its own close races it.
    Case(name: "dmabuf-close-vs-vfio-close", variant: .rfcV1,
         yaml: dmabufCloseVs("vfio-close", "{ op: vfio.close, fd: dev }"),
         invariant: "DecodeOffImpliesRevoked", length: 3),
  ]

  @Test(arguments: cases)
  func outcome(_ c: Case) throws {
    let scenario = try ScenarioParser.parse(c.yaml, file: "\(c.name).yaml")
    let report = try Explorer.explore(scenario, variant: c.variant)
    #expect(report.finding?.invariant == c.invariant, "\(report.finding?.message ?? "nothing found")")
    #expect(report.finding?.steps.count == c.length)
    if c.invariant == nil {
      #expect(report.finding == nil)
      #expect(report.complete)
      #expect(report.exitStatus == 0)
    }
  }
}
