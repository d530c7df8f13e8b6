import KernelCore
import Testing
@testable import PCI

@Suite("TDISP: the START_INTERFACE nonce")
struct TDISPNonceTests {
  @Test func echoedNonceStartsTheInterface() throws {
    var function = try makeNIC()
    var trace = Trace()
    let nonce = try function.tdispLockInterface(trace: &trace)
    #expect(function.tdi?.issuedStartNonce == nonce)
    try function.tdispStartInterface(nonce: nonce, trace: &trace)
    #expect(function.tdiState == .run)
    #expect(function.tdi?.issuedStartNonce == nil)
  }

  @Test func wrongNonceIsRefusedAndTheLockStands() throws {
    var function = try makeNIC()
    var trace = Trace()
    let nonce = try function.tdispLockInterface(trace: &trace)
    let locked = function
    #expect(throws: TDISPError.invalidNonce) {
      try function.tdispStartInterface(nonce: nonce.complement, trace: &trace)
    }
    #expect(function == locked)
    #expect(function.tdiState == .configLocked)
    // The right nonce still works afterwards: a wrong guess does not burn it.
    try function.tdispStartInterface(nonce: nonce, trace: &trace)
    #expect(function.tdiState == .run)
  }

  @Test func aNonceFromAnEarlierLockIsStale() throws {
    var function = try makeNIC()
    var trace = Trace()
    let first = try function.tdispLockInterface(trace: &trace)
    try function.tdispStopInterface(trace: &trace)
    let second = try function.tdispLockInterface(trace: &trace)
    #expect(first != second)
    #expect(throws: TDISPError.invalidNonce) { try function.tdispStartInterface(nonce: first, trace: &trace) }
    try function.tdispStartInterface(nonce: second, trace: &trace)
    #expect(function.tdiState == .run)
  }

  @Test func noncesAreDeterministicPerFunctionAndDistinctAcrossFunctions() throws {
    var a = try makeNIC(name: "nic0")
    var b = try makeNIC(name: "nic0")
    var c = try makeNIC(name: "nic1")
    var trace = Trace()
    let na = try a.tdispLockInterface(trace: &trace)
    let nb = try b.tdispLockInterface(trace: &trace)
    let nc = try c.tdispLockInterface(trace: &trace)
    #expect(na == nb)
    #expect(na != nc)
    #expect(a == b)
  }

  @Test func aResetForgetsTheOutstandingNonce() throws {
    var function = try makeNIC()
    var trace = Trace()
    let nonce = try function.tdispLockInterface(trace: &trace)
    function.conventionalReset(trace: &trace)
    #expect(function.tdi?.issuedStartNonce == nil)
    #expect(throws: TDISPError.invalidInterfaceState) { try function.tdispStartInterface(nonce: nonce, trace: &trace) }
  }
}
