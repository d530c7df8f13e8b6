import KernelCore

// KVM's private-memory uAPI (`include/uapi/linux/kvm.h`, Linux 6.18): memory attributes,
// guest_memfd, the memory-fault exit, and the per-VM limits the memslot checks read.

/// `KVM_SET_MEMORY_ATTRIBUTES`' attribute bits (`struct kvm_memory_attributes.attributes`).
public struct MemoryAttributes: OptionSet, Hashable, Sendable {
  public let rawValue: UInt64
  public init(rawValue: UInt64) { self.rawValue = rawValue }
  /// `KVM_MEMORY_ATTRIBUTE_PRIVATE` (`1ULL << 3`).
  public static let `private` = MemoryAttributes(rawValue: 1 << 3)
}

/// `struct kvm_memory_attributes`, field for field.
public struct KVMMemoryAttributesArgs: Hashable, Sendable {
  public var address: UInt64
  public var size: UInt64
  public var attributes: UInt64
  public var flags: UInt64
  public init(address: UInt64, size: UInt64, attributes: UInt64, flags: UInt64 = 0) {
    self.address = address; self.size = size; self.attributes = attributes; self.flags = flags
  }
}

/// `kvm->mem_attr_array`: the attributes of every GFN (absent = 0, shared), kept as sorted,
/// disjoint, non-adjacent ranges of private GFNs, so that two VMs with the same attributes
/// compare equal however they were set.
public struct MemoryAttributeMap: Hashable, Sendable {
  /// Private GFN ranges (raw GFNs), sorted and coalesced.
  public private(set) var privateRanges: [Range<UInt64>] = []
  public init() {}

  /// `kvm_get_memory_attributes()` for one GFN.
  public func attributes(of gfn: GFN) -> MemoryAttributes { isPrivate(gfn) ? .private : [] }

  /// `kvm_mem_is_private()`.
  public func isPrivate(_ gfn: GFN) -> Bool {
    var lo = 0, hi = privateRanges.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if privateRanges[mid].upperBound <= gfn.rawValue { lo = mid + 1 } else { hi = mid }
    }
    return lo < privateRanges.count && privateRanges[lo].contains(gfn.rawValue)
  }

  /// `kvm_range_has_memory_attributes(kvm, start, end, ~0, attrs)`: every GFN of `range` has
  /// exactly `attributes`.
  public func rangeHas(_ range: Range<UInt64>, _ attributes: MemoryAttributes) -> Bool {
    guard !range.isEmpty else { return true }
    if attributes.contains(.private) {
      return privateRanges.contains { $0.lowerBound <= range.lowerBound && range.upperBound <= $0.upperBound }
    }
    return !privateRanges.contains { $0.overlaps(range) }
  }

  /// Sets every GFN of `range` to `attributes` (the stores of `kvm_vm_set_mem_attributes()`).
  public mutating func set(_ range: Range<UInt64>, _ attributes: MemoryAttributes) {
    guard !range.isEmpty else { return }
    var out: [Range<UInt64>] = []
    for r in privateRanges {
      if r.upperBound <= range.lowerBound || r.lowerBound >= range.upperBound { out.append(r); continue }
      if r.lowerBound < range.lowerBound { out.append(r.lowerBound ..< range.lowerBound) }
      if r.upperBound > range.upperBound { out.append(range.upperBound ..< r.upperBound) }
    }
    if attributes.contains(.private) { out.append(range) }
    out.sort { $0.lowerBound < $1.lowerBound }
    var merged: [Range<UInt64>] = []
    for r in out {
      if let last = merged.last, last.upperBound >= r.lowerBound {
        merged[merged.count - 1] = last.lowerBound ..< max(last.upperBound, r.upperBound)
      } else {
        merged.append(r)
      }
    }
    privateRanges = merged
  }
}

/// `struct kvm_create_guest_memfd.flags` (`GUEST_MEMFD_FLAG_*`, Linux 6.18).
public struct GuestMemfdFlags: OptionSet, Hashable, Sendable {
  public let rawValue: UInt64
  public init(rawValue: UInt64) { self.rawValue = rawValue }
  /// `GUEST_MEMFD_FLAG_MMAP` (`1ULL << 0`): the file can be mmap()ed; a slot bound to it is
  /// `KVM_MEMSLOT_GMEM_ONLY` (shared faults come from guest_memfd too).
  public static let mmap = GuestMemfdFlags(rawValue: 1 << 0)
  /// `GUEST_MEMFD_FLAG_INIT_SHARED` (`1ULL << 1`): the memory starts shared.
  public static let initShared = GuestMemfdFlags(rawValue: 1 << 1)

  /// `kvm_gmem_get_supported_flags()` (`include/linux/kvm_host.h`): MMAP always; INIT_SHARED
  /// for the system fd (`!kvm`) and `if (kvm_arch_supports_gmem_init_shared(kvm))`, which on
  /// x86 is `!kvm_arch_has_private_mem(kvm)`.
  public static func supported(for type: VMType?) -> GuestMemfdFlags {
    guard let type, type.hasPrivateMemory else { return [.mmap, .initShared] }
    return [.mmap]
  }
}

/// The identity of a guest_memfd file (`struct gmem_file`).
public enum GuestMemfdTag {}
public typealias GuestMemfdID = ObjectID<GuestMemfdTag>

/// One guest_memfd file (`virt/kvm/guest_memfd.c`): its VM (`f->kvm`), its size (`i_size`),
/// its flags, and the slots bound to page ranges of it (`f->bindings`).
public struct GuestMemfd: Hashable, Sendable {
  public let id: GuestMemfdID
  public let vm: VMID
  public let size: UInt64
  public let flags: GuestMemfdFlags
  /// `f->bindings`: file page ranges and the slot each is bound to.
  public internal(set) var bindings: [GuestMemfdBinding] = []

  public init(id: GuestMemfdID, vm: VMID, size: UInt64, flags: GuestMemfdFlags) {
    self.id = id; self.vm = vm; self.size = size; self.flags = flags
  }
}

/// A slot bound to pages `pages` of a guest_memfd.
public struct GuestMemfdBinding: Hashable, Sendable {
  public let pages: Range<UInt64>
  public let slot: SlotKey
}

/// `struct kvm_create_guest_memfd`.
public struct KVMCreateGuestMemfdArgs: Hashable, Sendable {
  public var size: UInt64
  public var flags: UInt64
  public init(size: UInt64, flags: UInt64 = 0) { self.size = size; self.flags = flags }
}

/// What `KVM_RUN` left in `struct kvm_run` when it failed with a memory-fault exit:
/// `exit_reason = KVM_EXIT_MEMORY_FAULT` (39) and `memory_fault { flags, gpa, size }`
/// (`kvm_prepare_memory_fault_exit()`, `include/linux/kvm_host.h`).
public struct MemoryFaultExit: Hashable, Sendable, CustomStringConvertible {
  /// `KVM_EXIT_MEMORY_FAULT`.
  public static let exitReason: UInt32 = 39
  /// `KVM_MEMORY_EXIT_FLAG_PRIVATE` (`1ULL << 3`).
  public static let flagPrivate: UInt64 = 1 << 3

  /// `memory_fault.flags`: PRIVATE when the access was private.
  public let flags: UInt64
  /// `memory_fault.gpa`: `fault->gfn << PAGE_SHIFT` (a TD's shared bit is not part of it).
  public let gpa: UInt64
  /// `memory_fault.size`: `PAGE_SIZE`.
  public let size: UInt64
  /// The errno `KVM_RUN` returns with it (EFAULT, or what `kvm_gmem_get_pfn()` answered).
  public private(set) var errno: Errno

  public init(isPrivate: Bool, gfn: GFN, errno: Errno = .EFAULT) {
    flags = isPrivate ? Self.flagPrivate : 0
    gpa = gfn.gpa.rawValue; size = pageSize; self.errno = errno
  }

  public var isPrivate: Bool { flags & Self.flagPrivate != 0 }

  /// The same exit, its errno carrying the function and check that refused the access.
  public func because(_ function: StaticString, _ check: String) -> MemoryFaultExit {
    var out = self
    out.errno = errno.because(function, check)
    return out
  }
  public var description: String {
    "KVM_EXIT_MEMORY_FAULT flags 0x\(String(flags, radix: 16))\(isPrivate ? " (PRIVATE)" : "") gpa 0x\(String(gpa, radix: 16)) size 0x\(String(size, radix: 16))"
  }
}

/// What a VM's memslot checks and faults read of the host: the address spaces, the largest
/// GFN the TDP MMU maps, and for a TD the shared bit of its GPAs.
public struct VMLimits: Hashable, Sendable {
  /// `kvm_arch_nr_memslot_as_ids(kvm)`.
  public var addressSpaces: UInt16
  /// `kvm_mmu_max_gfn()`: `(1 << (MAXPHYADDR - PAGE_SHIFT)) - 1` with TDP.
  public var maxGFN: GFN
  /// `kvm_gfn_direct_bits(kvm)`: for a TD the shared bit as a GFN bit (`TDX_SHARED_BIT_PWL_4`
  /// = GPA bit 47, `TDX_SHARED_BIT_PWL_5` = GPA bit 51); 0 for other VMs.
  public var gfnDirectBits: UInt64

  public init(addressSpaces: UInt16, maxGFN: GFN, gfnDirectBits: UInt64 = 0) {
    self.addressSpaces = addressSpaces; self.maxGFN = maxGFN; self.gfnDirectBits = gfnDirectBits
  }

  /// The limits the model used before hosts were configurable: one address space for private
  /// memory, two otherwise (SMM), a 48-bit TDP MMU, a TD's shared bit at GPA bit 47.
  public static func standard(_ type: VMType) -> VMLimits {
    VMLimits(addressSpaces: type.addressSpaces(smm: true), maxGFN: TDPMMU.maxGFN,
             gfnDirectBits: type == .tdx ? 1 << (47 - pageShift) : 0)
  }
}

/// `KVM_CAP_*` numbers (`include/uapi/linux/kvm.h`) the model answers in `KVM_CHECK_EXTENSION`.
public enum KVMCapabilityNumber: Int32, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  case userMemory = 3
  case nrMemslots = 10
  case readonlyMem = 81
  case multiAddressSpace = 118
  case userMemory2 = 231
  case memoryFaultInfo = 232
  case memoryAttributes = 233
  case guestMemfd = 234
  case vmTypes = 235
  case guestMemfdFlags = 244

  /// The uAPI name (`KVM_CAP_GUEST_MEMFD`).
  public var description: String {
    switch self {
    case .userMemory: "KVM_CAP_USER_MEMORY"
    case .nrMemslots: "KVM_CAP_NR_MEMSLOTS"
    case .readonlyMem: "KVM_CAP_READONLY_MEM"
    case .multiAddressSpace: "KVM_CAP_MULTI_ADDRESS_SPACE"
    case .userMemory2: "KVM_CAP_USER_MEMORY2"
    case .memoryFaultInfo: "KVM_CAP_MEMORY_FAULT_INFO"
    case .memoryAttributes: "KVM_CAP_MEMORY_ATTRIBUTES"
    case .guestMemfd: "KVM_CAP_GUEST_MEMFD"
    case .vmTypes: "KVM_CAP_VM_TYPES"
    case .guestMemfdFlags: "KVM_CAP_GUEST_MEMFD_FLAGS"
    }
  }

  /// The scenario spelling: the uAPI name without `KVM_CAP_`, lower-cased (`guest_memfd`).
  public var scenarioName: String { String(description.dropFirst("KVM_CAP_".count)).lowercased() }
}
