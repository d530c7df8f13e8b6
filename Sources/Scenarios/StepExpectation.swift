import KernelCore
import KVM
import TDX
import Platform

/// What a step's `expect:` says its result must be.
public enum StepExpectation: Hashable, Sendable, CustomStringConvertible {
  /// `ok`: any success.
  case ok
  /// `error`: any failure the kernel returns (an errno, a TDX status, a TDISP error); not a
  /// livelock, a deadlock or a model bug.
  case error
  /// `livelock`: the step can never finish, a retry loop that comes back to the same state
  /// (the kernel would spin for ever), as the rfc-v1 fault does on a refused `TDH.MMIO.MAP`.
  case livelock
  /// `deadlock`: the step waits for something no thread will ever do.
  case deadlock
  /// `{ errno: EINVAL }`.
  case errno(Errno)
  /// `{ tdx: TDX_OPERAND_BUSY }`: compared without the operand field. `TDX_SUCCESS` is any success.
  case tdx(TDXStatus)
  /// `{ tdisp: INVALID_NONCE }`: the device's TDISP error code, by spec name.
  case tdisp(String)
  /// `{ pfn: N }` or `{ pfn: N, order: K }`.
  case pfn(UInt64, order: UInt8?)
  /// `{ state: RUN }`: the TDI state a TDISP request left.
  case state(String)
  /// `{ flags: [READ, WRITE, MMAP] }`: region info flags, exactly this set.
  case flags([String])
  /// `{ fault: mapped }`: how a guest access ended; `{ fault: mapped, value: N }` adds what
  /// the load read.
  case fault(GuestFault, value: UInt64? = nil)
  /// `{ value: N }`: what a read returned (`vfio.read`, or a guest load that completed).
  case value(UInt64)
  /// `{ memory_fault: { flags: [PRIVATE], gpa: N, size: N, errno: EFAULT } }`: `KVM_RUN`
  /// failed with `KVM_EXIT_MEMORY_FAULT`; each key given must match the exit.
  case memoryFault(MemoryFaultExpectation)

  public var description: String {
    switch self {
    case .ok: "ok"
    case .error: "error"
    case .livelock: "livelock"
    case .deadlock: "deadlock"
    case .errno(let e): "errno \(e.name)"
    case .tdx(let s): "tdx \(s.name)"
    case .tdisp(let name): "tdisp \(name)"
    case .pfn(let pfn, let order):
      "pfn 0x\(String(pfn, radix: 16))" + (order.map { " order \($0)" } ?? "")
    case .state(let s): "state \(s)"
    case .flags(let f): "flags [\(f.joined(separator: ", "))]"
    case .fault(let f, let value): "fault \(f.rawValue)" + (value.map { " value 0x\(String($0, radix: 16))" } ?? "")
    case .value(let v): "value 0x\(String(v, radix: 16))"
    case .memoryFault(let m): "\(m)"
    }
  }

  /// `nil` when `result` meets the expectation; otherwise why not.
  public func mismatch(_ result: OpResult) -> String? {
    if matches(result) { return nil }
    if let bug = Self.modelBug(result) { return bug }
    return "expected \(self), got \(ResultText.describe(result))"
  }

  /// A lock rule the model broke, in words: no expectation accepts it.
  static func modelBug(_ result: OpResult) -> String? {
    if case .failure(.lockViolation(let v)) = result { return "model bug: lock violation: \(v)" }
    return nil
  }

  public func matches(_ result: OpResult) -> Bool {
    switch (self, result) {
    case (.ok, .success): return true
    case (.error, .failure(.livelock)), (.error, .failure(.deadlock)), (.error, .failure(.lockViolation)): return false
    case (.error, .failure): return true
    case (.livelock, .failure(.livelock)), (.deadlock, .failure(.deadlock)): return true
    case (.errno(let want), .failure(let got)): return want == got.errno
    case (.tdx(let want), .success): return want.code == TDXStatus.success
    case (.tdx(let want), .failure(.tdx(let got))): return want.code == got.code
    case (.tdisp(let want), .failure(.tdisp(_, let got))): return want == got
    case (.pfn(let want, let order), .success(.pfn(let got, let gotOrder))):
      return want == got.rawValue && (order.map { $0 == gotOrder } ?? true)
    case (.state(let want), .success(.tdiState(let got))): return want == got
    case (.flags(let want), .success(.regionInfo(let got, _, _))):
      return Set(want.map(RegionInfoFlag.canonical)) == Set(got.map(RegionInfoFlag.canonical))
    case (.fault(let want, let value), _):
      guard want.matches(result) else { return false }
      guard let value else { return true }
      if case .success(.guestAccess(_, value: let got)) = result { return got == value }
      return false
    case (.value(let want), .success(.read(let got))): return want == got
    case (.value(let want), .success(.guestAccess(_, value: let got?))): return want == got
    case (.memoryFault(let want), .failure(.memoryFault(let got))): return want.matches(got)
    default: return false
    }
  }
}

extension StepExpectation {
  /// `expect:` keys every op takes: any success or failure, an errno, the machine's state
  /// (`state:` as a mapping).
  public static let universalKeys = ["ok", "error", "errno", "state"]

  /// The keys that name one kind of result, with the ops that can return it: a key on any
  /// other op could never match, so the parser refuses it. `state` as a word is the TDI state
  /// a TDISP request returns (as a mapping it is the machine's, and universal).
  static let resultKeys: [(key: String, ops: Set<String>)] = [
    ("value", ["vfio.read", "guest.read", "kvm.check_extension"]),
    ("fault", ["guest.read", "guest.write", "guest.accept_mmio"]),
    ("memory_fault", ["guest.read", "guest.write", "guest.accept_mmio"]),
    ("pfn", ["dmabuf.get_pfn"]),
    ("order", ["dmabuf.get_pfn"]),
    ("flags", ["vfio.region_info"]),
    ("state", ["tdisp.lock", "tdisp.start", "tdisp.stop"]),
    ("tdisp", ["tdisp.lock", "tdisp.start", "tdisp.stop", "tdisp.report", "tdx.mmio_mt_add"]),
    ("tdx", ["kvm.create_vm", "tdx.devif_create", "tdx.devif_remove", "tdx.mmio_mt_add", "tdx.stream_block",
             "tdx.seamcall", "guest.accept_mmio"]),
  ]

  /// The `expect:` keys that can apply to `op`, in the order the README lists them.
  public static func keys(for op: String) -> [String] {
    universalKeys + resultKeys.filter { $0.ops.contains(op) && !universalKeys.contains($0.key) }.map(\.key)
  }

  /// Whether `key` can apply to `op`; `state` as a word (`isWord`) only to a TDISP request.
  public static func applies(_ key: String, to op: String, isWord: Bool = true) -> Bool {
    if key == "state" && !isWord { return true }
    guard let entry = resultKeys.first(where: { $0.key == key }) else { return universalKeys.contains(key) }
    return entry.ops.contains(op)
  }
}

/// How a whole guest access ended: KVM's own outcome names (`OpValue.guestAccess`), or the
/// errno the vCPU run returned for `efault` and `eio`.
public typealias GuestFault = FaultOutcome

extension FaultOutcome {
  func matches(_ result: OpResult) -> Bool {
    switch (self, result) {
    case (.efault, .failure(let f)): f.errno == .EFAULT
    case (.eio, .failure(let f)): f.errno == .EIO
    case (_, .success(.guestAccess(let name, _))): name == rawValue
    default: false
    }
  }
}

/// What `expect: { memory_fault: ... }` requires of a `KVM_EXIT_MEMORY_FAULT`: each field given
/// must equal the exit's (`struct kvm_run`'s `memory_fault.flags`, `.gpa`, `.size`, and the
/// errno `KVM_RUN` returned).
public struct MemoryFaultExpectation: Hashable, Sendable, CustomStringConvertible {
  /// `KVM_MEMORY_EXIT_FLAG_*` by name (`PRIVATE`), exactly this set.
  public var flags: UInt64?
  public var gpa: UInt64?
  public var size: UInt64?
  public var errno: Errno?

  /// The flag names `include/uapi/linux/kvm.h` defines, with their bits.
  public static let flagNames: [(name: String, bit: UInt64)] = [("PRIVATE", MemoryFaultExit.flagPrivate)]

  public init(flags: UInt64? = nil, gpa: UInt64? = nil, size: UInt64? = nil, errno: Errno? = nil) {
    self.flags = flags; self.gpa = gpa; self.size = size; self.errno = errno
  }

  func matches(_ exit: MemoryFaultExit) -> Bool {
    (flags.map { $0 == exit.flags } ?? true) && (gpa.map { $0 == exit.gpa } ?? true)
      && (size.map { $0 == exit.size } ?? true) && (errno.map { $0 == exit.errno } ?? true)
  }

  /// Flag bits as names, unknown bits in hex.
  public static func names(_ flags: UInt64) -> [String] {
    var rest = flags
    var out: [String] = []
    for (name, bit) in flagNames where flags & bit != 0 {
      out.append(name)
      rest &= ~bit
    }
    if rest != 0 { out.append("0x" + String(rest, radix: 16)) }
    return out
  }

  public var description: String {
    var parts = ["memory_fault"]
    if let flags { parts.append("flags [\(Self.names(flags).joined(separator: ", "))]") }
    if let gpa { parts.append("gpa 0x\(String(gpa, radix: 16))") }
    if let size { parts.append("size 0x\(String(size, radix: 16))") }
    if let errno { parts.append("errno \(errno.name)") }
    return parts.joined(separator: " ")
  }
}

/// `VFIO_REGION_INFO_FLAG_*` names (`include/uapi/linux/vfio.h`; PRIVATE is the RFC's patch 8).
enum RegionInfoFlag {
  static let prefix = "VFIO_REGION_INFO_FLAG_"
  static let known = ["READ", "WRITE", "MMAP", "CAPS", "PRIVATE"]
  /// Scenarios may write `READ` or `VFIO_REGION_INFO_FLAG_READ`; both compare as `READ`.
  static func canonical(_ name: String) -> String {
    let upper = name.uppercased()
    return upper.hasPrefix(prefix) ? String(upper.dropFirst(prefix.count)) : upper
  }
}

/// TDISP error codes (PCIe TDISP, `TDISP_ERROR` response) by spec name.
public enum TDISPErrorName {
  public static let all: [(name: String, code: UInt16)] = [
    ("INVALID_REQUEST", 0x0001), ("BUSY", 0x0003), ("INVALID_INTERFACE_STATE", 0x0004),
    ("UNSPECIFIED", 0x0005), ("UNSUPPORTED_REQUEST", 0x0007), ("VERSION_MISMATCH", 0x0041),
    ("VENDOR_SPECIFIC_ERROR", 0x00FF), ("INVALID_INTERFACE", 0x0101), ("INVALID_NONCE", 0x0102),
    ("INSUFFICIENT_ENTROPY", 0x0103), ("INVALID_DEVICE_CONFIGURATION", 0x0104),
  ]
  public static func isKnown(_ name: String) -> Bool { all.contains { $0.name == name } }
}

/// TDISP TDI states (`CONFIG_UNLOCKED (0)` … `ERROR (3)`) as `OpValue.tdiState` names them.
public let tdiStateNames = ["CONFIG_UNLOCKED", "CONFIG_LOCKED", "RUN", "ERROR"]

/// How a result is printed in reports: `ok fd 3`, `errno EINVAL`, `tdx TDX_OPERAND_BUSY`.
public enum ResultText {
  public static func describe(_ result: OpResult) -> String { StepResult(result).text }
}
