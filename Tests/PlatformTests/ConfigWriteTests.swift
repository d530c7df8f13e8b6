import Testing
import KernelCore
import DmaBuf
import VFIO
import KVM
@testable import Platform

/// A write of PCI_COMMAND through VFIO's config region is the revoke or restore that
/// `vfio_basic_config_write()` runs (`drivers/vfio/pci/vfio_pci_config.c`: memory bit clear ->
/// `vfio_pci_zap_and_down_write_memory_lock()` and `vfio_pci_dma_buf_move(vdev, true)`; set ->
/// restore once `__vfio_pci_memory_enabled()`), the same path as `vfio.set_memory_decode`.
@Suite struct ConfigWriteTests {
  static let config = VFIOPCIRegion.config

  /// (offset, size, value): writes that reach PCI_COMMAND with the memory bit clear.
  @Test(arguments: [(UInt64(4), UInt64(2), UInt64(0x0004)), (4, 4, 0x0010_0000), (0, 8, 0x0000_0000_1af4_1000), (3, 2, 0x00_00)])
  func aCommandWriteWithoutMemoryRevokesAndZaps(offset: UInt64, size: UInt64, value: UInt64) throws {
    var bench = try Bench()
    let (dev, buf) = try bench.sharedSlot()
    #expect(bench.access(bench.plain, gpaBase) == .success(.guestAccess("mapped", value: 0)))
    try bench.ok(.vfioWrite(fd: dev, regionIndex: Self.config, offset: offset, size: size, value: value))
    #expect(bench.priv(buf)?.revoked == true)
    #expect(bench.vm(bench.plain)?.mmu.mappedPages == 0)
    #expect(try bench.ok(.vfioRead(fd: dev, regionIndex: Self.config, offset: 4, size: 2)) == .read(0x4), "bus master stays, memory space goes")
    #expect(bench.violated().isEmpty)
    // Memory space on again: the buffer is restored and the next access maps it.
    try bench.ok(.vfioWrite(fd: dev, regionIndex: Self.config, offset: 4, size: 2, value: 0x2))
    #expect(bench.priv(buf)?.revoked == false)
    #expect(try bench.ok(.vfioRead(fd: dev, regionIndex: Self.config, offset: 4, size: 2)) == .read(0x6), "the model keeps only the memory bit of a command write")
    #expect(bench.access(bench.plain, gpaBase) == .success(.guestAccess("mapped", value: 0)))
    #expect(bench.violated().isEmpty)
  }

  /// A config write that does not reach PCI_COMMAND changes nothing the model keeps, and a
  /// read of the command register shows its value (0x6 for this device after bind:
  /// memory space, which `pci_enable_device()` sets, and bus master).
  @Test func otherConfigBytesAreNotTheCommandRegister() throws {
    var bench = try Bench()
    let (dev, buf) = try bench.sharedSlot()
    #expect(try bench.ok(.vfioRead(fd: dev, regionIndex: Self.config, offset: 4, size: 1)) == .read(0x6))
    #expect(try bench.ok(.vfioRead(fd: dev, regionIndex: Self.config, offset: 0, size: 8)) == .read(0x6 << 32))
    let before = bench.machine
    try bench.ok(.vfioWrite(fd: dev, regionIndex: Self.config, offset: 0x40, size: 4, value: 0))
    try bench.ok(.vfioWrite(fd: dev, regionIndex: Self.config, offset: 6, size: 2, value: 0))
    #expect(bench.machine == before)
    #expect(bench.priv(buf)?.revoked == false)
  }
}
