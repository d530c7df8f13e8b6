import KernelCore
import KVM
import Platform
import Scenarios
import TDX

/// Writes fuzz programs as scenarios (format version 1) that `pmmio run` replays: the same
/// keys, the same names, the same defaults as a person would write.
public enum FuzzScenarioText {
  /// The whole scenario. `expect` is put on step `failingStep` (an index into `steps`), and
  /// `comments` go at the top, each as a `#` line.
  public static func scenario(_ program: FuzzProgram, name: String, variant: Variant,
                              comments: [String] = [], failingStep: Int? = nil, expect: String? = nil) -> String {
    var lines = comments.map { "# " + $0 }
    lines.append("name: \(name)")
    lines.append("variant: \(variant.rawValue)")
    lines += machine(program.machine)
    var bound = Set(program.machine.vms.map(\.name))
    if program.steps.isEmpty {
      lines.append("steps: []")
    } else {
      lines.append("steps:")
      for (i, step) in program.steps.enumerated() {
        var text = flow(step, names: bound)
        if i == failingStep, let expect { text = String(text.dropLast(2)) + ", expect: \(expect) }" }
        lines.append("  - " + text)
        if let b = step.binding { bound.insert(b) }
      }
    }
    if !program.concurrent.isEmpty {
      lines.append("concurrent:")
      for path in program.concurrent {
        var pathBound = bound
        var items: [String] = []
        for step in path {
          items.append(flow(step, names: pathBound))
          if let b = step.binding { pathBound.insert(b) }
        }
        lines.append("  - [ " + items.joined(separator: ", ") + " ]")
      }
    }
    if let schedule = program.schedule {
      lines.append("schedule: [\(schedule.joined(separator: ", "))]")
    }
    return lines.joined(separator: "\n") + "\n"
  }

  /// `machine:` with its devices, VMs and (when not the typical one) host.
  static func machine(_ m: MachineConfiguration) -> [String] {
    var lines: [String] = []
    guard !m.devices.isEmpty || !m.vms.isEmpty || m.host != .typical else { return lines }
    lines.append("machine:")
    if !m.devices.isEmpty {
      lines.append("  devices:")
      for d in m.devices {
        let bars = d.bars.map { bar -> String in
          var fields = ["index: \(bar.index)", "size: \(hex(bar.size))"]
          if !bar.is64Bit { fields.append("is64: false") }
          if !bar.prefetchable { fields.append("prefetchable: false") }
          if let t = bar.msixTable { fields.append("msix_table: [\(hex(t.offset)), \(hex(t.length))]") }
          if let p = bar.msixPBA { fields.append("msix_pba: [\(hex(p.offset)), \(hex(p.length))]") }
          return "{ " + fields.joined(separator: ", ") + " }"
        }
        lines.append("    - { name: \(d.name), bars: [ \(bars.joined(separator: ", ")) ]\(d.tdisp ? ", tdisp: true" : "") }")
      }
    }
    if !m.vms.isEmpty {
      lines.append("  vms:")
      for vm in m.vms { lines.append("    - { name: \(vm.name), type: \(vm.type.rawValue) }") }
    }
    if m.host != .typical {
      let types = VMType.allCases.filter { m.host.vmTypes.contains($0) }.map(\.description)
      lines.append("  host: { smm: \(m.host.smm), maxphyaddr: \(m.host.maxPhysAddr), vm_types: [\(types.joined(separator: ", "))], "
                   + "memory_attributes: \(m.host.memoryAttributes) }")
    }
    return lines
  }

  /// One step in flow style. A name not in `names` (its step was removed, or it is unknown)
  /// is written as the fd it resolves to, `-1`; `names` nil writes every name as it is.
  public static func flow(_ step: FuzzStep, names: Set<String>?) -> String {
    var fields = ["op: \(step.op)"]
    guard let spec = OpSpec.named(step.op) else { return "{ " + fields.joined(separator: ", ") + " }" }
    for key in spec.keys where key.kind != .binding {
      guard let value = step.arguments[key.name] else { continue }
      if case .defaulted(let d, _) = key.requirement, d == value { continue }
      fields.append("\(key.name): \(text(value, kind: key.kind, names: names))")
    }
    if let b = step.binding { fields.append("as: \(b)") }
    return "{ " + fields.joined(separator: ", ") + " }"
  }

  static func text(_ value: ArgumentValue, kind: ArgumentKind, names: Set<String>?) -> String {
    switch value {
    case .number(let n):
      if kind == .memoryFlags, n != 0, n <= UInt64(UInt32.max) {
        let known = MemoryFlag.allCases.filter { UInt64($0.bit) & n != 0 }
        if known.reduce(0, { $0 | UInt64($1.bit) }) == n { return "[" + known.map(\.rawValue).joined(separator: ", ") + "]" }
      }
      return number(n)
    case .bool(let b): return b ? "true" : "false"
    case .string(let s): return word(s)
    case .handle(.literal(let n)): return "\(n)"
    case .handle(.name(let n)):
      if let names, !names.contains(n) { return "-1" }
      return n
    case .ranges(let ranges): return "[" + ranges.map { "[\(hex($0.offset)), \(hex($0.length))]" }.joined(separator: ", ") + "]"
    case .numbers(let ns): return "[" + ns.map(number).joined(separator: ", ") + "]"
    }
  }

  /// Small numbers in decimal, others in hex, as the examples write them.
  static func number(_ n: UInt64) -> String { n < 0x1000 ? "\(n)" : hex(n) }
  static func hex(_ n: UInt64) -> String { "0x" + String(n, radix: 16) }

  /// A plain YAML word, or a double-quoted string when it needs one.
  static func word(_ s: String) -> String {
    let plain = !s.isEmpty && s.unicodeScalars.allSatisfy { ($0.properties.isAlphabetic && $0.isASCII) || ("0" ... "9").contains($0) || "_-.".unicodeScalars.contains($0) }
      && !["true", "false", "null", "yes", "no", "on", "off", "~"].contains(s.lowercased())
      && !(s.first.map { $0.isNumber || $0 == "-" || $0 == "." } ?? false)
    if plain { return s }
    return "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
  }

  /// `expect:` for what a step returned, as precisely as the scenario format can say it.
  public static func expectation(_ result: OpResult) -> String {
    switch result {
    case .success(.pfn(let pfn, let order)): return "{ pfn: \(hex(pfn.rawValue)), order: \(order) }"
    case .success(.read(let v)): return "{ value: \(number(v)) }"
    case .success(.tdiState(let s)): return "{ state: \(s) }"
    case .success(.guestAccess(let s, let value)):
      guard FaultOutcome(rawValue: s) != nil else { return "ok" }
      return value.map { "{ fault: \(s), value: \(number($0)) }" } ?? "{ fault: \(s) }"
    case .success: return "ok"
    case .failure(.errno(let e)): return Errno(name: e.name) != nil ? "{ errno: \(e.name) }" : "error"
    case .failure(.memoryFault(let exit)):
      return "{ memory_fault: { flags: [\(MemoryFaultExpectation.names(exit.flags).joined(separator: ", "))], "
        + "gpa: \(hex(exit.gpa)), size: \(hex(exit.size)), errno: \(exit.errno.name) } }"
    case .failure(.tdx(let s)): return TDXStatus(name: s.name) != nil ? "{ tdx: \(s.name) }" : "error"
    case .failure(.tdisp(_, let name)): return TDISPErrorName.isKnown(name) ? "{ tdisp: \(name) }" : "error"
    case .failure: return "error"
    }
  }
}
