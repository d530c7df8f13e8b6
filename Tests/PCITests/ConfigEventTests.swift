import KernelCore
import Testing
@testable import PCI

/// Config-space events against every TDI state: which ones end the TVM's trust.
@Suite("PCI: resets, command and power writes against the TDI")
struct ConfigEventTests {
  static let states = TDIState.allCases
  /// Locked states go to ERROR, the others keep their state.
  static let lockedGoToError: [TDIState] = [.configUnlocked, .error, .error, .error]

  @Test(arguments: zip(states, lockedGoToError))
  func functionLevelReset(from state: TDIState, to expected: TDIState) throws {
    var function = try makeNIC(in: state)
    var trace = Trace()
    function.functionLevelReset(trace: &trace)
    #expect(function.tdiState == expected)
    #expect(function.command == [])
    #expect(function.powerState == .d0)
    #expect(!function.memoryDecodeEnabled)
    #expect(trace.events.contains { $0.subsystem == .pci && $0.message.contains("FLR") })
  }

  @Test func functionLevelResetReturnsToD0() throws {
    var function = try makeNIC()
    var trace = Trace()
    function.writePowerState(.d3hot, trace: &trace)
    function.functionLevelReset(trace: &trace)
    #expect(function.powerState == .d0)
    #expect(function.command == [])
  }

  @Test(arguments: states)
  func conventionalResetUnlocks(from state: TDIState) throws {
    var function = try makeNIC(in: state)
    var trace = Trace()
    function.writePowerState(.d3hot, trace: &trace)
    function.conventionalReset(trace: &trace)
    #expect(function.tdiState == .configUnlocked)
    #expect(function.tdi?.lockParameters == nil)
    #expect(function.command == [])
    #expect(function.powerState == .d0)
    #expect(trace.events.contains { $0.subsystem == .tdisp && $0.message.contains("-> CONFIG_UNLOCKED") })
  }

  @Test(arguments: zip(states, lockedGoToError))
  func clearingBusMasterEnable(from state: TDIState, to expected: TDIState) throws {
    var function = try makeNIC(in: state)
    var trace = Trace()
    function.writeCommand([.memorySpace], trace: &trace)
    #expect(function.tdiState == expected)
    #expect(function.memoryDecodeEnabled)
    #expect(!function.busMasterEnabled)
  }

  @Test(arguments: zip(states, lockedGoToError))
  func clearingMemorySpaceEnable(from state: TDIState, to expected: TDIState) throws {
    var function = try makeNIC(in: state)
    var trace = Trace()
    function.writeCommand([.busMaster], trace: &trace)
    #expect(function.tdiState == expected)
    #expect(!function.memoryDecodeEnabled)
  }

  @Test(arguments: states)
  func commandWritesThatKeepDecodeAndMasteringChangeNoState(_ state: TDIState) throws {
    var function = try makeNIC(in: state)
    var trace = Trace()
    function.writeCommand([.memorySpace, .busMaster], trace: &trace)
    function.writeCommand([.memorySpace, .busMaster, .interruptDisable, .serr], trace: &trace)
    #expect(function.tdiState == state)
    #expect(function.command == [.memorySpace, .busMaster, .interruptDisable, .serr])
  }

  @Test(arguments: zip(states, lockedGoToError))
  func enteringD3hot(from state: TDIState, to expected: TDIState) throws {
    var function = try makeNIC(in: state)
    var trace = Trace()
    function.writePowerState(.d3hot, trace: &trace)
    #expect(function.tdiState == expected)
    #expect(function.powerState == .d3hot)
    #expect(!function.memoryDecodeEnabled)
  }

  @Test(arguments: states)
  func returningToD0KeepsTheCommandRegisterAndTheState(_ state: TDIState) throws {
    var function = try makeNIC(in: state)
    var trace = Trace()
    function.writePowerState(.d3hot, trace: &trace)
    let inD3 = function.tdiState
    function.writePowerState(.d0, trace: &trace)
    #expect(function.tdiState == inD3)
    #expect(function.command == [.memorySpace, .busMaster])
    #expect(function.memoryDecodeEnabled)
  }

  @Test(arguments: zip(states, lockedGoToError))
  func securityRelevantConfigWrite(from state: TDIState, to expected: TDIState) throws {
    var function = try makeNIC(in: state)
    var trace = Trace()
    function.writeSecurityRelevantConfig("BAR0", trace: &trace)
    #expect(function.tdiState == expected)
    #expect(function.command == [.memorySpace, .busMaster])
  }

  @Test(arguments: [.configLocked, .run] as [TDIState])
  func stopAfterErrorUnlocksAndALockCanFollow(_ state: TDIState) throws {
    var function = try makeNIC(in: state)
    var trace = Trace()
    function.functionLevelReset(trace: &trace)
    #expect(function.tdiState == .error)
    try function.tdispStopInterface(trace: &trace)
    #expect(function.tdiState == .configUnlocked)
    _ = try function.tdispLockInterface(trace: &trace)
    #expect(function.tdiState == .configLocked)
  }

  @Test func eventsWithoutTDISPTouchOnlyConfigSpace() throws {
    var function = try makeNIC(tdisp: false)
    var trace = Trace()
    function.writeCommand([], trace: &trace)
    function.writePowerState(.d3hot, trace: &trace)
    function.functionLevelReset(trace: &trace)
    function.conventionalReset(trace: &trace)
    function.writeSecurityRelevantConfig(trace: &trace)
    #expect(function.tdi == nil)
    #expect(!trace.events.contains { $0.subsystem == .tdisp })
  }
}
