import KernelCore
import Testing
@testable import Explorer
@testable import Platform
import Scenarios

/// The visited set finds a state by its stored hash and full equality, whatever order the
/// states were reached in, and however many states share a hash.
@Suite struct VisitedSetTests {
  /// The state after `steps` of three-vcpus-vs-revoke and its program, before any thread ran.
  static func start(_ name: String = "three-vcpus-vs-revoke") throws -> (InterleavingProgram, Interleaving) {
    let scenario = try race(name)
    var machine = try Machine(configuration: scenario.machine, variant: .reviewed)
    var handles = HandleEnvironment()
    for vm in scenario.machine.vms { if let fd = machine.vmFD(named: vm.name) { handles.vmFDs[vm.name] = fd } }
    for step in scenario.steps {
      let result = machine.perform(step.operation(in: handles), context: .ioctl)
      if let name = step.binding { handles.bind(name, to: result) }
    }
    var (program, state) = InterleavingProgram.start(scenario, machine: machine, handles: handles)
    state.setTracing(false)
    state.canonicalize()
    return (program, state)
  }

  static func run(_ actors: [Actor], from state: Interleaving, _ program: InterleavingProgram) -> Interleaving {
    var s = state
    for actor in actors {
      var contention = Contention()
      _ = s.step(actor, program, contention: &contention)
      s.canonicalize()
    }
    return s
  }

  /// Two vCPUs each run their whole read in either order: the states are equal, hash equal,
  /// and the visited set finds each from the other.
  @Test func equalStatesReachedInDifferentOrdersAreOneState() throws {
    let (program, start) = try Self.start()
    // A read that faults: guest, three fault regions, guest again.
    let one = Array(repeating: Actor.thread(0), count: 5) + Array(repeating: Actor.thread(1), count: 5)
    let other = Array(repeating: Actor.thread(1), count: 5) + Array(repeating: Actor.thread(0), count: 5)
    let a = Self.run(one, from: start, program), b = Self.run(other, from: start, program)
    #expect(a.isQuiescent)
    #expect(a == b)
    #expect(a.hashValue == b.hashValue)
    #expect(a != start)
    var visited = VisitedSet()
    visited.insert(0, hash: start.hashValue)
    visited.insert(1, hash: a.hashValue)
    let states = [start, a]
    #expect(visited.index(of: b, hash: b.hashValue, in: states) == 1)
    #expect(visited.index(of: start, hash: start.hashValue, in: states) == 0)
  }

  /// Runs `actors`, computing each state's digest against the one before, as the explorer does.
  static func digestAlong(_ actors: [Actor], from state: Interleaving, _ program: InterleavingProgram) -> (Interleaving, InterleavingDigest) {
    var s = state
    var digest = s.digest()
    for actor in actors {
      var next = s
      var contention = Contention()
      _ = next.step(actor, program, contention: &contention)
      next.canonicalize()
      digest = next.digest(previous: &s, previousDigest: digest)
      s = next
    }
    return (s, digest)
  }

  /// Digests computed step by step against the parent equal digests computed afresh, and equal
  /// states reached in different orders have equal digests; a different state has another.
  @Test func digestsReusingTheParentEqualFreshOnes() throws {
    let (program, start) = try Self.start()
    let one = Array(repeating: Actor.thread(0), count: 5) + Array(repeating: Actor.thread(1), count: 5)
    let other = Array(repeating: Actor.thread(1), count: 5) + Array(repeating: Actor.thread(0), count: 5)
    let (a, da) = Self.digestAlong(one, from: start, program)
    let (b, db) = Self.digestAlong(other, from: start, program)
    #expect(a == b)
    #expect(da.parts == a.digest().parts && da.value == a.digest().value)
    #expect(da.value == db.value)
    #expect(da.parts == db.parts)
    let (c, dc) = Self.digestAlong([.thread(3)], from: start, program)
    #expect(c != a && dc.value != da.value)
    #expect(dc.parts == c.digest().parts)
  }

  /// Every state of two whole searches (a TD's and a software-protected VM's) has its own
  /// digest: the parts cover everything that changes while threads run, so distinct states
  /// do not collide.
  @Test(arguments: ["two-zaps-on-track", "two-vcpus-same-page"])
  func distinctStatesHaveDistinctDigests(_ name: String) throws {
    let (program, start) = try Self.start(name)
    var seen: Set<Interleaving> = [start]
    var frontier = [start]
    while !frontier.isEmpty, seen.count < 1_500 {
      var next: [Interleaving] = []
      for s in frontier {
        for actor in s.actors(program) {
          let t = Self.run([actor], from: s, program)
          if seen.insert(t).inserted { next.append(t) }
        }
      }
      frontier = next
    }
    #expect(seen.count > 500)
    #expect(Set(seen.map { $0.digest().value }).count == seen.count)
  }

  /// Every state stored under one hash (the worst case) and enough of them to grow the table
  /// several times: each is found at its own index, and a state not stored is not found.
  @Test func collidingHashesAreToldApartByEqualityAcrossGrowth() throws {
    let (program, start) = try Self.start()
    var states = [start]
    var seen: Set<Interleaving> = [start]
    var frontier = [start]
    // Distinct states breadth first, until the table (1,024 slots at first, grown at half
    // full) has grown twice.
    while states.count < 1_100, !frontier.isEmpty {
      var next: [Interleaving] = []
      for s in frontier {
        for actor in s.actors(program) {
          let t = Self.run([actor], from: s, program)
          if seen.insert(t).inserted { states.append(t); next.append(t) }
        }
      }
      frontier = next
    }
    #expect(states.count > 1_024)
    var visited = VisitedSet()
    for i in states.indices { visited.insert(Int32(i), hash: 42) }
    for (i, s) in states.enumerated() where i % 97 == 0 {
      #expect(visited.index(of: s, hash: 42, in: states) == Int32(i))
    }
    #expect(visited.index(of: states[5], hash: 43, in: states) == nil)
    #expect(visited.count == states.count)
  }
}
