/// Address and page-number newtypes. None of the model's APIs takes a bare `UInt64` for an
/// address: a GPA cannot be passed where an HPA is expected, and arithmetic is checked.

/// The size of a base page, 4 KiB, as `PAGE_SIZE` on x86-64.
public let pageSize: UInt64 = 4096
/// `PAGE_SHIFT` on x86-64.
public let pageShift: UInt64 = 12

/// The shape every address newtype shares: a 64-bit raw value with checked arithmetic.
public protocol AddressValue: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible
where RawValue == UInt64 {
  init(_ raw: UInt64)
}

extension AddressValue {
  @inlinable public init(rawValue: UInt64) { self.init(rawValue) }
  @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
  public var description: String { "0x" + String(rawValue, radix: 16) }

  /// `self + delta`, or `EOVERFLOW` when it wraps (the kernel's `check_add_overflow`).
  @inlinable public func adding(_ delta: UInt64) throws(Errno) -> Self {
    let (sum, overflow) = rawValue.addingReportingOverflow(delta)
    if overflow { throw Errno.EOVERFLOW.because("check_add_overflow", "\(self) + 0x\(String(delta, radix: 16)) wraps past 2^64") }
    return Self(sum)
  }

  /// `self + delta` for callers that have already bounded the sum; wraps instead of trapping.
  @inlinable public func advanced(by delta: UInt64) -> Self { Self(rawValue &+ delta) }

  /// The distance `self - base`; `nil` when `base` is above `self`.
  @inlinable public func offset(from base: Self) -> UInt64? {
    rawValue >= base.rawValue ? rawValue - base.rawValue : nil
  }
}

/// A byte address that has a page frame: GPA -> GFN, HPA -> PFN.
public protocol ByteAddress: AddressValue {}
extension ByteAddress {
  @inlinable public var isPageAligned: Bool { rawValue & (pageSize - 1) == 0 }
  /// Whether the address is aligned to `bytes`, a power of two.
  @inlinable public func isAligned(to bytes: UInt64) -> Bool { rawValue & (bytes &- 1) == 0 }
  /// The offset of the address within its 4 KiB page.
  @inlinable public var pageOffset: UInt64 { rawValue & (pageSize - 1) }
}

/// A guest-physical address.
@frozen public struct GPA: ByteAddress {
  public let rawValue: UInt64
  @inlinable public init(_ raw: UInt64) { rawValue = raw }
  /// The guest frame number holding this address.
  @inlinable public var gfn: GFN { GFN(rawValue >> pageShift) }
}

/// A host-physical address.
@frozen public struct HPA: ByteAddress {
  public let rawValue: UInt64
  @inlinable public init(_ raw: UInt64) { rawValue = raw }
  /// The host page frame number holding this address.
  @inlinable public var pfn: PFN { PFN(rawValue >> pageShift) }
}

/// A guest frame number (`gfn_t`).
@frozen public struct GFN: AddressValue {
  public let rawValue: UInt64
  @inlinable public init(_ raw: UInt64) { rawValue = raw }
  @inlinable public var gpa: GPA { GPA(rawValue << pageShift) }
}

/// A host page frame number (`kvm_pfn_t`, `unsigned long pfn`).
@frozen public struct PFN: AddressValue {
  public let rawValue: UInt64
  @inlinable public init(_ raw: UInt64) { rawValue = raw }
  @inlinable public var hpa: HPA { HPA(rawValue << pageShift) }
}

/// A page index inside a file or buffer (`pgoff_t`): page N of a dma-buf, of a memslot's fd.
@frozen public struct PageIndex: AddressValue {
  public let rawValue: UInt64
  @inlinable public init(_ raw: UInt64) { rawValue = raw }
}

extension UInt64 {
  /// Whether the value is a multiple of 4 KiB (`PAGE_ALIGNED()`).
  @inlinable public var isPageAligned: Bool { self & (pageSize - 1) == 0 }
  /// The number of 4 KiB pages in this many bytes, rounded down.
  @inlinable public var pages: UInt64 { self >> pageShift }
}
