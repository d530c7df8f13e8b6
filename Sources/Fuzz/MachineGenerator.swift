import KernelCore
import KVM
import Platform

/// Random machines: devices with and without TDISP, BARs of every size the windows hold,
/// VMs of every type the host offers, and hosts as different as real ones are.
public enum MachineGenerator {
  /// A configuration `Machine.init` accepts (one it refuses is drawn again; the refusals are
  /// the configuration checks' business, not the fuzzer's).
  public static func machine(_ rng: inout FuzzRandom) -> MachineConfiguration {
    while true {
      let config = candidate(&rng)
      if (try? Machine(configuration: config)) != nil { return config }
    }
  }

  static func candidate(_ rng: inout FuzzRandom) -> MachineConfiguration {
    let host = self.host(&rng)
    var devices: [DeviceConfiguration] = []
    for d in 0 ..< rng.pick([0, 1, 1, 1, 2, 2, 3]) {
      let tdisp = rng.chance(60)
      devices.append(DeviceConfiguration(name: "dev\(d)", bars: bars(&rng, tdisp: tdisp), tdisp: tdisp))
    }
    let types = VMTypeName.allCases.filter { host.vmTypes.contains($0.type) }
    var vms: [VMConfiguration] = []
    for v in 0 ..< rng.pick([0, 1, 1, 1, 2, 2, 3]) {
      vms.append(VMConfiguration(name: "vm\(v)", type: rng.pick(types)))
    }
    return MachineConfiguration(devices: devices, vms: vms, host: host)
  }

  /// Half the time the typical host; otherwise any combination a kernel can report.
  static func host(_ rng: inout FuzzRandom) -> HostCapabilities {
    if rng.chance(50) { return .typical }
    var types: Set<VMType> = [.default]
    if rng.chance(60) { types.insert(.swProtected) }
    if rng.chance(60) { types.insert(.tdx) }
    return HostCapabilities(smm: rng.chance(50), maxPhysAddr: UInt8(rng.pick([36, 39, 40, 46, 48, 52, rng.int(in: 32 ... 52)])),
                            vmTypes: types, memoryAttributes: rng.chance(70))
  }

  /// One to three BARs on distinct registers: 64-bit ones on even registers, sizes from a page
  /// to 64 GiB (mostly small), sometimes with an MSI-X table. A TDISP device's BARs stay at
  /// 1 MiB or less: the TDX module model keeps its MMIO metadata table (TDH.MMIO.MT.ADD) a page
  /// at a time, so a 64 GiB private BAR costs millions of entries per sequence.
  static func bars(_ rng: inout FuzzRandom, tdisp: Bool) -> [BARConfiguration] {
    var used: Set<UInt32> = []
    var out: [BARConfiguration] = []
    for _ in 0 ..< rng.pick([1, 1, 1, 2, 2, 3]) {
      let is64 = rng.chance(80)
      let candidates = (0 ... 5).map(UInt32.init).filter { i in
        is64 ? i % 2 == 0 && i < 5 && !used.contains(i) && !used.contains(i + 1) : !used.contains(i)
      }
      guard !candidates.isEmpty else { break }
      let index = rng.pick(candidates)
      used.insert(index)
      if is64 { used.insert(index + 1) }
      let shift = tdisp ? rng.pick([12, 12, 13, 14, 16, 20]) : rng.pick([12, 12, 13, 14, 16, 20, 21, 21, 22, 30, is64 ? 36 : 28])
      let size = UInt64(1) << UInt64(shift)
      var msix: DmaRange?
      if size >= 0x4000, rng.chance(20) { msix = DmaRange(offset: size / 2, length: 0x1000) }
      out.append(BARConfiguration(index: index, size: size, is64Bit: is64, prefetchable: rng.chance(80), msixTable: msix))
    }
    return out
  }
}
