import KernelCore
import DmaBuf
import HashTreeCollections

// How a VirtualMachine is stored: its fields behind one reference, copied on the first write
// after a copy; and its hash as the hashes of its parts, for the explorer.

/// Everything a ``VirtualMachine`` holds: the state `==` and hashing compare. See the
/// ``VirtualMachine`` property of each name.
struct VMFields: Hashable, Sendable {
  let id: VMID
  let type: VMType
  var vcpus: TreeSet<UInt32> = []
  var memslots: TreeDictionary<SlotKey, Memslot> = [:]
  /// `memslots` by address space and first GFN, for lookups (derived: outside `==` and hash).
  var slotIndex = MemslotIndex()
  var bindings: TreeDictionary<AttachmentID, SlotBinding> = [:]
  var mmu = TDPMMU()
  var invalidation = MMUInvalidation()
  var mmuLock = KernelRWSemaphore("kvm->mmu_lock")
  var slotsLock = KernelMutex("kvm->slots_lock")
  var srcu = SRCUState()
  var pendingKicks: TreeSet<UInt32> = []
  var blockedMirror: TreeSet<GFN> = []
  var isDead = false
  let ramPFNs: [Range<PFN>]
  let limits: VMLimits
  var memoryAttributes = MemoryAttributeMap()
  var guestMemfds: TreeDictionary<GuestMemfdID, GuestMemfd> = [:]
  var sharedMMU = TDPMMU()
  var memoryFaultExits: TreeDictionary<UInt32, MemoryFaultExit> = [:]

  init(id: VMID, type: VMType, ramPFNs: [Range<PFN>], limits: VMLimits) {
    self.id = id; self.type = type; self.ramPFNs = ramPFNs; self.limits = limits
  }
}

/// The object a ``VirtualMachine``'s fields live in: a header-only `ManagedBuffer`, so the
/// fields are reached through a pointer (no exclusivity check per access, as a class's
/// stored property would need). Written only while uniquely referenced.
final class VMStorage: ManagedBuffer<VMFields, UInt8> {
  static func make(_ fields: VMFields) -> VMStorage {
    unsafeDowncast(VMStorage.create(minimumCapacity: 0) { _ in fields }, to: VMStorage.self)
  }

  @inline(__always) var fields: UnsafeMutablePointer<VMFields> { withUnsafeMutablePointerToHeader { $0 } }
}

/// A strong reference to a VM's storage, `Sendable` because the storage is written only
/// while uniquely referenced (`ManagedBuffer` itself is never `Sendable`).
struct VMStorageRef: @unchecked Sendable {
  var object: VMStorage
  init(_ fields: VMFields) { object = VMStorage.make(fields) }
  /// A new storage holding a copy of `other`'s fields.
  init(copying other: VMStorage) { object = VMStorage.make(other.fields.pointee) }
}

/// Hashing a state part by part: a part that a previous state holds bitwise identically (the
/// same scalars, the same references to storage nobody writes while shared) has the same
/// value, so its hash is the previous state's. The explorer hashes a successor this way
/// against the state it came from, and so hashes only what the step changed.
public enum PartHash {
  /// Whether `a` and `b` have the same bytes, which for the model's values means the same value.
  @inlinable public static func identical<T>(_ a: T, _ b: T) -> Bool {
    withUnsafeBytes(of: a) { x in withUnsafeBytes(of: b) { y in sameBytes(x, y) } }
  }

  /// Two buffers of one type's size compared a word at a time.
  @inlinable public static func sameBytes(_ x: UnsafeRawBufferPointer, _ y: UnsafeRawBufferPointer) -> Bool {
    let count = x.count
    var i = 0
    while i + 8 <= count {
      if x.loadUnaligned(fromByteOffset: i, as: UInt64.self) != y.loadUnaligned(fromByteOffset: i, as: UInt64.self) { return false }
      i += 8
    }
    while i < count {
      if x[i] != y[i] { return false }
      i += 1
    }
    return true
  }

  /// The hash of `value`; the hash `previous` had (`previousHash`) when `value` is bitwise
  /// `previous`.
  @inlinable public static func of<T: Hashable>(_ value: T, previous: T?, previousHash: Int?) -> Int {
    if let previous, let previousHash, identical(value, previous) { return previousHash }
    return value.hashValue
  }
}

/// The parts of a `Root` value to hash one by one, each a stored property found by its
/// offset, so that two values are compared and hashed in place (through pointers to them),
/// without copying a part out.
public struct PartTable<Root>: Sendable {
  public struct Part: Sendable {
    @usableFromInline let offset: Int
    @usableFromInline let size: Int
    @usableFromInline let hash: @Sendable (UnsafeRawPointer) -> Int

    /// The stored property `path` (a chain of stored properties) as a part.
    public static func part<T: Hashable & Sendable>(_ path: KeyPath<Root, T>) -> Part {
      guard let offset = MemoryLayout<Root>.offset(of: path) else {
        preconditionFailure("a part must be a stored property: \(path)")
      }
      return Part(offset: offset, size: MemoryLayout<T>.size) { $0.assumingMemoryBound(to: T.self).pointee.hashValue }
    }
  }

  public let parts: [Part]
  public init(_ parts: [Part]) { self.parts = parts }

  public var count: Int { parts.count }

  /// Appends the hash of each part of the value at `value` to `out`. A part that the value at
  /// `previous` holds with the same bytes takes its hash from `previousHashes` (what this
  /// call appended for `previous`, same order).
  @inlinable
  public func append(to out: inout [Int], _ value: UnsafeRawPointer, previous: UnsafeRawPointer?,
                     previousHashes: ArraySlice<Int>?) {
    let old = previousHashes.flatMap { $0.count >= parts.count ? $0 : nil }
    for k in parts.indices {
      let part = parts[k]
      let a = value + part.offset
      if let previous, let old,
         PartHash.sameBytes(UnsafeRawBufferPointer(start: a, count: part.size),
                            UnsafeRawBufferPointer(start: previous + part.offset, count: part.size)) {
        out.append(old[old.startIndex + k])
      } else {
        out.append(part.hash(a))
      }
    }
  }
}

extension VirtualMachine {
  /// How many hashes ``appendPartHashes(to:previous:previousHashes:)`` appends.
  public static var partCount: Int { partTable.parts.count }

  /// Every field of ``VMFields`` that `==` compares, in declaration order.
  static let partTable = PartTable<VMFields>([
    .part(\.id), .part(\.type), .part(\.vcpus), .part(\.memslots), .part(\.bindings), .part(\.mmu),
    .part(\.invalidation), .part(\.mmuLock), .part(\.slotsLock), .part(\.srcu), .part(\.pendingKicks),
    .part(\.blockedMirror), .part(\.isDead), .part(\.ramPFNs), .part(\.limits), .part(\.memoryAttributes),
    .part(\.guestMemfds), .part(\.sharedMMU), .part(\.memoryFaultExits),
  ])

  /// Appends the hash of each of the VM's fields to `out` (``partCount`` of them): equal VMs
  /// append equal lists. A field `previous` holds bitwise identically takes its hash from
  /// `previousHashes` (what this call appended for `previous`); a VM that shares its storage
  /// with `previous` takes all of them. The fields are read in place.
  public func appendPartHashes(to out: inout [Int], previous: VirtualMachine?, previousHashes: ArraySlice<Int>?) {
    let old = previousHashes.flatMap { $0.count == Self.partCount ? $0 : nil }
    if let previous, let old, sharesStorage(with: previous) {
      out.append(contentsOf: old)
      return
    }
    withExtendedLifetime((self, previous)) {
      Self.partTable.append(to: &out, UnsafeRawPointer(fields), previous: old == nil ? nil : previous.map { UnsafeRawPointer($0.fields) },
                            previousHashes: old)
    }
  }
}

/// The memslots of every address space ordered by first GFN, as KVM keeps each address
/// space's slots in a GFN-ordered tree (`kvm_memslots.gfn_tree`), so that finding the slot of
/// a GFN is a binary search, not a walk of every slot.
///
/// Derived from the slots and rebuilt whenever they change: two VMs with the same slots have
/// the same index, so it takes no part in `==` or hashing.
struct MemslotIndex: Hashable, Sendable {
  struct Entry: Sendable {
    let asID: UInt16
    let first: UInt64
    /// One past the last GFN.
    let end: UInt64
    let key: SlotKey
  }

  private(set) var entries: [Entry] = []

  init() {}

  init(_ slots: TreeDictionary<SlotKey, Memslot>) {
    entries = slots.values.map { Entry(asID: $0.key.asID, first: $0.baseGFN.rawValue, end: $0.baseGFN.rawValue + $0.npages, key: $0.key) }
      .sorted { ($0.asID, $0.first, $0.key.id) < ($1.asID, $1.first, $1.key.id) }
  }

  /// The slot of address space `asID` whose GFNs hold `gfn`.
  /// - Complexity: O(log slots).
  func key(containing gfn: GFN, asID: UInt16) -> SlotKey? {
    // The last slot of the address space that starts at or below `gfn`: slots of one address
    // space never overlap, so no other can hold it.
    var lo = 0, hi = entries.count
    while lo < hi {
      let mid = (lo + hi) / 2
      let e = entries[mid]
      if (e.asID, e.first) <= (asID, gfn.rawValue) { lo = mid + 1 } else { hi = mid }
    }
    guard lo > 0 else { return nil }
    let e = entries[lo - 1]
    return e.asID == asID && gfn.rawValue < e.end ? e.key : nil
  }

  static func == (_: MemslotIndex, _: MemslotIndex) -> Bool { true }
  func hash(into _: inout Hasher) {}
}
