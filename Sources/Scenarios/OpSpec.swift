import KernelCore
import DmaBuf
import KVM
import Platform

// The one table of scenario ops. The parser, the run-time builder and the README's op reference
// are all generated from `OpSpec.all`, so documentation and parser cannot drift apart.

/// What a key of an op accepts.
public enum ArgumentKind: Hashable, Sendable {
  /// A device name from `machine.devices`.
  case device
  /// An fd: a name bound by `as:`, a VM name from `machine.vms`, or a literal integer
  /// (so a scenario can probe EBADF with `fd: 99`).
  case fd
  /// A VM fd: as ``fd``.
  case vm
  /// A dma-buf attachment: a name bound by `dmabuf.attach … as:`, or a literal integer.
  case attachment
  case u32
  case u64
  case bool
  /// One of a fixed set of words.
  case choice([String])
  case string
  /// `[[offset, length], …]`.
  case ranges
  /// `struct kvm_userspace_memory_region2.flags`: a list of flag names or an integer.
  case memoryFlags
  /// A list of numbers.
  case numbers
  /// `as:`: a new name for what the step returns.
  case binding

  /// How the reference table shows the kind.
  public var summary: String {
    switch self {
    case .device: "device"
    case .fd: "fd"
    case .vm: "vm"
    case .attachment: "attachment"
    case .u32: "u32"
    case .u64: "u64"
    case .bool: "bool"
    case .choice(let words): words.joined(separator: "|")
    case .string: "string"
    case .ranges: "[[offset, length]...]"
    case .memoryFlags: "[" + MemoryFlag.allCases.map(\.rawValue).joined(separator: "|") + "] or integer"
    case .numbers: "[u64...]"
    case .binding: "name"
    }
  }
}

/// A parsed argument value.
public enum ArgumentValue: Hashable, Sendable {
  case number(UInt64)
  case bool(Bool)
  case string(String)
  case handle(HandleRef)
  case ranges([DmaRange])
  case numbers([UInt64])
}

/// An fd, VM or attachment as a scenario names it.
public enum HandleRef: Hashable, Sendable, CustomStringConvertible {
  /// A literal number, used as is (negative allowed: `fd: -1`).
  case literal(Int64)
  /// A name bound by `as:` or a VM name from `machine.vms`.
  case name(String)
  public var description: String {
    switch self {
    case .literal(let n): "\(n)"
    case .name(let s): s
    }
  }
}

/// A step's arguments by key, defaults filled in. Optional keys without default are absent.
public typealias StepArguments = [String: ArgumentValue]

/// `KVM_MEM_*` flags of `struct kvm_userspace_memory_region2` by scenario name, with their uAPI
/// bit (`include/uapi/linux/kvm.h`; `KVM_MEM_VFIO_DMABUF` is the RFC's patch 6).
public enum MemoryFlag: String, CaseIterable, Sendable {
  case logDirtyPages = "log_dirty_pages"
  case readonly
  case guestMemfd = "guest_memfd"
  case vfioDmabuf = "vfio_dmabuf"

  public var bit: UInt32 {
    switch self {
    case .logDirtyPages: 1 << 0
    case .readonly: 1 << 1
    case .guestMemfd: 1 << 2
    case .vfioDmabuf: 1 << 3
    }
  }
}

/// Whether a key must be given, and what it is when it is not.
public enum KeyRequirement: Hashable, Sendable {
  case required
  /// Filled in when absent; `shown` is how the reference table spells it.
  case defaulted(ArgumentValue, shown: String)
  /// Absent stays absent (for instance `pci.write_command`'s bits: absent leaves a bit as it is).
  case optional
}

/// One key of an op.
public struct KeySpec: Hashable, Sendable {
  public let name: String
  public let kind: ArgumentKind
  public let requirement: KeyRequirement
  init(_ name: String, _ kind: ArgumentKind, _ requirement: KeyRequirement = .required) {
    self.name = name; self.kind = kind; self.requirement = requirement
  }
}

/// What `as:` binds: the fd an op returns, or the attachment.
public enum BindingKind: String, Hashable, Sendable { case fd, attachment }

/// One scenario op: its name, keys, what it mirrors upstream, and how it becomes an ``Operation``.
public struct OpSpec: Sendable {
  public let name: String
  /// The syscall, ioctl, kernel function or SEAMCALL the op performs.
  public let mirrors: String
  public let keys: [KeySpec]
  public let binds: BindingKind?
  let build: @Sendable (ResolvedArguments) -> Operation
  /// A rule between keys that each key's own kind cannot state: the key at fault and why.
  let check: (@Sendable (StepArguments) -> (key: String, problem: String)?)?

  init(_ name: String, _ mirrors: String, _ keys: [KeySpec], binds: BindingKind? = nil,
       check: (@Sendable (StepArguments) -> (key: String, problem: String)?)? = nil,
       _ build: @escaping @Sendable (ResolvedArguments) -> Operation) {
    // `as:` is a key like the others, so unknown-key checks and the table see it.
    self.name = name; self.mirrors = mirrors; self.binds = binds
    self.keys = binds == nil ? keys : keys + [KeySpec("as", .binding, .optional)]
    self.check = check
    self.build = build
  }

  /// What is wrong between the keys of a step's arguments (defaults filled in), if anything.
  public func problem(in arguments: StepArguments) -> (key: String, problem: String)? { check?(arguments) }

  public func key(_ name: String) -> KeySpec? { keys.first { $0.name == name } }

  public static func named(_ name: String) -> OpSpec? { byName[name] }
  static let byName: [String: OpSpec] = Dictionary(all.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
}

// Defaults shared by several ops.
private let zero = KeyRequirement.defaulted(.number(0), shown: "0")
private let fourBytes = KeyRequirement.defaulted(.number(4), shown: "4")
private let isFalse = KeyRequirement.defaulted(.bool(false), shown: "false")
private let isTrue = KeyRequirement.defaulted(.bool(true), shown: "true")
/// `O_RDWR | O_CLOEXEC`, what a VMM passes as the dma-buf's `open_flags`.
private let dmaBufOpenFlags: UInt64 = 0x2 | 0x80000
private let noFD = KeyRequirement.defaulted(.handle(.literal(-1)), shown: "-1")
/// A write's `value` must fit in its `size` bytes: a store of 4 bytes has no fifth to put it in.
@Sendable private func valueFitsSize(_ arguments: StepArguments) -> (key: String, problem: String)? {
  guard case .number(let value)? = arguments["value"], case .number(let size)? = arguments["size"],
        size < 8, value >> (size * 8) != 0 else { return nil }
  return ("value", "value 0x\(String(value, radix: 16)) does not fit in \(size) byte\(size == 1 ? "" : "s") (size: \(size))")
}

extension OpSpec {
  /// Every op, in the order the reference shows them.
  public static let all: [OpSpec] = [
    OpSpec("vfio.open", "open(\"/dev/vfio/devices/vfioN\")", [KeySpec("device", .device)], binds: .fd) {
      .vfioOpen(device: $0.string("device"))
    },
    OpSpec("vfio.bind_iommufd", "VFIO_DEVICE_BIND_IOMMUFD (private: the RFC's VFIO_DEVICE_BIND_IOMMUFD_PRIVATE)",
           [KeySpec("fd", .fd), KeySpec("private", .bool, isFalse), KeySpec("vm", .vm, .optional)]) {
      .vfioBindIOMMUFD(fd: $0.fd("fd"), private: $0.bool("private"), vm: $0.optionalFD("vm"))
    },
    OpSpec("vfio.close", "close() of a VFIO device fd", [KeySpec("fd", .fd)]) {
      .vfioClose(fd: $0.fd("fd"))
    },
    OpSpec("vfio.region_info", "VFIO_DEVICE_GET_REGION_INFO", [KeySpec("fd", .fd), KeySpec("region_index", .u32)]) {
      .vfioRegionInfo(fd: $0.fd("fd"), regionIndex: $0.u32("region_index"))
    },
    OpSpec("vfio.read", "pread() of a region through the device fd (config space, region 7: the command register at 4, other bytes 0)",
           [KeySpec("fd", .fd), KeySpec("region_index", .u32), KeySpec("offset", .u64, zero), KeySpec("size", .u64, fourBytes)]) {
      .vfioRead(fd: $0.fd("fd"), regionIndex: $0.u32("region_index"), offset: $0.u64("offset"), size: $0.u64("size"))
    },
    OpSpec("vfio.write", "pwrite() of a region through the device fd (value: 0xa5 bytes when absent); a config write reaching PCI_COMMAND revokes or restores as its memory bit says, like vfio.set_memory_decode",
           [KeySpec("fd", .fd), KeySpec("region_index", .u32), KeySpec("offset", .u64, zero), KeySpec("size", .u64, fourBytes),
            KeySpec("value", .u64, .optional)], check: valueFitsSize) {
      .vfioWrite(fd: $0.fd("fd"), regionIndex: $0.u32("region_index"), offset: $0.u64("offset"), size: $0.u64("size"),
                 value: $0.storedValue())
    },
    OpSpec("vfio.mmap", "mmap() of a region through the device fd", [KeySpec("fd", .fd), KeySpec("region_index", .u32)]) {
      .vfioMmap(fd: $0.fd("fd"), regionIndex: $0.u32("region_index"))
    },
    OpSpec("vfio.set_memory_decode", "config write of PCI_COMMAND.MEMORY", [KeySpec("fd", .fd), KeySpec("enable", .bool)]) {
      .vfioSetMemoryDecode(fd: $0.fd("fd"), enable: $0.bool("enable"))
    },
    OpSpec("vfio.reset", "VFIO_DEVICE_RESET", [KeySpec("fd", .fd)]) { .vfioReset(fd: $0.fd("fd")) },
    OpSpec("vfio.flr", "config write of PCI_EXP_DEVCTL_BCR_FLR (FLR from config space)", [KeySpec("fd", .fd)]) {
      .vfioFLR(fd: $0.fd("fd"))
    },
    OpSpec("vfio.hot_reset", "VFIO_DEVICE_PCI_HOT_RESET", [KeySpec("fd", .fd)]) { .vfioHotReset(fd: $0.fd("fd")) },
    OpSpec("vfio.set_power", "config write of PMCSR power state",
           [KeySpec("fd", .fd), KeySpec("state", .choice(PowerStateName.allCases.map(\.rawValue)))]) {
      .vfioSetPower(fd: $0.fd("fd"), state: PowerStateName(rawValue: $0.string("state")) ?? .d0)
    },
    OpSpec("vfio.dma_buf", "VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF",
           [KeySpec("fd", .fd), KeySpec("region_index", .u32, zero), KeySpec("ranges", .ranges),
            KeySpec("open_flags", .u32, .defaulted(.number(dmaBufOpenFlags), shown: "0x80002 (O_RDWR|O_CLOEXEC)")),
            KeySpec("flags", .u32, zero)], binds: .fd) {
      .vfioDmaBuf(fd: $0.fd("fd"), regionIndex: $0.u32("region_index"), ranges: $0.ranges("ranges"),
                  openFlags: $0.u32("open_flags"), flags: $0.u32("flags"))
    },
    OpSpec("dmabuf.attach", "dma_buf_dynamic_attach() (dma_buf_attach() when not dynamic)",
           [KeySpec("fd", .fd), KeySpec("importer", .string, .defaulted(.string("test"), shown: "test")),
            KeySpec("dynamic", .bool, isTrue), KeySpec("peer2peer", .bool, isTrue)], binds: .attachment) {
      .dmabufAttach(fd: $0.fd("fd"), importer: $0.string("importer"), dynamic: $0.bool("dynamic"),
                    peer2peer: $0.bool("peer2peer"))
    },
    OpSpec("dmabuf.detach", "dma_buf_detach()", [KeySpec("attachment", .attachment)]) {
      .dmabufDetach(attachment: $0.attachment("attachment"))
    },
    OpSpec("dmabuf.pin", "dma_buf_pin()", [KeySpec("attachment", .attachment)]) {
      .dmabufPin(attachment: $0.attachment("attachment"))
    },
    OpSpec("dmabuf.get_pfn", "dma_buf_get_pfn_unlocked() (RFC patch 1)",
           [KeySpec("attachment", .attachment), KeySpec("pgoff", .u64, zero)]) {
      .dmabufGetPfn(attachment: $0.attachment("attachment"), pgoff: PageIndex($0.u64("pgoff")))
    },
    OpSpec("dmabuf.close", "close() of a dma-buf fd", [KeySpec("fd", .fd)]) { .dmabufClose(fd: $0.fd("fd")) },
    OpSpec("tdisp.lock", "TDISP LOCK_INTERFACE_REQUEST (0x83)", [KeySpec("device", .device)]) {
      .tdispLock(device: $0.string("device"))
    },
    OpSpec("tdisp.start", "TDISP START_INTERFACE_REQUEST (0x86)",
           [KeySpec("device", .device),
            KeySpec("nonce", .choice(NonceChoice.allCases.map(\.rawValue)), .defaulted(.string("echo"), shown: "echo"))]) {
      .tdispStart(device: $0.string("device"), nonce: NonceChoice(rawValue: $0.string("nonce")) ?? .echo)
    },
    OpSpec("tdisp.stop", "TDISP STOP_INTERFACE_REQUEST (0x87)", [KeySpec("device", .device)]) {
      .tdispStop(device: $0.string("device"))
    },
    OpSpec("tdisp.report", "TDISP GET_DEVICE_INTERFACE_REPORT (0x84)", [KeySpec("device", .device)]) {
      .tdispReport(device: $0.string("device"))
    },
    OpSpec("pci.flr", "function-level reset from outside VFIO (sysfs reset)", [KeySpec("device", .device)]) {
      .pciFLR(device: $0.string("device"))
    },
    OpSpec("pci.write_command", "write of PCI_COMMAND (absent bit: unchanged)",
           [KeySpec("device", .device), KeySpec("memory", .bool, .optional), KeySpec("bus_master", .bool, .optional)]) {
      .pciWriteCommand(device: $0.string("device"), memory: $0.optionalBool("memory"),
                       busMaster: $0.optionalBool("bus_master"))
    },
    OpSpec("kvm.create_vm", "KVM_CREATE_VM",
           [KeySpec("type", .choice(VMTypeName.allCases.map(\.rawValue)), .defaulted(.string("default"), shown: "default"))],
           binds: .fd) {
      .kvmCreateVM(type: VMTypeName(rawValue: $0.string("type")) ?? .default)
    },
    OpSpec("kvm.create_vcpu", "KVM_CREATE_VCPU", [KeySpec("vm", .vm), KeySpec("id", .u32, zero)]) {
      .kvmCreateVCPU(vm: $0.fd("vm"), id: $0.u32("id"))
    },
    OpSpec("kvm.check_extension", "KVM_CHECK_EXTENSION on the VM, or on /dev/kvm without vm (the value: expect { value: N })",
           [KeySpec("vm", .vm, .optional), KeySpec("cap", .choice(KVMCapabilityNumber.allCases.map(\.scenarioName)))]) {
      .kvmCheckExtension(vm: $0.optionalFD("vm"),
                         capability: KVMCapabilityNumber.allCases.first { [name = $0.string("cap")] in $0.scenarioName == name }?.rawValue ?? 0)
    },
    OpSpec("kvm.create_guest_memfd", "KVM_CREATE_GUEST_MEMFD (flags: GUEST_MEMFD_FLAG_MMAP 0x1, GUEST_MEMFD_FLAG_INIT_SHARED 0x2)",
           [KeySpec("vm", .vm), KeySpec("size", .u64), KeySpec("flags", .u64, zero)], binds: .fd) {
      .kvmCreateGuestMemfd(vm: $0.fd("vm"), size: $0.u64("size"), flags: $0.u64("flags"))
    },
    OpSpec("kvm.set_memory_attributes", "KVM_SET_MEMORY_ATTRIBUTES (private: KVM_MEMORY_ATTRIBUTE_PRIVATE, shared: 0)",
           [KeySpec("vm", .vm), KeySpec("address", .u64), KeySpec("size", .u64),
            KeySpec("attributes", .choice(["private", "shared"]), .defaulted(.string("private"), shown: "private")),
            KeySpec("flags", .u64, zero)]) {
      .kvmSetMemoryAttributes(vm: $0.fd("vm"), address: $0.u64("address"), size: $0.u64("size"),
                              attributes: $0.string("attributes") == "shared" ? 0 : MemoryAttributes.private.rawValue,
                              flags: $0.u64("flags"))
    },
    OpSpec("kvm.set_user_memory_region", "KVM_SET_USER_MEMORY_REGION (the old ioctl: no guest_memfd fields)",
           [KeySpec("vm", .vm), KeySpec("slot", .u32), KeySpec("flags", .memoryFlags, zero),
            KeySpec("guest_phys_addr", .u64), KeySpec("memory_size", .u64), KeySpec("userspace_addr", .u64, zero)]) {
      .kvmSetUserMemoryRegion(vm: $0.fd("vm"), region: MemoryRegion2(
        slot: $0.u32("slot"), flags: $0.u32("flags"), guestPhysAddr: $0.u64("guest_phys_addr"),
        memorySize: $0.u64("memory_size"), userspaceAddr: $0.u64("userspace_addr")))
    },
    OpSpec("kvm.set_user_memory_region2", "KVM_SET_USER_MEMORY_REGION2",
           [KeySpec("vm", .vm), KeySpec("slot", .u32), KeySpec("flags", .memoryFlags, zero),
            KeySpec("guest_phys_addr", .u64), KeySpec("memory_size", .u64), KeySpec("userspace_addr", .u64, zero),
            KeySpec("guest_memfd_offset", .u64, zero), KeySpec("fd", .fd, noFD)]) {
      .kvmSetUserMemoryRegion2(vm: $0.fd("vm"), region: MemoryRegion2(
        slot: $0.u32("slot"), flags: $0.u32("flags"), guestPhysAddr: $0.u64("guest_phys_addr"),
        memorySize: $0.u64("memory_size"), userspaceAddr: $0.u64("userspace_addr"),
        guestMemfdOffset: $0.u64("guest_memfd_offset"), guestMemfd: $0.fd("fd").rawValue))
    },
    OpSpec("kvm.destroy_vm", "close() of the last VM fd (kvm_destroy_vm)", [KeySpec("vm", .vm)]) {
      .kvmDestroyVM(vm: $0.fd("vm"))
    },
    OpSpec("guest.read", "a vCPU load: exit, fault path, completion",
           [KeySpec("vm", .vm), KeySpec("gpa", .u64), KeySpec("size", .u64, fourBytes), KeySpec("vcpu", .u32, zero)]) {
      .guestRead(vm: $0.fd("vm"), gpa: GPA($0.u64("gpa")), size: $0.u64("size"), vcpu: $0.u32("vcpu"))
    },
    OpSpec("guest.write", "a vCPU store (value: 0xa5 bytes when absent): exit, fault path, completion",
           [KeySpec("vm", .vm), KeySpec("gpa", .u64), KeySpec("size", .u64, fourBytes), KeySpec("vcpu", .u32, zero),
            KeySpec("value", .u64, .optional)], check: valueFitsSize) {
      .guestWrite(vm: $0.fd("vm"), gpa: GPA($0.u64("gpa")), size: $0.u64("size"), vcpu: $0.u32("vcpu"),
                  value: $0.storedValue())
    },
    OpSpec("tdx.devif_create", "TDH.DEVIF.CREATE (137)", [KeySpec("vm", .vm), KeySpec("device", .device)]) {
      .tdxDevifCreate(vm: $0.fd("vm"), device: $0.string("device"))
    },
    OpSpec("tdx.devif_remove", "TDH.DEVIF.REMOVE (138)", [KeySpec("vm", .vm), KeySpec("device", .device)]) {
      .tdxDevifRemove(vm: $0.fd("vm"), device: $0.string("device"))
    },
    OpSpec("tdx.mmio_mt_add", "TDH.MMIO.MT.ADD (154) for the device's private ranges", [KeySpec("device", .device)]) {
      .tdxMMIOMTAdd(device: $0.string("device"))
    },
    OpSpec("tdx.stream_block", "block the device's IDE stream", [KeySpec("device", .device)]) {
      .tdxStreamBlock(device: $0.string("device"))
    },
    OpSpec("guest.accept_mmio", "TDG.MMIO.ACCEPT (71), after the EPT violation maps the page",
           [KeySpec("vm", .vm), KeySpec("gpa", .u64), KeySpec("expect_hpa", .u64, .optional), KeySpec("vcpu", .u32, zero)]) {
      .guestAcceptMMIO(vm: $0.fd("vm"), gpa: GPA($0.u64("gpa")), expectHPA: $0.optionalU64("expect_hpa").map(HPA.init),
                       vcpu: $0.u32("vcpu"))
    },
    OpSpec("tdx.seamcall", "a raw SEAMCALL: leaf number, then RCX, RDX, R8, ...",
           [KeySpec("leaf", .u64), KeySpec("args", .numbers, .defaulted(.numbers([]), shown: "[]"))]) {
      .tdxSeamcall(leaf: $0.u64("leaf"), args: $0.numbers("args"))
    },
  ]

  /// The op reference as a Markdown table (the README shows it): op, keys, what it mirrors.
  /// A key is `name` when required, `name=default` when defaulted, `name?` when optional.
  public static var referenceTable: String {
    var lines = ["| op | keys | mirrors |", "|---|---|---|"]
    for spec in all {
      let keys = spec.keys.map { key -> String in
        switch key.requirement {
        case .required: "`\(key.name)`: \(key.kind.summary)"
        case .defaulted(_, let shown): "`\(key.name)`: \(key.kind.summary) = \(shown)"
        case .optional: "`\(key.name)?`: \(key.kind.summary)"
        }
      }
      // A bar inside a cell (`D0|D3hot`, `O_RDWR|O_CLOEXEC`) would end the cell in Markdown.
      let cells = [keys.joined(separator: "; "), spec.mirrors].map { $0.replacingOccurrences(of: "|", with: "\\|") }
      lines.append("| `\(spec.name)` | \(cells[0]) | \(cells[1]) |")
    }
    return lines.joined(separator: "\n") + "\n"
  }
}

/// What earlier steps bound, and the fds of the machine's configured VMs.
public struct HandleEnvironment: Hashable, Sendable {
  public enum Bound: Hashable, Sendable {
    case fd(FD)
    case attachment(AttachmentID)
  }
  public var bindings: [String: Bound]
  /// `machine.vmFD(named:)` for each configured VM, looked up once: VMs do not change name.
  public var vmFDs: [String: FD]

  public init(bindings: [String: Bound] = [:], vmFDs: [String: FD] = [:]) {
    self.bindings = bindings; self.vmFDs = vmFDs
  }

  /// The fd a name stands for. A name whose binding step failed is -1, as an unchecked C
  /// variable would be after a failed `open`: the kernel then answers EBADF, as it would.
  public func fd(_ ref: HandleRef) -> FD {
    switch ref {
    case .literal(let n): return FD(Int32(clamping: n))
    case .name(let name):
      if case .fd(let fd)? = bindings[name] { return fd }
      return vmFDs[name] ?? FD(-1)
    }
  }

  /// The attachment a name stands for; an unbound one is an id no attachment ever has.
  public func attachment(_ ref: HandleRef) -> AttachmentID {
    switch ref {
    case .literal(let n): return AttachmentID(UInt32(truncatingIfNeeded: n))
    case .name(let name):
      if case .attachment(let id)? = bindings[name] { return id }
      return AttachmentID(UInt32.max)
    }
  }

  /// Records what a step with `as:` returned; a failed step or another kind binds nothing.
  public mutating func bind(_ name: String, to result: OpResult) {
    switch result {
    case .success(.fd(let fd)): bindings[name] = .fd(fd)
    case .success(.attachment(let id)): bindings[name] = .attachment(id)
    default: bindings[name] = nil
    }
  }
}

/// A step's arguments with names resolvable: what `OpSpec.build` reads.
public struct ResolvedArguments: Sendable {
  let values: StepArguments
  let handles: HandleEnvironment

  // Every key is validated and defaulted by the parser; the fallbacks below only serve steps
  // built by hand and keep them from trapping.
  func u64(_ key: String) -> UInt64 {
    if case .number(let n)? = values[key] { return n }
    return 0
  }
  func optionalU64(_ key: String) -> UInt64? {
    if case .number(let n)? = values[key] { return n }
    return nil
  }
  func u32(_ key: String) -> UInt32 { UInt32(truncatingIfNeeded: u64(key)) }
  /// A write's `value`, or without one ``Operation/writePattern`` cut to its `size` bytes.
  func storedValue() -> UInt64 {
    let size = u64("size")
    let value = optionalU64("value") ?? Operation.writePattern
    return size >= 8 ? value : value & ((1 << (size * 8)) - 1)
  }
  func bool(_ key: String) -> Bool { optionalBool(key) ?? false }
  func optionalBool(_ key: String) -> Bool? {
    if case .bool(let b)? = values[key] { return b }
    return nil
  }
  func string(_ key: String) -> String {
    if case .string(let s)? = values[key] { return s }
    return ""
  }
  func ranges(_ key: String) -> [DmaRange] {
    if case .ranges(let r)? = values[key] { return r }
    return []
  }
  func numbers(_ key: String) -> [UInt64] {
    if case .numbers(let n)? = values[key] { return n }
    return []
  }
  func fd(_ key: String) -> FD {
    if case .handle(let ref)? = values[key] { return handles.fd(ref) }
    return FD(-1)
  }
  func optionalFD(_ key: String) -> FD? {
    if case .handle(let ref)? = values[key] { return handles.fd(ref) }
    return nil
  }
  func attachment(_ key: String) -> AttachmentID {
    if case .handle(let ref)? = values[key] { return handles.attachment(ref) }
    return AttachmentID(UInt32.max)
  }
}
