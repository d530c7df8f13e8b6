/// The machine's address spaces as an SVG drawing: host-physical space on the left (each BAR,
/// the dma-buf ranges exported from it, the pages a guest maps), every VM's guest-physical space
/// on the right (its memslots, its mapped and pending pages coloured by Secure-EPT state), and
/// an arrow from each run of guest pages to the host pages it maps.
///
/// The scale is broken and logarithmic so that a 4 KiB page and a 64 GiB BAR are both legible:
/// only BARs and memslots are drawn, with a marked gap between them; inside one, each run of
/// pages that share a state is one cell whose height grows with the logarithm of its size.
/// The output depends only on the state, so it can be compared byte for byte.
public struct AddressMap {
  public let state: MachineState
  public let title: String
  public let caption: String?

  public init(_ state: MachineState, title: String, caption: String? = nil) {
    self.state = state; self.title = title; self.caption = caption
  }

  // MARK: Geometry

  static let labelWidth = 430.0
  static let boxWidth = 120.0
  static let stripWidth = 12.0
  static let arrowGap = 170.0
  static let top = 78.0
  static let gapHeight = 22.0
  static let headerHeight = 24.0

  static var hostBoxX: Double { 20 + labelWidth + stripWidth + 4 }
  static var guestBoxX: Double { hostBoxX + boxWidth + arrowGap }
  static var width: Double { guestBoxX + boxWidth + 10 + labelWidth + 20 }

  /// A cell's height: 16 px for a 4 KiB page, 5 px more per doubling, at most 140 px.
  static func height(_ bytes: UInt64) -> Double {
    let pages = max(1, bytes >> 12)
    let log2 = Double(63 - pages.leadingZeroBitCount)
    return min(140, 16 + 5 * log2)
  }

  /// `≈253 GiB`: a gap's size to a few digits (exact sizes are in the cells).
  static func roughSize(_ bytes: UInt64) -> String {
    let exact = sizeText(bytes)
    guard exact.contains("bytes") || exact.split(separator: " ").first.map({ $0.count > 4 }) == true else { return exact }
    let units: [(Double, String)] = [(0x1p50, "PiB"), (0x1p40, "TiB"), (0x1p30, "GiB"), (0x1p20, "MiB"), (0x1p10, "KiB")]
    for (unit, name) in units where Double(bytes) >= unit {
      let value = Double(bytes) / unit
      let tenths = Int((value * 10).rounded())
      let digits = value >= 100 || tenths % 10 == 0 ? String(Int(value.rounded())) : String(Double(tenths) / 10)
      return "\u{2248}" + digits + " \(name)"
    }
    return exact
  }

  /// One drawn run of addresses.
  struct Cell {
    var start: UInt64
    var size: UInt64
    var y = 0.0
    var height = 0.0
    var fill: String
    var label: String
    /// The state name for a guest run (colours its arrow).
    var state: String?
  }

  /// `[start, start + size)` cut at every boundary inside it.
  static func split(_ start: UInt64, _ size: UInt64, at boundaries: [UInt64]) -> [(UInt64, UInt64)] {
    let end = start &+ size
    let cuts = Set(boundaries.filter { $0 > start && $0 < end }).sorted()
    var pieces: [(UInt64, UInt64)] = []
    var from = start
    for cut in cuts + [end] {
      pieces.append((from, cut - from))
      from = cut
    }
    return pieces
  }

  static let colours: [String: String] = [
    "MMIO_MAPPED": "#43a047", "MMIO_PENDING": "#fbc02d", "MMIO_BLOCKED": "#f4511e",
    "MAPPED": "#43a047", "PENDING": "#fbc02d", "BLOCKED": "#f4511e", "mapped": "#1e88e5",
  ]
  static func colour(_ state: String) -> String { colours[state] ?? "#8e8e8e" }

  // MARK: Drawing

  /// The SVG document.
  public var svg: String {
    var body: [String] = []
    // Guest runs: per VM, the mapping runs (Secure-EPT runs for a TD, TDP MMU runs otherwise).
    struct GuestRun { var vm: UInt32; var gpa: UInt64; var hpa: UInt64; var size: UInt64; var state: String }
    var runs: [GuestRun] = []
    for vm in state.vms {
      if let td = vm.td.flatMap(state.td) {
        runs += td.sept.map { GuestRun(vm: vm.id, gpa: $0.gpa, hpa: $0.hpa, size: $0.size, state: $0.state) }
      } else {
        runs += vm.mappings.map { GuestRun(vm: vm.id, gpa: $0.gpa, hpa: $0.hpa, size: $0.size, state: "mapped") }
      }
    }

    // Host side: every BAR, cut at exported ranges and mapped pages.
    var hostCells: [[Cell]] = []
    var hostTitles: [String] = []
    var y = Self.top + Self.headerHeight
    let bars = state.devices.flatMap { d in d.bars.map { (device: d, bar: $0) } }.sorted { $0.bar.base < $1.bar.base }
    var hostGaps: [(Double, String)] = []
    var previousEnd: UInt64?
    for (device, bar) in bars {
      if let previousEnd {
        hostGaps.append((y, bar.base > previousEnd ? "\(Self.roughSize(bar.base - previousEnd)) not shown" : ""))
        y += Self.gapHeight
      }
      hostTitles.append("\(device.name) BAR\(bar.index)  \(bar.is64Bit ? "64" : "32")-bit  \(sizeText(bar.size))")
      y += 14
      let exported = state.dmabufs.flatMap { b in b.ranges.map { (buffer: b, range: $0) } }
      var boundaries: [UInt64] = []
      for e in exported { boundaries += [e.range.hpa, e.range.hpa &+ e.range.size] }
      for r in runs { boundaries += [r.hpa, r.hpa &+ r.size] }
      var cells: [Cell] = []
      for (start, size) in Self.split(bar.base, bar.size, at: boundaries) {
        var label = "\(hex(start))  \(sizeText(size))"
        let buffers = exported.filter { start >= $0.range.hpa && start - $0.range.hpa < $0.range.size }.map(\.buffer)
        for b in buffers {
          label += "  dmabuf\(b.id)" + (b.private == true ? " private" : b.private == false ? " shared" : "")
            + (b.revoked == true ? " REVOKED" : "")
        }
        let mappers = runs.filter { start >= $0.hpa && start - $0.hpa < $0.size }
        let fill = mappers.first.map { Self.colour($0.state) } ?? "#e0e0e0"
        for m in mappers { label += "  <- vm\(m.vm) \(m.state)" }
        cells.append(Cell(start: start, size: size, y: y, height: Self.height(size), fill: fill, label: label))
        y += Self.height(size)
      }
      hostCells.append(cells)
      previousEnd = bar.base &+ bar.size
    }
    let hostBottom = y

    // Guest side: each VM's memslots, cut at its runs.
    var guestCells: [UInt32: [Cell]] = [:]
    var guestBlocks: [(title: String, y: Double)] = []
    var guestGaps: [(Double, String)] = []
    y = Self.top + Self.headerHeight
    for vm in state.vms {
      guestBlocks.append(("vm\(vm.id)" + (vm.name.map { " (\($0))" } ?? "") + "  \(vm.type)" + (vm.td.map { "  td \($0)" } ?? "")
                          + (vm.dead ? "  DEAD" : "") + (vm.td.flatMap(state.td)?.fatal == true ? "  FATAL" : ""), y))
      y += 16
      let mine = runs.filter { $0.vm == vm.id }
      // Memslots, plus any run outside every slot (an invariant broke; draw it anyway).
      var regions = vm.memslots.map { (start: $0.gpa, size: $0.size, name: "slot \($0.slot)" + ($0.dmabuf.map { " dmabuf\($0)" } ?? "")) }
      for r in mine where !regions.contains(where: { r.gpa >= $0.start && r.gpa - $0.start < $0.size }) {
        regions.append((r.gpa, r.size, "no memslot"))
      }
      regions.sort { $0.start < $1.start }
      if regions.isEmpty {
        guestGaps.append((y + 4, "no memslots"))
        y += Self.gapHeight
      }
      var previous: UInt64?
      var cells: [Cell] = []
      for region in regions {
        if let previous {
          guestGaps.append((y, region.start > previous ? "\(Self.roughSize(region.start - previous)) not shown" : ""))
          y += Self.gapHeight
        }
        guestGaps.append((y + 10, region.name))
        y += 14
        let boundaries = mine.flatMap { [$0.gpa, $0.gpa &+ $0.size] }
        for (start, size) in Self.split(region.start, region.size, at: boundaries) {
          let run = mine.first { start >= $0.gpa && start - $0.gpa < $0.size }
          var label = "\(hex(start))  \(sizeText(size))"
          label += run.map { "  \($0.state) -> \(hex($0.hpa &+ (start - $0.gpa)))" } ?? "  not mapped"
          cells.append(Cell(start: start, size: size, y: y, height: Self.height(size),
                            fill: run.map { Self.colour($0.state) } ?? "#f5f5f5", label: label, state: run?.state))
          y += Self.height(size)
        }
        previous = region.start &+ region.size
      }
      guestCells[vm.id] = cells
      y += Self.gapHeight
    }
    let guestBottom = y

    // Columns.
    body.append(text(20 + Self.labelWidth + Self.stripWidth + 4 + Self.boxWidth, Self.top + 4, "host physical (HPA)",
                     anchor: "end", weight: "bold"))
    body.append(text(Self.guestBoxX, Self.top + 4, "guest physical (GPA)", weight: "bold"))
    if bars.isEmpty { body.append(text(Self.hostBoxX, Self.top + Self.headerHeight + 12, "no BARs", style: "italic")) }
    if state.vms.isEmpty { body.append(text(Self.guestBoxX, Self.top + Self.headerHeight + 12, "no VMs", style: "italic")) }
    for (n, cells) in hostCells.enumerated() {
      guard let first = cells.first else { continue }
      body.append(text(Self.hostBoxX + Self.boxWidth, first.y - 3, hostTitles[n], anchor: "end", weight: "bold"))
      for cell in cells {
        body.append(rect(Self.hostBoxX, cell.y, Self.boxWidth, cell.height, fill: cell.fill))
        body.append(text(Self.hostBoxX - Self.stripWidth - 8, cell.y + min(cell.height / 2 + 4, 12), cell.label, anchor: "end"))
      }
    }
    // Exported ranges: a strip left of the BARs, purple for private, teal for shared, hatched
    // red once revoked.
    for buffer in state.dmabufs {
      for range in buffer.ranges {
        let covered = hostCells.flatMap { $0 }.filter { $0.start >= range.hpa && $0.start - range.hpa < range.size }
        guard let first = covered.first, let last = covered.last else { continue }
        let fill = buffer.revoked == true ? "url(#revoked)" : buffer.private == true ? "#7e57c2" : "#26a69a"
        body.append(rect(Self.hostBoxX - Self.stripWidth - 2, first.y, Self.stripWidth, last.y + last.height - first.y,
                         fill: fill, extra: "><title>dmabuf\(buffer.id)</title></rect"))
      }
    }
    for (gapY, label) in hostGaps {
      body.append(text(Self.hostBoxX + Self.boxWidth / 2, gapY + 15, "\u{22EE} " + label, anchor: "middle", style: "italic"))
    }
    for block in guestBlocks { body.append(text(Self.guestBoxX, block.y + 10, block.title, weight: "bold")) }
    for (gapY, label) in guestGaps { body.append(text(Self.guestBoxX + 4, gapY + 1, label, style: "italic")) }
    for cells in guestCells.sorted(by: { $0.key < $1.key }).map(\.value) {
      for cell in cells {
        body.append(rect(Self.guestBoxX, cell.y, Self.boxWidth, cell.height, fill: cell.fill))
        body.append(text(Self.guestBoxX + Self.boxWidth + 10, cell.y + min(cell.height / 2 + 4, 12), cell.label))
      }
    }

    // Arrows: from each mapped guest cell to the host cell holding its first page.
    let host = hostCells.flatMap { $0 }
    for cells in guestCells.sorted(by: { $0.key < $1.key }).map(\.value) {
      for cell in cells {
        guard let stateName = cell.state,
              let run = runs.first(where: { cell.start >= $0.gpa && cell.start - $0.gpa < $0.size }) else { continue }
        let hpa = run.hpa &+ (cell.start - run.gpa)
        guard let target = host.first(where: { hpa >= $0.start && hpa - $0.start < $0.size }) else { continue }
        let (x1, y1) = (Self.guestBoxX, cell.y + cell.height / 2)
        let (x2, y2) = (Self.hostBoxX + Self.boxWidth + 2, target.y + min(target.height / 2, 8))
        body.append("<path d=\"M\(f(x1)) \(f(y1)) C\(f(x1 - 70)) \(f(y1)) \(f(x2 + 70)) \(f(y2)) \(f(x2)) \(f(y2))\" "
                    + "fill=\"none\" stroke=\"\(Self.colour(stateName))\" stroke-width=\"1.6\" marker-end=\"url(#arrow)\"/>")
      }
    }

    // Legend.
    let legendY = max(hostBottom, guestBottom) + 16
    let legend: [(String, String)] = [
      ("#fbc02d", "MMIO_PENDING (mapped, not yet accepted)"), ("#43a047", "MMIO_MAPPED (accepted)"),
      ("#f4511e", "MMIO_BLOCKED"), ("#1e88e5", "mapped (not a TD)"), ("#7e57c2", "dma-buf range, private"),
      ("#26a69a", "dma-buf range, shared"), ("url(#revoked)", "dma-buf range, revoked"), ("#e0e0e0", "BAR, not mapped"),
    ]
    for (n, item) in legend.enumerated() {
      let x = 20 + Double(n % 3) * 340, ly = legendY + Double(n / 3) * 18
      body.append(rect(x, ly, 14, 12, fill: item.0))
      body.append(text(x + 20, ly + 10, item.1))
    }
    body.append(text(20, legendY + 66, "Scale: broken and logarithmic. Only BARs and memslots are drawn; a cell is a run of pages "
                     + "in one state, 16 px for 4 KiB and 5 px more per doubling.", style: "italic"))
    let height = legendY + 80

    var head: [String] = [
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(f(Self.width))\" height=\"\(f(height))\" "
        + "viewBox=\"0 0 \(f(Self.width)) \(f(height))\" font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\" font-size=\"11\">",
      "<title>\(escape(title))</title>",
      "<defs>",
      "<marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">"
        + "<path d=\"M0 0 L10 5 L0 10 z\" fill=\"#424242\"/></marker>",
      "<pattern id=\"revoked\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">"
        + "<rect width=\"6\" height=\"6\" fill=\"#ffffff\"/><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#d32f2f\" stroke-width=\"3\"/></pattern>",
      "</defs>",
      "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>",
      text(20, 24, "pmmio show: " + title, weight: "bold", size: 14),
    ]
    if let caption { head.append(text(20, 44, caption)) }
    return (head + body + ["</svg>"]).joined(separator: "\n") + "\n"
  }

  func rect(_ x: Double, _ y: Double, _ w: Double, _ h: Double, fill: String, extra: String = "/") -> String {
    "<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(w))\" height=\"\(f(h))\" fill=\"\(fill)\" stroke=\"#424242\" stroke-width=\"0.8\"\(extra)>"
  }

  func text(_ x: Double, _ y: Double, _ content: String, anchor: String = "start", weight: String? = nil,
            style: String? = nil, size: Int? = nil) -> String {
    var attributes = "x=\"\(f(x))\" y=\"\(f(y))\""
    if anchor != "start" { attributes += " text-anchor=\"\(anchor)\"" }
    if let weight { attributes += " font-weight=\"\(weight)\"" }
    if let style { attributes += " font-style=\"\(style)\"" }
    if let size { attributes += " font-size=\"\(size)\"" }
    return "<text \(attributes)>\(escape(content))</text>"
  }

  /// A coordinate with at most one decimal, so output is stable.
  func f(_ value: Double) -> String {
    let tenths = (value * 10).rounded()
    return tenths.truncatingRemainder(dividingBy: 10) == 0 ? String(Int(tenths / 10)) : String(tenths / 10)
  }

  func escape(_ text: String) -> String {
    var out = ""
    for c in text {
      switch c {
      case "&": out += "&amp;"
      case "<": out += "&lt;"
      case ">": out += "&gt;"
      case "\"": out += "&quot;"
      default: out.append(c)
      }
    }
    return out
  }
}
