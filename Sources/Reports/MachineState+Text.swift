import PCI

extension MachineState {
  /// The state as text, one section per subsystem, address ranges as `info mtree` prints them
  /// (`start-last`, 16 hex digits, inclusive).
  public var text: String {
    var out: [String] = []
    out.append("devices")
    if devices.isEmpty { out.append("  (none)") }
    for d in devices {
      var line = "  \(d.name)  vfio-dev\(d.id)  command \(hex(UInt64(d.command))) (\(commandBits(d)))  \(d.power)"
      if let tdi = d.tdi { line += "  TDI \(tdi)" }
      if let b = d.binding {
        line += b.private ? "  bound private" + (b.vm.map { " to vm\($0)" } ?? "") : "  bound"
      } else {
        line += "  unbound"
      }
      line += "  open \(d.openCount)"
      if !d.hostMappings.isEmpty { line += "  mmapped BAR \(d.hostMappings.map(String.init).joined(separator: ","))" }
      if d.resetsUnderLiveImport > 0 { line += "  \(d.resetsUnderLiveImport) reset(s) under live import" }
      out.append(line)
      for bar in d.bars {
        var text = "    BAR\(bar.index)  \(range(bar.base, bar.size))  \(sizeText(bar.size))  \(bar.is64Bit ? "64-bit" : "32-bit")"
        if bar.prefetchable { text += " prefetchable" }
        if let t = bar.msixTable { text += "  MSI-X table +\(hex(t.offset)) \(sizeText(t.size))" }
        if let p = bar.msixPBA { text += "  PBA +\(hex(p.offset)) \(sizeText(p.size))" }
        if let written = bar.writtenBytes { text += "  \(written) register byte(s) written" }
        out.append(text)
      }
    }

    out.append("fds")
    if files.isEmpty { out.append("  (none)") }
    for f in files {
      let what: String = switch f.kind {
      case "vfio-device": "vfio file \(f.id)" + (f.device.map { " (\($0))" } ?? "")
      case "dma-buf": "dmabuf\(f.id)"
      default: "vm\(f.id)" + (vms.first { $0.id == f.id }?.name.map { " (\($0))" } ?? "")
      }
      out.append(pad("  \(f.fd)", 6) + pad(f.kind, 13) + what)
    }

    out.append("dma-bufs")
    if dmabufs.isEmpty { out.append("  (none)") }
    for b in dmabufs {
      var line = "  dmabuf\(b.id)  \(sizeText(b.size))  \(b.exporter)"
      if let device = b.device { line += " \(device)" }
      if let region = b.region { line += " BAR\(region)" }
      if let p = b.private { line += p ? "  private" + (b.vm.map { " to vm\($0)" } ?? "") : "  shared" }
      if let revoked = b.revoked { line += revoked ? "  REVOKED" : "  live" }
      line += "  \(b.fileRefs) file ref(s)"
      out.append(line)
      for r in b.ranges { out.append("    \(range(r.hpa, r.size))  \(sizeText(r.size))") }
      for i in b.importers {
        var text = "    importer: attachment \(i.attachment) \(i.importer)"
        if let vm = i.vm, !i.importer.contains("vm\(vm)") { text += " vm\(vm)" + (i.slot.map { " slot \($0)" } ?? "") }
        if i.stale == true { text += " (slot freed without detach)" }
        let flags = [i.dynamic ? "dynamic" : "static", i.peer2peer ? "p2p" : nil, i.pinned ? "pinned" : nil].compactMap { $0 }
        text += " (\(flags.joined(separator: ", ")), \(i.moveNotifications) move_notify)"
        out.append(text)
      }
    }

    for vm in vms {
      var line = "vm\(vm.id)" + (vm.name.map { " (\($0))" } ?? "") + "  \(vm.type)"
      line += vm.fds.isEmpty ? "  no fd" : "  fd \(vm.fds.map(String.init).joined(separator: ","))"
      line += "  vcpu ids \(vm.vcpus.isEmpty ? "none" : vm.vcpus.map(String.init).joined(separator: ","))"
      if let td = vm.td { line += "  td \(td)" }
      if vm.dead { line += "  DEAD (KVM_BUG_ON)" }
      out.append(line)
      out.append("  memslots")
      if vm.memslots.isEmpty { out.append("    (none)") }
      for s in vm.memslots {
        var text = "    slot \(s.slot)  \(range(s.gpa, s.size))  \(sizeText(s.size))  [\(s.flags.joined(separator: ", "))]"
        if let buf = s.dmabuf { text += "  dmabuf\(buf)" }
        if let a = s.attachment { text += " attachment \(a)" }
        if let pgoff = s.pgoff, pgoff != 0 { text += " pgoff \(hex(pgoff))" }
        if s.userspaceAddr != 0 { text += "  hva \(hex(s.userspaceAddr))" }
        out.append(text)
      }
      out.append("  TDP MMU (\(vm.mappedPages) page(s) mapped)")
      if vm.mappings.isEmpty { out.append("    (no leaves)") }
      for m in vm.mappings {
        out.append("    \(range(m.gpa, m.size)) -> \(hex16(m.hpa))  \(m.count) x \(m.level)  \(m.access.isEmpty ? "-" : m.access) \(m.memoryType)")
      }
      if let td = vm.td.flatMap(self.td) {
        out.append("  Secure EPT (td \(td.id), epoch \(td.epoch), \(td.vcpusInGuest) of \(td.vcpus) vCPUs in the guest"
                   + (td.fatal ? ", FATAL" : "") + ")")
        if td.sept.isEmpty { out.append("    (no entries)") }
        for e in td.sept {
          out.append("    \(range(e.gpa, e.size)) -> \(hex16(e.hpa))  \(e.count) x \(e.level)  \(e.state)"
                     + (e.blockedEpoch.map { " (blocked in epoch \($0))" } ?? ""))
        }
      }
    }

    out.append("TDX module")
    let orphanTDs = tdx.tds.filter { td in !vms.contains { $0.td == td.id } }
    for td in orphanTDs { out.append("  td \(td.id): no VM, \(td.sept.count) SEPT run(s)") }
    if tdx.devifs.isEmpty { out.append("  devifs: (none)") }
    for d in tdx.devifs {
      out.append("  devif \(d.id)  td \(d.td)  rid \(hex(UInt64(d.interface)))" + (d.device.map { " (\($0))" } ?? "")
                 + "  TDISP \(d.tdisp)  stream \(d.streamBlocked ? "BLOCKED" : "live")  \(d.mappedPages) page(s) mapped")
      for r in d.ranges { out.append("    \(range(r.hpa, r.size))  \(sizeText(r.size))") }
    }
    out.append("  MMIOMT (\(tdx.mmiomtTablePages) table page(s))")
    if tdx.mmiomt.isEmpty { out.append("    (no entries)") }
    for run in tdx.mmiomt {
      var text = "    \(range(run.hpa, run.pages << 12))  \(run.count) x \(run.level)  rid \(hex(UInt64(run.function)))"
        + (run.devif.map { " (devif \($0))" } ?? " (no devif)")
      if let td = run.td, let gpa = run.gpa { text += "  mapped td \(td) gpa \(hex(gpa))" }
      out.append(text)
    }
    return out.joined(separator: "\n") + "\n"
  }

  func commandBits(_ d: Device) -> String {
    var bits: [String] = []
    if d.command & 0x2 != 0 { bits.append("MEMORY") }
    if d.command & 0x4 != 0 { bits.append("MASTER") }
    if d.command & 0x1 != 0 { bits.append("IO") }
    return bits.isEmpty ? "off" : bits.joined(separator: " ")
  }
}

/// `text` followed by spaces up to `width` characters.
func pad(_ text: String, _ width: Int) -> String { text + String(repeating: " ", count: max(0, width - text.count)) }

/// `0x80000000`.
func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

/// 16 hex digits, as `info mtree` prints an address.
func hex16(_ value: UInt64) -> String {
  let digits = String(value, radix: 16)
  return String(repeating: "0", count: max(0, 16 - digits.count)) + digits
}

/// `start-last`, inclusive.
func range(_ start: UInt64, _ size: UInt64) -> String {
  "\(hex16(start))-\(hex16(start &+ size &- 1))"
}

/// `2 MiB`, `64 GiB`.
func sizeText(_ bytes: UInt64) -> String { MMIOWindowAllocator.sizeText(bytes) }
