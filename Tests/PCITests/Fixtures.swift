import KernelCore
@testable import PCI

/// Where the test BARs decode: 2 MiB-aligned addresses in the 64-bit window.
let bar0Base = HPA(0x40_0000_0000)
let bar2Base = HPA(0x40_0020_0000)

/// A 2 MiB BAR 0 with the MSI-X table on page 16 and the PBA on page 17, and a plain
/// 64 KiB BAR 2: the shape of a small NIC.
let nicBARs: [BAR] = [
  BAR(index: 0, size: 0x20_0000, base: bar0Base,
      msixTable: BARSpan(offset: 0x1_0000, size: 0x800), msixPBA: BARSpan(offset: 0x1_1000, size: 8)),
  BAR(index: 2, size: 0x1_0000, base: bar2Base),
]

func makeNIC(tdisp: Bool = true, name: String = "nic0", bars: [BAR] = nicBARs) throws -> PCIFunction {
  try PCIFunction(name: name, bars: bars, tdisp: tdisp)
}

/// A TDISP function brought into `state` through the protocol itself.
func makeNIC(in state: TDIState, parameters: TDISPLockParameters = TDISPLockParameters()) throws -> PCIFunction {
  var function = try makeNIC()
  var trace = Trace()
  switch state {
  case .configUnlocked:
    break
  case .configLocked:
    _ = try function.tdispLockInterface(parameters, trace: &trace)
  case .run:
    let nonce = try function.tdispLockInterface(parameters, trace: &trace)
    try function.tdispStartInterface(nonce: nonce, trace: &trace)
  case .error:
    _ = try function.tdispLockInterface(parameters, trace: &trace)
    function.writeSecurityRelevantConfig(trace: &trace)
  }
  return function
}

/// The request `code` as the tests send it: START echoes the nonce when one is outstanding.
func message(_ code: TDISPRequest, to function: PCIFunction) -> TDISPRequestMessage {
  switch code {
  case .getVersion: .getVersion
  case .getCapabilities: .getCapabilities
  case .lockInterface: .lockInterface(TDISPLockParameters())
  case .getDeviceInterfaceReport: .getDeviceInterfaceReport
  case .getDeviceInterfaceState: .getDeviceInterfaceState
  case .startInterface: .startInterface(nonce: function.tdi?.issuedStartNonce ?? TDISPNonce(rawValue: 0))
  case .stopInterface: .stopInterface
  case .bindP2PStream: .bindP2PStream(streamID: 1)
  case .unbindP2PStream: .unbindP2PStream(streamID: 1)
  case .setMMIOAttribute:
    .setMMIOAttribute(TDISPMMIORange(firstPage: bar0Base.pfn, numberOfPages: 1, attributes: [], rangeID: 0))
  case .vdm: .vdm
  }
}
