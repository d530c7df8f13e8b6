import KernelCore

/// One PCIe function (`struct pci_dev`): its BARs, the config-space state that governs
/// whether it decodes memory, and, when it speaks TDISP, its TEE Device Interface.
///
/// A function starts in D0 with Memory Space Enable and Bus Master Enable set, as after the
/// host driver's `pci_enable_device()` + `pci_set_master()`: VFIO hands user space a device
/// that already decodes its BARs. Resets clear the command register, as the hardware does.
public struct PCIFunction: Hashable, Sendable {
  /// The function's name (its BDF in the kernel; a scenario's device name here).
  public let name: String
  /// The implemented memory BARs, in index order.
  public private(set) var bars: [BAR]
  public private(set) var command: PCICommand
  public private(set) var powerState: PCIPowerState
  /// The TDISP interface; `nil` for a function without TDISP.
  public internal(set) var tdi: TDI?
  /// What its BARs hold (``BARContents``): reset values, and what was written since.
  public private(set) var contents = BARContents()

  /// Creates a function with the given BARs.
  /// - Throws: `EINVAL` for an empty name, a BAR that fails `BAR`'s own rules (index past 5,
  ///   size not a power of two or below 4 KiB, base not aligned to the size, 32-bit BAR
  ///   above 4 GiB, bad MSI-X span), two BARs with one index, a BAR in the register a
  ///   64-bit BAR's upper half occupies, or two BARs whose addresses overlap.
  public init(name: String, bars: [BAR], tdisp: Bool) throws(Errno) {
    guard !name.isEmpty else { throw Errno.EINVAL.because("pci_setup_device", "the function has no name") }
    let sorted = bars.sorted { $0.index < $1.index }
    var usedRegisters: Set<UInt32> = []
    for bar in sorted {
      try bar.validate()
      let registers: [UInt32] = bar.is64Bit ? [bar.index, bar.index + 1] : [bar.index]
      for register in registers {
        guard usedRegisters.insert(register).inserted else {
          throw Errno.EINVAL.because("__pci_read_base", "BAR register \(register) is used twice (a BAR, or a 64-bit BAR's upper half)")
        }
      }
    }
    // Naturally aligned power-of-two windows either nest or are disjoint.
    for (i, a) in sorted.enumerated() {
      for b in sorted[(i + 1)...] where a.base <= b.last && b.base <= a.last {
        throw Errno.EINVAL.because("pci_claim_resource", "BAR \(a.index) [\(a.base)-\(a.last)] overlaps BAR \(b.index) [\(b.base)-\(b.last)]")
      }
    }
    self.name = name
    self.bars = sorted
    command = [.memorySpace, .busMaster]
    powerState = .d0
    tdi = tdisp ? TDI(functionName: name) : nil
  }

  /// The BAR with register number `index`, or `nil` when it is not implemented.
  public func bar(_ index: UInt32) -> BAR? { bars.first { $0.index == index } }

  /// Whether the function answers memory reads and writes to its BARs: Memory Space Enable
  /// set and in D0 (a function in D3hot decodes config space only).
  public var memoryDecodeEnabled: Bool { command.contains(.memorySpace) && powerState == .d0 }

  /// Whether the function may master the bus (DMA, MSI).
  public var busMasterEnabled: Bool { command.contains(.busMaster) }

  /// The TDI's state; `nil` without TDISP.
  public var tdiState: TDIState? { tdi?.state }

  // MARK: Memory space

  /// A memory read of `size` (1...8) bytes at `offset` of BAR `bar`, as the function answers
  /// it on the bus. A function that does not decode memory (Memory Space Enable clear, D3hot,
  /// or after a reset until its command register is restored) does not claim the request: it
  /// ends in a master abort and the read returns all ones, as PCIe root complexes complete it.
  public func memoryRead(bar: UInt32, offset: UInt64, size: UInt64) -> UInt64 {
    guard memoryDecodeEnabled else { return BARContents.allOnes(size: size) }
    return contents.read(bar: bar, offset: offset, size: size)
  }

  /// A memory write of the low `size` bytes of `value` at `offset` of BAR `bar`. A function that
  /// does not decode memory drops it (a posted write nobody claims is lost).
  /// - Returns: whether the function took the write.
  @discardableResult
  public mutating func memoryWrite(bar: UInt32, offset: UInt64, size: UInt64, value: UInt64) -> Bool {
    guard memoryDecodeEnabled else { return false }
    contents.write(bar: bar, offset: offset, size: size, value: value)
    return true
  }

  // MARK: Config-space events

  /// A config write of the Command register (`pci_write_config_word(dev, PCI_COMMAND, …)`).
  ///
  /// Clearing Memory Space Enable or Bus Master Enable under lock is a security-relevant
  /// change: the TDI moves to ERROR (TDISP: the device must not let the host disable the
  /// interface behind the TVM's back). Setting bits, or rewriting them, changes nothing.
  public mutating func writeCommand(_ value: PCICommand, trace: inout Trace) {
    let old = command
    command = value
    trace.emit(.pciCommand, "\(name): command \(old) -> \(value)",
               [.text("device", name), .text("old", "\(old)"), .text("new", "\(value)")])
    let cleared = old.subtracting(value)
    if cleared.contains(.memorySpace) {
      enterErrorIfLocked("Memory Space Enable cleared", trace: &trace)
    } else if cleared.contains(.busMaster) {
      enterErrorIfLocked("Bus Master Enable cleared", trace: &trace)
    }
  }

  /// A write of PMCSR's PowerState field (`pci_set_power_state`).
  ///
  /// Entering D3hot under lock moves the TDI to ERROR: the function stops decoding the
  /// TVM's MMIO and D3hot may lose its state. (Uncertain: the model reads TDISP's rule on
  /// configuration changes under lock as covering a PMCSR write to D3hot.)
  /// Returning to D0 keeps the command register: the model's functions set No_Soft_Reset,
  /// as PCIe requires of functions that support D3hot without losing configuration.
  public mutating func writePowerState(_ state: PCIPowerState, trace: inout Trace) {
    let old = powerState
    powerState = state
    trace.emit(.pciPower, "\(name): power \(old) -> \(state)", [.text("device", name), .text("old", "\(old)"), .text("new", "\(state)")])
    if old == .d0 && state == .d3hot {
      enterErrorIfLocked("D3hot entry", trace: &trace)
    }
  }

  /// A Function Level Reset (`pcie_flr`, or Device Control "Initiate FLR").
  ///
  /// The function returns to its reset state: command register 0 (no decode, no mastering),
  /// D0, and every BAR register at its reset value (``BARContents``). A locked TDI goes to
  /// ERROR (TDISP: an FLR of a locked interface is a security-relevant event); an unlocked
  /// one stays CONFIG_UNLOCKED; ERROR stays ERROR until STOP_INTERFACE. The caller restores
  /// saved config afterwards if it wants to, as `pci_reset_function()` does through
  /// `pci_dev_restore()`.
  public mutating func functionLevelReset(trace: inout Trace) {
    resetConfigSpace(kind: "FLR", trace: &trace)
    enterErrorIfLocked("FLR", trace: &trace)
  }

  /// A conventional reset (hot reset, secondary bus reset, `pci_reset_bus`).
  ///
  /// Config space returns to its reset state as for an FLR, and the whole TDISP state is
  /// reset too: the TDI is CONFIG_UNLOCKED whatever it was, with no nonce outstanding.
  public mutating func conventionalReset(trace: inout Trace) {
    resetConfigSpace(kind: "conventional reset", trace: &trace)
    if var interface = tdi {
      let old = interface.state
      interface.phase = .configUnlocked
      tdi = interface
      trace.emit(.tdispState, "\(name): \(old) -> CONFIG_UNLOCKED (conventional reset)",
                 Self.tdispFields(name, old.specName, "CONFIG_UNLOCKED", "conventional reset"))
    }
  }

  /// Any other config write that changes what the TVM verified: BAR programming, the MSI-X
  /// capability under `LOCK_MSIX`, a resizable-BAR size, ATS or PASID controls.
  /// Under lock the TDI moves to ERROR; otherwise nothing in the model changes.
  public mutating func writeSecurityRelevantConfig(_ what: String = "BAR", trace: inout Trace) {
    trace.emit(.pciConfigWrite, "\(name): config write (\(what))", [.text("device", name), .text("what", what)])
    enterErrorIfLocked("\(what) written", trace: &trace)
  }

  // MARK: Internals

  mutating func resetConfigSpace(kind: String, trace: inout Trace) {
    let oldCommand = command
    let oldPower = powerState
    command = []
    powerState = .d0
    contents.reset()
    trace.emit(.pciReset, "\(name): \(kind): command \(oldCommand) -> \(command), power \(oldPower) -> D0",
               [.text("device", name), .text("kind", kind), .text("command", "\(command)"), .text("power", "\(powerState)")])
  }

  /// The fields of a `tdisp:state` event.
  static func tdispFields(_ device: String, _ old: String, _ new: String, _ cause: String) -> [TraceField] {
    [.text("device", device), .text("old", old), .text("new", new), .text("cause", cause)]
  }

  /// CONFIG_LOCKED or RUN -> ERROR; any other state is left as it is.
  mutating func enterErrorIfLocked(_ reason: String, trace: inout Trace) {
    guard var interface = tdi, interface.state.isLocked else { return }
    let old = interface.state
    interface.phase = .error
    tdi = interface
    trace.emit(.tdispState, "\(name): \(old) -> ERROR (\(reason))", Self.tdispFields(name, old.specName, "ERROR", reason))
  }
}
