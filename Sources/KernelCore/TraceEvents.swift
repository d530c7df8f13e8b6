/// An event's name as ftrace spells it, `subsystem:event` (`tdx:seamcall`, `kvm:mmu_fault`,
/// `vfio:dmabuf_move`). ``catalog`` lists every event the model emits, with its fields: the
/// model's `available_events`.
public struct TraceEventName: Hashable, Sendable, Comparable, CustomStringConvertible {
  public let subsystem: Subsystem
  public let event: String

  public init(_ subsystem: Subsystem, _ event: String) { self.subsystem = subsystem; self.event = event }

  /// `subsystem:log`: an event reported with `emit(.subsystem, "message")`, without a name of its own.
  public static func log(_ subsystem: Subsystem) -> TraceEventName { TraceEventName(subsystem, "log") }

  public var description: String { "\(subsystem.rawValue):\(event)" }
  public static func < (a: Self, b: Self) -> Bool { (a.subsystem, a.event) < (b.subsystem, b.event) }
}

extension TraceEventName {
  // PCI and TDISP (the device)
  public static let pciCommand = TraceEventName(.pci, "command")
  public static let pciPower = TraceEventName(.pci, "power")
  public static let pciReset = TraceEventName(.pci, "reset")
  public static let pciConfigWrite = TraceEventName(.pci, "config_write")
  public static let tdispState = TraceEventName(.tdisp, "state")
  public static let tdispError = TraceEventName(.tdisp, "error")
  // VFIO
  public static let vfioOpen = TraceEventName(.vfio, "open")
  public static let vfioBind = TraceEventName(.vfio, "bind")
  public static let vfioBARRead = TraceEventName(.vfio, "bar_read")
  public static let vfioBARWrite = TraceEventName(.vfio, "bar_write")
  public static let vfioMmap = TraceEventName(.vfio, "mmap")
  public static let vfioClose = TraceEventName(.vfio, "close")
  public static let vfioTSMUnbind = TraceEventName(.vfio, "tsm_unbind")
  public static let vfioReset = TraceEventName(.vfio, "reset")
  public static let vfioDisable = TraceEventName(.vfio, "disable")
  public static let vfioResetUnderImport = TraceEventName(.vfio, "reset_under_import")
  public static let vfioDmaBufExport = TraceEventName(.vfio, "dmabuf_export")
  public static let vfioDmaBufMove = TraceEventName(.vfio, "dmabuf_move")
  public static let vfioDmaBufRenotify = TraceEventName(.vfio, "dmabuf_renotify")
  // dma-buf core
  public static let dmabufExport = TraceEventName(.dmabuf, "export")
  public static let dmabufRelease = TraceEventName(.dmabuf, "release")
  public static let dmabufClose = TraceEventName(.dmabuf, "close")
  public static let dmabufAttach = TraceEventName(.dmabuf, "attach")
  public static let dmabufDetach = TraceEventName(.dmabuf, "detach")
  public static let dmabufMoveNotify = TraceEventName(.dmabuf, "move_notify")
  public static let dmabufImporterNotified = TraceEventName(.dmabuf, "importer_notified")
  public static let dmabufGetPfn = TraceEventName(.dmabuf, "get_pfn")
  // KVM
  public static let kvmCreateVM = TraceEventName(.kvm, "create_vm")
  public static let kvmCreateVCPU = TraceEventName(.kvm, "create_vcpu")
  public static let kvmSetMemoryRegion = TraceEventName(.kvm, "set_memory_region")
  public static let kvmSetMemoryAttributes = TraceEventName(.kvm, "set_memory_attributes")
  public static let kvmCreateGuestMemfd = TraceEventName(.kvm, "create_guest_memfd")
  public static let kvmGmemRelease = TraceEventName(.kvm, "gmem_release")
  public static let kvmMMUFault = TraceEventName(.kvm, "mmu_fault")
  public static let kvmMMUZap = TraceEventName(.kvm, "mmu_zap")
  public static let kvmMoveNotify = TraceEventName(.kvm, "move_notify")
  public static let kvmKick = TraceEventName(.kvm, "kick")
  public static let kvmDestroyVM = TraceEventName(.kvm, "destroy_vm")
  // TDX module
  public static let tdxSeamcall = TraceEventName(.tdx, "seamcall")
  public static let tdxTdcall = TraceEventName(.tdx, "tdcall")
  public static let tdxTDExit = TraceEventName(.tdx, "td_exit")
  public static let tdxTeardown = TraceEventName(.tdx, "teardown")
  public static let tdxDevifState = TraceEventName(.tdx, "devif_state")
  public static let tdxIDEStreamBlocked = TraceEventName(.tdx, "ide_stream_blocked")
  public static let tdxDevifBind = TraceEventName(.tdx, "devif_bind")
  // The guest
  public static let guestAccess = TraceEventName(.guest, "access")
  public static let guestMMIORead = TraceEventName(.guest, "mmio_read")
  public static let guestMMIOWrite = TraceEventName(.guest, "mmio_write")
  // The platform
  public static let platformError = TraceEventName(.platform, "error")

  /// One entry of the catalog: the event, its fields, what it reports.
  public struct Entry: Sendable {
    public let name: TraceEventName
    public let fields: [String]
    public let summary: String
  }

  /// Every event the model emits, in the order the README lists them.
  public static let catalog: [Entry] = [
    Entry(name: .pciCommand, fields: ["device", "old", "new"], summary: "a write of the PCI command register"),
    Entry(name: .pciPower, fields: ["device", "old", "new"], summary: "a PMCSR power-state write"),
    Entry(name: .pciReset, fields: ["device", "kind", "command", "power"], summary: "an FLR or a conventional reset: config space and BAR registers to their reset values"),
    Entry(name: .pciConfigWrite, fields: ["device", "what"], summary: "a security-relevant config write (BAR, MSI-X under lock …)"),
    Entry(name: .tdispState, fields: ["device", "old", "new", "cause", "nonce"], summary: "the TDI's TDISP state changed"),
    Entry(name: .tdispError, fields: ["device", "request", "error", "state"], summary: "the device answered a TDISP request with TDISP_ERROR"),
    Entry(name: .vfioOpen, fields: ["device", "file"], summary: "open of a VFIO device cdev"),
    Entry(name: .vfioBind, fields: ["device", "private", "vm"], summary: "VFIO_DEVICE_BIND_IOMMUFD"),
    Entry(name: .vfioBARRead, fields: ["device", "bar", "offset", "size", "value"], summary: "pread of a BAR through the device fd"),
    Entry(name: .vfioBARWrite, fields: ["device", "bar", "offset", "size", "value"], summary: "pwrite of a BAR through the device fd"),
    Entry(name: .vfioMmap, fields: ["device", "bar"], summary: "mmap of a BAR into user space"),
    Entry(name: .vfioClose, fields: ["device", "file"], summary: "the last close of a device file"),
    Entry(name: .vfioTSMUnbind, fields: ["device"], summary: "the TSM unbind (TDISP STOP) before a revoke (reviewed)"),
    Entry(name: .vfioReset, fields: ["device", "kind"], summary: "VFIO_DEVICE_RESET, a config-space FLR or a hot reset"),
    Entry(name: .vfioDisable, fields: ["device"], summary: "vfio_pci_core_disable(): decode and mastering off, reset (device close)"),
    Entry(name: .vfioResetUnderImport, fields: ["device", "buffers"], summary: "a reset while importers may still map the device's buffers"),
    Entry(name: .vfioDmaBufExport, fields: ["device", "bar", "buffer", "private", "revoked"], summary: "VFIO_DEVICE_FEATURE_DMA_BUF exported a buffer"),
    Entry(name: .vfioDmaBufMove, fields: ["device", "buffer", "revoked", "for_good"], summary: "a buffer revoked or restored (vfio_pci_dma_buf_move); a slice containing its importers' move_notify"),
    Entry(name: .vfioDmaBufRenotify, fields: ["device", "buffer"], summary: "a revoked buffer's importers told again once the interface is stopped (reviewed); a slice containing their move_notify"),
    Entry(name: .dmabufExport, fields: ["buffer", "size", "exporter"], summary: "dma_buf_export()"),
    Entry(name: .dmabufRelease, fields: ["buffer"], summary: "the buffer's last reference is gone"),
    Entry(name: .dmabufClose, fields: ["buffer", "fd"], summary: "close() of a dma-buf fd"),
    Entry(name: .dmabufAttach, fields: ["buffer", "attachment", "importer", "dynamic", "p2p"], summary: "dma_buf_dynamic_attach() / dma_buf_attach()"),
    Entry(name: .dmabufDetach, fields: ["buffer", "attachment", "importer"], summary: "dma_buf_detach()"),
    Entry(name: .dmabufMoveNotify, fields: ["buffer", "importers"], summary: "dma_buf_move_notify(): the importers to tell"),
    Entry(name: .dmabufImporterNotified, fields: ["attachment", "importer", "revoked"], summary: "an importer that is not KVM heard move_notify"),
    Entry(name: .dmabufGetPfn, fields: ["attachment", "pgoff", "pfn", "order"], summary: "dma_buf_get_pfn_unlocked() (RFC patch 1)"),
    Entry(name: .kvmCreateVM, fields: ["vm", "type", "fd"], summary: "KVM_CREATE_VM"),
    Entry(name: .kvmCreateVCPU, fields: ["vm", "vcpu"], summary: "KVM_CREATE_VCPU"),
    Entry(name: .kvmSetMemoryRegion, fields: ["vm", "slot", "change", "gpa", "size", "flags"], summary: "KVM_SET_USER_MEMORY_REGION(2) committed a change, or refused a delete"),
    Entry(name: .kvmSetMemoryAttributes, fields: ["vm", "address", "size", "attributes"], summary: "KVM_SET_MEMORY_ATTRIBUTES changed a range to private or shared"),
    Entry(name: .kvmCreateGuestMemfd, fields: ["vm", "size", "flags", "gmem", "fd"], summary: "KVM_CREATE_GUEST_MEMFD"),
    Entry(name: .kvmGmemRelease, fields: ["vm", "gmem", "unmapped"], summary: "kvm_gmem_release(): the guest_memfd's last reference is gone"),
    Entry(name: .kvmMMUFault, fields: ["vm", "gpa", "outcome", "retries"], summary: "a TDP MMU fault ended (mapped, already_mapped, exit_mmio, eio …)"),
    Entry(name: .kvmMMUZap, fields: ["vm", "purpose", "outcome"], summary: "a zap of a slot's SPTEs (move_notify, memslot delete)"),
    Entry(name: .kvmMoveNotify, fields: ["vm", "attachment", "stale"], summary: "KVM's move_notify for a dma-buf slot"),
    Entry(name: .kvmKick, fields: ["vm", "td"], summary: "every vCPU of a TD kicked out of guest mode (TLB tracking)"),
    Entry(name: .kvmDestroyVM, fields: ["vm", "leaked"], summary: "kvm_destroy_vm()"),
    Entry(name: .tdxSeamcall, fields: ["leaf", "td", "gpa", "level", "hpa", "…", "status", "operand"], summary: "a SEAMCALL and its status, with its operands"),
    Entry(name: .tdxTdcall, fields: ["leaf", "td", "vcpu", "gpa", "level", "hpa", "entry", "status", "operand", "outcome"], summary: "a guest TDCALL (TDG.MMIO.ACCEPT) and its status"),
    Entry(name: .tdxTDExit, fields: ["td", "vcpu", "status", "operand"], summary: "a vCPU left TDX non-root mode"),
    Entry(name: .tdxTeardown, fields: ["td", "status", "operand"], summary: "the TD's teardown"),
    Entry(name: .tdxDevifState, fields: ["devif", "state"], summary: "the TDISP state relayed to the module for a DEVIF"),
    Entry(name: .tdxIDEStreamBlocked, fields: ["devif"], summary: "the IDE stream of a DEVIF was blocked"),
    Entry(name: .tdxDevifBind, fields: ["devif", "device", "td"], summary: "the host bound a device's DEVIF to a TD"),
    Entry(name: .guestAccess, fields: ["td", "gpa", "result", "hpa"], summary: "a TD's access as the Secure-EPT walk resolves it"),
    Entry(name: .guestMMIORead, fields: ["vm", "gpa", "hpa", "device", "bar", "offset", "size", "value", "decode"], summary: "a guest load reached a device register (all ones without decode)"),
    Entry(name: .guestMMIOWrite, fields: ["vm", "gpa", "hpa", "device", "bar", "offset", "size", "value", "decode"], summary: "a guest store reached a device register (dropped without decode)"),
    Entry(name: .platformError, fields: ["errno", "status", "tdisp", "function", "check"], summary: "an operation failed, with the function and check that refused it"),
  ] + Subsystem.allCases.map {
    Entry(name: .log($0), fields: [], summary: "a \($0.rawValue) message without an event name of its own")
  }

  /// Every event name, catalogued order.
  public static let all: [TraceEventName] = catalog.map(\.name)

  /// The catalog as a Markdown table (the README shows it).
  public static var referenceTable: String {
    var lines = ["| event | fields | reports |", "|---|---|---|"]
    for entry in catalog {
      let fields = entry.fields.isEmpty ? "" : entry.fields.map { "`\($0)`" }.joined(separator: " ")
      lines.append("| `\(entry.name)` | \(fields) | \(entry.summary) |")
    }
    return lines.joined(separator: "\n") + "\n"
  }
}

/// Which events a trace records: `--events 'tdx:*,kvm:mmu*'`, as ftrace's `set_event` takes
/// them. A comma-separated list of globs (`*` any run of characters, `?` one); each is
/// `subsystem:event`, or `event` alone for that event in any subsystem, or `subsystem:` for all
/// of a subsystem's events. A glob starting with `!` removes what it matches; a list of
/// removals alone starts from every event. Each glob must match some event of
/// ``TraceEventName/catalog``. `pmmio run` takes it; `pmmio explore` uses the same type.
public struct TraceFilter: Hashable, Sendable, CustomStringConvertible {
  struct Glob: Hashable, Sendable {
    let exclude: Bool
    let subsystem: String
    let event: String
    let text: String
    func matches(_ name: TraceEventName) -> Bool {
      TraceFilter.glob(subsystem, name.subsystem.rawValue) && TraceFilter.glob(event, name.event)
    }
  }

  let globs: [Glob]
  /// Catalogued events the filter lets through; `nil` when it lets everything through.
  let included: Set<TraceEventName>?

  /// Every event.
  public static let all = TraceFilter(globs: [])

  init(globs: [Glob]) {
    self.globs = globs
    included = globs.isEmpty ? nil : Set(TraceEventName.all.filter { Self.decide(globs, $0) })
  }

  /// Parses `--events`.
  /// - Throws: ``TraceFilterError`` for an empty glob or one that matches no event, with the
  ///   closest event name.
  public init(parsing text: String) throws(TraceFilterError) {
    var globs: [Glob] = []
    for raw in text.split(separator: ",", omittingEmptySubsequences: false) {
      let item = String(raw.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
      let exclude = item.hasPrefix("!")
      let pattern = exclude ? String(item.dropFirst()) : item
      guard !pattern.isEmpty else { throw TraceFilterError(glob: item, message: "an empty event glob") }
      let parts = pattern.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
      let glob = parts.count == 2
        ? Glob(exclude: exclude, subsystem: parts[0], event: parts[1].isEmpty ? "*" : parts[1], text: item)
        : Glob(exclude: exclude, subsystem: "*", event: parts[0], text: item)
      guard TraceEventName.all.contains(where: glob.matches) else {
        let hint = TraceFilter.closest(to: pattern).map { ": did you mean '\($0)'?" } ?? ""
        throw TraceFilterError(glob: item, message: "'\(pattern)' matches no event\(hint)")
      }
      globs.append(glob)
    }
    self.init(globs: globs)
  }

  /// Whether events named `name` are recorded.
  @inlinable public func includes(_ name: TraceEventName) -> Bool {
    isEverything || decideCatalogued(name)
  }

  @usableFromInline var isEverything: Bool { included == nil }

  @usableFromInline func decideCatalogued(_ name: TraceEventName) -> Bool {
    included?.contains(name) ?? Self.decide(globs, name)
  }

  /// Inclusions first (none: everything), then exclusions.
  static func decide(_ globs: [Glob], _ name: TraceEventName) -> Bool {
    let includes = globs.filter { !$0.exclude }
    let included = includes.isEmpty || includes.contains { $0.matches(name) }
    return included && !globs.contains { $0.exclude && $0.matches(name) }
  }

  public var description: String { globs.isEmpty ? "*:*" : globs.map(\.text).joined(separator: ",") }

  /// Shell-style matching of `*` and `?`.
  static func glob(_ pattern: String, _ text: String) -> Bool {
    let p = Array(pattern.utf8), t = Array(text.utf8)
    var i = 0, j = 0, star = -1, mark = 0
    while j < t.count {
      if i < p.count, p[i] == UInt8(ascii: "?") || p[i] == t[j] {
        i += 1; j += 1
      } else if i < p.count, p[i] == UInt8(ascii: "*") {
        star = i; mark = j; i += 1
      } else if star >= 0 {
        i = star + 1; mark += 1; j = mark
      } else {
        return false
      }
    }
    while i < p.count, p[i] == UInt8(ascii: "*") { i += 1 }
    return i == p.count
  }

  /// The catalogued name (or event part of one) nearest to `text`, if any is near.
  static func closest(to text: String) -> String? {
    Suggestion.closest(to: text, among: TraceEventName.all.map(\.description) + TraceEventName.all.map(\.event))
  }
}

/// An `--events` list that cannot be used: which glob, and why.
public struct TraceFilterError: Error, Hashable, Sendable, CustomStringConvertible {
  public let glob: String
  public let message: String
  public var description: String { "--events: \(message)" }
}
