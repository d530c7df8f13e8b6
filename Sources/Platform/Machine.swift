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
  /// A guest_memfd file (`KVM_CREATE_GUEST_MEMFD`) of a VM; it holds a reference to its VM.
  case guestMemfd(VMID, GuestMemfdID)

  /// The file's kind, in words: "a dma-buf", "a KVM VM" …
  var kindName: String {
    switch self {
    case .vfioDevice: "a VFIO device file"
    case .dmaBuf: "a dma-buf"
    case .vm: "a KVM VM"
    case .guestMemfd: "a guest_memfd"
    }
  }
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
  /// What the host's KVM offers (the configuration's `host:`).
  public let host: HostCapabilities

  /// Where the first 64-bit BAR goes: the start of the 64-bit MMIO window, above any modelled
  /// RAM. BARs are placed as firmware assigns them, each naturally aligned to its size:
  /// 32-bit BARs below 4 GiB (``MMIOWindowAllocator/default32Bit``), 64-bit BARs from here
  /// (``MMIOWindowAllocator/default64Bit``).
  public static let mmioWindowBase = MMIOWindowAllocator.default64Bit.base

  public init(configuration: MachineConfiguration, variant: Variant = .reviewed) throws(ConfigurationError) {
    self.variant = variant
    if let problem = configuration.host.validate() { throw ConfigurationError("host: \(problem)") }
    host = configuration.host
    var vfio = VFIOPCIDriver(variant: variant)
    var names: [String: VFIODeviceID] = [:]
    // BAR placement: the one place BARs get addresses.
    var window32 = MMIOWindowAllocator.default32Bit
    var window64 = MMIOWindowAllocator.default64Bit
    for (d, device) in configuration.devices.enumerated() {
      guard names[device.name] == nil else {
        throw ConfigurationError("device \(device.name) is defined twice", subject: .device(d))
      }
      var bars: [BAR] = []
      var positions: [Int] = []
      for (b, bar) in device.bars.enumerated().sorted(by: { $0.element.index < $1.element.index }) {
        let base: HPA
        do {
          base = bar.is64Bit ? try window64.allocate(size: bar.size) : try window32.allocate(size: bar.size)
        } catch {
          let window = bar.is64Bit ? "64-bit" : "32-bit (below 4 GiB)"
          throw ConfigurationError("BAR \(bar.index) of \(device.name) cannot be placed in the \(window) MMIO window: "
                                   + (error.reason?.description ?? error.name), subject: .bar(device: d, bar: b))
        }
        positions.append(b)
        bars.append(BAR(index: bar.index, size: bar.size, base: base, is64Bit: bar.is64Bit,
                        prefetchable: bar.prefetchable,
                        msixTable: bar.msixTable.map { BARSpan(offset: $0.offset, size: $0.length) },
                        msixPBA: bar.msixPBA.map { BARSpan(offset: $0.offset, size: $0.length) }))
      }
      if let (n, problem) = BAR.firstProblem(in: bars) {
        throw ConfigurationError("BAR \(bars[n].index) of \(device.name): \(problem)", subject: .bar(device: d, bar: positions[n]))
      }
      let function: PCIFunction
      do { function = try PCIFunction(name: device.name, bars: bars, tdisp: device.tdisp) } catch {
        throw ConfigurationError("device '\(device.name)' cannot be built (\(error.name))", subject: .device(d))
      }
      names[device.name] = vfio.registerDevice(function)
    }
    self.vfio = vfio
    self.deviceNames = names
    for (v, vm) in configuration.vms.enumerated() {
      guard configuredVMs[vm.name] == nil else { throw ConfigurationError("VM \(vm.name) is defined twice", subject: .vm(v)) }
      // As a VMM does: create the VM and its first vCPU; a failure says which ioctl and why.
      func refused(_ ioctl: String, _ failure: OpFailure) -> ConfigurationError {
        ConfigurationError("VM \(vm.name) cannot be created: \(ioctl) failed with \(failure)"
                           + (failure.reason.map { " (\($0))" } ?? ""), subject: .vm(v))
      }
      let fd: FD
      switch perform(.kvmCreateVM(type: vm.type)) {
      case .success(.fd(let created)): fd = created
      case .success: throw ConfigurationError("VM \(vm.name) cannot be created: KVM_CREATE_VM returned no fd", subject: .vm(v))
      case .failure(let failure): throw refused("KVM_CREATE_VM", failure)
      }
      if case .failure(let failure) = perform(.kvmCreateVCPU(vm: fd, id: 0)) { throw refused("KVM_CREATE_VCPU 0", failure) }
      configuredVMs[vm.name] = fd
    }
    _ = trace.drain()
  }

  /// Turns tracing on or off everywhere (the machine's trace and the TDX module's): off, no
  /// event is built. The explorer runs millions of steps with it off.
  public mutating func setTracing(_ enabled: Bool) {
    trace.isEnabled = enabled
    kvm.tdx.trace.isEnabled = enabled
  }

  /// The fd of a VM the configuration created, by its name (`td0`); `nil` for no such VM.
  public func vmFD(named name: String) -> FD? { configuredVMs[name] }

  /// Performs one operation on a thread of the ioctl context, stepped alone until it finishes.
  public mutating func perform(_ op: Operation) -> OpResult {
    var contention = Contention()
    return perform(op, context: .ioctl, contention: &contention)
  }

  /// Performs one operation on a thread of `context`, with no contention chosen.
  public mutating func perform(_ op: Operation, context: ContextID) -> OpResult {
    var contention = Contention()
    return perform(op, context: context, contention: &contention)
  }

  /// Performs one operation on a thread of `context`, stepped alone until it finishes:
  /// `run`, the explorer and the fuzzer all go through ``step(_:choices:)``, and this is the
  /// one-thread schedule. vCPUs that a kick waits for answer it between the thread's steps.
  ///
  /// A fault that retries forever (the posted `rfc-v1` map path turns every failed
  /// `TDH.MMIO.MAP` into `-EBUSY`) is found, not capped: the thread comes back to a state it
  /// was already in, so it would loop for ever; the result is ``OpFailure/livelock(_:)``.
  public mutating func perform(_ op: Operation, context: ContextID, contention: inout Contention) -> OpResult {
    var thread = startThread(op, context: context)
    var lastRetry: (machine: Machine, thread: KernelThread, contention: Contention)?
    var retries = 0
    while true {
      switch step(&thread, choices: &contention) {
      case .finished(let result):
        canonicalize()
        if case .failure(let failure) = result {
          trace.emit(.platformError, "-> \(failure)" + (failure.reason.map { " (\($0))" } ?? ""), failure.traceFields)
        }
        return result
      case .ran:
        // At each retry the thread is back at the start of its access: if the machine, the
        // thread and the contention still to come equal what they were at the previous retry,
        // nothing can ever change.
        if thread.retries != retries {
          retries = thread.retries
          var now = (machine: self, thread: thread, contention: contention)
          now.machine.canonicalize(&now.thread)
          if let last = lastRetry, last.machine == now.machine, last.thread == now.thread, last.contention == now.contention {
            let failure = OpFailure.livelock("\(thread.name): \(op.name) retries for ever (\(retries) retries, each back in the same state)")
            trace.emit(.platformError, "-> \(failure)", failure.traceFields)
            return .failure(failure)
          }
          lastRetry = now
        }
      case .blocked(let wait):
        // Alone, a thread can only wait for vCPUs to answer a kick; anything else is a lock
        // that no thread will ever release.
        let answered: Bool
        do { answered = try answerPendingKicks(except: thread.vcpu) } catch {
          return .failure(.lockViolation(error))
        }
        guard answered else {
          let failure = OpFailure.deadlock("\(thread.name): \(op.name) waits for \(wait), which nothing will release")
          trace.emit(.platformError, "-> \(failure)", failure.traceFields)
          return .failure(failure)
        }
      }
    }
  }

  /// Lets every vCPU with a pending kick, other than `except`, answer it.
  /// - Returns: whether any did.
  mutating func answerPendingKicks(except: VCPURef?) throws(LockViolation) -> Bool {
    let pending = kickResponders().filter { $0 != except }
    for vcpu in pending { try answerKick(vcpu) }
    return !pending.isEmpty
  }
}

extension Machine {
  /// The VFIO device named `name` in the configuration, as the kernel function `function`
  /// looks it up. - Throws: `ENODEV` for no such device.
  func device(named name: String, by function: StaticString) throws(Errno) -> VFIODeviceID {
    guard let id = deviceNames[name] else { throw Errno.ENODEV.because(function, "no device named \(name) in the machine") }
    return id
  }

  /// ``device(named:by:)`` for paths that report TDISP and TDX failures too.
  func pciDevice(named name: String, by function: StaticString) throws(OpFailure) -> VFIODeviceID {
    try errno { () throws(Errno) in try device(named: name, by: function) }
  }

  /// How an operation reaches the file behind an fd, which decides what a file of the wrong
  /// kind answers.
  enum FileUse: Equatable {
    /// An ioctl: the wrong file's `unlocked_ioctl` has no such command (its `default:` case),
    /// `ENOTTY`.
    case ioctl
    /// `pread`/`pwrite` (a region access, a config write): `ESPIPE` on a file of another kind,
    /// since the model's other files (dma-buf, KVM VM, guest_memfd) are anonymous-inode files
    /// without `FMODE_PREAD`/`FMODE_PWRITE` (`ksys_pread64()`/`ksys_pwrite64()`).
    case positional(write: Bool)
    /// `mmap`: the other file's own `mmap`, or `ENODEV` from `do_mmap()` when it has none.
    case mmap
    /// A kernel lookup that checks the file's ops (an fd passed as an ioctl argument): `EINVAL`.
    case other
  }

  /// What an ioctl meant for `expected` answers on `file`, a file of another kind: the
  /// actual file's ioctl handler runs, and it has no such command.
  /// - VFIO device cdev (`vfio_device_fops_unl_ioctl()`): not bound yet, `!df->access_granted`
  ///   -> `EINVAL` before the command is looked at; bound, the command reaches
  ///   `vfio_pci_core_ioctl()`, whose `default:` is `-ENOTTY`.
  /// - dma-buf: `dma_buf_ioctl()`'s `default:` -> `ENOTTY`.
  /// - KVM VM: `kvm_vm_ioctl()` -> `kvm_arch_vm_ioctl()`'s `default:` -> `ENOTTY`.
  /// - guest_memfd: `kvm_gmem_fops` has no `unlocked_ioctl`, so `vfs_ioctl()` -> `ENOTTY`.
  func wrongFileIoctl(_ file: OpenFile, fd: FD, expected: String) -> Errno {
    switch file {
    case .vfioDevice(let id):
      guard vfio.file(id)?.accessGranted == true else {
        return Errno.EINVAL.because("vfio_device_fops_unl_ioctl", "!df->access_granted: \(fd) is a VFIO device file not bound yet (the ioctl was for \(expected))")
      }
      return Errno.ENOTTY.because("vfio_pci_core_ioctl", "\(fd) is a VFIO device, not \(expected): no such ioctl")
    case .dmaBuf:
      return Errno.ENOTTY.because("dma_buf_ioctl", "\(fd) is a dma-buf, not \(expected): no such ioctl")
    case .vm:
      return Errno.ENOTTY.because("kvm_vm_ioctl", "\(fd) is a KVM VM, not \(expected): no such ioctl (kvm_arch_vm_ioctl)")
    case .guestMemfd:
      return Errno.ENOTTY.because("vfs_ioctl", "\(fd) is a guest_memfd, not \(expected): kvm_gmem_fops has no unlocked_ioctl")
    }
  }

  /// The VFIO device file behind `fd`, looked up by the syscall `use` enters through
  /// (``entry(_:)``); a file of another kind answers as that file's own handler does.
  func vfioFile(_ fd: FD, _ use: FileUse = .ioctl) throws(Errno) -> VFIOFileID {
    let file = try files.lookup(fd, by: Self.entry(use))
    guard case .vfioDevice(let id) = file else {
      switch use {
      case .ioctl: throw wrongFileIoctl(file, fd: fd, expected: "a VFIO device")
      case .positional(let write):
        throw Errno.ESPIPE.because(write ? "ksys_pwrite64" : "ksys_pread64",
                                   "\(fd) is \(file.kindName), an anonymous-inode file without FMODE_\(write ? "PWRITE" : "PREAD")")
      case .mmap: throw wrongFileMmap(file, fd: fd)
      case .other: throw Errno.EINVAL.because("vfio_device_fops", "\(fd) is \(file.kindName), not a VFIO device file")
      }
    }
    return id
  }

  /// An mmap of a VFIO region on a file of another kind runs that file's `mmap` (checked on
  /// Linux 6.18: a VM fd and a guest_memfd without `GUEST_MEMFD_FLAG_MMAP` answer `ENODEV`).
  /// - KVM VM: `kvm_vm_fops` has no `mmap`: `do_mmap()` -> `ENODEV`.
  /// - guest_memfd: `kvm_gmem_mmap()` -> `ENODEV` without `GUEST_MEMFD_FLAG_MMAP` (with it the
  ///   mmap succeeds; the caller answers that before looking for a VFIO file).
  /// - dma-buf: `dma_buf_mmap_internal()` -> `EINVAL`, VFIO's dma-buf ops having no `mmap`.
  func wrongFileMmap(_ file: OpenFile, fd: FD) -> Errno {
    switch file {
    case .vfioDevice: Errno.EINVAL.because("vfio_device_fops_mmap", "\(fd) is a VFIO device file")
    case .vm: Errno.ENODEV.because("do_mmap", "\(fd) is a KVM VM: kvm_vm_fops has no mmap")
    case .guestMemfd: Errno.ENODEV.because("kvm_gmem_mmap", "\(fd) is a guest_memfd created without GUEST_MEMFD_FLAG_MMAP")
    case .dmaBuf: Errno.EINVAL.because("dma_buf_mmap_internal", "\(fd) is a dma-buf whose exporter (vfio_pci_dmabuf_ops) has no mmap")
    }
  }

  /// The dma-buf behind `fd`, as `dma_buf_get()` finds it (`fget()`, then `is_dma_buf_file()`).
  func dmaBuf(_ fd: FD) throws(Errno) -> DmaBufID {
    guard case .dmaBuf(let id) = try files.lookup(fd, by: "dma_buf_get") else {
      throw Errno.EINVAL.because("dma_buf_get", "\(fd) is not a dma-buf (is_dma_buf_file() fails)")
    }
    return id
  }

  /// The KVM VM behind `fd`, looked up by `function` (by default the syscall `use` enters
  /// through, ``entry(_:)``).
  func vm(_ fd: FD, _ use: FileUse = .ioctl, lookedUpBy function: StaticString? = nil) throws(Errno) -> VMID {
    let file = try files.lookup(fd, by: function ?? Self.entry(use))
    guard case .vm(let id) = file else {
      throw use == .ioctl ? wrongFileIoctl(file, fd: fd, expected: "a KVM VM")
        : Errno.EINVAL.because("kvm_get_kvm_safe", "\(fd) is not a KVM VM file")
    }
    return id
  }

  /// Whether `op` is an ioctl on a VM that is already dead (closing its fd is not).
  func targetsDeadVM(_ op: Operation) -> Bool {
    let fd: FD
    switch op {
    case .kvmCreateVCPU(let vm, _), .kvmSetUserMemoryRegion2(let vm, _), .guestRead(let vm, _, _, _),
         .guestWrite(let vm, _, _, _, _), .guestAcceptMMIO(let vm, _, _, _), .tdxDevifCreate(let vm, _),
         .kvmSetUserMemoryRegion(let vm, _), .kvmCreateGuestMemfd(let vm, _, _),
         .kvmSetMemoryAttributes(let vm, _, _, _, _), .kvmCheckExtension(let vm?, _):
      fd = vm
    default:
      return false
    }
    guard case .vm(let id)? = files[fd] else { return false }
    return kvm.vms[id]?.isDead == true
  }

  /// The locks `context` holds anywhere in the machine, by name.
  public func locksHeld(by context: ContextID) -> [String] {
    var held: [String] = []
    for device in vfio.devices.values {
      let lock = device.memoryLock
      if lock.writer == context || lock.readers.contains(context) { held.append(lock.name) }
    }
    for buffer in dmabufCore.buffers.values where buffer.resv.holder == context { held.append(buffer.resv.name) }
    for vm in kvm.vms.values {
      if vm.mmuLock.writer == context || vm.mmuLock.readers.contains(context) { held.append("vm\(vm.id.rawValue) \(vm.mmuLock.name)") }
      if vm.slotsLock.holder == context { held.append("vm\(vm.id.rawValue) \(vm.slotsLock.name)") }
      if vm.srcu.isReading(context) { held.append("vm\(vm.id.rawValue) kvm->srcu (read)") }
    }
    return held
  }

  /// A free fd must exist before an operation commits anything it would hand out as an fd.
  func requireFreeFD() throws(Errno) {
    var probe = files
    _ = try probe.install(.vm(VMID(0)))
  }
}

extension Machine {
  /// The machine's parts before the VMs', each a stored property hashed on its own: the fd
  /// table, VFIO's devices, files and buffers, the dma-buf core's buffers and attachments,
  /// KVM's TDs, the TDX module's TDs, DEVIFs, metadata table and table pages, and the leaked
  /// attachments. What no operation changes (the variant, device and VM names, the host) and
  /// what is history (traces, `Observed`) are left out, which `==` still compares.
  static let partTable = PartTable<Machine>([
    .part(\.files), .part(\.vfio.devices), .part(\.vfio.files), .part(\.vfio.dmabufs), .part(\.dmabufCore.buffers),
    .part(\.dmabufCore.attachments), .part(\.kvm.tds), .part(\.kvm.tdx.tds), .part(\.kvm.tdx.devifs),
    .part(\.kvm.tdx.mmiomt), .part(\.kvm.tdx.mmiomtPages), .part(\.kvm.leaked),
  ])

  /// Appends the hash of each part of the machine at `machine` to `out`: the parts of
  /// ``partTable``, then each VM's fields in VM order
  /// (``VirtualMachine/appendPartHashes(to:previous:previousHashes:)``). Equal machines append
  /// equal lists.
  ///
  /// A part the machine at `previous` holds bitwise identically takes its hash from
  /// `previousHashes` (what this call appended for `previous`): after one step from
  /// `previous`, only what the step changed is hashed. Both machines are read in place.
  public static func appendPartHashes(of machine: UnsafePointer<Machine>, previous: UnsafePointer<Machine>?,
                                      previousHashes: ArraySlice<Int>?, to out: inout [Int]) {
    let old = previous == nil ? nil : previousHashes
    partTable.append(to: &out, UnsafeRawPointer(machine), previous: previous.map { UnsafeRawPointer($0) }, previousHashes: old)
    // The VMs in id order; each reuses the hashes of the VM of its id in `previous` when both
    // machines have the same VMs (so the lists line up).
    let vms = machine.pointee.kvm.vms
    let earlier = previous.flatMap { $0.pointee.kvm.vms.keys == vms.keys ? $0.pointee.kvm.vms : nil }
    var k = (old?.startIndex ?? 0) + partTable.parts.count
    for (i, vm) in vms.values.enumerated() {
      let hashes = old.flatMap { earlier != nil && k + VirtualMachine.partCount <= $0.endIndex ? $0[k ..< k + VirtualMachine.partCount] : nil }
      vm.appendPartHashes(to: &out, previous: earlier?.values[i], previousHashes: hashes)
      k += VirtualMachine.partCount
    }
  }
}
