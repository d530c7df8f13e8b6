/// Scenarios embedded in the binary. Plain `pmmio` runs ``defaultYAML``.
public enum BuiltinScenarios {
  /// The file name positions in the default scenario carry.
  public static let defaultFile = "<builtin:default>"

  /// The seed's whole flow for a TD: a TDISP device bound private, its interface locked and
  /// bound to the TD in the TDX module, its BAR exported as a private dma-buf and put in a
  /// memslot; the guest's first touch faults, KVM maps it with TDH.MMIO.MAP, the guest accepts
  /// and then reads without an exit. Teardown: the interface is stopped, the buffer revoked,
  /// KVM blocks, tracks and unmaps, the DEVIF goes. Under `--variant rfc-v1` the same steps
  /// show what the posted series gets wrong.
  public static let defaultYAML = """
    name: private-mmio-td
    machine:
      devices:
        - name: nic0
          bars:
            - { index: 0, size: 0x200000 }
          tdisp: true
      vms:
        - { name: td0, type: tdx }
    steps:
      # VFIO binds the device private to the TD (RFC patch 8); the host loses access to its BARs.
      - { op: vfio.open, device: nic0, as: dev, expect: ok }
      - { op: vfio.bind_iommufd, fd: dev, private: true, vm: td0, expect: ok }
      - { op: vfio.region_info, fd: dev, region_index: 0, expect: { flags: [PRIVATE] } }
      - { op: vfio.read, fd: dev, region_index: 0, offset: 0, size: 4, expect: { errno: EINVAL } }
      - { op: vfio.mmap, fd: dev, region_index: 0, expect: { errno: EINVAL } }
      # The TSM locks the interface; the TDX module gets a DEVIF and the MMIO ranges of the report.
      - { op: tdisp.lock, device: nic0, expect: { state: CONFIG_LOCKED } }
      - { op: tdx.devif_create, vm: td0, device: nic0, expect: ok }
      - { op: tdx.mmio_mt_add, device: nic0, expect: ok }
      - { op: tdisp.start, device: nic0, nonce: echo, expect: { state: RUN } }
      # The BAR leaves VFIO as a private dma-buf and becomes a memslot of the TD (patches 4-10).
      - { op: vfio.dma_buf, fd: dev, region_index: 0, ranges: [[0, 0x200000]], as: buf, expect: ok }
      - { op: kvm.set_user_memory_region2, vm: td0, slot: 1, flags: [vfio_dmabuf],
          guest_phys_addr: 0x80000000, memory_size: 0x200000, fd: buf, expect: ok }
      # The VMM converts the BAR's GPAs to private: a private fault maps only where the memory
      # attributes say private (kvm_mmu_faultin_pfn(); RFC "Handle page fault for private MMIO").
      - { op: kvm.set_memory_attributes, vm: td0, address: 0x80000000, size: 0x200000, attributes: private, expect: ok }
      # The guest accepts (EPT violation, fault, TDH.MMIO.MAP, TDG.MMIO.ACCEPT), then reads a register.
      - { op: guest.accept_mmio, vm: td0, gpa: 0x80000000, expect: ok }
      - { op: guest.read, vm: td0, gpa: 0x80000010, size: 4, expect: { fault: already_mapped, value: 0x10 } }
      - { op: guest.accept_mmio, vm: td0, gpa: 0x80001000, expect: ok }
      - { op: guest.write, vm: td0, gpa: 0x80001008, size: 8, expect: { fault: already_mapped } }
      # Teardown. Stopping the interface ends the TD's trust in it: the buffer is revoked and
      # KVM's move_notify runs TDH.MMIO.BLOCK, TDH.MEM.TRACK, the vCPU kick and TDH.MMIO.UNMAP.
      - { op: tdisp.stop, device: nic0, expect: { state: CONFIG_UNLOCKED } }
      - { op: guest.read, vm: td0, gpa: 0x80000000, size: 4, expect: { fault: eio } }
      - { op: kvm.set_user_memory_region2, vm: td0, slot: 1, flags: [vfio_dmabuf],
          guest_phys_addr: 0x80000000, memory_size: 0, expect: ok }
      - { op: tdx.devif_remove, vm: td0, device: nic0, expect: ok }
      - { op: dmabuf.close, fd: buf, expect: ok }
      - { op: vfio.close, fd: dev, expect: ok }
      - { op: vfio.region_info, fd: dev, region_index: 0, expect: { errno: EBADF } }
    """

  /// Every built-in scenario: its name, one line on what it shows, its YAML. `pmmio scenarios`
  /// lists them; each is also in `Examples/` as `NAME.yaml`, byte for byte.
  public static let all: [(name: String, summary: String, yaml: String)] = [
    ("default", "a TDISP device's BAR as private MMIO of a TD, end to end: bind, lock, export, map, accept, revoke, teardown",
     defaultYAML + "\n"),
  ] + RaceScenarios.all.map { (name: $0.name, summary: "race: \($0.question)", yaml: $0.yaml) }

  /// The built-in scenario called `name`.
  public static func named(_ name: String) -> String? { all.first { $0.name == name }?.yaml }

  /// ``defaultYAML``, parsed.
  public static func defaultScenario() throws(ScenarioError) -> Scenario {
    try ScenarioParser.parse(defaultYAML, file: defaultFile)
  }
}
