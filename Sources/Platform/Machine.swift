import KernelCore
import PCI
import DmaBuf
import VFIO
import KVM
import TDX
import HashTreeCollections

/// What an fd refers to: the `struct file`s of the model's one user-space process.
public enum OpenFile: Hashable, Sendable {
  case vfioDevice(VFIOFileID)
  case dmaBuf(DmaBufID)
  case vm(VMID)
}

/// The whole system as one value: devices, VFIO, dma-bufs, VMs, the fd table.
///
/// Copying a machine is a snapshot (every large part is a persistent tree). Every operation is
/// `mutating` and either succeeds or leaves the machine equal to what it was: each subsystem
/// validates before it commits, as the kernel does.
public struct Machine: Hashable, Sendable {
  public let variant: Variant
  /// Events of the operations performed so far; not part of the machine's state.
  public var trace = Trace()

  public internal(set) var files = FileTable<OpenFile>()
  public internal(set) var vfio: VFIOPCIDriver
  public internal(set) var dmabufCore = DmaBufCore()
  /// Devices by configured name, in configuration order.
  public let deviceNames: [String: VFIODeviceID]
  /// KVM's VMs and the TDX module.
  public internal(set) var kvm = KVMHost()
  /// fds of the VMs the configuration created, by name.
  public private(set) var configuredVMs: [String: FD] = [:]

  /// The host-physical window BARs are placed in (above any modelled RAM), each BAR naturally
  /// aligned to its size as firmware assigns them.
  public static let mmioWindowBase = HPA(0x40_0000_0000)

  public init(configuration: MachineConfiguration, variant: Variant = .reviewed) throws(ConfigurationError) {
    self.variant = variant
    var vfio = VFIOPCIDriver(variant: variant)
    var names: [String: VFIODeviceID] = [:]
    var cursor = Self.mmioWindowBase.rawValue
    for device in configuration.devices {
      guard names[device.name] == nil else { throw ConfigurationError("device \(device.name) is defined twice") }
      var bars: [BAR] = []
      for bar in device.bars.sorted(by: { $0.index < $1.index }) {
        guard bar.size >= pageSize, bar.size & (bar.size - 1) == 0 else {
          throw ConfigurationError("BAR \(bar.index) of \(device.name): size 0x\(String(bar.size, radix: 16)) is not a power of two of at least 4 KiB")
        }
        // Natural alignment, checked: a BAR that does not fit below 2^64 is a bad machine.
        let (aligned, wrapped) = cursor.addingReportingOverflow(bar.size - 1)
        let (end, past) = (aligned & ~(bar.size - 1)).addingReportingOverflow(bar.size)
        guard !wrapped, !past else {
          throw ConfigurationError("BAR \(bar.index) of \(device.name): size 0x\(String(bar.size, radix: 16)) does not fit in the physical address space")
        }
        cursor = aligned & ~(bar.size - 1)
        bars.append(BAR(index: bar.index, size: bar.size, base: HPA(cursor), is64Bit: bar.is64Bit,
                        prefetchable: bar.prefetchable,
                        msixTable: bar.msixTable.map { BARSpan(offset: $0.offset, size: $0.length) },
                        msixPBA: bar.msixPBA.map { BARSpan(offset: $0.offset, size: $0.length) }))
        cursor = end
      }
      let function: PCIFunction
      do { function = try PCIFunction(name: device.name, bars: bars, tdisp: device.tdisp) } catch {
        throw ConfigurationError("device \(device.name): its BARs are invalid (\(error.name)): a 64-bit BAR takes two "
                                 + "registers (BAR 5 cannot be 64-bit; a 64-bit BAR n leaves no BAR n+1), and BARs may not overlap")
      }
      names[device.name] = vfio.registerDevice(function)
    }
    self.vfio = vfio
    self.deviceNames = names
    for vm in configuration.vms {
      guard configuredVMs[vm.name] == nil else { throw ConfigurationError("VM \(vm.name) is defined twice") }
      // As a VMM does: create the VM and its first vCPU.
      guard case .success(.fd(let fd)) = perform(.kvmCreateVM(type: vm.type)),
            case .success = perform(.kvmCreateVCPU(vm: fd, id: 0)) else {
        throw ConfigurationError("VM \(vm.name) could not be created")
      }
      configuredVMs[vm.name] = fd
    }
    _ = trace.drain()
  }

  /// The fd of a VM the configuration created, by its name (`td0`); `nil` for no such VM.
  public func vmFD(named name: String) -> FD? { configuredVMs[name] }

  /// Performs one operation in the ioctl context.
  public mutating func perform(_ op: Operation) -> OpResult {
    perform(op, context: .ioctl)
  }

  /// Performs one operation in `context`.
  public mutating func perform(_ op: Operation, context: ContextID) -> OpResult {
    defer { trace.absorb(&kvm.tdx.trace) }
    let deadTarget = targetsDeadVM(op)
    do throws(OpFailure) {
      let value = try dispatch(op, context: context)
      if deadTarget { kvm.deadVMIoctls += 1 }
      return .success(value)
    } catch {
      trace.absorb(&kvm.tdx.trace)
      trace.emit(.platform, "-> \(error)")
      return .failure(error)
    }
  }
}

extension Machine {
  /// The VFIO device named `name` in the configuration. - Throws: `ENODEV` for no such device.
  func device(named name: String) throws(Errno) -> VFIODeviceID {
    guard let id = deviceNames[name] else { throw .ENODEV }
    return id
  }

  /// ``device(named:)`` for paths that report TDISP and TDX failures too.
  func pciDevice(named name: String) throws(OpFailure) -> VFIODeviceID {
    try errno { () throws(Errno) in try device(named: name) }
  }

  func vfioFile(_ fd: FD) throws(Errno) -> VFIOFileID {
    guard case .vfioDevice(let id) = try files.lookup(fd) else { throw .EINVAL }
    return id
  }

  func dmaBuf(_ fd: FD) throws(Errno) -> DmaBufID {
    guard case .dmaBuf(let id) = try files.lookup(fd) else { throw .EINVAL }
    return id
  }

  func vm(_ fd: FD) throws(Errno) -> VMID {
    guard case .vm(let id) = try files.lookup(fd) else { throw .EINVAL }
    return id
  }

  /// Whether `op` is an ioctl on a VM that is already dead (closing its fd is not).
  func targetsDeadVM(_ op: Operation) -> Bool {
    let fd: FD
    switch op {
    case .kvmCreateVCPU(let vm, _), .kvmSetUserMemoryRegion2(let vm, _), .guestRead(let vm, _, _),
         .guestWrite(let vm, _, _), .guestAcceptMMIO(let vm, _, _), .tdxDevifCreate(let vm, _):
      fd = vm
    default:
      return false
    }
    guard case .vm(let id)? = try? files.lookup(fd) else { return false }
    return kvm.vms[id]?.isDead == true
  }

  /// A free fd must exist before an operation commits anything it would hand out as an fd.
  func requireFreeFD() throws(Errno) {
    var probe = files
    _ = try probe.install(.vm(VMID(0)))
  }
}
