import Reports

/// `expect: { state: { ... } }`: what the machine must look like after a step, over a small
/// documented set of keys read from ``Reports/MachineState`` (what `pmmio show` prints).
///
/// ```yaml
/// expect: { ok, state: { tdi: { nic0: RUN }, sept: { td0: { 0x80000000: MMIO_MAPPED } } } }
/// ```
public struct StateExpectation: Hashable, Sendable, CustomStringConvertible {
  public enum Check: Hashable, Sendable {
    case tdi(device: String, state: String)
    case memory(device: String, enabled: Bool)
    case dmabuf(name: String, state: String)
    case memslots(vm: String, count: UInt64)
    case mapped(vm: String, pages: UInt64)
    case sept(vm: String, gpa: UInt64, state: String)
    case vm(vm: String, state: String)
    case devif(device: String, state: String)
  }

  public var checks: [Check]
  public init(checks: [Check]) { self.checks = checks }

  /// The keys, in the order the README documents them: key, what it is indexed by, the value,
  /// and what it reads.
  public static let keys: [(key: String, by: String, value: String, meaning: String)] = [
    ("tdi", "device", "CONFIG_UNLOCKED\\|CONFIG_LOCKED\\|RUN\\|ERROR\\|none", "the TDISP state of the device's interface (`none`: no TDISP)"),
    ("memory", "device", "true\\|false", "the device decodes its BARs (PCI_COMMAND.MEMORY set, in D0)"),
    ("dmabuf", "`as:` name of a dma-buf fd", "live\\|revoked\\|closed", "`priv->revoked` of the buffer behind the fd (`closed`: the fd is no longer open)"),
    ("memslots", "VM", "number", "how many memslots the VM has"),
    ("mapped", "VM", "number", "4 KiB pages the VM's TDP MMU maps"),
    ("sept", "VM, then GPA", "FREE\\|MMIO_PENDING\\|MMIO_MAPPED\\|MMIO_BLOCKED\\|...", "the TD's Secure-EPT entry state for the page at that GPA"),
    ("vm", "VM", "live\\|dead\\|gone", "`dead`: KVM_BUG_ON marked it; `gone`: no fd refers to it"),
    ("devif", "device", "CONFIG_UNLOCKED\\|CONFIG_LOCKED\\|RUN\\|ERROR\\|none", "the TDISP state the TDX module's DEVIF for the device last saw (`none`: no DEVIF)"),
  ]

  /// The keys as a Markdown table (the README shows it; a test keeps the two equal).
  public static var referenceTable: String {
    var lines = ["| key | by | value | what it reads |", "|---|---|---|---|"]
    for k in keys { lines.append("| `\(k.key)` | \(k.by) | \(k.value) | \(k.meaning) |") }
    return lines.joined(separator: "\n") + "\n"
  }

  public static let tdiValues = ["CONFIG_UNLOCKED", "CONFIG_LOCKED", "RUN", "ERROR", "none"]
  public static let dmabufValues = ["live", "revoked", "closed"]
  public static let vmValues = ["live", "dead", "gone"]
  public static let septValues = ["FREE", "PENDING", "MAPPED", "BLOCKED", "MMIO_PENDING", "MMIO_MAPPED", "MMIO_BLOCKED"]

  public var description: String {
    "state { " + checks.map { check in
      switch check {
      case .tdi(let d, let s): "tdi \(d): \(s)"
      case .memory(let d, let e): "memory \(d): \(e)"
      case .dmabuf(let n, let s): "dmabuf \(n): \(s)"
      case .memslots(let v, let n): "memslots \(v): \(n)"
      case .mapped(let v, let n): "mapped \(v): \(n)"
      case .sept(let v, let gpa, let s): "sept \(v) 0x\(String(gpa, radix: 16)): \(s)"
      case .vm(let v, let s): "vm \(v): \(s)"
      case .devif(let d, let s): "devif \(d): \(s)"
      }
    }.joined(separator: ", ") + " }"
  }

  /// What does not hold in `state`, one line per check; empty when everything holds.
  public func mismatches(in state: MachineState?, handles: HandleEnvironment) -> [String] {
    guard let state else { return ["state: this machine has no state to check"] }
    func vm(_ name: String) -> MachineState.VM? { state.vm(fd: handles.fd(.name(name)).rawValue) }
    return checks.compactMap { check -> String? in
      let (what, expected, found): (String, String, String)
      switch check {
      case .tdi(let device, let want):
        (what, expected, found) = ("tdi \(device)", want, state.device(named: device)?.tdi ?? "none")
      case .memory(let device, let want):
        (what, expected, found) = ("memory \(device)", "\(want)", state.device(named: device).map { "\($0.memoryDecode)" } ?? "no such device")
      case .dmabuf(let name, let want):
        let buffer = state.dmabuf(fd: handles.fd(.name(name)).rawValue)
        (what, expected, found) = ("dmabuf \(name)", want, buffer.map { $0.revoked == true ? "revoked" : "live" } ?? "closed")
      case .memslots(let name, let want):
        (what, expected, found) = ("memslots \(name)", "\(want)", vm(name).map { "\($0.memslots.count)" } ?? "no such VM")
      case .mapped(let name, let want):
        (what, expected, found) = ("mapped \(name)", "\(want)", vm(name).map { "\($0.mappedPages)" } ?? "no such VM")
      case .sept(let name, let gpa, let want):
        let found_: String
        if let vm = vm(name) {
          found_ = vm.td.map { state.septState(td: $0, gpa: gpa) } ?? "not a TD"
        } else {
          found_ = "no such VM"
        }
        (what, expected, found) = ("sept \(name) 0x\(String(gpa, radix: 16))", want, found_)
      case .vm(let name, let want):
        (what, expected, found) = ("vm \(name)", want, vm(name).map { $0.dead ? "dead" : "live" } ?? "gone")
      case .devif(let device, let want):
        (what, expected, found) = ("devif \(device)", want, state.tdx.devifs.first { $0.device == device }?.tdisp ?? "none")
      }
      return expected == found ? nil : "state \(what): expected \(expected), found \(found)"
    }
  }
}
