// The vocabulary of the PCIe TEE Device Interface Security Protocol (TDISP, PCIe 6.x
// chapter 11): interface states, request codes, error codes and the request parameters the
// model carries. Values are the specification's, as DMTF libspdm's
// `industry_standard/pci_tdisp.h` also spells them.

/// The state of a TDI (`TDI_STATE` in DEVICE_INTERFACE_STATE).
public enum TDIState: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  /// The VMM configures the interface; nothing in it is trusted.
  case configUnlocked = 0
  /// Configuration is frozen and reported; the TVM may verify it, but not use it yet.
  case configLocked = 1
  /// The TVM uses the interface; its MMIO is private.
  case run = 2
  /// A security-relevant change happened under lock; only STOP_INTERFACE leaves this state.
  case error = 3

  /// The specification's spelling (`CONFIG_UNLOCKED` …).
  public var specName: String {
    switch self {
    case .configUnlocked: "CONFIG_UNLOCKED"
    case .configLocked: "CONFIG_LOCKED"
    case .run: "RUN"
    case .error: "ERROR"
    }
  }

  /// Looks a state up by its specification name.
  public init?(specName: String) {
    guard let state = Self.allCases.first(where: { $0.specName == specName }) else { return nil }
    self = state
  }

  /// CONFIG_LOCKED or RUN: the states in which the device watches its configuration and
  /// moves to ERROR when it changes.
  public var isLocked: Bool { self == .configLocked || self == .run }

  public var description: String { specName }
}

/// A TDISP request message code (the `MessageType` of a request, 0x81–0x8B).
public enum TDISPRequest: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  case getVersion = 0x81
  case getCapabilities = 0x82
  case lockInterface = 0x83
  case getDeviceInterfaceReport = 0x84
  case getDeviceInterfaceState = 0x85
  case startInterface = 0x86
  case stopInterface = 0x87
  case bindP2PStream = 0x88
  case unbindP2PStream = 0x89
  case setMMIOAttribute = 0x8A
  case vdm = 0x8B

  /// The specification's spelling (`LOCK_INTERFACE_REQUEST` is written `LOCK_INTERFACE` here).
  public var specName: String {
    switch self {
    case .getVersion: "GET_TDISP_VERSION"
    case .getCapabilities: "GET_TDISP_CAPABILITIES"
    case .lockInterface: "LOCK_INTERFACE"
    case .getDeviceInterfaceReport: "GET_DEVICE_INTERFACE_REPORT"
    case .getDeviceInterfaceState: "GET_DEVICE_INTERFACE_STATE"
    case .startInterface: "START_INTERFACE"
    case .stopInterface: "STOP_INTERFACE"
    case .bindP2PStream: "BIND_P2P_STREAM"
    case .unbindP2PStream: "UNBIND_P2P_STREAM"
    case .setMMIOAttribute: "SET_MMIO_ATTRIBUTE"
    case .vdm: "VDM"
    }
  }

  /// The code of the matching success response: the request code with bit 7 clear.
  public var responseCode: UInt8 { rawValue & 0x7F }

  public var description: String { specName }
}

/// A `TDISP_ERROR` response: the device refused the request with this `ERROR_CODE`.
///
/// The specification's field is 32 bits wide; every code it defines fits 16.
public struct TDISPError: Error, Hashable, Sendable, CustomStringConvertible {
  public let code: UInt16
  public let name: String

  public init(code: UInt16, name: String) {
    self.code = code
    self.name = name
  }

  /// The message is malformed or a parameter is out of range.
  public static let invalidRequest = TDISPError(code: 0x0001, name: "INVALID_REQUEST")
  /// The device cannot answer now; retry later.
  public static let busy = TDISPError(code: 0x0003, name: "BUSY")
  /// The request is not allowed in the TDI's current state.
  public static let invalidInterfaceState = TDISPError(code: 0x0004, name: "INVALID_INTERFACE_STATE")
  public static let unspecified = TDISPError(code: 0x0005, name: "UNSPECIFIED")
  /// The device does not implement this request.
  public static let unsupportedRequest = TDISPError(code: 0x0007, name: "UNSUPPORTED_REQUEST")
  public static let versionMismatch = TDISPError(code: 0x0041, name: "VERSION_MISMATCH")
  public static let vendorSpecificError = TDISPError(code: 0x00FF, name: "VENDOR_SPECIFIC_ERROR")
  /// The `INTERFACE_ID` names no TDI of this device.
  public static let invalidInterface = TDISPError(code: 0x0101, name: "INVALID_INTERFACE")
  /// START_INTERFACE did not echo the nonce LOCK_INTERFACE handed out.
  public static let invalidNonce = TDISPError(code: 0x0102, name: "INVALID_NONCE")
  public static let insufficientEntropy = TDISPError(code: 0x0103, name: "INSUFFICIENT_ENTROPY")
  public static let invalidDeviceConfiguration = TDISPError(code: 0x0104, name: "INVALID_DEVICE_CONFIGURATION")

  /// Every error code the specification defines.
  public static let all: [TDISPError] = [
    .invalidRequest, .busy, .invalidInterfaceState, .unspecified, .unsupportedRequest,
    .versionMismatch, .vendorSpecificError, .invalidInterface, .invalidNonce,
    .insufficientEntropy, .invalidDeviceConfiguration,
  ]

  /// Looks a code up by its specification name (`INVALID_NONCE`).
  public init?(name: String) {
    guard let error = Self.all.first(where: { $0.name == name }) else { return nil }
    self = error
  }

  public var description: String { "\(name) (0x\(String(code, radix: 16)))" }
}

/// The START_INTERFACE nonce a device hands out in LOCK_INTERFACE_RESPONSE.
///
/// The specification's nonce is 32 random bytes. The model must be deterministic and
/// `Hashable`, so a device derives 64 bits from its function name and how many locks it has
/// granted: distinct across functions and across lock cycles, which is all START checks.
public struct TDISPNonce: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: UInt64
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// A nonce that is certainly not this one: every bit flipped, as conformance tests build
  /// a wrong nonce.
  public var complement: TDISPNonce { TDISPNonce(rawValue: ~rawValue) }

  public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// The `FLAGS` of LOCK_INTERFACE_REQUEST.
public struct TDISPLockFlags: OptionSet, Hashable, Sendable {
  public let rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }

  /// The device must refuse firmware updates while locked.
  public static let noFWUpdate = TDISPLockFlags(rawValue: 1 << 0)
  /// The requester states the system cache-line size is 128 bytes.
  public static let systemCacheLineSize = TDISPLockFlags(rawValue: 1 << 1)
  /// The MSI-X table and PBA are locked and belong to the TVM.
  public static let lockMSIX = TDISPLockFlags(rawValue: 1 << 2)
  /// Peer-to-peer streams may be bound later.
  public static let bindP2P = TDISPLockFlags(rawValue: 1 << 3)
  /// All requests are redirected to the root complex.
  public static let allRequestRedirect = TDISPLockFlags(rawValue: 1 << 4)
}

/// The parameters of LOCK_INTERFACE_REQUEST the model acts on.
public struct TDISPLockParameters: Hashable, Sendable {
  public var flags: TDISPLockFlags
  /// The IDE stream the TDI's traffic uses by default.
  public var defaultStreamID: UInt8
  /// `MMIO_REPORTING_OFFSET`: added to every host address the interface report gives, so
  /// the TSM can hide host addresses from the TVM. Must be a multiple of 4 KiB.
  public var mmioReportingOffset: UInt64

  public init(flags: TDISPLockFlags = [], defaultStreamID: UInt8 = 0, mmioReportingOffset: UInt64 = 0) {
    self.flags = flags
    self.defaultStreamID = defaultStreamID
    self.mmioReportingOffset = mmioReportingOffset
  }
}

/// TDISP_CAPABILITIES as the modelled device answers it.
public struct TDISPCapabilities: Hashable, Sendable {
  /// `DSM_CAPS`: no optional device security manager capabilities.
  public var dsmCaps: UInt32
  /// The requests the device implements (`REQ_MSGS_SUPPORTED`, a bitmap in the message).
  public var requestsSupported: [TDISPRequest]
  /// `LOCK_INTERFACE_FLAGS_SUPPORTED`.
  public var lockInterfaceFlagsSupported: TDISPLockFlags
  /// `DEV_ADDR_WIDTH`: the bits of address the device can generate.
  public var deviceAddressWidth: UInt8
  /// `NUM_REQ_THIS` / `NUM_REQ_ALL`: outstanding requests the device accepts.
  public var numberOfRequestsThis: UInt8
  public var numberOfRequestsAll: UInt8
}

/// A TDISP request with its parameters, as the TSM sends it over the SPDM session.
public enum TDISPRequestMessage: Hashable, Sendable {
  case getVersion
  case getCapabilities
  case lockInterface(TDISPLockParameters)
  case getDeviceInterfaceReport
  case getDeviceInterfaceState
  case startInterface(nonce: TDISPNonce)
  case stopInterface
  case bindP2PStream(streamID: UInt8)
  case unbindP2PStream(streamID: UInt8)
  case setMMIOAttribute(TDISPMMIORange)
  case vdm

  /// The message code.
  public var code: TDISPRequest {
    switch self {
    case .getVersion: .getVersion
    case .getCapabilities: .getCapabilities
    case .lockInterface: .lockInterface
    case .getDeviceInterfaceReport: .getDeviceInterfaceReport
    case .getDeviceInterfaceState: .getDeviceInterfaceState
    case .startInterface: .startInterface
    case .stopInterface: .stopInterface
    case .bindP2PStream: .bindP2PStream
    case .unbindP2PStream: .unbindP2PStream
    case .setMMIOAttribute: .setMMIOAttribute
    case .vdm: .vdm
    }
  }
}

/// A successful TDISP response.
public enum TDISPResponse: Hashable, Sendable {
  /// TDISP_VERSION: the versions the device speaks (0x10 is TDISP 1.0).
  case version([UInt8])
  case capabilities(TDISPCapabilities)
  /// LOCK_INTERFACE_RESPONSE with the START_INTERFACE nonce.
  case lockInterface(startNonce: TDISPNonce)
  case deviceInterfaceReport(TDISPInterfaceReport)
  case deviceInterfaceState(TDIState)
  case startInterface
  case stopInterface

  /// The response's message code (`TDISP_VERSION` 0x01 … `STOP_INTERFACE_RESPONSE` 0x07).
  public var code: UInt8 {
    switch self {
    case .version: 0x01
    case .capabilities: 0x02
    case .lockInterface: 0x03
    case .deviceInterfaceReport: 0x04
    case .deviceInterfaceState: 0x05
    case .startInterface: 0x06
    case .stopInterface: 0x07
    }
  }
}
