import CReferenceVMM
import KernelCore

/// The figures of one VMM (Swift or the C reference) over the same three runs.
public struct KVMFigures: Hashable, Sendable, Codable {
  public var backing: String
  /// Who answered the PFN lookups: `BARExporterKind.description` for Swift; the C reference VMM
  /// has its own in-memory exporter (a revoked flag under the VM's lock).
  public var exporter: String?
  /// Mean cost of one exporter lookup, measured apart from any VM (Swift only).
  public var exporterLookupNs: Double?
  /// With the model exporter: the same figures for `InMemoryBARExporter`, so the model's share
  /// of the first fault is visible rather than folded into the Swift-vs-C ratio.
  public var inMemoryLookupNs: Double?
  public var firstFaultInMemoryMicroseconds: Double?
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
    case exporter
    case exporterLookupNs = "exporter_lookup_ns"
    case inMemoryLookupNs = "in_memory_lookup_ns"
    case firstFaultInMemoryMicroseconds = "first_fault_in_memory_us"
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
    revokeStaleReads: UInt64? = nil, revokeBackingUntouched: Bool? = nil, exporter: String? = nil,
    exporterLookupNs: Double? = nil, inMemoryLookupNs: Double? = nil,
    firstFaultInMemoryMicroseconds: Double? = nil
  ) {
    self.backing = backing
    self.exporter = exporter
    self.exporterLookupNs = exporterLookupNs
    self.inMemoryLookupNs = inMemoryLookupNs
    self.firstFaultInMemoryMicroseconds = firstFaultInMemoryMicroseconds
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
      revokeBackingUntouched: try c.decodeIfPresent(Bool.self, forKey: .revokeBackingUntouched),
      exporter: try c.decodeIfPresent(String.self, forKey: .exporter),
      exporterLookupNs: try c.decodeIfPresent(Double.self, forKey: .exporterLookupNs),
      inMemoryLookupNs: try c.decodeIfPresent(Double.self, forKey: .inMemoryLookupNs),
      firstFaultInMemoryMicroseconds: try c.decodeIfPresent(Double.self, forKey: .firstFaultInMemoryMicroseconds))
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(backing, forKey: .backing)
    try c.encodeIfPresent(exporter, forKey: .exporter)
    try c.encodeIfPresent(exporterLookupNs, forKey: .exporterLookupNs)
    try c.encodeIfPresent(inMemoryLookupNs, forKey: .inMemoryLookupNs)
    try c.encodeIfPresent(firstFaultInMemoryMicroseconds, forKey: .firstFaultInMemoryMicroseconds)
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

  /// Runs the Swift back end asking `exporter` (trapped, lazily mapped, and with
  /// `revokeAfter > 0` a revoke run), then the C reference VMM with the same parameters.
  ///
  /// - Throws: the errno of the first failing step of either VMM (`ENOENT`/`EACCES` when
  ///   `/dev/kvm` cannot be opened).
  public static func measure(
    iterations: UInt64, revokeAfter: UInt64, preferGuestMemfd: Bool, trappedOnly: Bool = false,
    exporter: BARExporterKind = .model(.reviewed)
  )
    throws(Errno) -> KVMComparison
  {
    let swift = try measureSwift(iterations: iterations, revokeAfter: revokeAfter,
      preferGuestMemfd: preferGuestMemfd, trappedOnly: trappedOnly, exporter: exporter)
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
      revokeBackingUntouched: revoked ? r.revoke_backing_untouched != 0 : nil,
      exporter: cExporter)
  }

  /// What `KVMFigures.exporter` says for the C reference VMM.
  public static let cExporter = "in-memory (C)"

  /// Mean nanoseconds per `lookup` over `count` lookups cycling through the buffer's pages.
  /// - Throws: `EIO` when a lookup fails (the exporter is fresh, so none should).
  public static func lookupCost(_ exporter: any BARExporter, count: Int = 4096) throws(Errno) -> Double {
    let pages = exporter.size.pages
    guard pages > 0, count > 0 else { throw .EINVAL }
    let t0 = ContinuousClock.now
    for i in 0..<UInt64(count) {
      guard case .success = exporter.lookup(pageIndex: PageIndex(i % pages)) else { throw .EIO }
    }
    return Double((ContinuousClock.now - t0).nanoseconds) / Double(count)
  }

  /// The same runs through `LazyBARVM`, each with a fresh exporter of kind `exporter`. With the
  /// model, also the first fault and lookup cost of `InMemoryBARExporter`, for comparison.
  public static func measureSwift(
    iterations: UInt64, revokeAfter: UInt64, preferGuestMemfd: Bool, trappedOnly: Bool = false,
    exporter: BARExporterKind = .model(.reviewed)
  )
    throws(Errno) -> KVMFigures
  {
    let system = try KVMSystem()
    let accesses = Double(2 * iterations)
    let lookupNs = try lookupCost(exporter.make())
    let trapped = try LazyBARVM(system: system, exporter: exporter.make(),
      mode: .trapped, iterations: iterations, preferGuestMemfd: preferGuestMemfd).run()
    if trappedOnly {
      return KVMFigures(backing: "none", trappedExits: trapped.mmioExits,
        trappedNsPerAccess: Double(trapped.elapsedNanoseconds) / accesses,
        exporter: exporter.description, exporterLookupNs: lookupNs)
    }
    let vm = try LazyBARVM(system: system, exporter: exporter.make(),
      mode: .lazyMapped, iterations: iterations, preferGuestMemfd: preferGuestMemfd)
    let mapped = try vm.run()
    var figures = KVMFigures(
      backing: vm.backing.rawValue,
      trappedExits: trapped.mmioExits, trappedNsPerAccess: Double(trapped.elapsedNanoseconds) / accesses,
      mappedExits: mapped.mmioExits, mappedNsPerAccess: Double(mapped.elapsedNanoseconds) / accesses,
      firstFaultMicroseconds: Double(mapped.firstFaultNanoseconds ?? 0) / 1e3,
      exporter: exporter.description, exporterLookupNs: lookupNs)
    if exporter != .inMemory {
      // One short lazily mapped run: its first fault is all that is wanted here.
      let plain = try LazyBARVM(system: system, exporter: InMemoryBARExporter(size: GuestProgram.barSize),
        mode: .lazyMapped, iterations: 1, preferGuestMemfd: preferGuestMemfd).run()
      figures.firstFaultInMemoryMicroseconds = Double(plain.firstFaultNanoseconds ?? 0) / 1e3
      figures.inMemoryLookupNs = try lookupCost(InMemoryBARExporter(size: GuestProgram.barSize))
    }
    if revokeAfter > 0 {
      let r = try RevokeRun.run(system: system, revokeAfter: revokeAfter, preferGuestMemfd: preferGuestMemfd,
        exporter: exporter)
      figures.revokeMicroseconds = Double(r.revokeNanoseconds) / 1e3
      figures.revokeAllOnesReads = UInt64(r.guest.allOnesReads)
      figures.revokeStaleReads = UInt64(r.guest.sentinelReads)
      figures.revokeBackingUntouched = r.backingUntouched
    }
    return figures
  }
}
