import KernelCore

/// Which exporter a buffer belongs to, and the exporter's key for it: the dma-buf core's
/// `dmabuf->ops` and `dmabuf->priv` as a value.
public struct ExporterRef: Hashable, Sendable {
  /// The exporter's name as `exp_name` would show it (`"vfio-pci"`).
  public var name: String
  /// The exporter's own key for the buffer (its private object).
  public var key: UInt32
  public init(name: String, key: UInt32) { self.name = name; self.key = key }
}

/// `struct dma_buf`.
public struct DmaBufObject: Hashable, Sendable {
  public let id: DmaBufID
  /// `dmabuf->size`, a multiple of 4 KiB.
  public let size: UInt64
  public let exporter: ExporterRef
  /// The flags the fd was opened with (`exp_info.flags`, e.g. `O_CLOEXEC | O_RDWR`).
  public let openFlags: UInt32
  /// References on `dmabuf->file`: one per fd, plus one per importer that did `dma_buf_get()`.
  /// The buffer is released (`dma_buf_ops.release`) when this drops to zero.
  public internal(set) var fileRefs: Int
  /// `dmabuf->attachments`, in attach order (the order `move_notify` walks them).
  public internal(set) var attachments: [AttachmentID]
  /// `dmabuf->resv`'s ww_mutex.
  public internal(set) var resv: KernelMutex

  /// The number of 4 KiB pages in the buffer.
  public var pageCount: UInt64 { size.pages }
}

/// How an importer attached: `struct dma_buf_attach_ops` reduced to what matters here.
public struct ImporterOps: Hashable, Sendable {
  /// The importer is dynamic: it passed `importer_ops` (and so can be told to move).
  public var dynamic: Bool
  /// `importer_ops->move_notify` is set.
  public var hasMoveNotify: Bool
  /// `importer_ops->allow_peer2peer`.
  public var allowPeer2Peer: Bool
  public init(dynamic: Bool, hasMoveNotify: Bool, allowPeer2Peer: Bool) {
    self.dynamic = dynamic; self.hasMoveNotify = hasMoveNotify; self.allowPeer2Peer = allowPeer2Peer
  }
}

/// `struct dma_buf_attachment`.
public struct DmaBufAttachment: Hashable, Sendable {
  public let id: AttachmentID
  public let buffer: DmaBufID
  /// Who attached: a name the platform maps to the importer (a test importer, a KVM memslot).
  public let importer: String
  public let ops: ImporterOps
  /// `attach->peer2peer`: set only when both sides allow it.
  public let peer2peer: Bool
  /// Pinned by `dma_buf_pin()`.
  public internal(set) var pinned: Bool
  /// The exporter called this importer's `move_notify` and it has not returned yet (the
  /// importer is still unmapping, under the buffer's resv lock).
  public internal(set) var inMoveNotify = false
  /// How many `move_notify` calls this importer has received: history, outside equality.
  public internal(set) var observedMoveNotifications: Observed<Int> = 0
  /// How many `move_notify` calls this importer has received.
  public var moveNotifications: Int { observedMoveNotifications.value }

  public init(id: AttachmentID, buffer: DmaBufID, importer: String, ops: ImporterOps, peer2peer: Bool,
              pinned: Bool) {
    self.id = id; self.buffer = buffer; self.importer = importer; self.ops = ops
    self.peer2peer = peer2peer; self.pinned = pinned
  }
}
