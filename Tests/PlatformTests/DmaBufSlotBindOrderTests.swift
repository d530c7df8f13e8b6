import Testing
import KernelCore
import DmaBuf
@testable import Platform

/// A dma-buf slot past the largest GFN, in RFC patch 6's order: `__kvm_set_memory_region()`
/// calls `kvm_vfio_dmabuf_bind()` (`dma_buf_get()` -> `EBADF`; `size != dmabuf->size` ->
/// `EINVAL`; then patch 10's sanity checks and the attach) before `kvm_set_memslot()` ->
/// `kvm_arch_prepare_memory_region()` (last GFN past `kvm_mmu_max_gfn()` -> `EINVAL`). The
/// bind's errnos come first; the GFN check's `EINVAL` only once the bind's checks pass, and
/// then nothing is attached.
@Suite struct DmaBufSlotBindOrderTests {
  /// GPA 1 << 52 (GFN 1 << 40): past `kvm_mmu_max_gfn()` for any MAXPHYADDR up to 52.
  static let pastMaxGPA: UInt64 = 1 << 52

  enum Case: String, CaseIterable, Sendable { case unopenedFD, sizeMismatch, bindChecksPass }

  static let arguments: [(Variant, Case)] = Variant.allCases.flatMap { v in Case.allCases.map { (v, $0) } }

  @Test(arguments: arguments)
  func theBindIsCheckedBeforeTheMaxGFN(_ variant: Variant, _ c: Case) throws {
    var bench = try Bench(variant)
    let dev = try bench.openDevice()
    try bench.bindToTD()
    let buf = try bench.exportBAR0(dev)
    let buffer: DmaBufID
    guard case .dmaBuf(let id) = try bench.machine.files.lookup(buf) else { Issue.record("not a dma-buf"); return }
    buffer = id
    var region = MemoryRegion2(slot: 1, flags: vfioDmaBuf, guestPhysAddr: Self.pastMaxGPA,
                               memorySize: Bench.bar0, guestMemfd: buf.rawValue)
    // The refusing function: dma_buf_get() for an fd that is not open.
    let expected: (Errno, String?)
    switch c {
    case .unopenedFD: region.guestMemfd = 99; expected = (.EBADF, "dma_buf_get")
    case .sizeMismatch: region.memorySize = 2 * Bench.bar0; expected = (.EINVAL, "kvm_vfio_dmabuf_bind")
    case .bindChecksPass: expected = (.EINVAL, "kvm_arch_prepare_memory_region")
    }
    let before = bench.machine.dmabufCore.buffer(buffer)
    let result = bench.machine.perform(.kvmSetUserMemoryRegion2(vm: bench.td, region: region))
    #expect(result == .failure(.errno(expected.0)))
    #expect(result.failureReason?.function == expected.1)
    // Nothing attached, no slot.
    #expect(bench.machine.dmabufCore.buffer(buffer) == before)
    #expect(bench.machine.dmabufCore.buffer(buffer)?.attachments.isEmpty == true)
    #expect(bench.vm(bench.td)?.memslots.isEmpty == true)
  }
}
