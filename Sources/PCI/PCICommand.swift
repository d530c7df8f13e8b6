/// The PCI Command register (config offset 0x04, `PCI_COMMAND` in `include/uapi/linux/pci_regs.h`).
public struct PCICommand: OptionSet, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }

  /// `PCI_COMMAND_IO`: respond to I/O space accesses.
  public static let ioSpace = PCICommand(rawValue: 1 << 0)
  /// `PCI_COMMAND_MEMORY`: respond to memory space accesses (Memory Space Enable, MSE).
  public static let memorySpace = PCICommand(rawValue: 1 << 1)
  /// `PCI_COMMAND_MASTER`: may issue requests, DMA and MSI (Bus Master Enable, BME).
  public static let busMaster = PCICommand(rawValue: 1 << 2)
  /// `PCI_COMMAND_PARITY`: Parity Error Response.
  public static let parityErrorResponse = PCICommand(rawValue: 1 << 6)
  /// `PCI_COMMAND_SERR`.
  public static let serr = PCICommand(rawValue: 1 << 8)
  /// `PCI_COMMAND_INTX_DISABLE`.
  public static let interruptDisable = PCICommand(rawValue: 1 << 10)

  public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// The PowerState field of the Power Management Control/Status register (PMCSR bits 1:0,
/// `PCI_PM_CTRL_STATE_MASK`). The model has the two states the private-MMIO stack cares about.
public enum PCIPowerState: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  /// `PCI_D0`: fully on.
  case d0 = 0
  /// `PCI_D3hot`: only config space answers; memory space is not decoded.
  case d3hot = 3

  public var description: String {
    switch self {
    case .d0: "D0"
    case .d3hot: "D3hot"
    }
  }
}
