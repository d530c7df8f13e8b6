import KernelCore
@testable import TDX

/// A module with one TD (2 vCPUs) owning a running TDI whose BAR is four MMIO pages, plus a
/// second TD with its own TDI, ready for TDH.MMIO.MAP. The host populated the MMIO metadata
/// table for both BARs (TDH.MMIO.MT.ADD of the table pages, TDH.MMIO.MT.SET of each page); the
/// non-TEE page shares the BAR's L0 table page but was never assigned (its entry is a QNODE).
struct Fixture {
  var module = TDXModule()
  var td = TDID(0)
  var devif = DevifID(0)
  var otherTD = TDID(0)
  var otherDevif = DevifID(0)

  static let function = DeviceInterfaceID(0x0100)
  static let otherFunction = DeviceInterfaceID(0x0200)
  static let bar = HPA(0xFE00_0000)
  static let nonTEEPage = HPA(0xFE00_4000)
  static let otherBar = HPA(0xFD00_0000)
  static let gpa = GPA(0x8000_0000)

  init() throws(TDXStatus) {
    td = try module.tdhMngCreate(vcpuCount: 2)
    devif = try module.tdhDevifCreate(td: td, interface: Fixture.function)
    try module.tdhMMIOMTAdd(devif: devif, first: Fixture.bar, count: 4, attributes: [])
    try module.tdhMMIOMTAdd(devif: devif, first: Fixture.nonTEEPage, count: 1, attributes: [.isNonTEEMem])
    try module.observeTDISPState(devif: devif, state: .run)

    otherTD = try module.tdhMngCreate(vcpuCount: 1)
    otherDevif = try module.tdhDevifCreate(td: otherTD, interface: Fixture.otherFunction)
    try module.tdhMMIOMTAdd(devif: otherDevif, first: Fixture.otherBar, count: 1, attributes: [])
    try module.observeTDISPState(devif: otherDevif, state: .run)
  }

  /// The page at `gpa` mapped (MMIO_PENDING) to `hpa`.
  mutating func map(_ gpa: GPA = Fixture.gpa, _ hpa: HPA = Fixture.bar) throws(TDXStatus) {
    try module.tdhMMIOMap(td: td, gpa: gpa, level: .level4K, hpa: hpa)
  }

  /// Mapped and accepted (MMIO_MAPPED).
  mutating func mapAccepted() throws(TDXStatus) {
    try map()
    _ = try module.tdgMMIOAccept(td: td, vcpu: 0, gpa: Fixture.gpa, expectedHPA: Fixture.bar)
  }

  /// Mapped, accepted, blocked, tracked with no vCPU running, and the TDI stopped: UNMAP may go.
  mutating func readyToUnmap() throws(TDXStatus) {
    try mapAccepted()
    try module.tdhMMIOBlock(td: td, gpa: Fixture.gpa, level: .level4K)
    try module.tdhMemTrack(td: td)
    try module.observeTDISPState(devif: devif, state: .configUnlocked)
  }

  /// A 2 MiB device block at `hpa` assigned to the first DEVIF as one L1 DATA entry: the host
  /// adds the table pages down to L1 (not L0) and sets the L1 entry.
  mutating func assign2M(_ hpa: HPA) throws(TDXStatus) {
    for level in stride(from: MMIOMTIndex.rootLevel, through: 2, by: -1)
    where !module.mmiomtPages.contains(MMIOMTNode.covering(hpa.rawValue, level: level - 1)) {
      try module.tdhMMIOMTAdd(index: MMIOMTIndex(address: hpa, level: level), page: HPA(0x2000))
    }
    try module.tdhMMIOMTSet(index: MMIOMTIndex(address: hpa, level: 1), type: .data, function: Fixture.function)
  }

  var state: SEPTState? { module.septEntry(td: td, gpa: Fixture.gpa)?.state }
}

/// Runs `body` and returns the status it threw, or `nil` when it succeeded.
func status<T>(_ body: () throws(TDXStatus) -> T) -> TDXStatus? {
  do throws(TDXStatus) { _ = try body(); return nil } catch { return error }
}
