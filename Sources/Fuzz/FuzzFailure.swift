import KernelCore
import Platform

/// What the fuzzer found wrong after an operation.
public struct FuzzFailure: Hashable, Sendable, Codable, CustomStringConvertible {
  public enum Kind: String, Hashable, Sendable, Codable, CaseIterable {
    /// A named invariant does not hold after the step.
    case invariant
    /// The model broke a rule of its own: a lock taken twice, dropped unheld or kept past the
    /// end of a path.
    case modelBug = "model-bug"
    /// The operation retries for ever (``OpFailure/livelock(_:)``), or after a schedule the
    /// threads come back to a state they were in.
    case livelock
    /// A thread waits for something no thread will ever do.
    case deadlock
    /// The model trapped (a failed precondition, an allocation it cannot make): the process
    /// running the op died of a signal.
    case trap
    /// The operation failed but changed the machine, outside the documented exceptions
    /// (``FuzzChecks/changeOnFailureAllowed(_:before:after:)``).
    case changedOnFailure = "changed-on-failure"
    /// The errno is not one the kernel can return for this op (``Operation/errnoTable``).
    case errnoNotInTable = "errno-not-in-table"
    /// A TDX status or TDISP error from an op that cannot return one.
    case failureNotInTable = "failure-not-in-table"
    /// The model and the running kernel's KVM answered the same call differently.
    case oracle
  }

  public var kind: Kind
  /// The step (0-based, in the program's `steps`; in an interleaving, the scheduled region
  /// after which it was seen, counted from the first concurrent region).
  public var step: Int
  /// The op of the step (`vfio.dma_buf`); for a region, the op of the thread that ran it.
  public var op: String
  /// The invariant's name for ``Kind/invariant``.
  public var invariant: String?
  /// What the step returned, as reports print it.
  public var result: String
  /// What is wrong, in words.
  public var message: String

  public init(kind: Kind, step: Int, op: String, invariant: String? = nil, result: String, message: String) {
    self.kind = kind; self.step = step; self.op = op; self.invariant = invariant
    self.result = result; self.message = message
  }

  /// What makes two failures the same for the shrinker: the kind, the op and what broke
  /// (the invariant, or the result), not where or in how many steps.
  public var signature: String {
    switch kind {
    case .invariant: "\(kind.rawValue) \(invariant ?? "")"
    case .modelBug, .livelock, .deadlock, .trap: "\(kind.rawValue) \(op)"
    case .changedOnFailure: "\(kind.rawValue) \(op)"
    case .errnoNotInTable, .failureNotInTable, .oracle: "\(kind.rawValue) \(op) \(result)"
    }
  }

  public var description: String {
    "\(kind.rawValue) at step \(step + 1) (\(op) -> \(result)): " + (invariant.map { "\($0): " } ?? "") + message
  }
}
