import KernelCore
import Testing
@testable import PCI

/// What one request does in one state: succeed and leave the TDI in a state, or fail with
/// an error code and leave the function exactly as it was.
enum Outcome: Hashable, Sendable, CustomStringConvertible {
  case ok(TDIState)
  case fails(TDISPError)

  var description: String {
    switch self {
    case .ok(let state): "ok -> \(state)"
    case .fails(let error): "fails \(error.name)"
    }
  }
}

struct Row: Sendable, CustomTestStringConvertible {
  let request: TDISPRequest
  let state: TDIState
  let outcome: Outcome
  var testDescription: String { "\(request) in \(state): \(outcome)" }
}

/// Columns: CONFIG_UNLOCKED, CONFIG_LOCKED, RUN, ERROR.
let tdispTable: [Row] = {
  let iis = Outcome.fails(.invalidInterfaceState)
  let unsupported = Outcome.fails(.unsupportedRequest)
  let stays: [Outcome] = [.ok(.configUnlocked), .ok(.configLocked), .ok(.run), .ok(.error)]
  let columns: [(TDISPRequest, [Outcome])] = [
    (.getVersion, stays),
    (.getCapabilities, stays),
    (.lockInterface, [.ok(.configLocked), iis, iis, iis]),
    (.getDeviceInterfaceReport, [iis, .ok(.configLocked), .ok(.run), iis]),
    (.getDeviceInterfaceState, stays),
    (.startInterface, [iis, .ok(.run), iis, iis]),
    (.stopInterface, [.ok(.configUnlocked), .ok(.configUnlocked), .ok(.configUnlocked), .ok(.configUnlocked)]),
    (.bindP2PStream, [unsupported, unsupported, unsupported, unsupported]),
    (.unbindP2PStream, [unsupported, unsupported, unsupported, unsupported]),
    (.setMMIOAttribute, [unsupported, unsupported, unsupported, unsupported]),
    (.vdm, [unsupported, unsupported, unsupported, unsupported]),
  ]
  return columns.flatMap { request, outcomes in
    zip(TDIState.allCases, outcomes).map { Row(request: request, state: $0, outcome: $1) }
  }
}()

@Suite("TDISP: every request in every state")
struct TDISPStateTableTests {
  @Test func tableCoversEveryRequestInEveryState() {
    let covered = Set(tdispTable.map { "\($0.request.rawValue)/\($0.state.rawValue)" })
    #expect(covered.count == TDISPRequest.allCases.count * TDIState.allCases.count)
    #expect(tdispTable.count == covered.count)
  }

  @Test(arguments: tdispTable)
  func requestInState(_ row: Row) throws {
    var function = try makeNIC(in: row.state)
    #expect(function.tdiState == row.state)
    let before = function
    var trace = Trace()
    let request = message(row.request, to: function)
    switch row.outcome {
    case .ok(let after):
      let response = try function.tdispRequest(request, trace: &trace)
      #expect(response.code == row.request.responseCode)
      #expect(function.tdiState == after)
    case .fails(let expected):
      #expect(throws: expected) { try function.tdispRequest(request, trace: &trace) }
      #expect(function == before)
      #expect(trace.events.contains { $0.subsystem == .tdisp && $0.message.contains(expected.name) })
    }
  }

  @Test(arguments: TDISPRequest.allCases)
  func functionWithoutTDISPAnswersUnsupported(_ code: TDISPRequest) throws {
    var function = try makeNIC(tdisp: false)
    let before = function
    var trace = Trace()
    #expect(throws: TDISPError.unsupportedRequest) {
      try function.tdispRequest(message(code, to: function), trace: &trace)
    }
    #expect(function == before)
    #expect(function.tdi == nil)
  }

  @Test func queriesAnswerWhatTheDeviceOffers() throws {
    var function = try makeNIC()
    var trace = Trace()
    #expect(try function.tdispRequest(.getVersion, trace: &trace) == .version([0x10]))
    guard case .capabilities(let caps) = try function.tdispRequest(.getCapabilities, trace: &trace) else {
      Issue.record("GET_TDISP_CAPABILITIES did not answer TDISP_CAPABILITIES")
      return
    }
    #expect(caps.lockInterfaceFlagsSupported == [.noFWUpdate, .lockMSIX])
    #expect(caps.requestsSupported.map(\.rawValue) == Array(0x81...0x87))
    #expect(try function.tdispRequest(.getDeviceInterfaceState, trace: &trace) == .deviceInterfaceState(.configUnlocked))
  }

  @Test(arguments: [
    (TDISPRequest.getVersion, 0x01), (.getCapabilities, 0x02), (.lockInterface, 0x03),
    (.getDeviceInterfaceReport, 0x04), (.getDeviceInterfaceState, 0x05), (.startInterface, 0x06),
    (.stopInterface, 0x07), (.bindP2PStream, 0x08), (.unbindP2PStream, 0x09),
    (.setMMIOAttribute, 0x0A), (.vdm, 0x0B),
  ] as [(TDISPRequest, UInt8)])
  func requestCodesAreTheSpecificationsValues(_ request: TDISPRequest, response: UInt8) {
    #expect(request.rawValue == response | 0x80)
    #expect(request.responseCode == response)
  }

  @Test(arguments: [
    ("INVALID_REQUEST", 0x1), ("BUSY", 0x3), ("INVALID_INTERFACE_STATE", 0x4), ("UNSPECIFIED", 0x5),
    ("UNSUPPORTED_REQUEST", 0x7), ("VERSION_MISMATCH", 0x41), ("VENDOR_SPECIFIC_ERROR", 0xFF),
    ("INVALID_INTERFACE", 0x101), ("INVALID_NONCE", 0x102), ("INSUFFICIENT_ENTROPY", 0x103),
    ("INVALID_DEVICE_CONFIGURATION", 0x104),
  ] as [(String, UInt16)])
  func errorCodesAreTheSpecificationsValues(_ name: String, code: UInt16) throws {
    let error = try #require(TDISPError(name: name))
    #expect(error.code == code)
  }

  @Test(arguments: zip(TDIState.allCases, ["CONFIG_UNLOCKED", "CONFIG_LOCKED", "RUN", "ERROR"]))
  func stateNamesRoundTrip(_ state: TDIState, name: String) {
    #expect(state.specName == name)
    #expect(TDIState(specName: name) == state)
  }
}
