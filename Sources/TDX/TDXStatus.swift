import KernelCore

/// A TDX module completion status: the 64-bit value a SEAMCALL or TDCALL returns in RAX.
///
/// Layout (TDX module ABI): bit 63 is the error flag, bit 62 "non-recoverable", bits 47:32 the
/// status class and code, bits 31:0 the operand (which argument or resource the status is
/// about; for `TDX_OPERAND_BUSY`, for instance, which object was busy). Every value lives in
/// this one file; values the public ABI does not fix are marked so.
@frozen
public struct TDXStatus: RawRepresentable, Hashable, Sendable, Error, CustomStringConvertible {
  public let rawValue: UInt64
  /// The module's check that produced the status, when the model said which; like
  /// ``Errno/reason`` it takes no part in `==` or hashing.
  public var reason: Refusal?
  @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue; reason = nil }

  @inlinable public static func == (a: TDXStatus, b: TDXStatus) -> Bool { a.rawValue == b.rawValue }
  @inlinable public func hash(into hasher: inout Hasher) { hasher.combine(rawValue) }

  /// This status with the reason `leaf: check`.
  @inlinable public func because(_ function: StaticString, _ check: @autoclosure () -> String) -> TDXStatus {
    var copy = self
    copy.reason = Refusal(function: function, check: check())
    return copy
  }

  /// The status without its operand field (bits 31:0), which is what callers compare.
  @inlinable public var code: TDXStatus { TDXStatus(rawValue: rawValue & 0xFFFF_FFFF_0000_0000) }
  /// The operand field, bits 31:0.
  @inlinable public var operand: UInt32 { UInt32(truncatingIfNeeded: rawValue) }
  /// This status with `operand` in bits 31:0.
  @inlinable public func with(operand: UInt32) -> TDXStatus {
    var status = TDXStatus(rawValue: code.rawValue | UInt64(operand))
    status.reason = reason
    return status
  }
  /// Bit 63: the call failed.
  @inlinable public var isError: Bool { rawValue & (1 << 63) != 0 }
  /// Bit 62: the failure cannot be retried.
  @inlinable public var isNonRecoverable: Bool { rawValue & (1 << 62) != 0 }

  /// `TDX_SUCCESS`.
  public static let success = TDXStatus(rawValue: 0)
  /// `TDX_OPERAND_BUSY`: another logical processor holds a lock on the operand; retry.
  public static let operandBusy = TDXStatus(rawValue: 0x8000_0200_0000_0000)
  /// `TDX_EPT_ENTRY_STATE_INCORRECT`: the Secure-EPT entry is not in the state the leaf needs.
  public static let eptEntryStateIncorrect = TDXStatus(rawValue: 0xC000_0B0D_0000_0000)
  /// `TDX_TLB_TRACKING_NOT_DONE`: the entry's block epoch has not been tracked to completion.
  public static let tlbTrackingNotDone = TDXStatus(rawValue: 0xC000_0B08_0000_0000)
  /// `TDX_MMIO_INVALID_HPA_OFFSET` (class 0x0F4D from the TDX Connect draft; low bits not
  /// certain).
  public static let mmioInvalidHPAOffset = TDXStatus(rawValue: 0xC000_0F4D_0000_0000)
  /// `TDX_PREVIOUS_TLB_EPOCH_BUSY`: a TRACK while vCPUs still run in the previous epoch.
  /// Value not certain (TDX Connect draft): defined once here.
  public static let previousTLBEpochBusy = TDXStatus(rawValue: 0x8000_0201_0000_0000)
  /// `TDX_DEVIF_TDISP_INVALID_STATE`: the device interface's TDISP state forbids the leaf
  /// (for example UNMAP while the TDI is still trusted). Value not certain.
  public static let devifTDISPInvalidState = TDXStatus(rawValue: 0xC000_0F41_0000_0000)
  /// `TDX_DEVIF_HAS_MAPPED_MMIO`: DEVIF.REMOVE while MMIO pages are still mapped. Value not
  /// certain.
  public static let devifHasMappedMMIO = TDXStatus(rawValue: 0xC000_0F42_0000_0000)

  /// Every named status, by its ABI name; scenarios' `expect: { tdx: NAME }` uses these.
  public static var allNamed: [(name: String, status: TDXStatus)] {
    [
      ("TDX_SUCCESS", .success),
      ("TDX_OPERAND_BUSY", .operandBusy),
      ("TDX_EPT_ENTRY_STATE_INCORRECT", .eptEntryStateIncorrect),
      ("TDX_TLB_TRACKING_NOT_DONE", .tlbTrackingNotDone),
      ("TDX_MMIO_INVALID_HPA_OFFSET", .mmioInvalidHPAOffset),
      ("TDX_PREVIOUS_TLB_EPOCH_BUSY", .previousTLBEpochBusy),
      ("TDX_DEVIF_TDISP_INVALID_STATE", .devifTDISPInvalidState),
      ("TDX_DEVIF_HAS_MAPPED_MMIO", .devifHasMappedMMIO),
    ] + TDXStatus.moreNamed
  }

  /// Looks a status up by its ABI name (operand field zero).
  public init?(name: String) {
    guard let hit = TDXStatus.allNamed.first(where: { $0.name == name }) else { return nil }
    self = hit.status
  }

  /// The ABI name of the status class (operand ignored), or the hex value.
  public var name: String {
    TDXStatus.allNamed.first(where: { $0.status == code })?.name
      ?? "0x" + String(rawValue, radix: 16, uppercase: true)
  }

  public var description: String {
    operand == 0 ? name : "\(name) (operand 0x\(String(operand, radix: 16)))"
  }
}
