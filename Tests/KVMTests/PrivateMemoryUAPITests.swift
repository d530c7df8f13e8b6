import Testing
import KernelCore
@testable import KVM

/// Values of the private-memory uAPI, as `include/uapi/linux/kvm.h` and
/// `arch/x86/include/uapi/asm/kvm.h` (6.18) define them.
@Test func uapiValues() {
  #expect(VMType.default.rawValue == 0 && VMType.swProtected.rawValue == 1 && VMType.tdx.rawValue == 5)
  #expect(VMType.allCases.map(\.uapiName) == ["KVM_X86_DEFAULT_VM", "KVM_X86_SW_PROTECTED_VM", "KVM_X86_TDX_VM"])
  #expect(MemoryAttributes.private.rawValue == 1 << 3)
  #expect(MemoryFaultExit.flagPrivate == 1 << 3 && MemoryFaultExit.exitReason == 39)
  #expect(GuestMemfdFlags.mmap.rawValue == 1 && GuestMemfdFlags.initShared.rawValue == 2)
  #expect(MemslotFlags.guestMemfd.rawValue == 1 << 2)
  #expect(KVMCapabilityNumber.allCases.map(\.rawValue) == [3, 10, 81, 118, 231, 232, 233, 234, 235, 244])
  #expect(KVMCapabilityNumber.guestMemfdFlags.description == "KVM_CAP_GUEST_MEMFD_FLAGS")
  #expect(KVMCapabilityNumber.guestMemfdFlags.scenarioName == "guest_memfd_flags")
}

struct TypeCase: Sendable, CustomTestStringConvertible {
  let type: VMType, privateMem: Bool, readonly: Bool, withSMM: UInt16, withoutSMM: UInt16, gmem: GuestMemfdFlags
  var testDescription: String { "\(type)" }
}

/// `kvm_arch_has_private_mem()`, `kvm_arch_has_readonly_mem()`, `kvm_arch_nr_memslot_as_ids()`
/// and `kvm_gmem_get_supported_flags()` per VM type.
@Test(arguments: [
  TypeCase(type: .default, privateMem: false, readonly: true, withSMM: 2, withoutSMM: 1, gmem: [.mmap, .initShared]),
  TypeCase(type: .swProtected, privateMem: true, readonly: true, withSMM: 1, withoutSMM: 1, gmem: [.mmap]),
  TypeCase(type: .tdx, privateMem: true, readonly: false, withSMM: 1, withoutSMM: 1, gmem: [.mmap]),
])
func perType(_ c: TypeCase) {
  #expect(c.type.hasPrivateMemory == c.privateMem && c.type.hasReadonlyMemory == c.readonly)
  #expect(c.type.addressSpaces(smm: true) == c.withSMM && c.type.addressSpaces(smm: false) == c.withoutSMM)
  #expect(GuestMemfdFlags.supported(for: c.type) == c.gmem)
  #expect(GuestMemfdFlags.supported(for: nil) == [.mmap, .initShared])
}

/// `kvm->mem_attr_array` as ranges: setting, splitting, merging; equal attributes compare equal
/// however they were set.
@Test func attributeMap() {
  var a = MemoryAttributeMap()
  a.set(10 ..< 20, .private)
  a.set(20 ..< 30, .private)
  #expect(a.privateRanges == [10 ..< 30])
  a.set(15 ..< 17, [])
  #expect(a.privateRanges == [10 ..< 15, 17 ..< 30])
  #expect(a.isPrivate(GFN(14)) && !a.isPrivate(GFN(15)) && !a.isPrivate(GFN(16)) && a.isPrivate(GFN(17)) && !a.isPrivate(GFN(30)))
  #expect(a.rangeHas(17 ..< 30, .private) && !a.rangeHas(14 ..< 18, .private) && a.rangeHas(15 ..< 17, []))
  a.set(15 ..< 17, .private)
  var b = MemoryAttributeMap()
  b.set(10 ..< 30, .private)
  #expect(a == b)
  b.set(0 ..< 100, [])
  #expect(b == MemoryAttributeMap())
}

/// `kvm_gmem_bind()`'s checks in the kernel's order, each with its function.
@Test func gmemBindOrder() throws {
  var vm = VirtualMachine(id: VMID(1), type: .swProtected)
  let file = try vm.addGuestMemfd(size: 0x20_0000)
  let other = GuestMemfd(id: GuestMemfdID(9), vm: VMID(2), size: 0x20_0000, flags: [])
  let plan = try vm.prepareSetUserMemoryRegion2(region(1, .guestMemfd, gpa: 0x1_0000_0000, size: 0x20_0000), variant: .reviewed)
  #expect(plan.gmemFD == FD(7))
  #expect(throws: Errno.EINVAL) { try vm.checkGuestMemfdBind(plan, file: .otherFile) }
  #expect(throws: Errno.EINVAL) { try vm.checkGuestMemfdBind(plan, file: .guestMemfd(other)) }
  let big = try vm.prepareSetUserMemoryRegion2(region(1, .guestMemfd, gpa: 0x1_0000_0000, size: 0x40_0000), variant: .reviewed)
  #expect(throws: Errno.EINVAL) { try vm.checkGuestMemfdBind(big, file: .guestMemfd(file)) }
  let bound = try vm.checkGuestMemfdBind(plan, file: .guestMemfd(file))
  #expect(bound == GuestMemfdSlotBinding(file: file.id, pgoff: 0, gmemOnly: false))
}
