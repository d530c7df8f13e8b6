/// Scenarios embedded in the binary. Plain `pmmio` runs ``defaultYAML``.
public enum BuiltinScenarios {
  /// The file name positions in the default scenario carry.
  public static let defaultFile = "<builtin:default>"

  /// The seed's flow, VFIO side: a TDISP device bound private to a TD, its BAR exported as a
  /// private dma-buf, an importer asking for PFNs, the host refused, and an FLR through config
  /// space revoking the buffer.
  public static let defaultYAML = """
    name: private-mmio-vfio
    machine:
      devices:
        - name: nic0
          bars:
            - { index: 0, size: 0x200000 }
          tdisp: true
      vms:
        - { name: td0, type: tdx }
    steps:
      # The device is bound private to the TD (RFC patch 8) and its interface locked and started.
      - { op: vfio.open, device: nic0, as: dev, expect: ok }
      - { op: vfio.bind_iommufd, fd: dev, private: true, vm: td0, expect: ok }
      - { op: tdisp.lock, device: nic0, expect: { state: CONFIG_LOCKED } }
      - { op: tdisp.start, device: nic0, nonce: echo, expect: { state: RUN } }
      # Its regions say PRIVATE, and the host can neither read nor map them.
      - { op: vfio.region_info, fd: dev, region_index: 0, expect: { flags: [READ, WRITE, MMAP, PRIVATE] } }
      - { op: vfio.read, fd: dev, region_index: 0, offset: 0, size: 4, expect: { errno: EINVAL } }
      - { op: vfio.mmap, fd: dev, region_index: 0, expect: { errno: EINVAL } }
      # The BAR leaves VFIO as a private dma-buf; an importer gets PFNs, never a host mapping.
      - { op: vfio.dma_buf, fd: dev, region_index: 0, ranges: [[0, 0x200000]], as: buf, expect: ok }
      - { op: dmabuf.attach, fd: buf, importer: kvm, dynamic: true, peer2peer: true, as: kvm_att, expect: ok }
      - { op: dmabuf.get_pfn, attachment: kvm_att, pgoff: 0, expect: ok }
      - { op: dmabuf.get_pfn, attachment: kvm_att, pgoff: 0x1ff, expect: ok }
      - { op: dmabuf.get_pfn, attachment: kvm_att, pgoff: 0x200, expect: { errno: EINVAL } }
      # A guest-initiated FLR through config space revokes the buffer: lookups fail ENODEV.
      - { op: vfio.flr, fd: dev, expect: ok }
      - { op: dmabuf.get_pfn, attachment: kvm_att, pgoff: 0, expect: { errno: ENODEV } }
      # Teardown, then a closed fd is EBADF.
      - { op: dmabuf.detach, attachment: kvm_att, expect: ok }
      - { op: dmabuf.close, fd: buf, expect: ok }
      - { op: vfio.close, fd: dev, expect: ok }
      - { op: vfio.region_info, fd: dev, region_index: 0, expect: { errno: EBADF } }
    """

  /// ``defaultYAML``, parsed.
  public static func defaultScenario() throws(ScenarioError) -> Scenario {
    try ScenarioParser.parse(defaultYAML, file: defaultFile)
  }
}
