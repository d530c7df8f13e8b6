import KernelCore

/// A TDX module completion status: the 64-bit value a SEAMCALL or TDCALL returns in RAX.
///
/// **Source.** Every value in this file and in `TDXStatus+Codes.swift` is copied from Intel's
/// published TDX module source, repository `intel/tdx-module`, file
/// `include/auto_gen_2_0/tdx_error_codes_defs.h` at commit
/// `6e66b9d2070aa49562518087160b2c6ae6418555` (the TDX 2.0 tree with TDX Connect; its
/// `BUILD.md` names build date 20251204, build 994, update version 16; the header says it was
/// generated from architecture commit `6985f76f`). Tests pin each value
/// (`Tests/TDXTests/StatusValueTests.swift`).
///
/// Layout (the same header): bit 63 is the error flag, bit 62 "non-recoverable", bits 47:32
/// the status class and code, bits 31:0 the operand (`OPERAND_ID_*`: which register or
/// object the status is about). A status with bit 63 clear and a non-zero code is a
/// *warning*: the call succeeded (for example `TDX_PAGE_ALREADY_ACCEPTED`).
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
  /// This status with `operand` in bits 31:0 (the module's `api_error_with_operand_id()`).
  @inlinable public func with(operand: UInt32) -> TDXStatus {
    var status = TDXStatus(rawValue: code.rawValue | UInt64(operand))
    status.reason = reason
    return status
  }
  /// Bit 63: the call failed. A non-zero status with this bit clear is a warning.
  @inlinable public var isError: Bool { rawValue & (1 << 63) != 0 }
  /// Bit 62: the failure cannot be retried.
  @inlinable public var isNonRecoverable: Bool { rawValue & (1 << 62) != 0 }

  /// `TDX_SUCCESS`.
  public static let success = TDXStatus(rawValue: 0x0000_0000_0000_0000)
  /// `TDX_OPERAND_BUSY`: another logical processor holds a lock on the operand; retry.
  public static let operandBusy = TDXStatus(rawValue: 0x8000_0200_0000_0000)
  /// `TDX_PREVIOUS_TLB_EPOCH_BUSY`: TDH.MEM.TRACK while a vCPU still runs in the previous
  /// epoch (`tdh_mem_track.c` returns it with no operand).
  public static let previousTLBEpochBusy = TDXStatus(rawValue: 0x8000_0201_0000_0000)
  /// `TDX_OPERAND_BUSY_HOST_PRIORITY`: a guest-side lock lost to a host that asked first.
  public static let operandBusyHostPriority = TDXStatus(rawValue: 0x8000_0204_0000_0000)
  /// `TDX_OPERAND_INVALID`: an argument is malformed, out of range or names no object.
  public static let operandInvalid = TDXStatus(rawValue: 0xC000_0100_0000_0000)
  /// `TDX_NON_RECOVERABLE_TD` as the module defines it (`0x6000000200000000`; the kernel's
  /// `arch/x86/include/asm/shared/tdx_errno.h` spells it `0x4000000200000000`). No leaf of
  /// the model returns it (a fatal TD is ``tdFatal``); kept as a named value.
  public static let nonRecoverableTD = TDXStatus(rawValue: 0x6000_0002_0000_0000)
  /// `TDX_TD_FATAL`: the TD's TDR is marked fatal; every SEAMCALL that checks the TD state
  /// refuses it (the `tdr_ptr->management_fields.fatal` check of the TD-state helpers).
  public static let tdFatal = TDXStatus(rawValue: 0xE000_0604_0000_0000)
  /// `TDX_EPT_WALK_FAILED`: the Secure-EPT walk stopped above the requested level.
  public static let eptWalkFailed = TDXStatus(rawValue: 0xC000_0B00_0000_0000)
  /// `TDX_GPA_RANGE_NOT_BLOCKED`: removal of an entry that was not blocked first.
  public static let gpaRangeNotBlocked = TDXStatus(rawValue: 0xC000_0B06_0000_0000)
  /// `TDX_TLB_TRACKING_NOT_DONE`: the entry's block epoch has not been tracked to completion.
  public static let tlbTrackingNotDone = TDXStatus(rawValue: 0xC000_0B08_0000_0000)
  /// `TDX_PAGE_ALREADY_ACCEPTED`: a *warning* (bit 63 clear). TDG.MMIO.ACCEPT returns it, with
  /// the Secure-EPT level as operand, for an entry the guest already accepted
  /// (`tdg_mmio_accept.c`, cases 1.1 and 4.1).
  public static let pageAlreadyAccepted = TDXStatus(rawValue: 0x0000_0B0A_0000_0000)
  /// `TDX_EPT_ENTRY_STATE_INCORRECT`: the Secure-EPT entry is not in a state the leaf allows
  /// (`sept_state_is_seamcall_leaf_allowed()`).
  public static let eptEntryStateIncorrect = TDXStatus(rawValue: 0xC000_0B0D_0000_0000)

  /// Every named status, by its ABI name; scenarios' `expect: { tdx: NAME }` uses these.
  public static var allNamed: [(name: String, status: TDXStatus)] {
    [
      ("TDX_SUCCESS", .success),
      ("TDX_OPERAND_BUSY", .operandBusy),
      ("TDX_PREVIOUS_TLB_EPOCH_BUSY", .previousTLBEpochBusy),
      ("TDX_OPERAND_BUSY_HOST_PRIORITY", .operandBusyHostPriority),
      ("TDX_OPERAND_INVALID", .operandInvalid),
      ("TDX_NON_RECOVERABLE_TD", .nonRecoverableTD),
      ("TDX_TD_FATAL", .tdFatal),
      ("TDX_EPT_WALK_FAILED", .eptWalkFailed),
      ("TDX_GPA_RANGE_NOT_BLOCKED", .gpaRangeNotBlocked),
      ("TDX_TLB_TRACKING_NOT_DONE", .tlbTrackingNotDone),
      ("TDX_PAGE_ALREADY_ACCEPTED", .pageAlreadyAccepted),
      ("TDX_EPT_ENTRY_STATE_INCORRECT", .eptEntryStateIncorrect),
    ] + TDXStatus.connectNamed
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
