import KernelCore
import KVM
import Platform
import TDX
import Yams

/// Reads a scenario (format version 1, see DESIGN.md "Scenario format") from YAML.
///
/// Every problem is a ``ScenarioError`` with the `file:line:column` of the node at fault:
/// malformed YAML (Yams' own position), unknown keys and ops, missing keys, wrong types, bad
/// numbers, unknown errno / TDX status / TDISP names, unknown devices, names used before an
/// `as:` bound them, and names bound twice. Nothing here traps on input.
public enum ScenarioParser {
  /// Top-level keys, in the order the format documents them.
  public static let topLevelKeys = ["name", "variant", "machine", "steps", "concurrent", "schedule"]

  /// Parses `yaml`; `file` is only used in positions (`<builtin>` for embedded scenarios).
  public static func parse(_ yaml: String, file: String) throws(ScenarioError) -> Scenario {
    let root: Node?
    do {
      root = try Yams.compose(yaml: yaml)
    } catch {
      throw yamlError(error, file: file, yaml: yaml)
    }
    var reader = ScenarioReader(file: file)
    guard let root else {
      throw ScenarioError(SourcePosition(file: file, line: 1, column: 1), "empty scenario: expected a mapping with 'steps'")
    }
    return try reader.scenario(root)
  }

  /// Turns a Yams failure into a positioned error.
  static func yamlError(_ error: any Error, file: String, yaml: String) -> ScenarioError {
    func at(_ mark: Mark) -> SourcePosition { SourcePosition(file: file, line: mark.line, column: mark.column) }
    guard let error = error as? YamlError else {
      return ScenarioError(SourcePosition(file: file, line: 1, column: 1), "malformed YAML: \(error)")
    }
    switch error {
    case .scanner(let context, let problem, let mark, _),
         .parser(let context, let problem, let mark, _),
         .composer(let context, let problem, let mark, _):
      let while_ = context.map { " (\($0.text) at \($0.mark.line):\($0.mark.column))" } ?? ""
      return ScenarioError(at(mark), "malformed YAML: \(problem)\(while_)")
    case .duplicatedKeysInMapping(let duplicates, let context):
      let keys = duplicates.map { "'\($0)'" }.joined(separator: ", ")
      return ScenarioError(at(context.mark), "duplicate key \(keys) in mapping")
    case .reader(let problem, let offset, _, _):
      // The reader reports a byte offset; count lines up to it for a position.
      let prefix = yaml.utf8.prefix(offset ?? 0)
      let line = prefix.reduce(1) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
      let column = prefix.reversed().prefix { $0 != UInt8(ascii: "\n") }.count + 1
      return ScenarioError(SourcePosition(file: file, line: line, column: column), "malformed YAML: \(problem)")
    default:
      return ScenarioError(SourcePosition(file: file, line: 1, column: 1), "malformed YAML: \(error)")
    }
  }
}

/// The parser's state: the file name for positions and the names bound so far.
struct ScenarioReader {
  let file: String
  /// In file order, for messages; the sets answer "is it known" in O(1).
  var deviceNames: [String] = []
  var vmNames: [String] = []
  var knownDevices: Set<String> = []
  var knownVMs: Set<String> = []
  /// Every `as:` name in the file, for the duplicate check.
  var everyBinding: Set<String> = []
  var stepCount = 0
  /// Where each device, BAR and VM is written.
  var machinePositions = MachinePositions()

  init(file: String) { self.file = file }

  func position(_ node: Node) -> SourcePosition {
    guard let mark = node.mark else { return SourcePosition(file: file, line: 1, column: 1) }
    return SourcePosition(file: file, line: mark.line, column: mark.column)
  }

  func fail(_ node: Node, _ message: String) -> ScenarioError { ScenarioError(position(node), message) }

  /// `unknown errno 'EINVL': did you mean 'EINVAL'?`, with the known words listed when they
  /// are few enough to read.
  func unknown(_ node: Node, _ what: String, _ word: String, among known: [String], list: Bool = true) -> ScenarioError {
    let hint = Suggestion.closest(to: word, among: known).map { ": did you mean '\($0)'?" } ?? ""
    let expected = list && known.count <= 12 ? " (expected: \(known.joined(separator: ", ")))" : ""
    return fail(node, "unknown \(what) '\(word)'\(hint)\(expected)")
  }

  // MARK: Shapes

  static func shape(_ node: Node) -> String {
    switch node {
    case .scalar(let s): "'\(s.string)'"
    case .mapping: "a mapping"
    case .sequence: "a list"
    case .alias: "an alias"
    }
  }

  /// The mapping's entries by key, rejecting keys not in `allowed`.
  func entries(_ node: Node, what: String, allowed: [String]) throws(ScenarioError) -> [(key: String, keyNode: Node, value: Node)] {
    guard case .mapping(let mapping) = node else {
      throw fail(node, "\(what) must be a mapping, found \(Self.shape(node))")
    }
    var result: [(key: String, keyNode: Node, value: Node)] = []
    for (keyNode, value) in mapping {
      guard case .scalar(let key) = keyNode else { throw fail(keyNode, "\(what): keys must be words") }
      guard allowed.contains(key.string) else {
        let hint = Suggestion.closest(to: key.string, among: allowed).map { ": did you mean '\($0)'?" } ?? ""
        throw fail(keyNode, "unknown key '\(key.string)' in \(what)\(hint) (expected: \(allowed.joined(separator: ", ")))")
      }
      result.append((key.string, keyNode, value))
    }
    return result
  }

  func value(_ entries: [(key: String, keyNode: Node, value: Node)], _ key: String) -> Node? {
    entries.first { $0.key == key }?.value
  }

  func required(_ entries: [(key: String, keyNode: Node, value: Node)], _ key: String, in node: Node, what: String) throws(ScenarioError) -> Node {
    guard let value = value(entries, key) else { throw fail(node, "missing key '\(key)' in \(what)") }
    return value
  }

  func string(_ node: Node, key: String) throws(ScenarioError) -> String {
    guard case .scalar(let s) = node, !s.string.isEmpty else {
      throw fail(node, "'\(key)' must be a word, found \(Self.shape(node))")
    }
    return s.string
  }

  func list(_ node: Node, key: String) throws(ScenarioError) -> [Node] {
    guard case .sequence(let s) = node else { throw fail(node, "'\(key)' must be a list, found \(Self.shape(node))") }
    return Array(s)
  }

  /// Decimal or 0x-hex, underscores allowed between digits: `0x8000_0000`, `4096`.
  static func parseNumber(_ text: String) -> UInt64? {
    let digits = text.replacingOccurrences(of: "_", with: "")
    guard !digits.isEmpty, !text.hasPrefix("_"), !text.hasSuffix("_") else { return nil }
    if digits.hasPrefix("0x") || digits.hasPrefix("0X") {
      let hex = digits.dropFirst(2)
      guard !hex.isEmpty, hex.allSatisfy(\.isHexDigit) else { return nil }
      return UInt64(hex, radix: 16)
    }
    guard digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
    return UInt64(digits, radix: 10)
  }

  func number(_ node: Node, key: String, max: UInt64 = .max) throws(ScenarioError) -> UInt64 {
    guard case .scalar(let s) = node else {
      throw fail(node, "'\(key)' must be a number, found \(Self.shape(node))")
    }
    guard let n = Self.parseNumber(s.string) else {
      throw fail(node, "bad number '\(s.string)' for '\(key)' (decimal or 0x-hex)")
    }
    guard n <= max else { throw fail(node, "'\(key)' is \(s.string), past its maximum 0x\(String(max, radix: 16))") }
    return n
  }

  func bool(_ node: Node, key: String) throws(ScenarioError) -> Bool {
    guard case .scalar(let s) = node, s.string == "true" || s.string == "false" else {
      throw fail(node, "'\(key)' must be true or false, found \(Self.shape(node))")
    }
    return s.string == "true"
  }

  /// A `[offset, size]` pair.
  func pair(_ node: Node, key: String) throws(ScenarioError) -> DmaRange {
    let items = try list(node, key: key)
    guard items.count == 2 else { throw fail(node, "'\(key)' must be [offset, length], found \(items.count) items") }
    return DmaRange(offset: try number(items[0], key: key), length: try number(items[1], key: key))
  }

  // MARK: Top level

  mutating func scenario(_ root: Node) throws(ScenarioError) -> Scenario {
    let top = try entries(root, what: "the scenario", allowed: ScenarioParser.topLevelKeys)
    let name = try value(top, "name").map { node throws(ScenarioError) in try string(node, key: "name") }
      ?? defaultName
    var variant: Variant?
    if let node = value(top, "variant") {
      let text = try string(node, key: "variant")
      guard let v = Variant(rawValue: text) else {
        throw unknown(node, "variant", text, among: Variant.allCases.map(\.rawValue))
      }
      variant = v
    }
    var machine = MachineConfiguration()
    var machinePosition = position(root)
    if let entry = top.first(where: { $0.key == "machine" }) {
      machinePosition = position(entry.keyNode)
      machine = try machineConfiguration(entry.value)
    }
    var bound: [String: BindingKind] = [:]
    var steps: [ScenarioStep] = []
    if let node = value(top, "steps") {
      for item in try list(node, key: "steps") {
        steps.append(try step(item, path: .main, bound: &bound))
      }
    }
    var concurrent: [[ScenarioStep]] = []
    if let node = value(top, "concurrent") {
      for (n, pathNode) in try list(node, key: "concurrent").enumerated() {
        // A path sees the names `steps` bound and its own, never another path's: under
        // `explore` the other path may not have run yet.
        var pathBound = bound
        var path: [ScenarioStep] = []
        for item in try list(pathNode, key: "concurrent path") {
          path.append(try step(item, path: .concurrent(n), bound: &pathBound))
        }
        concurrent.append(path)
      }
      try checkOneRunPerVCPU(concurrent)
    }
    var scenario = Scenario(name: name, variant: variant, machine: machine, machinePosition: machinePosition,
                            steps: steps, concurrent: concurrent, machinePositions: machinePositions)
    if let node = value(top, "schedule") {
      let threads = concurrent.indices.map { scenario.threadName(for: .concurrent($0)) }
      var schedule: [ScheduleEntry] = []
      for item in try list(node, key: "schedule") {
        let actor = try string(item, key: "schedule")
        guard threads.contains(actor) || ScheduleEntry.isIPI(actor) else {
          throw unknown(item, "thread", actor, among: threads + ["vcpuN.ipi"])
        }
        schedule.append(ScheduleEntry(actor: actor, position: position(item)))
      }
      scenario.schedule = schedule
      // Under a schedule a step that never finishes has no result to judge: what the schedule
      // leaves running that livelocks or deadlocks fails the run as such.
      for step in concurrent.joined() {
        if let expected = step.expectation, expected == .livelock || expected == .deadlock {
          throw ScenarioError(step.position, "expect: \(expected) cannot be judged under a schedule: the step never finishes, "
                              + "so it has no result (what the schedule leaves livelocking or deadlocking fails the run); "
                              + "without schedule: pmmio run runs the paths one after another")
        }
      }
    }
    return scenario
  }

  /// Two concurrent paths may not both run guest ops on one vCPU: `kvm_vcpu_ioctl()` holds
  /// `vcpu->mutex` across `KVM_RUN`, so a vCPU runs one path's ops at a time, and the model's
  /// vCPU threads are one per vCPU. Ops meant to run one after another on one vCPU belong in
  /// one path.
  func checkOneRunPerVCPU(_ concurrent: [[ScenarioStep]]) throws(ScenarioError) {
    var owner: [String: Int] = [:]
    for (n, path) in concurrent.enumerated() {
      for step in path {
        guard let vcpu = step.guestVCPU else { continue }
        let vm: String = if case .handle(let h)? = step.arguments["vm"] { "\(h)" } else { "?" }
        let key = "vcpu \(vcpu) of \(vm)"
        if let other = owner[key], other != n {
          throw ScenarioError(step.position, "concurrent paths \(other + 1) and \(n + 1) both run guest ops on \(key): "
                              + "a vCPU runs one KVM_RUN at a time (kvm_vcpu_ioctl holds vcpu->mutex); put these ops in one path")
        }
        owner[key] = n
      }
    }
  }

  var defaultName: String {
    let base = file.split(separator: "/").last.map(String.init) ?? file
    if let dot = base.lastIndex(of: "."), dot != base.startIndex { return String(base[..<dot]) }
    return base
  }

  // MARK: machine:

  mutating func machineConfiguration(_ node: Node) throws(ScenarioError) -> MachineConfiguration {
    let top = try entries(node, what: "machine", allowed: ["devices", "vms", "host"])
    var host = HostCapabilities.typical
    if let hostNode = value(top, "host") { host = try hostCapabilities(hostNode) }
    var devices: [DeviceConfiguration] = []
    if let list = value(top, "devices") {
      for item in try self.list(list, key: "devices") {
        let device = try deviceConfiguration(item)
        guard knownDevices.insert(device.name).inserted else { throw fail(item, "duplicate device name '\(device.name)'") }
        deviceNames.append(device.name)
        devices.append(device)
        machinePositions.devices.append(position(item))
      }
    }
    var vms: [VMConfiguration] = []
    if let list = value(top, "vms") {
      for item in try self.list(list, key: "vms") {
        let fields = try entries(item, what: "a VM", allowed: ["name", "type"])
        let name = try string(try required(fields, "name", in: item, what: "a VM"), key: "name")
        var type = VMTypeName.default
        if let typeNode = value(fields, "type") {
          let text = try string(typeNode, key: "type")
          guard let t = VMTypeName(rawValue: text) else {
            throw unknown(typeNode, "VM type", text, among: VMTypeName.allCases.map(\.rawValue))
          }
          type = t
        }
        guard knownVMs.insert(name).inserted else { throw fail(item, "duplicate VM name '\(name)'") }
        vmNames.append(name)
        vms.append(VMConfiguration(name: name, type: type))
        machinePositions.vms.append(position(item))
      }
    }
    return MachineConfiguration(devices: devices, vms: vms, host: host)
  }

  /// `machine: host: { smm: false, maxphyaddr: 46, vm_types: [default, tdx], memory_attributes: true }`:
  /// what the host's KVM offers; an absent key keeps ``HostCapabilities/typical``'s value.
  func hostCapabilities(_ node: Node) throws(ScenarioError) -> HostCapabilities {
    let fields = try entries(node, what: "host", allowed: ["smm", "maxphyaddr", "vm_types", "memory_attributes"])
    var host = HostCapabilities.typical
    if let n = value(fields, "smm") { host.smm = try bool(n, key: "smm") }
    if let n = value(fields, "memory_attributes") { host.memoryAttributes = try bool(n, key: "memory_attributes") }
    if let n = value(fields, "maxphyaddr") {
      let bits = try number(n, key: "maxphyaddr", max: 255)
      guard (32 ... 52).contains(bits) else { throw fail(n, "'maxphyaddr' is \(bits): x86-64 MAXPHYADDR is between 32 and 52") }
      host.maxPhysAddr = UInt8(bits)
    }
    if let n = value(fields, "vm_types") {
      var types: Set<VMType> = []
      for item in try list(n, key: "vm_types") {
        let text = try string(item, key: "vm_types")
        guard let name = VMTypeName(rawValue: text) else {
          throw unknown(item, "VM type", text, among: VMTypeName.allCases.map(\.rawValue))
        }
        types.insert(name.type)
      }
      guard types.contains(.default) else { throw fail(n, "'vm_types' must contain default: every x86 KVM offers KVM_X86_DEFAULT_VM") }
      host.vmTypes = types
    }
    return host
  }

  mutating func deviceConfiguration(_ node: Node) throws(ScenarioError) -> DeviceConfiguration {
    let fields = try entries(node, what: "a device", allowed: ["name", "bars", "tdisp"])
    let name = try string(try required(fields, "name", in: node, what: "a device"), key: "name")
    var bars: [BARConfiguration] = []
    var barPositions: [SourcePosition] = []
    for item in try list(try required(fields, "bars", in: node, what: "a device"), key: "bars") {
      barPositions.append(position(item))
      let keys = ["index", "size", "is64", "prefetchable", "msix_table", "msix_pba"]
      let bar = try entries(item, what: "a BAR", allowed: keys)
      let indexNode = try required(bar, "index", in: item, what: "a BAR")
      let index = try number(indexNode, key: "index", max: UInt64(UInt32.max))
      // A PCI function has six BAR registers (index 0...5).
      guard index <= 5 else { throw fail(indexNode, "BAR index \(index) is past BAR 5") }
      guard !bars.contains(where: { $0.index == UInt32(index) }) else {
        throw fail(indexNode, "BAR \(index) is defined twice")
      }
      let sizeNode = try required(bar, "size", in: item, what: "a BAR")
      let size = try number(sizeNode, key: "size")
      // Memory BARs are naturally aligned powers of two of at least a page, below the x86-64
      // physical address limit (2^52).
      guard size >= 0x1000, size & (size - 1) == 0, size <= 1 << 51 else {
        throw fail(sizeNode, "BAR size 0x\(String(size, radix: 16)) must be a power of two between 4 KiB and 2^51 bytes")
      }
      bars.append(BARConfiguration(
        index: UInt32(index), size: size,
        is64Bit: try value(bar, "is64").map { n throws(ScenarioError) in try bool(n, key: "is64") } ?? true,
        prefetchable: try value(bar, "prefetchable").map { n throws(ScenarioError) in try bool(n, key: "prefetchable") } ?? true,
        msixTable: try value(bar, "msix_table").map { n throws(ScenarioError) in try pair(n, key: "msix_table") },
        msixPBA: try value(bar, "msix_pba").map { n throws(ScenarioError) in try pair(n, key: "msix_pba") }))
    }
    let tdisp = try value(fields, "tdisp").map { n throws(ScenarioError) in try bool(n, key: "tdisp") } ?? false
    machinePositions.bars.append(barPositions)
    return DeviceConfiguration(name: name, bars: bars, tdisp: tdisp)
  }

  // MARK: Steps

  mutating func step(_ node: Node, path: StepPath, bound: inout [String: BindingKind]) throws(ScenarioError) -> ScenarioStep {
    guard case .mapping(let mapping) = node else {
      throw fail(node, "a step must be a mapping with 'op', found \(Self.shape(node))")
    }
    guard let opNode = mapping["op"] else { throw fail(node, "missing key 'op' in step") }
    let opName = try string(opNode, key: "op")
    guard let spec = OpSpec.named(opName) else {
      throw unknown(opNode, "op", opName, among: OpSpec.all.map(\.name), list: false)
    }
    let what = "op \(opName)"
    let fields = try entries(node, what: what, allowed: ["op"] + spec.keys.map(\.name) + ["expect"])

    var arguments: StepArguments = [:]
    var binding: String?
    for key in spec.keys {
      guard let valueNode = value(fields, key.name) else {
        switch key.requirement {
        case .required: throw fail(node, "missing key '\(key.name)' for \(what)")
        case .defaulted(let value, _): arguments[key.name] = value
        case .optional: break
        }
        continue
      }
      if key.kind == .binding {
        let name = try string(valueNode, key: key.name)
        guard !everyBinding.contains(name), !knownVMs.contains(name) else {
          throw fail(valueNode, "duplicate name '\(name)': already bound by 'as:' or a VM name")
        }
        binding = name
        continue
      }
      arguments[key.name] = try argument(valueNode, key: key, bound: bound)
    }
    if let (key, problem) = spec.problem(in: arguments) { throw fail(value(fields, key) ?? node, problem) }
    // Bound only after the step's own arguments: a step cannot use what it returns. Its
    // `expect: { state: ... }` may name it: the state is read after the step.
    if let binding, let kind = spec.binds {
      everyBinding.insert(binding)
      bound[binding] = kind
    }
    var expected: StepExpectation?
    var expectedState: StateExpectation?
    if let node = value(fields, "expect") { (expected, expectedState) = try expectation(node, bound: bound, op: opName) }
    stepCount += 1
    var step = ScenarioStep(index: stepCount, path: path, position: position(node), opName: opName,
                            text: Self.render(node, omitting: "expect"), arguments: arguments,
                            binding: binding, expectation: expected)
    step.stateExpectation = expectedState
    return step
  }

  func argument(_ node: Node, key: KeySpec, bound: [String: BindingKind]) throws(ScenarioError) -> ArgumentValue {
    switch key.kind {
    case .device:
      let name = try string(node, key: key.name)
      guard knownDevices.contains(name) else {
        let hint = Suggestion.closest(to: name, among: deviceNames).map { ": did you mean '\($0)'?" } ?? ""
        let known = deviceNames.isEmpty ? "none" : deviceNames.prefix(8).joined(separator: ", ") + (deviceNames.count > 8 ? ", ..." : "")
        throw fail(node, "unknown device '\(name)'\(hint) (machine.devices: \(known))")
      }
      return .string(name)
    case .fd, .vm, .attachment:
      return .handle(try handle(node, key: key, bound: bound))
    case .u32: return .number(try number(node, key: key.name, max: UInt64(UInt32.max)))
    case .u64: return .number(try number(node, key: key.name))
    case .bool: return .bool(try bool(node, key: key.name))
    case .choice(let words):
      let word = try string(node, key: key.name)
      guard words.contains(word) else {
        throw fail(node, "'\(key.name)' must be one of \(words.joined(separator: "|")), found '\(word)'"
                   + (Suggestion.closest(to: word, among: words).map { ": did you mean '\($0)'?" } ?? ""))
      }
      return .string(word)
    case .string: return .string(try string(node, key: key.name))
    case .ranges:
      var ranges: [DmaRange] = []
      for item in try list(node, key: key.name) { ranges.append(try pair(item, key: key.name)) }
      return .ranges(ranges)
    case .memoryFlags:
      if case .scalar = node { return .number(try number(node, key: key.name, max: UInt64(UInt32.max))) }
      var bits: UInt64 = 0
      for item in try list(node, key: key.name) {
        let word = try string(item, key: key.name)
        guard let flag = MemoryFlag(rawValue: word) else {
          throw unknown(item, "memory flag", word, among: MemoryFlag.allCases.map(\.rawValue))
        }
        bits |= UInt64(flag.bit)
      }
      return .number(bits)
    case .numbers:
      var numbers: [UInt64] = []
      for item in try list(node, key: key.name) { numbers.append(try number(item, key: key.name)) }
      return .numbers(numbers)
    case .binding:
      return .string(try string(node, key: key.name))
    }
  }

  /// A name bound earlier (of the right kind), a VM name, or a literal integer.
  func handle(_ node: Node, key: KeySpec, bound: [String: BindingKind]) throws(ScenarioError) -> HandleRef {
    let text = try string(node, key: key.name)
    let negative = text.hasPrefix("-")
    if let magnitude = Self.parseNumber(negative ? String(text.dropFirst()) : text) {
      guard magnitude <= UInt64(Int32.max) + (negative ? 1 : 0) else {
        throw fail(node, "'\(key.name)' is \(text), outside the 32-bit range of an fd or id")
      }
      return .literal(negative ? -Int64(magnitude) : Int64(magnitude))
    }
    let wanted: BindingKind = key.kind == .attachment ? .attachment : .fd
    if let kind = bound[text] {
      guard kind == wanted else { throw fail(node, "'\(text)' names an \(kind.rawValue), not an \(wanted.rawValue)") }
      return .name(text)
    }
    if wanted == .fd, knownVMs.contains(text) { return .name(text) }
    throw fail(node, "'\(text)' is not bound: no earlier step has 'as: \(text)'"
               + (wanted == .fd ? " and no VM of machine.vms has that name" : ""))
  }

  // MARK: expect:

  /// `expect:`: what the result must be, and what the machine must look like after the step
  /// (`state:` as a mapping; `state: RUN` is the TDI state a TDISP request returned).
  func expectation(_ node: Node, bound: [String: BindingKind], op: String) throws(ScenarioError) -> (StepExpectation?, StateExpectation?) {
    if case .scalar(let s) = node {
      switch s.string {
      case "ok": return (.ok, nil)
      case "error": return (.error, nil)
      case "livelock": return (.livelock, nil)
      case "deadlock": return (.deadlock, nil)
      default:
        let hint = Suggestion.closest(to: s.string, among: ["ok", "error", "livelock", "deadlock"]).map { ": did you mean '\($0)'?" } ?? ""
        throw fail(node, "unknown expectation '\(s.string)'\(hint) (ok, error, livelock, deadlock, or { errno | tdx | tdisp | pfn | state | flags | fault | value | memory_fault: ... })")
      }
    }
    let kinds = ["ok", "error", "errno", "tdx", "tdisp", "pfn", "order", "state", "flags", "fault", "value", "memory_fault"]
    let fields = try entries(node, what: "expect", allowed: kinds)
    // A key for a result the op never returns could never match: refused here, not at run time.
    for entry in fields {
      let isWord = if case .mapping = entry.value { false } else { true }
      guard StepExpectation.applies(entry.key, to: op, isWord: isWord) else {
        throw fail(entry.keyNode, "'\(entry.key)\(entry.key == "state" ? ": WORD" : "")' cannot apply to \(op)"
                   + " (\(op) takes expect: \(StepExpectation.keys(for: op).joined(separator: ", ")))")
      }
    }
    var machineState: StateExpectation?
    if let entry = fields.first(where: { $0.key == "state" }), case .mapping = entry.value {
      machineState = try stateExpectation(entry.value, bound: bound)
    }
    // `value` with `fault` is what the completed load read: part of the fault expectation.
    let withFault = fields.contains { $0.key == "fault" }
    let main = fields.filter { $0.key != "order" && !($0.key == "state" && machineState != nil) && !($0.key == "value" && withFault) }
    if main.isEmpty, let machineState { return (nil, machineState) }
    guard main.count == 1, let entry = main.first else {
      throw fail(node, "expect needs one of ok, error, errno, tdx, tdisp, pfn, state, flags, fault, value, memory_fault"
                 + " (and may add state: { ... }; fault may add value)")
    }
    if let order = value(fields, "order"), entry.key != "pfn" {
      throw fail(order, "'order' goes only with 'pfn'")
    }
    var expected = try resultExpectation(entry, order: value(fields, "order"))
    if case .fault(let fault, _) = expected, let node = value(fields, "value") {
      expected = .fault(fault, value: try number(node, key: "value"))
    }
    return (expected, machineState)
  }

  /// `{ ok }` (a flow mapping's bare key) and `{ ok: ~ }` read as `ok`; `{ ok: true }` too.
  func bareWord(_ entry: (key: String, keyNode: Node, value: Node)) throws(ScenarioError) {
    guard case .scalar(let s) = entry.value, ["", "~", "null", "true"].contains(s.string) else {
      throw fail(entry.value, "'\(entry.key)' takes no value")
    }
  }

  func resultExpectation(_ entry: (key: String, keyNode: Node, value: Node), order orderNode: Node?) throws(ScenarioError) -> StepExpectation {
    let v = entry.value
    switch entry.key {
    case "ok":
      try bareWord(entry)
      return .ok
    case "error":
      try bareWord(entry)
      return .error
    case "errno":
      let name = try string(v, key: "errno")
      guard let errno = Errno(name: name) else { throw unknown(v, "errno", name, among: Errno.allNamed.map(\.name), list: false) }
      return .errno(errno)
    case "tdx":
      let name = try string(v, key: "tdx")
      guard let status = TDXStatus(name: name) else {
        throw unknown(v, "TDX status", name, among: TDXStatus.allNamed.map(\.name), list: false)
      }
      return .tdx(status)
    case "tdisp":
      let name = try string(v, key: "tdisp")
      guard TDISPErrorName.isKnown(name) else {
        throw unknown(v, "TDISP error", name, among: TDISPErrorName.all.map(\.name), list: false)
      }
      return .tdisp(name)
    case "pfn":
      let order = try orderNode.map { n throws(ScenarioError) in UInt8(try number(n, key: "order", max: 63)) }
      return .pfn(try number(v, key: "pfn"), order: order)
    case "state":
      let name = try string(v, key: "state")
      guard tdiStateNames.contains(name) else {
        throw unknown(v, "TDI state", name, among: tdiStateNames)
      }
      return .state(name)
    case "flags":
      var flags: [String] = []
      for item in try list(v, key: "flags") {
        let name = try string(item, key: "flags")
        guard RegionInfoFlag.known.contains(RegionInfoFlag.canonical(name)) else {
          throw unknown(item, "region info flag", name, among: RegionInfoFlag.known)
        }
        flags.append(name)
      }
      return .flags(flags)
    case "memory_fault":
      var want = MemoryFaultExpectation()
      for field in try entries(v, what: "memory_fault", allowed: ["flags", "gpa", "size", "errno"]) {
        switch field.key {
        case "flags":
          var bits: UInt64 = 0
          for item in try list(field.value, key: "flags") {
            let name = try string(item, key: "flags")
            guard let bit = MemoryFaultExpectation.flagNames.first(where: { $0.name == name })?.bit else {
              throw unknown(item, "memory fault flag", name, among: MemoryFaultExpectation.flagNames.map(\.name))
            }
            bits |= bit
          }
          want.flags = bits
        case "gpa": want.gpa = try number(field.value, key: "gpa")
        case "size": want.size = try number(field.value, key: "size")
        default:
          let name = try string(field.value, key: "errno")
          guard let errno = Errno(name: name) else { throw unknown(field.value, "errno", name, among: Errno.allNamed.map(\.name), list: false) }
          want.errno = errno
        }
      }
      return .memoryFault(want)
    case "fault":
      let name = try string(v, key: "fault")
      guard let fault = GuestFault(rawValue: name) else {
        throw unknown(v, "fault", name, among: GuestFault.allCases.map(\.rawValue))
      }
      return .fault(fault)
    default:
      return .value(try number(v, key: "value"))
    }
  }

  // MARK: expect: { state: ... }

  /// The machine-state keys of ``StateExpectation``, each a mapping from a device, VM or
  /// dma-buf name to the value expected (for `sept`, a mapping from GPA to state).
  func stateExpectation(_ node: Node, bound: [String: BindingKind]) throws(ScenarioError) -> StateExpectation {
    var checks: [StateExpectation.Check] = []
    let keys = StateExpectation.keys.map(\.key)
    for entry in try entries(node, what: "state", allowed: keys) {
      guard case .mapping(let mapping) = entry.value else {
        throw fail(entry.value, "'state.\(entry.key)' must be a mapping from a name to its value, found \(Self.shape(entry.value))")
      }
      for (nameNode, valueNode) in mapping {
        let name = try string(nameNode, key: "state.\(entry.key)")
        func device() throws(ScenarioError) -> String {
          guard knownDevices.contains(name) else {
            throw unknown(nameNode, "device", name, among: deviceNames, list: deviceNames.count <= 8)
          }
          return name
        }
        func vm() throws(ScenarioError) -> String {
          _ = try handle(nameNode, key: KeySpec("state.\(entry.key)", .vm), bound: bound)
          return name
        }
        func word(_ allowed: [String]) throws(ScenarioError) -> String {
          let text = try string(valueNode, key: "state.\(entry.key)")
          guard allowed.contains(text) else { throw unknown(valueNode, "value", text, among: allowed) }
          return text
        }
        switch entry.key {
        case "tdi": checks.append(.tdi(device: try device(), state: try word(StateExpectation.tdiValues)))
        case "memory": checks.append(.memory(device: try device(), enabled: try bool(valueNode, key: "state.memory")))
        case "dmabuf":
          guard bound[name] == .fd else { throw fail(nameNode, "'\(name)' is not bound to an fd by an earlier 'as:'") }
          checks.append(.dmabuf(name: name, state: try word(StateExpectation.dmabufValues)))
        case "memslots": checks.append(.memslots(vm: try vm(), count: try number(valueNode, key: "state.memslots")))
        case "mapped": checks.append(.mapped(vm: try vm(), pages: try number(valueNode, key: "state.mapped")))
        case "vm": checks.append(.vm(vm: try vm(), state: try word(StateExpectation.vmValues)))
        case "devif": checks.append(.devif(device: try device(), state: try word(StateExpectation.tdiValues)))
        default:  // sept
          let vmName = try vm()
          guard case .mapping(let pages) = valueNode else {
            throw fail(valueNode, "'state.sept.\(name)' must be a mapping from GPA to state, found \(Self.shape(valueNode))")
          }
          for (gpaNode, stateNode) in pages {
            let gpa = try number(gpaNode, key: "state.sept")
            let text = try string(stateNode, key: "state.sept")
            guard StateExpectation.septValues.contains(text) else {
              throw unknown(stateNode, "SEPT state", text, among: StateExpectation.septValues)
            }
            checks.append(.sept(vm: vmName, gpa: gpa, state: text))
          }
        }
      }
    }
    guard !checks.isEmpty else { throw fail(node, "'state' names nothing to check") }
    return StateExpectation(checks: checks)
  }

  // MARK: Text as written

  /// The node in flow style, scalars exactly as written (so `0x8000_0000` stays so).
  static func render(_ node: Node, omitting omitted: String? = nil) -> String {
    switch node {
    case .scalar(let s): return s.string
    case .sequence(let s): return "[" + s.map { render($0) }.joined(separator: ", ") + "]"
    case .mapping(let m):
      let pairs = m.compactMap { pair -> String? in
        if let omitted, pair.key.scalar?.string == omitted { return nil }
        return "\(render(pair.key)): \(render(pair.value))"
      }
      return "{ " + pairs.joined(separator: ", ") + " }"
    case .alias: return "*alias"
    }
  }
}
