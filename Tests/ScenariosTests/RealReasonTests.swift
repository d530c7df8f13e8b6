import Testing
import KernelCore
@testable import Scenarios

/// The model's own refusals, not scripted ones, reach the text report, the text and Perfetto
/// traces and the JSON with their function and check: a closed fd, the exporter's get_pfn, and
/// raw SEAMCALLs the module refuses.
@Suite struct RealReasonTests {
  static let yaml = """
    name: reasons
    machine:
      devices:
        - { name: nic0, bars: [{ index: 0, size: 0x200000 }] }
      vms:
        - { name: td0, type: tdx }
    steps:
      - { op: tdx.seamcall, leaf: 137, args: [] }
      - { op: tdx.seamcall, leaf: 9999 }
      - { op: vfio.open, device: nic0, as: dev }
      - { op: vfio.bind_iommufd, fd: dev }
      - { op: vfio.dma_buf, fd: dev, region_index: 0, ranges: [[0, 0x200000]], as: buf }
      - { op: dmabuf.attach, fd: buf, as: at }
      - { op: dmabuf.get_pfn, attachment: at, pgoff: 0x1000 }
      - { op: vfio.set_memory_decode, fd: dev, enable: false }
      - { op: dmabuf.get_pfn, attachment: at, pgoff: 0 }
      - { op: vfio.close, fd: dev }
      - { op: vfio.region_info, fd: dev, region_index: 0 }
    """

  static let expected: [(step: Int, result: String, function: String, check: String)] = [
    (0, "tdx TDX_OPERAND_INVALID (operand 0x2)", "TDH.DEVIF.CREATE", "check_lock_and_map_explicit_tdr: 0x0 names no TDR page (0, or past 32 bits)"),
    (1, "tdx TDX_OPERAND_INVALID", "tdx_vmm_dispatcher", "SEAMCALL leaf 9999 is not supported"),
    (6, "errno EINVAL", "vfio_pci_dma_buf_get_pfn", "offset 0x1000000 >= priv->dmabuf->size 0x200000 (pgoff 0x1000)"),
    (8, "errno ENODEV", "vfio_pci_dma_buf_get_pfn", "priv->revoked"),
    (10, "errno EBADF", "sys_ioctl", "no file is open at fd 4"),
  ]

  static func report() throws -> RunReport {
    try ScenarioRunner.run(try ScenarioParser.parse(yaml, file: "reasons.yaml"), variant: .reviewed)
  }

  @Test func everyOutputCarriesTheReason() throws {
    let report = try Self.report()
    let text = report.text, trace = report.traceText, perfetto = report.perfettoJSON(), json = report.jsonString()
    for e in Self.expected {
      let step = report.steps[e.step]
      #expect(step.result.text == e.result)
      #expect(step.result.reason == StepResult.Reason(function: e.function, check: e.check))
      let line = "= \(e.result) (\(e.function): \(e.check))"
      #expect(text.contains("      \(line)\n"), "text: \(line)")
      #expect(trace.contains(" \(line)\n"), "trace: \(line)")
      #expect(perfetto.contains("\"reason\":\"\(e.function): \(e.check)\""), "perfetto: \(e.function)")
      #expect(json.contains("\"check\" : \"\(e.check)\""), "json: \(e.check)")
    }
  }
}
