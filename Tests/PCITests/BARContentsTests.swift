import KernelCore
import Testing
@testable import PCI

/// The register file behind a function's BARs: reset values, read-back, resets, decode.
@Suite("PCI: BAR contents")
struct BARContentsTests {
  struct ReadCase: Sendable, CustomTestStringConvertible {
    let offset: UInt64
    let size: UInt64
    let value: UInt64
    var testDescription: String { "\(size) bytes at 0x\(String(offset, radix: 16))" }
  }

  /// Each 32-bit register reads its own offset; smaller and unaligned reads take its bytes.
  @Test(arguments: [
    ReadCase(offset: 0, size: 4, value: 0), ReadCase(offset: 0x10, size: 4, value: 0x10),
    ReadCase(offset: 0x10, size: 8, value: 0x14_0000_0010), ReadCase(offset: 0x1234, size: 2, value: 0x1234),
    ReadCase(offset: 0x1235, size: 1, value: 0x12), ReadCase(offset: 0x12, size: 4, value: 0x0014_0000),
    ReadCase(offset: 0x1_0000_0008, size: 4, value: 8),   // past 4 GiB the offset is cut to 32 bits
  ])
  func resetValues(_ c: ReadCase) {
    #expect(BARContents().read(bar: 0, offset: c.offset, size: c.size) == c.value)
  }

  @Test func writesReadBackPerBARAndByte() {
    var contents = BARContents()
    contents.write(bar: 2, offset: 0x21, size: 2, value: 0xBBAA)
    #expect(contents.read(bar: 2, offset: 0x20, size: 4) == 0x00BB_AA20)
    #expect(contents.read(bar: 0, offset: 0x20, size: 4) == 0x20)        // another BAR is untouched
    #expect(contents.writtenByteCount == 2)
    contents.write(bar: 2, offset: 0x21, size: 1, value: 0)              // byte 1 of 0x20 is 0: back to reset
    #expect(contents.writtenByteCount == 1)
    contents.reset()
    #expect(contents == BARContents())
  }

  @Test(arguments: [(UInt64(1), UInt64(0xff)), (2, 0xffff), (4, 0xffff_ffff), (8, .max)])
  func allOnesIsTheAccessWidth(size: UInt64, value: UInt64) {
    #expect(BARContents.allOnes(size: size) == value)
  }

  static func function() throws -> PCIFunction {
    try PCIFunction(name: "f", bars: [BAR(index: 0, size: 0x1000, base: HPA(0x40_0000_0000))], tdisp: false)
  }

  /// Without memory decode (MSE clear, D3hot) a read is a master abort and a write is lost; D3hot
  /// and back keeps the registers; an FLR and a conventional reset return them to reset values.
  @Test func decodeAndResets() throws {
    var f = try Self.function()
    var trace = Trace(enabled: false)
    var took = f.memoryWrite(bar: 0, offset: 0, size: 4, value: 5)
    #expect(took)
    f.writeCommand([.busMaster], trace: &trace)
    #expect(f.memoryRead(bar: 0, offset: 0, size: 4) == 0xffff_ffff)
    took = f.memoryWrite(bar: 0, offset: 0, size: 4, value: 6)
    #expect(!took)
    f.writeCommand([.memorySpace, .busMaster], trace: &trace)
    #expect(f.memoryRead(bar: 0, offset: 0, size: 4) == 5)
    f.writePowerState(.d3hot, trace: &trace)
    #expect(f.memoryRead(bar: 0, offset: 0, size: 2) == 0xffff)
    f.writePowerState(.d0, trace: &trace)
    #expect(f.memoryRead(bar: 0, offset: 0, size: 4) == 5)
    f.functionLevelReset(trace: &trace)
    f.writeCommand([.memorySpace], trace: &trace)
    #expect(f.memoryRead(bar: 0, offset: 0, size: 4) == 0)
    took = f.memoryWrite(bar: 0, offset: 4, size: 4, value: 1)
    #expect(took)
    f.conventionalReset(trace: &trace)
    f.writeCommand([.memorySpace], trace: &trace)
    #expect(f.memoryRead(bar: 0, offset: 4, size: 4) == 4)
  }
}
