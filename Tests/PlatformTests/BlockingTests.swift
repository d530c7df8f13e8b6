import Testing
import KernelCore
import DmaBuf
@testable import VFIO
@testable import KVM
import TDX
@testable import Platform

extension Bench {
  /// Steps `thread` until it answers `blocked` on a lock, letting vCPUs answer the kicks it
  /// waits for on the way; returns the wait (`nil` if it finished first).
  mutating func stepUntilLockWait(_ thread: inout KernelThread) throws -> Wait? {
    var contention = Contention()
    for _ in 0 ..< 1_000 {
      switch machine.step(&thread, choices: &contention) {
      case .blocked(let wait):
        if case .lock = wait.kind { return wait }
        let responders = machine.kickResponders().filter { $0 != thread.vcpu }
        guard !responders.isEmpty else { return wait }
        for vcpu in responders { try machine.answerKick(vcpu) }
      case .finished: return nil
      case .ran: continue
      }
    }
    return nil
  }

  /// Steps `thread` once and returns what the step did, as a counterexample prints it.
  mutating func stepLabel(_ thread: inout KernelThread) -> String {
    var contention = Contention()
    switch machine.step(&thread, choices: &contention) {
    case .ran(let label): return "\(label)"
    case .blocked(let wait): return "blocked: \(wait)"
    case .finished(let result): return "finished: \(result)"
    }
  }
}

/// Every path, for every lock it takes: with the lock held by another thread its step answers
/// `blocked` on exactly that lock and changes nothing (machine and thread), and once the holder
/// releases the lock the path finishes with the kernel's result, in the state the path reaches
/// when it runs alone.
///
/// The locks, as the kernel takes them:
/// - `vdev->memory_lock`: read around a BAR access (`vfio_pci_core_do_io_rw()`); write in the
///   dma-buf export (`vfio_pci_core_feature_dma_buf()`), around every `vfio_pci_dma_buf_move()`
///   (the command write `vfio_basic_config_write()`, `vfio_lock_and_set_power_state()`,
///   `vfio_pci_ioctl_reset()`, the config-space FLR `vfio_exp_config_write()`,
///   `vfio_pci_dev_set_hot_reset()`, `vfio_pci_dma_buf_cleanup()` on close) and in
///   `vfio_pci_dma_buf_release()`; in `reviewed`, also around the TSM's unbind and state link.
/// - a buffer's resv: per buffer flipped by `vfio_pci_dma_buf_move()` (across the importers'
///   `move_notify`); `dma_buf_dynamic_attach()`, `dma_buf_detach()`, `dma_buf_pin()` (the
///   caller holds it), the PFN lookup; KVM's bind and its detach of a deleted slot.
/// - `kvm->mmu_lock`: read in a TDP fault's install (`kvm_tdp_mmu_map()`, a TD's
///   `TDH.MMIO.MAP` under it); write in `move_notify`'s zap, the slot flush
///   (`kvm_arch_flush_shadow_memslot()`), `kvm_handle_gfn_range()` for memory attributes,
///   `kvm_gmem_invalidate_begin()` on a guest_memfd's release, `kvm_destroy_vm()`'s teardown.
/// - `kvm->slots_lock`: across `kvm_set_memory_region()`, `kvm_vm_set_mem_attributes()` and
///   `kvm_gmem_release()`.
@Suite struct BlockingTests {
  /// A lock another thread holds.
  enum Lock: Hashable, Sendable, CustomStringConvertible {
    case memoryLockForRead, memoryLockForWrite
    /// `dmabufN->resv`.
    case resv(UInt32)
    case mmuLockForRead, mmuLockForWrite
    case slotsLock

    /// The name the model's wait carries.
    var name: String {
      switch self {
      case .memoryLockForRead, .memoryLockForWrite: "vdev1->memory_lock"
      case .resv(let buffer): "dmabuf\(buffer)->resv"
      case .mmuLockForRead, .mmuLockForWrite: "kvm->mmu_lock"
      case .slotsLock: "kvm->slots_lock"
      }
    }

    var description: String {
      switch self {
      case .memoryLockForRead: "memory_lock held for read"
      case .memoryLockForWrite: "memory_lock held for write"
      case .resv(let buffer): "dmabuf\(buffer)'s resv"
      case .mmuLockForRead: "mmu_lock held for read"
      case .mmuLockForWrite: "mmu_lock held for write"
      case .slotsLock: "slots_lock"
      }
    }
  }

  /// The paths. Those on the plain bench start from a default VM with a shared device's BAR0
  /// (dmabuf1, fd 5) in slot 1, attached by KVM as attachment 1; those on the TD bench from
  /// td0 with the private device's BAR0 (dmabuf1) in slot 1, its attributes private, the TDI
  /// running (``Bench/tdSlot()``). `rfc-v1` refuses a dma-buf slot of a shared buffer, so its
  /// dma-buf paths start from the TD bench.
  enum Path: String, Sendable {
    case vfioRead = "vfio.read BAR0", vfioWrite = "vfio.write BAR0", export = "vfio.dma_buf export"
    case decodeOff = "decode-off revoke", commandWrite = "vfio.write of PCI_COMMAND, memory off", powerD3hot = "vfio.set_power d3hot", reset = "VFIO_DEVICE_RESET"
    case decodeOn = "decode-on restore", powerD0 = "vfio.set_power d0 restore"
    case flr = "vfio.flr", hotReset = "vfio.hot_reset", vfioClose = "vfio.close"
    case fault = "guest.read fault", memslotCreate = "memslot create", memslotDelete = "memslot delete"
    case attach = "dmabuf.attach", detach = "dmabuf.detach", pin = "dmabuf.pin", getPfn = "dmabuf.get_pfn"
    case detachThenRelease = "dmabuf.detach, then release", closeThenRelease = "dmabuf.close, then release"
    case destroy = "VM destroy"
    case memslotDeleteThenRelease = "memslot delete, then release", destroyThenRelease = "VM destroy, then release"
    case tdDecodeOff = "TD decode-off revoke", tdFLR = "TD vfio.flr", tdClose = "TD vfio.close", tdFault = "TD guest.read fault", accept = "guest.accept_mmio"
    case tdMemslotDelete = "TD memslot delete", tdispStop = "tdisp.stop (TSM unbind)"
    case tdispLock = "tdisp.lock, then restore", tdispStart = "tdisp.start, then the state link"
    case pciFLR = "pci.flr from outside VFIO, then the state link"
    case setAttributes = "kvm.set_memory_attributes", gmemClose = "guest_memfd close", tdDestroy = "TD destroy"

    func onTD(_ variant: Variant) -> Bool {
      switch self {
      case .vfioRead, .vfioWrite, .export, .decodeOff, .commandWrite, .powerD3hot, .reset, .flr, .hotReset, .vfioClose, .fault,
           .memslotCreate, .memslotDelete, .detachThenRelease, .closeThenRelease, .destroy, .decodeOn, .powerD0,
           .memslotDeleteThenRelease, .destroyThenRelease:
        false
      case .attach, .detach, .pin, .getPfn:
        variant == .rfcV1
      case .tdDecodeOff, .tdFLR, .tdClose, .tdFault, .accept, .tdMemslotDelete, .tdispStop, .tdispLock, .tdispStart,
           .pciFLR, .setAttributes, .gmemClose, .tdDestroy:
        true
      }
    }
  }

  /// A key piece of the end state.
  enum End: Hashable, Sendable {
    /// dmabuf1's `priv->revoked`.
    case revoked(Bool)
    /// The VM's TDP MMU (a TD's mirror), in 4 KiB pages.
    case mappedPages(UInt64)
    /// The TD's Secure-EPT entry at the slot's first page.
    case sept(SEPTState?)
    case memslots(Int)
    /// Buffers on vfio-dev1's `vdev->dmabufs`.
    case deviceBuffers(Int)
    /// dmabuf1's attachments.
    case attachments(Int)
    case vmGone
    /// The memory attributes of the slot's first page.
    case privateAt(Bool)
    case guestMemfds(Int)
  }

  struct Case: CustomTestStringConvertible, Sendable {
    let path: Path
    let lock: Lock
    var variant: Variant = .reviewed
    /// Whether the path wants the lock for write (a mutex always is).
    var wantsWrite = true
    let expected: OpResult
    var end: [End] = []
    var testDescription: String { "\(variant) \(path.rawValue) waits for \(lock)" }
  }

  static let mapped = OpResult.success(.guestAccess("mapped", value: 0x1000))
  static let ok = OpResult.success(.none)

  static let cases: [Case] = [
    // Plain VM: VFIO.
    Case(path: .vfioRead, lock: .memoryLockForWrite, wantsWrite: false, expected: .success(.read(0))),
    Case(path: .vfioWrite, lock: .memoryLockForWrite, wantsWrite: false, expected: ok),
    Case(path: .export, lock: .memoryLockForRead, expected: .success(.fd(FD(7))), end: [.deviceBuffers(2)]),
    Case(path: .export, lock: .memoryLockForWrite, expected: .success(.fd(FD(7))), end: [.deviceBuffers(2)]),
    Case(path: .decodeOff, lock: .memoryLockForRead, expected: ok, end: [.revoked(true), .mappedPages(0)]),
    Case(path: .decodeOff, lock: .resv(1), expected: ok, end: [.revoked(true), .mappedPages(0)]),
    Case(path: .decodeOff, lock: .mmuLockForWrite, expected: ok, end: [.revoked(true), .mappedPages(0)]),
    Case(path: .decodeOff, lock: .mmuLockForRead, expected: ok, end: [.revoked(true), .mappedPages(0)]),
    // vfio_basic_config_write() of PCI_COMMAND with the memory bit clear: the same revoke.
    Case(path: .commandWrite, lock: .memoryLockForRead, expected: ok, end: [.revoked(true), .mappedPages(0)]),
    Case(path: .commandWrite, lock: .resv(1), expected: ok, end: [.revoked(true), .mappedPages(0)]),
    Case(path: .commandWrite, lock: .mmuLockForWrite, expected: ok, end: [.revoked(true), .mappedPages(0)]),
    Case(path: .commandWrite, lock: .mmuLockForRead, expected: ok, end: [.revoked(true), .mappedPages(0)]),
    Case(path: .powerD3hot, lock: .memoryLockForRead, expected: ok, end: [.revoked(true), .mappedPages(0)]),
    Case(path: .powerD3hot, lock: .resv(1), expected: ok, end: [.revoked(true), .mappedPages(0)]),
    Case(path: .powerD3hot, lock: .mmuLockForWrite, expected: ok, end: [.revoked(true), .mappedPages(0)]),
    Case(path: .decodeOn, lock: .memoryLockForRead, expected: ok, end: [.revoked(false)]),
    Case(path: .decodeOn, lock: .resv(1), expected: ok, end: [.revoked(false)]),
    // A restore's move_notify zaps as a revoke's does (KVM cannot tell them apart).
    Case(path: .decodeOn, lock: .mmuLockForWrite, expected: ok, end: [.revoked(false)]),
    Case(path: .powerD0, lock: .memoryLockForRead, expected: ok, end: [.revoked(false)]),
    Case(path: .powerD0, lock: .resv(1), expected: ok, end: [.revoked(false)]),
    Case(path: .powerD0, lock: .mmuLockForWrite, expected: ok, end: [.revoked(false)]),
    Case(path: .reset, lock: .memoryLockForRead, expected: ok, end: [.revoked(false), .mappedPages(0)]),
    Case(path: .reset, lock: .resv(1), expected: ok, end: [.revoked(false), .mappedPages(0)]),
    Case(path: .reset, lock: .mmuLockForWrite, expected: ok, end: [.revoked(false), .mappedPages(0)]),
    Case(path: .flr, lock: .memoryLockForRead, expected: ok, end: [.revoked(false), .mappedPages(0)]),
    Case(path: .flr, lock: .resv(1), expected: ok, end: [.revoked(false), .mappedPages(0)]),
    Case(path: .flr, lock: .mmuLockForWrite, expected: ok, end: [.revoked(false), .mappedPages(0)]),
    Case(path: .hotReset, lock: .memoryLockForRead, expected: ok, end: [.revoked(false), .mappedPages(0)]),
    Case(path: .hotReset, lock: .resv(1), expected: ok, end: [.revoked(false), .mappedPages(0)]),
    Case(path: .hotReset, lock: .mmuLockForWrite, expected: ok, end: [.revoked(false), .mappedPages(0)]),
    Case(path: .vfioClose, lock: .memoryLockForRead, expected: ok, end: [.revoked(true), .deviceBuffers(0), .mappedPages(0)]),
    Case(path: .vfioClose, lock: .resv(1), expected: ok, end: [.revoked(true), .deviceBuffers(0), .mappedPages(0)]),
    Case(path: .vfioClose, lock: .mmuLockForWrite, expected: ok, end: [.revoked(true), .deviceBuffers(0), .mappedPages(0)]),
    // Plain VM: the fault.
    Case(path: .fault, lock: .resv(1), expected: mapped, end: [.mappedPages(512)]),
    Case(path: .fault, lock: .mmuLockForWrite, wantsWrite: false, expected: mapped, end: [.mappedPages(512)]),
    // Plain VM: memslots.
    Case(path: .memslotCreate, lock: .slotsLock, expected: ok, end: [.memslots(2)]),
    Case(path: .memslotCreate, lock: .resv(2), expected: ok, end: [.memslots(2)]),
    Case(path: .memslotDelete, lock: .slotsLock, expected: ok, end: [.memslots(0), .mappedPages(0), .attachments(0)]),
    Case(path: .memslotDelete, lock: .mmuLockForWrite, expected: ok, end: [.memslots(0), .mappedPages(0), .attachments(0)]),
    Case(path: .memslotDelete, lock: .resv(1), expected: ok, end: [.memslots(0), .mappedPages(0), .attachments(0)]),
    // Plain VM: dma-buf.
    Case(path: .attach, lock: .resv(1), expected: .success(.attachment(AttachmentID(2))), end: [.attachments(2)]),
    Case(path: .detach, lock: .resv(1), expected: ok, end: [.attachments(1)]),
    Case(path: .pin, lock: .resv(1), expected: .failure(.errno(.EOPNOTSUPP))),
    Case(path: .pin, lock: .resv(1), variant: .rfcV1, expected: .failure(.errno(.EINVAL))),
    Case(path: .attach, lock: .resv(1), variant: .rfcV1, expected: .success(.attachment(AttachmentID(2))), end: [.attachments(2)]),
    Case(path: .detach, lock: .resv(1), variant: .rfcV1, expected: ok, end: [.attachments(1)]),
    Case(path: .getPfn, lock: .resv(1), expected: .success(.pfn(PFN(0x4000000), order: 9))),
    // The RFC's dma_buf_get_pfn_unlocked() takes resv around the exporter's callback; order 0.
    Case(path: .getPfn, lock: .resv(1), variant: .rfcV1, expected: .success(.pfn(PFN(0x4000000), order: 0))),
    Case(path: .detachThenRelease, lock: .resv(1), expected: ok, end: [.deviceBuffers(0)]),
    Case(path: .detachThenRelease, lock: .memoryLockForRead, expected: ok, end: [.deviceBuffers(0)]),
    Case(path: .closeThenRelease, lock: .memoryLockForRead, expected: ok, end: [.deviceBuffers(1)]),
    Case(path: .destroy, lock: .mmuLockForWrite, expected: ok, end: [.vmGone, .attachments(0)]),
    Case(path: .destroy, lock: .resv(1), expected: ok, end: [.vmGone, .attachments(0)]),
    // The slot's attachment held the buffer's last reference: its release runs on this thread.
    Case(path: .memslotDeleteThenRelease, lock: .memoryLockForRead, expected: ok, end: [.memslots(0), .deviceBuffers(0)]),
    Case(path: .destroyThenRelease, lock: .memoryLockForRead, expected: ok, end: [.vmGone, .deviceBuffers(0)]),
    // TD: revoke, whose move_notify begins the Secure-EPT zap under mmu_lock.
    Case(path: .tdDecodeOff, lock: .memoryLockForRead, expected: ok, end: [.revoked(true), .sept(nil), .mappedPages(0)]),
    Case(path: .tdDecodeOff, lock: .resv(1), expected: ok, end: [.revoked(true), .sept(nil), .mappedPages(0)]),
    Case(path: .tdDecodeOff, lock: .mmuLockForWrite, expected: ok, end: [.revoked(true), .sept(nil), .mappedPages(0)]),
    Case(path: .tdDecodeOff, lock: .resv(1), variant: .rfcV1, expected: ok, end: [.revoked(true), .sept(nil), .mappedPages(0)]),
    Case(path: .tdDecodeOff, lock: .mmuLockForWrite, variant: .rfcV1, expected: ok, end: [.revoked(true), .sept(nil), .mappedPages(0)]),
    Case(path: .tdFLR, lock: .memoryLockForRead, expected: ok, end: [.revoked(true), .sept(nil)]),
    Case(path: .tdFLR, lock: .mmuLockForWrite, expected: ok, end: [.revoked(true), .sept(nil)]),
    // The posted config-space FLR revokes again instead of restoring.
    Case(path: .tdFLR, lock: .memoryLockForRead, variant: .rfcV1, expected: ok, end: [.revoked(true), .sept(nil)]),
    Case(path: .tdFLR, lock: .resv(1), variant: .rfcV1, expected: ok, end: [.revoked(true), .sept(nil)]),
    Case(path: .tdFLR, lock: .mmuLockForWrite, variant: .rfcV1, expected: ok, end: [.revoked(true), .sept(nil)]),
    Case(path: .tdClose, lock: .memoryLockForRead, expected: ok, end: [.revoked(true), .deviceBuffers(0), .sept(nil)]),
    Case(path: .tdClose, lock: .mmuLockForWrite, expected: ok, end: [.revoked(true), .deviceBuffers(0), .sept(nil)]),
    // rfc-v1 disables and resets the device before it revokes, under the same memory_lock.
    Case(path: .tdClose, lock: .memoryLockForRead, variant: .rfcV1, expected: ok, end: [.revoked(true), .deviceBuffers(0), .sept(nil)]),
    Case(path: .tdClose, lock: .resv(1), variant: .rfcV1, expected: ok, end: [.revoked(true), .deviceBuffers(0), .sept(nil)]),
    Case(path: .tdClose, lock: .mmuLockForWrite, variant: .rfcV1, expected: ok, end: [.revoked(true), .deviceBuffers(0), .sept(nil)]),
    // TD: the vCPU's fault (TDH.MMIO.MAP under mmu_lock read) and accept.
    // The fault maps the page MMIO_PENDING, and the guest's access to a page it has not
    // accepted ends the TD (the model's TDX module).
    Case(path: .tdFault, lock: .resv(1), expected: .success(.guestAccess("killed")), end: [.sept(.mmioPending)]),
    Case(path: .tdFault, lock: .mmuLockForWrite, wantsWrite: false, expected: .success(.guestAccess("killed")), end: [.sept(.mmioPending)]),
    Case(path: .tdFault, lock: .mmuLockForWrite, variant: .rfcV1, wantsWrite: false, expected: .success(.guestAccess("killed")),
         end: [.sept(.mmioPending)]),
    Case(path: .accept, lock: .resv(1), expected: .success(.guestAccess("accepted")), end: [.sept(.mmioMapped)]),
    Case(path: .accept, lock: .mmuLockForWrite, wantsWrite: false, expected: .success(.guestAccess("accepted")), end: [.sept(.mmioMapped)]),
    Case(path: .accept, lock: .resv(1), variant: .rfcV1, expected: .success(.guestAccess("accepted")), end: [.sept(.mmioMapped)]),
    Case(path: .accept, lock: .mmuLockForWrite, variant: .rfcV1, wantsWrite: false, expected: .success(.guestAccess("accepted")),
         end: [.sept(.mmioMapped)]),
    // TD: the slot delete (its flush is the Secure-EPT zap), then KVM's detach.
    Case(path: .tdMemslotDelete, lock: .slotsLock, expected: ok, end: [.memslots(0), .attachments(0)]),
    Case(path: .tdMemslotDelete, lock: .mmuLockForWrite, expected: ok, end: [.memslots(0), .attachments(0)]),
    Case(path: .tdMemslotDelete, lock: .resv(1), expected: ok, end: [.memslots(0), .attachments(0)]),
    Case(path: .tdMemslotDelete, lock: .mmuLockForWrite, variant: .rfcV1, expected: ok, end: [.memslots(0), .attachments(0)]),
    // TD, reviewed: the TSM's unbind and state link go through VFIO's revoke and restore.
    Case(path: .tdispStop, lock: .memoryLockForRead, expected: .success(.tdiState("CONFIG_UNLOCKED")), end: [.revoked(true), .sept(nil)]),
    Case(path: .tdispStop, lock: .resv(1), expected: .success(.tdiState("CONFIG_UNLOCKED")), end: [.revoked(true), .sept(nil)]),
    Case(path: .tdispStop, lock: .mmuLockForWrite, expected: .success(.tdiState("CONFIG_UNLOCKED")), end: [.revoked(true), .sept(nil)]),
    Case(path: .tdispLock, lock: .memoryLockForRead, expected: .success(.tdiState("CONFIG_LOCKED")), end: [.revoked(false)]),
    Case(path: .tdispLock, lock: .resv(1), expected: .success(.tdiState("CONFIG_LOCKED")), end: [.revoked(false)]),
    Case(path: .tdispLock, lock: .mmuLockForWrite, expected: .success(.tdiState("CONFIG_LOCKED")), end: [.revoked(false)]),
    Case(path: .tdispStart, lock: .memoryLockForRead, expected: .success(.tdiState("RUN")), end: [.revoked(false)]),
    // reviewed's TSM state link revokes under memory_lock once the FLR has moved the TDI out of
    // RUN (the reset itself, from sysfs, takes no VFIO lock: see `unblocked`).
    Case(path: .pciFLR, lock: .memoryLockForRead, expected: ok, end: [.revoked(true), .sept(nil)]),
    Case(path: .pciFLR, lock: .resv(1), expected: ok, end: [.revoked(true), .sept(nil)]),
    Case(path: .pciFLR, lock: .mmuLockForWrite, expected: ok, end: [.revoked(true), .sept(nil)]),
    // TD: private memory.
    Case(path: .setAttributes, lock: .slotsLock, expected: ok, end: [.privateAt(false)]),
    Case(path: .setAttributes, lock: .mmuLockForWrite, expected: ok, end: [.privateAt(false)]),
    Case(path: .gmemClose, lock: .slotsLock, expected: ok, end: [.guestMemfds(0)]),
    Case(path: .gmemClose, lock: .mmuLockForWrite, expected: ok, end: [.guestMemfds(0)]),
    Case(path: .tdDestroy, lock: .mmuLockForWrite, expected: ok, end: [.vmGone, .attachments(0)]),
    Case(path: .tdDestroy, lock: .resv(1), expected: ok, end: [.vmGone, .attachments(0)]),
  ]

  static func deleteSlot1(_ vm: FD) -> Operation {
    .kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: 0))
  }

  /// The bench a path starts from, and its operation.
  static func setUp(_ path: Path, _ variant: Variant) throws -> (Bench, Operation) {
    var bench = try Bench(variant)
    let accept = Operation.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil)
    switch path {
    case .vfioRead:
      let (dev, _) = try bench.sharedSlot()
      return (bench, .vfioRead(fd: dev, regionIndex: 0, offset: 0, size: 4))
    case .vfioWrite:
      let (dev, _) = try bench.sharedSlot()
      return (bench, .vfioWrite(fd: dev, regionIndex: 0, offset: 0, size: 4))
    case .export:
      let (dev, _) = try bench.sharedSlot()
      return (bench, .vfioDmaBuf(fd: dev, regionIndex: 0, ranges: [DmaRange(offset: 0, length: 0x1000)], openFlags: 0, flags: 0))
    case .decodeOff, .commandWrite, .powerD3hot, .reset, .flr, .hotReset, .vfioClose, .memslotDelete, .destroy:
      let (dev, _) = try bench.sharedSlot()
      #expect(bench.access(bench.plain, gpaBase) == .success(.guestAccess("mapped", value: 0)))
      let op: Operation = switch path {
      case .decodeOff: .vfioSetMemoryDecode(fd: dev, enable: false)
      case .commandWrite: .vfioWrite(fd: dev, regionIndex: VFIOPCIRegion.config, offset: 4, size: 2, value: 0)
      case .powerD3hot: .vfioSetPower(fd: dev, state: .d3hot)
      case .reset: .vfioReset(fd: dev)
      case .flr: .vfioFLR(fd: dev)
      case .hotReset: .vfioHotReset(fd: dev)
      case .vfioClose: .vfioClose(fd: dev)
      case .memslotDelete: deleteSlot1(bench.plain)
      default: .kvmDestroyVM(vm: bench.plain)
      }
      return (bench, op)
    case .decodeOn, .powerD0:
      let (dev, _) = try bench.sharedSlot()
      guard path == .powerD0 else {
        try bench.ok(.vfioSetMemoryDecode(fd: dev, enable: false))
        return (bench, .vfioSetMemoryDecode(fd: dev, enable: true))
      }
      try bench.ok(.vfioSetPower(fd: dev, state: .d3hot))
      return (bench, .vfioSetPower(fd: dev, state: .d0))
    case .memslotDeleteThenRelease, .destroyThenRelease:
      let (_, buf) = try bench.sharedSlot()
      try bench.ok(.dmabufClose(fd: buf))
      return (bench, path == .destroyThenRelease ? .kvmDestroyVM(vm: bench.plain) : deleteSlot1(bench.plain))
    case .fault:
      _ = try bench.sharedSlot()
      return (bench, .guestRead(vm: bench.plain, gpa: GPA(gpaBase + 0x1000), size: 4))
    case .memslotCreate:
      let (dev, _) = try bench.sharedSlot()
      let second = try bench.exportBAR0(dev)
      return (bench, .kvmSetUserMemoryRegion2(vm: bench.plain, region: MemoryRegion2(
        slot: 2, flags: vfioDmaBuf, guestPhysAddr: gpaBase + 0x4000_0000, memorySize: Bench.bar0, guestMemfd: second.rawValue)))
    case .attach:
      let (_, buf) = try variant == .rfcV1 ? bench.tdSlot() : bench.sharedSlot()
      return (bench, .dmabufAttach(fd: buf, importer: "t", dynamic: true, peer2peer: true))
    case .detach, .pin, .getPfn:
      let (_, buf) = try variant == .rfcV1 ? bench.tdSlot() : bench.sharedSlot()
      let a = try bench.attach(buf)
      let op: Operation = switch path {
      case .detach: .dmabufDetach(attachment: a)
      case .pin: .dmabufPin(attachment: a)
      default: .dmabufGetPfn(attachment: a, pgoff: PageIndex(0))
      }
      return (bench, op)
    case .detachThenRelease:
      // The slot is gone and the fd closed: the test importer's attachment holds the last
      // reference, and its detach releases the buffer.
      let (_, buf) = try bench.sharedSlot()
      let a = try bench.attach(buf)
      try bench.ok(deleteSlot1(bench.plain))
      try bench.ok(.dmabufClose(fd: buf))
      return (bench, .dmabufDetach(attachment: a))
    case .closeThenRelease:
      // A second buffer nobody imports: closing its fd releases it.
      let (dev, _) = try bench.sharedSlot()
      let second = try bench.exportBAR0(dev)
      return (bench, .dmabufClose(fd: second))
    case .tdDecodeOff, .tdFLR, .tdClose:
      let (dev, _) = try bench.tdSlot()
      try bench.ok(accept)
      // rfc-v1 has no TSM link: the interface is stopped first, or TDH.MMIO.UNMAP is refused.
      if variant == .rfcV1 { try bench.ok(.tdispStop(device: "nic0")) }
      let op: Operation = switch path {
      case .tdDecodeOff: .vfioSetMemoryDecode(fd: dev, enable: false)
      case .tdFLR: .vfioFLR(fd: dev)
      default: .vfioClose(fd: dev)
      }
      return (bench, op)
    case .tdFault:
      _ = try bench.tdSlot()
      return (bench, .guestRead(vm: bench.td, gpa: GPA(gpaBase), size: 4))
    case .accept:
      _ = try bench.tdSlot()
      return (bench, accept)
    case .tdMemslotDelete:
      // Nothing is mapped, so reviewed's private MMIO slot delete protocol lets it through.
      _ = try bench.tdSlot()
      return (bench, deleteSlot1(bench.td))
    case .tdispStop, .tdispLock, .tdispStart:
      _ = try bench.tdSlot()
      try bench.ok(accept)
      guard path != .tdispStop else { return (bench, .tdispStop(device: "nic0")) }
      try bench.ok(.tdispStop(device: "nic0"))
      guard path != .tdispLock else { return (bench, .tdispLock(device: "nic0")) }
      try bench.ok(.tdispLock(device: "nic0"))
      return (bench, .tdispStart(device: "nic0", nonce: .echo))
    case .pciFLR:
      _ = try bench.tdSlot()
      try bench.ok(accept)
      return (bench, .pciFLR(device: "nic0"))
    case .setAttributes:
      _ = try bench.tdSlot()
      return (bench, .kvmSetMemoryAttributes(vm: bench.td, address: gpaBase, size: 0x1000, attributes: 0, flags: 0))
    case .gmemClose:
      _ = try bench.tdSlot()
      let g = try bench.gmem(bench.td)
      try bench.ok(bench.gmemSlot(bench.td, fd: g))
      return (bench, .dmabufClose(fd: g))
    case .tdDestroy:
      _ = try bench.tdSlot()
      try bench.ok(accept)
      return (bench, .kvmDestroyVM(vm: bench.td))
    }
  }

  static func hold(_ lock: Lock, _ bench: inout Bench, vm: VMID) throws {
    let device = VFIODeviceID(1)
    let granted: Bool
    switch lock {
    case .memoryLockForRead: granted = try bench.machine.vfio.devices[device]!.memoryLock.tryLockRead(holder)
    case .memoryLockForWrite: granted = try bench.machine.vfio.devices[device]!.memoryLock.tryLockWrite(holder)
    case .resv(let buffer): granted = try bench.machine.dmabufCore.lockResv(DmaBufID(buffer), context: holder)
    case .mmuLockForRead: granted = try bench.machine.kvm.vms[vm]!.mmuLock.tryLockRead(holder)
    case .mmuLockForWrite: granted = try bench.machine.kvm.vms[vm]!.mmuLock.tryLockWrite(holder)
    case .slotsLock: try bench.machine.kvm.vms[vm]!.lockSlots(holder); granted = true
    }
    #expect(granted, "the holder takes \(lock)")
  }

  static func release(_ lock: Lock, _ bench: inout Bench, vm: VMID) throws {
    let device = VFIODeviceID(1)
    switch lock {
    case .memoryLockForRead, .memoryLockForWrite: try bench.machine.vfio.devices[device]!.memoryLock.unlock(holder)
    case .resv(let buffer): try bench.machine.dmabufCore.unlockResv(DmaBufID(buffer), context: holder)
    case .mmuLockForRead, .mmuLockForWrite: try bench.machine.kvm.vms[vm]!.mmuLock.unlock(holder)
    case .slotsLock: try bench.machine.kvm.vms[vm]!.unlockSlots(holder)
    }
  }

  static func holds(_ end: End, in bench: Bench, vm: VMID) -> Bool {
    let state = bench.machine.kvm.vms[vm]
    switch end {
    case .revoked(let revoked): return bench.machine.vfio.dmaBuf(DmaBufID(1))?.revoked == revoked
    case .mappedPages(let pages): return state?.mmu.mappedPages == pages
    case .sept(let sept): return bench.sept(gpaBase) == sept
    case .memslots(let count): return state?.memslots.count == count
    case .deviceBuffers(let count): return bench.machine.vfio.device(VFIODeviceID(1))?.dmabufs.count == count
    case .attachments(let count): return bench.machine.dmabufCore.buffer(DmaBufID(1))?.attachments.count == count
    case .vmGone: return state == nil
    case .privateAt(let isPrivate): return state?.memoryAttributes.isPrivate(GPA(gpaBase).gfn) == isPrivate
    case .guestMemfds(let count): return state?.guestMemfds.count == count
    }
  }

  @Test(arguments: cases)
  func aHeldLockBlocksWithoutChange(c: Case) throws {
    var (bench, op) = try Self.setUp(c.path, c.variant)
    let vm = c.path.onTD(c.variant) ? bench.tdVM : bench.plainVM
    let ctx = ContextID(rawValue: 1)
    // The same path, alone on the same bench: the state a blocked run must end in.
    var alone = bench
    #expect(alone.machine.perform(op, context: ctx) == c.expected, "alone")

    try Self.hold(c.lock, &bench, vm: vm)
    var thread = bench.machine.startThread(op, context: ctx, name: "t1")
    let wait = try #require(try bench.stepUntilLockWait(&thread), "\(c.path.rawValue) never waited")
    #expect(wait == .lock(c.lock.name, write: c.wantsWrite, heldBy: holder))
    // Blocked again: the machine and the thread are exactly as they were.
    let machineBefore = bench.machine, threadBefore = thread
    var contention = Contention()
    guard case .blocked(let again) = bench.machine.step(&thread, choices: &contention) else {
      Issue.record("\(c.path.rawValue) went on while the lock is held"); return
    }
    #expect(again == wait)
    #expect(bench.machine == machineBefore && thread == threadBefore)

    try Self.release(c.lock, &bench, vm: vm)
    #expect(bench.finish(&thread) == c.expected)
    #expect(bench.machine.locksHeld(by: ctx).isEmpty && bench.machine.locksHeld(by: holder).isEmpty)
    bench.machine.canonicalize()
    #expect(bench.machine == alone.machine, "the end state is the one the path reaches alone")
    for end in c.end { #expect(Self.holds(end, in: bench, vm: vm), "\(end)") }
    #expect(bench.violated() == alone.violated())
  }

  /// Paths that take no lock the test holds, on the TD bench with the page accepted.
  enum Unlocked: String, Sendable {
    case tdispStop = "tdisp.stop", pciFLR = "pci.flr", configWrite = "vfio.write config 0x40"
    case closeNotLast = "dmabuf.close, not the last reference"
    case attributesOutsideSlots = "kvm.set_memory_attributes outside every slot"
    case gmemCloseUnbound = "guest_memfd close, no slot bound"
  }

  /// Where the kernel takes no such lock, a held one does not stop the path.
  struct Unblocked: CustomTestStringConvertible, Sendable {
    let path: Unlocked
    let variant: Variant
    let lock: Lock
    let expected: OpResult
    var testDescription: String { "\(variant) \(path.rawValue) does not wait for \(lock)" }
  }

  static let unblocked: [Unblocked] = [
    // The posted RFC's TSM stops the interface on its own; VFIO is not told.
    Unblocked(path: .tdispStop, variant: .rfcV1, lock: .memoryLockForWrite, expected: .success(.tdiState("CONFIG_UNLOCKED"))),
    // pci_reset_function() from sysfs: vfio-pci has no reset_prepare/reset_done hooks.
    Unblocked(path: .pciFLR, variant: .rfcV1, lock: .memoryLockForWrite, expected: .success(.none)),
    // vfio_pci_config_rw(): only the command register, PMCSR and FLR writes take memory_lock.
    Unblocked(path: .configWrite, variant: .reviewed, lock: .memoryLockForWrite, expected: .success(.none)),
    // A dma-buf fd whose buffer KVM still holds: close drops a reference, nothing is released.
    Unblocked(path: .closeNotLast, variant: .reviewed, lock: .memoryLockForWrite, expected: .success(.none)),
    // kvm_handle_gfn_range(): no memslot in the range, no mmu_lock.
    Unblocked(path: .attributesOutsideSlots, variant: .reviewed, lock: .mmuLockForWrite, expected: .success(.none)),
    // kvm_gmem_invalidate_begin()/_end(): no binding, no mmu_lock.
    Unblocked(path: .gmemCloseUnbound, variant: .reviewed, lock: .mmuLockForWrite, expected: .success(.none)),
  ]

  @Test(arguments: unblocked)
  func aLockThePathDoesNotTake(c: Unblocked) throws {
    var bench = try Bench(c.variant)
    let (dev, buf) = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
    let op: Operation = switch c.path {
    case .tdispStop: .tdispStop(device: "nic0")
    case .pciFLR: .pciFLR(device: "nic0")
    case .configWrite: .vfioWrite(fd: dev, regionIndex: VFIOPCIRegion.config, offset: 0x40, size: 4)
    case .closeNotLast: .dmabufClose(fd: buf)
    case .attributesOutsideSlots: .kvmSetMemoryAttributes(vm: bench.td, address: 0x1_0000_0000, size: 0x1000, attributes: 1 << 3, flags: 0)
    case .gmemCloseUnbound: .dmabufClose(fd: try bench.gmem(bench.td))
    }
    var alone = bench
    #expect(alone.machine.perform(op, context: ContextID(rawValue: 1)) == c.expected, "alone")
    try Self.hold(c.lock, &bench, vm: bench.tdVM)
    var thread = bench.machine.startThread(op, context: ContextID(rawValue: 1))
    var contention = Contention()
    var result: OpResult?
    for _ in 0 ..< 100 where result == nil {
      switch bench.machine.step(&thread, choices: &contention) {
      case .finished(let r): result = r
      case .ran: continue
      case .blocked(let wait): Issue.record("waits for \(wait)"); return
      }
    }
    #expect(result == c.expected)
    try Self.release(c.lock, &bench, vm: bench.tdVM)
    bench.machine.canonicalize()
    #expect(bench.machine == alone.machine)
  }

  // MARK: A real second thread holds the lock

  /// A BAR read waits for a decode-off revoke that holds `memory_lock` for write, then finds
  /// memory decode off: `vfio_pci_core_do_io_rw()` answers EIO.
  @Test func aReadWaitsForARevokeHoldingMemoryLock() throws {
    var bench = try Bench(.reviewed)
    let (dev, _) = try bench.sharedSlot()
    let revokeOp = Operation.vfioSetMemoryDecode(fd: dev, enable: false)
    let readOp = Operation.vfioRead(fd: dev, regionIndex: 0, offset: 0, size: 4)
    var expected = bench.machine
    #expect(expected.perform(revokeOp) == .success(.none))
    #expect(expected.perform(readOp) == .failure(.errno(.EIO)))

    var revoke = bench.machine.startThread(revokeOp, context: ContextID(rawValue: 2), name: "ctx2")
    var read = bench.machine.startThread(readOp, context: ContextID(rawValue: 1), name: "ctx1")
    #expect(bench.stepLabel(&revoke) == "down_write(memory_lock)")
    let before = bench.machine, readBefore = read
    #expect(bench.stepLabel(&read) == "blocked: vdev1->memory_lock (read), held by ctx2")
    #expect(bench.machine == before && read == readBefore)
    #expect(bench.finish(&revoke) == .success(.none))
    #expect(bench.finish(&read) == .failure(.errno(.EIO)))
    bench.machine.canonicalize()
    #expect(bench.machine == expected)
    #expect(bench.violated().isEmpty)
  }

  /// An attach waits for a revoke that holds the buffer's resv across KVM's `move_notify`,
  /// then finds it revoked: `vfio_pci_dma_buf_attach()` answers ENODEV.
  @Test func anAttachWaitsForARevokeHoldingResv() throws {
    var bench = try Bench(.reviewed)
    let (dev, buf) = try bench.sharedSlot()
    #expect(bench.access(bench.plain, gpaBase) == .success(.guestAccess("mapped", value: 0)))
    let revokeOp = Operation.vfioSetMemoryDecode(fd: dev, enable: false)
    let attachOp = Operation.dmabufAttach(fd: buf, importer: "t", dynamic: true, peer2peer: true)
    var expected = bench.machine
    #expect(expected.perform(revokeOp) == .success(.none))
    #expect(expected.perform(attachOp) == .failure(.errno(.ENODEV)))

    var revoke = bench.machine.startThread(revokeOp, context: ContextID(rawValue: 2), name: "ctx2")
    var attach = bench.machine.startThread(attachOp, context: ContextID(rawValue: 1), name: "ctx1")
    #expect(bench.stepLabel(&revoke) == "down_write(memory_lock)")
    #expect(bench.stepLabel(&revoke) == "dma_resv_lock, flip, move_notify")
    let before = bench.machine, attachBefore = attach
    #expect(bench.stepLabel(&attach) == "blocked: dmabuf1->resv (write), held by ctx2")
    #expect(bench.machine == before && attach == attachBefore)
    #expect(bench.stepLabel(&revoke) == "move_notify: mmu_lock write, invalidate, zap the slot, unlock")
    #expect(bench.stepLabel(&attach) == "blocked: dmabuf1->resv (write), held by ctx2")
    #expect(bench.finish(&revoke) == .success(.none))
    #expect(bench.finish(&attach) == .failure(.errno(.ENODEV)))
    bench.machine.canonicalize()
    #expect(bench.machine == expected)
    #expect(bench.vm(bench.plain)?.mmu.mappedPages == 0)
    #expect(bench.violated().isEmpty)
  }

  /// A TD's accept, past its PFN lookup, waits for the revoke's Secure-EPT zap, which holds
  /// `mmu_lock` for write; the install then finds `mmu_invalidate_seq` moved and retries, and
  /// the revoked buffer refuses the PFN.
  @Test func anAcceptWaitsForATDZapHoldingMMULock() throws {
    var bench = try Bench(.reviewed)
    let (dev, _) = try bench.tdSlot()
    let revokeOp = Operation.vfioSetMemoryDecode(fd: dev, enable: false)
    let acceptOp = Operation.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil)
    var expected = bench.machine
    #expect(expected.perform(revokeOp) == .success(.none))
    // The buffer is revoked: the exporter refuses the PFN, KVM_RUN fails.
    let acceptAfter = OpResult.failure(.errno(.EIO))
    #expect(expected.perform(acceptOp) == acceptAfter)

    var accept = bench.machine.startThread(acceptOp, context: ContextID(rawValue: 1), name: "vcpu0")
    var revoke = bench.machine.startThread(revokeOp, context: ContextID(rawValue: 2), name: "ctx2")
    #expect(bench.stepLabel(&accept) == "guest: TDG.MMIO.ACCEPT, EPT violation, TD exit")
    #expect(bench.stepLabel(&accept) == "fault: srcu_read_lock, read mmu_invalidate_seq, find the slot")
    #expect(bench.stepLabel(&accept) == "fault: get_pfn under resv")
    #expect(bench.stepLabel(&revoke) == "down_write(memory_lock)")
    #expect(bench.stepLabel(&revoke) == "dma_resv_lock, flip, move_notify")
    #expect(bench.stepLabel(&revoke) == "move_notify: mmu_lock write, invalidate begin")
    let before = bench.machine, acceptBefore = accept
    #expect(bench.stepLabel(&accept) == "blocked: kvm->mmu_lock (read), held by ctx2")
    #expect(bench.machine == before && accept == acceptBefore)
    #expect(bench.finish(&revoke) == .success(.none))
    #expect(bench.stepLabel(&accept) == "fault: mmu_lock read, seq checked, install SPTE")
    #expect(accept.retries == 1)
    #expect(bench.finish(&accept) == acceptAfter)
    bench.machine.canonicalize()
    #expect(bench.machine == expected)
    #expect(bench.sept(gpaBase) == nil)
    #expect(bench.violated().isEmpty)
  }

  /// Three threads: a vCPU inside its fault (an SRCU reader), a slot delete that holds
  /// `slots_lock` while `synchronize_srcu()` waits for it, and a slot create that waits for
  /// `slots_lock`. Each finishes with its own result once the one before it lets go.
  @Test func aCreateWaitsForADeleteHoldingSlotsLock() throws {
    var bench = try Bench(.reviewed)
    let (dev, _) = try bench.sharedSlot()
    let second = try bench.exportBAR0(dev)
    let faultOp = Operation.guestRead(vm: bench.plain, gpa: GPA(gpaBase), size: 4)
    let deleteOp = Self.deleteSlot1(bench.plain)
    let createOp = Operation.kvmSetUserMemoryRegion2(vm: bench.plain, region: MemoryRegion2(
      slot: 2, flags: vfioDmaBuf, guestPhysAddr: gpaBase + 0x4000_0000, memorySize: Bench.bar0, guestMemfd: second.rawValue))
    var expected = bench.machine
    #expect(expected.perform(faultOp) == .success(.guestAccess("mapped", value: 0)))
    #expect(expected.perform(deleteOp) == .success(.none))
    #expect(expected.perform(createOp) == .success(.none))

    var fault = bench.machine.startThread(faultOp, context: ContextID(rawValue: 1), name: "vcpu0")
    var delete = bench.machine.startThread(deleteOp, context: ContextID(rawValue: 2), name: "ctx2")
    var create = bench.machine.startThread(createOp, context: ContextID(rawValue: 3), name: "ctx3")
    #expect(bench.stepLabel(&fault) == "guest: access, EPT violation, VM exit")
    #expect(bench.stepLabel(&fault) == "fault: srcu_read_lock, read mmu_invalidate_seq, find the slot")
    #expect(bench.stepLabel(&delete) == "slots_lock, check the region")
    #expect(bench.stepLabel(&delete) == "blocked: synchronize_srcu: ctx1 is in a kvm->srcu read section")
    let before = bench.machine, createBefore = create
    #expect(bench.stepLabel(&create) == "blocked: kvm->slots_lock (write), held by ctx2")
    #expect(bench.machine == before && create == createBefore)
    #expect(bench.finish(&fault) == .success(.guestAccess("mapped", value: 0)))
    #expect(bench.stepLabel(&create) == "blocked: kvm->slots_lock (write), held by ctx2")
    #expect(bench.finish(&delete) == .success(.none))
    #expect(bench.finish(&create) == .success(.none))
    bench.machine.canonicalize()
    #expect(bench.machine == expected)
    #expect(bench.vm(bench.plain)?.memslots.count == 1)
    #expect(bench.vm(bench.plain)?.mmu.mappedPages == 0)
    #expect(bench.violated().isEmpty)
  }

  /// The TD zap's kick waits for every vCPU in guest mode to answer its IPI; a vCPU running
  /// its own access answers it before its next instruction.
  @Test func theKickWaitsForEveryVCPUInGuestMode() throws {
    var bench = try Bench(.reviewed)
    let (dev, _) = try bench.tdSlot()
    try bench.ok(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase), expectHPA: nil))
    var revoke = bench.machine.startThread(.vfioSetMemoryDecode(fd: dev, enable: false), context: ContextID(rawValue: 2))
    let blocked = bench.stepUntilBlocked(&revoke)
    let wait = try #require(blocked)
    #expect(wait == .guestModeExit(vm: 1, vcpu: 0))
    #expect(wait.description == "vm1 vcpu0 to leave guest mode (KVM_REQ_OUTSIDE_GUEST_MODE)")
    #expect(bench.machine.kickResponders() == [VCPURef(vm: bench.tdVM, index: 0)])
    // vCPU 0's own thread is in guest mode: its next step takes the IPI.
    var access = bench.machine.startThread(.guestRead(vm: bench.td, gpa: GPA(gpaBase), size: 4), context: ContextID(rawValue: 1))
    var contention = Contention()
    guard case .ran(let label) = bench.machine.step(&access, choices: &contention) else { Issue.record("no IPI step"); return }
    #expect("\(label)" == "IPI: exit guest mode, enter again")
    #expect(bench.machine.kickResponders().isEmpty)
    #expect(bench.finish(&revoke) == .success(.none))
    #expect(bench.finish(&access) == .failure(.errno(.EIO)))
    #expect(bench.violated().isEmpty)
  }

  /// A memslot delete waits in synchronize_srcu() for a vCPU inside its fault.
  @Test func aMemslotDeleteWaitsForSRCUReaders() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.sharedSlot()
    var fault = bench.machine.startThread(.guestRead(vm: bench.plain, gpa: GPA(gpaBase), size: 4), context: ContextID(rawValue: 1))
    var contention = Contention()
    _ = bench.machine.step(&fault, choices: &contention)   // guest: EPT violation
    _ = bench.machine.step(&fault, choices: &contention)   // fault: srcu_read_lock, seq, slot
    var delete = bench.machine.startThread(.kvmSetUserMemoryRegion2(vm: bench.plain, region: MemoryRegion2(
      slot: 1, flags: vfioDmaBuf, guestPhysAddr: gpaBase, memorySize: 0)), context: ContextID(rawValue: 2))
    let blocked = bench.stepUntilBlocked(&delete)
    let wait = try #require(blocked)
    #expect(wait == .srcuReader(ContextID(rawValue: 1)))
    #expect(wait.description == "synchronize_srcu: ctx1 is in a kvm->srcu read section")
    // The fault finishes first (its PFN was looked up before the slot went INVALID), then the
    // delete flushes what it installed.
    #expect(bench.finish(&fault) == .success(.guestAccess("mapped", value: 0)))
    #expect(bench.finish(&delete) == .success(.none))
    #expect(bench.vm(bench.plain)?.mmu.mappedPages == 0)
    #expect(bench.violated().isEmpty)
  }
}
