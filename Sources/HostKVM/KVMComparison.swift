import CReferenceVMM
import KernelCore

/// The figures of one VMM (Swift or the C reference) over the same three runs.
public struct KVMFigures: Hashable, Sendable, Codable {
  public var backing: String
  public var trappedExits: UInt64
  public var trappedNsPerAccess: Double
  public var mappedExits: UInt64
  public var mappedNsPerAccess: Double
  public var firstFaultMicroseconds: Double
  public var revokeMicroseconds: Double?
  public var revokeAllOnesReads: UInt64?
  public var revokeStaleReads: UInt64?
  public var revokeBackingUntouched: Bool?

  /// Trapped over mapped cost per access.
  public var trappedOverMapped: Double { mappedNsPerAccess > 0 ? trappedNsPerAccess / mappedNsPerAccess : 0 }

  enum CodingKeys: String, CodingKey {
    case backing
    case trappedExits = "trapped_exits"
    case trappedNsPerAccess = "trapped_ns_per_access"
    case mappedExits = "mapped_exits"
    case mappedNsPerAccess = "mapped_ns_per_access"
    case firstFaultMicroseconds = "first_fault_us"
    case revokeMicroseconds = "revoke_us"
    case revokeAllOnesReads = "revoke_allones_reads"
    case revokeStaleReads = "revoke_stale_reads"
    case revokeBackingUntouched = "revoke_backing_untouched"
  }
}

/// Swift and C side by side, measured in one process (`pmmio kvm`).
public struct KVMComparison: Hashable, Sendable, Codable {
  public var swift: KVMFigures
  public var c: KVMFigures

  /// Runs the Swift back end (trapped, lazily mapped, and with `revokeAfter > 0` a revoke run),
  /// then the C reference VMM with the same parameters.
  ///
  /// - Throws: the errno of the first failing step of either VMM (`ENOENT`/`EACCES` when
  ///   `/dev/kvm` cannot be opened).
  public static func measure(iterations: UInt64, revokeAfter: UInt64, preferGuestMemfd: Bool)
    throws(Errno) -> KVMComparison
  {
    let swift = try measureSwift(iterations: iterations, revokeAfter: revokeAfter, preferGuestMemfd: preferGuestMemfd)
    let c = try measureC(iterations: iterations, revokeAfter: revokeAfter, preferGuestMemfd: preferGuestMemfd)
    return KVMComparison(swift: swift, c: c)
  }

  /// The C reference VMM's `rvmm_run()`.
  public static func measureC(iterations: UInt64, revokeAfter: UInt64, preferGuestMemfd: Bool)
    throws(Errno) -> KVMFigures
  {
    var config = rvmm_config(iterations: iterations, revoke_after: revokeAfter,
      allow_guest_memfd: preferGuestMemfd ? 1 : 0)
    var r = rvmm_result()
    let status = rvmm_run(&config, &r)
    if status < 0 { throw Errno(rawValue: -status) }
    let revoked = revokeAfter > 0
    return KVMFigures(
      backing: r.guest_memfd != 0 ? BARBackingKind.guestMemfd.rawValue : BARBackingKind.memfd.rawValue,
      trappedExits: r.trapped_exits, trappedNsPerAccess: r.trapped_ns_per_access,
      mappedExits: r.mapped_exits, mappedNsPerAccess: r.mapped_ns_per_access,
      firstFaultMicroseconds: r.first_fault_us,
      revokeMicroseconds: revoked ? r.revoke_us : nil,
      revokeAllOnesReads: revoked ? r.revoke_allones_reads : nil,
      revokeStaleReads: revoked ? r.revoke_stale_reads : nil,
      revokeBackingUntouched: revoked ? r.revoke_backing_untouched != 0 : nil)
  }

  /// The same runs through `LazyBARVM`.
  public static func measureSwift(iterations: UInt64, revokeAfter: UInt64, preferGuestMemfd: Bool)
    throws(Errno) -> KVMFigures
  {
    let system = try KVMSystem()
    let accesses = Double(2 * iterations)
    let trapped = try LazyBARVM(system: system, exporter: InMemoryBARExporter(size: GuestProgram.barSize),
      mode: .trapped, iterations: iterations, preferGuestMemfd: preferGuestMemfd).run()
    let vm = try LazyBARVM(system: system, exporter: InMemoryBARExporter(size: GuestProgram.barSize),
      mode: .lazyMapped, iterations: iterations, preferGuestMemfd: preferGuestMemfd)
    let mapped = try vm.run()
    var figures = KVMFigures(
      backing: vm.backing.rawValue,
      trappedExits: trapped.mmioExits, trappedNsPerAccess: Double(trapped.elapsedNanoseconds) / accesses,
      mappedExits: mapped.mmioExits, mappedNsPerAccess: Double(mapped.elapsedNanoseconds) / accesses,
      firstFaultMicroseconds: Double(mapped.firstFaultNanoseconds ?? 0) / 1e3)
    if revokeAfter > 0 {
      let r = try RevokeRun.run(system: system, revokeAfter: revokeAfter, preferGuestMemfd: preferGuestMemfd)
      figures.revokeMicroseconds = Double(r.revokeNanoseconds) / 1e3
      figures.revokeAllOnesReads = UInt64(r.guest.allOnesReads)
      figures.revokeStaleReads = UInt64(r.guest.sentinelReads)
      figures.revokeBackingUntouched = r.backingUntouched
    }
    return figures
  }
}
