import Testing
import KernelCore
import DmaBuf
@testable import KVM

let vcpu = ContextID(rawValue: 1)
let revoker = ContextID(rawValue: 2)
let slotGPA = GPA(0x8000_0000)
/// The exporter's PFN for buffer page `pgoff` (outside RAM: MMIO).
func exporterPFN(_ pgoff: PageIndex) -> PFN { PFN(0x2_0000_0 + pgoff.rawValue) }

/// Runs a fault to completion, answering PFN requests with `resolve` and secure maps with
/// `secure` (called in order); `between` runs once, right after the PFN is resolved.
func runFault(_ vm: inout VirtualMachine, gpa: GPA = slotGPA, access: AccessKind = .read,
              resolve: (PFNRequest) -> Result<ResolvedPFN, Errno> = {
                if case .dmaBuf = $0.source { .success(ResolvedPFN(pfn: exporterPFN($0.pgoff))) }
                else { .success(ResolvedPFN(pfn: PFN($0.pgoff.rawValue))) } },
              secure: [SecureCallResult] = [],
              between: ((inout VirtualMachine) throws -> Void)? = nil) throws -> FaultPath {
  var fault = FaultPath(ctx: vcpu, gpa: gpa, access: access)
  var secureAnswers = secure[...]
  var hook = between
  var action = try fault.step(&vm)
  for _ in 0 ..< 100 {
    switch action {
    case .resolvePFN(let request):
      action = fault.pfnResolved(resolve(request))
      if let h = hook { try h(&vm); hook = nil }
    case .secureMap:
      let answer = secureAnswers.popFirst() ?? .success
      action = try fault.secureMapCompleted(answer, vm: &vm)
    case .proceed, .blocked: action = try fault.step(&vm)
    case .complete: return fault
    }
  }
  Issue.record("fault did not complete")
  return fault
}

func defaultVMWithDmaBufSlot() throws -> VirtualMachine {
  var vm = VirtualMachine(id: VMID(1), type: .default)
  let plan = try vm.prepareSetUserMemoryRegion2(region(1, .vfioDmaBuf), variant: .reviewed)
  _ = try vm.commitSetUserMemoryRegion2(plan, binding: binding())
  return vm
}

@Test func happyFaultMapsUncachedMMIO() throws {
  var vm = try defaultVMWithDmaBufSlot()
  let fault = try runFault(&vm, gpa: slotGPA.advanced(by: 0x3000))
  #expect(fault.outcome == .mapped && fault.retries == 0)
  let leaf = try #require(vm.mmu.lookup(slotGPA.advanced(by: 0x3000).gfn))
  #expect(leaf.spte.pfn == exporterPFN(PageIndex(3)) && leaf.spte.memoryType == .uncachable)
  #expect(!vm.mmuLock.isLocked)
  #expect(KVMInvariants.noSPTEOutsideMemslot(vm).isEmpty && KVMInvariants.mmioSPTEsUncached(vm).isEmpty)
  #expect(KVMInvariants.sptePFNMatchesBinding(vm) { _, p in exporterPFN(p) }.isEmpty)
  // A second access needs no fault.
  #expect(try runFault(&vm, gpa: slotGPA.advanced(by: 0x3000)).outcome == .alreadyMapped)
}

@Test func exporterHugeOrderMapsA2MiBLeaf() throws {
  var vm = try defaultVMWithDmaBufSlot()
  let fault = try runFault(&vm, resolve: { _ in .success(ResolvedPFN(pfn: PFN(0x200000), order: 9)) })
  #expect(fault.outcome == .mapped)
  #expect(vm.mmu.lookup(slotGPA.gfn)?.level == .level2M)
}

@Test func noSlotExitsToUserSpace() throws {
  var vm = try defaultVMWithDmaBufSlot()
  #expect(try runFault(&vm, gpa: GPA(0x1000)).outcome == .exitMMIO)
}

/// A TD's GPA is private: with no slot there is nothing to emulate, KVM_RUN fails EFAULT
/// (KVM_EXIT_MEMORY_FAULT), and nothing is mapped.
@Test func noSlotInATDIsAMemoryFault() throws {
  var vm = try tdWithSlot()
  #expect(try runFault(&vm, gpa: GPA(0x1000)).outcome == .efault)
  #expect(vm.mmu.lookup(GPA(0x1000).gfn) == nil)
}

@Test func writeToReadOnlySlotExitsToUserSpace() throws {
  var vm = VirtualMachine(id: VMID(1), type: .default)
  _ = try vm.commitSetUserMemoryRegion2(try vm.prepareSetUserMemoryRegion2(region(2, .readonly), variant: .reviewed))
  #expect(try runFault(&vm, access: .write).outcome == .exitMMIO)
  #expect(try runFault(&vm, access: .read).outcome == .mapped)
}

@Test(arguments: [Errno.ENODEV, .EINVAL])
func exporterErrorIsEIO(_ errno: Errno) throws {
  var vm = try defaultVMWithDmaBufSlot()
  let fault = try runFault(&vm, resolve: { _ in .failure(errno) })
  #expect(fault.outcome == .eio)
  #expect(vm.mmu.mappedPages == 0 && !vm.isDead)
}

@Test func faultRetriesWhenTheSequenceMoved() throws {
  var vm = try defaultVMWithDmaBufSlot()
  // A whole move_notify runs between the PFN lookup and mmu_lock.
  var notified: MoveNotifyResult?
  let fault = try runFault(&vm, between: { (vm: inout VirtualMachine) throws in
    notified = try vm.dmaBufMoveNotify(AttachmentID(10), ctx: revoker)
  })
  #expect(notified == .done(staleSlot: false))
  #expect(fault.outcome == .mapped && fault.retries == 1)
}

@Test func faultRetriesWhileAnInvalidationIsInProgress() throws {
  var vm = try defaultVMWithDmaBufSlot()
  var fault = FaultPath(ctx: vcpu, gpa: slotGPA, access: .read)
  guard case .resolvePFN(let req) = try fault.step(&vm) else { Issue.record("no PFN request"); return }
  _ = fault.pfnResolved(.success(ResolvedPFN(pfn: exporterPFN(req.pgoff))))
  // The revoker begins, zaps and drops mmu_lock, but the invalidation is not over (as
  // between a notifier's start and end).
  #expect(try vm.mmuLock.tryLockWrite(revoker))
  try vm.invalidateBegin(slotGPA.gfn ..< GFN(slotGPA.gfn.rawValue + 512), ctx: revoker)
  try vm.zapRange(slotGPA.gfn ..< GFN(slotGPA.gfn.rawValue + 512), ctx: revoker)
  #expect(try fault.step(&vm) == .blocked)          // mmu_lock is write-held
  try vm.mmuLock.unlock(revoker)
  #expect(try fault.step(&vm) == .proceed)          // in progress covers the GFN: retry
  #expect(fault.retries == 1 && vm.mmu.mappedPages == 0)
}

func tdWithSlot() throws -> VirtualMachine { try tdWithDmaBufSlot(.reviewed) }

@Test func tdFaultMapsThroughSecureMapAt4K() throws {
  var vm = try tdWithSlot()
  var fault = FaultPath(ctx: vcpu, gpa: slotGPA, access: .read)
  guard case .resolvePFN(let req) = try fault.step(&vm) else { Issue.record("no PFN request"); return }
  #expect(fault.pfnResolved(.success(ResolvedPFN(pfn: exporterPFN(req.pgoff), order: 9))) == .proceed)
  #expect(try fault.step(&vm) == .secureMap(gpa: slotGPA, hpa: exporterPFN(req.pgoff).hpa, level: .level4K))
  #expect(fault.holdsMMULock)
  try vm.mmuLock.assertHeld(by: vcpu)
  #expect(try fault.secureMapCompleted(.success, vm: &vm) == .complete(.mapped))
  #expect(vm.mmu.lookup(slotGPA.gfn)?.level == .level4K && !vm.mmuLock.isLocked)
}

@Test func tdSecureMapBusyRetriesTheFault() throws {
  var vm = try tdWithSlot()
  let fault = try runFault(&vm, secure: [.busy, .busy, .success])
  #expect(fault.outcome == .mapped && fault.retries == 2 && !vm.isDead)
}

@Test func tdSecureMapErrorKillsTheVM() throws {
  var vm = try tdWithSlot()
  let fault = try runFault(&vm, secure: [.failed(status: 0xC000_0B0D_0000_0000)])
  #expect(fault.outcome == .eio && vm.isDead && !vm.mmuLock.isLocked)
  #expect(try runFault(&vm, gpa: slotGPA.advanced(by: 0x1000)).outcome == .eio)
  #expect(throws: Errno.EIO) { try vm.createVCPU(0) }
  #expect(throws: Errno.EIO) { try vm.prepareSetUserMemoryRegion2(region(2, gpa: 0), variant: .reviewed) }
}

@Test func tdMoveNotifyRunsBlockTrackKickUnmap() throws {
  var vm = try tdWithSlot()
  _ = try runFault(&vm)
  _ = try runFault(&vm, gpa: slotGPA.advanced(by: 0x1000))
  guard case .secureZap(var zap) = try vm.dmaBufMoveNotify(AttachmentID(10), ctx: revoker) else {
    Issue.record("expected a secure zap"); return
  }
  var calls: [SecureZapAction] = []
  var first = true
  while true {
    let action = try zap.step(&vm)
    calls.append(action)
    if case .complete = action { break }
    // the first block is busy once: retried, not fatal
    try zap.completed(first ? .busy : .success, vm: &vm)
    first = false
  }
  let g0 = slotGPA, g1 = slotGPA.advanced(by: 0x1000)
  #expect(calls == [.secureBlock(gpa: g0, level: .level4K), .secureBlock(gpa: g0, level: .level4K),
                    .secureBlock(gpa: g1, level: .level4K), .secureTrack, .kickVCPUs,
                    .secureUnmap(gpa: g0, level: .level4K), .secureUnmap(gpa: g1, level: .level4K),
                    .complete(.zapped(entries: 2))])
  #expect(vm.mmu.mappedPages == 0 && !vm.mmuLock.isLocked && vm.invalidation.inProgress == 0)
  #expect(KVMInvariants.noSPTEForRevokedBinding(vm, revoked: [AttachmentID(10)]).isEmpty)
}

@Test func tdZapErrorKillsTheVM() throws {
  var vm = try tdWithSlot()
  _ = try runFault(&vm)
  guard case .secureZap(var zap) = try vm.dmaBufMoveNotify(AttachmentID(10), ctx: revoker) else {
    Issue.record("expected a secure zap"); return
  }
  _ = try zap.step(&vm)
  try zap.completed(.failed(status: 1), vm: &vm)
  #expect(try zap.step(&vm) == .complete(.vmDead))
  #expect(vm.isDead && !vm.mmuLock.isLocked)
}

@Test func revokedBindingInvariantSeesLeftoverSPTEs() throws {
  var vm = try defaultVMWithDmaBufSlot()
  _ = try runFault(&vm)
  #expect(KVMInvariants.noSPTEForRevokedBinding(vm, revoked: [AttachmentID(10)]).count == 1)
  _ = try vm.dmaBufMoveNotify(AttachmentID(10), ctx: revoker)
  #expect(KVMInvariants.noSPTEForRevokedBinding(vm, revoked: [AttachmentID(10)]).isEmpty)
}
