/// A typed identity for a kernel object (a device, a dma-buf, an attachment, a VM).
///
/// `Tag` is a caseless enum per kind, so an attachment id cannot be passed where a dma-buf id
/// is expected. Ids are allocated from per-kind counters held in the owning subsystem's state
/// and never reused, like inode or object numbers in a trace.
@frozen public struct ObjectID<Tag>: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
  public let rawValue: UInt32
  @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
  @inlinable public init(_ raw: UInt32) { rawValue = raw }
  @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
  public var description: String { "#\(rawValue)" }
  /// The next id after this one.
  @inlinable public var next: Self { Self(rawValue &+ 1) }
}

/// The identity of a VM, shared by VFIO (which VM a private device is bound to), the dma-buf
/// exporter data (`struct vfio_dma_buf_data { bool is_private; struct kvm *kvm; }`) and KVM.
public enum VMTag {}
public typealias VMID = ObjectID<VMTag>
