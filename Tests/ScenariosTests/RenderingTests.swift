import Foundation
import Testing
import KernelCore
@testable import Scenarios

@Test("JSON and Perfetto renderings are valid JSON documents")
func renderings() throws {
  let scenario = try ScenarioParser.parse(runnerYAML, file: "r.yaml")
  let report = ScenarioRunner.run(scenario, on: ScriptedMachine(results: []), variant: .rfcV1)
  let decoded = try JSONDecoder().decode(RunReport.self, from: Data(report.jsonString().utf8))
  #expect(decoded.steps.count == 4)
  #expect(decoded.counters == report.counters)
  let perfetto = try JSONDecoder().decode(ChromeTrace.self, from: Data(report.perfettoJSON().utf8))
  let threads = perfetto.traceEvents.filter { $0.name == "thread_name" }.compactMap { $0.args?["name"] }
  #expect(threads == ["setup", "ioctl", "ctx1"])
  #expect(report.traceText.contains("[     1.001] ioctl vfio:log: performed 1\n"))
  #expect(report.traceText.contains("#            ctx1 step 4 r.yaml:7: { op: vfio.reset, fd: dev }\n"))
}
