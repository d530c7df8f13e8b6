import CFloor
import KernelCore
import Platform

/// Sizes the benchmarks use.
public enum Size {
  public static let gib: UInt64 = 1 << 30
  public static let mib2: UInt64 = 1 << 21
  /// Where slots are placed in guest-physical space: 64 GiB, aligned for 1 GiB mappings.
  public static let gpaBase: UInt64 = 64 * gib
}

/// A machine set up as the default scenario does, up to the point where the guest touches the
/// slot: one device with one BAR, exported whole as a dma-buf and put in memslot 1 of a VM.
///
/// - A default VM: plain bind, export, `KVM_SET_USER_MEMORY_REGION2` (`vfio_dmabuf`).
/// - A TD: private bind to the TD, TDISP lock, `tdx.devif_create`, `tdx.mmio_mt_add`, TDISP
///   start, then the same export and slot (`BuiltinScenarios.defaultYAML`'s order).
public struct Rig {
  public var machine: Machine
  public let vm: FD
  public let device: FD
  public let isTD: Bool
  /// First GPA of the slot.
  public let gpa: UInt64
  /// Bytes of the slot (the whole BAR).
  public let size: UInt64
  /// Host-physical base of the BAR.
  public let hpa: UInt64

  /// - Parameter gpaSkew: added to the slot's GPA; a skew of one page makes every GFN and PFN
  ///   disagree inside any huge page, so a default VM faults at 4 KiB, a skew of 2 MiB at most
  ///   2 MiB.
  public init(td: Bool, barSize: UInt64, gpaSkew: UInt64) throws {
    let config = MachineConfiguration(
      devices: [DeviceConfiguration(name: "dev0", bars: [BARConfiguration(index: 0, size: barSize)], tdisp: td)],
      vms: [VMConfiguration(name: "vm0", type: td ? .tdx : .default)])
    machine = try Machine(configuration: config)
    machine.trace.isEnabled = false
    guard let vm = machine.vmFD(named: "vm0") else { throw RigError("no vm0") }
    self.vm = vm
    isTD = td
    gpa = Size.gpaBase + gpaSkew
    size = barSize
    hpa = Machine.mmioWindowBase.rawValue   // the first BAR, naturally aligned at the window base
    device = try Rig.fd(&machine, .vfioOpen(device: "dev0"))
    try Rig.ok(&machine, .vfioBindIOMMUFD(fd: device, private: td, vm: td ? vm : nil))
    if td {
      try Rig.ok(&machine, .tdispLock(device: "dev0"))
      try Rig.ok(&machine, .tdxDevifCreate(vm: vm, device: "dev0"))
      try Rig.ok(&machine, .tdxMMIOMTAdd(device: "dev0"))
      try Rig.ok(&machine, .tdispStart(device: "dev0", nonce: .echo))
    }
    let buf = try Rig.fd(&machine, .vfioDmaBuf(fd: device, regionIndex: 0, ranges: [DmaRange(offset: 0, length: barSize)],
                                               openFlags: 0, flags: 0))
    try Rig.ok(&machine, .kvmSetUserMemoryRegion2(vm: vm, region: MemoryRegion2(
      slot: 1, flags: 1 << 3, guestPhysAddr: gpa, memorySize: barSize, guestMemfd: buf.rawValue)))
    if td {
      // A TD's fault maps private MMIO only where the attributes say private (KVM_MEMORY_ATTRIBUTE_PRIVATE).
      try Rig.ok(&machine, .kvmSetMemoryAttributes(vm: vm, address: gpa, size: barSize, attributes: 1 << 3, flags: 0))
    }
  }

  public static func ok(_ m: inout Machine, _ op: Operation) throws {
    let r = m.perform(op)
    guard case .success = r else { throw RigError("\(op) -> \(r)") }
  }

  public static func fd(_ m: inout Machine, _ op: Operation) throws -> FD {
    guard case .success(.fd(let fd)) = m.perform(op) else { throw RigError("\(op) gave no fd") }
    return fd
  }

  /// The guest touches page `page` of the slot: a read for a default VM, `TDG.MMIO.ACCEPT` of
  /// the HPA the interface report gives for a TD. Returns whether it succeeded.
  @inlinable
  public static func touch(_ m: inout Machine, _ rig: Rig, page: UInt64, stride: UInt64 = pageSize) -> Bool {
    let offset = page &* stride
    let op: Operation = rig.isTD
      ? .guestAcceptMMIO(vm: rig.vm, gpa: GPA(rig.gpa &+ offset), expectHPA: HPA(rig.hpa &+ offset))
      : .guestRead(vm: rig.vm, gpa: GPA(rig.gpa &+ offset), size: 4)
    if case .success = m.perform(op) { return true }
    return false
  }

  /// Touches pages `range` (in units of `stride`) of the slot; throws on the first failure.
  public static func touchAll(_ m: inout Machine, _ rig: Rig, _ range: Range<UInt64>, stride: UInt64 = pageSize) throws {
    for page in range where !touch(&m, rig, page: page, stride: stride) {
      throw RigError("touch of page \(page) failed: \(m.perform(.guestRead(vm: rig.vm, gpa: GPA(rig.gpa + page * stride), size: 4)))")
    }
  }

  /// Revokes the BAR: decode off for a default VM (VFIO's revoke runs `move_notify`, which
  /// zaps the slot), TDISP stop for a TD (the TD's zap path: block, track, kick, unmap).
  public static func revoke(_ m: inout Machine, _ rig: Rig) throws {
    try ok(&m, rig.isTD ? .tdispStop(device: "dev0") : .vfioSetMemoryDecode(fd: rig.device, enable: false))
  }

  /// The VM's MMU, as the machine exports it.
  public static func mappedPages(_ m: Machine) -> UInt64 { m.kvm.vms.values.first?.mmu.mappedPages ?? 0 }
}

public struct RigError: Error, CustomStringConvertible {
  public let description: String
  public init(_ d: String) { description = d }
}

/// The C floor's twin of a ``Rig``: a VM (or TD) with one slot over one contiguous BAR range.
public struct CRig {
  public let gpa: UInt64
  public let hpa: UInt64
  public let size: UInt64
  public let isTD: Bool

  public init(td: Bool, barSize: UInt64, gpaSkew: UInt64) {
    isTD = td
    gpa = Size.gpaBase + gpaSkew
    size = barSize
    hpa = Machine.mmioWindowBase.rawValue
  }

  public func make() -> OpaquePointer {
    let vm = cf_vm_create(isTD ? 1 : 0)!
    var range = cf_range(pfn: hpa >> 12, npages: size >> 12)
    let rc = cf_vm_add_slot(vm, gpa >> 12, size >> 12, &range, 1, 0)
    precondition(rc == 0, "cf_vm_add_slot: \(rc)")
    return vm
  }

  @inlinable
  public func touch(_ vm: OpaquePointer, page: UInt64, stride: UInt64 = pageSize) -> Bool {
    let offset = page &* stride
    let rc = isTD ? cf_guest_accept(vm, gpa &+ offset, hpa &+ offset) : cf_guest_read(vm, gpa &+ offset)
    return rc == Int32(CF_MAPPED) || rc == Int32(CF_ALREADY_MAPPED)
  }

  public func touchAll(_ vm: OpaquePointer, _ range: Range<UInt64>, stride: UInt64 = pageSize) throws {
    for page in range where !touch(vm, page: page, stride: stride) { throw RigError("C touch of page \(page) failed") }
  }

  public func zapAll(_ vm: OpaquePointer) -> UInt64 { cf_zap(vm, gpa >> 12, (gpa + size) >> 12) }
}
