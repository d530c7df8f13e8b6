import Foundation
import Testing
import KernelCore
import KVM
import Platform
import Scenarios
@testable import Fuzz

/// Whether this machine has a `/dev/kvm` the oracle can use.
let kvmUsable: Bool = {
  let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
  guard fd >= 0 else { return false }
  close(fd)
  return true
}()

/// The model against this machine's KVM, in lock step. Each test runs `pmmio fuzz --oracle kvm`
/// in a child process: its VM, vCPU and guest_memfd fds stay out of this process, whose other
/// tests count KVM's fds.
@Suite(.enabled(if: kvmUsable, "needs a usable /dev/kvm (absent or not openable here): the oracle compares nothing, and says so"))
struct OracleTests {
  /// Ten thousand ioctls and more, every one answered alike by the model and the kernel: which
  /// calls were compared, and which were skipped and why. The model's host is the kernel's: one
  /// address space where KVM_CAP_MULTI_ADDRESS_SPACE is 0 (the first check of this oracle
  /// disagreed only there), the MAXPHYADDR the largest GFN gives.
  @Test func modelAndKernelAgree() throws {
    let result = try pmmio(["fuzz", "--oracle", "kvm", "--ops", "10000", "--seed", "7", "--json"])
    #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
    let report = try JSONDecoder().decode(OracleReportView.self, from: Data(result.stdout.utf8))
    #expect(report.finding == nil)
    #expect(report.compared >= 10_000)
    let calls = Set(report.comparedByAnswer.keys.map { String($0.split(separator: " ")[0]) })
    #expect(calls == ["KVM_CREATE_VM", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_SET_USER_MEMORY_REGION2",
                      "KVM_CREATE_GUEST_MEMFD", "KVM_SET_MEMORY_ATTRIBUTES", "KVM_CHECK_EXTENSION", "close"])
    for answer in ["KVM_SET_USER_MEMORY_REGION2 ok", "KVM_SET_USER_MEMORY_REGION2 EINVAL (kvm_gmem_bind)",
                   "KVM_SET_USER_MEMORY_REGION2 EINVAL (check_memory_region_flags)", "KVM_SET_USER_MEMORY_REGION2 EEXIST",
                   "KVM_SET_USER_MEMORY_REGION2 EBADF (kvm_gmem_bind)", "KVM_SET_USER_MEMORY_REGION2 EINVAL (kvm_arch_prepare_memory_region)",
                   "KVM_CREATE_GUEST_MEMFD ok", "KVM_CREATE_GUEST_MEMFD EINVAL", "KVM_CREATE_VCPU EEXIST", "KVM_CREATE_VM EINVAL"] {
      #expect(report.comparedByAnswer.keys.contains { $0.hasPrefix(answer) }, "never compared: \(answer)")
    }
    #expect(report.addressSpaceCalls > 0)
    #expect(report.skipped.keys.contains { $0.hasPrefix("KVM_MEM_VFIO_DMABUF") })
    let kernel = report.kernel
    #expect(report.host.contains("smm: \(kernel.addressSpaces > 1)"))
    let gfn = try #require(kernel.maxGFN)
    let bits = 64 - (gfn + 1).leadingZeroBitCount - 1
    #expect(report.host.contains("maxphyaddr: \(bits + 12)"), "\(report.host), largest GFN 0x\(String(gfn, radix: 16))")
  }

  /// A model planted to answer one call differently (`--plant`) is caught, shrunk to the calls
  /// that matter, and written with the kernel's answer as `expect:`, which the real model meets.
  @Test func aPlantedDisagreementIsFoundAndShrunk() throws {
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("pmmio-oracle-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: out) }
    let result = try pmmio(["fuzz", "--oracle", "kvm", "--ops", "5000", "--seed", "3", "--plant", "vcpu-id-e2big",
                            "--json", "--out", out.path])
    #expect(result.status == 1)
    let report = try JSONDecoder().decode(OracleReportView.self, from: Data(result.stdout.utf8))
    let finding = try #require(report.finding)
    #expect(finding.failure.kind == .oracle)
    #expect(finding.failure.result == "model errno E2BIG, kernel errno EINVAL")
    #expect(finding.steps == 2, "\(finding.scenario)")
    #expect(finding.scenario.contains("expect: { errno: EINVAL }"))
    let file = try #require(finding.file)
    let scenario = try ScenarioParser.parse(try String(contentsOfFile: file, encoding: .utf8), file: file)
    #expect(scenario.steps.map(\.opName) == ["kvm.create_vm", "kvm.create_vcpu"])
    #expect(try pmmio(["run", file]).status == 0, "the model gives the kernel's answer")
  }
}

/// Where there is no /dev/kvm the oracle says so, with exit status 2.
@Test(.enabled(if: !kvmUsable, "runs only where /dev/kvm is absent"))
func oracleWithoutKVM() throws {
  let result = try pmmio(["fuzz", "--oracle", "kvm", "--ops", "10"])
  #expect(result.status == 2)
  #expect(result.stderr.contains("/dev/kvm cannot be used here"))
}

/// The oracle report's JSON, as far as the tests read it.
struct OracleReportView: Decodable {
  var compared: Int
  var comparedByAnswer: [String: Int]
  var skipped: [String: Int]
  var addressSpaceCalls: Int
  var host: String
  var kernel: KVMHostCapabilitiesView
  var finding: FindingView?
}

struct KVMHostCapabilitiesView: Decodable {
  var addressSpaces: Int32
  var maxGFN: UInt64?
}

struct FindingView: Decodable {
  var failure: FuzzFailure
  var steps: Int
  var scenario: String
  var file: String?
}

/// `Examples/kvm-oracle/`: each disagreement the oracle found, fixed in the model, as a scenario
/// with the kernel's answers as `expect:`. The model passes each; where /dev/kvm exists, the
/// kernel still answers the same, in lock step.
@Suite struct OracleRegressionTests {
  static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("Examples/kvm-oracle")
  static let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".yaml") }.sorted()

  @Test func thereAreRegressions() { #expect(!Self.files.isEmpty) }

  @Test(arguments: files)
  func modelGivesTheKernelsAnswers(file: String) throws {
    let url = Self.directory.appendingPathComponent(file)
    let report = try ScenarioRunner.run(try ScenarioParser.parse(String(contentsOf: url, encoding: .utf8), file: file))
    #expect(report.exitStatus == 0)
    #expect(report.counters.notAsExpected == 0)
  }

  @Test(.enabled(if: kvmUsable, "needs a usable /dev/kvm"), arguments: files)
  func kernelStillAgrees(file: String) throws {
    let result = try pmmio(["fuzz", "--oracle", "kvm", "--replay", Self.directory.appendingPathComponent(file).path])
    #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
    #expect(result.stdout.contains("the model and the kernel agreed"))
  }
}
