import KernelCore
import PCI
import VFIO
import TDX

extension Machine {
  // The host's TDX Connect calls for a device (through the TSM), and raw SEAMCALLs.

  /// `tdx.devif_create`: TDH.DEVIF.CREATE for the device, bound to the VM's TD.
  mutating func tdxDevifCreate(_ vmFD: FD, device name: String) throws(OpFailure) -> OpValue {
    let id = try liveVM(vmFD)
    let device = try pciDevice(named: name, by: "pci_tsm")
    guard let td = kvm.tds[id] else {
      throw .errno(Errno.EINVAL.because("tdx_tsm", "vm\(id.rawValue) is not a TD: there is no TDR to bind the DEVIF to"))
    }
    let devif = try status { () throws(TDXStatus) in
      try kvm.tdx.tdhDevifCreate(td: td, interface: KVMHost.routingID(device))
    }
    trace.absorb(&kvm.tdx.trace)
    // The module trusts only TDISP states it has seen: relay the interface's current one.
    try relayTDIState(device)
    trace.emit(.tdxDevifBind, "DEVIF \(devif) binds \(name) to td\(td.rawValue)", [.id("devif", devif), .text("device", name), .id("td", td)])
    return .none
  }

  /// `tdx.devif_remove`: TDH.DEVIF.REMOVE of the device's DEVIF.
  mutating func tdxDevifRemove(_ vmFD: FD, device name: String) throws(OpFailure) -> OpValue {
    _ = try errno { () throws(Errno) in try vm(vmFD) }
    let devif = try devif(of: try pciDevice(named: name, by: "pci_tsm"))
    try status { () throws(TDXStatus) in try kvm.tdx.tdhDevifRemove(devif: devif) }
    return .none
  }

  /// `tdx.mmio_mt_add`: TDH.MMIO.MT.ADD of every MMIO range the interface report gives.
  mutating func tdxMMIOMTAdd(device name: String) throws(OpFailure) -> OpValue {
    let device = try pciDevice(named: name, by: "pci_tsm")
    let devif = try devif(of: device)
    guard let function = vfio.device(device)?.function else {
      throw .errno(Errno.ENODEV.because("pci_tsm", "vfio-pci has no device \(name)"))
    }
    let report: TDISPInterfaceReport
    do { report = try function.tdispInterfaceReport() } catch { throw .tdisp(code: error.code, name: error.name) }
    // Every range or none: the module is updated only when all of them were accepted.
    var module = kvm.tdx
    for range in report.mmioRanges {
      try status { () throws(TDXStatus) in
        try module.tdhMMIOMTAdd(devif: devif, first: report.hostFirstPage(of: range).hpa,
                                count: UInt64(range.numberOfPages),
                                attributes: MMIOMTAttributes(rawValue: UInt32(range.attributes.rawValue)))
      }
    }
    kvm.tdx = module
    trace.absorb(&kvm.tdx.trace)
    return .none
  }

  /// `tdx.stream_block`: the IDE stream of the device's DEVIF is blocked.
  mutating func tdxStreamBlock(device name: String) throws(OpFailure) -> OpValue {
    let devif = try devif(of: try pciDevice(named: name, by: "pci_tsm"))
    try status { () throws(TDXStatus) in try kvm.tdx.ideStreamBlocked(devif: devif) }
    return .none
  }

  /// `tdx.seamcall`: a raw SEAMCALL with its registers.
  mutating func tdxSeamcall(_ leaf: UInt64, _ args: [UInt64]) throws(OpFailure) -> OpValue {
    switch kvm.tdx.seamcall(leaf: leaf, args: args) {
    case .success(let registers): return .seamcall(registers)
    case .failure(let status): throw .tdx(status)
    }
  }

  /// The DEVIF the TDX module holds for a device. The host keeps the handle DEVIF.CREATE
  /// returned; without one there is nothing to pass (`ENOENT`).
  func devif(of device: VFIODeviceID) throws(OpFailure) -> DevifID {
    guard let devif = kvm.tdx.devif(for: KVMHost.routingID(device)) else {
      throw .errno(Errno.ENOENT.because("tdx_tsm", "no DEVIF for \(KVMHost.routingID(device)): TDH.DEVIF.CREATE was never called for the device, or it was removed"))
    }
    return devif
  }
}
