import Testing
import Foundation
import KernelCore
@testable import Scenarios

/// The scenarios shipped in Examples/: each passes under `reviewed` and, under `rfc-v1`,
/// fails exactly where the posted series is wrong.
@Suite struct ExampleScenarioTests {
  struct Case: CustomTestStringConvertible, Sendable {
    let file: String
    let variant: Variant
    let failedExpectations: Int
    let violated: [String]
    var exitStatus: Int32 { failedExpectations == 0 && violated.isEmpty ? 0 : 1 }
    var testDescription: String { "\(file) \(variant)" }
  }

  static let cases: [Case] = [
    Case(file: "shared-mmio.yaml", variant: .reviewed, failedExpectations: 0, violated: []),
    // The RFC accepts dma-buf slots only in VMs with private memory, so every access exits;
    // and its config-space FLR leaves the buffer revoked.
    Case(file: "shared-mmio.yaml", variant: .rfcV1, failedExpectations: 8, violated: ["UsableDeviceBuffersRestored"]),
    Case(file: "flr-while-run.yaml", variant: .reviewed, failedExpectations: 0, violated: []),
    Case(file: "flr-while-run.yaml", variant: .rfcV1, failedExpectations: 3,
         violated: ["UsableDeviceBuffersRestored", "RevokedImpliesNoSPTE", "NoKVMBugOn"]),
    Case(file: "slot-move.yaml", variant: .reviewed, failedExpectations: 0, violated: []),
    Case(file: "slot-move.yaml", variant: .rfcV1, failedExpectations: 1,
         violated: ["NoDanglingBinding", "NoMoveNotifyOnFreedSlot"]),
    // The built-in default scenario, as Examples/default.yaml.
    Case(file: "default.yaml", variant: .reviewed, failedExpectations: 0, violated: []),
    Case(file: "default.yaml", variant: .rfcV1, failedExpectations: 1, violated: ["PrivateMMIOOnlyWhileTDIRuns"]),
    Case(file: "design-sample.yaml", variant: .reviewed, failedExpectations: 0, violated: []),
    // reviewed: the MAP the module refuses for the host's own setup is a memory-fault exit, the
    // TD lives and maps once the VMM adds its DEVIF and table; rfc-v1 retries it for ever.
    Case(file: "map-refused-by-the-module.yaml", variant: .reviewed, failedExpectations: 0, violated: []),
    Case(file: "map-refused-by-the-module.yaml", variant: .rfcV1, failedExpectations: 1, violated: []),
    Case(file: "design-sample.yaml", variant: .rfcV1, failedExpectations: 0,
         violated: ["NoKVMBugOn"]),
  ]

  static let examples = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Examples")

  @Test(arguments: cases)
  func example(c: Case) throws {
    let url = Self.examples.appendingPathComponent(c.file)
    let scenario = try ScenarioParser.parse(String(contentsOf: url, encoding: .utf8), file: c.file)
    let report = try ScenarioRunner.run(scenario, variant: c.variant)
    #expect(report.counters.notAsExpected == c.failedExpectations)
    #expect(report.invariants.filter { $0.violations > 0 }.map(\.name) == c.violated)
    #expect(report.exitStatus == c.exitStatus)
  }
}

@Test("Examples/default.yaml is the built-in default scenario, byte for byte")
func defaultExampleIsTheBuiltIn() throws {
  let file = try String(contentsOf: ExampleScenarioTests.examples.appendingPathComponent("default.yaml"), encoding: .utf8)
  #expect(file == BuiltinScenarios.named("default"))
  #expect(file == BuiltinScenarios.defaultYAML + "\n")
}

@Test("Examples/races/*.yaml are the built-in race scenarios, byte for byte (Scripts/generate-race-scenarios)")
func raceFilesAreTheBuiltIns() throws {
  let dir = ExampleScenarioTests.examples.appendingPathComponent("races")
  let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }.sorted()
  #expect(files.map { String($0.dropLast(5)) } == RaceScenarios.all.map(\.name))
  for (file, race) in zip(files, RaceScenarios.all) {
    let text = try String(contentsOf: dir.appendingPathComponent(file), encoding: .utf8)
    #expect(text == race.yaml, "\(file) differs from the built-in: run Scripts/generate-race-scenarios")
    #expect(race.question.hasSuffix("?"))
    #expect(text.hasPrefix("# " + race.question.prefix(20)))
    let scenario = try ScenarioParser.parse(text, file: file)
    #expect(scenario.name == race.name)
    #expect(!scenario.concurrent.isEmpty, "\(file) has nothing to interleave")
    #expect(BuiltinScenarios.named(race.name) == text)
  }
}
