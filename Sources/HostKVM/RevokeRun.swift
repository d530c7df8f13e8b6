import CKVMShim
import Glibc
import KernelCore

/// Revoke under a running vCPU: a second thread waits until the guest has done `revokeAfter`
/// iterations of a lazily mapped run, revokes the exporter (for the model: memory decode off, a
/// device being torn down), then plants the
/// sentinel in the old backing. The guest loops until it has read all-ones
/// `GuestProgram.allOnesToStop` times, so the revoke lands while it runs however late the
/// revoking thread is scheduled.
public struct RevokeRun: Hashable, Sendable {
  public var guest: GuestRunReport
  /// `RevocableBARExporter.revoke()`: the exporter's revoke plus `move_notify` (slot delete).
  public var revokeNanoseconds: UInt64
  /// The exporter says revoked after the run (for the model: its `priv->revoked`).
  public var exporterRevoked: Bool
  /// The sentinel planted after revoke is still in register 2: no guest write reached the backing.
  public var backingUntouched: Bool
  public var backing: BARBackingKind

  /// - Throws: `EINVAL` for `revokeAfter == 0`; the errno of any failing step (the exporter's
  ///   revoke included); `ETIMEDOUT` when the guest ran out of its bound before the revoke took
  ///   effect.
  public static func run(
    system: KVMSystem, revokeAfter: UInt64, preferGuestMemfd: Bool = false,
    exporter kind: BARExporterKind = .model(.reviewed)
  ) throws(HostFailure) -> RevokeRun {
    guard revokeAfter > 0 else { throw .errno(.EINVAL) }
    // The guest counts iterations in a 32-bit register: the bound must fit, and the sum is
    // checked so a huge `revokeAfter` is an error rather than a trap.
    let (bound, overflow) = revokeAfter.addingReportingOverflow(GuestProgram.revokeBound)
    guard !overflow, bound <= UInt64(UInt32.max) else { throw .errno(.EINVAL) }
    let exporter = try kind.make()
    let vm = try HostFailure.kernel { () throws(Errno) in
      try LazyBARVM(system: system, exporter: exporter, mode: .lazyMapped, iterations: bound, preferGuestMemfd: preferGuestMemfd)
    }
    let revoker = Revoker(exporter: exporter, memory: vm.deviceMemory,
      until: UInt32(bound - revokeAfter))
    var thread = pthread_t()
    let box = Unmanaged.passRetained(revoker)
    let rc = pthread_create(&thread, nil, { arg in
      Unmanaged<Revoker>.fromOpaque(arg!).takeRetainedValue().main()
      return nil
    }, box.toOpaque())
    if rc != 0 {
      box.release()
      throw .errno(Errno(rawValue: rc))
    }
    let guest: GuestRunReport
    do {
      guest = try vm.run()
    } catch {
      revoker.cancel()
      pthread_join(thread, nil)
      throw error
    }
    pthread_join(thread, nil)
    if let e = revoker.error { throw e }
    guard guest.allOnesReads >= GuestProgram.allOnesToStop else { throw .errno(.ETIMEDOUT) }
    return RevokeRun(
      guest: guest, revokeNanoseconds: revoker.elapsed, exporterRevoked: exporter.isRevoked,
      backingUntouched: vm.deviceMemory.load32(offset: GuestProgram.countdownOffset) == GuestProgram.sentinel,
      backing: vm.backing)
  }
}

final class Revoker: @unchecked Sendable {
  let exporter: any RevocableBARExporter
  let memory: DeviceMemory
  let until: UInt32
  // Written by the revoking thread before pthread_join returns; read only after it.
  var elapsed: UInt64 = 0
  var error: HostFailure?
  private let cancelled = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)

  init(exporter: any RevocableBARExporter, memory: DeviceMemory, until: UInt32) {
    self.exporter = exporter
    self.memory = memory
    self.until = until
    cancelled.initialize(to: 0)
  }
  deinit { cancelled.deallocate() }

  func cancel() { ckvm_store32(cancelled, 1) }

  func main() {
    // Register 2 counts down from the bound; 0 means the guest has not written it yet.
    while true {
      if ckvm_load32(cancelled) != 0 { return }
      let left = memory.load32(offset: GuestProgram.countdownOffset) ?? 0
      if left != 0, left <= until { break }
      sched_yield()
    }
    let t0 = ckvm_now_ns()
    do throws(HostFailure) {
      try exporter.revoke()
    } catch {
      // Nothing was revoked: the guest runs out its bound and the caller reports this errno.
      self.error = error
      return
    }
    elapsed = ckvm_now_ns() &- t0
    memory.store32(offset: 0, GuestProgram.sentinel)
    memory.store32(offset: GuestProgram.countdownOffset, GuestProgram.sentinel)
  }
}
