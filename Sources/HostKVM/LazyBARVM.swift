import CKVMShim
import Glibc
import KernelCore
import KVM
import Synchronization

/// How the BAR reaches the guest.
public enum BARAccessMode: String, Hashable, Sendable {
  /// Never mapped: every access exits `KVM_EXIT_MMIO` and is completed in user space.
  case trapped
  /// No memslot at start; the first access exits, the back end asks the exporter for the range,
  /// installs a memslot and completes the access; later accesses run without exits.
  case lazyMapped
}

/// What one run of `GuestProgram` did.
public struct GuestRunReport: Hashable, Sendable {
  /// `KVM_EXIT_MMIO` exits taken.
  public var mmioExits: UInt64 = 0
  /// Guest reads that returned all-ones (the buffer was revoked).
  public var allOnesReads: UInt32 = 0
  /// Guest reads that returned the sentinel planted in the old backing after revoke: must be 0.
  public var sentinelReads: UInt32 = 0
  /// From the first `KVM_RUN` to `KVM_EXIT_HLT`.
  public var elapsedNanoseconds: UInt64 = 0
  /// Handling of the exit that installed the memslot, from `KVM_RUN`'s return to the completed
  /// access (decode, the sequence read, one lookup per BAR page, `KVM_SET_USER_MEMORY_REGION2` per
  /// run of contiguous PFNs, completion), on `ckvm_now_ns()` as the C reference VMM times it.
  /// `nil` when no slot was installed.
  public var firstFaultNanoseconds: UInt64?
}

/// The importer's side of the BAR slots: which slots are installed, and the invalidation sequence
/// that closes the race between an unlocked exporter lookup and `move_notify`, as
/// `mmu_invalidate_seq` does in `kvm_faultin_pfn()` / `mmu_invalidate_retry_gfn()`.
final class BARSlots: Sendable {
  struct State {
    /// Room for one slot per BAR page is reserved up front, so installing allocates nothing on
    /// the fault path.
    var installed: [UInt32] = []
    var invalidateSeq: UInt64 = 0
    /// A slot delete that failed inside `move_notify`, reported by the next `run()`.
    var notifyError: Errno?
  }
  let vm: VMHandle
  let memory: DeviceMemory
  let state: Mutex<State>

  init(vm: VMHandle, memory: DeviceMemory) {
    self.vm = vm
    self.memory = memory
    var s = State()
    s.installed.reserveCapacity(Int(memory.size.pages))
    self.state = Mutex(s)
  }

  func region(slot: UInt32, gpa: GPA, size: UInt64, fileOffset: UInt64) -> UserspaceMemoryRegion2 {
    // The build machines' KVM refuses a guest_memfd slot whose userspace_addr is 0 (EINVAL), and
    // for the default VM type it still faults the slot through userspace_addr rather than the
    // guest_memfd (a decoy mapping there receives the guest's writes). Both kinds therefore pass
    // the mapping of the same file, so either way the guest reaches the device memory.
    UserspaceMemoryRegion2(
      slot: slot, flags: memory.kind == .guestMemfd ? .guestMemfd : [], guestPhysAddr: gpa.rawValue,
      memorySize: size, userspaceAddr: memory.hostAddress + fileOffset,
      guestMemfdOffset: memory.kind == .guestMemfd ? fileOffset : 0,
      guestMemfd: memory.kind == .guestMemfd ? UInt32(bitPattern: memory.fd) : 0)
  }

  /// `move_notify`: delete every BAR slot. Runs on the revoking thread under the exporter's lock;
  /// KVM has zapped and flushed the slot's mappings when the delete returns.
  func moveNotify() {
    state.withLock { s in
      for slot in s.installed {
        do throws(Errno) {
          try vm.setUserMemoryRegion2(region(slot: slot, gpa: GPA(0), size: 0, fileOffset: 0))
        } catch {
          s.notifyError = s.notifyError ?? error
        }
      }
      s.installed.removeAll(keepingCapacity: true)
      s.invalidateSeq &+= 1
    }
  }
}

/// A real KVM VM running `GuestProgram` against a BAR supplied by a `BARExporter`.
///
/// The lazy path mirrors the private-MMIO fault path (patch 7 of the series): the BAR has no
/// memslot; the first access exits `KVM_EXIT_MMIO`; the back end asks the exporter for the
/// PFNs of the range outside its lock, rechecks the invalidation sequence under it, installs one
/// memslot per run of contiguous PFNs, and completes the access; revoke deletes the slots, after
/// which each access exits, the exporter says `ENODEV`, and reads return all-ones as from a
/// removed device.
public final class LazyBARVM {
  public let mode: BARAccessMode
  public let exporter: any BARExporter
  public let vm: VMHandle
  public let vcpu: VCPUHandle
  /// The device's memory; the exporter's PFN N is its page N.
  public let deviceMemory: DeviceMemory
  let slots: BARSlots
  let ram: UnsafeMutableRawPointer

  /// Creates the VM, its RAM slot with the guest code, the device memory and one vCPU in 32-bit
  /// protected mode, ready to loop `iterations` times.
  ///
  /// - Throws: the errno of the first step that fails; `EINVAL` for zero iterations, more than
  ///   fit ECX, or an exporter whose size is not `GuestProgram.barSize`.
  public init(
    system: KVMSystem, exporter: any BARExporter, mode: BARAccessMode, iterations: UInt64,
    preferGuestMemfd: Bool = false
  ) throws(Errno) {
    guard iterations > 0, iterations <= UInt64(UInt32.max), exporter.size == GuestProgram.barSize
    else { throw .EINVAL }
    let vm = try system.createVM()
    let memory = try DeviceMemory(size: GuestProgram.barSize, vm: vm, preferGuestMemfd: preferGuestMemfd)
    memory.store32(offset: 0, GuestProgram.registerValue)

    guard let ram = mmap(nil, Int(GuestProgram.ramSize), PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), ram != MAP_FAILED
    else { throw Errno(rawValue: errno) }
    var ok = false
    defer { if !ok { munmap(ram, Int(GuestProgram.ramSize)) } }
    GuestProgram.code.withUnsafeBytes { code in
      (ram + Int(GuestProgram.codeGPA.rawValue)).copyMemory(from: code.baseAddress!, byteCount: code.count)
    }
    try vm.setUserMemoryRegion2(UserspaceMemoryRegion2(
      slot: 0, guestPhysAddr: 0, memorySize: GuestProgram.ramSize,
      userspaceAddr: UInt64(UInt(bitPattern: ram))))

    let vcpu = try vm.createVCPU()
    var sregs = try vcpu.getSregs()
    var code = kvm_segment()
    code.base = 0
    code.limit = 0xFFFF_FFFF
    code.selector = 0x08
    code.type = 11  // execute/read, accessed
    code.present = 1
    code.db = 1
    code.s = 1
    code.g = 1
    var data = code
    data.selector = 0x10
    data.type = 3  // read/write, accessed
    sregs.cs = code
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data)
    sregs.cr0 |= 1  // PE, no paging: GPA == linear address
    try vcpu.setSregs(sregs)
    var regs = kvm_regs()
    regs.rip = GuestProgram.codeGPA.rawValue
    regs.rflags = 2
    regs.rsi = GuestProgram.barGPA.rawValue
    regs.rcx = iterations
    regs.rdx = UInt64(GuestProgram.sentinel)
    try vcpu.setRegs(regs)

    let slots = BARSlots(vm: vm, memory: memory)
    exporter.attach { [weak slots] in slots?.moveNotify() }
    ok = true
    self.mode = mode
    self.exporter = exporter
    self.vm = vm
    self.vcpu = vcpu
    self.deviceMemory = memory
    self.slots = slots
    self.ram = ram
  }

  deinit { munmap(ram, Int(GuestProgram.ramSize)) }

  /// Which backing the BAR slot uses.
  public var backing: BARBackingKind { deviceMemory.kind }

  /// Runs the guest to `KVM_EXIT_HLT`.
  ///
  /// - Throws: `EIO` when the exporter fails other than `ENODEV` (as KVM turns exporter errors
  ///   into `EIO` for the vCPU), when a slot delete in `move_notify` failed, or when the guest
  ///   stops with `SHUTDOWN`, `FAIL_ENTRY`, `INTERNAL_ERROR` or touches a GPA outside the BAR;
  ///   `KVM_RUN`'s own errno otherwise; a model exporter's own failure as it is
  ///   (``HostFailure/model(_:)``, ``HostFailure/modelAnswer(_:)``), never as an errno.
  public func run() throws(HostFailure) -> GuestRunReport {
    var report = GuestRunReport()
    let start = ckvm_now_ns()
    while true {
      let (exit, t0) = try HostFailure.kernel { () throws(Errno) in try vcpu.runTimed() }
      switch exit {
      case .mmio(let gpa, let length, let isWrite, let data):
        report.mmioExits += 1
        guard let offset = gpa.offset(from: GuestProgram.barGPA), offset < GuestProgram.barSize
        else { throw .errno(.EIO) }
        let installed = try handleMMIO(offset: offset, length: length, isWrite: isWrite, data: data)
        if installed, report.firstFaultNanoseconds == nil {
          report.firstFaultNanoseconds = ckvm_now_ns() &- t0
        }
      case .io(let port, true, _, _, let value):
        if port == GuestProgram.reportPort { report.allOnesReads = value }
        if port == GuestProgram.reportPort + 1 { report.sentinelReads = value }
      case .hlt:
        report.elapsedNanoseconds = ckvm_now_ns() &- start
        if let e = slots.state.withLock({ $0.notifyError }) { throw .errno(e) }
        return report
      case .io, .shutdown, .failEntry, .internalError, .other:
        throw .errno(.EIO)
      }
    }
  }

  /// Completes one MMIO exit; returns whether it installed the BAR slots.
  func handleMMIO(offset: UInt64, length: Int, isWrite: Bool, data: UInt64) throws(HostFailure) -> Bool {
    let page = PageIndex(offset.pages)
    var installed = false
    let pfn: PFN
    switch mode {
    case .trapped:
      switch exporter.lookup(pageIndex: page) {
      case .success(let p): pfn = p
      case .failure(.errno(.ENODEV)): return completeRevoked(isWrite: isWrite)
      // KVM turns the exporter's other errnos into EIO for the vCPU; the model's own failure
      // is no errno and stays what it is.
      case .failure(.errno): throw .errno(.EIO)
      case .failure(let failure): throw failure
      }
    case .lazyMapped:
      switch try faultIn(page: page) {
      case .revoked: return completeRevoked(isWrite: isWrite)
      case .mapped(let p):
        installed = true
        pfn = p
      }
    }
    // The faulting access itself still has to complete: KVM has decoded it and waits for data.
    let fileOffset = (pfn.rawValue << pageShift) | (offset & (pageSize - 1))
    if isWrite {
      guard deviceMemory.write(offset: fileOffset, length: length, data) else { throw .errno(.EIO) }
    } else {
      guard let v = deviceMemory.read(offset: fileOffset, length: length) else { throw .errno(.EIO) }
      vcpu.completeMMIORead(v)
    }
    return installed
  }

  func completeRevoked(isWrite: Bool) -> Bool {
    if !isWrite { vcpu.completeMMIORead(.max) }
    return false
  }

  enum FaultResult { case mapped(PFN), revoked }

  /// `kvm_faultin_pfn()` for the whole BAR: look the PFNs up without the slots lock, then install
  /// under it unless an invalidation ran in between (then retry, as `RET_PF_RETRY` would).
  /// Returns the PFN of `page`. The PFNs live in stack scratch space and runs are coalesced while
  /// installing, so the fault path allocates nothing.
  func faultIn(page: PageIndex) throws(HostFailure) -> FaultResult {
    let pages = Int(exporter.size.pages)
    guard page.rawValue < UInt64(pages) else { throw .errno(.EIO) }
    return try withUnsafeTemporaryAllocation(of: PFN.self, capacity: pages) {
      (pfns) throws(HostFailure) -> FaultResult in
      while true {
        let seq = slots.state.withLock { $0.invalidateSeq }
        for i in 0..<pages {
          switch exporter.lookup(pageIndex: PageIndex(UInt64(i))) {
          case .success(let p):
            guard p.rawValue < deviceMemory.size.pages else { throw .errno(.EIO) }
            pfns.initializeElement(at: i, to: p)
          case .failure(.errno(.ENODEV)): return .revoked
          case .failure(.errno): throw .errno(.EIO)
          case .failure(let failure): throw failure
          }
        }
        let done = try slots.state.withLock { (s) throws(HostFailure) -> Bool in
          guard s.invalidateSeq == seq else { return false }
          guard s.installed.isEmpty else { return true }
          // Each run of contiguous PFNs becomes one slot.
          var start = 0
          for i in 1...pages where i == pages || pfns[i] != pfns[i - 1].advanced(by: 1) {
            let slot = UInt32(1 + s.installed.count)
            let region = slots.region(
              slot: slot, gpa: GuestProgram.barGPA.advanced(by: UInt64(start) << pageShift),
              size: UInt64(i - start) << pageShift, fileOffset: pfns[start].rawValue << pageShift)
            try HostFailure.kernel { () throws(Errno) in try slots.vm.setUserMemoryRegion2(region) }
            s.installed.append(slot)
            start = i
          }
          return true
        }
        if done { return .mapped(pfns[Int(page.rawValue)]) }
      }
    }
  }
}
