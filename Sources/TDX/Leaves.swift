/// Every SEAMCALL and TDCALL leaf number the model knows, in one place.
///
/// Source: `intel/tdx-module`, `include/tdx_api_defs.h` at commit
/// `6e66b9d2070aa49562518087160b2c6ae6418555` (TDX 2.0 tree, build 20251204 / 994 / update 16):
/// `enum seamcall_leaf_opcode_e` and `enum tdcall_leaf_opcode_e`. The base leaves agree with
/// the kernel's `arch/x86/virt/vmx/tdx/tdx.h`. Tests pin every number
/// (`Tests/TDXTests/StatusValueTests.swift`).

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
  /// `TDH.MEM.RANGE.UNBLOCK`.
  public static let memRangeUnblock = SeamcallLeaf(rawValue: 39)
  /// `TDH.IDE.STREAM.BLOCK`: block a selective IDE stream.
  public static let ideStreamBlock = SeamcallLeaf(rawValue: 133)
  /// `TDH.DEVIF.CREATE`: create the DEVIF control structure of a TDI for a TD.
  public static let devifCreate = SeamcallLeaf(rawValue: 137)
  /// `TDH.DEVIF.REMOVE`: remove a DEVIF, by function id.
  public static let devifRemove = SeamcallLeaf(rawValue: 138)
  /// `TDH.DEVIF.REQUEST`: build a TDISP request to relay to the device.
  public static let devifRequest = SeamcallLeaf(rawValue: 139)
  /// `TDH.DEVIF.RESPONSE`: hand the device's TDISP response to the module.
  public static let devifResponse = SeamcallLeaf(rawValue: 140)
  /// `TDH.MMIO.MT.ADD`: add a 4 KiB page to the MMIO metadata table (a table page under a
  /// QNODE entry), not a device page.
  public static let mmioMTAdd = SeamcallLeaf(rawValue: 154)
  /// `TDH.MMIO.MT.SET`: turn an MMIOMT entry into a DATA entry for a function id (assigning
  /// the device page to that DEVIF) or back into a QNODE.
  public static let mmioMTSet = SeamcallLeaf(rawValue: 155)
  /// `TDH.MMIO.MT.RD`.
  public static let mmioMTRead = SeamcallLeaf(rawValue: 156)
  /// `TDH.MMIO.MT.REMOVE`.
  public static let mmioMTRemove = SeamcallLeaf(rawValue: 157)
  /// `TDH.MMIO.MAP`: map a device page into the Secure EPT, MMIO_PENDING.
  public static let mmioMap = SeamcallLeaf(rawValue: 158)
  /// `TDH.MMIO.BLOCK`.
  public static let mmioBlock = SeamcallLeaf(rawValue: 159)
  /// `TDH.MMIO.UNMAP`.
  public static let mmioUnmap = SeamcallLeaf(rawValue: 160)
  /// `TDH.DEVIF.MT.ADD`: add a page to the DEVIF metadata table.
  public static let devifMTAdd = SeamcallLeaf(rawValue: 164)

  /// Every named leaf with its ABI spelling.
  public static let allNamed: [(name: String, leaf: SeamcallLeaf)] = [
    ("TDH.VP.ENTER", .vpEnter), ("TDH.MEM.SEPT.ADD", .memSEPTAdd), ("TDH.MEM.PAGE.AUG", .memPageAug),
    ("TDH.MEM.RANGE.BLOCK", .memRangeBlock), ("TDH.MNG.CREATE", .mngCreate),
    ("TDH.MEM.PAGE.REMOVE", .memPageRemove), ("TDH.MEM.TRACK", .memTrack),
    ("TDH.MEM.RANGE.UNBLOCK", .memRangeUnblock), ("TDH.IDE.STREAM.BLOCK", .ideStreamBlock),
    ("TDH.DEVIF.CREATE", .devifCreate), ("TDH.DEVIF.REMOVE", .devifRemove),
    ("TDH.DEVIF.REQUEST", .devifRequest), ("TDH.DEVIF.RESPONSE", .devifResponse),
    ("TDH.MMIO.MT.ADD", .mmioMTAdd), ("TDH.MMIO.MT.SET", .mmioMTSet), ("TDH.MMIO.MT.RD", .mmioMTRead),
    ("TDH.MMIO.MT.REMOVE", .mmioMTRemove), ("TDH.MMIO.MAP", .mmioMap),
    ("TDH.MMIO.BLOCK", .mmioBlock), ("TDH.MMIO.UNMAP", .mmioUnmap), ("TDH.DEVIF.MT.ADD", .devifMTAdd),
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

  /// `TDG.MMIO.ACCEPT` (71): the guest accepts a pending MMIO page. `tdx_api_defs.h` at commit
  /// `6e66b9d2` spells the enum `TDG_TDI_MMIO_ACCEPT_LEAF` and the handler
  /// `tdg_tdi_mmio_accept()`; earlier commits (`1666adc4`) say `TDG_MMIO_ACCEPT_LEAF` /
  /// `tdg_mmio_accept()`. The model keeps the shorter ABI name in traces.
  public static let mmioAccept = TdcallLeaf(rawValue: 71)

  public var description: String {
    self == .mmioAccept ? "TDG.MMIO.ACCEPT" : "TDCALL \(rawValue)"
  }
}
