import KernelCore
import DmaBuf
import KVM

/// Every operation a user (a scenario, the fuzzer, a VMM's test) can perform on a ``Machine``.
///
/// Names are the uAPI's, lower-cased with their subsystem prefix in scenarios
/// (`vfio.dma_buf` is ``vfioDmaBuf(fd:regionIndex:ranges:openFlags:flags:)``). Arguments are
/// already resolved: fds are fd numbers, devices are names from the machine's configuration.
public enum Operation: Hashable, Sendable {
  // MARK: VFIO (cdev, /dev/vfio/devices/vfioN)
  /// `open("/dev/vfio/devices/vfioN")`: returns a device fd.
  case vfioOpen(device: String)
  /// `VFIO_DEVICE_BIND_IOMMUFD`; `private` is the private bind (`rfc-v1`: RFC patch 8's
  /// `VFIO_DEVICE_BIND_IOMMUFD_PRIVATE`, bit 0; `reviewed`: this model's
  /// `VFIO_DEVICE_BIND_FLAG_PRIVATE`, bit 1) and `vm` the VM fd the private device is bound
  /// to. `token` sets bit 0 as such: 6.19's `VFIO_DEVICE_BIND_FLAG_TOKEN` in `reviewed`, and
  /// in `rfc-v1`, whose 6.13 base has no TOKEN, the RFC's PRIVATE (the two flags collide).
  case vfioBindIOMMUFD(fd: FD, private: Bool, vm: FD?, token: Bool = false)
  /// `close(fd)` of a VFIO device fd.
  case vfioClose(fd: FD)
  /// `VFIO_DEVICE_GET_REGION_INFO`.
  case vfioRegionInfo(fd: FD, regionIndex: UInt32)
  /// `pread` on the device fd at the region's offset.
  case vfioRead(fd: FD, regionIndex: UInt32, offset: UInt64, size: UInt64)
  /// `pwrite` on the device fd at the region's offset, of the low `size` bytes of `value`.
  case vfioWrite(fd: FD, regionIndex: UInt32, offset: UInt64, size: UInt64, value: UInt64 = Operation.writePattern)
  /// `mmap` of a region through the device fd.
  case vfioMmap(fd: FD, regionIndex: UInt32)
  /// A config-space write of the PCI command register's Memory Space Enable bit.
  case vfioSetMemoryDecode(fd: FD, enable: Bool)
  /// `VFIO_DEVICE_RESET`.
  case vfioReset(fd: FD)
  /// An FLR started by a config-space write (PCIe Device Control "Initiate FLR"), as a guest
  /// does through the config region.
  case vfioFLR(fd: FD)
  /// `VFIO_DEVICE_PCI_HOT_RESET`.
  case vfioHotReset(fd: FD)
  /// A PMCSR write through config space: D0 or D3hot.
  case vfioSetPower(fd: FD, state: PowerStateName)
  /// `VFIO_DEVICE_FEATURE` with `VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF`:
  /// returns a dma-buf fd. `ranges` are (offset, length) pairs in the region; in `rfc-v1`
  /// each range carries `regionIndex` and (0, 0) means the whole BAR.
  case vfioDmaBuf(fd: FD, regionIndex: UInt32, ranges: [DmaRange], openFlags: UInt32, flags: UInt32)

  // MARK: dma-buf (in-kernel importer API, driven by a named test importer)
  /// `dma_buf_dynamic_attach()` (or `dma_buf_attach()` when not dynamic) by `importer`.
  case dmabufAttach(fd: FD, importer: String, dynamic: Bool, peer2peer: Bool)
  /// `dma_buf_detach()`.
  case dmabufDetach(attachment: AttachmentID)
  /// `dma_buf_pin()`.
  case dmabufPin(attachment: AttachmentID)
  /// `dma_buf_get_pfn_unlocked()` (patch 1).
  case dmabufGetPfn(attachment: AttachmentID, pgoff: PageIndex)
  /// `close(fd)` of a dma-buf fd.
  case dmabufClose(fd: FD)

  // MARK: PCI and TDISP (host PCI/TSM side, by device name)
  case tdispLock(device: String)
  case tdispStart(device: String, nonce: NonceChoice)
  case tdispStop(device: String)
  case tdispReport(device: String)
  /// An FLR of the function from outside VFIO (e.g. sysfs `reset`).
  case pciFLR(device: String)
  /// A write of the command register; `nil` leaves a bit as it is.
  case pciWriteCommand(device: String, memory: Bool?, busMaster: Bool?)

  // MARK: KVM
  case kvmCreateVM(type: VMTypeName)
  case kvmCreateVCPU(vm: FD, id: UInt32)
  /// `KVM_CHECK_EXTENSION` on a VM fd, or on `/dev/kvm` when `vm` is nil: the capability's
  /// value (``OpValue/read(_:)``).
  case kvmCheckExtension(vm: FD?, capability: Int32)
  /// `KVM_SET_USER_MEMORY_REGION`: the old ioctl, `struct kvm_userspace_memory_region` (its
  /// `guest_memfd` fields read as 0, only LOG_DIRTY_PAGES and READONLY allowed).
  case kvmSetUserMemoryRegion(vm: FD, region: MemoryRegion2)
  case kvmSetUserMemoryRegion2(vm: FD, region: MemoryRegion2)
  /// `KVM_CREATE_GUEST_MEMFD`: returns a guest_memfd fd.
  case kvmCreateGuestMemfd(vm: FD, size: UInt64, flags: UInt64)
  /// `KVM_SET_MEMORY_ATTRIBUTES`.
  case kvmSetMemoryAttributes(vm: FD, address: UInt64, size: UInt64, attributes: UInt64, flags: UInt64)
  case kvmDestroyVM(vm: FD)
  /// A guest load on vCPU `vcpu`: in guest mode, then (when not mapped) the EPT violation,
  /// the fault and the access again, until it completes or `KVM_RUN` returns.
  case guestRead(vm: FD, gpa: GPA, size: UInt64, vcpu: UInt32 = 0)
  /// A guest store of the low `size` bytes of `value` on vCPU `vcpu`, as ``guestRead(vm:gpa:size:vcpu:)``.
  case guestWrite(vm: FD, gpa: GPA, size: UInt64, vcpu: UInt32 = 0, value: UInt64 = Operation.writePattern)

  // MARK: TDX
  case tdxDevifCreate(vm: FD, device: String)
  case tdxDevifRemove(vm: FD, device: String)
  case tdxMMIOMTAdd(device: String)
  case tdxStreamBlock(device: String)
  /// `TDG.MMIO.ACCEPT` by the guest on vCPU `vcpu`; takes the EPT violation first when not
  /// yet mapped, then accepts again.
  case guestAcceptMMIO(vm: FD, gpa: GPA, expectHPA: HPA?, vcpu: UInt32 = 0)
  /// A raw SEAMCALL: leaf number and its register arguments (RCX, RDX, R8, …).
  case tdxSeamcall(leaf: UInt64, args: [UInt64])
}

extension Operation {
  /// What a write stores when no value is given: `0xa5` in every byte, a pattern no register
  /// holds after reset (see `BARContents`).
  public static let writePattern: UInt64 = 0xA5A5_A5A5_A5A5_A5A5

  /// The op's name as scenarios spell it (`vfio.dma_buf`).
  public var name: String {
    switch self {
    case .vfioOpen: "vfio.open"
    case .vfioBindIOMMUFD: "vfio.bind_iommufd"
    case .vfioClose: "vfio.close"
    case .vfioRegionInfo: "vfio.region_info"
    case .vfioRead: "vfio.read"
    case .vfioWrite: "vfio.write"
    case .vfioMmap: "vfio.mmap"
    case .vfioSetMemoryDecode: "vfio.set_memory_decode"
    case .vfioReset: "vfio.reset"
    case .vfioFLR: "vfio.flr"
    case .vfioHotReset: "vfio.hot_reset"
    case .vfioSetPower: "vfio.set_power"
    case .vfioDmaBuf: "vfio.dma_buf"
    case .dmabufAttach: "dmabuf.attach"
    case .dmabufDetach: "dmabuf.detach"
    case .dmabufPin: "dmabuf.pin"
    case .dmabufGetPfn: "dmabuf.get_pfn"
    case .dmabufClose: "dmabuf.close"
    case .tdispLock: "tdisp.lock"
    case .tdispStart: "tdisp.start"
    case .tdispStop: "tdisp.stop"
    case .tdispReport: "tdisp.report"
    case .pciFLR: "pci.flr"
    case .pciWriteCommand: "pci.write_command"
    case .kvmCreateVM: "kvm.create_vm"
    case .kvmCreateVCPU: "kvm.create_vcpu"
    case .kvmCheckExtension: "kvm.check_extension"
    case .kvmSetUserMemoryRegion: "kvm.set_user_memory_region"
    case .kvmSetUserMemoryRegion2: "kvm.set_user_memory_region2"
    case .kvmCreateGuestMemfd: "kvm.create_guest_memfd"
    case .kvmSetMemoryAttributes: "kvm.set_memory_attributes"
    case .kvmDestroyVM: "kvm.destroy_vm"
    case .guestRead: "guest.read"
    case .guestWrite: "guest.write"
    case .tdxDevifCreate: "tdx.devif_create"
    case .tdxDevifRemove: "tdx.devif_remove"
    case .tdxMMIOMTAdd: "tdx.mmio_mt_add"
    case .tdxStreamBlock: "tdx.stream_block"
    case .guestAcceptMMIO: "guest.accept_mmio"
    case .tdxSeamcall: "tdx.seamcall"
    }
  }
}

/// One `struct vfio_region_dma_range`: an (offset, length) pair inside a region.
public struct DmaRange: Hashable, Sendable {
  public var offset: UInt64
  public var length: UInt64
  public init(offset: UInt64, length: UInt64) { self.offset = offset; self.length = length }
}

/// `D0` or `D3hot`, as written to PMCSR.
public enum PowerStateName: String, Hashable, Sendable, CaseIterable { case d0 = "D0", d3hot = "D3hot" }

/// What `tdisp.start` sends back: the nonce LOCK_INTERFACE produced, or a wrong one.
public enum NonceChoice: String, Hashable, Sendable, CaseIterable { case echo, wrong }

/// `KVM_CREATE_VM`'s type by scenario name: `KVM_X86_DEFAULT_VM` (0),
/// `KVM_X86_SW_PROTECTED_VM` (1) or `KVM_X86_TDX_VM` (5).
public enum VMTypeName: String, Hashable, Sendable, CaseIterable {
  case `default`
  case swProtected = "sw_protected"
  case tdx

  /// The KVM machine type.
  public var type: VMType {
    switch self {
    case .default: .default
    case .swProtected: .swProtected
    case .tdx: .tdx
    }
  }
}

/// `struct kvm_userspace_memory_region2`: KVM's own mirror of it, as the ioctl passes it.
public typealias MemoryRegion2 = UserspaceMemoryRegion2

extension UserspaceMemoryRegion2 {
  /// The struct as a VMM fills it in: raw flag bits, and the fd as the signed `int` user space
  /// holds (`-1` for none), stored in the `__u32 guest_memfd` field as the kernel reads it.
  public init(slot: UInt32, flags: UInt32, guestPhysAddr: UInt64, memorySize: UInt64,
              userspaceAddr: UInt64 = 0, guestMemfdOffset: UInt64 = 0, guestMemfd: Int32 = -1) {
    self.init(slot: slot, flags: MemslotFlags(rawValue: flags), guestPhysAddr: guestPhysAddr,
              memorySize: memorySize, userspaceAddr: userspaceAddr, guestMemfdOffset: guestMemfdOffset,
              guestMemfd: UInt32(bitPattern: guestMemfd))
  }
}
