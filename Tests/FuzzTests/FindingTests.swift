import Foundation
import Testing
import KernelCore
import DmaBuf
import Platform
import Scenarios
@testable import Fuzz

/// A wrong answer planted in the model (a test-only exporter's errno, a memslot ioctl that
/// changes the machine and then says it failed) is found, shrunk to its essential operations
/// on the smallest machine, and the written scenario reproduces it.
@Suite struct PlantedFailureTests {
  struct Plant: Sendable, CustomTestStringConvertible {
    let name: String
    let perform: FuzzPerform
    let kind: FuzzFailure.Kind
    /// The operations the shrunk program keeps, in order.
    let essential: [String]
    let devices: Int
    let vms: Int
    var testDescription: String { name }
  }

  static let plants: [Plant] = [
    // A test-only exporter whose attach answers ENOSPC where it would succeed: dma_buf_attach
    // cannot return it, so the errno is outside dmabuf.attach's table.
    Plant(name: "exporter attach answers ENOSPC", perform: FuzzPlants.all["attach-enospc"]!, kind: .errnoNotInTable, essential: ["vfio.open", "vfio.bind_iommufd", "vfio.dma_buf", "dmabuf.attach"], devices: 1, vms: 0),
    // A memslot ioctl that does its work and then answers EEXIST (in its table): the machine
    // changed although the ioctl failed.
    Plant(name: "memslot create answers EEXIST after creating", perform: { machine, op in
      let result = machine.perform(op)
      if case .kvmSetUserMemoryRegion2 = op, case .success = result { return .failure(.errno(.EEXIST)) }
      return result
    }, kind: .changedOnFailure, essential: ["kvm.set_user_memory_region2"], devices: 0, vms: 1),
  ]

  @Test(arguments: plants)
  func foundAndShrunk(plant: Plant) throws {
    let report = Fuzzer.run(FuzzOptions(ops: 50_000, seed: 3, perform: plant.perform))
    let finding = try #require(report.finding, "the planted failure was not found")
    #expect(finding.failure.kind == plant.kind)
    #expect(finding.failure.op == plant.essential.last)
    let program = try #require(finding.program)
    #expect(program.steps.map(\.op) == plant.essential, "\(finding.scenario)")
    #expect(finding.steps < finding.originalSteps)
    // The smallest machine: only what the essential ops name, BARs of a page, a typical host.
    #expect(program.machine.devices.count == plant.devices)
    #expect(program.machine.devices.allSatisfy { $0.bars.map(\.size) == [0x1000] && !$0.tdisp })
    #expect(program.machine.vms.count == plant.vms)
    #expect(program.machine.host == .typical)

    // Replayed from its text with the plant, the written scenario fails the same way; the model
    // alone passes it.
    let scenario = try ScenarioParser.parse(finding.scenario, file: "planted.yaml")
    #expect(Fuzzer.replay(scenario, variant: .reviewed, perform: plant.perform)?.signature == finding.failure.signature)
    #expect(Fuzzer.replay(scenario, variant: .reviewed) == nil)
    #expect(finding.scenario.contains("expect:"))
  }

  /// One seed is one run: the same operations, the same finding.
  @Test func aSeedRunsTheSameOperations() {
    let plant = Self.plants[0]
    let a = Fuzzer.run(FuzzOptions(ops: 20_000, seed: 11, perform: plant.perform))
    let b = Fuzzer.run(FuzzOptions(ops: 20_000, seed: 11, perform: plant.perform))
    #expect(a.ops == b.ops && a.answers == b.answers && a.finding?.scenario == b.finding?.scenario)
    let c = Fuzzer.run(FuzzOptions(ops: 20_000, seed: 12, perform: plant.perform))
    #expect(a.answers != c.answers)
  }
}

/// The model's own failures: a bug of the posted RFC found in rfc-v1 and shrunk, replayed by
/// the scenario runner (what `pmmio run` does) to the same violation; an interleaving finding
/// shrunk to paths and a schedule that replay to the same model bug.
@Suite struct ModelFindingTests {
  @Test func rfcV1ConfigSpaceFLRIsFoundAndReplays() throws {
    let report = Fuzzer.run(FuzzOptions(ops: 20_000, seed: 1, variant: .rfcV1))
    let finding = try #require(report.finding)
    #expect(finding.failure.kind == .invariant)
    let invariant = try #require(finding.failure.invariant)
    #expect(FuzzOptions.postedBugs.contains(invariant))
    #expect(finding.steps <= 6, "\(finding.scenario)")
    let scenario = try ScenarioParser.parse(finding.scenario, file: "rfc-v1.yaml")
    let run = try ScenarioRunner.run(scenario)
    #expect(run.exitStatus == 1)
    #expect(run.invariants.contains { $0.name == invariant && $0.violations > 0 })
    // The failing step's expect: states what it returned, so the step itself is as expected.
    #expect(run.counters.notAsExpected == 0)
    #expect(Fuzzer.replay(scenario, variant: .rfcV1)?.signature == finding.failure.signature)
  }

  /// An interleaved run judged as the README's command judges it: every invariant, lock rule,
  /// livelock and deadlock (only the known findings in code the model does not own are
  /// counted). Seed 1 once found the model's lock mistake when a dma-buf's last close raced a
  /// config-space FLR (Examples/races/dmabuf-close-vs-flr.yaml), then a dma-buf's close racing
  /// a revoke (the invariants counted a buffer being released as live), the VM destroyed
  /// under a memslot update or a vCPU's fault, and a concurrent command-register write from
  /// outside VFIO judged as a failure. The same run is clean now, and it does run concurrent
  /// regions and meet the outside writes it passes over.
  @Test func anInterleavedRunIsCleanOnEveryInvariant() throws {
    let report = Fuzzer.run(FuzzOptions(ops: 100_000, seed: 1, interleave: true))
    #expect(report.finding == nil, "\(report.finding?.scenario ?? "")")
    #expect(report.exitStatus == 0)
    #expect(report.regions > 1_000)
    #expect(report.offTheRails.keys.contains { $0.hasPrefix("pci.write_command from outside VFIO broke") }, "\(report.offTheRails)")
  }

  /// The interleaved findings, shrunk, replay clean with their schedules: the VM fd closed
  /// during a memslot update (the update holds the VM), a dma-buf's last close against a
  /// D3hot revoke (the released buffer is no live one), and a command-register write from
  /// outside VFIO that leaves a buffer revoked (not judged further, as in a sequence).
  static let interleavedFindings: [(String, String)] = [
    ("destroy during a memslot update", """
      name: destroy-vs-memslot
      machine:
        vms:
          - { name: vm1, type: default }
      steps: []
      concurrent:
        - [ { op: kvm.set_user_memory_region2, vm: vm1, slot: 0, flags: [vfio_dmabuf], guest_phys_addr: 0, memory_size: 0x1000 } ]
        - [ { op: kvm.destroy_vm, vm: vm1 } ]
      schedule: [ctx1, ctx2, ctx2]
      """),
    ("dma-buf close during D3hot", """
      name: dmabuf-close-vs-d3hot
      machine:
        devices:
          - { name: dev0, bars: [ { index: 0, size: 0x1000 } ] }
      steps:
        - { op: vfio.open, device: dev0, as: h1 }
        - { op: vfio.bind_iommufd, fd: h1 }
        - { op: vfio.dma_buf, fd: h1, ranges: [[0x0, 0x1000]], as: h11 }
      concurrent:
        - [ { op: dmabuf.close, fd: h11 } ]
        - [ { op: vfio.set_power, fd: h1, state: D3hot } ]
      schedule: [ctx2]
      """),
    ("command write from outside VFIO", """
      name: outside-command-write
      machine:
        devices:
          - { name: dev0, bars: [ { index: 4, size: 0x1000 } ] }
        vms:
          - { name: vm0, type: default }
      steps:
        - { op: vfio.open, device: dev0, as: h1 }
        - { op: vfio.bind_iommufd, fd: h1 }
        - { op: vfio.dma_buf, fd: h1, region_index: 4, ranges: [[0x0, 0x1000]], as: h6 }
        - { op: vfio.set_memory_decode, fd: h1, enable: false }
      concurrent:
        - [ { op: guest.read, vm: vm0, gpa: 0 } ]
        - [ { op: guest.write, vm: vm0, gpa: 0, vcpu: 1 }, { op: pci.write_command, device: dev0, memory: true } ]
      schedule: [vcpu0, ctx2, ctx2]
      """),
  ]

  @Test(arguments: interleavedFindings)
  func anInterleavedFindingReplaysClean(_ name: String, _ yaml: String) throws {
    let scenario = try ScenarioParser.parse(yaml, file: "\(name).yaml")
    let failure = Fuzzer.replay(scenario, variant: .reviewed)
    #expect(failure == nil, "\(failure.map { "\($0.kind) \($0.message)" } ?? "")")
  }

  /// The posted close order seen between the close's regions: after the disable and reset,
  /// before vfio_pci_dma_buf_cleanup() revokes, the buffer is live with decode off. A posted
  /// bug (`--ignore posted` passes it over); reviewed revokes first.
  @Test(arguments: Variant.allCases)
  func thePostedCloseOrderBreaksDecodeOffBetweenItsRegions(_ variant: Variant) throws {
    let scenario = try ScenarioParser.parse("""
      name: close-alone
      machine:
        devices:
          - { name: dev0, bars: [ { index: 0, size: 0x1000 } ] }
      steps:
        - { op: vfio.open, device: dev0, as: dev }
        - { op: vfio.bind_iommufd, fd: dev }
        - { op: vfio.dma_buf, fd: dev, ranges: [[0x0, 0x1000]], as: buf }
      concurrent:
        - [ { op: vfio.close, fd: dev } ]
      schedule: [ctx1, ctx1, ctx1]
      """, file: "close-alone.yaml")
    let failure = Fuzzer.replay(scenario, variant: variant)
    switch variant {
    case .reviewed:
      #expect(failure == nil, "\(failure?.message ?? "")")
    case .rfcV1:
      #expect(failure?.invariant == "DecodeOffImpliesRevoked")
      #expect(FuzzOptions.postedBugs.contains("DecodeOffImpliesRevoked"))
    }
  }

  /// A failure reached through a schedule replays with it: the fuzzer's checks run the
  /// `concurrent:` paths region by region in the `schedule:` order (rfc-v1's config-space FLR,
  /// its buffers left revoked, after the FLR's five regions).
  @Test func aScheduledFailureReplays() throws {
    let races = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent("Examples/races")
    var text = try String(contentsOf: races.appendingPathComponent("dmabuf-close-vs-flr.yaml"), encoding: .utf8)
    text += "variant: rfc-v1\nschedule: [ctx2, ctx1, ctx1, ctx1, ctx1, ctx1]\n"
    let scenario = try ScenarioParser.parse(text, file: "scheduled.yaml")
    let failure = try #require(Fuzzer.replay(scenario, variant: .rfcV1))
    #expect(failure.kind == .invariant)
    #expect(failure.invariant == "UsableDeviceBuffersRestored")
    let run = try ScenarioRunner.run(scenario)
    #expect(run.exitStatus == 1)
    #expect(run.schedule?.filter(\.scheduled).map(\.thread) == ["ctx2", "ctx1", "ctx1", "ctx1", "ctx1", "ctx1"])
  }
}

/// `Examples/fuzz-findings/`: the model bugs the fuzzer found outside its own code, each as its
/// shrunk scenario, documenting today's behaviour until the owner fixes it.
@Suite struct KnownFindingTests {
  static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("Examples/fuzz-findings")

  @Test(arguments: KnownFinding.all.map(\.name))
  func reproduces(name: String) throws {
    let text = try String(contentsOf: Self.directory.appendingPathComponent("\(name).yaml"), encoding: .utf8)
    let scenario = try ScenarioParser.parse(text, file: "\(name).yaml")
    let failure = try #require(Fuzzer.replay(scenario, variant: .reviewed), "\(name) no longer fails: fixed? remove it from KnownFinding.all")
    // Outside --strict the fuzzer counts it as this known finding and goes on.
    #expect(FuzzExecution.firstFailure(Fuzzer.program(of: scenario), variant: .reviewed, perform: { $0.perform($1) }) == nil)
    let run = try ScenarioRunner.run(scenario)
    #expect(run.exitStatus == 1, "pmmio run \(name).yaml")
    #expect(run.counters.notAsExpected == 0, "expect: documents today's answers")
    #expect([FuzzFailure.Kind.invariant, .modelBug].contains(failure.kind))
  }

  @Test func everyFindingHasItsScenario() throws {
    let files = try FileManager.default.contentsOfDirectory(atPath: Self.directory.path).filter { $0.hasSuffix(".yaml") }
    #expect(Set(files) == Set((KnownFinding.all.map(\.name) + KnownFinding.traps.map(\.name)).map { "\($0).yaml" }))
  }

  @Test func theReadmeListsEachFinding() throws {
    let readme = try String(contentsOf: Self.directory.deletingLastPathComponent().deletingLastPathComponent()
      .appendingPathComponent("README.md"), encoding: .utf8)
    for name in KnownFinding.all.map(\.name) + KnownFinding.traps.map(\.name) {
      #expect(readme.contains("| `\(name)` |"), "README's fuzzing section does not list \(name)")
    }
  }

  /// Once a trap (a raw TDH.MNG.CREATE asking for 0xffffffff vCPUs made the model allocate a
  /// state per vCPU, 32 GiB), now refused as TDH.MNG.INIT refuses a max_vcpus past the module's.
  @Test(arguments: [(UInt64(0xffff_ffff), "{ tdx: TDX_OPERAND_INVALID }"), (0x1_0000, "{ tdx: TDX_OPERAND_INVALID }"),
                    (0xffff, "ok"), (0, "{ tdx: TDX_OPERAND_INVALID }")])
  func rawMngCreateBoundsItsVCPUs(count: UInt64, expect: String) throws {
    let text = "name: mng-create-vcpus\nsteps:\n  - { op: tdx.seamcall, leaf: 9, args: [\(count)], expect: \(expect) }\n"
    let run = try ScenarioRunner.run(try ScenarioParser.parse(text, file: "mng-create-vcpus.yaml"))
    #expect(run.counters.notAsExpected == 0, "\(run.steps.first?.result.text ?? "")")
  }
}

/// A fixed seed of 100,000 operations per variant runs clean: every invariant, every answer in
/// its table, no failed op that changed the machine. rfc-v1 passes over the posted series' own
/// bugs (README's rfc-v1 table), which it finds within a few hundred operations.
@Suite struct CleanRunTests {
  @Test(arguments: Variant.allCases)
  func hundredThousandOps(variant: Variant) {
    let clock = ContinuousClock()
    let started = clock.now
    let report = Fuzzer.run(FuzzOptions(ops: 100_000, seed: 2026, variant: variant,
                                        ignoring: variant == .rfcV1 ? ["posted"] : []))
    let elapsed = clock.now - started
    #expect(report.finding == nil, "\(report.finding?.scenario ?? "")")
    #expect(report.ops == 100_000)
    // Every op of the scenario format was drawn, and each both succeeded and failed somewhere.
    for spec in OpSpec.all { #expect(report.opCounts[spec.name, default: 0] > 100, "\(spec.name) drawn too rarely") }
    #expect(report.succeeded > 25_000 && report.failed > 25_000)
    print("fuzz \(variant): 100000 ops in \(elapsed), \(report.sequences) sequences, known \(report.known), off the rails \(report.offTheRails)")
  }
}
