import KernelCore

/// What a function's memory BARs hold, as far as a read can tell: the model's device is a
/// scratch register file.
///
/// Every byte reads back what was last written to it since the function's last reset, by any
/// path (a guest store through its mapping, or VFIO's `pwrite`); a byte never written reads
/// its reset value. The reset value of the 32-bit register at offset `o` (4-aligned) is `o`
/// itself, truncated to 32 bits, so a scenario can predict every read: 4 bytes at `0x10`
/// read `0x10`, 8 bytes at `0x10` read `0x14_0000_0010`. Real devices give registers other
/// reset values and side effects; the model keeps the one property the private-MMIO stack
/// cares about: a read shows which device, which offset and which reset the access reached.
///
/// A reset (FLR, conventional reset) returns every register to its reset value. D3hot -> D0
/// keeps them (the model's functions set No_Soft_Reset, see ``PCIFunction/writePowerState(_:trace:)``).
///
/// Only written bytes are stored, so the contents cost what was written, whatever the BAR's size.
public struct BARContents: Hashable, Sendable {
  /// Bytes written since the last reset, by BAR index, then byte offset in the BAR.
  var written: [UInt32: [UInt64: UInt8]] = [:]

  public init() {}

  /// The bytes written since the last reset (for `pmmio show`).
  public var writtenByteCount: Int { written.values.reduce(0) { $0 + $1.count } }

  /// The bytes of BAR `bar` that hold something else than their reset value.
  public func writtenByteCount(bar: UInt32) -> Int { written[bar]?.count ?? 0 }

  /// The reset value of the byte at `offset`: byte `offset % 4` of its register, whose value
  /// is the register's own offset.
  @inlinable public static func resetByte(at offset: UInt64) -> UInt8 {
    let register = UInt32(truncatingIfNeeded: offset & ~3)
    return UInt8(truncatingIfNeeded: register >> ((offset & 3) * 8))
  }

  /// The little-endian value of `size` (1...8) bytes at `offset` of BAR `bar`.
  public func read(bar: UInt32, offset: UInt64, size: UInt64) -> UInt64 {
    let bytes = written[bar]
    var value: UInt64 = 0
    for i in 0 ..< min(size, 8) {
      let byte = bytes?[offset &+ i] ?? Self.resetByte(at: offset &+ i)
      value |= UInt64(byte) << (i * 8)
    }
    return value
  }

  /// Stores the low `size` (1...8) bytes of `value`, little-endian, at `offset` of BAR `bar`.
  /// A byte written back to its reset value is forgotten, so two functions no read can tell
  /// apart hold equal contents.
  public mutating func write(bar: UInt32, offset: UInt64, size: UInt64, value: UInt64) {
    var bytes = written[bar] ?? [:]
    for i in 0 ..< min(size, 8) {
      let byte = UInt8(truncatingIfNeeded: value >> (i * 8))
      bytes[offset &+ i] = byte == Self.resetByte(at: offset &+ i) ? nil : byte
    }
    written[bar] = bytes.isEmpty ? nil : bytes
  }

  /// Every register back to its reset value.
  public mutating func reset() { written = [:] }

  /// All ones in the low `size` bytes: what a read that no function completes returns (a
  /// master abort, or an Unsupported Request completion, on PCIe).
  public static func allOnes(size: UInt64) -> UInt64 {
    size >= 8 ? .max : (1 << (size * 8)) - 1
  }
}
