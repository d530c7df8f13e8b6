import Testing
import KernelCore
import DmaBuf
@testable import Platform

/// Every event the machine emits is in the catalogue (`--events` and the README list it),
/// under its own name, with the catalogue's fields, whatever the operations do.
@Suite struct TraceCatalogTests {
  static let catalog = Dictionary(uniqueKeysWithValues: TraceEventName.catalog.map { ($0.name, $0.fields) })

  static func check(_ events: [TraceEvent], after op: Operation, sourceLocation: SourceLocation = #_sourceLocation) {
    for event in events {
      guard let fields = catalog[event.name] else {
        Issue.record("\(event.name) (after \(op.name)) is not catalogued", sourceLocation: sourceLocation)
        continue
      }
      #expect(event.name.event != "log", "\(op.name) emitted \(event.name): \(event.message)", sourceLocation: sourceLocation)
      guard !fields.contains("…") else { continue }
      for field in event.fields {
        #expect(fields.contains(field.key), "\(event.name) has \(field.key)", sourceLocation: sourceLocation)
      }
    }
  }

  /// The less common paths, one by one.
  @Test(arguments: Variant.allCases)
  func namedPaths(variant: Variant) throws {
    var bench = try Bench(variant)
    _ = bench.machine.trace.drain()
    var seen: Set<String> = []
    func run(_ op: Operation) {
      _ = bench.machine.perform(op)
      let events = bench.machine.trace.drain()
      seen.formUnion(events.map(\.name.description))
      Self.check(events, after: op)
    }
    run(.vfioOpen(device: "nic0"))
    let dev = FD(5)
    run(.vfioBindIOMMUFD(fd: dev, private: false, vm: nil))
    run(.vfioMmap(fd: dev, regionIndex: 0))
    run(.vfioWrite(fd: dev, regionIndex: 0, offset: 0, size: 4, value: 1))
    run(.vfioRead(fd: dev, regionIndex: 0, offset: 0, size: 4))
    run(.vfioDmaBuf(fd: dev, regionIndex: 0, ranges: [DmaRange(offset: 0, length: Bench.bar0)], openFlags: 0, flags: 0))
    run(.dmabufAttach(fd: FD(6), importer: "imp", dynamic: true, peer2peer: true))
    run(.dmabufGetPfn(attachment: AttachmentID(1), pgoff: PageIndex(0)))
    run(.vfioSetPower(fd: dev, state: .d3hot))
    run(.vfioSetPower(fd: dev, state: .d0))
    run(.pciWriteCommand(device: "nic0", memory: true, busMaster: false))
    run(.tdispLock(device: "nic0"))
    run(.tdispStart(device: "nic0", nonce: .wrong))
    run(.tdxDevifCreate(vm: bench.td, device: "nic0"))
    run(.tdxStreamBlock(device: "nic0"))
    run(.tdxSeamcall(leaf: 9999, args: []))
    run(.pciFLR(device: "nic0"))
    run(.vfioHotReset(fd: dev))
    run(.kvmSetUserMemoryRegion2(vm: bench.plain, region: MemoryRegion2(
      slot: 1, flags: 1 << 3, guestPhysAddr: 0x8000_0000, memorySize: Bench.bar0, guestMemfd: 6)))
    run(.guestWrite(vm: bench.plain, gpa: GPA(0x8000_0000), size: 4))
    run(.dmabufDetach(attachment: AttachmentID(1)))
    run(.dmabufClose(fd: FD(6)))
    run(.vfioClose(fd: dev))
    run(.kvmDestroyVM(vm: bench.plain))
    run(.kvmDestroyVM(vm: bench.td))
    let expected: Set<String> = ["pci:power", "pci:command", "pci:reset", "tdisp:error", "vfio:mmap", "vfio:bar_write",
                                 "vfio:bar_read", "dmabuf:get_pfn", "tdx:ide_stream_blocked", "tdx:seamcall", "kvm:destroy_vm", "tdx:teardown", "dmabuf:detach", "dmabuf:close", "vfio:close", "vfio:reset"]
    // The RFC takes dma-buf slots only in VMs with private memory: no store reaches the BAR.
    #expect(seen.contains("guest:mmio_write") == (variant == .reviewed))
    #expect(expected.subtracting(seen).isEmpty, "not seen: \(expected.subtracting(seen).sorted())")
  }

  /// Random operations, as the failed-op tests build machines.
  @Test(arguments: [1, 2, 3] as [UInt64], Variant.allCases)
  func randomOperations(seed: UInt64, variant: Variant) throws {
    var rng = SeededGenerator(seed: seed)
    var bench = try Bench(variant)
    _ = bench.machine.trace.drain()
    var fds = [bench.td, bench.plain]
    var attachments: [AttachmentID] = []
    for _ in 0 ..< 150 {
      let op = UnchangedOnErrorTests.randomOp(&rng, fds: fds, attachments: attachments)
      switch bench.machine.perform(op) {
      case .success(.fd(let fd)): fds.append(fd)
      case .success(.attachment(let a)): attachments.append(a)
      default: break
      }
      Self.check(bench.machine.trace.drain(), after: op)
    }
  }

  /// With tracing off the machine records nothing at all: no event, no mark.
  @Test func offRecordsNothing() throws {
    var bench = try Bench(.reviewed)
    bench.machine.trace.isEnabled = false
    bench.machine.kvm.tdx.trace.isEnabled = false
    _ = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
    try bench.ok(.tdispStop(device: "nic0"))
    #expect(bench.machine.trace.events.isEmpty && bench.machine.trace.marks.isEmpty)
    #expect(bench.machine.kvm.tdx.trace.events.isEmpty)
    #expect(bench.machine.trace.regions > 0, "the clock still counts regions")
  }
}
