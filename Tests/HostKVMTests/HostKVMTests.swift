import CKVMShim
import CReferenceVMM
import Foundation
import Synchronization
import KernelCore
import KVM
import Platform
import Testing

@testable import HostKVM

/// Tests that run a real guest need a usable /dev/kvm; elsewhere they are skipped with this
/// condition's comment as the reason.
let kvmUsable: Bool = (try? KVMSystem().createVM()) != nil

@Suite("uAPI values the shim re-exports")
struct ShimTests {
  @Test("request numbers are the upstream _IOW/_IOWR encodings")
  func requestNumbers() {
    // _IOC(dir, 0xAE, nr, size) = dir << 30 | size << 16 | 0xAE << 8 | nr
    #expect(ckvm_KVM_SET_USER_MEMORY_REGION2 == 0x40A0_AE49)
    #expect(ckvm_KVM_CREATE_GUEST_MEMFD == 0xC040_AED4)
    #expect(ckvm_KVM_SET_USER_MEMORY_REGION == 0x4020_AE46)
    #expect(ckvm_KVM_RUN == 0xAE80)
    #expect(ckvm_KVM_CREATE_VM == 0xAE01)
  }

  @Test("struct layouts match the upstream uAPI")
  func layouts() {
    #expect(MemoryLayout<kvm_userspace_memory_region2>.size == 160)
    #expect(MemoryLayout<kvm_userspace_memory_region2>.offset(of: \.guest_memfd) == 40)
    #expect(MemoryLayout<kvm_create_guest_memfd>.size == 64)
  }

  @Test(
    "capabilities carry their KVM_CAP_ numbers",
    arguments: [
      (KVMCapability.userMemory, Int32(3)), (.nrMemslots, 10), (.readonlyMem, 81),
      (.userMemory2, 231), (.guestMemfd, 234), (.vmTypes, 235), (.guestMemfdFlags, 244),
    ])
  func capabilities(cap: KVMCapability, raw: Int32) {
    #expect(cap.rawValue == raw)
    #expect(cap.description.hasPrefix("KVM_CAP_"))
  }

  @Test("memslot flags have their KVM_MEM_ bit values")
  func memoryFlags() {
    #expect(MemslotFlags.logDirtyPages.rawValue == 1)
    #expect(MemslotFlags.readonly.rawValue == 2)
    #expect(MemslotFlags.guestMemfd.rawValue == 4)
  }

  @Test("Swift and C run the same guest bytes")
  func sameGuest() {
    let c = Array(UnsafeBufferPointer(start: rvmm_guest_code_bytes(), count: Int(rvmm_guest_code_size)))
    #expect(c == GuestProgram.code)
  }
}

@Suite("InMemoryBARExporter")
struct ExporterTests {
  @Test("a size that is zero or not page aligned is refused", arguments: [UInt64(0), 1, 0x1001])
  func badSize(size: UInt64) {
    #expect(throws: Errno.EINVAL) { try InMemoryBARExporter(size: size) }
  }

  @Test("lookup: PFN of each page, EINVAL at or past the end", arguments: [
    (UInt64(0), Result<PFN, HostFailure>.success(PFN(0x100))), (3, .success(PFN(0x103))),
    (4, .failure(.errno(.EINVAL))), (.max, .failure(.errno(.EINVAL))),
  ])
  func lookup(page: UInt64, expected: Result<PFN, HostFailure>) throws {
    let e = try InMemoryBARExporter(size: 0x4000, firstPFN: PFN(0x100))
    #expect(e.lookup(pageIndex: PageIndex(page)) == expected)
  }

  @Test("revoke: later lookups ENODEV, move_notify runs once per importer even if revoked twice")
  func revoke() throws {
    let e = try InMemoryBARExporter(size: 0x4000)
    let calls = Counter()
    e.attach { calls.bump() }
    e.attach { calls.bump() }
    e.revoke()
    e.revoke()
    #expect(e.isRevoked)
    #expect(calls.value == 2)
    #expect(e.lookup(pageIndex: PageIndex(0)) == .failure(.errno(.ENODEV)))
  }
}

/// An exporter whose model fails on every lookup, as a lock violation would.
final class BrokenModelExporter: BARExporter {
  static let failure = OpFailure.lockViolation(LockViolation(lock: "dmabuf->resv", message: "planted"))
  let size = GuestProgram.barSize
  func lookup(pageIndex: PageIndex) -> Result<PFN, HostFailure> { .failure(.model(Self.failure)) }
  func attach(moveNotify: @escaping @Sendable () -> Void) {}
}

/// Model failures keep their type: the exporter's answer and the lookup cost pass them on.
@Suite struct HostFailureTests {
  @Test("an operation's failure: its errno, or the model's own", arguments: [
    (OpFailure.errno(.ENODEV), HostFailure.errno(.ENODEV)),
    (.livelock("spins"), .model(.livelock("spins"))),
    (.deadlock("waits"), .model(.deadlock("waits"))),
    (BrokenModelExporter.failure, .model(BrokenModelExporter.failure)),
  ])
  func mapping(failure: OpFailure, expected: HostFailure) {
    #expect(HostFailure(failure) == expected)
  }

  @Test func lookupCostPassesTheModelFailureOn() {
    #expect(throws: HostFailure.model(BrokenModelExporter.failure)) { try KVMComparison.lookupCost(BrokenModelExporter()) }
  }
}

final class Counter: Sendable {
  let state = Mutex(0)
  func bump() { state.withLock { $0 += 1 } }
  var value: Int { state.withLock { $0 } }
}


// Serialized: the fd-count test must not see fds other tests open meanwhile.
@Suite(
  "real /dev/kvm", .serialized,
  .enabled(if: kvmUsable, "needs a usable /dev/kvm (absent or not openable here)"))
struct RealKVMTests {
  static let iterations: UInt64 = 50
  /// The back end asks the platform model by default; the in-memory exporter stays as a baseline.
  static let exporters: [BARExporterKind] = [.model(.reviewed), .model(.rfcV1), .inMemory]

  @Test("a model exporter's own failure ends the run as itself, not as EIO", arguments: [BARAccessMode.trapped, .lazyMapped])
  func modelFailureIsNoErrno(mode: BARAccessMode) throws {
    let vm = try LazyBARVM(system: KVMSystem(), exporter: BrokenModelExporter(), mode: mode, iterations: Self.iterations)
    #expect(throws: HostFailure.model(BrokenModelExporter.failure)) { try vm.run() }
  }

  @Test("KVM_GET_API_VERSION is 12")
  func apiVersion() throws {
    #expect(try KVMSystem().apiVersion() == 12)
  }

  @Test("lazily mapped: exactly one MMIO exit, the first access; every read sees the register",
        arguments: exporters)
  func mappedOneExit(exporter: BARExporterKind) throws {
    let vm = try LazyBARVM(system: KVMSystem(), exporter: exporter.make(),
      mode: .lazyMapped, iterations: Self.iterations)
    let r = try vm.run()
    #expect(r.mmioExits == 1)
    #expect(r.firstFaultNanoseconds != nil)
    #expect(r.allOnesReads == 0)
    #expect(r.sentinelReads == 0)
    // The guest's last write (iterations left = 1) went to the device memory through the slot.
    #expect(vm.deviceMemory.load32(offset: GuestProgram.countdownOffset) == 1)
  }

  @Test("trapped: one MMIO exit per access, two per iteration, completed in user space",
        arguments: exporters)
  func trappedEveryAccess(exporter: BARExporterKind) throws {
    let vm = try LazyBARVM(system: KVMSystem(), exporter: exporter.make(),
      mode: .trapped, iterations: Self.iterations)
    let r = try vm.run()
    #expect(r.mmioExits == 2 * Self.iterations)
    #expect(r.firstFaultNanoseconds == nil)
    #expect(r.allOnesReads == 0)
    #expect(vm.deviceMemory.load32(offset: GuestProgram.countdownOffset) == 1)
  }

  @Test("revoked before the first access: every read is all-ones, nothing is mapped or written",
        arguments: exporters)
  func revokedBeforeStart(kind: BARExporterKind) throws {
    let exporter = try kind.make()
    let vm = try LazyBARVM(system: KVMSystem(), exporter: exporter, mode: .lazyMapped, iterations: 1000)
    try exporter.revoke()
    let r = try vm.run()
    #expect(r.allOnesReads == GuestProgram.allOnesToStop)
    #expect(r.mmioExits == 2 * UInt64(GuestProgram.allOnesToStop))
    #expect(r.firstFaultNanoseconds == nil)
    #expect(vm.deviceMemory.load32(offset: GuestProgram.countdownOffset) == 0)
  }

  @Test("revoke under a running vCPU: later reads all-ones, never stale, no write reaches the backing",
        arguments: exporters)
  func revokeUnderRunningVCPU(exporter: BARExporterKind) throws {
    let r = try RevokeRun.run(system: KVMSystem(), revokeAfter: 20, exporter: exporter)
    #expect(r.exporterRevoked)
    #expect(r.guest.allOnesReads == GuestProgram.allOnesToStop)
    #expect(r.guest.sentinelReads == 0)
    #expect(r.backingUntouched)
    // One exit for the lazy fault, then a read and a write exit for each of the 16 iterations
    // after revoke; one more write exit when the revoke lands between an iteration's read (still
    // mapped) and its write.
    let afterRevoke = 1 + 2 * UInt64(GuestProgram.allOnesToStop)
    #expect((afterRevoke...afterRevoke + 1).contains(r.guest.mmioExits))
  }

  @Test("model exporter: revoke after a mapped run deletes the slot through one move_notify; the next run reads all-ones")
  func modelRevokeDeletesSlot() throws {
    let exporter = try ModelBARExporter()
    let vm = try LazyBARVM(system: KVMSystem(), exporter: exporter, mode: .lazyMapped, iterations: Self.iterations)
    #expect(try vm.run().mmioExits == 1)
    #expect(vm.slots.state.withLock { $0.installed } == [1])
    try exporter.revoke()
    #expect(exporter.moveNotifications == 1)
    #expect(vm.slots.state.withLock { ($0.installed, $0.invalidateSeq) } == ([], 1))
    // The old backing now holds the sentinel: a read or write reaching it would show.
    vm.deviceMemory.store32(offset: 0, GuestProgram.sentinel)
    vm.deviceMemory.store32(offset: GuestProgram.countdownOffset, GuestProgram.sentinel)
    // The guest halted; start it over (at the code, with fresh counters) and it exits on every
    // access because the model answers ENODEV.
    var regs = try vm.vcpu.getRegs()
    regs.rip = GuestProgram.codeGPA.rawValue
    regs.rcx = 1000
    (regs.rbx, regs.rbp) = (0, 0)
    try vm.vcpu.setRegs(regs)
    let r = try vm.run()
    #expect(r.allOnesReads == GuestProgram.allOnesToStop)
    #expect(r.sentinelReads == 0)
    #expect(r.mmioExits == 2 * UInt64(GuestProgram.allOnesToStop))
    #expect(r.firstFaultNanoseconds == nil)
    #expect(vm.deviceMemory.load32(offset: GuestProgram.countdownOffset) == GuestProgram.sentinel)
  }

  @Test("a thousand VMs opened and closed leave the process's fd count where it was")
  func thousandVMs() throws {
    // Only VM and vCPU fds (anon_inode:kvm-vm, anon_inode:kvm-vcpu:N) are counted: other test
    // targets in this process open /dev/kvm for a moment to see whether it is usable, and spawn
    // `pmmio` through pipes meanwhile; none of them creates a VM in this process.
    func fdCount() throws -> Int {
      try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").filter { name in
        let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + name)) ?? ""
        return target.contains("kvm-vm") || target.contains("kvm-vcpu")
      }.count
    }
    let system = try KVMSystem()
    let before = try fdCount()
    do {
      let vm = try system.createVM()
      let vcpu = try vm.createVCPU()
      withExtendedLifetime(vcpu) { #expect((try? fdCount()) == before + 2, "the filter sees a VM's fd and its vCPU's") }
    }
    for _ in 0..<1000 {
      let vm = try system.createVM()
      _ = try vm.createVCPU()
    }
    #expect(try fdCount() == before)
  }

  @Test(
    "KVM_SET_USER_MEMORY_REGION2 refuses what kvm_set_memory_region() refuses",
    arguments: [
      ("unaligned GPA", UserspaceMemoryRegion2(slot: 1, guestPhysAddr: 0x10_0800, memorySize: 0x1000, userspaceAddr: 0), Errno.EINVAL),
      ("unaligned size", UserspaceMemoryRegion2(slot: 1, guestPhysAddr: 0x10_0000, memorySize: 0x800, userspaceAddr: 0), .EINVAL),
      ("unknown flag", UserspaceMemoryRegion2(slot: 1, flags: MemslotFlags(rawValue: 1 << 20), guestPhysAddr: 0x10_0000, memorySize: 0x1000, userspaceAddr: 0), .EINVAL),
      ("overlap with slot 0", UserspaceMemoryRegion2(slot: 1, guestPhysAddr: 0, memorySize: 0x1000, userspaceAddr: 0), .EEXIST),
    ])
  func memslotErrors(name: String, region: UserspaceMemoryRegion2, expected: Errno) throws {
    let vm = try KVMSystem().createVM()
    let ram = UnsafeMutableRawPointer.allocate(byteCount: 0x2000, alignment: 0x1000)
    defer { ram.deallocate() }
    let addr = UInt64(UInt(bitPattern: ram))
    try vm.setUserMemoryRegion2(UserspaceMemoryRegion2(slot: 0, guestPhysAddr: 0, memorySize: 0x2000, userspaceAddr: addr))
    var r = region
    r.userspaceAddr = addr
    #expect(throws: expected) { try vm.setUserMemoryRegion2(r) }
  }

  @Test("the C reference VMM takes one exit mapped, one per access trapped, and never reads stale")
  func referenceVMM() throws {
    let c = try KVMComparison.measureC(iterations: Self.iterations, revokeAfter: 20, preferGuestMemfd: false)
    #expect(c.mappedExits == 1)
    #expect(c.trappedExits == 2 * Self.iterations)
    #expect(c.revokeAllOnesReads == UInt64(GuestProgram.allOnesToStop))
    #expect(c.revokeStaleReads == 0)
    #expect(c.revokeBackingUntouched == true)
  }
}

struct SampleSpreadTests {
  @Test("median of odd and even counts, min and max; no samples is nil", arguments: [
    ([5.0], 5.0, 5.0, 5.0),
    ([3.0, 1.0, 2.0], 2.0, 1.0, 3.0),
    ([4.0, 1.0, 3.0, 2.0], 2.5, 1.0, 4.0),
    ([9.0, 1.0, 1.0, 100.0, 2.0], 2.0, 1.0, 100.0),
  ])
  func spread(samples: [Double], median: Double, low: Double, high: Double) throws {
    let s = try #require(SampleSpread(samples))
    #expect(s.median == median)
    #expect(s.min == low)
    #expect(s.max == high)
  }

  @Test("no samples, no spread")
  func empty() {
    #expect(SampleSpread([]) == nil)
  }
}

private typealias Sample = KVMComparison.AccessSample

/// A per-access sample of 10 iterations that behaved: 20 exits trapped, one mapped.
private func good(_ trappedNs: Double, _ mappedNs: Double) -> Sample {
  Sample(trappedNs: trappedNs, trappedExits: 20, mappedNs: mappedNs, mappedExits: 1, backing: "memfd")
}

struct PerAccessFiguresTests {

  @Test("one misbehaving run, of the side's own or its in-memory exporter's, shows in the exit count",
        arguments: [
          ([good(1, 1), good(2, 2), good(3, 3)], [good(1, 1)], UInt64(20), UInt64(1)),
          ([good(1, 1), Sample(trappedNs: 2, trappedExits: 19, mappedNs: 2, mappedExits: 1)], [good(1, 1)], 19, 1),
          ([good(1, 1), good(2, 2)], [good(1, 1), Sample(trappedNs: 1, trappedExits: 20, mappedNs: 1, mappedExits: 2)], 20, 2),
          ([good(1, 1), Sample(trappedNs: 2, trappedExits: 21, mappedNs: 2, mappedExits: 1)], [Sample(trappedNs: 1, trappedExits: 17)], 17, 1),
        ])
  fileprivate func exitCounts(own: [Sample], inMemory: [Sample], trappedExits: UInt64, mappedExits: UInt64) throws {
    let f = try KVMComparison.figures(own, inMemory: inMemory, iterations: 10, exporter: "x")
    #expect(f.trappedExits == trappedExits)
    #expect(f.mappedExits == mappedExits)
  }

  @Test("median, min and max of the side's own runs; the in-memory exporter's apart")
  func spreads() throws {
    let f = try KVMComparison.figures([good(30, 7), good(10, 9), good(20, 8)],
      inMemory: [good(5, 2), good(4, 3)], iterations: 10, exporter: "x")
    #expect([f.trappedNsPerAccess, f.trappedNsPerAccessMin, f.trappedNsPerAccessMax] == [20, 10, 30])
    #expect([f.mappedNsPerAccess, f.mappedNsPerAccessMin, f.mappedNsPerAccessMax] == [8, 7, 9])
    #expect([f.trappedNsPerAccessInMemory, f.trappedNsPerAccessInMemoryMin, f.trappedNsPerAccessInMemoryMax] == [4.5, 4, 5])
    #expect([f.mappedNsPerAccessInMemory, f.mappedNsPerAccessInMemoryMin, f.mappedNsPerAccessInMemoryMax] == [2.5, 2, 3])
    #expect(f.backing == "memfd")
  }

  @Test("no in-memory side, no in-memory figures; trapped only, no mapped figures")
  func absent() throws {
    let f = try KVMComparison.figures([Sample(trappedNs: 3, trappedExits: 20)], inMemory: nil,
      iterations: 10, exporter: "x")
    #expect(f.trappedNsPerAccess == 3)
    #expect(f.trappedNsPerAccessInMemory == nil && f.mappedNsPerAccessInMemory == nil)
    #expect(f.mappedNsPerAccess == nil && f.mappedExits == nil)
    #expect(f.backing == "none")
  }

  @Test("no samples is EINVAL")
  func empty() {
    #expect(throws: HostFailure.errno(.EINVAL)) { try KVMComparison.figures([], inMemory: nil, iterations: 10, exporter: "x") }
  }
}
