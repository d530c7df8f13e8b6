import Foundation
import KernelCore
import Testing
@testable import Explorer
@testable import Platform
import Scenarios

/// What exploring one built-in race scenario under one variant must find.
struct Outcome: CustomTestStringConvertible, Sendable {
  var scenario: String
  var variant: Variant
  /// nil: the search completes and finds nothing.
  var kind: Finding.Kind?
  var invariant: String?
  /// The counterexample's length: atomic regions after the scenario's steps.
  var length: Int?

  static func safe(_ scenario: String, _ variant: Variant) -> Outcome {
    Outcome(scenario: scenario, variant: variant)
  }

  static func violates(_ scenario: String, _ variant: Variant, _ invariant: String, after length: Int) -> Outcome {
    Outcome(scenario: scenario, variant: variant, kind: .violation, invariant: invariant, length: length)
  }

  var testDescription: String { "\(scenario) (\(variant.rawValue))" }
}

func race(_ name: String) throws -> Scenario {
  guard let yaml = BuiltinScenarios.named(name) else { throw ExploreTestError.noScenario(name) }
  return try ScenarioParser.parse(yaml, file: "Examples/races/\(name).yaml")
}

enum ExploreTestError: Error { case noScenario(String) }

/// Exploring in a debug build costs about 5 ms a state: the large searches get a smaller
/// budget here than the command line's default, and the tests say so where they use it.
let raceNames = RaceScenarios.all.map(\.name)

@Suite struct BuiltInRaceOutcomes {
  /// Every built-in race scenario, under both variants. Under `reviewed` each search is
  /// complete and finds nothing; under `rfc-v1` each of the posted series' races is a
  /// violation with a shortest counterexample of the pinned length.
  static let outcomes: [Outcome] = [
    .safe("close-vs-fault", .reviewed),
    .violates("close-vs-fault", .rfcV1, "NoResetUnderLiveImport", after: 3),
    .safe("dmabuf-close-vs-flr", .reviewed),
    .violates("dmabuf-close-vs-flr", .rfcV1, "UsableDeviceBuffersRestored", after: 5),
    .safe("export-vs-reset", .reviewed),
    .safe("export-vs-reset", .rfcV1),
    .safe("fault-vs-decode-off", .reviewed),
    .safe("fault-vs-decode-off", .rfcV1),
    .safe("fault-vs-dmabuf-close", .reviewed),
    .safe("fault-vs-dmabuf-close", .rfcV1),
    .safe("fault-vs-flr", .reviewed),
    .violates("fault-vs-flr", .rfcV1, "UsableDeviceBuffersRestored", after: 6),
    .safe("memslot-delete-vs-fault", .reviewed),
    .safe("memslot-delete-vs-fault", .rfcV1),
    .safe("slot-delete-vs-accept", .reviewed),
    .violates("slot-delete-vs-accept", .rfcV1, "NoKVMBugOn", after: 10),
    .safe("slot-move-vs-revoke", .reviewed),
    .violates("slot-move-vs-revoke", .rfcV1, "NoDanglingBinding", after: 5),
    .safe("td-accept-vs-tdisp-stop", .reviewed),
    .violates("td-accept-vs-tdisp-stop", .rfcV1, "PrivateMMIOOnlyWhileTDIRuns", after: 1),
    .safe("td-map-vs-devif-remove", .reviewed),
    .violates("td-map-vs-devif-remove", .rfcV1, "PrivateMMIOOnlyWhileTDIRuns", after: 6),
    .safe("two-vcpus-same-page", .reviewed),
    .safe("two-vcpus-same-page", .rfcV1),
    .safe("three-vcpus-vs-revoke", .reviewed),
    .safe("three-vcpus-vs-revoke", .rfcV1),
    .safe("two-zaps-on-track", .reviewed),
    .violates("two-zaps-on-track", .rfcV1, "NoKVMBugOn", after: 9),
  ]

  @Test("every built-in race scenario has an outcome under each variant")
  func everyScenarioIsPinned() {
    for name in raceNames {
      for variant in Variant.allCases {
        #expect(Self.outcomes.contains { $0.scenario == name && $0.variant == variant }, "\(name) \(variant.rawValue)")
      }
    }
  }

  @Test(arguments: outcomes)
  func outcome(_ o: Outcome) throws {
    let report = try Explorer.explore(try race(o.scenario), variant: o.variant)
    #expect(report.finding?.kind == o.kind, "\(report.finding?.message ?? "nothing found")")
    #expect(report.finding?.invariant == o.invariant)
    #expect(report.finding?.steps.count == o.length)
    #expect(report.finding?.schedule.count == o.length)
    if o.kind == nil {
      #expect(report.complete)
      #expect(report.stoppedBy == nil)
      #expect(report.exitStatus == 0)
    } else {
      #expect(report.exitStatus == 1)
    }
    #expect(report.distinctStates <= report.states)
    #expect(report.variant == o.variant.rawValue)
  }
}

@Suite struct Counterexamples {
  /// close-vs-fault under rfc-v1, by hand: the violation is the reset of a function whose
  /// buffer is still live, which happens in the close thread's third region (`close`, then
  /// `down_write(memory_lock)`, then `close device`: disable and reset). No vCPU step is
  /// needed and none helps, so three steps of the closing thread are a shortest schedule.
  @Test func closeVsFaultIsThreeStepsOfTheClose() throws {
    let report = try Explorer.explore(try race("close-vs-fault"), variant: .rfcV1)
    let finding = try #require(report.finding)
    #expect(finding.schedule == ["ctx2", "ctx2", "ctx2"])
    #expect(finding.steps.map(\.region) == ["close", "down_write(memory_lock)", "close device"])
    #expect(finding.steps.map(\.index) == [1, 2, 3])
    #expect(finding.steps[2].events.contains { $0.message.contains("reset of vfio-dev1 while dmabuf1 still mapped by importers") })
  }

  /// The same minimality, mechanically and independently of the search: every schedule of
  /// one or two regions, replayed by `pmmio run`'s schedule runner, breaks nothing.
  @Test func noShorterScheduleBreaksAnything() throws {
    let scenario = try race("close-vs-fault")
    let actors = ["vcpu1", "ctx2"]
    var schedules: [[String]] = actors.map { [$0] }
    for a in actors { for b in actors { schedules.append([a, b]) } }
    for schedule in schedules {
      var s = scenario
      s.schedule = schedule.map { ScheduleEntry(actor: $0, position: SourcePosition(file: "t.yaml", line: 1, column: 1)) }
      let report = try ScenarioRunner.run(s, variant: .rfcV1)
      let scheduled = (report.schedule ?? []).filter(\.scheduled)
      #expect(scheduled.count == schedule.count)
      #expect(scheduled.allSatisfy { $0.invariantViolations.isEmpty }, "\(schedule)")
    }
  }

  static let findings: [(String, Variant)] = [
    ("close-vs-fault", .rfcV1), ("dmabuf-close-vs-flr", .rfcV1), ("fault-vs-flr", .rfcV1), ("slot-delete-vs-accept", .rfcV1), ("slot-move-vs-revoke", .rfcV1), ("td-accept-vs-tdisp-stop", .rfcV1),
    ("td-map-vs-devif-remove", .rfcV1), ("two-zaps-on-track", .rfcV1),
  ]

  /// `--out`: the counterexample written as a scenario replays, region by region, to the
  /// same violation at the same step, and nothing breaks before it.
  @Test(arguments: findings)
  func writtenCounterexampleReplays(_ name: String, _ variant: Variant) throws {
    let yaml = try #require(BuiltinScenarios.named(name))
    let report = try Explorer.explore(try race(name), variant: variant)
    let finding = try #require(report.finding)
    let written = ScheduleWriter.scenario(yaml, variant: report.variant, schedule: finding.schedule)
    let replay = try ScenarioRunner.run(try ScenarioParser.parse(written, file: "out.yaml"))
    #expect(replay.variant == variant.rawValue)
    let regions = try #require(replay.schedule)
    let scheduled = regions.filter(\.scheduled)
    #expect(scheduled.count == finding.steps.count)
    #expect(scheduled.map(\.thread) == finding.schedule)
    #expect(scheduled.map(\.region) == finding.steps.map(\.region))
    let first = regions.firstIndex { !$0.invariantViolations.isEmpty }
    #expect(first == finding.steps.count - 1, "the violation is at the counterexample's last step")
    if let first {
      #expect(regions[first].invariantViolations.map(\.name).contains(try #require(finding.invariant)))
    }
    #expect(replay.exitStatus == 1)
  }

  @Test func writingAScheduleReplacesAnEarlierOne() {
    let text = "name: x\nsteps: []\nschedule: [a, b]\n"
    let once = ScheduleWriter.scenario(text, variant: "rfc-v1", schedule: ["c"])
    #expect(once == "name: x\nvariant: rfc-v1\nsteps: []\n"
      + "# The counterexample pmmio explore found: each entry steps that thread one atomic region.\nschedule: [c]\n")
    let twice = ScheduleWriter.scenario(once, variant: "reviewed", schedule: ["d", "e"])
    #expect(twice.hasSuffix("schedule: [d, e]\n"))
    #expect(twice.contains("variant: reviewed\n"))
    #expect(twice.components(separatedBy: "schedule:").count == 2)
  }
}

@Suite struct AllFindings {
  /// rfc-v1's slot move leaves the old attachment on the freed slot (the first violation);
  /// searching on shows the revoke's move_notify reaching that slot, a harm the first one
  /// hides.
  @Test func theMoveNotifyOnTheFreedSlotShowsAsAnInterleaving() throws {
    let report = try Explorer.explore(try race("slot-move-vs-revoke"), variant: .rfcV1,
                                      options: ExploreOptions(allFindings: true))
    #expect(report.findings.map(\.invariant) == ["NoDanglingBinding", "NoMoveNotifyOnFreedSlot"])
    #expect(report.findings.map(\.steps.count) == [5, 8])
    #expect(report.findings[1].schedule == ["ctx1", "ctx1", "ctx1", "ctx1", "ctx1", "ctx2", "ctx2", "ctx2"])
    #expect(report.finding?.invariant == "NoDanglingBinding")
    #expect(report.complete)
    #expect(report.exitStatus == 1)
  }

  /// With or without `allFindings`, the first finding is the same (invariant and length), and
  /// a safe scenario stays safe.
  @Test(arguments: Reduction.all)
  func theFirstFindingIsTheSame(_ name: String, _ variant: Variant) throws {
    let scenario = try race(name)
    let first = try Explorer.explore(scenario, variant: variant)
    let all = try Explorer.explore(scenario, variant: variant, options: ExploreOptions(allFindings: true))
    #expect(all.finding?.kind == first.finding?.kind)
    #expect(all.finding?.steps.count == first.finding?.steps.count)
    #expect(all.findings.contains { $0.invariant == first.finding?.invariant && $0.steps.count == first.finding?.steps.count }
      || first.finding == nil)
    #expect(all.findings.count >= first.findings.count)
    #expect(all.complete)
    #expect(Set(all.findings.map { $0.invariant ?? $0.kind.rawValue }).count == all.findings.count, "one per invariant")
  }
}

@Suite struct Limits {
  @Test func maxStatesStopsTheSearch() throws {
    let report = try Explorer.explore(try race("two-vcpus-same-page"), variant: .reviewed,
                                      options: ExploreOptions(maxStates: 20))
    #expect(report.finding == nil)
    #expect(!report.complete)
    #expect(report.stoppedBy == "max-states")
    #expect(report.distinctStates >= 20)
    #expect(report.exitStatus == 3)
    #expect(ExploreText.render(report).contains("stopped by max-states after \(report.distinctStates) states: nothing found so far, not complete"))
  }

  @Test func maxDepthStopsTheSearch() throws {
    let report = try Explorer.explore(try race("two-vcpus-same-page"), variant: .reviewed,
                                      options: ExploreOptions(maxDepth: 2))
    #expect(!report.complete)
    #expect(report.stoppedBy == "max-depth")
    #expect(report.maxDepth == 2)
    #expect(report.exitStatus == 3)
  }

  /// A limit does not hide what was found before it.
  @Test func aFindingWithinTheLimitIsReported() throws {
    let report = try Explorer.explore(try race("td-accept-vs-tdisp-stop"), variant: .rfcV1,
                                      options: ExploreOptions(maxDepth: 1))
    #expect(report.finding?.invariant == "PrivateMMIOOnlyWhileTDIRuns")
    #expect(report.exitStatus == 1)
  }
}

@Suite struct PlantedFaults {
  /// A lock whose holder is gone (as if an error path forgot `mutex_unlock`): the memslot
  /// update waits for it for ever, and nothing else is left to run.
  @Test func aLeakedSlotsLockIsADeadlock() throws {
    let scenario = try ScenarioParser.parse("""
      name: leaked-slots-lock
      machine:
        vms: [ { name: vm0 } ]
      steps: []
      concurrent:
        - [ { op: kvm.set_user_memory_region2, vm: vm0, slot: 0, guest_phys_addr: 0, memory_size: 0x1000,
              userspace_addr: 0x7f0000000000 } ]
      """, file: "planted.yaml")
    var options = ExploreOptions()
    options.plant = { machine in
      let vm = machine.kvm.vms.keys.sorted { $0.rawValue < $1.rawValue }[0]
      _ = try? machine.kvm.vms[vm]!.lockSlots(ContextID(rawValue: 99))
    }
    let report = try Explorer.explore(scenario, variant: .reviewed, options: options)
    let finding = try #require(report.finding)
    #expect(finding.kind == .deadlock)
    #expect(finding.message.contains("kvm->slots_lock"), "\(finding.message)")
    #expect(finding.message.contains("ctx99"), "\(finding.message)")
    #expect(report.exitStatus == 1)
    #expect(ExploreText.render(report).contains("DEADLOCK: every thread with work left waits"))
  }

  /// rfc-v1's fault turns every TDH.MMIO.MAP error into RET_PF_RETRY: a TD whose DEVIF has
  /// no MMIO metadata table fails MAP with TDX_MMIOMT_NOT_PRESENT for ever, and the vCPU goes
  /// back into the guest, faults and retries without end.
  @Test func aMapThatAlwaysFailsIsALivelock() throws {
    let scenario = try ScenarioParser.parse("""
      name: map-fails-for-ever
      variant: rfc-v1
      machine:
        devices:
          - name: nic0
            bars:
              - { index: 0, size: 0x200000 }
            tdisp: true
        vms:
          - { name: td0, type: tdx }
      steps:
        - { op: kvm.create_vcpu, vm: td0, id: 1, expect: ok }
        - { op: vfio.open, device: nic0, as: dev, expect: ok }
        - { op: vfio.bind_iommufd, fd: dev, private: true, vm: td0, expect: ok }
        - { op: tdisp.lock, device: nic0, expect: ok }
        - { op: tdx.devif_create, vm: td0, device: nic0, expect: ok }
        - { op: tdisp.start, device: nic0, nonce: echo, expect: ok }
        - { op: vfio.dma_buf, fd: dev, region_index: 0, ranges: [[0, 0x200000]], as: buf, expect: ok }
        - { op: kvm.set_user_memory_region2, vm: td0, slot: 1, flags: [vfio_dmabuf],
            guest_phys_addr: 0x80000000, memory_size: 0x200000, fd: buf, expect: ok }
        - { op: kvm.set_memory_attributes, vm: td0, address: 0x80000000, size: 0x200000, expect: ok }
      concurrent:
        - [ { op: guest.accept_mmio, vm: td0, gpa: 0x80000000, vcpu: 1 } ]
      """, file: "planted.yaml")
    let report = try Explorer.explore(scenario)
    let finding = try #require(report.finding)
    #expect(finding.kind == .livelock)
    #expect(finding.cycleStart == 1)
    #expect(finding.schedule == ["vcpu1", "vcpu1", "vcpu1", "vcpu1", "vcpu1"])
    let cycle = finding.steps.dropFirst(try #require(finding.cycleStart))
    #expect(cycle.contains { $0.events.contains { $0.message.contains("TDX_MMIOMT_NOT_PRESENT") } })
    #expect(cycle.allSatisfy { $0.completed == nil }, "no thread finishes on the cycle")
    #expect(report.exitStatus == 1)
    #expect(ExploreText.render(report).contains("LIVELOCK: the threads can run for ever and never finish: 4 step(s)"))
  }
}

@Suite struct Reduction {
  /// Every built-in scenario under both variants, but for the two largest searches under
  /// `reviewed` (4,000 and 9,000 states, 20 s and 5 s each way in a debug build): the README's
  /// Races table gives their counts with and without the reduction, measured in release.
  static let all: [(String, Variant)] = raceNames.flatMap { name in Variant.allCases.map { (name, $0) } }
    .filter { !(["two-zaps-on-track", "three-vcpus-vs-revoke"].contains($0.0) && $0.1 == .reviewed) }

  /// Sleep sets prune transitions, never findings: the same finding (kind, invariant,
  /// shortest length) with and without, the same distinct states where the search is
  /// complete, and never more work.
  @Test(arguments: all)
  func sameFindingsWithFewerTransitions(_ name: String, _ variant: Variant) throws {
    let scenario = try race(name)
    let reduced = try Explorer.explore(scenario, variant: variant)
    let full = try Explorer.explore(scenario, variant: variant, options: ExploreOptions(reduction: false))
    #expect(reduced.finding?.kind == full.finding?.kind)
    #expect(reduced.finding?.invariant == full.finding?.invariant)
    #expect(reduced.finding?.steps.count == full.finding?.steps.count)
    #expect(reduced.complete == full.complete)
    if reduced.complete { #expect(reduced.distinctStates == full.distinctStates) }
    #expect(reduced.transitions <= full.transitions)
    #expect(reduced.states <= full.states)
    #expect(reduced.reduction && !full.reduction)
  }

  /// `--all` over every built-in scenario and both variants: with and without the reduction
  /// the same findings (one per invariant or kind, each as short), both searches complete,
  /// the same distinct states, and never more work with the reduction. Three searches are left
  /// out, each more than 5 s both ways in a debug build: three-vcpus-vs-revoke (both variants,
  /// 11 s and 24 s) and two-zaps-on-track under `reviewed` (9 s).
  static let allFindings: [(String, Variant)] = raceNames.flatMap { name in Variant.allCases.map { (name, $0) } }
    .filter { $0.0 != "three-vcpus-vs-revoke" && !($0.0 == "two-zaps-on-track" && $0.1 == .reviewed) }

  @Test(arguments: allFindings)
  func sameAllFindingsWithAndWithout(_ name: String, _ variant: Variant) throws {
    let scenario = try race(name)
    let reduced = try Explorer.explore(scenario, variant: variant, options: ExploreOptions(allFindings: true))
    let full = try Explorer.explore(scenario, variant: variant, options: ExploreOptions(reduction: false, allFindings: true))
    func found(_ report: ExploreReport) -> [String] {
      report.findings.map { "\($0.kind.rawValue) \($0.invariant ?? "-") in \($0.steps.count) steps" }.sorted()
    }
    #expect(found(reduced) == found(full))
    #expect(reduced.complete && full.complete)
    #expect(reduced.distinctStates == full.distinctStates)
    #expect(reduced.transitions <= full.transitions)
  }

  /// Where two threads have steps that touch disjoint state, the reduction does save work.
  @Test func itSavesWorkWhereStepsAreIndependent() throws {
    let scenario = try race("two-vcpus-same-page")
    let reduced = try Explorer.explore(scenario, variant: .reviewed)
    let full = try Explorer.explore(scenario, variant: .reviewed, options: ExploreOptions(reduction: false))
    #expect(reduced.states < full.states)
    #expect(reduced.transitions < full.transitions)
  }

  /// Each pair of steps the footprints call independent commutes: both orders reach one
  /// state. (A footprint that forgets a resource makes this fail as a model bug.)
  @Test(arguments: all)
  func independentStepsCommute(_ name: String, _ variant: Variant) throws {
    let report = try Explorer.explore(try race(name), variant: variant, options: ExploreOptions(verifyIndependence: true))
    #expect(report.finding?.kind != .modelBug, "\(report.finding?.message ?? "") after \(report.finding?.schedule ?? [])")
  }
}
