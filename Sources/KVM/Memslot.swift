import KernelCore
import DmaBuf

/// `KVM_CREATE_VM`'s machine type (`arch/x86/include/uapi/asm/kvm.h`): `KVM_X86_DEFAULT_VM` 0,
/// `KVM_X86_SW_PROTECTED_VM` 1, `KVM_X86_SEV_VM` 2, `KVM_X86_SEV_ES_VM` 3,
/// `KVM_X86_SNP_VM` 4, `KVM_X86_TDX_VM` 5. The model has the Intel ones.
public enum VMType: UInt32, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  /// `KVM_X86_DEFAULT_VM`.
  case `default` = 0
  /// `KVM_X86_SW_PROTECTED_VM`: private (guest_memfd) memory and memory attributes with no
  /// hardware protection behind them (`CONFIG_KVM_SW_PROTECTED_VM`, needs the TDP MMU).
  case swProtected = 1
  /// `KVM_X86_TDX_VM`.
  case tdx = 5

  /// `kvm_arch_has_private_mem()`: `kvm->arch.has_private_mem`, set by `kvm_arch_init_vm()`
  /// for every type but the default one.
  public var hasPrivateMemory: Bool { self != .default }
  /// `kvm_arch_has_readonly_mem()`: `!kvm->arch.has_protected_state`. A TD's registers are
  /// private, so KVM cannot emulate the write that hits a read-only slot; a software-protected
  /// VM's state is not protected.
  public var hasReadonlyMemory: Bool { self != .tdx }
  /// `kvm_arch_nr_memslot_as_ids()`: two address spaces (normal and SMM) when the host has SMM
  /// (`CONFIG_KVM_SMM`), unless the VM has private memory, which has no SMM.
  public func addressSpaces(smm: Bool) -> UInt16 { hasPrivateMemory || !smm ? 1 : 2 }
  /// The name the ioctl's documentation uses.
  public var uapiName: String {
    switch self {
    case .default: "KVM_X86_DEFAULT_VM"
    case .swProtected: "KVM_X86_SW_PROTECTED_VM"
    case .tdx: "KVM_X86_TDX_VM"
    }
  }
  /// The scenario spelling (`default`, `sw_protected`, `tdx`).
  public var description: String {
    switch self {
    case .default: "default"
    case .swProtected: "sw_protected"
    case .tdx: "tdx"
    }
  }
}

/// `kvm_userspace_memory_region2.flags` (`include/uapi/linux/kvm.h`).
public struct MemslotFlags: OptionSet, Hashable, Sendable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  /// `KVM_MEM_LOG_DIRTY_PAGES`.
  public static let logDirtyPages = MemslotFlags(rawValue: 1 << 0)
  /// `KVM_MEM_READONLY`.
  public static let readonly = MemslotFlags(rawValue: 1 << 1)
  /// `KVM_MEM_GUEST_MEMFD`.
  public static let guestMemfd = MemslotFlags(rawValue: 1 << 2)
  /// `KVM_MEM_VFIO_DMABUF` (the RFC's patch 6): the fd in `guest_memfd` is a VFIO dma-buf.
  public static let vfioDmaBuf = MemslotFlags(rawValue: 1 << 3)
}

/// KVM's mirror of `struct kvm_userspace_memory_region2`, field for field.
public struct UserspaceMemoryRegion2: Hashable, Sendable {
  /// Slot id in bits 15:0, address-space id in bits 31:16.
  public var slot: UInt32
  public var flags: UInt32
  public var guestPhysAddr: UInt64
  public var memorySize: UInt64
  public var userspaceAddr: UInt64
  public var guestMemfdOffset: UInt64
  /// The fd field; with ``MemslotFlags/vfioDmaBuf`` it carries the dma-buf fd.
  public var guestMemfd: UInt32
  public var pad1: UInt32
  public var pad2: [UInt64]

  public init(slot: UInt32, flags: MemslotFlags = [], guestPhysAddr: UInt64, memorySize: UInt64,
              userspaceAddr: UInt64 = 0, guestMemfdOffset: UInt64 = 0, guestMemfd: UInt32 = 0) {
    self.slot = slot; self.flags = flags.rawValue; self.guestPhysAddr = guestPhysAddr
    self.memorySize = memorySize; self.userspaceAddr = userspaceAddr
    self.guestMemfdOffset = guestMemfdOffset; self.guestMemfd = guestMemfd
    pad1 = 0; pad2 = Array(repeating: 0, count: 14)
  }

  /// The address-space id (`mem->slot >> 16`).
  public var asID: UInt16 { UInt16(truncatingIfNeeded: slot >> 16) }
  /// The slot id (`(u16)mem->slot`).
  public var id: UInt16 { UInt16(truncatingIfNeeded: slot) }
}

/// Limits the memslot ioctl checks against (x86-64).
public enum MemslotLimits {
  /// `KVM_USER_MEM_SLOTS`: `KVM_MEM_SLOTS_NUM` (`SHRT_MAX`) minus x86's 3 internal slots.
  public static let userMemSlots: UInt16 = 32764
  /// `KVM_MEM_MAX_NR_PAGES`: `(1UL << 31) - 1` pages per slot.
  public static let maxPages: UInt64 = (1 << 31) - 1
  /// `TASK_SIZE_MAX` with 4-level paging: what `access_ok()` accepts for `userspace_addr`.
  public static let taskSizeMax: UInt64 = (1 << 47) - pageSize
}

/// Which memslot: address space and slot id.
public struct SlotKey: Hashable, Sendable, Comparable, CustomStringConvertible {
  public let asID: UInt16
  public let id: UInt16
  public init(asID: UInt16 = 0, id: UInt16) { self.asID = asID; self.id = id }
  public static func < (a: SlotKey, b: SlotKey) -> Bool { (a.asID, a.id) < (b.asID, b.id) }
  public var description: String { asID == 0 ? "slot \(id)" : "slot \(asID):\(id)" }
}

/// A memslot's tie to a dma-buf: KVM's dynamic attachment and the slice of the buffer the
/// slot maps (page `pgoff + i` of the buffer backs the slot's page `i`).
public struct DmaBufBinding: Hashable, Sendable {
  public let dmaBuf: DmaBufID
  public let attachment: AttachmentID
  /// First buffer page the slot maps (`guest_memfd_offset >> PAGE_SHIFT`).
  public let pgoff: PageIndex
  public init(dmaBuf: DmaBufID, attachment: AttachmentID, pgoff: PageIndex) {
    self.dmaBuf = dmaBuf; self.attachment = attachment; self.pgoff = pgoff
  }
}

/// `struct kvm_memory_slot`, as much of it as the model needs.
public struct Memslot: Hashable, Sendable, CustomStringConvertible {
  public let key: SlotKey
  public let baseGFN: GFN
  public let npages: UInt64
  public let flags: MemslotFlags
  public let userspaceAddr: UInt64
  public let guestMemfdOffset: UInt64
  /// Set for a ``MemslotFlags/vfioDmaBuf`` slot.
  public let dmaBuf: DmaBufBinding?
  /// `slot->gmem.file` of a ``MemslotFlags/guestMemfd`` slot; `nil` once the file is closed
  /// (`kvm_gmem_release()` clears it), after which a private fault gets `EFAULT`.
  public internal(set) var gmemFile: GuestMemfdID?
  /// `KVM_MEMSLOT_GMEM_ONLY`: bound to a guest_memfd with `GUEST_MEMFD_FLAG_MMAP`, so shared
  /// faults take their PFN from guest_memfd too (`kvm_memslot_is_gmem_only()`).
  public internal(set) var isGmemOnly = false
  /// `KVM_MEMSLOT_INVALID`: the slot is being deleted or moved; a fault that finds it retries.
  public internal(set) var isInvalid = false

  /// GFNs the slot covers.
  public var gfns: Range<GFN> { baseGFN ..< GFN(baseGFN.rawValue + npages) }
  public func contains(_ gfn: GFN) -> Bool { gfn >= baseGFN && gfn.rawValue - baseGFN.rawValue < npages }
  public var description: String { "\(key) gpa \(baseGFN.gpa) pages \(npages)" }
}

/// What a memslot ioctl does to the slot (`enum kvm_mr_change`).
public enum MemslotChange: Hashable, Sendable {
  /// `KVM_MR_CREATE`.
  case create
  /// `KVM_MR_DELETE`.
  case delete
  /// `KVM_MR_MOVE`: same size, new base GFN.
  case move
  /// `KVM_MR_FLAGS_ONLY`.
  case flagsOnly
  /// Same slot, same flags: the ioctl returns 0 and does nothing.
  case unchanged
}

/// A validated `KVM_SET_USER_MEMORY_REGION2`, between the checks and the commit.
///
/// Between ``VirtualMachine/prepareSetUserMemoryRegion2(_:variant:)`` and
/// ``VirtualMachine/commitSetUserMemoryRegion2(_:binding:)`` the caller does what KVM asks of
/// other subsystems: when ``dmaBufFD`` is set it resolves the fd (`EBADF`; `EINVAL` for a file
/// that is not a dma-buf), checks the buffer with ``checkDmaBuf(_:variant:)`` and
/// ``VirtualMachine/vfioDmaBufSanityCheck(_:)``, and attaches as a dynamic importer.
public struct MemslotPlan: Hashable, Sendable {
  public let key: SlotKey
  public let change: MemslotChange
  public let region: UserspaceMemoryRegion2
  /// The slot as it is now (nil for a create).
  public let old: Memslot?
  /// The dma-buf fd to resolve and attach, for a new dma-buf slot (create, and in `rfc-v1`
  /// the re-created slot of a move or flags change).
  public let dmaBufFD: FD?
  /// The guest_memfd fd to bind (`kvm_gmem_bind()`), for a new ``MemslotFlags/guestMemfd``
  /// slot.
  public var gmemFD: FD? = nil

  /// The slot's pages.
  public var npages: UInt64 { region.memorySize.pages }

  /// The size and offset rules for the dma-buf behind a new slot (patch 6, or the review).
  ///
  /// - `rfcV1`: `memory_size` must equal the buffer's size (offset is already known to be 0).
  /// - `reviewed`: `guest_memfd_offset + memory_size` must lie within the buffer; an overflow
  ///   of that sum is `EINVAL`.
  /// - Throws: `EINVAL` as above.
  public func checkDmaBuf(_ buffer: DmaBufDescription, variant: Variant) throws(Errno) {
    switch variant {
    case .rfcV1:
      // kvm_vfio_dmabuf_bind(): `size != dmabuf->size` right after dma_buf_get(); the offset
      // was checked to be 0 before (prepareSetUserMemoryRegion2).
      guard region.memorySize == buffer.size else {
        throw Errno.EINVAL.because("kvm_vfio_dmabuf_bind", "size 0x\(String(region.memorySize, radix: 16)) != dmabuf->size 0x\(String(buffer.size, radix: 16))")
      }
    case .reviewed:
      let (end, overflow) = region.guestMemfdOffset.addingReportingOverflow(region.memorySize)
      guard !overflow, end <= buffer.size else {
        throw Errno.EINVAL.because("kvm_vfio_dmabuf_bind", "model (reviewed): offset + size past the dma-buf's end")
      }
    }
  }
}

/// What KVM learns about a dma-buf from its fd and its exporter: the buffer's identity and
/// size, and the exporter's private data when the exporter is VFIO (patch 9's
/// `struct vfio_dma_buf_data { bool is_private; struct kvm *kvm; }`).
public struct DmaBufDescription: Hashable, Sendable {
  public let id: DmaBufID
  public let size: UInt64
  /// `nil` when the buffer was not exported by VFIO.
  public let vfio: VFIODmaBufData?
  public init(id: DmaBufID, size: UInt64, vfio: VFIODmaBufData?) {
    self.id = id; self.size = size; self.vfio = vfio
  }
}

/// KVM's view of `struct vfio_dma_buf_data` (patch 9): the exporter data the dma-buf
/// protocol hands importers, never VFIO's own type.
public typealias VFIODmaBufData = ExporterData

/// What `fget(mem->guest_memfd)` found, as `kvm_gmem_bind()` sees it.
public enum GuestMemfdLookup: Hashable, Sendable {
  /// A guest_memfd file (`file->f_op == &kvm_gmem_fops`).
  case guestMemfd(GuestMemfd)
  /// An open file of another kind.
  case otherFile
}

/// Where a new slot's guest_memfd binding goes: the file and its first page.
public struct GuestMemfdSlotBinding: Hashable, Sendable {
  public let file: GuestMemfdID
  public let pgoff: UInt64
  public let gmemOnly: Bool
}

/// The ioctl a memslot update came through: `KVM_SET_USER_MEMORY_REGION` reads only the
/// first five fields and takes only `KVM_SET_USER_MEMORY_REGION_V1_FLAGS`.
public enum MemoryRegionIoctl: Hashable, Sendable {
  case region
  case region2
}

/// What a committed memslot change leaves for the caller to do.
public struct MemslotCommit: Hashable, Sendable {
  public let change: MemslotChange
  /// Attachments to detach (`dma_buf_detach()`), for a deleted dma-buf slot.
  public let detach: [AttachmentID]
  /// Attachments the change left bound to a freed slot (`rfc-v1` move / flags change).
  public let leftDangling: [AttachmentID]
}
