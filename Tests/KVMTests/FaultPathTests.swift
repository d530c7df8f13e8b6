import Testing
import KernelCore
import DmaBuf
@testable import KVM

let vcpu = ContextID(rawValue: 1)
let revoker = ContextID(rawValue: 2)
let slotGPA = GPA(0x8000_0000)
/// The exporter's PFN for buffer page `pgoff` (outside RAM: MMIO).
func exporterPFN(_ pgoff: PageIndex) -> PFN { PFN(0x400_0000 + pgoff.rawValue) }

/// Runs one fault through its three regions, answering the PFN request with `resolve` and a
/// secure map with `secure`; `between` runs once, after the PFN lookup and before `mmu_lock`.
/// - Returns: how the fault ended.
func runFault(_ vm: inout VirtualMachine, gpa: GPA = slotGPA, access: AccessKind = .read,
              resolve: (PFNRequest) -> Result<ResolvedPFN, Errno> = {
                if case .dmaBuf = $0.source { .success(ResolvedPFN(pfn: exporterPFN($0.pgoff))) }
                else { .success(ResolvedPFN(pfn: PFN($0.pgoff.rawValue))) } },
              secure: SecureCallResult = .success,
              between: ((inout VirtualMachine) throws -> Void)? = nil) throws -> FaultResult? {
  var fault = FaultPath(ctx: vcpu, gpa: gpa, access: access)
  var action = try fault.begin(&vm)
  if case .resolvePFN(let request) = action {
    if let done = try fault.pfnResolved(resolve(request), vm: &vm) {
      action = done
    } else {
      try between?(&vm)
      action = try fault.install(&vm)
      if case .secureMap = action { action = try fault.secureMapCompleted(secure, vm: &vm) }
    }
  }
  guard case .complete(let result) = action else { Issue.record("fault did not complete: \(action)"); return nil }
  #expect(!vm.mmuLock.isLocked && !vm.srcu.isReading(vcpu), "a finished fault holds nothing")
  return result
}

func defaultVMWithDmaBufSlot() throws -> VirtualMachine {
  var vm = VirtualMachine(id: VMID(1), type: .default)
  let plan = try vm.prepareSetUserMemoryRegion2(region(1, .vfioDmaBuf), variant: .reviewed)
  _ = try vm.commitSetUserMemoryRegion2(plan, binding: binding())
  return vm
}

@Test func happyFaultMapsUncachedMMIO() throws {
  var vm = try defaultVMWithDmaBufSlot()
  #expect(try runFault(&vm, gpa: slotGPA.advanced(by: 0x3000)) == .outcome(.mapped))
  let leaf = try #require(vm.mmu.lookup(slotGPA.advanced(by: 0x3000).gfn))
  #expect(leaf.spte.pfn == exporterPFN(PageIndex(3)) && leaf.spte.memoryType == .uncachable)
  #expect(KVMInvariants.noSPTEOutsideMemslot(vm).isEmpty && KVMInvariants.mmioSPTEsUncached(vm).isEmpty)
  #expect(KVMInvariants.sptePFNMatchesBinding(vm) { _ in [PhysRange(start: exporterPFN(PageIndex(0)).hpa, length: 0x20_0000)] }.isEmpty)
  // A fault on a page already mapped is spurious.
  #expect(try runFault(&vm, gpa: slotGPA.advanced(by: 0x3000)) == .outcome(.alreadyMapped))
}

@Test func exporterHugeOrderMapsA2MiBLeaf() throws {
  var vm = try defaultVMWithDmaBufSlot()
  #expect(try runFault(&vm, resolve: { _ in .success(ResolvedPFN(pfn: PFN(0x200000), order: 9)) }) == .outcome(.mapped))
  #expect(vm.mmu.lookup(slotGPA.gfn)?.level == .level2M)
}

@Test func noSlotExitsToUserSpace() throws {
  var vm = try defaultVMWithDmaBufSlot()
  #expect(try runFault(&vm, gpa: GPA(0x1000)) == .outcome(.exitMMIO))
}

/// A TD's GPA without the shared bit is a private access: with no slot there is nothing to
/// emulate (`kvm_handle_noslot_fault()`), KVM_RUN fails EFAULT with KVM_EXIT_MEMORY_FAULT
/// (flags PRIVATE, the GPA, a page), and nothing is mapped. Whether the attributes say shared
/// (the mismatch check comes first) or private, the exit is the same.
@Test func noSlotInATDIsAMemoryFault() throws {
  var vm = try tdWithSlot()
  let exit = MemoryFaultExit(isPrivate: true, gfn: GFN(1))
  #expect(try runFault(&vm, gpa: GPA(0x1000)) == .memoryFault(exit))
  vm.memoryAttributes.set(1 ..< 2, .private)
  #expect(try runFault(&vm, gpa: GPA(0x1000)) == .memoryFault(exit))
  #expect(exit.flags == 0x8 && exit.gpa == 0x1000 && exit.size == 0x1000 && exit.errno == .EFAULT)
  #expect(vm.mmu.lookup(GPA(0x1000).gfn) == nil)
}

@Test func writeToReadOnlySlotExitsToUserSpace() throws {
  var vm = VirtualMachine(id: VMID(1), type: .default)
  _ = try vm.commitSetUserMemoryRegion2(try vm.prepareSetUserMemoryRegion2(region(2, .readonly), variant: .reviewed))
  #expect(try runFault(&vm, access: .write) == .outcome(.exitMMIO))
  #expect(try runFault(&vm, access: .read) == .outcome(.mapped))
}

/// kvm_vfio_dmabuf_get_pfn() (RFC patch 11) turns any exporter error into -EIO; the reason
/// passes the exporter's own through.
@Test(arguments: [
  (Errno.ENODEV.because("vfio_pci_dma_buf_get_pfn", "priv->revoked"),
   "kvm_vfio_dmabuf_get_pfn: dma_buf_get_pfn_unlocked returned ENODEV: vfio_pci_dma_buf_get_pfn: priv->revoked"),
  (Errno.EINVAL, "kvm_vfio_dmabuf_get_pfn: dma_buf_get_pfn_unlocked returned EINVAL"),
])
func exporterErrorIsEIO(_ errno: Errno, reason: String) throws {
  var vm = try defaultVMWithDmaBufSlot()
  let result = try runFault(&vm, resolve: { _ in .failure(errno) })
  #expect(result == .failed(.EIO))
  guard case .failed(let eio)? = result else { return }
  #expect(eio.reason?.description == reason)
  #expect(vm.mmu.mappedPages == 0 && !vm.isDead)
}

/// kvm_mmu_faultin_pfn(): a slot being deleted or moved (KVM_MEMSLOT_INVALID) is RET_PF_RETRY.
@Test func anInvalidSlotIsRetried() throws {
  var vm = try defaultVMWithDmaBufSlot()
  vm.invalidateMemslot(SlotKey(id: 1))
  #expect(try runFault(&vm) == .retry)
  #expect(vm.mmu.mappedPages == 0)
}

@Test func faultRetriesWhenTheSequenceMoved() throws {
  var vm = try defaultVMWithDmaBufSlot()
  // A whole move_notify runs between the PFN lookup and mmu_lock.
  var waited: Wait?? = .none
  let result = try runFault(&vm, between: { (vm: inout VirtualMachine) throws in
    waited = .some(try vm.dmaBufMoveNotify(AttachmentID(10), ctx: revoker))
  })
  #expect(waited == .some(nil))
  #expect(result == .retry && vm.mmu.mappedPages == 0)
}

@Test func faultRetriesWhileAnInvalidationIsInProgress() throws {
  var vm = try defaultVMWithDmaBufSlot()
  var fault = FaultPath(ctx: vcpu, gpa: slotGPA, access: .read)
  guard case .resolvePFN(let req) = try fault.begin(&vm) else { Issue.record("no PFN request"); return }
  #expect(try fault.pfnResolved(.success(ResolvedPFN(pfn: exporterPFN(req.pgoff))), vm: &vm) == nil)
  // The revoker begins, zaps and drops mmu_lock, but the invalidation is not over (as
  // between a notifier's start and end).
  #expect(try vm.mmuLock.tryLockWrite(revoker))
  try vm.invalidateBegin(slotGPA.gfn ..< GFN(slotGPA.gfn.rawValue + 512), ctx: revoker)
  try vm.zapRange(slotGPA.gfn ..< GFN(slotGPA.gfn.rawValue + 512), ctx: revoker)
  let beforeBlock = fault
  #expect(try fault.install(&vm) == .blocked(.lock("kvm->mmu_lock", write: false, heldBy: revoker)))
  #expect(fault == beforeBlock)
  try vm.mmuLock.unlock(revoker)
  #expect(try fault.install(&vm) == .complete(.retry))   // in progress covers the GFN
  #expect(vm.mmu.mappedPages == 0 && !vm.srcu.isReading(vcpu))
}

/// `mmu_invalidate_seq` is relative: rebasing it and the fault's recorded value together
/// changes no decision.
@Test func rebasingTheSequenceKeepsTheDecision() throws {
  var vm = try defaultVMWithDmaBufSlot()
  for _ in 0 ..< 3 { _ = try vm.dmaBufMoveNotify(AttachmentID(10), ctx: revoker) }
  var fault = FaultPath(ctx: vcpu, gpa: slotGPA, access: .read)
  _ = try fault.begin(&vm)
  #expect(fault.recordedSeq == 3)
  vm.rebaseInvalidationSeq(by: 3)
  fault.rebase(by: 3)
  #expect(vm.invalidation.seq == 0 && fault.recordedSeq == 0)
  _ = try fault.pfnResolved(.success(ResolvedPFN(pfn: exporterPFN(PageIndex(0)))), vm: &vm)
  #expect(try fault.install(&vm) == .complete(.outcome(.mapped)))
}

/// A TD with a dma-buf slot at ``slotGPA`` whose GPAs the VMM made private.
func tdWithSlot() throws -> VirtualMachine {
  var vm = try tdWithDmaBufSlot(.reviewed)
  vm.memoryAttributes.set(slotGPA.gfn.rawValue ..< slotGPA.gfn.rawValue + 512, .private)
  return vm
}

@Test func tdFaultMapsThroughSecureMapAt4K() throws {
  var vm = try tdWithSlot()
  var fault = FaultPath(ctx: vcpu, gpa: slotGPA, access: .read)
  guard case .resolvePFN(let req) = try fault.begin(&vm) else { Issue.record("no PFN request"); return }
  #expect(try fault.pfnResolved(.success(ResolvedPFN(pfn: exporterPFN(req.pgoff), order: 9)), vm: &vm) == nil)
  #expect(try fault.install(&vm) == .secureMap(gpa: slotGPA, hpa: exporterPFN(req.pgoff).hpa, level: .level4K))
  #expect(fault.holdsMMULock)
  try vm.mmuLock.assertHeld(by: vcpu)
  #expect(try fault.secureMapCompleted(.success, vm: &vm) == .complete(.outcome(.mapped)))
  #expect(vm.mmu.lookup(slotGPA.gfn)?.level == .level4K && !vm.mmuLock.isLocked)
}

@Test func tdSecureMapBusyRetriesTheFault() throws {
  var vm = try tdWithSlot()
  #expect(try runFault(&vm, secure: .busy) == .retry)
  #expect(vm.mmu.mappedPages == 0 && !vm.isDead)
  #expect(try runFault(&vm) == .outcome(.mapped))
}

@Test func tdSecureMapErrorKillsTheVM() throws {
  var vm = try tdWithSlot()
  let bug = try runFault(&vm, secure: .failed(status: 0xC000_0B0D_0000_0000,
                                                reason: Refusal(function: "TDH.MMIO.MAP", check: "entry is MMIO_MAPPED, not FREE")))
  guard case .failed(let eio)? = bug else { Issue.record("\(String(describing: bug))"); return }
  #expect(eio == .EIO)
  #expect(eio.reason?.description == "tdx_sept_set_private_spte: KVM_BUG_ON: TDH.MMIO.MAP returned 0xC0000B0D00000000 "
                                      + "(TDH.MMIO.MAP: entry is MMIO_MAPPED, not FREE); the VM is dead")
  #expect(vm.isDead)
  let dead = try runFault(&vm, gpa: slotGPA.advanced(by: 0x1000))
  guard case .failed(let again)? = dead else { Issue.record("\(String(describing: dead))"); return }
  #expect(again.reason?.description == "vcpu_enter_guest: KVM_REQ_VM_DEAD: KVM_BUG_ON marked the VM dead")
  #expect(throws: Errno.EIO) { try vm.createVCPU(0) }
  #expect(throws: Errno.EIO) { try vm.prepareSetUserMemoryRegion2(region(2, gpa: 0), variant: .reviewed) }
}

/// Drives a TD zap to its end, answering each call with `answer(call)`; vCPUs in `inGuest`
/// answer the kick as soon as it is sent.
func runZap(_ vm: inout VirtualMachine, inGuest: [UInt32] = [0],
            answer: (SecureZapAction) -> SecureCallResult = { _ in .success }) throws -> [SecureZapAction] {
  guard case .success(var zap) = try vm.beginSecureZap(slotGPA.gfn ..< GFN(slotGPA.gfn.rawValue + 512), ctx: revoker) else {
    Issue.record("mmu_lock was not free"); return []
  }
  var calls: [SecureZapAction] = []
  while true {
    let action = try zap.step(&vm)
    calls.append(action)
    switch action {
    case .complete: return calls
    case .blocked:
      for v in inGuest { vm.answerKick(v) }
    case .kickVCPUs:
      vm.requestOutsideGuestMode(inGuest)
      try zap.completed(.success, vm: &vm)
    default:
      try zap.completed(answer(action), vm: &vm)
    }
  }
}

@Test func tdZapRunsBlockTrackKickWaitUnmap() throws {
  var vm = try tdWithSlot()
  _ = try runFault(&vm)
  _ = try runFault(&vm, gpa: slotGPA.advanced(by: 0x1000))
  var first = true
  let calls = try runZap(&vm) { _ in
    // the first block is busy once: retried, not fatal
    defer { first = false }
    return first ? .busy : .success
  }
  let g0 = slotGPA, g1 = slotGPA.advanced(by: 0x1000)
  #expect(calls == [.secureBlock(gpa: g0, level: .level4K), .secureBlock(gpa: g0, level: .level4K),
                    .secureBlock(gpa: g1, level: .level4K), .secureTrack, .kickVCPUs,
                    .blocked(.guestModeExit(vm: 1, vcpu: 0)),
                    .secureUnmap(gpa: g0, level: .level4K), .secureUnmap(gpa: g1, level: .level4K),
                    .complete(.zapped(entries: 2))])
  #expect(vm.mmu.mappedPages == 0 && !vm.mmuLock.isLocked && vm.invalidation.inProgress == 0)
  #expect(KVMInvariants.noSPTEForRevokedBinding(vm, revoked: [AttachmentID(10)]).isEmpty)
}

@Test func tdZapErrorKillsTheVM() throws {
  var vm = try tdWithSlot()
  _ = try runFault(&vm)
  let calls = try runZap(&vm) { _ in .failed(status: 1) }
  #expect(calls.last == .complete(.vmDead))
  #expect(vm.isDead && !vm.mmuLock.isLocked)
}

@Test func revokedBindingInvariantSeesLeftoverSPTEs() throws {
  var vm = try defaultVMWithDmaBufSlot()
  _ = try runFault(&vm)
  #expect(KVMInvariants.noSPTEForRevokedBinding(vm, revoked: [AttachmentID(10)]).count == 1)
  #expect(try vm.dmaBufMoveNotify(AttachmentID(10), ctx: revoker) == nil)
  #expect(KVMInvariants.noSPTEForRevokedBinding(vm, revoked: [AttachmentID(10)]).isEmpty)
}

/// A TD's shared root is KVM's mapping too: an SPTE there outside every memslot is reported
/// as one in the private (mirror) root is.
@Test func invariantsSeeATDsSharedRoot() throws {
  var vm = VirtualMachine(id: VMID(1), type: .tdx)
  #expect(KVMInvariants.noSPTEOutsideMemslot(vm).isEmpty)
  let stray = SPTE(pfn: PFN(0x20_0000), level: .level4K, writable: true, executable: false, mmio: true)
  _ = try vm.sharedMMU.map(GFN(0x9_0000), level: .level4K, spte: stray)
  #expect(KVMInvariants.noSPTEOutsideMemslot(vm).count == 1)
  #expect(vm.mmu.leaves().isEmpty, "nothing in the mirror: the report comes from the shared root")
}

/// The zap finds the entry it just blocked among the ascending indices by bisection.
@Test(arguments: [([Int](), 3, nil as Int?), ([3], 3, 0), ([1, 3, 5, 9], 1, 0), ([1, 3, 5, 9], 9, 3), ([1, 3, 5, 9], 5, 2),
                  ([1, 3, 5, 9], 4, nil), ([1, 3, 5, 9], 10, nil), ([1, 3, 5, 9], 0, nil)])
func zapFindsTheBlockedEntry(sorted: [Int], value: Int, index: Int?) {
  #expect(ZapPath.position(of: value, in: sorted) == index)
}
