import Testing
import KernelCore
import DmaBuf
import VFIO
import KVM
@testable import Platform

/// `KVM_MEM_VFIO_DMABUF` (bit 3).
let vfioDmaBuf: UInt32 = 1 << 3
let gpaBase: UInt64 = 0x8000_0000

extension Bench {
  /// A shared device's BAR0 exported and put in slot 1 of the default VM at 2 GiB.
  mutating func sharedSlot(_ variant: Variant = .reviewed) throws -> (dev: FD, buf: FD) {
    let dev = try openDevice(private: false)
    let buf = try exportBAR0(dev)
    try ok(.kvmSetUserMemoryRegion2(vm: plain, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: Bench.bar0, guestMemfd: buf.rawValue)))
    return (dev, buf)
  }

  func vm(_ fd: FD) -> VirtualMachine? {
    guard case .vm(let id)? = try? machine.files.lookup(fd) else { return nil }
    return machine.kvm.vms[id]
  }

  mutating func access(_ vm: FD, _ gpa: UInt64, write: Bool = false) -> OpResult {
    machine.perform(write ? .guestWrite(vm: vm, gpa: GPA(gpa), size: 4) : .guestRead(vm: vm, gpa: GPA(gpa), size: 4))
  }
}

/// `KVM_SET_USER_MEMORY_REGION2` with a dma-buf, as the platform resolves and checks it.
@Suite struct DmaBufSlotTests {
  struct Case: CustomTestStringConvertible, Sendable {
    let label: String
    let variant: Variant
    /// Which VM, whether the device is private, offset and size of the slot.
    let tdx: Bool
    let isPrivate: Bool
    var offset: UInt64 = 0
    var size: UInt64 = Bench.bar0
    var fd: FDChoice = .buffer
    let expected: Errno?
    var testDescription: String { "\(variant) \(label)" }
  }
  enum FDChoice: Sendable { case buffer, device, closed }

  static let cases: [Case] = [
    Case(label: "shared buffer, default VM", variant: .reviewed, tdx: false, isPrivate: false, expected: nil),
    Case(label: "shared buffer, default VM", variant: .rfcV1, tdx: false, isPrivate: false, expected: .EINVAL),
    Case(label: "private buffer, its TD", variant: .reviewed, tdx: true, isPrivate: true, expected: nil),
    Case(label: "private buffer, its TD", variant: .rfcV1, tdx: true, isPrivate: true, expected: nil),
    Case(label: "shared buffer, a TD", variant: .rfcV1, tdx: true, isPrivate: false, expected: .EINVAL),
    Case(label: "shared buffer, a TD", variant: .reviewed, tdx: true, isPrivate: false, expected: .EINVAL),
    Case(label: "private buffer, default VM", variant: .reviewed, tdx: false, isPrivate: true, expected: .EINVAL),
    Case(label: "slice", variant: .reviewed, tdx: false, isPrivate: false, offset: 0x1000, size: 0x1000, expected: nil),
    Case(label: "slice at the end", variant: .reviewed, tdx: false, isPrivate: false, offset: 0x1F_F000, size: 0x1000, expected: nil),
    Case(label: "slice past the end", variant: .reviewed, tdx: false, isPrivate: false, offset: 0x1F_F000, size: 0x2000, expected: .EINVAL),
    Case(label: "smaller than the buffer", variant: .rfcV1, tdx: true, isPrivate: true, size: 0x1000, expected: .EINVAL),
    Case(label: "offset", variant: .rfcV1, tdx: true, isPrivate: true, offset: 0x1000, size: 0x1000, expected: .EINVAL),
    Case(label: "a device fd", variant: .reviewed, tdx: false, isPrivate: false, fd: .device, expected: .EINVAL),
    Case(label: "a closed fd", variant: .reviewed, tdx: false, isPrivate: false, fd: .closed, expected: .EBADF),
  ]

  @Test(arguments: cases)
  func slot(c: Case) throws {
    var bench = try Bench(c.variant)
    let dev = try bench.openDevice(private: c.isPrivate)
    let buf = try bench.exportBAR0(dev)
    let fd: FD = switch c.fd { case .buffer: buf; case .device: dev; case .closed: FD(60) }
    let vm = c.tdx ? bench.td : bench.plain
    let before = bench.machine
    let result = bench.machine.perform(.kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: c.size, guestMemfdOffset: c.offset,
      guestMemfd: fd.rawValue)))
    if let expected = c.expected {
      #expect(result == .failure(.errno(expected)))
      #expect(bench.machine == before)
    } else {
      #expect(result == .success(.none))
      #expect(bench.vm(vm)?.bindings.count == 1)
      #expect(bench.machine.dmabufCore.buffer(try #require(bench.priv(buf)?.buffer))?.attachments.count == 1)
    }
    #expect(bench.violated().isEmpty)
  }

  @Test(arguments: Variant.allCases)
  func deletingTheSlotDetaches(variant: Variant) throws {
    var bench = try Bench(variant)
    let dev = try bench.openDevice(private: true)
    let buf = try bench.exportBAR0(dev)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: Bench.bar0, guestMemfd: buf.rawValue)))
    try bench.ok(.dmabufClose(fd: buf))           // the slot keeps the buffer alive
    #expect(bench.machine.dmabufCore.buffers.count == 1)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: 0)))
    #expect(bench.machine.dmabufCore.buffers.isEmpty)
    #expect(bench.vm(bench.td)?.bindings.isEmpty == true)
    #expect(bench.violated().isEmpty)
  }
}

/// Guest accesses through a dma-buf slot on a default VM: fault, map, revoke, remap.
@Suite struct SharedAccessTests {
  @Test func faultMapsAtTheExportersOrderAndAgainAfterRestore() throws {
    var bench = try Bench(.reviewed)
    let (dev, _) = try bench.sharedSlot()
    #expect(bench.access(bench.plain, gpaBase + 0x1234) == .success(.guestAccess("mapped", value: 0x1234)))
    let leaf = try #require(bench.vm(bench.plain)?.mmu.lookup(GPA(gpaBase).gfn))
    #expect(leaf.level == .level2M)                     // a 2 MiB aligned BAR, order 9 from the exporter
    #expect(leaf.spte.pfn == bench.bar0Base.pfn)
    #expect(bench.access(bench.plain, gpaBase + 0x10_0000) == .success(.guestAccess("already_mapped", value: 0x10_0000)))
    #expect(bench.access(bench.plain, 0x1000) == .success(.guestAccess("exit_mmio")))   // no slot
    try bench.ok(.vfioSetMemoryDecode(fd: dev, enable: false))
    #expect(bench.vm(bench.plain)?.mmu.mappedPages == 0)                               // zapped by move_notify
    #expect(bench.access(bench.plain, gpaBase) == .failure(.errno(.EIO)))              // the exporter says ENODEV
    try bench.ok(.vfioSetMemoryDecode(fd: dev, enable: true))
    #expect(bench.access(bench.plain, gpaBase) == .success(.guestAccess("mapped", value: 0)))
    #expect(bench.violated().isEmpty)
  }

  @Test func rfcMapsAt4KOnly() throws {
    var bench = try Bench(.rfcV1)
    let dev = try bench.openDevice(private: true)
    try bench.bindToTD()
    let buf = try bench.exportBAR0(dev)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.td, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: Bench.bar0, guestMemfd: buf.rawValue)))
    try bench.ok(.kvmSetMemoryAttributes(vm: bench.td, address: gpaBase, size: Bench.bar0, attributes: 1 << 3, flags: 0))
    let accepted = bench.machine.perform(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase + 0x5000), expectHPA: nil))
    #expect(accepted == .success(.guestAccess("accepted")))
    let leaf = try #require(bench.vm(bench.td)?.mmu.lookup(GPA(gpaBase + 0x5000).gfn))
    #expect(leaf.level == .level4K)
    #expect(leaf.spte.pfn == PFN(bench.bar0Base.pfn.rawValue + 5))
  }

  @Test func readOnlyAndPlainSlots() throws {
    var bench = try Bench(.reviewed)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.plain, region: MemoryRegion2(
      slot: 2, flags: 1 << 1, guestPhysAddr: 0x10_0000, memorySize: 0x1000, userspaceAddr: 0x7000_0000)))
    #expect(bench.access(bench.plain, 0x10_0000) == .success(.guestAccess("mapped")))
    #expect(bench.access(bench.plain, 0x10_0000, write: true) == .success(.guestAccess("exit_mmio")))
    #expect(bench.violated().isEmpty)
  }

  @Test func accessRulesAndDeadVM() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.sharedSlot()
    #expect(bench.machine.perform(.guestRead(vm: bench.plain, gpa: GPA(gpaBase + 0xFFE), size: 4)) == .failure(.errno(.EINVAL)))
    #expect(bench.machine.perform(.guestRead(vm: bench.plain, gpa: GPA(gpaBase), size: 3)) == .failure(.errno(.EINVAL)))
    let bare = try bench.fd(.kvmCreateVM(type: .default))
    #expect(bench.access(bare, 0x1000) == .failure(.errno(.EINVAL)))                  // no vCPU to run
    #expect(bench.errno(.kvmCreateVCPU(vm: bare, id: 0)) == nil)
    #expect(bench.errno(.kvmCreateVCPU(vm: bare, id: 0)) == .EEXIST)
    #expect(bench.errno(.kvmCreateVCPU(vm: bare, id: 4096)) == .EINVAL)
    #expect(bench.errno(.kvmCreateVCPU(vm: FD(70), id: 1)) == .EBADF)
  }
}

/// The RFC's slot-move bug: the old slot is freed without detaching, and the next revoke's
/// `move_notify` works on the freed slot.
@Suite struct SlotMoveTests {
  @Test(arguments: Variant.allCases)
  func moveADmaBufSlot(variant: Variant) throws {
    var bench = try Bench(variant)
    let dev = try bench.openDevice(private: true)
    let buf = try bench.exportBAR0(dev)
    let slot = MemoryRegion2(slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: Bench.bar0, guestMemfd: buf.rawValue)
    try bench.ok(.kvmSetUserMemoryRegion2(vm: bench.td, region: slot))
    var moved = slot
    moved.guestPhysAddr = gpaBase + 0x4000_0000
    let result = bench.machine.perform(.kvmSetUserMemoryRegion2(vm: bench.td, region: moved))
    switch variant {
    case .reviewed:
      #expect(result == .failure(.errno(.EINVAL)))       // immutable, like guest_memfd slots
      #expect(bench.violated().isEmpty)
    case .rfcV1:
      #expect(result == .success(.none))
      #expect(bench.violated() == ["NoDanglingBinding"])
      try bench.ok(.tdispStop(device: "nic0"))           // the RFC does not revoke on STOP
      try bench.ok(.vfioReset(fd: dev))
      // The restore after the reset makes the buffer live for an unlocked interface again;
      // nothing maps it here, so only the dangling binding and its stale move_notify show.
      #expect(bench.violated() == ["NoDanglingBinding", "NoMoveNotifyOnFreedSlot"])
    }
  }
}

/// Closing the VM fd: every slot detaches and the TD is torn down.
@Suite struct DestroyTests {
  @Test func destroyDetachesAndLaterOpsAreEBADF() throws {
    var bench = try Bench(.reviewed)
    let (_, buf) = try bench.sharedSlot()
    try bench.ok(.kvmDestroyVM(vm: bench.plain))
    #expect(bench.machine.dmabufCore.buffer(try #require(bench.priv(buf)?.buffer))?.attachments.isEmpty == true)
    #expect(bench.errno(.guestRead(vm: bench.plain, gpa: GPA(gpaBase), size: 4)) == .EBADF)
    #expect(bench.errno(.kvmDestroyVM(vm: bench.plain)) == .EBADF)
    #expect(bench.violated().isEmpty)
    // close(2) takes any open fd: naming it a VM changes nothing.
    #expect(bench.errno(.kvmDestroyVM(vm: buf)) == nil)
    #expect(bench.errno(.dmabufClose(fd: buf)) == .EBADF)
  }
}
