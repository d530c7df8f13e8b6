import CKVMShim
import Glibc
import KernelCore

/// Why `KVM_RUN` returned to user space: `kvm_run.exit_reason` and its payload, decoded.
public enum VCPUExit: Hashable, Sendable {
  /// `KVM_EXIT_MMIO`: an access to a GPA with no memslot. For a write `data` holds the bytes
  /// (little-endian); for a read user space must supply them with `completeMMIORead` before the
  /// next `run()`.
  case mmio(gpa: GPA, length: Int, isWrite: Bool, data: UInt64)
  /// `KVM_EXIT_IO`: port I/O; for `OUT` `value` holds the first `size` bytes written.
  case io(port: UInt16, isOut: Bool, size: Int, count: Int, value: UInt32)
  /// `KVM_EXIT_HLT`: the guest halted (no in-kernel LAPIC).
  case hlt
  /// `KVM_EXIT_SHUTDOWN`: triple fault.
  case shutdown
  /// `KVM_EXIT_FAIL_ENTRY`: VM entry failed; the hardware reason as reported.
  case failEntry(hardwareEntryFailureReason: UInt64)
  /// `KVM_EXIT_INTERNAL_ERROR`: KVM could not go on (often: an instruction it cannot emulate).
  case internalError(suberror: UInt32)
  /// Any other `KVM_EXIT_*`, by number.
  case other(reason: UInt32)
}

/// `struct kvm_regs`, the general-purpose registers `KVM_GET_REGS`/`KVM_SET_REGS` carry.
public typealias VCPURegisters = kvm_regs
/// `struct kvm_sregs`, the segment and control registers of `KVM_GET_SREGS`/`KVM_SET_SREGS`.
public typealias VCPUSpecialRegisters = kvm_sregs

/// A vCPU fd from `KVM_CREATE_VCPU` with its `kvm_run` mapping (rust-vmm's `VcpuFd`).
///
/// Not `Sendable`: a vCPU runs on one thread at a time, as `vcpu->mutex` enforces in the kernel.
/// The mapping and the fd are released exactly once, on release of the handle.
public final class VCPUHandle {
  /// The vCPU file descriptor.
  public let fd: Int32
  /// The VM stays open while one of its vCPUs is.
  public let vm: VMHandle
  let kvmRun: UnsafeMutablePointer<kvm_run>
  let runSize: Int

  init(fd: Int32, run: UnsafeMutableRawPointer, runSize: Int, vm: VMHandle) {
    self.fd = fd
    self.kvmRun = run.assumingMemoryBound(to: kvm_run.self)
    self.runSize = runSize
    self.vm = vm
  }

  deinit {
    munmap(UnsafeMutableRawPointer(kvmRun), runSize)
    close(fd)
  }

  /// `KVM_GET_REGS`.
  public func getRegs() throws(Errno) -> VCPURegisters {
    var r = kvm_regs()
    _ = try kvmIoctl(fd, ckvm_KVM_GET_REGS, &r)
    return r
  }

  /// `KVM_SET_REGS`.
  public func setRegs(_ regs: VCPURegisters) throws(Errno) {
    var r = regs
    _ = try kvmIoctl(fd, ckvm_KVM_SET_REGS, &r)
  }

  /// `KVM_GET_SREGS`.
  public func getSregs() throws(Errno) -> VCPUSpecialRegisters {
    var s = kvm_sregs()
    _ = try kvmIoctl(fd, ckvm_KVM_GET_SREGS, &s)
    return s
  }

  /// `KVM_SET_SREGS`.
  ///
  /// - Throws: `EINVAL` for a state the host refuses (e.g. an invalid CR0/CR4 combination).
  public func setSregs(_ sregs: VCPUSpecialRegisters) throws(Errno) {
    var s = sregs
    _ = try kvmIoctl(fd, ckvm_KVM_SET_SREGS, &s)
  }

  /// `KVM_RUN` until the guest exits to user space; a signal's `EINTR` (and `EAGAIN`) re-enter.
  ///
  /// - Throws: `EFAULT` when guest memory behind a slot cannot be faulted, `EIO` when the VM is
  ///   dead, `ENOEXEC`/`EINVAL` for a vCPU state KVM cannot run.
  public func run() throws(Errno) -> VCPUExit {
    try runTimed().exit
  }

  /// `run()`, also returning `ckvm_now_ns()` read as soon as `KVM_RUN` returned, before the exit
  /// is decoded: where the C reference VMM starts timing an exit's handling.
  func runTimed() throws(Errno) -> (exit: VCPUExit, returnedAt: UInt64) {
    while true {
      let r = ckvm_ioctl_val(fd, ckvm_KVM_RUN, 0)
      let returnedAt = ckvm_now_ns()
      if r == -Errno.EINTR.rawValue || r == -Errno.EAGAIN.rawValue { continue }
      if r < 0 { throw Errno(rawValue: -r) }
      return (decodeExit(), returnedAt)
    }
  }

  func decodeExit() -> VCPUExit {
    switch Int32(kvmRun.pointee.exit_reason) {
    case KVM_EXIT_MMIO:
      let length = Int(min(ckvm_run_mmio_len(kvmRun), 8))
      let bytes = ckvm_run_mmio_data(kvmRun)!
      var data: UInt64 = 0
      for i in 0..<length { data |= UInt64(bytes[i]) << (8 * UInt64(i)) }
      return .mmio(gpa: GPA(ckvm_run_mmio_phys_addr(kvmRun)), length: length,
        isWrite: ckvm_run_mmio_is_write(kvmRun) != 0, data: data)
    case KVM_EXIT_IO:
      let io = kvmRun.pointee.io
      var value: UInt32 = 0
      let bytes = ckvm_run_io_data(kvmRun)!
      for i in 0..<Int(min(io.size, 4)) { value |= UInt32(bytes[i]) << (8 * UInt32(i)) }
      return .io(
        port: io.port, isOut: io.direction == UInt8(KVM_EXIT_IO_OUT), size: Int(io.size),
        count: Int(io.count), value: value)
    case KVM_EXIT_HLT:
      return .hlt
    case KVM_EXIT_SHUTDOWN:
      return .shutdown
    case KVM_EXIT_FAIL_ENTRY:
      return .failEntry(hardwareEntryFailureReason: kvmRun.pointee.fail_entry.hardware_entry_failure_reason)
    case KVM_EXIT_INTERNAL_ERROR:
      return .internalError(suberror: kvmRun.pointee.internal.suberror)
    default:
      return .other(reason: kvmRun.pointee.exit_reason)
    }
  }

  /// Supplies the bytes of the pending `KVM_EXIT_MMIO` read (little-endian); the next `run()`
  /// completes the guest instruction with them (`complete_emulated_mmio()` in `x86.c`).
  public func completeMMIORead(_ value: UInt64) {
    let bytes = ckvm_run_mmio_data(kvmRun)!
    for i in 0..<8 { bytes[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
  }
}
