import CKVMShim
import CReferenceVMM
import KernelCore

/// The figures of one VMM (Swift or the C reference): the trapped and lazily mapped per-access,
/// first-fault and revoke figures, each the median over `repeat` fresh VMs with its fastest and
/// slowest sample.
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
  /// MMIO exits of one trapped run. Of all the side's sampled runs (with the model exporter, its
  /// in-memory runs too) this is the count farthest from one exit per access, so a single run that
  /// misbehaved shows here rather than being hidden in a median.
  public var trappedExits: UInt64
  /// The median over `repeat` trapped runs of `iterations` guest loops each of the mean cost of
  /// one access, in ns, and the fastest and slowest run.
  public var trappedNsPerAccess: Double
  public var trappedNsPerAccessMin: Double?
  public var trappedNsPerAccessMax: Double?
  /// With the model exporter: the same for `InMemoryBARExporter`, sampled in the same rounds, the
  /// like-for-like comparison with C (the model's lookup on every trapped access is work C does
  /// not do).
  public var trappedNsPerAccessInMemory: Double?
  public var trappedNsPerAccessInMemoryMin: Double?
  public var trappedNsPerAccessInMemoryMax: Double?
  /// MMIO exits of one lazily mapped run: as `trappedExits`, the count farthest from one exit
  /// over all the side's sampled runs. `nil` for a trapped-only measurement, as are the others.
  public var mappedExits: UInt64?
  /// The median, fastest and slowest over `repeat` lazily mapped runs of the mean cost of one
  /// access, in ns; and the same for the in-memory exporter where the model was asked.
  public var mappedNsPerAccess: Double?
  public var mappedNsPerAccessMin: Double?
  public var mappedNsPerAccessMax: Double?
  public var mappedNsPerAccessInMemory: Double?
  public var mappedNsPerAccessInMemoryMin: Double?
  public var mappedNsPerAccessInMemoryMax: Double?
  /// The median over `repeat` fresh VMs of the first (lazy) fault's handling, in microseconds,
  /// and the fastest and slowest of them.
  public var firstFaultMicroseconds: Double?
  public var firstFaultMinMicroseconds: Double?
  public var firstFaultMaxMicroseconds: Double?
  /// With the model exporter: the in-memory exporter's figures, sampled in the same rounds.
  public var firstFaultInMemoryMinMicroseconds: Double?
  public var firstFaultInMemoryMaxMicroseconds: Double?
  /// The median over `repeat` revoke runs of the exporter's revoke (with `move_notify`), and the
  /// fastest and slowest of them.
  public var revokeMicroseconds: Double?
  public var revokeMinMicroseconds: Double?
  public var revokeMaxMicroseconds: Double?
  public var revokeInMemoryMicroseconds: Double?
  public var revokeInMemoryMinMicroseconds: Double?
  public var revokeInMemoryMaxMicroseconds: Double?
  /// Fresh VMs sampled per side for each per-access, first-fault and revoke figure.
  public var `repeat`: Int?
  public var revokeAllOnesReads: UInt64?
  public var revokeStaleReads: UInt64?
  public var revokeBackingUntouched: Bool?

  /// Trapped over mapped cost per access (the medians).
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
    case trappedNsPerAccessMin = "trapped_ns_per_access_min"
    case trappedNsPerAccessMax = "trapped_ns_per_access_max"
    case trappedNsPerAccessInMemory = "trapped_ns_per_access_in_memory"
    case trappedNsPerAccessInMemoryMin = "trapped_ns_per_access_in_memory_min"
    case trappedNsPerAccessInMemoryMax = "trapped_ns_per_access_in_memory_max"
    case mappedExits = "mapped_exits"
    case mappedNsPerAccess = "mapped_ns_per_access"
    case mappedNsPerAccessMin = "mapped_ns_per_access_min"
    case mappedNsPerAccessMax = "mapped_ns_per_access_max"
    case mappedNsPerAccessInMemory = "mapped_ns_per_access_in_memory"
    case mappedNsPerAccessInMemoryMin = "mapped_ns_per_access_in_memory_min"
    case mappedNsPerAccessInMemoryMax = "mapped_ns_per_access_in_memory_max"
    case firstFaultMicroseconds = "first_fault_us"
    case firstFaultMinMicroseconds = "first_fault_us_min"
    case firstFaultMaxMicroseconds = "first_fault_us_max"
    case firstFaultInMemoryMinMicroseconds = "first_fault_in_memory_us_min"
    case firstFaultInMemoryMaxMicroseconds = "first_fault_in_memory_us_max"
    case revokeMicroseconds = "revoke_us"
    case revokeMinMicroseconds = "revoke_us_min"
    case revokeMaxMicroseconds = "revoke_us_max"
    case revokeInMemoryMicroseconds = "revoke_in_memory_us"
    case revokeInMemoryMinMicroseconds = "revoke_in_memory_us_min"
    case revokeInMemoryMaxMicroseconds = "revoke_in_memory_us_max"
    case `repeat`
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
    trappedNsPerAccessMin = try c.decodeIfPresent(Double.self, forKey: .trappedNsPerAccessMin)
    trappedNsPerAccessMax = try c.decodeIfPresent(Double.self, forKey: .trappedNsPerAccessMax)
    trappedNsPerAccessInMemory = try c.decodeIfPresent(Double.self, forKey: .trappedNsPerAccessInMemory)
    trappedNsPerAccessInMemoryMin = try c.decodeIfPresent(Double.self, forKey: .trappedNsPerAccessInMemoryMin)
    trappedNsPerAccessInMemoryMax = try c.decodeIfPresent(Double.self, forKey: .trappedNsPerAccessInMemoryMax)
    mappedNsPerAccessMin = try c.decodeIfPresent(Double.self, forKey: .mappedNsPerAccessMin)
    mappedNsPerAccessMax = try c.decodeIfPresent(Double.self, forKey: .mappedNsPerAccessMax)
    mappedNsPerAccessInMemory = try c.decodeIfPresent(Double.self, forKey: .mappedNsPerAccessInMemory)
    mappedNsPerAccessInMemoryMin = try c.decodeIfPresent(Double.self, forKey: .mappedNsPerAccessInMemoryMin)
    mappedNsPerAccessInMemoryMax = try c.decodeIfPresent(Double.self, forKey: .mappedNsPerAccessInMemoryMax)
    firstFaultMinMicroseconds = try c.decodeIfPresent(Double.self, forKey: .firstFaultMinMicroseconds)
    firstFaultMaxMicroseconds = try c.decodeIfPresent(Double.self, forKey: .firstFaultMaxMicroseconds)
    firstFaultInMemoryMinMicroseconds = try c.decodeIfPresent(Double.self, forKey: .firstFaultInMemoryMinMicroseconds)
    firstFaultInMemoryMaxMicroseconds = try c.decodeIfPresent(Double.self, forKey: .firstFaultInMemoryMaxMicroseconds)
    revokeMinMicroseconds = try c.decodeIfPresent(Double.self, forKey: .revokeMinMicroseconds)
    revokeMaxMicroseconds = try c.decodeIfPresent(Double.self, forKey: .revokeMaxMicroseconds)
    revokeInMemoryMicroseconds = try c.decodeIfPresent(Double.self, forKey: .revokeInMemoryMicroseconds)
    revokeInMemoryMinMicroseconds = try c.decodeIfPresent(Double.self, forKey: .revokeInMemoryMinMicroseconds)
    revokeInMemoryMaxMicroseconds = try c.decodeIfPresent(Double.self, forKey: .revokeInMemoryMaxMicroseconds)
    `repeat` = try c.decodeIfPresent(Int.self, forKey: .repeat)
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
    try c.encodeIfPresent(trappedNsPerAccessMin, forKey: .trappedNsPerAccessMin)
    try c.encodeIfPresent(trappedNsPerAccessMax, forKey: .trappedNsPerAccessMax)
    try c.encodeIfPresent(trappedNsPerAccessInMemory, forKey: .trappedNsPerAccessInMemory)
    try c.encodeIfPresent(trappedNsPerAccessInMemoryMin, forKey: .trappedNsPerAccessInMemoryMin)
    try c.encodeIfPresent(trappedNsPerAccessInMemoryMax, forKey: .trappedNsPerAccessInMemoryMax)
    try c.encodeIfPresent(mappedExits, forKey: .mappedExits)
    try c.encodeIfPresent(mappedNsPerAccess, forKey: .mappedNsPerAccess)
    try c.encodeIfPresent(mappedNsPerAccessMin, forKey: .mappedNsPerAccessMin)
    try c.encodeIfPresent(mappedNsPerAccessMax, forKey: .mappedNsPerAccessMax)
    try c.encodeIfPresent(mappedNsPerAccessInMemory, forKey: .mappedNsPerAccessInMemory)
    try c.encodeIfPresent(mappedNsPerAccessInMemoryMin, forKey: .mappedNsPerAccessInMemoryMin)
    try c.encodeIfPresent(mappedNsPerAccessInMemoryMax, forKey: .mappedNsPerAccessInMemoryMax)
    try c.encodeIfPresent(firstFaultMicroseconds, forKey: .firstFaultMicroseconds)
    try c.encodeIfPresent(firstFaultMinMicroseconds, forKey: .firstFaultMinMicroseconds)
    try c.encodeIfPresent(firstFaultMaxMicroseconds, forKey: .firstFaultMaxMicroseconds)
    try c.encodeIfPresent(firstFaultInMemoryMinMicroseconds, forKey: .firstFaultInMemoryMinMicroseconds)
    try c.encodeIfPresent(firstFaultInMemoryMaxMicroseconds, forKey: .firstFaultInMemoryMaxMicroseconds)
    try c.encodeIfPresent(trappedOverMapped, forKey: .trappedOverMapped)
    try c.encodeIfPresent(revokeMicroseconds, forKey: .revokeMicroseconds)
    try c.encodeIfPresent(revokeMinMicroseconds, forKey: .revokeMinMicroseconds)
    try c.encodeIfPresent(revokeMaxMicroseconds, forKey: .revokeMaxMicroseconds)
    try c.encodeIfPresent(revokeInMemoryMicroseconds, forKey: .revokeInMemoryMicroseconds)
    try c.encodeIfPresent(revokeInMemoryMinMicroseconds, forKey: .revokeInMemoryMinMicroseconds)
    try c.encodeIfPresent(revokeInMemoryMaxMicroseconds, forKey: .revokeInMemoryMaxMicroseconds)
    try c.encodeIfPresent(`repeat`, forKey: .repeat)
    try c.encodeIfPresent(revokeAllOnesReads, forKey: .revokeAllOnesReads)
    try c.encodeIfPresent(revokeStaleReads, forKey: .revokeStaleReads)
    try c.encodeIfPresent(revokeBackingUntouched, forKey: .revokeBackingUntouched)
  }
}

/// The median, fastest and slowest of a set of samples.
public struct SampleSpread: Hashable, Sendable {
  public var median: Double
  public var min: Double
  public var max: Double

  /// `nil` for no samples; an even count's median is the mean of the middle two.
  public init?(_ samples: [Double]) {
    guard !samples.isEmpty else { return nil }
    let sorted = samples.sorted()
    let mid = sorted.count / 2
    median = sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
    min = sorted[0]
    max = sorted[sorted.count - 1]
  }
}

/// Swift and C side by side, measured in one process (`pmmio kvm`).
public struct KVMComparison: Hashable, Sendable, Codable {
  public var swift: KVMFigures
  public var c: KVMFigures

  /// Fresh VMs per side for each figure unless asked otherwise (`pmmio kvm --repeat`).
  public static let defaultRepeat = 7
  /// Guest iterations of a first-fault sample: its first access is all that is timed.
  static let sampleIterations: UInt64 = 16

  /// Who one sample runs: the Swift back end asking an exporter of a kind, or the C reference VMM.
  enum Side: Hashable {
    case swift(BARExporterKind)
    case c
  }

  /// Every figure is the median over `repeat` fresh VMs per side. The sides of those samples are
  /// interleaved — after one untimed warm-up run of each, round r runs them in order, round r + 1
  /// in reverse — so warm-up and machine load fall on Swift and C alike. With the model exporter
  /// the Swift in-memory exporter is a side of its own. First the per-access figures (a sample is
  /// one trapped run of `iterations` guest loops, then, unless `trappedOnly`, one lazily mapped
  /// run of as many), then first fault, then revoke.
  ///
  /// - Throws: `EINVAL` for `repeat < 1`; the errno of the first failing step of either VMM
  ///   (`ENOENT`/`EACCES` when `/dev/kvm` cannot be opened); the model exporter's own failure.
  public static func measure(
    iterations: UInt64, revokeAfter: UInt64, preferGuestMemfd: Bool, trappedOnly: Bool = false,
    exporter: BARExporterKind = .model(.reviewed), repeat repeatCount: Int = defaultRepeat
  )
    throws(HostFailure) -> KVMComparison
  {
    guard repeatCount > 0 else { throw .errno(.EINVAL) }
    let system = try HostFailure.kernel { () throws(Errno) in try KVMSystem() }
    let accesses = Double(2 * iterations)
    var config = rvmm_config(iterations: iterations, revoke_after: revokeAfter,
      allow_guest_memfd: preferGuestMemfd ? 1 : 0, trapped_only: trappedOnly ? 1 : 0)
    let sides: [Side] = exporter == .inMemory ? [.swift(.inMemory), .c] : [.swift(exporter), .swift(.inMemory), .c]

    func vm(_ kind: BARExporterKind, _ mode: BARAccessMode, iterations: UInt64) throws(HostFailure) -> LazyBARVM {
      let exporter = try kind.make()
      return try HostFailure.kernel { () throws(Errno) in
        try LazyBARVM(system: system, exporter: exporter, mode: mode, iterations: iterations, preferGuestMemfd: preferGuestMemfd)
      }
    }
    let perAccess = try interleaved(sides, repeat: repeatCount) { (side) throws(HostFailure) -> AccessSample in
      switch side {
      case .swift(let kind):
        let t = try vm(kind, .trapped, iterations: iterations).run()
        var sample = AccessSample(trappedNs: Double(t.elapsedNanoseconds) / accesses, trappedExits: t.mmioExits)
        if trappedOnly { return sample }
        let vm = try vm(kind, .lazyMapped, iterations: iterations)
        let m = try vm.run()
        (sample.mappedNs, sample.mappedExits, sample.backing) =
          (Double(m.elapsedNanoseconds) / accesses, m.mmioExits, vm.backing.rawValue)
        return sample
      case .c:
        var r = rvmm_result()
        try checkRun(rvmm_run_trapped(&config, &r))
        var sample = AccessSample(trappedNs: r.trapped_ns_per_access, trappedExits: r.trapped_exits)
        if trappedOnly { return sample }
        try checkRun(rvmm_run_mapped(&config, &r))
        (sample.mappedNs, sample.mappedExits, sample.backing) = (r.mapped_ns_per_access, r.mapped_exits,
          r.guest_memfd != 0 ? BARBackingKind.guestMemfd.rawValue : BARBackingKind.memfd.rawValue)
        return sample
      }
    }
    var swift = try figures(perAccess[.swift(exporter)] ?? [],
      inMemory: exporter == .inMemory ? nil : perAccess[.swift(.inMemory)] ?? [],
      iterations: iterations, exporter: exporter.description)
    var c = try figures(perAccess[.c] ?? [], inMemory: nil, iterations: iterations, exporter: cExporter)
    swift.exporterLookupNs = try lookupCost(exporter.make())
    if exporter != .inMemory {
      swift.inMemoryLookupNs = try lookupCost(BARExporterKind.inMemory.make())
    }
    swift.repeat = repeatCount
    c.repeat = repeatCount
    if trappedOnly { return KVMComparison(swift: swift, c: c) }

    var sampleConfig = config
    sampleConfig.iterations = Swift.min(iterations, sampleIterations)
    let faults = try interleaved(sides, repeat: repeatCount) { (side) throws(HostFailure) -> Double in
      switch side {
      case .swift(let kind):
        let r = try vm(kind, .lazyMapped, iterations: sampleConfig.iterations).run()
        guard let ns = r.firstFaultNanoseconds else { throw .errno(.EIO) }
        return Double(ns) / 1e3
      case .c:
        var r = rvmm_result()
        try checkRun(rvmm_run_mapped(&sampleConfig, &r))
        return r.first_fault_us
      }
    }
    let own = SampleSpread(faults[.swift(exporter)] ?? [])
    (swift.firstFaultMicroseconds, swift.firstFaultMinMicroseconds, swift.firstFaultMaxMicroseconds) =
      (own?.median, own?.min, own?.max)
    if exporter != .inMemory {
      let plain = SampleSpread(faults[.swift(.inMemory)] ?? [])
      (swift.firstFaultInMemoryMicroseconds, swift.firstFaultInMemoryMinMicroseconds,
        swift.firstFaultInMemoryMaxMicroseconds) = (plain?.median, plain?.min, plain?.max)
    }
    let cf = SampleSpread(faults[.c] ?? [])
    (c.firstFaultMicroseconds, c.firstFaultMinMicroseconds, c.firstFaultMaxMicroseconds) =
      (cf?.median, cf?.min, cf?.max)
    guard revokeAfter > 0 else { return KVMComparison(swift: swift, c: c) }

    let revokes = try interleaved(sides, repeat: repeatCount) { (side) throws(HostFailure) -> RevokeSample in
      switch side {
      case .swift(let kind):
        let r = try RevokeRun.run(system: system, revokeAfter: revokeAfter,
          preferGuestMemfd: preferGuestMemfd, exporter: kind)
        return RevokeSample(microseconds: Double(r.revokeNanoseconds) / 1e3,
          allOnesReads: UInt64(r.guest.allOnesReads), staleReads: UInt64(r.guest.sentinelReads),
          backingUntouched: r.backingUntouched)
      case .c:
        var r = rvmm_result()
        try checkRun(rvmm_run_revoke(&config, &r))
        return RevokeSample(microseconds: r.revoke_us, allOnesReads: r.revoke_allones_reads,
          staleReads: r.revoke_stale_reads, backingUntouched: r.revoke_backing_untouched != 0)
      }
    }
    func apply(_ samples: [RevokeSample], to f: inout KVMFigures, inMemory: [RevokeSample] = []) {
      let spread = SampleSpread(samples.map(\.microseconds))
      (f.revokeMicroseconds, f.revokeMinMicroseconds, f.revokeMaxMicroseconds) =
        (spread?.median, spread?.min, spread?.max)
      // Every revoke run of the side must behave: the fewest all-ones, the most stale reads.
      let all = samples + inMemory
      f.revokeAllOnesReads = all.map(\.allOnesReads).min()
      f.revokeStaleReads = all.map(\.staleReads).max()
      f.revokeBackingUntouched = all.allSatisfy(\.backingUntouched)
    }
    let plainRevokes = exporter == .inMemory ? [] : revokes[.swift(.inMemory)] ?? []
    apply(revokes[.swift(exporter)] ?? [], to: &swift, inMemory: plainRevokes)
    if exporter != .inMemory {
      let plain = SampleSpread(plainRevokes.map(\.microseconds))
      (swift.revokeInMemoryMicroseconds, swift.revokeInMemoryMinMicroseconds,
        swift.revokeInMemoryMaxMicroseconds) = (plain?.median, plain?.min, plain?.max)
    }
    apply(revokes[.c] ?? [], to: &c)
    return KVMComparison(swift: swift, c: c)
  }

  /// One per-access sample: a trapped run and, unless trapped only, a lazily mapped run.
  struct AccessSample {
    var trappedNs: Double
    var trappedExits: UInt64
    var mappedNs: Double?
    var mappedExits: UInt64?
    var backing: String?
  }

  /// A side's per-access figures from its samples, and from the in-memory exporter's where the
  /// side asked the model (`nil` otherwise). Exit counts are checked run by run: the figure is the
  /// count farthest from the expected one over all of them.
  /// - Throws: `EINVAL` for no samples (`interleaved` gives each side at least one).
  static func figures(
    _ own: [AccessSample], inMemory: [AccessSample]?, iterations: UInt64, exporter: String
  ) throws(HostFailure) -> KVMFigures {
    guard let trapped = SampleSpread(own.map(\.trappedNs)) else { throw .errno(.EINVAL) }
    let all = own + (inMemory ?? [])
    func farthest(_ counts: [UInt64], from expected: UInt64) -> UInt64? {
      counts.max { a, b in
        (a > expected ? a - expected : expected - a) < (b > expected ? b - expected : expected - b)
      }
    }
    var f = KVMFigures(backing: own.first?.backing ?? "none",
      trappedExits: farthest(all.map(\.trappedExits), from: 2 * iterations) ?? 0,
      trappedNsPerAccess: trapped.median, exporter: exporter)
    (f.trappedNsPerAccessMin, f.trappedNsPerAccessMax) = (trapped.min, trapped.max)
    let mapped = SampleSpread(own.compactMap(\.mappedNs))
    (f.mappedNsPerAccess, f.mappedNsPerAccessMin, f.mappedNsPerAccessMax) = (mapped?.median, mapped?.min, mapped?.max)
    f.mappedExits = farthest(all.compactMap(\.mappedExits), from: 1)
    if let inMemory {
      let t = SampleSpread(inMemory.map(\.trappedNs))
      (f.trappedNsPerAccessInMemory, f.trappedNsPerAccessInMemoryMin, f.trappedNsPerAccessInMemoryMax) =
        (t?.median, t?.min, t?.max)
      let m = SampleSpread(inMemory.compactMap(\.mappedNs))
      (f.mappedNsPerAccessInMemory, f.mappedNsPerAccessInMemoryMin, f.mappedNsPerAccessInMemoryMax) =
        (m?.median, m?.min, m?.max)
    }
    return f
  }

  struct RevokeSample {
    var microseconds: Double
    var allOnesReads: UInt64
    var staleReads: UInt64
    var backingUntouched: Bool
  }

  /// One untimed warm-up run per side, then `repeat` rounds over the sides, alternating forward
  /// and reverse order so that no side always runs first or right after another.
  static func interleaved<T>(
    _ sides: [Side], repeat repeatCount: Int, _ sample: (Side) throws(HostFailure) -> T
  ) throws(HostFailure) -> [Side: [T]] {
    for side in sides { _ = try sample(side) }
    var samples: [Side: [T]] = [:]
    for round in 0..<repeatCount {
      for side in round % 2 == 0 ? sides : sides.reversed() {
        samples[side, default: []].append(try sample(side))
      }
    }
    return samples
  }

  static func check(_ status: Int32) throws(Errno) {
    if status < 0 { throw Errno(rawValue: -status) }
  }

  /// ``check(_:)`` among the Swift side's runs.
  static func checkRun(_ status: Int32) throws(HostFailure) {
    if status < 0 { throw .errno(Errno(rawValue: -status)) }
  }

  /// The C reference VMM's `rvmm_run()`: its trapped, mapped and revoke runs once each.
  public static func measureC(
    iterations: UInt64, revokeAfter: UInt64, preferGuestMemfd: Bool, trappedOnly: Bool = false
  )
    throws(Errno) -> KVMFigures
  {
    var config = rvmm_config(iterations: iterations, revoke_after: trappedOnly ? 0 : revokeAfter,
      allow_guest_memfd: preferGuestMemfd ? 1 : 0, trapped_only: trappedOnly ? 1 : 0)
    var r = rvmm_result()
    try check(rvmm_run(&config, &r))
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
  /// - Throws: what a lookup failed with (the exporter is fresh, so none should).
  public static func lookupCost(_ exporter: any BARExporter, count: Int = 4096) throws(HostFailure) -> Double {
    let pages = exporter.size.pages
    guard pages > 0, count > 0 else { throw .errno(.EINVAL) }
    let t0 = ckvm_now_ns()
    for i in 0..<UInt64(count) {
      if case .failure(let failure) = exporter.lookup(pageIndex: PageIndex(i % pages)) { throw failure }
    }
    return Double(ckvm_now_ns() &- t0) / Double(count)
  }
}
