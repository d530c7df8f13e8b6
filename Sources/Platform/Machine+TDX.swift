import KernelCore
import PCI
import VFIO
import TDX

extension Machine {
  /// The host's TDX Connect calls for a device (through the TSM) and raw SEAMCALLs.
  mutating func performTDX(_ op: Operation) throws(OpFailure) -> OpValue {
    switch op {
    case .tdxDevifCreate(let vmFD, let name):
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

    case .tdxDevifRemove(let vmFD, let name):
      _ = try errno { () throws(Errno) in try vm(vmFD) }
      let devif = try devif(of: try pciDevice(named: name, by: "pci_tsm"))
      try status { () throws(TDXStatus) in try kvm.tdx.tdhDevifRemove(devif: devif) }
      return .none

    case .tdxMMIOMTAdd(let name):
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

    case .tdxStreamBlock(let name):
      let devif = try devif(of: try pciDevice(named: name, by: "pci_tsm"))
      try status { () throws(TDXStatus) in try kvm.tdx.ideStreamBlocked(devif: devif) }
      return .none

    case .tdxSeamcall(let leaf, let args):
      switch kvm.tdx.seamcall(leaf: leaf, args: args) {
      case .success(let registers): return .seamcall(registers)
      case .failure(let status): throw .tdx(status)
      }

    default:
      throw .lockViolation(LockViolation(lock: "thread", message: "\(op.name) is not a TDX op"))
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
