/// The machine as `info mtree` and debugfs would show it: devices with their BARs and command
/// register, the open fds, dma-bufs with their ranges and importers, each VM's memslots and TDP
/// MMU leaves, and the TDX module's TDs (Secure-EPT MMIO entries), DEVIFs and MMIOMT.
///
/// A plain value built once from a ``Platform/Machine`` (see `MachineState+Machine.swift`, the
/// one place that reads the machine), then printed as text, encoded as JSON (`pmmio show
/// --json`), drawn as SVG, or checked by a scenario's `expect: { state: ... }`. Runs of pages are
/// collapsed into extents, so a fully mapped 64 GiB BAR is one line, not 16 million.
///
/// Addresses and sizes are JSON numbers (all below 2^53); names are the kernel's.
public struct MachineState: Codable, Hashable, Sendable {
  /// Version of this layout; bumped when a field changes meaning or goes away.
  public static let currentSchema = 1
  public var schema = MachineState.currentSchema
  public var variant: String
  public var devices: [Device] = []
  /// The process's fd table, in fd order.
  public var files: [OpenFile] = []
  public var dmabufs: [DmaBuf] = []
  public var vms: [VM] = []
  public var tdx = TDX()

  public init(variant: String) { self.variant = variant }

  /// A PCIe function as vfio-pci drives it (`lspci -vv` and `/sys/bus/pci/devices/*/`).
  public struct Device: Codable, Hashable, Sendable {
    public var name: String
    /// `vfio-devN`.
    public var id: UInt32
    /// PCI_COMMAND, raw.
    public var command: UInt16
    /// Memory Space Enable set and the function in D0: its BARs decode.
    public var memoryDecode: Bool
    public var busMaster: Bool
    public var power: String
    /// The TDISP state of its interface; absent without TDISP.
    public var tdi: String?
    public var openCount: Int
    /// How a cdev fd bound it; absent while unbound.
    public var binding: Binding?
    public var bars: [BAR]
    /// `vdev->dmabufs`: buffers still attached to the device.
    public var dmabufs: [UInt32]
    /// BARs user space has mmapped through the device fd.
    public var hostMappings: [UInt32]
    public var registrations: Int
    public var resetsUnderLiveImport: Int
  }

  public struct Binding: Codable, Hashable, Sendable {
    public var `private`: Bool
    public var vm: UInt32?
  }

  public struct BAR: Codable, Hashable, Sendable {
    public var index: UInt32
    public var base: UInt64
    public var size: UInt64
    public var is64Bit: Bool
    public var prefetchable: Bool
    public var msixTable: Span?
    public var msixPBA: Span?
    /// Bytes of its registers that hold something else than their reset value; absent for none.
    public var writtenBytes: Int?
  }

  /// Bytes inside a BAR.
  public struct Span: Codable, Hashable, Sendable {
    public var offset: UInt64
    public var size: UInt64
  }

  /// One fd and what it refers to.
  public struct OpenFile: Codable, Hashable, Sendable {
    public var fd: Int32
    /// `vfio-device`, `dma-buf` or `vm`.
    public var kind: String
    /// The VFIO file, dma-buf or VM id.
    public var id: UInt32
    /// For a VFIO device fd, the device's name.
    public var device: String?
  }

  /// `struct dma_buf` with VFIO's private part (`struct vfio_pci_dma_buf`) where VFIO exported it.
  public struct DmaBuf: Codable, Hashable, Sendable {
    public var id: UInt32
    public var size: UInt64
    public var exporter: String
    /// References on `dmabuf->file`: its fds plus its importers.
    public var fileRefs: Int
    /// The device and BAR it was exported from; the device is absent once closed for good.
    public var device: String?
    public var region: UInt32?
    /// `priv->phys_vec`: host-physical ranges in buffer order.
    public var ranges: [HostRange]
    /// Patch 9's exporter data: host-unaccessible MMIO of a device bound private, and its VM.
    public var `private`: Bool?
    public var vm: UInt32?
    /// `priv->revoked`.
    public var revoked: Bool?
    public var importers: [Importer]
  }

  public struct HostRange: Codable, Hashable, Sendable {
    public var hpa: UInt64
    public var size: UInt64
  }

  /// One `struct dma_buf_attachment`.
  public struct Importer: Codable, Hashable, Sendable {
    public var attachment: UInt32
    public var importer: String
    public var dynamic: Bool
    public var peer2peer: Bool
    public var pinned: Bool
    public var moveNotifications: Int
    /// The VM and memslot whose importer this is, when KVM holds it.
    public var vm: UInt32?
    public var slot: String?
    /// KVM holds it for a slot that was freed without detaching (`rfc-v1`'s move).
    public var stale: Bool?
  }

  /// One `struct kvm`.
  public struct VM: Codable, Hashable, Sendable {
    public var id: UInt32
    /// The name `machine.vms` gave it, if any.
    public var name: String?
    public var fds: [Int32]
    /// `default` or `tdx`.
    public var type: String
    /// `kvm->vm_bugged`.
    public var dead: Bool
    public var vcpus: [UInt32]
    /// The TD behind a TDX VM.
    public var td: UInt32?
    public var memslots: [Memslot]
    /// The TDP MMU's leaves, runs collapsed.
    public var mappings: [Mapping]
    /// 4 KiB pages the TDP MMU maps.
    public var mappedPages: UInt64
  }

  public struct Memslot: Codable, Hashable, Sendable {
    /// `1`, or `1:2` for address space 1.
    public var slot: String
    public var gpa: UInt64
    public var size: UInt64
    public var flags: [String]
    public var userspaceAddr: UInt64
    public var guestMemfdOffset: UInt64
    public var dmabuf: UInt32?
    public var attachment: UInt32?
    /// The buffer page the slot's first GFN maps.
    public var pgoff: UInt64?
  }

  /// A run of TDP MMU leaves: `count` leaves of one level, GPA and HPA both contiguous, with
  /// the same access bits and memory type.
  public struct Mapping: Codable, Hashable, Sendable {
    public var gpa: UInt64
    public var hpa: UInt64
    public var size: UInt64
    /// `4K`, `2M` or `1G`.
    public var level: String
    public var count: UInt64
    /// `r`, `w`, `x` as set.
    public var access: String
    /// `UC` for MMIO, `WB` for RAM.
    public var memoryType: String
  }

  public struct TDX: Codable, Hashable, Sendable {
    public var tds: [TD] = []
    public var devifs: [Devif] = []
    /// The MMIO metadata table's DATA entries, runs collapsed.
    public var mmiomt: [MMIOMTRun] = []
    /// Pages TDH.MMIO.MT.ADD gave the table.
    public var mmiomtTablePages = 0
  }

  public struct TD: Codable, Hashable, Sendable {
    public var id: UInt32
    /// The VM whose TD this is.
    public var vm: UInt32?
    public var epoch: UInt64
    public var fatal: Bool
    public var vcpus: Int
    public var vcpusInGuest: Int
    /// Secure-EPT leaf entries, runs collapsed. FREE entries are absent.
    public var sept: [SEPTRun]
  }

  /// A run of Secure-EPT entries of one state and level, GPA and HPA contiguous.
  public struct SEPTRun: Codable, Hashable, Sendable {
    public var gpa: UInt64
    public var hpa: UInt64
    public var size: UInt64
    public var level: String
    public var count: UInt64
    /// `MMIO_PENDING`, `MMIO_MAPPED`, `MMIO_BLOCKED` …
    public var state: String
    /// The TD epoch the entries were blocked in (blocked states only).
    public var blockedEpoch: UInt64?
  }

  public struct Devif: Codable, Hashable, Sendable {
    public var id: UInt32
    public var td: UInt32
    /// The TDI's PCIe routing id.
    public var interface: UInt32
    /// The device whose BAR holds the DEVIF's MMIO, when one does.
    public var device: String?
    /// The TDISP state the module last saw.
    public var tdisp: String
    public var streamBlocked: Bool
    public var ranges: [HostRange]
    public var mappedPages: UInt64
  }

  /// A run of MMIOMT DATA entries: one function and level, mapped contiguously or not at all.
  public struct MMIOMTRun: Codable, Hashable, Sendable {
    public var hpa: UInt64
    /// 4 KiB pages the run covers.
    public var pages: UInt64
    /// The level each entry was set at (`4K`, `2M`, `1G`) and how many entries the run holds.
    public var level: String
    public var count: UInt64
    /// The function id (PCIe routing id) TDH.MMIO.MT.SET gave the entries.
    public var function: UInt32
    /// The live DEVIF of that function, if any.
    public var devif: UInt32?
    /// Where the run is mapped, when it is.
    public var td: UInt32?
    public var gpa: UInt64?
  }
}

extension MachineState {
  /// The device called `name`.
  public func device(named name: String) -> Device? { devices.first { $0.name == name } }
  /// The VM the fd refers to.
  public func vm(fd: Int32) -> VM? {
    guard let file = files.first(where: { $0.fd == fd && $0.kind == "vm" }) else { return nil }
    return vms.first { $0.id == file.id }
  }
  /// The dma-buf the fd refers to.
  public func dmabuf(fd: Int32) -> DmaBuf? {
    guard let file = files.first(where: { $0.fd == fd && $0.kind == "dma-buf" }) else { return nil }
    return dmabufs.first { $0.id == file.id }
  }
  public func td(_ id: UInt32) -> TD? { tdx.tds.first { $0.id == id } }

  /// The Secure-EPT state of the page at `gpa` in `td`: `FREE` when no entry maps it.
  public func septState(td: UInt32, gpa: UInt64) -> String {
    guard let td = self.td(td) else { return "FREE" }
    let hit = td.sept.first { gpa >= $0.gpa && gpa - $0.gpa < $0.size }
    return hit?.state ?? "FREE"
  }
}

/// Merges neighbours into runs: `extends(run, next)` says whether `next` continues `run`,
/// `merge` folds it in. One pass, in order.
func collapse<T>(_ items: [T], extends: (T, T) -> Bool, merge: (inout T, T) -> Void) -> [T] {
  var runs: [T] = []
  for item in items {
    if let last = runs.indices.last, extends(runs[last], item) {
      merge(&runs[last], item)
    } else {
      runs.append(item)
    }
  }
  return runs
}
