import Foundation
import Testing
import KernelCore
import Platform
import Scenarios
@testable import Fuzz

/// Every errno and TDX status the model answers says which function refused the call and
/// which check did it: the fuzzer's generator draws valid and wrong arguments for every op
/// (closed, wrong-kind and made-up fds, misaligned sizes, every flag bit, raw SEAMCALLs with
/// bad operands), and no failure it provokes may come back without a reason.
@Suite struct ReasonCoverageTests {
  /// Failures without a reason, and the op kinds that failed at all, over `seeds` sequences.
  static func sweep(_ variant: Variant, seeds: ClosedRange<UInt64>, steps: Int) throws -> (missing: [String], failedOps: Set<String>, failures: Int) {
    var missing: [String] = []
    var failedOps: Set<String> = []
    var failures = 0
    for seed in seeds {
      var rng = FuzzRandom(seed: seed)
      let machine = MachineGenerator.machine(&rng)
      var generator = OpGenerator(configuration: machine, variant: variant)
      generator.avoidKnownTraps = true
      var execution = try FuzzExecution(machine, variant: variant, perform: { $0.perform($1) })
      for _ in 0 ..< steps {
        let step = generator.next(&rng)
        guard let result = execution.run(step).result else { break }
        generator.record(step, result)
        guard case .failure(let failure) = result else { continue }
        switch failure {
        case .errno, .memoryFault, .tdx:
          failures += 1
          failedOps.insert(step.op)
          if failure.reason == nil { missing.append("seed \(seed) \(variant): \(step.op) -> \(failure)") }
        case .tdisp, .livelock, .deadlock, .lockViolation:
          continue
        }
      }
    }
    return (missing, failedOps, failures)
  }

  @Test(arguments: [Variant.reviewed, .rfcV1])
  func everyFailureTheFuzzerProvokesHasAReason(variant: Variant) throws {
    let (missing, failedOps, failures) = try Self.sweep(variant, seeds: 1 ... 60, steps: 150)
    #expect(missing.isEmpty, "\(missing.count) of \(failures) failures have no reason:\n\(Set(missing).sorted().prefix(40).joined(separator: "\n"))")
    // The sweep is broad: thousands of failures over all but four op kinds (the generator names
    // only configured devices, so vfio.open, tdisp.report, pci.flr and pci.write_command do not
    // fail; BadFDReasonTests covers their unknown device). A sweep that provoked nothing would
    // pass vacuously.
    let never = Set(OpSpec.all.map(\.name)).subtracting(failedOps)
    #expect(failures > 2000)
    #expect(never.isSubset(of: ["vfio.open", "tdisp.report", "pci.flr", "pci.write_command"]),
            "\(failures) failures; only \(failedOps.count) op kinds failed; never: \(never.sorted())")
  }

  static let examples = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Examples")

  /// Every scenario under Examples/, in both variants: every failed step's result carries a
  /// reason in the report (what the text, the trace and `--json` print).
  static var exampleFiles: [String] {
    let enumerator = FileManager.default.enumerator(atPath: examples.path)
    var files: [String] = []
    while let path = enumerator?.nextObject() as? String { if path.hasSuffix(".yaml") { files.append(path) } }
    return files.sorted()
  }

  @Test func theExamplesAreFound() {
    #expect(Self.exampleFiles.count >= 20)
    #expect(Self.exampleFiles.contains("default.yaml"))
  }

  @Test(arguments: exampleFiles)
  func everyFailedStepOfAnExampleHasAReason(file: String) throws {
    let text = try String(contentsOf: Self.examples.appendingPathComponent(file), encoding: .utf8)
    let scenario = try ScenarioParser.parse(text, file: file)
    for variant in [Variant.reviewed, .rfcV1] {
      let report = try ScenarioRunner.run(scenario, variant: variant)
      for step in report.steps where step.result.errno != nil || step.result.status != nil && !step.result.ok {
        #expect(step.result.reason != nil, "\(file) \(variant) step \(step.index): \(step.result.text) has no reason")
      }
    }
  }
}
