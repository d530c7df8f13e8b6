import KernelCore

/// The machine a scenario describes under `machine:`.
public struct MachineConfiguration: Hashable, Sendable {
  public var devices: [DeviceConfiguration]
  public var vms: [VMConfiguration]
  public init(devices: [DeviceConfiguration] = [], vms: [VMConfiguration] = []) {
    self.devices = devices; self.vms = vms
  }
}

/// One PCIe function: its name, BARs and whether it speaks TDISP.
public struct DeviceConfiguration: Hashable, Sendable {
  public var name: String
  public var bars: [BARConfiguration]
  public var tdisp: Bool
  public init(name: String, bars: [BARConfiguration], tdisp: Bool = false) {
    self.name = name; self.bars = bars; self.tdisp = tdisp
  }
}

/// One memory BAR. `msixTable`/`msixPBA` are (offset, size) inside the BAR when present.
public struct BARConfiguration: Hashable, Sendable {
  public var index: UInt32
  public var size: UInt64
  public var is64Bit: Bool
  public var prefetchable: Bool
  public var msixTable: DmaRange?
  public var msixPBA: DmaRange?
  public init(index: UInt32, size: UInt64, is64Bit: Bool = true, prefetchable: Bool = true,
              msixTable: DmaRange? = nil, msixPBA: DmaRange? = nil) {
    self.index = index; self.size = size; self.is64Bit = is64Bit; self.prefetchable = prefetchable
    self.msixTable = msixTable; self.msixPBA = msixPBA
  }
}

/// A VM created when the machine starts (as if `KVM_CREATE_VM` ran); its name refers to its fd.
public struct VMConfiguration: Hashable, Sendable {
  public var name: String
  public var type: VMTypeName
  public init(name: String, type: VMTypeName) { self.name = name; self.type = type }
}

/// A machine configuration the model cannot build (two devices with one name, a BAR size that
/// is not a power of two …). Scenarios report it with the position of the offending entry.
public struct ConfigurationError: Error, Hashable, Sendable, CustomStringConvertible {
  public let message: String
  /// The entry at fault, so that a scenario can point at its line.
  public let subject: ConfigurationSubject?
  public init(_ message: String, subject: ConfigurationSubject? = nil) {
    self.message = message; self.subject = subject
  }
  public var description: String { message }
}

/// Which entry of a ``MachineConfiguration`` an error is about, by position in its arrays.
public enum ConfigurationSubject: Hashable, Sendable {
  /// `devices[device]`.
  case device(Int)
  /// `devices[device].bars[bar]` (the position in the array, not the BAR register number).
  case bar(device: Int, bar: Int)
  /// `vms[vm]`.
  case vm(Int)
}
