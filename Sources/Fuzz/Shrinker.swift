import KernelCore
import Platform
import Scenarios

/// Makes a failing program small: removes steps (chunks, then one at a time), simplifies
/// arguments toward their defaults and zero, and shrinks the machine (devices and VMs no step
/// needs, BARs, sizes, TDISP, the host), keeping each change that still fails the same way
/// (``FuzzFailure/signature``). Repeats until nothing more goes.
public struct Shrinker {
  /// Runs a candidate: its failure, or `nil` when it passes (or cannot run).
  public typealias Evaluate = (FuzzProgram) -> FuzzFailure?

  let evaluate: Evaluate
  let signature: String
  /// Candidates tried so far.
  public private(set) var tries = 0
  /// Candidates at most: shrinking is best effort, and this bounds its time, not a verdict.
  public let budget: Int
  /// Whether the host's capabilities may be made typical: not for the oracle, whose model must
  /// keep the running kernel's host.
  public var shrinksHost = true

  public init(signature: String, budget: Int = 20_000, evaluate: @escaping Evaluate) {
    self.signature = signature; self.budget = budget; self.evaluate = evaluate
  }

  /// The smallest program found that fails as `program` does, and its failure.
  public mutating func shrink(_ program: FuzzProgram, _ failure: FuzzFailure) -> (FuzzProgram, FuzzFailure) {
    var best = truncated(program, failure)
    var bestFailure = failure
    func attempt(_ candidate: FuzzProgram) -> Bool {
      guard tries < budget, candidate != best else { return false }
      tries += 1
      guard let f = evaluate(candidate), f.signature == signature else { return false }
      best = truncated(candidate, f)
      bestFailure = f
      return true
    }
    var changed = true
    while changed && tries < budget {
      changed = false
      // Steps: chunks of halving size, then single steps, from the end (later steps depend on
      // earlier ones more than the other way round).
      var chunk = max(1, best.steps.count / 2)
      while chunk >= 1 {
        var start = best.steps.count - chunk
        while start >= 0 {
          var candidate = best
          let end = min(start + chunk, candidate.steps.count)
          if start < end {
            candidate.steps.removeSubrange(start ..< end)
            if attempt(candidate) { changed = true }
          }
          start -= chunk
        }
        chunk /= 2
      }
      // Concurrent paths: whole paths, single steps, schedule entries.
      for p in best.concurrent.indices.reversed() where p < best.concurrent.count {
        if attempt(Self.removingPath(p, from: best)) { changed = true; continue }
        for s in best.concurrent[p].indices.reversed() where p < best.concurrent.count && s < best.concurrent[p].count && best.concurrent[p].count > 1 {
          var candidate = best
          candidate.concurrent[p].remove(at: s)
          if attempt(candidate) { changed = true }
        }
      }
      if let schedule = best.schedule {
        var chunk = max(1, schedule.count / 2)
        while chunk >= 1 {
          var start = (best.schedule?.count ?? 0) - chunk
          while start >= 0 {
            var candidate = best
            if let s = candidate.schedule, start < s.count {
              candidate.schedule!.removeSubrange(start ..< min(start + chunk, s.count))
              if attempt(candidate) { changed = true }
            }
            start -= chunk
          }
          chunk /= 2
        }
      }
      // Arguments, each key of each step in turn, every candidate made from the step as it is
      // now (one made before another key changed would undo that change).
      for i in best.steps.indices {
        guard let spec = OpSpec.named(best.steps[i].op) else { continue }
        for key in spec.keys {
          for value in Self.simpler(best.steps[i], key: key) {
            var program = best
            program.steps[i].arguments[key.name] = value
            if attempt(program) { changed = true; break }
          }
        }
      }
      for p in best.concurrent.indices {
        for s in best.concurrent[p].indices {
          guard let spec = OpSpec.named(best.concurrent[p][s].op) else { continue }
          for key in spec.keys {
            for value in Self.simpler(best.concurrent[p][s], key: key) {
              var program = best
              program.concurrent[p][s].arguments[key.name] = value
              if attempt(program) { changed = true; break }
            }
          }
        }
      }
      // The machine.
      for candidate in Self.smallerMachines(best) where shrinksHost || candidate.machine.host == best.machine.host {
        if attempt(candidate) { changed = true }
      }
    }
    return (best, bestFailure)
  }

  /// Without the steps after the failing one (a failure in the concurrent part keeps them all).
  func truncated(_ program: FuzzProgram, _ failure: FuzzFailure) -> FuzzProgram {
    guard program.concurrent.isEmpty, failure.step + 1 < program.steps.count else { return program }
    var p = program
    p.steps.removeSubrange((failure.step + 1)...)
    return p
  }

  /// `program` without concurrent path `p`: its schedule entries go, later paths' move down.
  static func removingPath(_ p: Int, from program: FuzzProgram) -> FuzzProgram {
    var candidate = program
    candidate.concurrent.remove(at: p)
    candidate.schedule = program.schedule?.compactMap { token in
      guard token.hasPrefix("#"), let n = Int(token.dropFirst()) else { return token }
      if n == p { return nil }
      return n > p ? "#\(n - 1)" : token
    }
    if candidate.concurrent.isEmpty { candidate.schedule = nil }
    return candidate
  }

  /// Simpler values for `key` of `step`, simplest first: its default, zero and smaller
  /// numbers, fewer ranges; `nil` (absent) for an optional key. Never a value that is not
  /// simpler, so shrinking cannot go round in circles.
  static func simpler(_ step: FuzzStep, key: KeySpec) -> [ArgumentValue?] {
    guard key.kind != .binding, let value = step.arguments[key.name] else { return [] }
    var values: [ArgumentValue?] = []
    switch key.requirement {
    case .defaulted(let d, _):
      if d == value { return [] }
      values.append(d)
    case .optional: values.append(nil)
    case .required: break
    }
    switch value {
    case .number(let n):
      values += [0, 1, 0x1000, n / 2 & ~0xFFF, n & ~0xFFF].filter { $0 < n }.map { .number($0) }
    case .bool(true) where key.requirement == .optional || key.requirement == .required:
      values.append(.bool(false))
    case .ranges(let rs):
      if rs.count > 1 { for i in rs.indices { var r = rs; r.remove(at: i); values.append(.ranges(r)) } }
      let plain = rs.map { DmaRange(offset: 0, length: min($0.length, 0x1000)) }
      if plain != rs { values.append(.ranges(plain)) }
    case .numbers(let ns):
      if !ns.isEmpty { values.append(.numbers(Array(ns.dropLast()))) }
    case .string(let s):
      if case .choice(let words) = key.kind, let first = words.first, first != s { values.append(.string(first)) }
    default:
      break
    }
    var seen: Set<ArgumentValue?> = [value]
    return values.filter { seen.insert($0).inserted }
  }

  /// Smaller machines for `program`: devices no step names, VMs (their names become fd -1),
  /// BARs, smaller BARs, no TDISP, the typical host.
  static func smallerMachines(_ program: FuzzProgram) -> [FuzzProgram] {
    var out: [FuzzProgram] = []
    let m = program.machine
    let allSteps = program.steps + program.concurrent.flatMap { $0 }
    let namedDevices = Set(allSteps.flatMap { step in
      step.arguments.compactMap { key, value -> String? in
        guard key == "device", case .string(let s) = value else { return nil }
        return s
      }
    })
    for (i, d) in m.devices.enumerated() where !namedDevices.contains(d.name) {
      var p = program
      p.machine.devices.remove(at: i)
      out.append(p)
    }
    for (i, vm) in m.vms.enumerated() {
      var p = program
      p.machine.vms.remove(at: i)
      func unname(_ s: FuzzStep) -> FuzzStep {
        var s = s
        for (k, v) in s.arguments where v == .handle(.name(vm.name)) { s.arguments[k] = .handle(.literal(-1)) }
        return s
      }
      p.steps = p.steps.map(unname)
      p.concurrent = p.concurrent.map { $0.map(unname) }
      out.append(p)
      if vm.type != .default {
        var q = program
        q.machine.vms[i].type = .default
        out.append(q)
      }
    }
    for (i, d) in m.devices.enumerated() {
      if d.tdisp {
        var p = program
        p.machine.devices[i].tdisp = false
        out.append(p)
      }
      for (b, bar) in d.bars.enumerated() {
        if d.bars.count > 1 {
          var p = program
          p.machine.devices[i].bars.remove(at: b)
          out.append(p)
        }
        if bar.size > 0x1000 {
          var p = program
          p.machine.devices[i].bars[b].size = bar.size / 2
          out.append(p)
          var q = program
          q.machine.devices[i].bars[b].size = 0x1000
          q.machine.devices[i].bars[b].msixTable = nil
          out.append(q)
        }
        if bar.msixTable != nil || !bar.prefetchable || !bar.is64Bit {
          var p = program
          p.machine.devices[i].bars[b] = BARConfiguration(index: bar.index, size: bar.size)
          out.append(p)
        }
      }
    }
    if m.host != .typical {
      var p = program
      p.machine.host = .typical
      out.append(p)
    }
    return out
  }
}
