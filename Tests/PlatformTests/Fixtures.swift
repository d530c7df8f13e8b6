import Testing
import KernelCore
import DmaBuf
import VFIO
@testable import Platform

/// A machine with one TDISP device (`nic0`: BAR0 2 MiB, BAR2 64 KiB with its MSI-X table) and
/// one VM of each type, plus helpers that run the usual set-up ops and return their handles.
struct Bench {
  var machine: Machine
  let td: FD
  let plain: FD

  static let bar0: UInt64 = 0x20_0000
  static let configuration = MachineConfiguration(
    devices: [DeviceConfiguration(name: "nic0", bars: [
      BARConfiguration(index: 0, size: bar0),
      BARConfiguration(index: 2, size: 0x1_0000, msixTable: DmaRange(offset: 0, length: 0x1000),
                       msixPBA: DmaRange(offset: 0x1000, length: 0x1000)),
    ], tdisp: true)],
    vms: [VMConfiguration(name: "td0", type: .tdx), VMConfiguration(name: "vm0", type: .default)])

  init(_ variant: Variant = .reviewed) throws {
    machine = try Machine(configuration: Self.configuration, variant: variant)
    td = try #require(machine.vmFD(named: "td0"))
    plain = try #require(machine.vmFD(named: "vm0"))
  }

  /// Runs `op`, requiring success, and returns its value.
  @discardableResult
  mutating func ok(_ op: Operation, sourceLocation: SourceLocation = #_sourceLocation) throws -> OpValue {
    let result = machine.perform(op)
    guard case .success(let value) = result else {
      Issue.record("\(op) failed: \(result)", sourceLocation: sourceLocation)
      throw OpFailure.errno(.EIO)
    }
    return value
  }

  mutating func fd(_ op: Operation, sourceLocation: SourceLocation = #_sourceLocation) throws -> FD {
    guard case .fd(let fd) = try ok(op, sourceLocation: sourceLocation) else { throw OpFailure.errno(.EIO) }
    return fd
  }

  /// Runs `op` and returns the errno it failed with (nil on success).
  mutating func errno(_ op: Operation) -> Errno? {
    if case .failure(let failure) = machine.perform(op) { return failure.errno }
    return nil
  }

  /// open + bind (private to td0, or plain); a private device's interface is then locked and
  /// started, as the TSM does before the TD may use it.
  mutating func openDevice(private isPrivate: Bool = true) throws -> FD {
    let dev = try fd(.vfioOpen(device: "nic0"))
    try ok(.vfioBindIOMMUFD(fd: dev, private: isPrivate, vm: isPrivate ? td : nil))
    if isPrivate {
      try ok(.tdispLock(device: "nic0"))
      try ok(.tdispStart(device: "nic0", nonce: .echo))
    }
    return dev
  }

  /// DEVIF.CREATE for td0 and MMIO.MT.ADD from the interface report: what the TDX module
  /// needs before it maps the device's MMIO into the TD.
  mutating func bindToTD() throws {
    try ok(.tdxDevifCreate(vm: td, device: "nic0"))
    try ok(.tdxMMIOMTAdd(device: "nic0"))
  }

  /// Exports the whole of BAR0.
  mutating func exportBAR0(_ dev: FD) throws -> FD {
    try fd(.vfioDmaBuf(fd: dev, regionIndex: 0, ranges: [DmaRange(offset: 0, length: Self.bar0)], openFlags: 0, flags: 0))
  }

  mutating func attach(_ buf: FD, importer: String = "imp") throws -> AttachmentID {
    guard case .attachment(let a) = try ok(.dmabufAttach(fd: buf, importer: importer, dynamic: true, peer2peer: true)) else {
      throw OpFailure.errno(.EIO)
    }
    return a
  }

  /// The VFIO exporter state of the buffer behind `fd`.
  func priv(_ fd: FD) -> VFIOPCIDmaBuf? {
    guard case .dmaBuf(let id)? = try? machine.files.lookup(fd) else { return nil }
    return machine.vfio.dmaBuf(id)
  }

  func notifications(_ a: AttachmentID) -> Int { machine.dmabufCore.attachment(a)?.moveNotifications ?? -1 }

  func violated() -> [String] { machine.checkInvariants().filter { !$0.held }.map(\.name) }

  var bar0Base: HPA {
    machine.vfio.device(VFIODeviceID(1))?.function.bar(0)?.base ?? HPA(0)
  }
}
