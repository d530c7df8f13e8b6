import HostKVM
import KernelCore
import KVM
import Platform
import Scenarios

/// Draws the oracle's calls: VMs of every type the model has, vCPUs, RAM slots at real user
/// addresses (read-write, read-only, unmapped, misaligned, past `TASK_SIZE`), guest_memfd files
/// and slots on them, every flag bit, address-space bits in the slot id, overlaps, moves,
/// deletes and sizes up to the limits, memory attributes and capabilities.
///
/// A call is drawn with the reason it is not sent when it must not be: to neither side, so the
/// two stay in step.
struct OracleGenerator {
  struct Drawn {
    var step: FuzzStep
    /// Why neither side gets it.
    var skip: String?
  }

  struct Slot { var slot: UInt32; var gpa: UInt64; var size: UInt64; var flags: UInt64 }

  let host: HostCapabilities
  let kernel: KVMHostCapabilities
  let memory: KVMOracleUserMemory
  var vms: [String] = []
  /// guest_memfd files: name, VM, size.
  var gmems: [(name: String, vm: String, size: UInt64)] = []
  var slots: [String: [Slot]] = [:]
  var nextName = 1

  init(host: HostCapabilities, kernel: KVMHostCapabilities, memory: KVMOracleUserMemory) {
    self.host = host; self.kernel = kernel; self.memory = memory
  }

  /// Pages a slot the kernel might accept may have: above it, `kvm_alloc_memslot_metadata()`
  /// allocates per-page metadata (rmaps on a host with shadow paging, as PVM) of hundreds of MiB,
  /// on a machine other people use.
  static let maxValidPages: UInt64 = 1 << 20

  mutating func name() -> String {
    defer { nextName += 1 }
    return "h\(nextName)"
  }

  mutating func next(_ rng: inout FuzzRandom) -> Drawn {
    if vms.isEmpty || rng.chance(4) {
      return Drawn(step: FuzzStep("kvm.create_vm", ["type": .string(rng.chance(80) ? "default" : rng.pick(VMTypeName.allCases).rawValue)],
                                  binding: name()))
    }
    let vm = rng.pick(vms)
    switch rng.weighted(cumulative: [8, 55, 65, 78, 84, 90, 93]) {
    case 0:
      let id: UInt64 = rng.chance(70) ? UInt64(rng.below(4)) : rng.pick([4095, 4096, 16384, UInt64(UInt32.max)])
      return Drawn(step: FuzzStep("kvm.create_vcpu", ["vm": .handle(.name(vm)), "id": .number(id)]))
    case 1: return memslot(vm, v2: true, &rng)
    case 2: return memslot(vm, v2: false, &rng)
    case 3:
      let size: UInt64 = rng.chance(70) ? UInt64(rng.pick([1, 2, 16, 256, 1 << 18, 1 << 28])) << 12
        : rng.pick([0, 1, 0xFFF, 0x1001, 1 << 63, UInt64.max & ~0xFFF, (1 << 63) - 0x1000, 1 << 62])
      let flags: UInt64 = rng.chance(60) ? rng.pick([0, 0, 1, 2, 3]) : UInt64(1) << UInt64(rng.below(64))
      return Drawn(step: FuzzStep("kvm.create_guest_memfd", ["vm": .handle(.name(vm)), "size": .number(size), "flags": .number(flags)],
                                  binding: name()))
    case 4:
      let aligned = rng.chance(70)
      return Drawn(step: FuzzStep("kvm.set_memory_attributes", [
        "vm": .handle(.name(vm)), "address": .number(aligned ? 0x1000_0000 : 0x1000_0800), "size": .number(rng.pick([0, 0x1000, 0x20_0000])),
        "attributes": .string(rng.chance(50) ? "private" : "shared"), "flags": .number(rng.chance(80) ? 0 : 1)]))
    case 5:
      var args: StepArguments = ["cap": .string(rng.pick(KVMCapabilityNumber.allCases).scenarioName)]
      if rng.chance(50) { args["vm"] = .handle(.name(vm)) }
      return Drawn(step: FuzzStep("kvm.check_extension", args))
    default:
      // close(2) of a guest_memfd (its slots lose their file: kvm_gmem_release()) or of a VM
      // fd (its guest_memfd files keep the VM alive). A closed name is never used again: its
      // number may be another file's on either side by then.
      if !gmems.isEmpty, rng.chance(50) {
        let file = gmems.remove(at: rng.below(gmems.count))
        return Drawn(step: FuzzStep("kvm.destroy_vm", ["vm": .handle(.name(file.name))]))
      }
      vms.removeAll { $0 == vm }
      return Drawn(step: FuzzStep("kvm.destroy_vm", ["vm": .handle(.name(vm))]))
    }
  }

  mutating func memslot(_ vm: String, v2: Bool, _ rng: inout FuzzRandom) -> Drawn {
    let existing = slots[vm] ?? []
    var slot = UInt32(rng.below(10))
    var gpa = UInt64(rng.below(64)) << 20
    var size = UInt64(rng.pick([1, 2, 16, 256, 4096, 1 << 18])) << 12
    var flags: UInt64 = 0
    var userspace = memory.readWrite
    var offset: UInt64 = 0
    var fd: ArgumentValue = .handle(.literal(-1))
    switch existing.isEmpty ? 9 : rng.below(10) {
    case 0, 1:
      let old = rng.pick(existing)
      slot = old.slot; gpa = old.gpa; flags = old.flags; size = 0                       // delete
    case 2:
      let old = rng.pick(existing)
      slot = old.slot; size = old.size; flags = old.flags
      gpa = old.gpa &+ rng.pick([0x1000, old.size, 1 << 30])                             // move
    case 3:
      let old = rng.pick(existing)
      slot = old.slot; gpa = old.gpa; size = old.size
      flags = old.flags ^ UInt64(rng.pick([1, 2, 4]))                                    // flags change
    case 4:
      let old = rng.pick(existing)
      slot = (old.slot + 1 + UInt32(rng.below(3))) % 10; gpa = old.gpa &+ 0x1000          // overlap
    default:
      break
    }
    switch rng.below(8) {
    case 0: userspace = memory.readOnly
    case 1: userspace = memory.unmapped
    case 2: userspace &+= UInt64(rng.below(16)) << 12
    default: break
    }
    if v2, size != 0, rng.chance(30), !gmems.isEmpty {
      let file = rng.chance(80) ? (gmems.first { $0.vm == vm } ?? rng.pick(gmems)) : rng.pick(gmems)
      flags |= UInt64(MemoryFlag.guestMemfd.bit)
      fd = .handle(.name(file.name))
      size = min(size, max(0x1000, file.size))
      if rng.chance(30) { offset = UInt64(rng.below(4)) << 12 }
    }
    if rng.chance(35) {
      switch rng.below(14) {
      case 0: slot |= UInt32(rng.pick([1, 2, 0x7FFF])) << 16
      case 1: slot = UInt32(rng.pick([32763, 32764, 32767, 0xFFFF]))
      case 2: flags = UInt64(1) << UInt64(rng.below(32))
      case 3: flags |= UInt64(rng.pick([1, 2, 4, 5, 6, 7]))
      case 4: size = rng.pick([0x800, 0x1001, UInt64.max & ~0xFFF, (UInt64(1) << 31) << 12, ((UInt64(1) << 31) - 1) << 12])
      case 5:
        let maxGFN = kernel.maxGFN ?? ((1 << 40) - 1)
        gpa = rng.pick([0x800, UInt64.max & ~0xFFF, maxGFN << 12, (maxGFN + 1) << 12, (maxGFN << 12) &- size &+ 0x1000,
                        (maxGFN << 12) &- size &+ 0x2000])
      case 6: userspace = rng.pick([memory.readWrite + 0x800, 1 << 47, (1 << 47) - 0x1000, UInt64.max & ~0xFFF, 0])
      case 7: offset = rng.pick([0x800, 1 << 40, UInt64.max & ~0xFFF])
      case 8: fd = .handle(.literal(rng.pick([-1, 4000, 1_000_000])))
        flags |= UInt64(MemoryFlag.guestMemfd.bit)
      case 9: fd = .handle(.name(rng.pick(vms)))            // a VM fd is no guest_memfd
        flags |= UInt64(MemoryFlag.guestMemfd.bit)
      case 10: flags |= UInt64(MemoryFlag.vfioDmabuf.bit)
      case 11:
        // The largest slot: KVM_MEM_MAX_NR_PAGES pages, placed to end past the largest GFN.
        size = ((UInt64(1) << 31) - 1) << 12
        gpa = ((kernel.maxGFN ?? ((1 << 40) - 1)) << 12) &- 0x1000
      default: userspace = memory.readOnly + 0x1000
      }
    }
    var args: StepArguments = ["vm": .handle(.name(vm)), "slot": .number(UInt64(slot)), "flags": .number(flags),
                               "guest_phys_addr": .number(gpa), "memory_size": .number(size), "userspace_addr": .number(userspace)]
    if v2 { args["guest_memfd_offset"] = .number(offset); args["fd"] = fd }
    let step = FuzzStep(v2 ? "kvm.set_user_memory_region2" : "kvm.set_user_memory_region", args)
    if flags & UInt64(MemoryFlag.vfioDmabuf.bit) != 0 {
      return Drawn(step: step, skip: "KVM_MEM_VFIO_DMABUF (the RFC's flag): this kernel has no such flag")
    }
    if mayAllocate(gpa: gpa, size: size, slot: slot) {
      return Drawn(step: step, skip: "a slot of more than 4 GiB the kernel could accept: its per-page metadata would take host memory")
    }
    return Drawn(step: step)
  }

  /// Whether the kernel could accept a slot of this size and place: its size is valid and it
  /// ends inside the largest GFN, so only the allocations would stop it.
  func mayAllocate(gpa: UInt64, size: UInt64, slot: UInt32) -> Bool {
    let pages = size >> 12
    guard pages > Self.maxValidPages, size & 0xFFF == 0, pages <= MemslotLimits.maxPages else { return false }
    let (end, wraps) = gpa.addingReportingOverflow(size)
    guard !wraps, gpa & 0xFFF == 0 else { return false }
    return (end >> 12) - 1 <= (kernel.maxGFN ?? UInt64.max)
  }

  /// Learns what a step left: VMs, files, slots.
  mutating func record(_ step: FuzzStep, _ result: OpResult?) {
    guard case .success? = result else { return }
    func number(_ key: String) -> UInt64 { if case .number(let n)? = step.arguments[key] { n } else { 0 } }
    switch step.op {
    case "kvm.create_vm":
      if let b = step.binding { vms.append(b) }
    case "kvm.create_guest_memfd":
      if let b = step.binding, case .handle(.name(let vm))? = step.arguments["vm"] { gmems.append((b, vm, number("size"))) }
    case "kvm.set_user_memory_region", "kvm.set_user_memory_region2":
      guard case .handle(.name(let vm))? = step.arguments["vm"] else { return }
      let slot = UInt32(truncatingIfNeeded: number("slot"))
      var list = slots[vm, default: []]
      list.removeAll { $0.slot == slot }
      if number("memory_size") != 0 {
        list.append(Slot(slot: slot, gpa: number("guest_phys_addr"), size: number("memory_size"), flags: number("flags")))
      }
      slots[vm] = list
    default:
      break
    }
  }
}
