import KernelCore
import TDX
import Platform

/// What an operation returned, one field per value, as the JSON report carries it: no field
/// packs two values into a string (`"ok fd 3"`). ``text`` is the one-line form people read.
public struct StepResult: Codable, Hashable, Sendable {
  /// The call succeeded.
  public var ok: Bool
  public var fd: Int32?
  public var attachment: UInt32?
  public var pfn: UInt64?
  public var order: UInt8?
  /// `struct vfio_region_info`: flags by uAPI name, size and offset.
  public var regionFlags: [String]?
  public var regionSize: UInt64?
  public var regionOffset: UInt64?
  /// What a read returned: `vfio.read`'s bytes, or what a guest load read (with `fault`).
  public var value: UInt64?
  /// The TDI's state after a TDISP request.
  public var tdiState: String?
  /// A device interface report, one line per MMIO range.
  public var report: [String]?
  /// How a guest access ended: `mapped`, `already_mapped`, `exit_mmio`, `killed`, `accepted` …
  public var fault: String?
  /// RCX, RDX, R8 … of a raw SEAMCALL that returned `TDX_SUCCESS`.
  public var registers: [UInt64]?
  /// The errno's C name and value.
  public var errno: String?
  public var errnoValue: Int32?
  /// `KVM_RUN` failed with `KVM_EXIT_MEMORY_FAULT`: what `struct kvm_run` says.
  public var memoryFault: MemoryFault?
  /// The TDX status's name, its operand, and the whole 64-bit value in hex.
  public var status: String?
  public var statusOperand: UInt32?
  public var statusCode: String?
  /// The device's TDISP error code, by name and value.
  public var tdisp: String?
  public var tdispCode: UInt16?
  /// The operation could never finish (a retry loop that comes back to where it was), waited
  /// for something no thread will do, or the model broke one of its own lock rules.
  public var livelock: String?
  public var deadlock: String?
  public var lockViolation: String?
  /// The kernel function and the check that refused the call, where the model names them.
  public var reason: Reason?
  /// What happened, in plain words, where the outcome's name alone does not say it.
  public var meaning: String?

  /// `kvm_run->memory_fault`: its flags by name (and their bits), the GPA and the size.
  public struct MemoryFault: Codable, Hashable, Sendable, CustomStringConvertible {
    public var flags: [String]
    public var flagsValue: UInt64
    public var gpa: UInt64
    public var size: UInt64
    public var description: String {
      "KVM_EXIT_MEMORY_FAULT flags [\(flags.joined(separator: ", "))] gpa 0x\(String(gpa, radix: 16)) size 0x\(String(size, radix: 16))"
    }
  }

  public struct Reason: Codable, Hashable, Sendable, CustomStringConvertible {
    public var function: String
    public var check: String
    public var description: String { "\(function): \(check)" }
  }

  public init(_ result: OpResult) {
    switch result {
    case .success(let returned):
      ok = true
      switch returned {
      case .none: break
      case .fd(let f): fd = f.rawValue
      case .attachment(let a): attachment = a.rawValue
      case .pfn(let p, let o): pfn = p.rawValue; order = o
      case .regionInfo(let flags, let size, let offset): regionFlags = flags; regionSize = size; regionOffset = offset
      case .read(let v): self.value = v
      case .tdiState(let s): tdiState = s
      case .report(let lines): report = lines
      case .guestAccess(let outcome, let read):
        fault = outcome; value = read; meaning = Self.meaning(ofFault: outcome)
      case .seamcall(let regs): registers = regs; status = "TDX_SUCCESS"
      }
    case .failure(let failure):
      ok = false
      switch failure {
      case .errno(let e): errno = e.name; errnoValue = e.rawValue
      case .memoryFault(let exit):
        errno = exit.errno.name; errnoValue = exit.errno.rawValue
        memoryFault = MemoryFault(flags: MemoryFaultExpectation.names(exit.flags), flagsValue: exit.flags,
                                  gpa: exit.gpa, size: exit.size)
      case .tdx(let s):
        status = s.name
        statusOperand = s.operand == 0 ? nil : s.operand
        statusCode = "0x" + String(s.rawValue, radix: 16, uppercase: true)
      case .tdisp(let code, let name): tdisp = name; tdispCode = code
      case .livelock(let what): livelock = what
      case .deadlock(let what): deadlock = what
      case .lockViolation(let violation): lockViolation = "\(violation)"
      }
      reason = failure.reason.map { Reason(function: $0.function, check: $0.check) }
    }
  }

  /// Plain words for how a guest access ended (``Platform/OpValue/guestAccess(_:value:)``).
  public static func meaning(ofFault outcome: String) -> String? {
    switch outcome {
    case "mapped": "the fault path mapped the page; the access completed"
    case "already_mapped": "the page was already mapped; the access completed without a fault"
    case "exit_mmio": "no memslot maps the address: KVM_RUN returned KVM_EXIT_MMIO for user space to emulate the access"
    case "killed": "the TD was terminated: it touched an unaccepted MMIO page, or was already terminated"
    case "ve": "the TD took a #VE (virtualization exception) for the access"
    case "accepted": "the TD accepted the page with TDG.MMIO.ACCEPT; it may now access it"
    default: nil
    }
  }

  /// `ok`, `ok fd 3`, `errno EINVAL`, `tdx TDX_OPERAND_BUSY (operand 0x92)` …
  public var text: String {
    if ok {
      var parts: [String] = []
      if let fd { parts.append("fd \(fd)") }
      if let attachment { parts.append("attachment \(attachment)") }
      if let pfn { parts.append("pfn 0x\(String(pfn, radix: 16)) order \(order ?? 0)") }
      if let regionFlags {
        parts.append("flags [\(regionFlags.joined(separator: ", "))] size 0x\(String(regionSize ?? 0, radix: 16)) "
                     + "offset 0x\(String(regionOffset ?? 0, radix: 16))")
      }
      if let tdiState { parts.append("state \(tdiState)") }
      if let report { parts.append("report [\(report.joined(separator: "; "))]") }
      if let fault { parts.append("fault \(fault)") }
      if let value { parts.append("value 0x\(String(value, radix: 16))") }
      if let registers { parts.append("TDX_SUCCESS [\(registers.map { "0x" + String($0, radix: 16) }.joined(separator: ", "))]") }
      return (["ok"] + parts).joined(separator: " ")
    }
    if let errno { return "errno \(errno)" + (memoryFault.map { ", \($0)" } ?? "") }
    if let status { return "tdx \(status)" + (statusOperand.map { " (operand 0x\(String($0, radix: 16)))" } ?? "") }
    if let tdisp { return "tdisp \(tdisp) (0x\(String(tdispCode ?? 0, radix: 16)))" }
    if let livelock { return "livelock: \(livelock)" }
    if let deadlock { return "deadlock: \(deadlock)" }
    if let lockViolation { return "model lock violation: \(lockViolation)" }
    return "error"
  }

  /// ``text`` with the reason or the plain words after it: `errno EINVAL (vfio_pci_core_feature_dma_buf:
  /// nr_ranges is 0)`, `ok fault killed (the TD was terminated: ...)`.
  public var explained: String {
    if let reason { return "\(text) (\(reason))" }
    if let meaning { return "\(text) (\(meaning))" }
    return text
  }
}
