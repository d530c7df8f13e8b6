import KernelCore
import PCI
import DmaBuf
import VFIO
import KVM
import TDX
import Platform
import HashTreeCollections

// The one place that reads a Machine for a state dump: if the platform renames a field, this
// file is what follows it. Everything here is the machine's public state.

extension MachineState {
  /// The state of `machine` now.
  public init(_ machine: Machine) {
    self.init(variant: machine.variant.rawValue)
    let nameOf = Dictionary(machine.deviceNames.map { ($0.value, $0.key) }, uniquingKeysWith: { a, _ in a })
    var vmFDs: [UInt32: [Int32]] = [:]
    for (fd, file) in machine.files.open {
      switch file {
      case .vfioDevice(let id):
        let device = machine.vfio.file(id).flatMap { nameOf[$0.device] }
        files.append(OpenFile(fd: fd.rawValue, kind: "vfio-device", id: id.rawValue, device: device))
      case .dmaBuf(let id):
        files.append(OpenFile(fd: fd.rawValue, kind: "dma-buf", id: id.rawValue))
      case .vm(let id):
        files.append(OpenFile(fd: fd.rawValue, kind: "vm", id: id.rawValue))
        vmFDs[id.rawValue, default: []].append(fd.rawValue)
      case .guestMemfd(_, let id):
        files.append(OpenFile(fd: fd.rawValue, kind: "guest_memfd", id: id.rawValue))
      }
    }
    devices = machine.vfio.devices.values.sorted { $0.id < $1.id }.map { Self.device($0, name: nameOf[$0.id]) }

    // Which VM and slot hold each attachment.
    var holders: [AttachmentID: (vm: VMID, binding: SlotBinding)] = [:]
    for (id, vm) in machine.kvm.vms {
      for (attachment, binding) in vm.bindings { holders[attachment] = (id, binding) }
    }
    dmabufs = machine.dmabufCore.buffers.values.sorted { $0.id < $1.id }.map { buffer in
      let priv = buffer.exporter.name == VFIOPCIDriver.exporterName ? machine.vfio.dmaBuf(buffer.id) : nil
      let importers = buffer.attachments.compactMap { machine.dmabufCore.attachment($0) }.map { a in
        let holder = holders[a.id]
        return Importer(attachment: a.id.rawValue, importer: a.importer, dynamic: a.ops.dynamic, peer2peer: a.peer2peer,
                        pinned: a.pinned, moveNotifications: a.moveNotifications, vm: holder?.vm.rawValue,
                        slot: holder.map { Self.slotName($0.binding.slot) }, stale: holder?.binding.isStale == true ? true : nil)
      }
      return DmaBuf(id: buffer.id.rawValue, size: buffer.size, exporter: buffer.exporter.name, fileRefs: buffer.fileRefs,
                    device: priv?.device.flatMap { nameOf[$0] }, region: priv?.regionIndex,
                    ranges: priv?.ranges.map { HostRange(hpa: $0.start.rawValue, size: $0.length) } ?? [],
                    private: priv?.isPrivate, vm: priv?.vm?.rawValue, revoked: priv?.revoked, importers: importers)
    }

    let vmNames = Dictionary(machine.configuredVMs.compactMap { name, fd -> (VMID, String)? in
      guard case .vm(let id)? = machine.files[fd] else { return nil }
      return (id, name)
    }, uniquingKeysWith: { a, _ in a })
    let tdOf = machine.kvm.tds
    vms = machine.kvm.vms.values.sorted { $0.id < $1.id }.map { vm in
      MachineState.VM(id: vm.id.rawValue, name: vmNames[vm.id], fds: vmFDs[vm.id.rawValue] ?? [], type: "\(vm.type)",
         dead: vm.isDead, vcpus: vm.vcpus.sorted(), td: tdOf[vm.id]?.rawValue,
         memslots: vm.memslots.values.sorted { $0.key < $1.key }.map(Self.memslot),
         mappings: Self.mappings(vm.mmu.leaves()), mappedPages: vm.mmu.mappedPages)
    }

    let vmOfTD = Dictionary(tdOf.map { ($0.value, $0.key) }, uniquingKeysWith: { a, _ in a })
    let module = machine.kvm.tdx
    tdx.tds = module.tds.sorted { $0.key < $1.key }.map { id, td in
      TD(id: id.rawValue, vm: vmOfTD[id]?.rawValue, epoch: td.epoch, fatal: td.isFatal, vcpus: td.vcpus.count,
         vcpusInGuest: td.vcpus.count { $0.inGuest }, sept: Self.sept(td.sept))
    }
    tdx.mmiomt = Self.mmiomt(module.mmiomt.map { (key: $0.key, value: $0.value) }, devifs: module.devifs)
    tdx.mmiomtTablePages = module.mmiomtPages.count
    let bars = devices.flatMap { device in device.bars.map { (device.name, $0) } }
    tdx.devifs = module.devifs.sorted { $0.key < $1.key }.map { id, devif in
      // The DEVIF's MMIO: the MMIOMT entries set for its function.
      let ranges = collapse(tdx.mmiomt.filter { $0.function == devif.interface.rawValue }.map {
        HostRange(hpa: $0.hpa, size: $0.pages << pageShift)
      }, extends: { $0.hpa &+ $0.size == $1.hpa }, merge: { $0.size += $1.size })
      let device = ranges.first.flatMap { range in
        bars.first { range.hpa >= $0.1.base && range.hpa - $0.1.base < $0.1.size }?.0
      }
      return Devif(id: id.rawValue, td: devif.td.rawValue, interface: devif.interface.rawValue, device: device,
                   tdisp: "\(devif.tdispState)", streamBlocked: devif.streamBlocked, ranges: ranges,
                   mappedPages: devif.mappedPages)
    }
  }

  static func device(_ d: VFIOPCICoreDevice, name: String?) -> Device {
    let f = d.function
    return Device(
      name: name ?? f.name, id: d.id.rawValue, command: f.command.rawValue, memoryDecode: f.memoryDecodeEnabled,
      busMaster: f.busMasterEnabled, power: "\(f.powerState)", tdi: f.tdiState?.specName, openCount: d.openCount,
      binding: d.binding.map { Binding(private: $0.isPrivate, vm: $0.vm?.rawValue) },
      bars: f.bars.map { bar in
        BAR(index: bar.index, base: bar.base.rawValue, size: bar.size, is64Bit: bar.is64Bit, prefetchable: bar.prefetchable,
            msixTable: bar.msixTable.map { Span(offset: $0.offset, size: $0.size) },
            msixPBA: bar.msixPBA.map { Span(offset: $0.offset, size: $0.size) },
            writtenBytes: f.contents.writtenByteCount(bar: bar.index) == 0 ? nil : f.contents.writtenByteCount(bar: bar.index))
      },
      dmabufs: d.dmabufs.map(\.rawValue), hostMappings: d.hostMappings, registrations: d.registrations,
      resetsUnderLiveImport: d.resetsUnderLiveImport)
  }

  static func slotName(_ key: SlotKey) -> String { key.asID == 0 ? "\(key.id)" : "\(key.asID):\(key.id)" }

  static let memslotFlagNames: [(MemslotFlags, String)] = [
    (.logDirtyPages, "log_dirty_pages"), (.readonly, "readonly"), (.guestMemfd, "guest_memfd"), (.vfioDmaBuf, "vfio_dmabuf"),
  ]

  static func memslot(_ slot: KVM.Memslot) -> MachineState.Memslot {
    MachineState.Memslot(slot: slotName(slot.key), gpa: slot.baseGFN.gpa.rawValue, size: slot.npages << pageShift,
             flags: memslotFlagNames.filter { slot.flags.contains($0.0) }.map(\.1), userspaceAddr: slot.userspaceAddr,
             guestMemfdOffset: slot.guestMemfdOffset, dmabuf: slot.dmaBuf?.dmaBuf.rawValue,
             attachment: slot.dmaBuf?.attachment.rawValue, pgoff: slot.dmaBuf?.pgoff.rawValue)
  }

  static func levelName(bytes: UInt64) -> String { bytes >= 1 << 30 ? "1G" : bytes >= 1 << 21 ? "2M" : "4K" }

  /// TDP MMU leaves as runs.
  static func mappings(_ leaves: [MappedLeaf]) -> [Mapping] {
    let single = leaves.map { leaf -> Mapping in
      let s = leaf.spte
      let access = (s.isReadable ? "r" : "") + (s.isWritable ? "w" : "") + (s.isExecutable ? "x" : "")
      let type: String = switch s.memoryType {
      case .uncachable: "UC"
      case .writeBack: "WB"
      case .writeCombining: "WC"
      case .writeThrough: "WT"
      case .writeProtected: "WP"
      case nil: "mt\(s.memoryTypeBits)"
      }
      return Mapping(gpa: leaf.gfn.gpa.rawValue, hpa: s.pfn.hpa.rawValue, size: leaf.level.bytes,
                     level: levelName(bytes: leaf.level.bytes), count: 1, access: access, memoryType: type)
    }
    return mappingRuns(single)
  }

  /// Leaves that continue one another (same level and attributes, GPA and HPA both
  /// contiguous) as one run.
  static func mappingRuns(_ single: [Mapping]) -> [Mapping] {
    collapse(single, extends: { run, next in
      run.level == next.level && run.access == next.access && run.memoryType == next.memoryType
        && run.gpa &+ run.size == next.gpa && run.hpa &+ run.size == next.hpa
    }, merge: { run, next in run.size += next.size; run.count += next.count })
  }

  /// Secure-EPT entries as runs, in GPA order.
  static func sept(_ entries: some Sequence<(key: GPA, value: SEPTEntry)>) -> [SEPTRun] {
    let single = entries.sorted { $0.key < $1.key }.map { gpa, entry in
      let blocked = entry.state == .mmioBlocked || entry.state == .blocked
      return SEPTRun(gpa: gpa.rawValue, hpa: entry.hpa.rawValue, size: entry.level.size, level: "\(entry.level)",
                     count: 1, state: "\(entry.state)", blockedEpoch: blocked ? entry.bepoch : nil)
    }
    return septRuns(single)
  }

  /// Entries that continue one another (same state, level and block epoch, GPA and HPA both
  /// contiguous) as one run.
  static func septRuns(_ single: [SEPTRun]) -> [SEPTRun] {
    collapse(single, extends: { run, next in
      run.level == next.level && run.state == next.state && run.blockedEpoch == next.blockedEpoch
        && run.gpa &+ run.size == next.gpa && run.hpa &+ run.size == next.hpa
    }, merge: { run, next in run.size += next.size; run.count += next.count })
  }

  /// MMIOMT DATA entries as runs, in host-page order: one function and level, mapped
  /// contiguously or not at all.
  static func mmiomt(_ table: [(key: PFN, value: MMIOMTEntry)], devifs: TreeDictionary<DevifID, DevifState>) -> [MMIOMTRun] {
    let devifOf = Dictionary(devifs.map { ($0.value.interface, $0.key.rawValue) }, uniquingKeysWith: { a, _ in a })
    let single = table.sorted { $0.key < $1.key }.map { pfn, entry in
      MMIOMTRun(hpa: pfn.hpa.rawValue, pages: entry.level.size >> pageShift, level: "\(entry.level)", count: 1,
                function: entry.function.rawValue, devif: devifOf[entry.function],
                td: entry.mapping?.td.rawValue, gpa: entry.mapping?.gpa.rawValue)
    }
    return collapse(single, extends: { run, next in
      let size = run.pages << pageShift
      guard run.function == next.function, run.level == next.level, run.hpa &+ size == next.hpa, run.td == next.td
      else { return false }
      switch (run.gpa, next.gpa) {
      case (nil, nil): return true
      case (let a?, let b?): return a &+ size == b
      default: return false
      }
    }, merge: { run, next in run.pages += next.pages; run.count += 1 })
  }
}
