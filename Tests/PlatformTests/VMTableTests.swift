import Testing
import KernelCore
@testable import KVM
import TDX
@testable import Platform

/// KVM's per-VM table: a dictionary by VM id, kept in id order, that modifies a VM in place.
@Suite struct VMTableTests {
  static func vm(_ id: UInt32) -> VirtualMachine { VirtualMachine(id: VMID(id), type: .default) }

  /// Inserted in any order, the table iterates in id order, and tables with the same entries
  /// are equal and hash equal.
  @Test(arguments: [[3, 1, 2], [1, 2, 3], [2, 3, 1]])
  func entriesAreInIDOrderWhateverTheInsertionOrder(_ order: [UInt32]) {
    var table: VMTable<VirtualMachine> = [:]
    for id in order { table[VMID(id)] = Self.vm(id) }
    #expect(table.keys == [VMID(1), VMID(2), VMID(3)])
    #expect(table.map(\.key) == table.keys)
    #expect(table.values.map(\.id) == table.keys)
    #expect(table.count == 3 && !table.isEmpty)
    var reference: VMTable<VirtualMachine> = [:]
    for id: UInt32 in [1, 2, 3] { reference[VMID(id)] = Self.vm(id) }
    #expect(table == reference)
    #expect(table.hashValue == reference.hashValue)
  }

  /// Getting, replacing and removing, also through an in-place modification that sets `nil`.
  @Test func getSetAndRemove() {
    var table: VMTable<TDID> = [VMID(2): TDID(7)]
    #expect(table[VMID(2)] == TDID(7) && table[VMID(1)] == nil)
    table[VMID(1)] = TDID(5)
    table[VMID(2)] = TDID(8)
    #expect(table.keys == [VMID(1), VMID(2)] && table[VMID(2)] == TDID(8))
    table[VMID(1)] = nil
    #expect(table.keys == [VMID(2)])
    table[VMID(9)] = nil                                // removing what is not there changes nothing
    #expect(table.count == 1)
    if table[VMID(2)] != nil { table[VMID(2)] = nil }
    #expect(table.isEmpty)
  }

  /// A VM modified through the table is modified in place (its storage is not copied), and a
  /// copy of the table taken before keeps the VM as it was.
  @Test func aVMIsModifiedInPlace() throws {
    var table: VMTable<VirtualMachine> = [VMID(1): Self.vm(1)]
    func storage() -> ObjectIdentifier? { table[VMID(1)].map { ObjectIdentifier($0.storage.object) } }
    let first = storage()
    try table[VMID(1)]!.createVCPU(0)
    #expect(storage() == first)                         // nobody else held it: written in place
    let before = table
    try table[VMID(1)]!.createVCPU(1)                   // shared with `before`: copied once
    let second = storage()
    #expect(second != first)
    try table[VMID(1)]!.createVCPU(2)
    #expect(storage() == second)                        // unique again: in place
    #expect(table[VMID(1)]?.vcpus == [0, 1, 2])
    #expect(before[VMID(1)]?.vcpus == [0])
  }
}
