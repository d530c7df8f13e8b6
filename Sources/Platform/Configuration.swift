import KernelCore
import KVM

/// The machine a scenario describes under `machine:`.
public struct MachineConfiguration: Hashable, Sendable {
  public var devices: [DeviceConfiguration]
  public var vms: [VMConfiguration]
  /// What the host's KVM offers (`machine: host:`).
  public var host: HostCapabilities
  public init(devices: [DeviceConfiguration] = [], vms: [VMConfiguration] = [],
              host: HostCapabilities = .typical) {
    self.devices = devices; self.vms = vms; self.host = host
  }
}

/// What the host kernel's KVM offers, as machine configuration (`machine: host: { smm: false,
/// maxphyaddr: 46, vm_types: [default, tdx] }`). The fuzz oracle fills it in from the running
/// kernel (`KVM_CHECK_EXTENSION`); a scenario may state it; ``typical`` is the default.
public struct HostCapabilities: Hashable, Sendable {
  /// `CONFIG_KVM_SMM`: `KVM_MAX_NR_ADDRESS_SPACES` is 2 (normal and SMM memslots) instead of
  /// 1, and `KVM_CAP_MULTI_ADDRESS_SPACE` is answered.
  public var smm: Bool
  /// The host's MAXPHYADDR (`kvm_host.maxphyaddr`, CPUID 0x80000008 EAX[7:0]):
  /// `kvm_mmu_max_gfn()` is `(1 << (maxphyaddr - 12)) - 1` with TDP (a host without TDP, such
  /// as a PVM one, uses 52). It also picks a TD's GPA width: 52-bit GPAs (shared bit 51,
  /// `TDX_SHARED_BIT_PWL_5`) when it is above 48, else 48-bit (shared bit 47,
  /// `TDX_SHARED_BIT_PWL_4`), as `setup_tdparams_eptp_controls()` sets `MAX_GPAW` from the
  /// guest MAXPHYADDR, which a VMM gives the host's.
  public var maxPhysAddr: UInt8
  /// `kvm_caps.supported_vm_types`: the types `KVM_CREATE_VM` accepts (`KVM_CAP_VM_TYPES`).
  public var vmTypes: Set<VMType>
  /// `CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES`: `KVM_SET_MEMORY_ATTRIBUTES` exists (it is
  /// selected by `KVM_SW_PROTECTED_VM`, `KVM_INTEL_TDX` and `KVM_AMD_SEV`); without it the
  /// ioctl answers `ENOTTY` and `KVM_CAP_MEMORY_ATTRIBUTES` is 0.
  public var memoryAttributes: Bool

  public init(smm: Bool, maxPhysAddr: UInt8, vmTypes: Set<VMType>, memoryAttributes: Bool) {
    self.smm = smm; self.maxPhysAddr = maxPhysAddr; self.vmTypes = vmTypes; self.memoryAttributes = memoryAttributes
  }

  /// A typical x86-64 TDX host with a 6.18 kernel built with `CONFIG_KVM_SW_PROTECTED_VM`:
  /// SMM on (the default `CONFIG_KVM_SMM=y`), MAXPHYADDR 46 (Intel server parts), every VM type
  /// the model has (default, software-protected, TDX), memory attributes compiled in.
  public static let typical = HostCapabilities(smm: true, maxPhysAddr: 46,
                                               vmTypes: [.default, .swProtected, .tdx], memoryAttributes: true)

  /// `kvm_mmu_max_gfn()`.
  public var maxGFN: GFN { GFN((1 << (UInt64(maxPhysAddr) - pageShift)) - 1) }

  /// A TD's GPA width (`TDX_EXEC_CONTROL_MAX_GPAW` clear: 48, set: 52).
  public var tdGPAWidth: UInt8 { maxPhysAddr > 48 ? 52 : 48 }

  /// What a VM of `type` may do on this host.
  public func limits(for type: VMType) -> VMLimits {
    VMLimits(addressSpaces: type.addressSpaces(smm: smm), maxGFN: maxGFN,
             gfnDirectBits: type == .tdx ? 1 << (UInt64(tdGPAWidth) - 1 - pageShift) : 0)
  }

  /// The checks a configuration must pass: MAXPHYADDR between 32 and 52 (what CPUID can say
  /// on x86-64 with 4- or 5-level paging), and the default VM type offered.
  public func validate() -> String? {
    guard (32 ... 52).contains(maxPhysAddr) else { return "maxphyaddr \(maxPhysAddr) is not between 32 and 52" }
    guard vmTypes.contains(.default) else { return "vm_types must contain default: every x86 KVM offers KVM_X86_DEFAULT_VM" }
    return nil
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
