import DequeModule
import KernelCore
import Platform
import Scenarios

/// How far an exploration may go and how.
public struct ExploreOptions: Sendable {
  /// Stop once this many distinct states are known.
  public var maxStates = 5_000_000
  /// Expand no state deeper than this many steps after `steps`.
  public var maxDepth = 1_000_000
  /// Partial-order reduction (sleep sets over steps whose footprints do not conflict).
  public var reduction = true
  /// For every pair of steps the reduction takes as independent, check that they commute
  /// (both orders reach one state). For tests: it doubles the work.
  public var verifyIndependence = false
  /// Told about once a second.
  public var progress: (@Sendable (ExploreProgress) -> Void)?
  /// Search on after the first finding, to the end, and report a shortest counterexample for
  /// every invariant that breaks (and any deadlock or livelock), not only the first.
  public var allFindings = false
  /// Changes the machine after the scenario's steps, before the threads start: tests plant
  /// faults no scenario can make (a lock whose holder is gone) to see the search report them.
  var plant: (@Sendable (inout Machine) -> Void)?

  public init(maxStates: Int = 5_000_000, maxDepth: Int = 1_000_000, reduction: Bool = true,
              verifyIndependence: Bool = false, allFindings: Bool = false,
              progress: (@Sendable (ExploreProgress) -> Void)? = nil) {
    self.maxStates = maxStates; self.maxDepth = maxDepth; self.reduction = reduction
    self.verifyIndependence = verifyIndependence; self.allFindings = allFindings; self.progress = progress
  }
}

/// Where an exploration is.
public struct ExploreProgress: Sendable {
  public var states: Int
  public var distinctStates: Int
  public var depth: Int
  public var seconds: Double
}

/// Every interleaving of a scenario's `concurrent:` paths, after its `steps`, breadth first.
///
/// A state is the machine together with every thread (``Interleaving``); the visited set
/// knows each state by its index and its hash, computed once, part by part against the
/// state it came from (``InterleavingDigest``, ``VisitedSet``); states with equal hashes are
/// compared in full. From each state every actor that
/// can run takes one atomic region. After each new state the invariants that hold in every
/// state, and the history invariants, are checked; the quiescent ones where no thread is
/// inside a path. The first violation found breadth first has a shortest schedule. A state
/// where every thread with work left is blocked is a deadlock. Once the search is complete,
/// a set of states the threads can never leave while some thread has work left (a terminal
/// strongly connected component with a cycle) is a livelock.
///
/// Partial-order reduction: sleep sets. After exploring actor `a` from a state, a later
/// sibling's successor does not explore `a` again if `a`'s next step and the sibling's step
/// have footprints that do not conflict (``Footprint``): that interleaving reaches a state
/// already reached. Sleep sets prune transitions, never states: every reachable state is
/// still visited and checked, so the reduction is sound for every invariant.
public enum Explorer {
  public static func explore(_ scenario: Scenario, variant override: Variant? = nil,
                             options: ExploreOptions = ExploreOptions()) throws(ScenarioError) -> ExploreReport {
    let variant = ScenarioRunner.effectiveVariant(scenario, override: override)
    var search = try Search(scenario, variant: variant, options: options)
    return search.run()
  }
}

/// What an exploration found.
public struct ExploreReport: Codable, Sendable {
  public var scenario: String
  public var variant: String
  public var reduction: Bool
  /// States generated: the initial state and every successor computed, revisits included.
  public var states: Int
  /// Distinct states visited.
  public var distinctStates: Int
  /// Steps taken from state to state (each one atomic region of one thread).
  public var transitions: Int
  /// The longest schedule explored.
  public var maxDepth: Int
  public var seconds: Double
  /// Distinct states per second.
  public var statesPerSecond: Double
  /// Every reachable state was visited.
  public var complete: Bool
  /// The limit that stopped the search (`max-states`, `max-depth`), when one did.
  public var stoppedBy: String?
  /// The first finding: a shortest counterexample (with ``ExploreOptions/allFindings``, the
  /// shortest of ``findings``).
  public var finding: Finding?
  /// With ``ExploreOptions/allFindings``: one shortest counterexample per invariant broken
  /// (and per deadlock or livelock), shortest first. Otherwise ``finding`` alone, if any.
  public var findings: [Finding]

  /// 0 nothing found and complete; 1 a finding; 3 a limit stopped the search first.
  public var exitStatus: Int32 { finding != nil ? 1 : complete ? 0 : 3 }
}

/// A violated invariant, a deadlock, a livelock, or a bug of the model itself, with the
/// schedule that leads to it.
public struct Finding: Codable, Sendable {
  public enum Kind: String, Codable, Sendable {
    /// An invariant broke.
    case violation
    /// Every thread with work left waits for something no thread will do.
    case deadlock
    /// The threads cycle for ever and some never finishes.
    case livelock
    /// The model broke a lock rule of its own.
    case modelBug = "model-bug"
    /// The scenario's `steps` did not go as they expect.
    case steps
  }
  public var kind: Kind
  /// The invariant that broke (for a violation).
  public var invariant: String?
  public var message: String
  /// The actors to step, in order, after `steps` (a `schedule:` that `pmmio run` replays).
  public var schedule: [String]
  /// The schedule replayed with its trace: one entry per atomic region.
  public var steps: [CounterexampleStep]
  /// For a livelock, the 0-based index of the first step of the cycle.
  public var cycleStart: Int?
}

/// One atomic region of a counterexample.
public struct CounterexampleStep: Codable, Sendable {
  /// 1-based.
  public var index: Int
  public var thread: String
  /// The region, as the path names it (`fault: mmu_lock read, seq checked, install SPTE`).
  public var region: String
  public var events: [TraceLine]
  /// The operation that ended with this region, and its result.
  public var completed: String?
}

/// One breadth-first search.
struct Search {
  struct Node {
    var parent: Int32
    var actor: Actor?
    var depth: Int32
    /// The sleep set: actors whose next step need not be explored from this state.
    var sleep: [Actor]
    var expanded = false
  }

  let scenario: Scenario
  let variant: Variant
  let options: ExploreOptions
  let program: InterleavingProgram
  /// The initial interleaving with tracing on, for replays.
  let traced: Interleaving
  var states: [Interleaving] = []
  var nodes: [Node] = []
  /// Each state's digest, by index: a successor's is computed against its parent's.
  var digests: [InterleavingDigest] = []
  /// Which states are known, by index in `states`.
  var visited = VisitedSet()
  var successors: [[Int32]] = []
  var queue = Deque<Int32>()
  var generated = 1
  var transitions = 0
  var maxDepth = 0
  var stoppedBy: String?
  typealias Found = (node: Int32, kind: Finding.Kind, invariant: String?, message: String, extra: Actor?)
  /// The first finding (the search stops there), unless ``ExploreOptions/allFindings``.
  var finding: Found?
  /// With ``ExploreOptions/allFindings``: the shortest finding per invariant (or kind).
  var found: [String: Found] = [:]
  let clock = ContinuousClock()
  let started: ContinuousClock.Instant

  init(_ scenario: Scenario, variant: Variant, options: ExploreOptions) throws(ScenarioError) {
    self.scenario = scenario
    self.variant = variant
    self.options = options
    started = clock.now
    var machine: Machine
    do { machine = try Machine(configuration: scenario.machine, variant: variant) } catch { throw scenario.error(error) }
    _ = machine.trace.drain()
    var handles = HandleEnvironment()
    for vm in scenario.machine.vms { if let fd = machine.vmFD(named: vm.name) { handles.vmFDs[vm.name] = fd } }
    var stepsWrong: String?
    for step in scenario.steps {
      let result = machine.perform(step.operation(in: handles), context: .ioctl)
      if let name = step.binding { handles.bind(name, to: result) }
      if stepsWrong == nil, let expected = step.expectation, let mismatch = expected.mismatch(result) {
        stepsWrong = "\(step.position): step \(step.index) \(step.opName): \(mismatch)"
      }
    }
    options.plant?(&machine)
    _ = machine.trace.drain()
    let (program, start) = InterleavingProgram.start(scenario, machine: machine, handles: handles)
    self.program = program
    traced = start
    var initial = start
    initial.setTracing(false)
    initial.canonicalize()
    states = [initial]
    nodes = [Node(parent: -1, actor: nil, depth: 0, sleep: [])]
    successors = [[]]
    digests = [initial.digest()]
    visited.insert(0, hash: digests[0].value)
    queue.append(0)
    if let stepsWrong {
      finding = (0, .steps, nil, "the steps did not go as expected: \(stepsWrong)", nil)
    } else {
      _ = checkState(0, initial.machine, kinds: [.everyState, .quiescent, .history])
    }
  }

  /// Records a finding. - Returns: whether the search stops (it goes on only for `allFindings`).
  mutating func record(_ f: Found) -> Bool {
    guard options.allFindings, f.kind != .steps else {
      finding = f
      return true
    }
    let key = f.invariant ?? f.kind.rawValue
    if let old = found[key], depth(of: old) <= depth(of: f) { return false }
    found[key] = f
    return false
  }

  /// Checks the invariants of `kinds` in `machine`, reached at node `node` (by `extra` from it,
  /// for a transition's history), and records what breaks: the first violated invariant, or
  /// with `allFindings` every one. - Returns: whether the search stops.
  mutating func checkState(_ node: Int32, _ machine: Machine, kinds: InvariantKinds, extra: Actor? = nil) -> Bool {
    guard options.allFindings else {
      guard let violation = machine.firstViolation(of: kinds) else { return false }
      return record((node, .violation, violation.name, violation.violation ?? "", extra))
    }
    for check in machine.checkInvariants(of: kinds) {
      if let message = check.violation { _ = record((node, .violation, check.name, message, extra)) }
    }
    return false
  }

  mutating func run() -> ExploreReport {
    var lastProgress = clock.now
    while finding == nil, let i = queue.popFirst() {
      if nodes[Int(i)].depth >= options.maxDepth {
        stoppedBy = stoppedBy ?? "max-depth"
        continue
      }
      expand(i)
      if nodes.count >= options.maxStates, finding == nil {
        stoppedBy = "max-states"
        break
      }
      if let progress = options.progress, clock.now - lastProgress >= .seconds(1) {
        lastProgress = clock.now
        progress(ExploreProgress(states: generated, distinctStates: nodes.count, depth: maxDepth, seconds: seconds))
      }
    }
    // A re-expansion can put a shallower state behind deeper ones in the queue: expand what is
    // left that could still give a shorter counterexample, and keep the shortest.
    if !options.allFindings, var best = finding, best.kind != .steps {
      let pending = queue.filter { Int(nodes[Int($0)].depth) + 1 < depth(of: best) }
      queue.removeAll()
      for i in pending where Int(nodes[Int(i)].depth) + 1 < depth(of: best) {
        finding = nil
        expand(i)
        if let now = finding, depth(of: now) < depth(of: best) { best = now }
      }
      finding = best
    }
    let searched = finding == nil && stoppedBy == nil
    if searched { findLivelock() }
    let elapsed = seconds
    var findings: [Finding]
    if let finding {
      findings = [report(finding)]
    } else {
      findings = found.values.map(report)
        .sorted { ($0.steps.count, $0.invariant ?? $0.kind.rawValue) < ($1.steps.count, $1.invariant ?? $1.kind.rawValue) }
    }
    return ExploreReport(
      scenario: scenario.name, variant: variant.rawValue, reduction: options.reduction, states: generated,
      distinctStates: nodes.count, transitions: transitions, maxDepth: maxDepth, seconds: elapsed,
      statesPerSecond: elapsed > 0 ? Double(nodes.count) / elapsed : 0,
      complete: searched && (options.allFindings || finding == nil),
      stoppedBy: stoppedBy, finding: findings.first, findings: findings)
  }

  /// The length of the schedule that leads to a finding.
  func depth(of found: (node: Int32, kind: Finding.Kind, invariant: String?, message: String, extra: Actor?)) -> Int {
    Int(nodes[Int(found.node)].depth) + (found.extra == nil ? 0 : 1)
  }

  var seconds: Double {
    let (s, atto) = (clock.now - started).components
    return Double(s) + Double(atto) / 1e18
  }

  // MARK: Expansion

  /// Computes the successors of node `i`, except by actors in its sleep set.
  mutating func expand(_ i: Int32) {
    var s = states[Int(i)]
    let sleep = nodes[Int(i)].sleep
    nodes[Int(i)].expanded = true
    let actors = s.actors(program)
    let footprints = options.reduction ? actors.map { s.footprint(of: $0) } : []
    var explored: [(Actor, Footprint)] = []
    if options.reduction {
      for (k, a) in actors.enumerated() where sleep.contains(a) { explored.append((a, footprints[k])) }
    }
    var enabled = 0
    var independentPairs: [(Actor, Actor)] = []
    for (k, a) in actors.enumerated() where !sleep.contains(a) {
      var next = s
      var contention = Contention()
      switch next.step(a, program, contention: &contention) {
      case .blocked, .idle: continue
      case .modelBug(let violation):
        if record((i, .modelBug, nil, "\(program.name(of: a)): \(violation)", a)) { return }
        continue
      case .ran(_, let completed):
        enabled += 1
        generated += 1
        transitions += 1
        if let completed, case .failure(.lockViolation(let violation)) = completed.result {
          if record((i, .modelBug, nil, "\(program.name(of: a)): \(violation)", a)) { return }
          continue
        }
      }
      next.canonicalize()
      var childSleep: [Actor] = []
      if options.reduction {
        for (u, fu) in explored where fu.isIndependent(of: footprints[k]) {
          childSleep.append(u)
          if options.verifyIndependence, !sleep.contains(u) { independentPairs.append((u, a)) }
        }
        explored.append((a, footprints[k]))
      }
      // History invariants fire on the transition that does the harm: checked on every
      // successor, also one already visited.
      if checkState(i, next.machine, kinds: [.history], extra: a) { return }
      // Hashed once here, part by part against the parent: the visited set keeps the hash.
      let digest = next.digest(previous: &s, previousDigest: digests[Int(i)])
      let hash = digest.value
      if let j = visited.index(of: next, hash: hash, in: states) {
        successors[Int(i)].append(j)
        revisit(j, sleep: childSleep)
        continue
      }
      let j = Int32(nodes.count)
      let depth = nodes[Int(i)].depth + 1
      maxDepth = max(maxDepth, Int(depth))
      nodes.append(Node(parent: i, actor: a, depth: depth, sleep: childSleep))
      states.append(next)
      digests.append(digest)
      successors.append([])
      successors[Int(i)].append(j)
      visited.insert(j, hash: hash)
      if checkState(j, next.machine, kinds: next.isQuiescent ? [.everyState, .quiescent] : [.everyState]) { return }
      queue.append(j)
    }
    if options.verifyIndependence {
      for (u, a) in independentPairs where !commute(s, u, a) {
        let message = "the footprints of \(program.name(of: u)) and \(program.name(of: a)) say their steps commute, but they do not"
        if record((i, .modelBug, nil, message, nil)) { return }
      }
    }
    if enabled == 0, !actors.contains(where: sleep.contains), !s.isDone(program) {
      let waits = actors.compactMap { a -> String? in
        var probe = s
        var contention = Contention()
        if case .blocked(let wait) = probe.step(a, program, contention: &contention) { return "\(program.name(of: a)) waits for \(wait)" }
        return nil
      }
      _ = record((i, .deadlock, nil, "every thread with work left waits: " + waits.joined(separator: "; "), nil))
    }
  }

  /// State `j` was reached again with sleep set `sleep`: only what both sleep sets agree on
  /// stays asleep; if `j` was already expanded, what it skipped and must not is explored now.
  mutating func revisit(_ j: Int32, sleep: [Actor]) {
    let old = nodes[Int(j)].sleep
    guard !old.isEmpty else { return }
    let kept = old.filter(sleep.contains)
    guard kept.count != old.count else { return }
    nodes[Int(j)].sleep = kept
    if nodes[Int(j)].expanded { queue.append(j) }
  }

  /// Whether `u` then `a` and `a` then `u` from `s` reach one state.
  func commute(_ s: Interleaving, _ u: Actor, _ a: Actor) -> Bool {
    func run(_ first: Actor, _ second: Actor) -> Interleaving? {
      var state = s
      var contention = Contention()
      guard case .ran = state.step(first, program, contention: &contention),
            case .ran = state.step(second, program, contention: &contention) else { return nil }
      state.canonicalize()
      return state
    }
    guard let x = run(u, a), let y = run(a, u) else { return false }
    return x == y
  }

  // MARK: Livelocks

  /// After a complete search: a terminal strongly connected set of states with a cycle, where
  /// some thread still has work, is a livelock. Sleep sets leave out edges, so each candidate
  /// is checked by taking every actor's step from each of its states.
  mutating func findLivelock() {
    let components = stronglyConnectedComponents()
    var best: (entry: Int32, members: Set<Int32>)?
    for members in components {
      let set = Set(members)
      let cyclic = members.count > 1 || successors[Int(members[0])].contains(members[0])
      guard cyclic, !states[Int(members[0])].isDone(program) else { continue }
      guard members.allSatisfy({ member in successors[Int(member)].allSatisfy(set.contains) }) else { continue }
      guard members.allSatisfy({ fullSuccessors($0).allSatisfy(set.contains) }) else { continue }
      let entry = members.min { nodes[Int($0)].depth < nodes[Int($1)].depth }!
      if best.map({ nodes[Int(entry)].depth < nodes[Int($0.entry)].depth }) ?? true { best = (entry, set) }
    }
    guard let (entry, members) = best else { return }
    let cycle = cycleThrough(entry, within: members)
    livelockCycle = cycle
    _ = record((entry, .livelock, nil,
                "the threads can run for ever and never finish: \(cycle.count) step(s) lead back to the same state", nil))
  }

  var livelockCycle: [Actor] = []

  /// Every successor of node `i`, sleep sets ignored (states not yet visited are added).
  mutating func fullSuccessors(_ i: Int32) -> [Int32] {
    var out: [Int32] = []
    var parent = states[Int(i)]
    for (actor, var next) in allSteps(from: parent) {
      let digest = next.digest(previous: &parent, previousDigest: digests[Int(i)])
      let hash = digest.value
      if let j = visited.index(of: next, hash: hash, in: states) { out.append(j) } else {
        let j = Int32(nodes.count)
        nodes.append(Node(parent: i, actor: actor, depth: nodes[Int(i)].depth + 1, sleep: []))
        states.append(next)
        digests.append(digest)
        successors.append([])
        visited.insert(j, hash: hash)
        out.append(j)
      }
    }
    return out
  }

  /// Every actor's step from `s` that runs, with the state it reaches.
  func allSteps(from s: Interleaving) -> [(Actor, Interleaving)] {
    s.actors(program).compactMap { a in
      var next = s
      var contention = Contention()
      guard case .ran = next.step(a, program, contention: &contention) else { return nil }
      next.canonicalize()
      return (a, next)
    }
  }

  /// A shortest schedule from `entry` back to itself inside `members`.
  func cycleThrough(_ entry: Int32, within members: Set<Int32>) -> [Actor] {
    var parent: [Int32: (Int32, Actor)] = [:]
    var frontier: Deque<Int32> = [entry]
    while let i = frontier.popFirst() {
      var from = states[Int(i)]
      for (actor, var next) in allSteps(from: from) {
        let hash = next.digest(previous: &from, previousDigest: digests[Int(i)]).value
        guard let j = visited.index(of: next, hash: hash, in: states), members.contains(j) else { continue }
        if j == entry {
          var path = [actor]
          var k = i
          while k != entry, let (p, a) = parent[k] { path.append(a); k = p }
          return path.reversed()
        }
        if parent[j] == nil { parent[j] = (i, actor); frontier.append(j) }
      }
    }
    return []
  }

  /// Tarjan's algorithm over the recorded edges, iteratively.
  func stronglyConnectedComponents() -> [[Int32]] {
    let n = nodes.count
    var order = [Int32](repeating: -1, count: n), low = [Int32](repeating: 0, count: n)
    var onStack = [Bool](repeating: false, count: n)
    var stack: [Int32] = []
    var components: [[Int32]] = []
    var counter: Int32 = 0
    for root in 0 ..< n where order[root] < 0 {
      var work: [(node: Int32, edge: Int)] = [(Int32(root), 0)]
      order[root] = counter; low[root] = counter; counter += 1
      stack.append(Int32(root)); onStack[root] = true
      while let (v, e) = work.last {
        let edges = successors[Int(v)]
        if e < edges.count {
          work[work.count - 1].edge += 1
          let w = edges[e]
          if order[Int(w)] < 0 {
            order[Int(w)] = counter; low[Int(w)] = counter; counter += 1
            stack.append(w); onStack[Int(w)] = true
            work.append((w, 0))
          } else if onStack[Int(w)] {
            low[Int(v)] = min(low[Int(v)], order[Int(w)])
          }
          continue
        }
        work.removeLast()
        if let parent = work.last?.node { low[Int(parent)] = min(low[Int(parent)], low[Int(v)]) }
        if low[Int(v)] == order[Int(v)] {
          var component: [Int32] = []
          while let w = stack.popLast() {
            onStack[Int(w)] = false
            component.append(w)
            if w == v { break }
          }
          components.append(component)
        }
      }
    }
    return components
  }

  // MARK: Counterexamples

  /// The actors from the initial state to node `i`.
  func schedule(to i: Int32) -> [Actor] {
    var out: [Actor] = []
    var k = i
    while let actor = nodes[Int(k)].actor { out.append(actor); k = nodes[Int(k)].parent }
    return out.reversed()
  }

  func report(_ found: (node: Int32, kind: Finding.Kind, invariant: String?, message: String, extra: Actor?)) -> Finding {
    var actors = schedule(to: found.node)
    if let extra = found.extra { actors.append(extra) }
    var cycleStart: Int?
    if found.kind == .livelock {
      cycleStart = actors.count
      actors += livelockCycle
    }
    return Finding(kind: found.kind, invariant: found.invariant, message: found.message,
                   schedule: actors.map { program.name(of: $0) }, steps: replay(actors), cycleStart: cycleStart)
  }

  /// Runs `actors` from the initial state with tracing on: each region's label and events.
  func replay(_ actors: [Actor]) -> [CounterexampleStep] {
    var state = traced
    var out: [CounterexampleStep] = []
    for (n, actor) in actors.enumerated() {
      var contention = Contention()
      let step = state.step(actor, program, contention: &contention)
      let events = state.drainTrace().map(TraceLine.init)
      var region = "?"
      var completed: String?
      switch step {
      case .ran(let label, let done):
        region = label.map { "\($0)" } ?? "finish"
        completed = done.map { "\($0.step.opName) = \(ResultText.describe($0.result))" }
      case .blocked(let wait): region = "blocked: \(wait)"
      case .idle: region = "nothing to do"
      case .modelBug(let violation): region = "model bug: \(violation)"
      }
      out.append(CounterexampleStep(index: n + 1, thread: program.name(of: actor), region: region, events: events,
                                    completed: completed))
      state.canonicalize()
    }
    return out
  }
}
