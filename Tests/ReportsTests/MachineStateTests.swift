import Testing
import Foundation
import KernelCore
import Platform
@testable import Reports
import Scenarios

/// The default scenario up to `step`, and the machine's state then.
func defaultState(at step: Int) throws -> MachineState {
  let report = try ScenarioRunner.run(try BuiltinScenarios.defaultScenario(),
                                      options: RunOptions(stopAfterStep: step, keepState: true))
  return try #require(report.state)
}

@Suite struct MachineStateTests {
  @Test func afterBothPagesAreAcceptedEverySubsystemShowsThem() throws {
    let state = try defaultState(at: 15)
    let device = try #require(state.device(named: "nic0"))
    #expect(device.tdi == "RUN")
    #expect(device.command == 0x6 && device.memoryDecode)
    #expect(device.binding == MachineState.Binding(private: true, vm: 1))
    #expect(device.bars == [MachineState.BAR(index: 0, base: 0x40_0000_0000, size: 0x20_0000, is64Bit: true, prefetchable: true)])
    // Step 16 stores 8 bytes of 0xa5 at BAR0 + 0x1008.
    #expect(try defaultState(at: 16).device(named: "nic0")?.bars.first?.writtenBytes == 8)
    #expect(state.files.map(\.kind) == ["vm", "vfio-device", "dma-buf"])

    let buffer = try #require(state.dmabufs.first)
    #expect(buffer.ranges == [MachineState.HostRange(hpa: 0x40_0000_0000, size: 0x20_0000)])
    #expect(buffer.private == true && buffer.revoked == false && buffer.vm == 1)
    #expect(buffer.importers.map(\.slot) == ["1"])

    let vm = try #require(state.vms.first)
    #expect(vm.name == "td0" && vm.type == "tdx" && vm.td == 1)
    #expect(vm.memslots.map(\.flags) == [["vfio_dmabuf"]])
    #expect(vm.mappings == [MachineState.Mapping(gpa: 0x8000_0000, hpa: 0x40_0000_0000, size: 0x2000, level: "4K", count: 2,
                                                 access: "rwx", memoryType: "UC")])
    #expect(vm.mappedPages == 2)
    #expect(state.td(1)?.sept == [MachineState.SEPTRun(gpa: 0x8000_0000, hpa: 0x40_0000_0000, size: 0x2000, level: "4K",
                                                        count: 2, state: "MMIO_MAPPED")])
    #expect(state.septState(td: 1, gpa: 0x8000_1000) == "MMIO_MAPPED")
    #expect(state.septState(td: 1, gpa: 0x8000_2000) == "FREE")
    #expect(state.tdx.devifs.map(\.device) == ["nic0"])
    #expect(state.tdx.devifs.first?.ranges == [MachineState.HostRange(hpa: 0x40_0000_0000, size: 0x20_0000)])
    // 512 MMIOMT pages: 2 mapped into the TD, 510 not.
    #expect(state.tdx.mmiomt.map(\.pages) == [2, 510])
    #expect(state.tdx.mmiomt.first?.gpa == 0x8000_0000)
    #expect(state.tdx.mmiomt.first?.devif == 1)
  }

  @Test func afterTeardownNothingIsLeft() throws {
    let state = try defaultState(at: 22)
    #expect(state.dmabufs.isEmpty)
    #expect(state.tdx.devifs.isEmpty)
    // The MMIOMT keeps its entries for the function; no DEVIF owns them now, none is mapped.
    #expect(state.tdx.mmiomt == [MachineState.MMIOMTRun(hpa: 0x40_0000_0000, pages: 512, level: "4K", count: 512,
                                                         function: 0x108, devif: nil, td: nil, gpa: nil)])
    #expect(state.vms.first?.memslots.isEmpty == true)
    #expect(state.device(named: "nic0")?.tdi == "CONFIG_UNLOCKED")
  }

  @Test("runs collapse only where GPA, HPA and attributes all continue", arguments: [
    ([(0x1000, 0xA000, "MMIO_MAPPED"), (0x2000, 0xB000, "MMIO_MAPPED"), (0x3000, 0xC000, "MMIO_MAPPED")], [3]),
    ([(0x1000, 0xA000, "MMIO_MAPPED"), (0x2000, 0xF000, "MMIO_MAPPED")], [1, 1]),      // the HPA jumps
    ([(0x1000, 0xA000, "MMIO_MAPPED"), (0x3000, 0xB000, "MMIO_MAPPED")], [1, 1]),      // the GPA jumps
    ([(0x1000, 0xA000, "MMIO_MAPPED"), (0x2000, 0xB000, "MMIO_PENDING")], [1, 1]),     // the state changes
  ] as [([(UInt64, UInt64, String)], [UInt64])])
  func collapse(pages: [(UInt64, UInt64, String)], counts: [UInt64]) {
    let single = pages.map { MachineState.SEPTRun(gpa: $0.0, hpa: $0.1, size: 0x1000, level: "4K", count: 1, state: $0.2) }
    #expect(MachineState.septRuns(single).map(\.count) == counts)
    let leaves = pages.map { MachineState.Mapping(gpa: $0.0, hpa: $0.1, size: 0x1000, level: "4K", count: 1, access: "rw",
                                                  memoryType: $0.2 == "MMIO_MAPPED" ? "UC" : "WB") }
    #expect(MachineState.mappingRuns(leaves).map(\.count) == counts)
  }

  @Test func aMappedSixtyFourGiBBARIsAFewLines() throws {
    let yaml = """
      machine:
        devices: [ { name: gpu, bars: [ { index: 0, size: 0x1000000000 } ] } ]
        vms: [ { name: vm0 } ]
      steps:
        - { op: vfio.open, device: gpu, as: dev }
        - { op: vfio.bind_iommufd, fd: dev }
        - { op: vfio.dma_buf, fd: dev, ranges: [[0, 0x1000000000]], as: buf }
        - { op: kvm.set_user_memory_region2, vm: vm0, slot: 0, flags: [vfio_dmabuf], guest_phys_addr: 0x1000000000,
            memory_size: 0x1000000000, fd: buf }
        - { op: guest.read, vm: vm0, gpa: 0x1000000000 }
        - { op: guest.read, vm: vm0, gpa: 0x1040000000 }
        - { op: guest.read, vm: vm0, gpa: 0x1c00000000 }
      """
    let report = try ScenarioRunner.run(try ScenarioParser.parse(yaml, file: "g.yaml"), options: RunOptions(keepState: true))
    let vm = try #require(report.state?.vms.first)
    // Two adjacent 1 GiB leaves are one run; the third is apart.
    #expect(vm.mappings.map(\.count) == [2, 1])
    #expect(vm.mappings.map(\.level) == ["1G", "1G"])
    let svg = AddressMap(try #require(report.state), title: "g").svg
    #expect(svg.contains(">0x1000000000  2 GiB  mapped -&gt; 0x4000000000</text>"))
    #expect(svg.contains("⋮ ≈28 GiB not shown") == false, "inside one memslot nothing is skipped")
  }
}

