import KernelCore
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
  public static let topLevelKeys = ["name", "variant", "machine", "steps", "concurrent"]

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
        throw fail(keyNode, "unknown key '\(key.string)' in \(what) (expected: \(allowed.joined(separator: ", ")))")
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
        throw fail(node, "unknown variant '\(text)' (expected: \(Variant.allCases.map(\.rawValue).joined(separator: ", ")))")
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
    }
    return Scenario(name: name, variant: variant, machine: machine, machinePosition: machinePosition,
                    steps: steps, concurrent: concurrent, machinePositions: machinePositions)
  }

  var defaultName: String {
    let base = file.split(separator: "/").last.map(String.init) ?? file
    if let dot = base.lastIndex(of: "."), dot != base.startIndex { return String(base[..<dot]) }
    return base
  }

  // MARK: machine:

  mutating func machineConfiguration(_ node: Node) throws(ScenarioError) -> MachineConfiguration {
    let top = try entries(node, what: "machine", allowed: ["devices", "vms"])
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
            throw fail(typeNode, "unknown VM type '\(text)' (expected: default, tdx)")
          }
          type = t
        }
        guard knownVMs.insert(name).inserted else { throw fail(item, "duplicate VM name '\(name)'") }
        vmNames.append(name)
        vms.append(VMConfiguration(name: name, type: type))
        machinePositions.vms.append(position(item))
      }
    }
    return MachineConfiguration(devices: devices, vms: vms)
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
    guard let spec = OpSpec.named(opName) else { throw fail(opNode, "unknown op '\(opName)'") }
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
    var expected: StepExpectation?
    if let node = value(fields, "expect") { expected = try expectation(node) }
    // Bound only after the step's own arguments: a step cannot use what it returns.
    if let binding, let kind = spec.binds {
      everyBinding.insert(binding)
      bound[binding] = kind
    }
    stepCount += 1
    return ScenarioStep(index: stepCount, path: path, position: position(node), opName: opName,
                        text: Self.render(node, omitting: "expect"), arguments: arguments,
                        binding: binding, expectation: expected)
  }

  func argument(_ node: Node, key: KeySpec, bound: [String: BindingKind]) throws(ScenarioError) -> ArgumentValue {
    switch key.kind {
    case .device:
      let name = try string(node, key: key.name)
      guard knownDevices.contains(name) else {
        throw fail(node, "unknown device '\(name)' (machine.devices: \(deviceNames.joined(separator: ", ")))")
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
        throw fail(node, "'\(key.name)' must be one of \(words.joined(separator: "|")), found '\(word)'")
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
          throw fail(item, "unknown memory flag '\(word)' (expected: \(MemoryFlag.allCases.map(\.rawValue).joined(separator: ", ")))")
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

  func expectation(_ node: Node) throws(ScenarioError) -> StepExpectation {
    if case .scalar(let s) = node {
      switch s.string {
      case "ok": return .ok
      case "error": return .error
      default:
        throw fail(node, "unknown expectation '\(s.string)' (ok, error, or { errno | tdx | tdisp | pfn | state | flags | fault | value: ... })")
      }
    }
    let kinds = ["errno", "tdx", "tdisp", "pfn", "order", "state", "flags", "fault", "value"]
    let fields = try entries(node, what: "expect", allowed: kinds)
    let main = fields.filter { $0.key != "order" }
    guard main.count == 1, let entry = main.first else {
      throw fail(node, "expect needs exactly one of errno, tdx, tdisp, pfn, state, flags, fault, value")
    }
    if let order = value(fields, "order"), entry.key != "pfn" {
      throw fail(order, "'order' goes only with 'pfn'")
    }
    let v = entry.value
    switch entry.key {
    case "errno":
      let name = try string(v, key: "errno")
      guard let errno = Errno(name: name) else { throw fail(v, "unknown errno '\(name)'") }
      return .errno(errno)
    case "tdx":
      let name = try string(v, key: "tdx")
      guard let status = TDXStatus(name: name) else { throw fail(v, "unknown TDX status '\(name)'") }
      return .tdx(status)
    case "tdisp":
      let name = try string(v, key: "tdisp")
      guard TDISPErrorName.isKnown(name) else { throw fail(v, "unknown TDISP error '\(name)'") }
      return .tdisp(name)
    case "pfn":
      let order = try value(fields, "order").map { n throws(ScenarioError) in UInt8(try number(n, key: "order", max: 63)) }
      return .pfn(try number(v, key: "pfn"), order: order)
    case "state":
      let name = try string(v, key: "state")
      guard tdiStateNames.contains(name) else {
        throw fail(v, "unknown TDI state '\(name)' (expected: \(tdiStateNames.joined(separator: ", ")))")
      }
      return .state(name)
    case "flags":
      var flags: [String] = []
      for item in try list(v, key: "flags") {
        let name = try string(item, key: "flags")
        guard RegionInfoFlag.known.contains(RegionInfoFlag.canonical(name)) else {
          throw fail(item, "unknown region info flag '\(name)' (expected: \(RegionInfoFlag.known.joined(separator: ", ")))")
        }
        flags.append(name)
      }
      return .flags(flags)
    case "fault":
      let name = try string(v, key: "fault")
      guard let fault = GuestFault(rawValue: name) else {
        throw fail(v, "unknown fault '\(name)' (expected: \(GuestFault.allCases.map(\.rawValue).joined(separator: ", ")))")
      }
      return .fault(fault)
    default:
      return .value(try number(v, key: "value"))
    }
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
