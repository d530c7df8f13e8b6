import Testing
import KernelCore
import DmaBuf
@testable import KVM

/// How a VM is stored: its memslot lookup (a binary search by address space and first GFN),
/// its fields shared between copies until one is written, and its hash as the hashes of its
/// parts.
@Suite struct VirtualMachineStorageTests {
  /// A VM (type `default`, so address space 1 exists) with the given slots created in order:
  /// (slot id, address space, first GPA, size).
  static func vm(_ slots: [(UInt16, UInt16, UInt64, UInt64)]) throws -> VirtualMachine {
    var vm = VirtualMachine(id: VMID(1), type: .default)
    for (id, asID, gpa, size) in slots {
      let slot = UInt32(asID) << 16 | UInt32(id)
      let plan = try vm.prepareSetUserMemoryRegion2(region(slot, gpa: gpa, size: size, uaddr: 0x7000_0000_0000 + gpa),
                                                    variant: .reviewed)
      _ = try vm.commitSetUserMemoryRegion2(plan)
    }
    return vm
  }

  static let layout: [(UInt16, UInt16, UInt64, UInt64)] = [
    (1, 0, 0x10_0000, 0x10_0000),      // GFNs 0x100 ..< 0x200
    (2, 0, 0x20_0000, 0x1000),         // 0x200, right after slot 1
    (3, 0, 0x40_0000, 0x20_0000),      // 0x400 ..< 0x600, after a gap
    (4, 1, 0x10_0000, 0x40_0000),      // address space 1 over the same GPAs: 0x100 ..< 0x500
  ]

  /// Each GFN at and around the slots' edges finds the slot a walk of every slot finds, in its
  /// own address space only.
  @Test(arguments: [(UInt64(0xFF), UInt16(0), UInt16?.none), (0x100, 0, 1), (0x1FF, 0, 1), (0x200, 0, 2), (0x201, 0, nil),
                    (0x3FF, 0, nil), (0x400, 0, 3), (0x5FF, 0, 3), (0x600, 0, nil), (0xFF, 1, nil), (0x100, 1, 4),
                    (0x4FF, 1, 4), (0x500, 1, nil), (0x200, 2, nil)])
  func lookupAtTheEdges(gfn: UInt64, asID: UInt16, slot: UInt16?) throws {
    let vm = try Self.vm(Self.layout)
    #expect(vm.memslot(containing: GFN(gfn), asID: asID)?.key.id == slot)
    let walked = vm.memslots.values.first { $0.key.asID == asID && $0.contains(GFN(gfn)) }
    #expect(vm.memslot(containing: GFN(gfn), asID: asID) == walked)
  }

  /// The lookup follows every change of the slots: a slot invalidated for deletion is still
  /// found (flagged), a deleted one is not, one created in the gap is.
  @Test func lookupFollowsSlotChanges() throws {
    var vm = try Self.vm(Self.layout)
    vm.invalidateMemslot(SlotKey(id: 3))
    #expect(vm.memslot(containing: GFN(0x400))?.isInvalid == true)
    let delete = try vm.prepareSetUserMemoryRegion2(region(3, gpa: 0x40_0000, size: 0, uaddr: 0x7000_0040_0000),
                                                    variant: .reviewed)
    _ = try vm.commitSetUserMemoryRegion2(delete)
    #expect(vm.memslot(containing: GFN(0x400)) == nil)
    let create = try vm.prepareSetUserMemoryRegion2(region(5, gpa: 0x30_0000, size: 0x2000, uaddr: 0x7000_0030_0000),
                                                    variant: .reviewed)
    _ = try vm.commitSetUserMemoryRegion2(create)
    #expect(vm.memslot(containing: GFN(0x301))?.key.id == 5)
    #expect(vm.memslot(containing: GFN(0x302)) == nil)
  }

  /// A copy shares the fields until one side is written; the write leaves the other as it
  /// was, and VMs with the same slots made in another order are equal and hash equal.
  @Test func copiesShareTheirFieldsUntilWritten() throws {
    let vm = try Self.vm(Self.layout)
    var copy = vm
    #expect(copy.sharesStorage(with: vm))
    try copy.createVCPU(3)
    #expect(!copy.sharesStorage(with: vm))
    #expect(vm.vcpus.isEmpty && copy.vcpus == [3])
    #expect(copy != vm)
    let reordered = try Self.vm(Self.layout.reversed())
    #expect(!reordered.sharesStorage(with: vm))
    #expect(reordered == vm)
    #expect(reordered.hashValue == vm.hashValue)
  }

  /// Part hashes: equal VMs give equal lists, computed afresh or reusing a previous VM's, and
  /// a changed field changes its own hash only.
  @Test func partHashesAreTheFieldsHashes() throws {
    let vm = try Self.vm(Self.layout)
    var fresh: [Int] = []
    vm.appendPartHashes(to: &fresh, previous: nil, previousHashes: nil)
    #expect(fresh.count == VirtualMachine.partCount)
    var copy = vm
    try copy.createVCPU(1)
    var reused: [Int] = [], recomputed: [Int] = []
    copy.appendPartHashes(to: &reused, previous: vm, previousHashes: fresh[...])
    copy.appendPartHashes(to: &recomputed, previous: nil, previousHashes: nil)
    #expect(reused == recomputed)
    #expect(zip(reused, fresh).filter { $0 != $1 }.count == 1)    // only `vcpus`
    var reordered: [Int] = []
    try Self.vm(Self.layout.reversed()).appendPartHashes(to: &reordered, previous: nil, previousHashes: nil)
    #expect(reordered == fresh)
  }

  /// Bitwise identity of a part: the same value and storage, not merely an equal value.
  @Test func identicalMeansTheSameBytes() throws {
    let a = try Self.vm(Self.layout)
    let b = try Self.vm(Self.layout)
    #expect(PartHash.identical(a, a))
    #expect(!PartHash.identical(a, b))       // equal, but separate storage
    #expect(a == b)
    #expect(PartHash.identical(UInt64(5), 5) && !PartHash.identical(UInt64(5), 6))
    #expect(PartHash.of(b, previous: a, previousHash: 7) == b.hashValue)
    #expect(PartHash.of(a, previous: a, previousHash: 7) == 7)
  }
}
