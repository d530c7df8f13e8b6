/// Every SEAMCALL and TDCALL leaf number the model knows, in one place.
///
/// The base TDX leaves (TDH.VP.ENTER 0 through TDH.MEM.TRACK 38) are those of the published
/// TDX module ABI and of `arch/x86/virt/vmx/tdx/tdx.h` upstream. The TDX Connect leaves
/// (TDH.DEVIF.*, TDH.MMIO.*, TDG.MMIO.ACCEPT) come from a *draft* specification, as used by
/// the January 2025 private-MMIO RFC; they may change when the specification is final.

/// A host-side SEAMCALL leaf: the function number in RAX.
@frozen
public struct SeamcallLeaf: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: UInt64
  @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// `TDH.VP.ENTER`: run a vCPU in TDX non-root mode until the next TD exit.
  public static let vpEnter = SeamcallLeaf(rawValue: 0)
  /// `TDH.MEM.SEPT.ADD`: add a Secure-EPT page table page.
  public static let memSEPTAdd = SeamcallLeaf(rawValue: 3)
  /// `TDH.MEM.PAGE.AUG`: add a PENDING private RAM page to a running TD.
  public static let memPageAug = SeamcallLeaf(rawValue: 6)
  /// `TDH.MEM.RANGE.BLOCK`: block a private RAM mapping before removing it.
  public static let memRangeBlock = SeamcallLeaf(rawValue: 7)
  /// `TDH.MNG.CREATE`: create a TD (this model folds the whole build sequence into it).
  public static let mngCreate = SeamcallLeaf(rawValue: 9)
  /// `TDH.MEM.PAGE.REMOVE`: remove a blocked, tracked private RAM page.
  public static let memPageRemove = SeamcallLeaf(rawValue: 29)
  /// `TDH.MEM.TRACK`: advance the TD's TLB epoch.
  public static let memTrack = SeamcallLeaf(rawValue: 38)
  /// `TDH.DEVIF.CREATE` (TDX Connect draft): create a device-interface object for a TDI.
  public static let devifCreate = SeamcallLeaf(rawValue: 137)
  /// `TDH.DEVIF.REMOVE` (TDX Connect draft).
  public static let devifRemove = SeamcallLeaf(rawValue: 138)
  /// `TDH.DEVIF.REQUEST` (TDX Connect draft): build a TDISP request to relay to the device.
  public static let devifRequest = SeamcallLeaf(rawValue: 139)
  /// `TDH.DEVIF.RESPONSE` (TDX Connect draft): hand the device's TDISP response to the module.
  public static let devifResponse = SeamcallLeaf(rawValue: 140)
  /// `TDH.MMIO.MT.ADD` (TDX Connect draft): describe device MMIO pages in the MMIO metadata table.
  public static let mmioMTAdd = SeamcallLeaf(rawValue: 154)
  /// `TDH.MMIO.MT.SET` (TDX Connect draft): change the attributes of MMIOMT pages.
  public static let mmioMTSet = SeamcallLeaf(rawValue: 155)
  /// `TDH.MMIO.MAP` (TDX Connect draft): map a device MMIO page into the Secure EPT, pending.
  public static let mmioMap = SeamcallLeaf(rawValue: 158)
  /// `TDH.MMIO.BLOCK` (TDX Connect draft).
  public static let mmioBlock = SeamcallLeaf(rawValue: 159)
  /// `TDH.MMIO.UNMAP` (TDX Connect draft).
  public static let mmioUnmap = SeamcallLeaf(rawValue: 160)

  /// Every named leaf with its ABI spelling.
  public static let allNamed: [(name: String, leaf: SeamcallLeaf)] = [
    ("TDH.VP.ENTER", .vpEnter), ("TDH.MEM.SEPT.ADD", .memSEPTAdd), ("TDH.MEM.PAGE.AUG", .memPageAug),
    ("TDH.MEM.RANGE.BLOCK", .memRangeBlock), ("TDH.MNG.CREATE", .mngCreate),
    ("TDH.MEM.PAGE.REMOVE", .memPageRemove), ("TDH.MEM.TRACK", .memTrack),
    ("TDH.DEVIF.CREATE", .devifCreate), ("TDH.DEVIF.REMOVE", .devifRemove),
    ("TDH.DEVIF.REQUEST", .devifRequest), ("TDH.DEVIF.RESPONSE", .devifResponse),
    ("TDH.MMIO.MT.ADD", .mmioMTAdd), ("TDH.MMIO.MT.SET", .mmioMTSet), ("TDH.MMIO.MAP", .mmioMap),
    ("TDH.MMIO.BLOCK", .mmioBlock), ("TDH.MMIO.UNMAP", .mmioUnmap),
  ]

  /// `TDH.MMIO.MAP`, or the leaf number when it has no name.
  public var description: String {
    SeamcallLeaf.allNamed.first(where: { $0.leaf == self })?.name ?? "SEAMCALL \(rawValue)"
  }
}

/// A guest-side TDCALL leaf: the function number in RAX.
@frozen
public struct TdcallLeaf: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: UInt64
  @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// `TDG.MMIO.ACCEPT` (TDX Connect draft): the guest accepts a pending MMIO page.
  public static let mmioAccept = TdcallLeaf(rawValue: 71)

  public var description: String {
    self == .mmioAccept ? "TDG.MMIO.ACCEPT" : "TDCALL \(rawValue)"
  }
}
