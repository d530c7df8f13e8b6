import Testing
import KernelCore
import KVM
@testable import Platform

/// Model state of a fully mapped slot, through the whole machine: a 1 GiB slice of a 2 GiB BAR
/// that starts one page in, so no GFN and PFN share a huge-page offset and every page is
/// faulted in at 4 KiB.
@Test func aFullyMapped1GiBSlotAt4KCostsAtMost32BytesAPage() throws {
  let gib: UInt64 = 1 << 30
  var machine = try Machine(configuration: MachineConfiguration(
    devices: [DeviceConfiguration(name: "gpu0", bars: [BARConfiguration(index: 0, size: 2 * gib)])],
    vms: [VMConfiguration(name: "vm0", type: .default)]))
  let vm = try #require(machine.vmFD(named: "vm0"))
  guard case .success(.fd(let dev)) = machine.perform(.vfioOpen(device: "gpu0")) else { Issue.record("open"); return }
  #expect(machine.perform(.vfioBindIOMMUFD(fd: dev, private: false, vm: nil)) == .success(.none))
  guard case .success(.fd(let buf)) = machine.perform(.vfioDmaBuf(
    fd: dev, regionIndex: 0, ranges: [DmaRange(offset: 0x1000, length: gib)], openFlags: 0, flags: 0)) else {
    Issue.record("export"); return
  }
  #expect(machine.perform(.kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(
    slot: 1, flags: 1 << 3, guestPhysAddr: 4 * gib, memorySize: gib, guestMemfd: buf.rawValue))) == .success(.none))
  machine.trace.isEnabled = false
  for page in stride(from: UInt64(0), to: gib, by: Int(pageSize)) {
    // The range starts 0x1000 into the BAR: each register reads its own offset.
    guard machine.perform(.guestRead(vm: vm, gpa: GPA(4 * gib + page), size: 4)) == .success(.guestAccess("mapped", value: 0x1000 + page)) else {
      Issue.record("page \(page >> 12) did not map"); return
    }
  }
  let id = try #require(machine.kvm.vms.keys.first)
  let mmu = try #require(machine.kvm.vms[id]?.mmu)
  #expect(mmu.mappedPages == gib.pages)
  #expect(mmu.leafCount == Int(gib.pages))               // every mapping at 4 KiB
  #expect(mmu.modelBytes <= 32 * Int(gib.pages), "\(mmu.modelBytes) bytes for \(gib.pages) pages")
  #expect(machine.checkInvariants().filter { !$0.held }.isEmpty)
}
