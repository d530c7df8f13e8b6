import KernelCore
import KVM
import Platform
import Scenarios

/// Draws the next step of a sequence from what the earlier steps returned: valid arguments
/// most of the time, and plausible wrong ones (closed, wrong-kind and made-up fds, misaligned
/// and overflowing sizes and offsets, overlapping and moving slots, the wrong VM, every flag
/// bit, region indexes past the end, TDISP requests in whatever state the interface is in).
/// A third of the steps follow a device's way to a mapped BAR (open, bind, lock, DEVIF, MMIOMT,
/// start, export, attributes, slot, accept, access) so that sequences reach deep states.
public struct OpGenerator: Sendable {
  /// What a handle name stands for, as far as the generator knows.
  public enum HandleKind: Hashable, Sendable {
    case vfio(device: String)
    case dmabuf(device: String, size: UInt64)
    case vm(VMTypeName)
    case gmem(vm: String, size: UInt64)
    case attachment
  }

  struct Handle: Hashable, Sendable {
    let name: String
    let kind: HandleKind
    var open = true
  }

  struct Slot: Hashable, Sendable {
    var slot: UInt32
    var gpa: UInt64
    var size: UInt64
    var flags: UInt64
  }

  public let configuration: MachineConfiguration
  public let variant: Variant
  var handles: [Handle] = []
  var slots: [String: [Slot]] = [:]
  /// Where each device is on its way to a mapped BAR (an index into ``flow``).
  var progress: [String: Int] = [:]
  /// The VM (handle name) each device's way uses.
  var flowVM: [String: String] = [:]
  var nextName = 1
  /// Ops already in a concurrent path do not bind, so the names stay those of `steps`.
  var binds = true
  /// Leave out the arguments that make the model trap today (``KnownFinding/traps``), so that
  /// a run goes on past them.
  public var avoidKnownTraps = true

  public init(configuration: MachineConfiguration, variant: Variant) {
    self.configuration = configuration
    self.variant = variant
    for vm in configuration.vms { handles.append(Handle(name: vm.name, kind: .vm(vm.type))) }
  }

  var devices: [DeviceConfiguration] { configuration.devices }

  // MARK: Drawing a step

  /// The next step.
  public mutating func next(_ rng: inout FuzzRandom) -> FuzzStep {
    if !devices.isEmpty, rng.chance(35), let step = guided(&rng) { return step }
    while true {
      if let step = random(&rng) { return step }
    }
  }

  /// Every op, with how often it is drawn.
  static let weights: [(String, Int)] = [
    ("vfio.open", 5), ("vfio.bind_iommufd", 5), ("vfio.close", 2), ("vfio.region_info", 2), ("vfio.read", 2),
    ("vfio.write", 2), ("vfio.mmap", 2), ("vfio.set_memory_decode", 3), ("vfio.reset", 2), ("vfio.flr", 2),
    ("vfio.hot_reset", 1), ("vfio.set_power", 2), ("vfio.dma_buf", 8), ("dmabuf.attach", 3), ("dmabuf.detach", 2),
    ("dmabuf.pin", 1), ("dmabuf.get_pfn", 3), ("dmabuf.close", 2), ("tdisp.lock", 4), ("tdisp.start", 4),
    ("tdisp.stop", 3), ("tdisp.report", 1), ("pci.flr", 1), ("pci.write_command", 2), ("kvm.create_vm", 2),
    ("kvm.create_vcpu", 2), ("kvm.check_extension", 1), ("kvm.create_guest_memfd", 3),
    ("kvm.set_memory_attributes", 3), ("kvm.set_user_memory_region", 2), ("kvm.set_user_memory_region2", 10),
    ("kvm.destroy_vm", 1), ("guest.read", 4), ("guest.write", 3), ("tdx.devif_create", 3), ("tdx.devif_remove", 1),
    ("tdx.mmio_mt_add", 3), ("tdx.stream_block", 1), ("guest.accept_mmio", 5), ("tdx.seamcall", 1),
  ]
  static let cumulativeWeights = weights.reduce(into: [Int]()) { $0.append(($0.last ?? 0) + $1.1) }

  mutating func random(_ rng: inout FuzzRandom) -> FuzzStep? {
    let op = Self.weights[rng.weighted(cumulative: Self.cumulativeWeights)].0
    return step(op, valid: rng.chance(70), &rng)
  }

  /// A step of `op`; `nil` when the machine has nothing it could name (no device for a
  /// TDISP request).
  mutating func step(_ op: String, valid: Bool, _ rng: inout FuzzRandom) -> FuzzStep? {
    switch op {
    case "vfio.open":
      guard let d = device(&rng) else { return nil }
      return make(op, ["device": .string(d)], binds: true)
    case "vfio.bind_iommufd":
      var args: StepArguments = ["fd": fd(valid, &rng, vfio), "private": .bool(rng.chance(50))]
      if rng.chance(70) { args["vm"] = vmFD(valid, &rng, prefer: rng.chance(70) ? .tdx : nil) }
      return make(op, args)
    case "vfio.close", "vfio.reset", "vfio.flr", "vfio.hot_reset":
      return make(op, ["fd": fd(valid, &rng, vfio)])
    case "vfio.region_info", "vfio.mmap":
      return make(op, ["fd": fd(valid, &rng, vfio), "region_index": .number(regionIndex(valid, &rng))])
    case "vfio.read", "vfio.write":
      let index = regionIndex(valid, &rng)
      let size: UInt64 = valid ? rng.pick([1, 2, 4, 8]) : rng.pick([0, 3, 5, 16, 0x1000, UInt64.max])
      let offset: UInt64 = valid ? UInt64(rng.below(64)) * 8 : rng.pick([1, 0xFFF, 0x1000_0000, UInt64.max - 1, UInt64.max])
      return make(op, ["fd": fd(valid, &rng, vfio), "region_index": .number(index), "offset": .number(offset), "size": .number(size)])
    case "vfio.set_memory_decode":
      return make(op, ["fd": fd(valid, &rng, vfio), "enable": .bool(rng.chance(60))])
    case "vfio.set_power":
      return make(op, ["fd": fd(valid, &rng, vfio), "state": .string(rng.chance(60) ? "D0" : "D3hot")])
    case "vfio.dma_buf":
      let handle = pickHandle(&rng, vfio)
      let fdValue: ArgumentValue = valid ? (handle.map { .handle(.name($0.name)) } ?? fd(false, &rng, vfio)) : fd(false, &rng, vfio)
      var device: DeviceConfiguration?
      if let h = handle, case .vfio(let name) = h.kind { device = devices.first { $0.name == name } }
      let bar = device.map { rng.pick($0.bars) }
      let index = valid ? UInt64(bar?.index ?? 0) : regionIndex(false, &rng)
      var args: StepArguments = ["fd": fdValue, "region_index": .number(index), "ranges": .ranges(ranges(valid, bar?.size ?? 0x1000, &rng))]
      if !valid, rng.chance(20) { args["flags"] = .number(UInt64(1) << UInt64(rng.below(32))) }
      if !valid, rng.chance(20) { args["open_flags"] = .number(rng.pick([0, 1, 2, 0x800, 0x80000, 0xFFFF_FFFF])) }
      return make(op, args, binds: true)
    case "dmabuf.attach":
      return make(op, ["fd": fd(valid, &rng, dmabuf), "importer": .string(rng.pick(["test", "rdma0", "gpu"])),
                       "dynamic": .bool(rng.chance(80)), "peer2peer": .bool(rng.chance(80))], binds: true)
    case "dmabuf.detach", "dmabuf.pin":
      return make(op, ["attachment": attachment(valid, &rng)])
    case "dmabuf.get_pfn":
      let pgoff: UInt64 = valid ? UInt64(rng.below(16)) : rng.pick([0x200, 1 << 20, 1 << 40, UInt64.max])
      return make(op, ["attachment": attachment(valid, &rng), "pgoff": .number(pgoff)])
    case "dmabuf.close":
      return make(op, ["fd": fd(valid, &rng, dmabuf)])
    case "tdisp.lock", "tdisp.stop", "tdisp.report", "pci.flr", "tdx.mmio_mt_add", "tdx.stream_block":
      guard let d = device(&rng, tdisp: valid) else { return nil }
      return make(op, ["device": .string(d)])
    case "tdisp.start":
      guard let d = device(&rng, tdisp: valid) else { return nil }
      return make(op, ["device": .string(d), "nonce": .string(valid || rng.chance(50) ? "echo" : "wrong")])
    case "pci.write_command":
      guard let d = device(&rng) else { return nil }
      var args: StepArguments = ["device": .string(d)]
      if rng.chance(80) { args["memory"] = .bool(rng.chance(50)) }
      if rng.chance(40) { args["bus_master"] = .bool(rng.chance(50)) }
      return make(op, args)
    case "kvm.create_vm":
      return make(op, ["type": .string(rng.pick(VMTypeName.allCases).rawValue)], binds: true)
    case "kvm.create_vcpu":
      let id: UInt64 = valid ? UInt64(rng.below(5)) : rng.pick([4, 1023, 4095, 4096, UInt64(UInt32.max)])
      return make(op, ["vm": vmFD(valid, &rng), "id": .number(id)])
    case "kvm.check_extension":
      var args: StepArguments = ["cap": .string(rng.pick(KVMCapabilityNumber.allCases).scenarioName)]
      if rng.chance(60) { args["vm"] = vmFD(valid, &rng) }
      return make(op, args)
    case "kvm.create_guest_memfd":
      let size: UInt64 = valid ? UInt64(rng.pick([1, 2, 16, 512])) * 0x1000 : rng.pick([0, 1, 0xFFF, 0x1001, 1 << 63, UInt64.max & ~0xFFF])
      let flags: UInt64 = valid ? rng.pick([0, 0, 1, 2, 3]) : (rng.chance(50) ? UInt64(1) << UInt64(rng.below(64)) : rng.pick([4, 7, UInt64.max]))
      return make(op, ["vm": vmFD(valid, &rng), "size": .number(size), "flags": .number(flags)], binds: true)
    case "kvm.set_memory_attributes":
      let vm = vmFD(valid, &rng, prefer: rng.chance(60) ? nil : .swProtected)
      var address: UInt64 = 0x8000_0000, size: UInt64 = 0x1000
      if case .handle(.name(let name)) = vm, let slot = slots[name].flatMap({ $0.isEmpty ? nil : rng.pick($0) }) {
        address = slot.gpa
        size = rng.chance(50) ? slot.size : 0x1000
      }
      if !valid {
        switch rng.below(4) {
        case 0: address += 0x800
        case 1: size = rng.pick([0, 0x800, UInt64.max & ~0xFFF])
        default: address = rng.pick([UInt64.max & ~0xFFF, 1 << 52])
        }
      }
      var args: StepArguments = ["vm": vm, "address": .number(address), "size": .number(size),
                                 "attributes": .string(rng.chance(70) ? "private" : "shared")]
      if !valid, rng.chance(30) { args["flags"] = .number(UInt64(1) << UInt64(rng.below(64))) }
      return make(op, args)
    case "kvm.set_user_memory_region", "kvm.set_user_memory_region2":
      return memslot(op, valid: valid, &rng)
    case "kvm.destroy_vm":
      return make(op, ["vm": vmFD(valid, &rng)])
    case "guest.read", "guest.write":
      let vm = vmFD(valid, &rng)
      let size: UInt64 = valid ? rng.pick([1, 2, 4, 8]) : rng.pick([0, 3, 16])
      var gpa = guestAddress(vm, valid: valid, &rng)
      if valid { gpa &+= UInt64(rng.below(0x1000 / 8)) * 8 }
      return make(op, ["vm": vm, "gpa": .number(gpa), "size": .number(size), "vcpu": .number(vcpu(valid, &rng))])
    case "tdx.devif_create", "tdx.devif_remove":
      guard let d = device(&rng, tdisp: valid) else { return nil }
      return make(op, ["vm": vmFD(valid, &rng, prefer: .tdx), "device": .string(d)])
    case "guest.accept_mmio":
      let vm = vmFD(valid, &rng, prefer: .tdx)
      var args: StepArguments = ["vm": vm, "gpa": .number(guestAddress(vm, valid: valid, &rng)), "vcpu": .number(vcpu(valid, &rng))]
      if !valid, rng.chance(40) { args["expect_hpa"] = .number(rng.pick([0, 0x40_0000_0000, 0x40_0000_1000, 0xDEAD_0000])) }
      return make(op, args)
    case "tdx.seamcall":
      let leaves: [UInt64] = [0, 9, 38, 137, 138, 154, 158, 159, 160, 9999]
      let leaf = rng.pick(leaves)
      let args = (0 ..< rng.below(4)).map { _ in rng.pick([0, 1, 2, 3, 0x8000_0000, 0x40_0000_0000, UInt64(1) << 32, UInt64.max, 0xFFFF_FFFF]) }
      return make(op, ["leaf": .number(leaf), "args": .numbers(args)])
    default:
      return nil
    }
  }

  // MARK: Memslots

  mutating func memslot(_ op: String, valid: Bool, _ rng: inout FuzzRandom) -> FuzzStep {
    let vm = vmFD(valid, &rng)
    var vmName: String?
    if case .handle(.name(let name)) = vm { vmName = name }
    let existing = vmName.flatMap { slots[$0] } ?? []
    var slot = UInt32(rng.below(4))
    var gpa = 0x8000_0000 + UInt64(rng.below(8)) * 0x4000_0000
    var size: UInt64 = UInt64(rng.pick([1, 2, 16, 512])) * 0x1000
    var flags: UInt64 = 0
    var fd: ArgumentValue = .handle(.literal(-1))
    var offset: UInt64 = 0
    var userspace: UInt64 = 0x7f00_0000_0000 + UInt64(rng.below(16)) * 0x20_0000
    let v2 = op == "kvm.set_user_memory_region2"
    // What to do: a new slot (RAM, guest_memfd or dma-buf), a delete, a move, a flags change.
    switch existing.isEmpty ? 9 : rng.below(10) {
    case 0, 1:
      let old = rng.pick(existing)
      slot = old.slot; gpa = old.gpa; flags = old.flags
      size = 0   // delete
    case 2:
      let old = rng.pick(existing)
      slot = old.slot; size = old.size; flags = old.flags
      gpa = old.gpa &+ rng.pick([0x1000, old.size, 0x4000_0000])   // move (or overlap itself)
    case 3:
      let old = rng.pick(existing)
      slot = old.slot; gpa = old.gpa; size = old.size
      flags = old.flags ^ UInt64(rng.pick([1, 2, 4, 8]))   // flags change
    case 4 where !valid:
      let old = rng.pick(existing)
      slot = old.slot + 1 + UInt32(rng.below(3))
      gpa = old.gpa + (old.size > 0x1000 ? 0x1000 : 0)    // overlap another slot
    default:
      break
    }
    if size != 0 || flags != 0, v2, rng.chance(55) {
      // A private slot: a dma-buf, or a guest_memfd.
      if rng.chance(60), let buf = pickHandle(&rng, dmabuf) {
        flags |= UInt64(MemoryFlag.vfioDmabuf.bit)
        fd = .handle(.name(buf.name))
        if case .dmabuf(_, let bufSize) = buf.kind, size != 0 {
          size = rng.chance(70) ? bufSize : max(0x1000, bufSize / 2)
          if variant == .reviewed, rng.chance(20), bufSize > 0x1000 { offset = 0x1000; size = bufSize - 0x1000 }
        }
      } else if let file = pickHandle(&rng, { if case .gmem(let v, _) = $0 { v == vmName } else { false } })
                  ?? pickHandle(&rng, gmem) {
        flags |= UInt64(MemoryFlag.guestMemfd.bit)
        fd = .handle(.name(file.name))
        if case .gmem(_, let fileSize) = file.kind, size != 0 { size = min(size, fileSize) }
      }
    }
    if !valid {
      switch rng.below(12) {
      case 0: slot |= UInt32(rng.pick([1, 2, 0x7FFF])) << 16              // address-space bits
      case 1: slot = UInt32(rng.pick([32763, 32764, 32767, 0xFFFF]))
      case 2: flags = UInt64(1) << UInt64(rng.below(32))                     // every flag bit
      case 3: flags = UInt64(rng.pick([3, 5, 6, 12, 0xF, 0xFFFF_FFFF]))
      case 4: size = rng.pick([0x800, 0x1001, UInt64.max & ~0xFFF, (UInt64(1) << 31) << 12, ((UInt64(1) << 31) - 1) << 12])
      case 5: gpa = rng.pick([0x8000_0800, UInt64.max & ~0xFFF, 1 << 52, (1 << 46) - 0x1000, 1 << 47, 1 << 51])
      case 6: userspace = rng.pick([0x7f00_0000_0800, 1 << 47, UInt64.max & ~0xFFF, 0])
      case 7: offset = rng.pick([0x800, 0x1000, UInt64.max & ~0xFFF, 1 << 40])
      case 8: fd = rng.chance(50) ? .handle(.literal(Int64(rng.pick([0, 2, 99, 1023])))) : self.fd(false, &rng, { _ in true })
        if rng.chance(50) { flags |= UInt64(rng.pick([MemoryFlag.vfioDmabuf, .guestMemfd]).bit) }
      case 9: flags |= UInt64(MemoryFlag.readonly.bit)
      case 10: flags |= UInt64(MemoryFlag.logDirtyPages.bit)
      default: vmName = nil
      }
    }
    var args: StepArguments = ["vm": vm, "slot": .number(UInt64(slot)), "flags": .number(flags),
                               "guest_phys_addr": .number(gpa), "memory_size": .number(size), "userspace_addr": .number(userspace)]
    if v2 { args["guest_memfd_offset"] = .number(offset); args["fd"] = fd }
    return make(op, args)
  }

  // MARK: The way to a mapped BAR

  /// The steps a VMM takes to give a guest a device's BAR, in order; a device's way follows
  /// these and goes back to the start when it has run them all.
  static let flow = ["vfio.open", "vfio.bind_iommufd", "tdisp.lock", "tdx.devif_create", "tdx.mmio_mt_add", "tdisp.start",
                     "vfio.dma_buf", "kvm.set_memory_attributes", "kvm.set_user_memory_region2", "guest.accept_mmio", "guest.read"]

  mutating func guided(_ rng: inout FuzzRandom) -> FuzzStep? {
    let d = rng.pick(devices)
    let position = progress[d.name, default: 0]
    if position % Self.flow.count == 0 { flowVM[d.name] = nil }
    var vm = flowVM[d.name]
    if vm == nil {
      let vms = handles.filter { $0.open && Self.isVM($0.kind) }
      let tds = vms.filter { $0.kind == .vm(.tdx) }
      vm = (d.tdisp && !tds.isEmpty ? rng.pick(tds) : vms.isEmpty ? nil : rng.pick(vms))?.name
    }
    flowVM[d.name] = vm
    let op = Self.flow[position % Self.flow.count]
    let isTD = vm.flatMap { name in handles.first { $0.name == name } }?.kind == .vm(.tdx)
    let deviceFD = handles.last { $0.open && $0.kind == .vfio(device: d.name) }
    let buffer = handles.last { $0.open && { if case .dmabuf(let dev, _) = $0.kind { dev == d.name } else { false } }($0) }
    switch op {
    case "vfio.open" where deviceFD != nil, "tdisp.lock" where !d.tdisp || !isTD, "tdx.devif_create" where !isTD,
         "tdx.mmio_mt_add" where !isTD, "tdisp.start" where !d.tdisp || !isTD, "guest.accept_mmio" where !isTD,
         "kvm.set_memory_attributes" where !isTD:
      progress[d.name] = position + 1
      return nil
    case "vfio.open":
      return make(op, ["device": .string(d.name)], binds: true, flow: d.name)
    case "vfio.bind_iommufd":
      guard let deviceFD else { progress[d.name] = 0; return nil }
      var args: StepArguments = ["fd": .handle(.name(deviceFD.name)), "private": .bool(isTD && d.tdisp)]
      if let vm, isTD && d.tdisp { args["vm"] = .handle(.name(vm)) }
      return make(op, args, flow: d.name)
    case "tdisp.lock", "tdx.mmio_mt_add", "tdisp.start":
      return make(op, ["device": .string(d.name)], flow: d.name)
    case "tdx.devif_create":
      guard let vm else { return nil }
      return make(op, ["vm": .handle(.name(vm)), "device": .string(d.name)], flow: d.name)
    case "vfio.dma_buf":
      guard let deviceFD else { progress[d.name] = 0; return nil }
      let bar = rng.pick(d.bars)
      return make(op, ["fd": .handle(.name(deviceFD.name)), "region_index": .number(UInt64(bar.index)),
                       "ranges": .ranges([DmaRange(offset: 0, length: min(bar.size, rng.chance(70) ? bar.size : 0x1000))])],
                  binds: true, flow: d.name)
    case "kvm.set_memory_attributes", "kvm.set_user_memory_region2", "guest.accept_mmio", "guest.read":
      guard let vm, let buffer, case .dmabuf(_, let size) = buffer.kind else { progress[d.name] = 0; return nil }
      let gpa = flowGPA(d.name)
      switch op {
      case "kvm.set_memory_attributes":
        return make(op, ["vm": .handle(.name(vm)), "address": .number(gpa), "size": .number(size), "attributes": .string("private")],
                    flow: d.name)
      case "kvm.set_user_memory_region2":
        return make(op, ["vm": .handle(.name(vm)), "slot": .number(UInt64(flowSlot(d.name))), "flags": .number(UInt64(MemoryFlag.vfioDmabuf.bit)),
                         "guest_phys_addr": .number(gpa), "memory_size": .number(size), "fd": .handle(.name(buffer.name))],
                    flow: d.name)
      case "guest.accept_mmio":
        return make(op, ["vm": .handle(.name(vm)), "gpa": .number(gpa + UInt64(rng.below(Int(min(size, 0x10_0000) >> 12))) << 12)],
                    flow: d.name)
      default:
        return make(rng.chance(50) ? "guest.read" : "guest.write",
                    ["vm": .handle(.name(vm)), "gpa": .number(gpa + UInt64(rng.below(Int(min(size, 0x10_0000) >> 3))) << 3),
                     "size": .number(8)], flow: d.name)
      }
    default:
      return nil
    }
  }

  /// Where device `name`'s way maps its BAR: each device its own 4 GiB-aligned window.
  func flowGPA(_ name: String) -> UInt64 {
    0x1_0000_0000 * UInt64(1 + (devices.firstIndex { $0.name == name } ?? 0)) * 64
  }
  func flowSlot(_ name: String) -> UInt32 { UInt32(10 + (devices.firstIndex { $0.name == name } ?? 0)) }

  // MARK: Arguments

  var flowStep: String?

  mutating func make(_ op: String, _ arguments: StepArguments, binds: Bool = false, flow device: String? = nil) -> FuzzStep {
    var binding: String?
    if binds && self.binds {
      binding = "h\(nextName)"
      nextName += 1
    }
    flowStep = device
    return FuzzStep(op, arguments, binding: binding)
  }

  mutating func device(_ rng: inout FuzzRandom, tdisp: Bool = false) -> String? {
    guard !devices.isEmpty else { return nil }
    let candidates = tdisp ? devices.filter(\.tdisp) : devices
    return rng.pick(candidates.isEmpty ? devices : candidates).name
  }

  static func isVM(_ kind: HandleKind) -> Bool { if case .vm = kind { true } else { false } }
  func vfio(_ kind: HandleKind) -> Bool { if case .vfio = kind { true } else { false } }
  func dmabuf(_ kind: HandleKind) -> Bool { if case .dmabuf = kind { true } else { false } }
  func gmem(_ kind: HandleKind) -> Bool { if case .gmem = kind { true } else { false } }

  func pickHandle(_ rng: inout FuzzRandom, _ kind: (HandleKind) -> Bool) -> Handle? {
    let open = handles.filter { $0.open && kind($0.kind) }
    return open.isEmpty ? nil : rng.pick(open)
  }

  /// An fd: an open handle of the kind wanted, or (wrong, or none open) a closed one, one of
  /// another kind, or a number nothing was opened at.
  func fd(_ valid: Bool, _ rng: inout FuzzRandom, _ kind: (HandleKind) -> Bool) -> ArgumentValue {
    if valid, let h = pickHandle(&rng, kind) { return .handle(.name(h.name)) }
    switch rng.below(3) {
    case 0 where !handles.isEmpty: return .handle(.name(rng.pick(handles).name))
    case 1 where handles.contains(where: { !$0.open }): return .handle(.name(rng.pick(handles.filter { !$0.open }).name))
    default: return .handle(.literal(rng.pick([-1, 0, 1, 2, 3, 4, 5, 6, 7, 99, 1023, 1024, Int64(Int32.max)])))
    }
  }

  func vmFD(_ valid: Bool, _ rng: inout FuzzRandom, prefer type: VMTypeName? = nil) -> ArgumentValue {
    if valid, let type, let h = pickHandle(&rng, { $0 == .vm(type) }) { return .handle(.name(h.name)) }
    return fd(valid, &rng) { if case .vm = $0 { true } else { false } }
  }

  func attachment(_ valid: Bool, _ rng: inout FuzzRandom) -> ArgumentValue {
    if valid, let h = pickHandle(&rng, { $0 == .attachment }) { return .handle(.name(h.name)) }
    if rng.chance(50), let h = handles.filter({ $0.kind == .attachment }).first { return .handle(.name(h.name)) }
    // Ids no attachment has: small ones may be KVM's own, which a test importer cannot name.
    return .handle(.literal(rng.pick([0, 99_999, Int64(Int32.max)])))
  }

  func regionIndex(_ valid: Bool, _ rng: inout FuzzRandom) -> UInt64 {
    valid ? UInt64(rng.below(6)) : rng.pick([6, 7, 8, 9, 10, 255, UInt64(UInt32.max)])
  }

  func vcpu(_ valid: Bool, _ rng: inout FuzzRandom) -> UInt64 {
    valid ? (rng.chance(80) ? 0 : UInt64(rng.below(4))) : rng.pick([4, 5, 4095, 4096, UInt64(UInt32.max)])
  }

  /// `ranges` of `vfio.dma_buf` over a BAR of `size` bytes.
  func ranges(_ valid: Bool, _ size: UInt64, _ rng: inout FuzzRandom) -> [DmaRange] {
    if valid {
      if variant == .rfcV1, rng.chance(30) { return [DmaRange(offset: 0, length: 0)] }  // the whole BAR
      let pages = max(1, size >> 12)
      let first = UInt64(rng.below(Int(min(pages, 64))))
      let count = rng.chance(50) ? pages - first : 1 + UInt64(rng.below(Int(min(pages - first, 16))))
      var out = [DmaRange(offset: first << 12, length: count << 12)]
      if rng.chance(15), first > 0 { out.append(DmaRange(offset: 0, length: first << 12)) }
      return out
    }
    switch rng.below(7) {
    case 0: return []
    case 1: return [DmaRange(offset: 0x800, length: 0x1000)]
    case 2: return [DmaRange(offset: 0, length: 0x800)]
    case 3: return [DmaRange(offset: 0, length: size &* 2)]
    case 4: return [DmaRange(offset: UInt64.max & ~0xFFF, length: 0x2000)]
    case 5: return [DmaRange(offset: 0, length: 0x1000), DmaRange(offset: 0, length: 0x1000)]   // overlapping
    default: return [DmaRange(offset: 0, length: UInt64(1) << 63), DmaRange(offset: 0, length: UInt64(1) << 63)]
    }
  }

  /// A GPA for a guest op on `vm`: inside one of its slots (for a TD sometimes with the shared
  /// bit), or anywhere.
  func guestAddress(_ vm: ArgumentValue, valid: Bool, _ rng: inout FuzzRandom) -> UInt64 {
    if case .handle(.name(let name)) = vm, let list = slots[name], !list.isEmpty, valid || rng.chance(50) {
      let slot = rng.pick(list)
      var gpa = slot.gpa + UInt64(rng.below(Int(min(slot.size >> 12, 256)))) << 12
      if handles.first(where: { $0.name == name })?.kind == .vm(.tdx), rng.chance(20) {
        gpa |= UInt64(1) << UInt64(configuration.host.tdGPAWidth - 1)
      }
      return gpa
    }
    return rng.pick([0, 0x1000, 0x8000_0000, 0x1_0000_0000 * 64, 1 << 47, UInt64.max & ~0xFFF])
  }

  // MARK: Learning from results

  /// Records what `step` returned: a bound handle, a closed one, a slot made or gone.
  public mutating func record(_ step: FuzzStep, _ result: OpResult) {
    if let device = flowStep {
      // Whatever the answer, the way goes on: a lock refused because the interface is locked
      // already has done its part.
      progress[device, default: 0] += 1
      flowStep = nil
    }
    guard case .success(let value) = result else { return }
    func name(_ key: String) -> String? { if case .handle(.name(let n))? = step.arguments[key] { n } else { nil } }
    switch step.op {
    case "vfio.close", "dmabuf.close", "kvm.destroy_vm":
      if let n = name(step.op == "kvm.destroy_vm" ? "vm" : "fd"), let i = handles.firstIndex(where: { $0.name == n }) {
        handles[i].open = false
        // close(2) drops one fd; the other names of the same number (none here: names are
        // unique per fd while open) keep theirs.
      }
    case "dmabuf.detach":
      if let n = name("attachment"), let i = handles.firstIndex(where: { $0.name == n }) { handles[i].open = false }
    case "kvm.set_user_memory_region", "kvm.set_user_memory_region2":
      guard let vm = name("vm"), case .number(let slot)? = step.arguments["slot"], case .number(let gpa)? = step.arguments["guest_phys_addr"],
            case .number(let size)? = step.arguments["memory_size"], case .number(let flags)? = step.arguments["flags"] else { return }
      var list = slots[vm, default: []]
      list.removeAll { $0.slot == UInt32(truncatingIfNeeded: slot) }
      if size != 0 { list.append(Slot(slot: UInt32(truncatingIfNeeded: slot), gpa: gpa, size: size, flags: flags)) }
      slots[vm] = list
    default:
      break
    }
    guard let binding = step.binding else { return }
    let kind: HandleKind?
    switch (step.op, value) {
    case ("vfio.open", .fd):
      if case .string(let d)? = step.arguments["device"] { kind = .vfio(device: d) } else { kind = nil }
    case ("vfio.dma_buf", .fd):
      let device = name("fd").flatMap { n in handles.first { $0.name == n } }.flatMap { h -> String? in
        if case .vfio(let d) = h.kind { d } else { nil }
      }
      var size: UInt64 = 0
      if case .ranges(let rs)? = step.arguments["ranges"] {
        size = rs.reduce(0) { $0 &+ $1.length }
        if size == 0, let d = devices.first(where: { $0.name == device }), case .number(let index)? = step.arguments["region_index"] {
          size = d.bars.first { UInt64($0.index) == index }?.size ?? 0
        }
      }
      kind = .dmabuf(device: device ?? "", size: size)
    case ("kvm.create_vm", .fd):
      if case .string(let t)? = step.arguments["type"] { kind = VMTypeName(rawValue: t).map { .vm($0) } } else { kind = nil }
    case ("kvm.create_guest_memfd", .fd):
      let size: UInt64 = if case .number(let s)? = step.arguments["size"] { s } else { 0 }
      kind = .gmem(vm: name("vm") ?? "", size: size)
    case ("dmabuf.attach", .attachment):
      kind = .attachment
    default:
      kind = nil
    }
    if let kind { handles.append(Handle(name: binding, kind: kind)) }
  }
}
