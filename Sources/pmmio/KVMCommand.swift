import ArgumentParser
import Foundation
import HostKVM
import KernelCore

/// `pmmio kvm`: the real /dev/kvm back end, measured side by side with the C reference VMM.
struct KVMCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kvm",
    abstract: "Run a real guest against a lazily mapped BAR on /dev/kvm; compare Swift with C.",
    discussion: """
      The guest reads and writes a BAR at a fixed GPA in a loop. Trapped: every access exits to \
      user space. Mapped: the first access exits, the back end asks the exporter for the range \
      and installs a memslot, later accesses run without exits. With --revoke-after N a second \
      thread revokes the buffer after N iterations; later reads return all-ones.
      The Swift back end asks the platform model's VFIO dma-buf for the BAR's PFNs by default \
      (open, bind, VFIO_DEVICE_FEATURE_DMA_BUF, dynamic attach; get_pfn per page; revoke by \
      memory decode off); --exporter in-memory asks a plain in-memory exporter instead, for \
      comparison. The C reference VMM always uses its own in-memory exporter, so the 1.2x \
      targets compare Swift's in-memory figures with C's; the model's lookups (one per trapped \
      access, one per page at the first fault) are work C does not do.
      Every figure (trapped and mapped ns per access, first fault, revoke) is the median \
      (min, max) over --repeat fresh VMs per side, run interleaved (Swift, C, C, Swift, ...) \
      after one untimed warm-up run of each; a trapped or mapped sample is one run of \
      --iterations loops. Both VMMs time an exit from KVM_RUN's return to the completed access \
      on one clock.
      Exit status: 0 when every run behaved (one exit per trapped access, one exit per mapped \
      run, no stale read after revoke), \
      1 when they did not, 2 when /dev/kvm is absent or unusable or on bad usage.
      """)

  @Option(help: "Guest loop iterations per run (each is one BAR read and one BAR write).")
  var iterations: UInt64 = 20_000

  @Flag(help: "Only the trapped run: never map, complete every access in user space.")
  var trapped = false

  @Option(name: .customLong("revoke-after"), help: "Revoke the buffer after N iterations of a mapped run (0: no revoke run; default 1000).")
  var revokeAfterOption: UInt64?
  var revokeAfter: UInt64 { revokeAfterOption ?? 1_000 }

  @Flag(name: .customLong("guest-memfd"), help: "Back the BAR slot with guest_memfd where the host offers it.")
  var guestMemfd = false

  @Option(help: "Who the Swift back end asks for PFNs: 'model' (the VFIO dma-buf model) or 'in-memory'.")
  var exporter: ExporterName = .model

  @Option(name: .customLong("variant"), help: "The model's variant with --exporter model: rfc-v1 or reviewed (default).")
  var variantOption: Variant?
  var variant: Variant { variantOption ?? .reviewed }

  @Option(name: .customLong("repeat"),
    help: "Fresh VMs per side for each figure (median, min, max).")
  var repeatCount: Int = KVMComparison.defaultRepeat

  @Flag(help: "Print one JSON document: {\"swift\": {...}, \"c\": {...}}.")
  var json = false

  enum ExporterName: String, ExpressibleByArgument, CaseIterable {
    case model
    case inMemory = "in-memory"
  }

  var exporterKind: BARExporterKind {
    switch exporter {
    case .model: .model(variant)
    case .inMemory: .inMemory
    }
  }

  func validate() throws {
    // Options that would do nothing in this mode are refused, not ignored.
    if trapped, revokeAfterOption != nil {
      throw ValidationError("--revoke-after does nothing with --trapped: the revoke run is a mapped run")
    }
    if trapped, guestMemfd {
      throw ValidationError("--guest-memfd does nothing with --trapped: a trapped run installs no memslot")
    }
    if exporter == .inMemory, variantOption != nil {
      throw ValidationError("--variant does nothing with --exporter in-memory: only the model has variants")
    }
    guard iterations > 0, iterations <= UInt64(UInt32.max) else {
      throw ValidationError("--iterations must be between 1 and \(UInt32.max)")
    }
    guard repeatCount > 0, repeatCount <= 1000 else {
      throw ValidationError("--repeat must be between 1 and 1000")
    }
    // The revoke run's guest loops revokeAfter + the revoke bound times, counted in 32 bits.
    let limit = UInt64(UInt32.max) - GuestProgram.revokeBound
    guard revokeAfter <= limit else {
      throw ValidationError("--revoke-after must be between 0 and \(limit)")
    }
  }

  func run() throws {
    if BuildInfo.configuration == "debug" {
      standardError("pmmio kvm: warning: this is a debug build; its figures are not representative. "
                    + "Measure with: swift build -c release --product pmmio && .build/release/pmmio kvm")
    }
    // A one-line answer, not a stack of errors, where this machine cannot run guests.
    do throws(Errno) {
      _ = try KVMSystem().createVM()
    } catch {
      print("pmmio kvm: /dev/kvm is absent or unusable here (\(error.name))")
      throw ExitCode(2)
    }
    let result: KVMComparison
    let progress = TerminalProgress("pmmio kvm: measuring \(repeatCount) fresh VMs per side, \(iterations) iterations each")
    do throws(HostFailure) {
      result = try KVMComparison.measure(
        iterations: iterations, revokeAfter: revokeAfter, preferGuestMemfd: guestMemfd,
        trappedOnly: trapped, exporter: exporterKind, repeat: repeatCount)
      progress.finish()
    } catch {
      progress.finish()
      print("pmmio kvm: a run failed: \(error)")
      throw ExitCode(1)
    }
    if json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
      let data = try encoder.encode(Document(
        iterations: iterations, revokeAfter: trapped ? nil : revokeAfter, trapped: trapped, repeatCount: repeatCount,
        exporter: exporter.rawValue, variant: exporter == .model ? variant.rawValue : nil,
        kernel: Self.kernelRelease(), build: BuildInfo.configuration, pmmio: BuildInfo.version,
        swift: result.swift, c: result.c))
      print(String(decoding: data, as: UTF8.self))
    } else {
      printText(result)
    }
    if !Self.behaved(result.swift, trapped: trapped, iterations: iterations)
      || !Self.behaved(result.c, trapped: trapped, iterations: iterations)
    {
      throw ExitCode(1)
    }
  }

  /// What `--json` prints: how the figures were taken, then the figures of each side.
  struct Document: Encodable {
    var schema = 1
    var iterations: UInt64
    var revokeAfter: UInt64?
    var trapped: Bool
    var repeatCount: Int
    var exporter: String
    var variant: String?
    /// `uname -r`.
    var kernel: String
    /// `debug` or `release`: debug figures are not representative.
    var build: String
    var pmmio: String
    var swift: KVMFigures
    var c: KVMFigures

    enum CodingKeys: String, CodingKey {
      case schema, iterations, revokeAfter = "revoke_after", trapped, repeatCount = "repeat", exporter, variant
      case kernel, build, pmmio, swift, c
    }
  }

  /// The running kernel's release (`uname -r`).
  static func kernelRelease() -> String {
    var name = utsname()
    guard uname(&name) == 0 else { return "unknown" }
    return withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
  }

  static func behaved(_ f: KVMFigures, trapped: Bool, iterations: UInt64) -> Bool {
    guard f.trappedExits == 2 * iterations else { return false }
    if !trapped, f.mappedExits != 1 { return false }
    if let stale = f.revokeStaleReads, stale != 0 { return false }
    if let untouched = f.revokeBackingUntouched, !untouched { return false }
    return true
  }

  func printText(_ r: KVMComparison) {
    func num(_ v: Double?, _ digits: Int = 1) -> String {
      guard let v else { return "-" }
      return String(format: "%.\(digits)f", v)
    }
    func int(_ v: UInt64?) -> String { v.map(String.init) ?? "-" }
    func span(_ lo: Double?, _ hi: Double?) -> String {
      guard let lo, let hi else { return "-" }
      return "\(num(lo))-\(num(hi))"
    }
    func ratio(_ a: Double?, _ b: Double?) -> String {
      guard let a, let b, b > 0 else { return "-" }
      return String(format: "%.2fx", a / b)
    }
    func row(_ name: String, _ s: String, _ c: String, _ sc: String) {
      print(name.padding(toLength: 28, withPad: " ", startingAt: 0)
        + s.leftPadded(16) + c.leftPadded(16) + sc.leftPadded(10))
    }
    /// A sampled figure: median (min, max).
    typealias Spread = (median: Double?, min: Double?, max: Double?)
    /// The median row, its min-max row, and the same for Swift's in-memory exporter where it
    /// was sampled: the like-for-like comparison with C.
    func spreadRows(_ name: String, swift: Spread, inMemory: Spread, c: Spread) {
      row(name, num(swift.median), num(c.median), ratio(swift.median, c.median))
      row("  min-max", span(swift.min, swift.max), span(c.min, c.max), "")
      guard inMemory.median != nil else { return }
      row("  swift in-memory exporter", num(inMemory.median), num(c.median), ratio(inMemory.median, c.median))
      row("  min-max", span(inMemory.min, inMemory.max), span(c.min, c.max), "")
    }
    let backing = r.swift.backing == BARBackingKind.guestMemfd.rawValue
      ? "guest_memfd" : r.swift.backing == "none" ? "none (trapped only)" : "memfd mapping"
    print("pmmio kvm: \(iterations) iterations x 2 BAR accesses per run; BAR slot backing: \(backing)")
    print("exporter: swift asks the \(r.swift.exporter ?? "-") exporter; c asks its own \(r.c.exporter ?? "-")")
    if exporter == .model {
      print("the like-for-like Swift-vs-C rows are 'swift in-memory exporter': the model's lookups are work C does not do")
    }
    print("every figure: median [min-max] of \(repeatCount) fresh VMs per side, interleaved")
    row("", "swift", "c", "swift/c")
    spreadRows("trapped ns/access",
               swift: (r.swift.trappedNsPerAccess, r.swift.trappedNsPerAccessMin, r.swift.trappedNsPerAccessMax),
               inMemory: (r.swift.trappedNsPerAccessInMemory, r.swift.trappedNsPerAccessInMemoryMin,
                          r.swift.trappedNsPerAccessInMemoryMax),
               c: (r.c.trappedNsPerAccess, r.c.trappedNsPerAccessMin, r.c.trappedNsPerAccessMax))
    row("trapped MMIO exits per run", int(r.swift.trappedExits), int(r.c.trappedExits), "")
    if !trapped {
      spreadRows("mapped ns/access",
                 swift: (r.swift.mappedNsPerAccess, r.swift.mappedNsPerAccessMin, r.swift.mappedNsPerAccessMax),
                 inMemory: (r.swift.mappedNsPerAccessInMemory, r.swift.mappedNsPerAccessInMemoryMin,
                            r.swift.mappedNsPerAccessInMemoryMax),
                 c: (r.c.mappedNsPerAccess, r.c.mappedNsPerAccessMin, r.c.mappedNsPerAccessMax))
      row("mapped MMIO exits per run", int(r.swift.mappedExits), int(r.c.mappedExits), "")
      row("trapped/mapped (medians)", num(r.swift.trappedOverMapped, 2), num(r.c.trappedOverMapped, 2), "")
      spreadRows("first fault us",
                 swift: (r.swift.firstFaultMicroseconds, r.swift.firstFaultMinMicroseconds, r.swift.firstFaultMaxMicroseconds),
                 inMemory: (r.swift.firstFaultInMemoryMicroseconds, r.swift.firstFaultInMemoryMinMicroseconds,
                            r.swift.firstFaultInMemoryMaxMicroseconds),
                 c: (r.c.firstFaultMicroseconds, r.c.firstFaultMinMicroseconds, r.c.firstFaultMaxMicroseconds))
    }
    row("exporter lookup ns/page", num(r.swift.exporterLookupNs), "-", "")
    if r.swift.inMemoryLookupNs != nil {
      row("  same, in-memory exporter", num(r.swift.inMemoryLookupNs), "-", "")
    }
    if r.swift.revokeMicroseconds != nil {
      spreadRows("revoke us",
                 swift: (r.swift.revokeMicroseconds, r.swift.revokeMinMicroseconds, r.swift.revokeMaxMicroseconds),
                 inMemory: (r.swift.revokeInMemoryMicroseconds, r.swift.revokeInMemoryMinMicroseconds,
                            r.swift.revokeInMemoryMaxMicroseconds),
                 c: (r.c.revokeMicroseconds, r.c.revokeMinMicroseconds, r.c.revokeMaxMicroseconds))
      row("all-ones reads after revoke", int(r.swift.revokeAllOnesReads), int(r.c.revokeAllOnesReads), "")
      row("stale reads after revoke", int(r.swift.revokeStaleReads), int(r.c.revokeStaleReads), "")
      row("backing untouched", r.swift.revokeBackingUntouched == true ? "yes" : "NO",
        r.c.revokeBackingUntouched == true ? "yes" : "NO", "")
    }
  }
}

extension String {
  fileprivate func leftPadded(_ width: Int) -> String {
    count >= width ? self : String(repeating: " ", count: width - count) + self
  }
}
