import CReferenceVMM
import KernelCore

/// The figures of one VMM (Swift or the C reference) over the same three runs.
public struct KVMFigures: Hashable, Sendable, Codable {
  public var backing: String
  public var trappedExits: UInt64
  public var trappedNsPerAccess: Double
  /// The lazily mapped run's figures; `nil` for a trapped-only measurement.
  public var mappedExits: UInt64?
  public var mappedNsPerAccess: Double?
  public var firstFaultMicroseconds: Double?
  public var revokeMicroseconds: Double?
  public var revokeAllOnesReads: UInt64?
  public var revokeStaleReads: UInt64?
  public var revokeBackingUntouched: Bool?

  /// Trapped over mapped cost per access.
  public var trappedOverMapped: Double? {
    guard let mapped = mappedNsPerAccess, mapped > 0 else { return nil }
    return trappedNsPerAccess / mapped
  }

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
    case trappedOverMapped = "trapped_over_mapped"
  }

  public init(
    backing: String, trappedExits: UInt64, trappedNsPerAccess: Double, mappedExits: UInt64? = nil,
    mappedNsPerAccess: Double? = nil, firstFaultMicroseconds: Double? = nil,
    revokeMicroseconds: Double? = nil, revokeAllOnesReads: UInt64? = nil,
    revokeStaleReads: UInt64? = nil, revokeBackingUntouched: Bool? = nil
  ) {
    self.backing = backing
    self.trappedExits = trappedExits
    self.trappedNsPerAccess = trappedNsPerAccess
    self.mappedExits = mappedExits
    self.mappedNsPerAccess = mappedNsPerAccess
    self.firstFaultMicroseconds = firstFaultMicroseconds
    self.revokeMicroseconds = revokeMicroseconds
    self.revokeAllOnesReads = revokeAllOnesReads
    self.revokeStaleReads = revokeStaleReads
    self.revokeBackingUntouched = revokeBackingUntouched
  }

  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    self.init(
      backing: try c.decode(String.self, forKey: .backing),
      trappedExits: try c.decode(UInt64.self, forKey: .trappedExits),
      trappedNsPerAccess: try c.decode(Double.self, forKey: .trappedNsPerAccess),
      mappedExits: try c.decodeIfPresent(UInt64.self, forKey: .mappedExits),
      mappedNsPerAccess: try c.decodeIfPresent(Double.self, forKey: .mappedNsPerAccess),
      firstFaultMicroseconds: try c.decodeIfPresent(Double.self, forKey: .firstFaultMicroseconds),
      revokeMicroseconds: try c.decodeIfPresent(Double.self, forKey: .revokeMicroseconds),
      revokeAllOnesReads: try c.decodeIfPresent(UInt64.self, forKey: .revokeAllOnesReads),
      revokeStaleReads: try c.decodeIfPresent(UInt64.self, forKey: .revokeStaleReads),
      revokeBackingUntouched: try c.decodeIfPresent(Bool.self, forKey: .revokeBackingUntouched))
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(backing, forKey: .backing)
    try c.encode(trappedExits, forKey: .trappedExits)
    try c.encode(trappedNsPerAccess, forKey: .trappedNsPerAccess)
    try c.encodeIfPresent(mappedExits, forKey: .mappedExits)
    try c.encodeIfPresent(mappedNsPerAccess, forKey: .mappedNsPerAccess)
    try c.encodeIfPresent(firstFaultMicroseconds, forKey: .firstFaultMicroseconds)
    try c.encodeIfPresent(trappedOverMapped, forKey: .trappedOverMapped)
    try c.encodeIfPresent(revokeMicroseconds, forKey: .revokeMicroseconds)
    try c.encodeIfPresent(revokeAllOnesReads, forKey: .revokeAllOnesReads)
    try c.encodeIfPresent(revokeStaleReads, forKey: .revokeStaleReads)
    try c.encodeIfPresent(revokeBackingUntouched, forKey: .revokeBackingUntouched)
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
  public static func measure(
    iterations: UInt64, revokeAfter: UInt64, preferGuestMemfd: Bool, trappedOnly: Bool = false
  )
    throws(Errno) -> KVMComparison
  {
    let swift = try measureSwift(iterations: iterations, revokeAfter: revokeAfter,
      preferGuestMemfd: preferGuestMemfd, trappedOnly: trappedOnly)
    let c = try measureC(iterations: iterations, revokeAfter: revokeAfter,
      preferGuestMemfd: preferGuestMemfd, trappedOnly: trappedOnly)
    return KVMComparison(swift: swift, c: c)
  }

  /// The C reference VMM's `rvmm_run()`.
  public static func measureC(
    iterations: UInt64, revokeAfter: UInt64, preferGuestMemfd: Bool, trappedOnly: Bool = false
  )
    throws(Errno) -> KVMFigures
  {
    var config = rvmm_config(iterations: iterations, revoke_after: trappedOnly ? 0 : revokeAfter,
      allow_guest_memfd: preferGuestMemfd ? 1 : 0, trapped_only: trappedOnly ? 1 : 0)
    var r = rvmm_result()
    let status = rvmm_run(&config, &r)
    if status < 0 { throw Errno(rawValue: -status) }
    let revoked = revokeAfter > 0 && !trappedOnly
    return KVMFigures(
      backing: trappedOnly ? "none"
        : r.guest_memfd != 0 ? BARBackingKind.guestMemfd.rawValue : BARBackingKind.memfd.rawValue,
      trappedExits: r.trapped_exits, trappedNsPerAccess: r.trapped_ns_per_access,
      mappedExits: trappedOnly ? nil : r.mapped_exits,
      mappedNsPerAccess: trappedOnly ? nil : r.mapped_ns_per_access,
      firstFaultMicroseconds: trappedOnly ? nil : r.first_fault_us,
      revokeMicroseconds: revoked ? r.revoke_us : nil,
      revokeAllOnesReads: revoked ? r.revoke_allones_reads : nil,
      revokeStaleReads: revoked ? r.revoke_stale_reads : nil,
      revokeBackingUntouched: revoked ? r.revoke_backing_untouched != 0 : nil)
  }

  /// The same runs through `LazyBARVM`.
  public static func measureSwift(
    iterations: UInt64, revokeAfter: UInt64, preferGuestMemfd: Bool, trappedOnly: Bool = false
  )
    throws(Errno) -> KVMFigures
  {
    let system = try KVMSystem()
    let accesses = Double(2 * iterations)
    let trapped = try LazyBARVM(system: system, exporter: InMemoryBARExporter(size: GuestProgram.barSize),
      mode: .trapped, iterations: iterations, preferGuestMemfd: preferGuestMemfd).run()
    if trappedOnly {
      return KVMFigures(backing: "none", trappedExits: trapped.mmioExits,
        trappedNsPerAccess: Double(trapped.elapsedNanoseconds) / accesses)
    }
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
