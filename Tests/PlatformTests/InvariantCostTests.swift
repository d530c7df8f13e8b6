import Testing
import KernelCore
import DmaBuf
import VFIO
import KVM
import TDX
@testable import Platform

/// What one check of every invariant costs, counted: each VM's leaves are walked once for the
/// four SPTE invariants (not once each), the TDX module's tables once for its four, and the
/// leaves visited are the leaves mapped, whatever their size.
@Suite struct InvariantCostTests {
  static let all: InvariantKinds = [.everyState, .quiescent, .history]

  /// A TD with `pages` of its 2 MiB BAR accepted at 4 KiB.
  @Test(arguments: [1, 8, 64])
  func oneWalkOfEachVMAndOnePassOverTheModule(pages: Int) throws {
    var bench = try Bench()
    _ = try bench.tdSlot()
    for page in 0..<pages {
      #expect(bench.machine.perform(.guestAcceptMMIO(vm: bench.td, gpa: GPA(gpaBase + UInt64(page) * pageSize), expectHPA: nil))
              == .success(.guestAccess("accepted")))
    }
    let pass = Machine.InvariantPass(bench.machine)
    let checks = bench.machine.checkInvariants(of: Self.all, pass: pass)
    #expect(checks.allSatisfy { $0.held })
    #expect(pass.leafWalks == bench.machine.kvm.vms.count)
    #expect(pass.leavesVisited == pages)
    #expect(pass.tdxPasses == 1)
  }

  /// A buffer mapped by one 2 MiB leaf is one visit, not 512.
  @Test func aHugeLeafIsOneVisit() throws {
    var bench = try Bench(.reviewed)
    _ = try bench.sharedSlot()
    #expect(bench.access(bench.plain, gpaBase) == .success(.guestAccess("mapped", value: 0)))
    let leaves = try #require(bench.vm(bench.plain)).mmu.leaves()
    #expect(leaves.map { $0.level } == [.level2M])
    let pass = Machine.InvariantPass(bench.machine)
    #expect(bench.machine.checkInvariants(of: Self.all, pass: pass).allSatisfy { $0.held })
    #expect(pass.leavesVisited == 1)
  }
}
