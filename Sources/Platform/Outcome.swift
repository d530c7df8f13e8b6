import KernelCore
import DmaBuf
import TDX
import KVM

/// What a successful operation returns.
public enum OpValue: Hashable, Sendable {
  /// Nothing beyond success (`return 0`).
  case none
  /// A new fd (open, dma-buf export, VM creation).
  case fd(FD)
  /// A new dma-buf attachment.
  case attachment(AttachmentID)
  /// A PFN and its mapping order, from `get_pfn`.
  case pfn(PFN, order: UInt8)
  /// `struct vfio_region_info`: flags by uAPI name, size and the region's offset in the fd.
  case regionInfo(flags: [String], size: UInt64, offset: UInt64)
  /// Bytes read (little-endian value of up to 8 bytes).
  case read(UInt64)
  /// A TDISP interface's state after the request, by spec name (`RUN`).
  case tdiState(String)
  /// A TDISP device interface report, one line per MMIO range.
  case report([String])
  /// The outcome of a whole guest access: `mapped`, `already_mapped`, `exit_mmio`, `killed` …,
  /// and for a load that completed, the value it read: the device's register contents, all
  /// ones where no function decodes the address (``Machine/mmioAccess(_:gpa:hpa:size:store:)``);
  /// `nil` for a store, an access that did not complete, an accept, or a load of RAM (the model
  /// keeps no RAM contents).
  case guestAccess(String, value: UInt64? = nil)
  /// A SEAMCALL that returned `TDX_SUCCESS`, with its output registers.
  case seamcall([UInt64])
}

/// Why an operation failed.
public enum OpFailure: Error, Hashable, Sendable, CustomStringConvertible {
  /// The syscall or ioctl failed with this errno.
  case errno(Errno)
  /// `KVM_RUN` failed with the exit's errno (EFAULT, or what `kvm_gmem_get_pfn()` answered)
  /// and `kvm_run` holds `exit_reason = KVM_EXIT_MEMORY_FAULT` with its flags, gpa and size
  /// (`kvm_prepare_memory_fault_exit()`).
  case memoryFault(MemoryFaultExit)
  /// The TDX module returned this status (raw SEAMCALLs, and guest TDCALLs).
  case tdx(TDXStatus)
  /// The device answered a TDISP request with this error code (`INVALID_NONCE` …).
  case tdisp(code: UInt16, name: String)
  /// The operation can never finish: a retry loop that comes back to the same state (the
  /// kernel would spin for ever). A finding about the model's kernel, not an errno.
  case livelock(String)
  /// The operation waits for something no thread will ever do.
  case deadlock(String)
  /// The model broke a lock rule of its own (a lock taken twice, released without being
  /// held, a path finished holding one): a bug in the model, reported loudly.
  case lockViolation(LockViolation)

  /// The function and check that refused the call, when the refusing code named them.
  public var reason: Refusal? {
    switch self {
    case .errno(let e): e.reason
    case .memoryFault(let exit): exit.errno.reason
    case .tdx(let s): s.reason
    case .tdisp, .livelock, .deadlock, .lockViolation: nil
    }
  }

  /// The errno the call returned, for a failure that is one.
  public var errno: Errno? {
    switch self {
    case .errno(let e): e
    case .memoryFault(let exit): exit.errno
    case .tdx, .tdisp, .livelock, .deadlock, .lockViolation: nil
    }
  }

  public var description: String {
    switch self {
    case .errno(let e): "errno \(e.name)"
    case .memoryFault(let exit): "errno \(exit.errno.name), \(exit)"
    case .tdx(let s): "tdx \(s)"
    case .tdisp(let code, let name): "tdisp \(name) (0x\(String(code, radix: 16)))"
    case .livelock(let what): "livelock: \(what)"
    case .deadlock(let what): "deadlock: \(what)"
    case .lockViolation(let violation): "model lock violation: \(violation)"
    }
  }
}

/// An operation's result, as `run`, `explore` and `fuzz` report it.
public typealias OpResult = Result<OpValue, OpFailure>

/// A named invariant and whether it held after a step.
public struct InvariantCheck: Hashable, Sendable {
  /// The grep-able name, e.g. `NoHostMappingOfPrivateMMIO`.
  public let name: String
  /// `nil` when it held; otherwise what broke it.
  public let violation: String?
  public init(name: String, violation: String?) { self.name = name; self.violation = violation }
  public var held: Bool { violation == nil }
}
