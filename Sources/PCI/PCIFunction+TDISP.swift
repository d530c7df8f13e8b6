import KernelCore

/// The device side of TDISP: how the function's DSM answers each request in each state.
///
/// | request                        | CONFIG_UNLOCKED | CONFIG_LOCKED            | RUN            | ERROR          |
/// |--------------------------------|-----------------|--------------------------|----------------|----------------|
/// | GET_VERSION, GET_CAPABILITIES, |  answered       | answered                 | answered       | answered       |
/// | GET_DEVICE_INTERFACE_STATE     |                 |                          |                |                |
/// | LOCK_INTERFACE                 | -> CONFIG_LOCKED| INVALID_INTERFACE_STATE  | INVALID_…STATE | INVALID_…STATE |
/// | GET_DEVICE_INTERFACE_REPORT    | INVALID_…STATE  | report                   | report         | INVALID_…STATE |
/// | START_INTERFACE                | INVALID_…STATE  | -> RUN, or INVALID_NONCE | INVALID_…STATE | INVALID_…STATE |
/// | STOP_INTERFACE                 | stays           | -> CONFIG_UNLOCKED       | -> UNLOCKED    | -> UNLOCKED    |
/// | BIND/UNBIND_P2P_STREAM,        | UNSUPPORTED_REQUEST in every state (the modelled device     |
/// | SET_MMIO_ATTRIBUTE, VDM        | offers no P2P, no updatable ranges, no vendor messages)     |
///
/// A refused request leaves the state as it was (a wrong nonce leaves CONFIG_LOCKED and the
/// nonce valid), as the TDISP conformance tests expect. A function without TDISP answers
/// every request UNSUPPORTED_REQUEST.
extension PCIFunction {
  /// The TDISP versions the device speaks: 1.0.
  public static let tdispVersions: [UInt8] = [0x10]

  /// What GET_TDISP_CAPABILITIES answers.
  public static let tdispCapabilities = TDISPCapabilities(
    dsmCaps: 0,
    requestsSupported: [.getVersion, .getCapabilities, .lockInterface, .getDeviceInterfaceReport,
                        .getDeviceInterfaceState, .startInterface, .stopInterface],
    lockInterfaceFlagsSupported: [.noFWUpdate, .lockMSIX],
    deviceAddressWidth: 52,
    numberOfRequestsThis: 1,
    numberOfRequestsAll: 1)

  /// Handles one TDISP request, as the device's DSM does when the TSM sends it over the
  /// SPDM secure session (the host side is `pci_tsm_*` / `TDH.DEVIF.REQUEST` in TDX Connect).
  /// - Throws: the `TDISP_ERROR` code the device answers (see the table on this extension);
  ///   the function is then unchanged.
  public mutating func tdispRequest(_ message: TDISPRequestMessage, trace: inout Trace) throws(TDISPError) -> TDISPResponse {
    do throws(TDISPError) {
      return try handle(message, trace: &trace)
    } catch {
      let state = tdi.map { $0.state.specName } ?? "no TDI"
      trace.emit(.tdispError, "\(name): \(message.code.specName) -> TDISP_ERROR \(error.name) (\(state))",
                 [.text("device", name), .text("request", message.code.specName), .text("error", error.name), .text("state", state)])
      throw error
    }
  }

  /// LOCK_INTERFACE_REQUEST: freezes the configuration and hands out the START nonce.
  /// - Throws: `INVALID_INTERFACE_STATE` unless CONFIG_UNLOCKED; `INVALID_REQUEST` for flags
  ///   the device does not support or a reporting offset that is not a multiple of 4 KiB
  ///   or pushes a reported address past 2^64; `UNSUPPORTED_REQUEST` without TDISP.
  public mutating func tdispLockInterface(_ parameters: TDISPLockParameters = TDISPLockParameters(),
                                          trace: inout Trace) throws(TDISPError) -> TDISPNonce {
    guard case .lockInterface(let nonce) = try tdispRequest(.lockInterface(parameters), trace: &trace) else {
      throw .unspecified
    }
    return nonce
  }

  /// START_INTERFACE_REQUEST: the TVM's verification is done; the interface runs.
  /// - Throws: `INVALID_INTERFACE_STATE` unless CONFIG_LOCKED; `INVALID_NONCE` when `nonce`
  ///   is not the one LOCK_INTERFACE handed out (the TDI stays CONFIG_LOCKED);
  ///   `UNSUPPORTED_REQUEST` without TDISP.
  public mutating func tdispStartInterface(nonce: TDISPNonce, trace: inout Trace) throws(TDISPError) {
    _ = try tdispRequest(.startInterface(nonce: nonce), trace: &trace)
  }

  /// STOP_INTERFACE_REQUEST: from any state back to CONFIG_UNLOCKED; the TVM's trust in the
  /// interface ends and a spent or unspent nonce is forgotten.
  /// - Throws: `UNSUPPORTED_REQUEST` without TDISP only.
  public mutating func tdispStopInterface(trace: inout Trace) throws(TDISPError) {
    _ = try tdispRequest(.stopInterface, trace: &trace)
  }

  /// GET_DEVICE_INTERFACE_REPORT.
  /// - Throws: `INVALID_INTERFACE_STATE` unless CONFIG_LOCKED or RUN; `UNSUPPORTED_REQUEST`
  ///   without TDISP.
  public func tdispInterfaceReport() throws(TDISPError) -> TDISPInterfaceReport {
    guard let tdi else { throw .unsupportedRequest }
    guard let parameters = tdi.lockParameters else { throw .invalidInterfaceState }
    return TDISPInterfaceReport.build(bars: bars, parameters: parameters)
  }

  /// GET_DEVICE_INTERFACE_STATE.
  /// - Throws: `UNSUPPORTED_REQUEST` without TDISP only.
  public func tdispInterfaceState() throws(TDISPError) -> TDIState {
    guard let tdi else { throw .unsupportedRequest }
    return tdi.state
  }

  // MARK: Internals

  mutating func handle(_ message: TDISPRequestMessage, trace: inout Trace) throws(TDISPError) -> TDISPResponse {
    guard var interface = tdi else { throw .unsupportedRequest }
    let old = interface.state
    switch message {
    case .getVersion:
      return .version(Self.tdispVersions)
    case .getCapabilities:
      return .capabilities(Self.tdispCapabilities)
    case .getDeviceInterfaceState:
      return .deviceInterfaceState(old)
    case .getDeviceInterfaceReport:
      return .deviceInterfaceReport(try tdispInterfaceReport())
    case .lockInterface(let parameters):
      guard old == .configUnlocked else { throw .invalidInterfaceState }
      try validateLock(parameters)
      let nonce = interface.grantLock(parameters)
      tdi = interface
      trace.emit(.tdispState, "\(name): CONFIG_UNLOCKED -> CONFIG_LOCKED (LOCK_INTERFACE, nonce \(nonce))",
                 Self.tdispFields(name, "CONFIG_UNLOCKED", "CONFIG_LOCKED", "LOCK_INTERFACE") + [.text("nonce", "\(nonce)")])
      return .lockInterface(startNonce: nonce)
    case .startInterface(let nonce):
      guard case .configLocked(let parameters, let expected) = interface.phase else {
        throw .invalidInterfaceState
      }
      guard nonce == expected else { throw .invalidNonce }
      interface.phase = .run(parameters)
      tdi = interface
      trace.emit(.tdispState, "\(name): CONFIG_LOCKED -> RUN (START_INTERFACE)",
                 Self.tdispFields(name, "CONFIG_LOCKED", "RUN", "START_INTERFACE"))
      return .startInterface
    case .stopInterface:
      interface.phase = .configUnlocked
      tdi = interface
      trace.emit(.tdispState, "\(name): \(old) -> CONFIG_UNLOCKED (STOP_INTERFACE)",
                 Self.tdispFields(name, old.specName, "CONFIG_UNLOCKED", "STOP_INTERFACE"))
      return .stopInterface
    case .bindP2PStream, .unbindP2PStream, .setMMIOAttribute, .vdm:
      // Not in the device's REQ_MSGS_SUPPORTED: refused before any state check.
      throw .unsupportedRequest
    }
  }

  /// Checks LOCK_INTERFACE parameters against the device and its BARs.
  func validateLock(_ parameters: TDISPLockParameters) throws(TDISPError) {
    guard Self.tdispCapabilities.lockInterfaceFlagsSupported.isSuperset(of: parameters.flags) else {
      throw .invalidRequest
    }
    let offset = parameters.mmioReportingOffset
    guard offset.isPageAligned else { throw .invalidRequest }
    for bar in bars {
      let (_, overflow) = bar.last.rawValue.addingReportingOverflow(offset)
      guard !overflow else { throw .invalidRequest }
    }
  }
}
