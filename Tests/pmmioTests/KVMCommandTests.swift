import Foundation
import Glibc
import Testing

/// Whether this process can open /dev/kvm and create a VM (`KVM_CREATE_VM`, `_IO(0xAE, 0x01)`):
/// where it cannot, `pmmio kvm` says so and exits 2, and there is nothing to measure.
private let kvmUsable: Bool = {
  let kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)
  guard kvm >= 0 else { return false }
  defer { close(kvm) }
  let vm = ioctl(kvm, UInt(0xAE01), CInt(0))
  guard vm >= 0 else { return false }
  close(vm)
  return true
}()

/// Runs `pmmio` and keeps stdout as bytes, for the JSON decoder.
private func runPmmio(_ arguments: [String]) throws -> (status: Int32, stdout: Data) {
  let outcome = try pmmio(arguments)
  return (outcome.status, Data(outcome.stdout.utf8))
}

@Test(
  "pmmio kvm --json: exit 0, Swift (asking the dma-buf model) and C figures, one exit mapped",
  .enabled(if: kvmUsable, "needs a usable /dev/kvm (absent, not openable, or KVM_CREATE_VM fails here)"))
func kvmJSONEndToEnd() throws {
  let result = try runPmmio(["kvm", "--iterations", "200", "--revoke-after", "50", "--json"])
  #expect(result.status == 0)
  let document = try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any])
  for side in ["swift", "c"] {
    let figures = try #require(document[side] as? [String: Any], "no \(side) object")
    for key in ["trapped_ns_per_access", "mapped_ns_per_access", "first_fault_us", "revoke_us"] {
      let value = try #require(figures[key] as? Double, "\(side).\(key) missing")
      #expect(value > 0, "\(side).\(key)")
    }
    #expect(figures["mapped_exits"] as? Int == 1, "\(side).mapped_exits")
    #expect(figures["trapped_exits"] as? Int == 400, "\(side).trapped_exits")
    #expect(figures["revoke_stale_reads"] as? Int == 0, "\(side).revoke_stale_reads")
  }
  let swift = try #require(document["swift"] as? [String: Any])
  #expect(swift["exporter"] as? String == "vfio-dma-buf model (reviewed)")
}

@Test(
  "pmmio kvm --exporter in-memory keeps the in-memory exporter for comparison",
  .enabled(if: kvmUsable, "needs a usable /dev/kvm (absent, not openable, or KVM_CREATE_VM fails here)"))
func kvmInMemoryExporter() throws {
  let result = try runPmmio(["kvm", "--iterations", "50", "--revoke-after", "0", "--exporter", "in-memory", "--json"])
  #expect(result.status == 0)
  let document = try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any])
  let swift = try #require(document["swift"] as? [String: Any])
  #expect(swift["exporter"] as? String == "in-memory")
  #expect(swift["mapped_exits"] as? Int == 1)
  #expect(swift["revoke_us"] == nil)
}

@Test(
  "pmmio kvm --repeat K: both sides report repeat K and every figure's median between min and max",
  .enabled(if: kvmUsable, "needs a usable /dev/kvm (absent, not openable, or KVM_CREATE_VM fails here)"),
  arguments: [(1, "in-memory"), (3, "in-memory"), (3, "model")])
func kvmRepeatHonoured(repeatCount: Int, exporter: String) throws {
  let result = try runPmmio(["kvm", "--iterations", "20", "--revoke-after", "10", "--repeat", "\(repeatCount)",
                             "--exporter", exporter, "--json"])
  #expect(result.status == 0)
  let document = try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any])
  func checkSpread(_ figures: [String: Any], _ key: String, _ side: String) throws {
    let median = try #require(figures[key] as? Double, "\(side).\(key)")
    let low = try #require(figures[key + "_min"] as? Double, "\(side).\(key)_min")
    let high = try #require(figures[key + "_max"] as? Double, "\(side).\(key)_max")
    #expect(low <= median && median <= high, "\(side).\(key)")
    if repeatCount == 1 { #expect(low == high, "\(side).\(key): one sample") }
  }
  // Each sampled figure and its key for Swift's in-memory exporter, sampled alongside the model.
  let sampled = [("trapped_ns_per_access", "trapped_ns_per_access_in_memory"),
                 ("mapped_ns_per_access", "mapped_ns_per_access_in_memory"),
                 ("first_fault_us", "first_fault_in_memory_us"), ("revoke_us", "revoke_in_memory_us")]
  for side in ["swift", "c"] {
    let figures = try #require(document[side] as? [String: Any], "no \(side) object")
    #expect(figures["repeat"] as? Int == repeatCount, "\(side).repeat")
    #expect(figures["trapped_exits"] as? Int == 40, "\(side).trapped_exits")
    #expect(figures["mapped_exits"] as? Int == 1, "\(side).mapped_exits")
    // Only Swift asking the model has a like-for-like in-memory side of its own.
    let inMemory = side == "swift" && exporter == "model"
    for (key, inMemoryKey) in sampled {
      try checkSpread(figures, key, side)
      if inMemory {
        try checkSpread(figures, inMemoryKey, side)
      } else {
        #expect(figures[inMemoryKey] == nil, "\(side).\(inMemoryKey)")
      }
    }
  }
}

@Test("pmmio kvm refuses counts the guest cannot loop, as a usage error",
      arguments: [["--revoke-after", "18446744073709551615"], ["--revoke-after", "4294967296"],
                  ["--iterations", "0"], ["--repeat", "0"]])
func kvmUsageErrors(arguments: [String]) throws {
  let outcome = try pmmio(["kvm"] + arguments)
  #expect(outcome.status == 2)
  #expect(outcome.stderr.contains("must be between"))
}

@Test(
  "pmmio kvm --json records how it measured: iterations, kernel, build; a debug build warns on stderr",
  .enabled(if: kvmUsable, "needs a usable /dev/kvm (absent, not openable, or KVM_CREATE_VM fails here)"))
func kvmJSONRecordsTheSetUp() throws {
  let outcome = try pmmio(["kvm", "--iterations", "30", "--revoke-after", "0", "--repeat", "1", "--json"])
  #expect(outcome.status == 0)
  let document = try #require(try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any])
  #expect(document["schema"] as? Int == 1)
  #expect(document["iterations"] as? Int == 30)
  #expect(document["repeat"] as? Int == 1)
  var name = utsname()
  uname(&name)
  let release = withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
  #expect(document["kernel"] as? String == release)
  let build = try #require(document["build"] as? String)
  #expect(["debug", "release"].contains(build))
  #expect(outcome.stderr.contains("warning: this is a debug build") == (build == "debug"))
}
