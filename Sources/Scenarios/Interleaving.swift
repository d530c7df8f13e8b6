import KernelCore
import Platform
import KVM

/// One of a scenario's `concurrent:` paths as a thread: where it is in its program, the
/// operation it runs now, and the names its own steps have bound.
public struct ProgramThread: Hashable, Sendable {
  /// Which concurrent path (0-based).
  public let path: Int
  /// The next step of the path to start.
  public internal(set) var next = 0
  /// The operation running now, between its regions.
  public internal(set) var current: KernelThread?
  /// Handles: those of `steps`, then those this path's own steps bound.
  public internal(set) var handles: HandleEnvironment
}

/// Who may take the next step: a scenario thread, or a vCPU answering a kick's IPI (a vCPU no
/// thread of the scenario is running in guest mode right now).
public enum Actor: Hashable, Sendable {
  case thread(Int)
  case ipi(VCPURef)
}

/// An operation of a concurrent path that finished in a step.
public struct CompletedStep: Sendable {
  public let step: ScenarioStep
  public let result: OpResult
}

/// What one actor's step did.
public enum ActorStep: Sendable {
  /// One atomic region ran; `completed` when it ended an operation.
  case ran(label: StaticString?, completed: CompletedStep?)
  /// The actor's next region cannot start; nothing changed.
  case blocked(Wait)
  /// The actor has nothing to do.
  case idle
  /// The model broke a lock rule of its own while a vCPU answered a kick.
  case modelBug(LockViolation)
}

/// The concurrent part of a scenario as the explorer and a scheduled `run` see it: the
/// machine after `steps`, and each concurrent path's thread. A value: equal interleavings are
/// the same state (the machine is canonical, and so are the threads).
public struct Interleaving: Hashable, Sendable {
  public internal(set) var machine: Machine
  public internal(set) var threads: [ProgramThread]

  /// Whether no thread is inside a path (every operation started has finished): the
  /// quiescent invariants apply.
  public var isQuiescent: Bool { threads.allSatisfy { $0.current == nil } }

  /// The threads and the machine compared. Threads are compared where they are, and a thread
  /// two states hold bitwise identically (the same position and the same storage) is equal
  /// without a field-by-field comparison.
  public static func == (a: Interleaving, b: Interleaving) -> Bool {
    guard a.threads.count == b.threads.count else { return false }
    let threadsEqual = a.threads.withUnsafeBufferPointer { x in
      b.threads.withUnsafeBufferPointer { y in
        x.indices.allSatisfy { i in
          PartHash.sameBytes(UnsafeRawBufferPointer(start: x.baseAddress! + i, count: MemoryLayout<ProgramThread>.size),
                             UnsafeRawBufferPointer(start: y.baseAddress! + i, count: MemoryLayout<ProgramThread>.size))
            || x[i] == y[i]
        }
      }
    }
    return threadsEqual && a.machine == b.machine
  }
}

/// The fixed part of an interleaving: the concurrent paths' programs and the names of
/// threads and vCPUs.
public struct InterleavingProgram: Sendable {
  public let scenario: Scenario
  /// Each concurrent path's steps.
  public let paths: [[ScenarioStep]]
  /// Each path's thread name (`vcpu1`, `ctx2`).
  public let names: [String]
  /// The configured name of each VM, by id (for naming vCPUs).
  let vmNames: [VMID: String]

  /// Builds the interleaving of `scenario`'s concurrent paths on `machine`, the machine after
  /// its `steps`, with `handles` as those steps bound them.
  public static func start(_ scenario: Scenario, machine: Machine,
                           handles: HandleEnvironment) -> (InterleavingProgram, Interleaving) {
    let names = scenario.concurrent.indices.map { scenario.threadName(for: .concurrent($0)) }
    var vmNames: [VMID: String] = [:]
    for vm in scenario.machine.vms {
      if let fd = machine.vmFD(named: vm.name), case .vm(let id)? = machine.files[fd] { vmNames[id] = vm.name }
    }
    let program = InterleavingProgram(scenario: scenario, paths: scenario.concurrent, names: names, vmNames: vmNames)
    let threads = scenario.concurrent.indices.map { ProgramThread(path: $0, handles: handles) }
    return (program, Interleaving(machine: machine, threads: threads))
  }

  /// How schedules and counterexamples name an actor: the thread's name, or `vcpuN.ipi` for
  /// a vCPU answering a kick (`td0.vcpuN.ipi` when several VMs have vCPUs to kick).
  public func name(of actor: Actor) -> String {
    switch actor {
    case .thread(let i): return names[i]
    case .ipi(let vcpu):
      let vm = vmNames.count > 1 ? (vmNames[vcpu.vm].map { "\($0)." } ?? "vm\(vcpu.vm.rawValue).") : ""
      return "\(vm)vcpu\(vcpu.index).ipi"
    }
  }
}

extension Interleaving {
  /// How ``finish(_:_:run:)`` ended.
  public enum Finished: Sendable {
    /// Every path ran all its steps.
    case done
    /// The threads came back to a state they were in: running one fixed order, they would
    /// go round for ever.
    case livelock
    /// Every actor with work left is blocked.
    case deadlock
    /// `run` asked to stop.
    case stopped
  }

  /// Runs what a schedule left, as `pmmio run` and `pmmio fuzz --interleave` finish it: the
  /// first actor (a thread, or a vCPU answering a kick) whose next step can run, again and
  /// again. `run` takes that step for real (recording it as its caller does) and answers
  /// whether to go on.
  public static func finish(_ state: inout Interleaving, _ program: InterleavingProgram,
                            run: (Actor, inout Interleaving) -> Bool) -> Finished {
    var seen: Set<Interleaving> = []
    while !state.isDone(program) {
      var canonical = state
      canonical.canonicalize()
      guard seen.insert(canonical).inserted else { return .livelock }
      guard let actor = state.actors(program).first(where: { actor in
        var probe = state
        var contention = Contention()
        if case .ran = probe.step(actor, program, contention: &contention) { return true }
        return false
      }) else { return .deadlock }
      guard run(actor, &state) else { return .stopped }
    }
    return .done
  }

  /// Whether every path has run all its steps.
  public func isDone(_ program: InterleavingProgram) -> Bool {
    threads.allSatisfy { $0.current == nil && $0.next >= program.paths[$0.path].count }
  }

  /// Every actor that could take a step now (each may still turn out blocked): each thread
  /// with work left, then each vCPU owing a kick an answer that no thread runs in the guest.
  public func actors(_ program: InterleavingProgram) -> [Actor] {
    var out: [Actor] = []
    var running: Set<VCPURef> = []
    for (i, thread) in threads.enumerated() {
      if let current = thread.current {
        out.append(.thread(i))
        if let vcpu = current.vcpu { running.insert(vcpu) }
      } else if thread.next < program.paths[thread.path].count {
        out.append(.thread(i))
      }
    }
    for vcpu in machine.kickResponders() where !running.contains(vcpu) { out.append(.ipi(vcpu)) }
    return out
  }

  /// The footprint of `actor`'s next step (a thread about to start an operation may touch
  /// anything).
  public func footprint(of actor: Actor) -> Footprint {
    switch actor {
    case .thread(let i): threads[i].current.map { machine.footprint(of: $0) } ?? .all
    case .ipi(let vcpu): machine.footprintOfKickAnswer(vcpu)
    }
  }

  /// Runs one step of `actor`: one atomic region, or nothing when it is blocked or idle.
  public mutating func step(_ actor: Actor, _ program: InterleavingProgram,
                            contention: inout Contention) -> ActorStep {
    switch actor {
    case .ipi(let vcpu):
      guard machine.kickResponders().contains(vcpu) else { return .idle }
      do { try machine.answerKick(vcpu) } catch { return .modelBug(error) }
      return .ran(label: "IPI: exit guest mode, enter again", completed: nil)
    case .thread(let i):
      let path = threads[i].path
      var kernel: KernelThread
      let stepIndex: Int
      if let current = threads[i].current {
        kernel = current
        stepIndex = threads[i].next - 1
      } else {
        guard threads[i].next < program.paths[path].count else { return .idle }
        stepIndex = threads[i].next
        let step = program.paths[path][stepIndex]
        kernel = machine.startThread(step.operation(in: threads[i].handles), context: .concurrent(path),
                                     name: program.names[i])
      }
      let result = machine.step(&kernel, choices: &contention)
      switch result {
      case .blocked(let wait):
        return .blocked(wait)
      case .ran(let label):
        if threads[i].current == nil { threads[i].next += 1 }
        threads[i].current = kernel
        return .ran(label: label, completed: nil)
      case .finished(let opResult):
        if threads[i].current == nil { threads[i].next += 1 }
        threads[i].current = nil
        let step = program.paths[path][stepIndex]
        if let name = step.binding { threads[i].handles.bind(name, to: opResult) }
        return .ran(label: kernel.observed.value.lastRegion, completed: CompletedStep(step: step, result: opResult))
      }
    }
  }

  /// Turns the machine's tracing on or off.
  public mutating func setTracing(_ enabled: Bool) { machine.setTracing(enabled) }

  /// The events traced since the last call.
  public mutating func drainTrace() -> [TraceEvent] { machine.trace.drain() }

  /// Makes the state canonical (see ``Machine/canonicalize(_:)-(inout [KernelThread])``).
  public mutating func canonicalize() {
    // The common case touches nothing: no thread is copied out and written back.
    guard !machine.isCanonical else { return }
    var kernels = threads.compactMap(\.current)
    guard !kernels.isEmpty else { machine.canonicalize(); return }
    machine.canonicalize(&kernels)
    var k = 0
    for i in threads.indices where threads[i].current != nil {
      threads[i].current = kernels[k]
      k += 1
    }
  }
}

/// An interleaving's hash as the hashes of its parts (each thread's position, operation in
/// flight and handles; the machine's parts, see ``Machine/appendPartHashes(to:previous:previousHashes:)``),
/// so that a successor is hashed against the state it came from: only the parts the step
/// changed are hashed again. Equal interleavings have equal digests.
public struct InterleavingDigest: Sendable {
  /// The hash of each part, in a fixed order.
  public let parts: [Int]
  /// The hash of the whole: of `parts`, in order.
  public let value: Int
}

extension Interleaving {
  /// Each thread's parts.
  static let threadParts = PartTable<ProgramThread>([.part(\.path), .part(\.next), .part(\.current), .part(\.handles)])

  /// The digest of this state.
  public func digest() -> InterleavingDigest {
    var copy = self
    return withUnsafePointer(to: &copy) { Self.digest(of: $0, previous: nil, previousDigest: nil) }
  }

  /// The digest of this state, which one step made from `previous` (whose digest is
  /// `previousDigest`): the parts this state holds bitwise identically keep their hashes.
  /// Both states are read in place (they are `inout` only for their addresses).
  public mutating func digest(previous: inout Interleaving, previousDigest: InterleavingDigest) -> InterleavingDigest {
    withUnsafePointer(to: &self) { a in
      withUnsafePointer(to: &previous) { b in Self.digest(of: a, previous: b, previousDigest: previousDigest) }
    }
  }

  static func digest(of state: UnsafePointer<Interleaving>, previous: UnsafePointer<Interleaving>?,
                     previousDigest: InterleavingDigest?) -> InterleavingDigest {
    let earlier = previous.flatMap { $0.pointee.threads.count == state.pointee.threads.count ? $0 : nil }
    let old = earlier == nil ? nil : previousDigest?.parts
    var parts: [Int] = []
    parts.reserveCapacity(old?.count ?? 64)
    let perThread = threadParts.parts.count
    state.pointee.threads.withUnsafeBufferPointer { threads in
      let before = earlier?.pointee.threads
      for i in threads.indices {
        let hashes = old.map { $0[i * perThread ..< (i + 1) * perThread] }
        before.withUnsafeBufferPointerIfPresent { b in
          threadParts.append(to: &parts, UnsafeRawPointer(threads.baseAddress! + i), previous: b.map { UnsafeRawPointer($0 + i) },
                             previousHashes: hashes)
        }
      }
    }
    let k = parts.count
    let machineOffset = MemoryLayout<Interleaving>.offset(of: \.machine)!
    let machine = (UnsafeRawPointer(state) + machineOffset).assumingMemoryBound(to: Machine.self)
    let previousMachine = earlier.map { (UnsafeRawPointer($0) + machineOffset).assumingMemoryBound(to: Machine.self) }
    Machine.appendPartHashes(of: machine, previous: previousMachine, previousHashes: old.map { $0[min(k, $0.count)...] }, to: &parts)
    var hasher = Hasher()
    hasher.combine(parts.count)
    for p in parts { hasher.combine(p) }
    return InterleavingDigest(parts: parts, value: hasher.finalize())
  }
}

extension Optional where Wrapped == [ProgramThread] {
  /// `body` with the array's elements, or with `nil` when there is no array.
  func withUnsafeBufferPointerIfPresent<R>(_ body: (UnsafePointer<ProgramThread>?) -> R) -> R {
    switch self {
    case .some(let array): array.withUnsafeBufferPointer { body($0.baseAddress) }
    case .none: body(nil)
    }
  }
}
