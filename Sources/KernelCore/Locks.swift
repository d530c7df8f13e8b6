/// Locks as values. A "context" is the kernel thread that runs one path (an ioctl, a vCPU
/// fault, a revoke) and a lock records which context holds it. A path's step that needs a lock
/// another context holds answers ``Wait`` and changes nothing; it never skips work and never
/// invents an errno. Lock rules are asserted where the kernel uses `lockdep_assert_held()`,
/// and a broken rule is a typed ``LockViolation`` that fails the run loudly.

/// A kernel execution context: the thread that runs one path.
@frozen public struct ContextID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
  public let rawValue: UInt32
  @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
  @inlinable public static func < (a: ContextID, b: ContextID) -> Bool { a.rawValue < b.rawValue }
  /// The context that runs ioctls issued one after another (the scenario's `steps`).
  public static let ioctl = ContextID(rawValue: 0)
  public var description: String { rawValue == 0 ? "ioctl" : "ctx\(rawValue)" }
  /// The context of a scenario's concurrent path `n` (0-based).
  public static func concurrent(_ n: Int) -> ContextID { ContextID(rawValue: UInt32(truncatingIfNeeded: n + 1)) }
}

/// A broken lock rule: taking a lock twice, dropping one not held, or a missing
/// `lockdep_assert_held`. Named after the lock so a counterexample says which.
public struct LockViolation: Error, Hashable, Sendable, CustomStringConvertible {
  public let lock: String
  public let message: String
  public init(lock: String, message: String) { self.lock = lock; self.message = message }
  public var description: String { "\(lock): \(message)" }
}

/// A sleeping or spinning mutual-exclusion lock (`struct mutex`, `spinlock_t`, a `dma_resv`'s
/// ww_mutex): free, or held by exactly one context.
public struct KernelMutex: Hashable, Sendable {
  /// The name lockdep would print (`"dmabuf->resv"`), for violations.
  public let name: String
  public private(set) var holder: ContextID?

  public init(_ name: String) { self.name = name }

  /// Takes the lock if free (`mutex_trylock`). A holder taking it again is a deadlock.
  /// - Returns: `false` when another context holds it (the caller must wait: not an atomic step).
  public mutating func tryLock(_ ctx: ContextID) throws(LockViolation) -> Bool {
    switch holder {
    case nil: holder = ctx; return true
    case ctx?: throw LockViolation(lock: name, message: "recursive locking by \(ctx)")
    case _?: return false
    }
  }

  /// What `ctx` waits for if it tries to take the lock now; `nil` when it would get it.
  public func wait(for ctx: ContextID) -> Wait? {
    guard let holder, holder != ctx else { return nil }
    return .lock(name, heldBy: holder)
  }

  /// Drops the lock (`mutex_unlock`). - Throws: when `ctx` does not hold it.
  public mutating func unlock(_ ctx: ContextID) throws(LockViolation) {
    guard holder == ctx else {
      throw LockViolation(lock: name, message: "\(ctx) releases a lock it does not hold")
    }
    holder = nil
  }

  /// `lockdep_assert_held(lock)` for `ctx`.
  public func assertHeld(by ctx: ContextID) throws(LockViolation) {
    guard holder == ctx else {
      throw LockViolation(lock: name, message: "lockdep_assert_held failed in \(ctx)")
    }
  }

  public var isLocked: Bool { holder != nil }
}

/// A reader-writer semaphore (`struct rw_semaphore`, e.g. vfio-pci's `memory_lock`, KVM's
/// `mmu_lock` on x86 which is an rwlock): one writer, or any number of readers.
public struct KernelRWSemaphore: Hashable, Sendable {
  public let name: String
  public private(set) var writer: ContextID?
  /// Readers in ascending order, so two equal states compare equal.
  public private(set) var readers: [ContextID] = []

  public init(_ name: String) { self.name = name }

  /// `down_write_trylock`. - Returns: `false` when held by anyone else.
  public mutating func tryLockWrite(_ ctx: ContextID) throws(LockViolation) -> Bool {
    if writer == ctx || readers.contains(ctx) {
      throw LockViolation(lock: name, message: "recursive locking by \(ctx)")
    }
    guard writer == nil, readers.isEmpty else { return false }
    writer = ctx
    return true
  }

  /// `down_read_trylock`. - Returns: `false` while a writer holds it.
  public mutating func tryLockRead(_ ctx: ContextID) throws(LockViolation) -> Bool {
    if writer == ctx || readers.contains(ctx) {
      throw LockViolation(lock: name, message: "recursive locking by \(ctx)")
    }
    guard writer == nil else { return false }
    let index = readers.firstIndex(where: { $0 > ctx }) ?? readers.endIndex
    readers.insert(ctx, at: index)
    return true
  }

  /// What `ctx` waits for if it tries to take the lock for write now; `nil` when it would get it.
  public func writeWait(for ctx: ContextID) -> Wait? {
    if writer == ctx || readers.contains(ctx) { return nil }  // recursion: tryLockWrite reports it
    if let writer { return .lock(name, write: true, heldBy: writer) }
    if let reader = readers.first { return .lock(name, write: true, heldBy: readers.count == 1 ? reader : nil) }
    return nil
  }

  /// What `ctx` waits for if it tries to take the lock for read now; `nil` when it would get it.
  public func readWait(for ctx: ContextID) -> Wait? {
    guard let writer, writer != ctx else { return nil }
    return .lock(name, write: false, heldBy: writer)
  }

  /// `up_write` or `up_read`, whichever `ctx` holds.
  public mutating func unlock(_ ctx: ContextID) throws(LockViolation) {
    if writer == ctx { writer = nil; return }
    guard let index = readers.firstIndex(of: ctx) else {
      throw LockViolation(lock: name, message: "\(ctx) releases a lock it does not hold")
    }
    readers.remove(at: index)
  }

  /// `lockdep_assert_held_write`.
  public func assertHeldWrite(by ctx: ContextID) throws(LockViolation) {
    guard writer == ctx else {
      throw LockViolation(lock: name, message: "lockdep_assert_held_write failed in \(ctx)")
    }
  }

  /// `lockdep_assert_held` (read or write).
  public func assertHeld(by ctx: ContextID) throws(LockViolation) {
    guard writer == ctx || readers.contains(ctx) else {
      throw LockViolation(lock: name, message: "lockdep_assert_held failed in \(ctx)")
    }
  }

  public var isLocked: Bool { writer != nil || !readers.isEmpty }
}
