import KernelCore
import Testing
@testable import PCI

struct BARCase: Sendable, CustomTestStringConvertible {
  let label: String
  let bars: [BAR]
  var testDescription: String { label }
}

@Suite("PCI: function creation, BAR rules, decode")
struct FunctionTests {
  static let base = HPA(0x40_0000_0000)

  static let invalid: [BARCase] = [
    BARCase(label: "index past 5", bars: [BAR(index: 6, size: 0x1000, base: base, is64Bit: false)]),
    BARCase(label: "duplicate index", bars: [BAR(index: 0, size: 0x1000, base: base),
                                             BAR(index: 0, size: 0x1000, base: base.advanced(by: 0x1000))]),
    BARCase(label: "64-bit BAR at 5", bars: [BAR(index: 5, size: 0x1000, base: base)]),
    BARCase(label: "BAR in a 64-bit BAR's upper register",
            bars: [BAR(index: 0, size: 0x1000, base: base),
                   BAR(index: 1, size: 0x1000, base: base.advanced(by: 0x1000), is64Bit: false)]),
    BARCase(label: "size not a power of two", bars: [BAR(index: 0, size: 0x3000, base: base)]),
    BARCase(label: "size below 4 KiB", bars: [BAR(index: 0, size: 0x800, base: base)]),
    BARCase(label: "size zero", bars: [BAR(index: 0, size: 0, base: base)]),
    BARCase(label: "base unaligned to size", bars: [BAR(index: 0, size: 0x2000, base: base.advanced(by: 0x1000))]),
    BARCase(label: "beyond MAXPHYADDR", bars: [BAR(index: 0, size: 1 << 52, base: HPA(1 << 52))]),
    BARCase(label: "wraps the address space", bars: [BAR(index: 0, size: 1 << 63, base: HPA(1 << 63))]),
    BARCase(label: "32-bit BAR above 4 GiB", bars: [BAR(index: 0, size: 0x1000, base: base, is64Bit: false)]),
    BARCase(label: "MSI-X table past the BAR end",
            bars: [BAR(index: 0, size: 0x1000, base: base, msixTable: BARSpan(offset: 0xF00, size: 0x200))]),
    BARCase(label: "empty MSI-X table",
            bars: [BAR(index: 0, size: 0x1000, base: base, msixTable: BARSpan(offset: 0, size: 0))]),
    BARCase(label: "MSI-X span wraps",
            bars: [BAR(index: 0, size: 0x1000, base: base, msixPBA: BARSpan(offset: .max, size: 2))]),
    BARCase(label: "MSI-X table and PBA overlap",
            bars: [BAR(index: 0, size: 0x2000, base: base, msixTable: BARSpan(offset: 0, size: 0x100),
                       msixPBA: BARSpan(offset: 0x80, size: 8))]),
    BARCase(label: "BAR addresses overlap",
            bars: [BAR(index: 0, size: 0x4000, base: base), BAR(index: 2, size: 0x1000, base: base.advanced(by: 0x2000))]),
  ]

  @Test(arguments: invalid)
  func invalidBARsAreRefused(_ bars: BARCase) {
    #expect(throws: Errno.EINVAL) { try PCIFunction(name: "nic0", bars: bars.bars, tdisp: true) }
  }

  @Test func anEmptyNameIsRefused() {
    #expect(throws: Errno.EINVAL) { try PCIFunction(name: "", bars: nicBARs, tdisp: false) }
  }

  @Test(arguments: [
    BARCase(label: "no BARs", bars: []),
    BARCase(label: "32-bit BAR at 5 below 4 GiB", bars: [BAR(index: 5, size: 0x1000, base: HPA(0xC000_0000), is64Bit: false)]),
    BARCase(label: "64-bit BAR at 4", bars: [BAR(index: 4, size: 0x1000, base: base)]),
    BARCase(label: "three 64-bit BARs", bars: [BAR(index: 4, size: 0x1000, base: base),
                                               BAR(index: 0, size: 0x1000, base: base.advanced(by: 0x1000)),
                                               BAR(index: 2, size: 0x2000, base: base.advanced(by: 0x2000))]),
    BARCase(label: "MSI-X table filling the BAR", bars: [BAR(index: 0, size: 0x1000, base: base,
                                                             msixTable: BARSpan(offset: 0, size: 0x1000))]),
  ])
  func validBARsAreAcceptedAndSortedByIndex(_ bars: BARCase) throws {
    let function = try PCIFunction(name: "nic0", bars: bars.bars, tdisp: false)
    #expect(function.bars.map(\.index) == bars.bars.map(\.index).sorted())
    for bar in bars.bars { #expect(function.bar(bar.index) == bar) }
  }

  @Test func lookupOfAnUnimplementedBARIsNil() throws {
    let function = try makeNIC()
    #expect(function.bar(1) == nil)
    #expect(function.bar(6) == nil)
    #expect(function.bar(2)?.pageCount == 16)
  }

  @Test func aNewFunctionDecodesInD0WithMasteringOn() throws {
    let function = try makeNIC()
    #expect(function.command == [.memorySpace, .busMaster])
    #expect(function.powerState == .d0)
    #expect(function.memoryDecodeEnabled)
    #expect(function.tdiState == .configUnlocked)
    #expect(try makeNIC(tdisp: false).tdi == nil)
  }

  struct DecodeCase: Sendable, CustomTestStringConvertible {
    let command: PCICommand
    let power: PCIPowerState
    let decodes: Bool
    var testDescription: String { "command \(command) \(power): decodes \(decodes)" }
  }

  @Test(arguments: [
    DecodeCase(command: [.memorySpace, .busMaster], power: .d0, decodes: true),
    DecodeCase(command: [.memorySpace], power: .d0, decodes: true),
    DecodeCase(command: [.busMaster, .ioSpace], power: .d0, decodes: false),
    DecodeCase(command: [], power: .d0, decodes: false),
    DecodeCase(command: [.memorySpace, .busMaster], power: .d3hot, decodes: false),
    DecodeCase(command: [], power: .d3hot, decodes: false),
  ])
  func memoryDecodeNeedsMemorySpaceEnableAndD0(_ row: DecodeCase) throws {
    var function = try makeNIC()
    var trace = Trace()
    function.writeCommand(row.command, trace: &trace)
    function.writePowerState(row.power, trace: &trace)
    #expect(function.memoryDecodeEnabled == row.decodes)
  }

  @Test(arguments: [(PCICommand.ioSpace, UInt16(1)), (.memorySpace, 2), (.busMaster, 4),
                    (.parityErrorResponse, 0x40), (.serr, 0x100), (.interruptDisable, 0x400)])
  func commandBitsAreTheRegistersValues(_ bit: PCICommand, raw: UInt16) {
    #expect(bit.rawValue == raw)
  }

  @Test func powerStatesAreThePMCSRValues() {
    #expect(PCIPowerState.d0.rawValue == 0)
    #expect(PCIPowerState.d3hot.rawValue == 3)
  }

  @Test func barContainsItsAddressesOnly() {
    let bar = nicBARs[1]
    #expect(bar.contains(bar2Base))
    #expect(bar.contains(bar2Base.advanced(by: 0xFFFF)))
    #expect(!bar.contains(bar2Base.advanced(by: 0x1_0000)))
    #expect(bar.last == HPA(0x40_0020_FFFF))
  }

  @Test func everyStateChangeIsTraced() throws {
    var function = try makeNIC()
    var trace = Trace()
    function.writeCommand([.memorySpace], trace: &trace)
    function.writePowerState(.d3hot, trace: &trace)
    let nonce = try function.tdispLockInterface(trace: &trace)
    try function.tdispStartInterface(nonce: nonce, trace: &trace)
    function.functionLevelReset(trace: &trace)
    try function.tdispStopInterface(trace: &trace)
    #expect(trace.drain().map(\.description) == [
      "pci: nic0: command 0x6 -> 0x2",
      "pci: nic0: power D0 -> D3hot",
      "tdisp: nic0: CONFIG_UNLOCKED -> CONFIG_LOCKED (LOCK_INTERFACE, nonce \(nonce))",
      "tdisp: nic0: CONFIG_LOCKED -> RUN (START_INTERFACE)",
      "pci: nic0: FLR: command 0x2 -> 0x0, power D3hot -> D0",
      "tdisp: nic0: RUN -> ERROR (FLR)",
      "tdisp: nic0: ERROR -> CONFIG_UNLOCKED (STOP_INTERFACE)",
    ])
  }
}

@Suite("PCI: MMIO window allocation")
struct MMIOWindowAllocatorTests {
  @Test func allocationsAreNaturallyAligned() throws {
    var window = MMIOWindowAllocator(base: HPA(0x1_0000_1000), limit: HPA(0x1_0100_0000))
    #expect(try window.allocate(size: 0x1000) == HPA(0x1_0000_1000))
    #expect(try window.allocate(size: 0x20_0000) == HPA(0x1_0020_0000))
    #expect(try window.allocate(size: 0x1000) == HPA(0x1_0040_0000))
  }

  @Test func aFullWindowRefusesAndStaysAsItWas() throws {
    var window = MMIOWindowAllocator(base: HPA(0x1000), limit: HPA(0x4000))
    _ = try window.allocate(size: 0x1000)
    let before = window
    #expect(throws: Errno.ENOSPC) { try window.allocate(size: 0x4000) }
    #expect(window == before)
  }

  @Test(arguments: [0, 0x800, 0x3000] as [UInt64])
  func badSizesAreRefused(_ size: UInt64) {
    var window = MMIOWindowAllocator.default64Bit
    #expect(throws: Errno.EINVAL) { try window.allocate(size: size) }
  }
}

@Suite("PCI: what is wrong with a set of BARs, in words")
struct BARProblemTests {
  static func bar(_ index: UInt32, _ base: UInt64, _ size: UInt64, is64: Bool = true) -> BAR {
    BAR(index: index, size: size, base: HPA(base), is64Bit: is64)
  }

  @Test(arguments: [
    ([bar(0, 0x40_0000_0000, 0x1000), bar(1, 0x40_0000_1000, 0x1000)], 1, "register 1 is the upper half of 64-bit BAR 0"),
    ([bar(5, 0x40_0000_0000, 0x1000)], 0, "BAR 5 cannot be 64-bit: a 64-bit BAR takes two registers and there is no register 6"),
    ([bar(0, 0x1_0000_0000, 0x1000, is64: false)], 0,
     "a 32-bit BAR must lie below 4 GiB, and 0x100000000 + 0x1000 does not"),
    ([bar(0, 0x40_0000_1000, 0x2000)], 0, "base 0x4000001000 is not aligned to its size 0x2000"),
    ([bar(2, 0x40_0000_0000, 0x1000), bar(0, 0x40_0000_0000, 0x2000)], 0,
     "its addresses [0x4000000000, 0x4000000fff] overlap BAR 0's"),
    ([bar(0, 0x10_0000_0000_0000, 0x1000)], 0, "it ends past 2^52, the x86-64 physical address limit"),
  ] as [([BAR], Int, String)])
  func firstProblem(bars: [BAR], position: Int, problem: String) {
    let found = BAR.firstProblem(in: bars)
    #expect(found?.position == position)
    #expect(found?.problem == problem)
    // PCIFunction refuses exactly what firstProblem names.
    #expect(throws: Errno.EINVAL) { try PCIFunction(name: "f", bars: bars, tdisp: false) }
  }

  @Test func goodBARsHaveNoProblem() throws {
    let bars = [Self.bar(0, 0xC000_0000, 0x1000, is64: false), Self.bar(1, 0xC000_1000, 0x1000, is64: false),
                Self.bar(2, 0x40_0000_0000, 0x4000)]
    #expect(BAR.firstProblem(in: bars) == nil)
    _ = try PCIFunction(name: "f", bars: bars, tdisp: false)
  }

  @Test func aFullWindowSaysHowMuchIsLeft() {
    var window = MMIOWindowAllocator.default32Bit
    do { _ = try window.allocate(size: 0x4000_0000); Issue.record("1 GiB fit below 0xFEC0_0000") } catch {
      #expect(error == .ENOSPC)
      #expect(error.reason?.description == "pci_assign_resource: no space for 1 GiB aligned to its size in window "
              + "[0xc0000000-0xfebfffff]: 1004 MiB left from 0xc0000000")
    }
  }
}
