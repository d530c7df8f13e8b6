import KernelCore
import Platform
import Synchronization

/// Why a BAR exporter, or a run on the host's KVM with one, failed: an errno (the host kernel's,
/// or the exporter's answer as the kernel's exporter gives it), or the platform model behind a
/// `ModelBARExporter` failing itself (a lock violation, a livelock, a deadlock, a TDISP or TDX
/// answer a plain device never gives). No kernel answers the second: it is the model's bug, and
/// is never passed off as an errno.
public enum HostFailure: Error, Hashable, Sendable, CustomStringConvertible {
  case errno(Errno)
  case model(OpFailure)
  /// The model answered an operation with a value no kernel gives for it (a PFN below the BAR,
  /// an fd where an attachment was due).
  case modelAnswer(String)

  /// A model operation's failure: its errno, or the model's own failure.
  public init(_ failure: OpFailure) {
    if case .errno(let e) = failure { self = .errno(e) } else { self = .model(failure) }
  }

  public var description: String {
    switch self {
    case .errno(let e): e.name
    case .model(let failure): "model failure: \(failure)"
    case .modelAnswer(let what): "model failure: \(what)"
    }
  }

  /// Runs a host kernel call, its errno as a ``HostFailure``.
  static func kernel<T>(_ body: () throws(Errno) -> T) throws(HostFailure) -> T {
    do { return try body() } catch { throw .errno(error) }
  }
}

/// What an importer may ask of the owner of a BAR range, as KVM asks a dma-buf exporter in the
/// private-MMIO series: `dma_buf_get_pfn_unlocked()` (patch 1) for the page behind an offset, and
/// `move_notify` (`dma_buf_attach_ops`) when the exporter revokes the buffer.
///
/// PFNs name pages of the back end's device memory (for `LazyBARVM`: page N of its backing file).
/// The platform model's VFIO dma-buf answers through this protocol (`ModelBARExporter`), so it stays
/// this small.
public protocol BARExporter: Sendable {
  /// The exported size in bytes; a multiple of 4 KiB.
  var size: UInt64 { get }

  /// The PFN behind page `pageIndex` of the buffer (`vfio_pci_dma_buf_get_pfn()`, patch 5).
  ///
  /// - Returns: `ENODEV` once the buffer is revoked; `EINVAL` at or past the end; a model
  ///   exporter's own failure as ``HostFailure/model(_:)``.
  /// - Complexity: O(1); called by a vCPU thread on its fault path without the importer's lock.
  func lookup(pageIndex: PageIndex) -> Result<PFN, HostFailure>

  /// Registers the importer's `move_notify`. The exporter calls it on the revoking thread, with
  /// its own lock held, after later `lookup`s already fail; it must return only once the importer
  /// no longer maps the buffer (KVM: the slot's SPTEs are zapped and flushed).
  func attach(moveNotify: @escaping @Sendable () -> Void)
}

/// An exporter a test or `pmmio kvm` can revoke on demand, as an FLR or memory decode off revokes a
/// VFIO dma-buf. Not part of what an importer sees: KVM only ever learns of a revoke through
/// `move_notify` and `ENODEV`.
public protocol RevocableBARExporter: BARExporter {
  /// Revokes the buffer: later lookups fail `ENODEV`, and every importer's `move_notify` has
  /// returned before this does. Revoking a revoked buffer notifies nobody.
  func revoke() throws(HostFailure)

  /// Whether the buffer is revoked now.
  var isRevoked: Bool { get }
}

/// A thread-safe exporter over a fixed run of PFNs, revocable as an FLR or decode-off would revoke
/// a VFIO dma-buf. For tests, and for `pmmio kvm --exporter in-memory`.
public final class InMemoryBARExporter: RevocableBARExporter {
  struct State {
    var revoked = false
    var notifiers: [@Sendable () -> Void] = []
  }

  public let size: UInt64
  /// The PFN of page 0; page N is `firstPFN + N`.
  public let firstPFN: PFN
  let state = Mutex(State())

  /// - Precondition-free: a size that is zero or not page aligned is `EINVAL`, as VFIO refuses it.
  public init(size: UInt64, firstPFN: PFN = PFN(0)) throws(Errno) {
    guard size > 0, size.isPageAligned else { throw .EINVAL }
    guard (try? firstPFN.adding(size.pages)) != nil else { throw .EOVERFLOW }
    self.size = size
    self.firstPFN = firstPFN
  }

  public func lookup(pageIndex: PageIndex) -> Result<PFN, HostFailure> {
    let revoked = state.withLock { $0.revoked }
    if revoked { return .failure(.errno(.ENODEV)) }
    guard pageIndex.rawValue < size.pages else { return .failure(.errno(.EINVAL)) }
    return .success(firstPFN.advanced(by: pageIndex.rawValue))
  }

  public func attach(moveNotify: @escaping @Sendable () -> Void) {
    state.withLock { $0.notifiers.append(moveNotify) }
  }

  /// Whether `revoke()` has run.
  public var isRevoked: Bool { state.withLock { $0.revoked } }

  /// Revokes the buffer: later lookups fail `ENODEV`, and every importer's `move_notify` has
  /// returned before this does (`vfio_pci_dma_buf_move()` under the reservation lock).
  /// Revoking twice is a no-op, as the kernel skips buffers already revoked.
  public func revoke() {
    state.withLock { state in
      guard !state.revoked else { return }
      state.revoked = true
      for notify in state.notifiers { notify() }
    }
  }
}

/// Which exporter the Swift back end asks for the BAR's PFNs.
public enum BARExporterKind: Hashable, Sendable, CustomStringConvertible {
  /// The platform model's VFIO dma-buf (`ModelBARExporter`), in this variant.
  case model(Variant)
  /// `InMemoryBARExporter`: a flag and a PFN run, for comparison with the model's cost.
  case inMemory

  /// A fresh exporter of this kind over `size` bytes, PFN N being page N of the device memory.
  /// - Throws: as `ModelBARExporter.init` or `InMemoryBARExporter.init`.
  public func make(size: UInt64 = GuestProgram.barSize) throws(HostFailure) -> any RevocableBARExporter {
    switch self {
    case .model(let variant): try ModelBARExporter(size: size, variant: variant)
    case .inMemory: try HostFailure.kernel { () throws(Errno) in try InMemoryBARExporter(size: size) }
    }
  }

  /// `vfio-dma-buf model (reviewed)` or `in-memory`, as `pmmio kvm` prints it.
  public var description: String {
    switch self {
    case .model(let variant): "vfio-dma-buf model (\(variant.rawValue))"
    case .inMemory: "in-memory"
    }
  }
}
