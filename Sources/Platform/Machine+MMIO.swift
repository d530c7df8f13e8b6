import KernelCore
import PCI
import VFIO

extension Machine {
  /// The bus side of a guest load or store that completed at `gpa` of `vm` through a mapping
  /// of `hpa` (a TDP MMU SPTE, or for a TD its Secure-EPT entry): what the device answers.
  ///
  /// The access goes where the mapping points, whatever the exporter would answer now: an
  /// SPTE that survived a revoke or a reset reaches the device as it is then. The function
  /// whose BAR decodes `hpa` answers with its register contents; one that does not decode
  /// memory (Memory Space Enable clear, D3hot, reset and not yet re-enabled), or no function
  /// at all, leaves a load to a master abort: all ones. A store to such a function is dropped.
  /// Only dma-buf memslots map device MMIO here; a slot of RAM answers `nil` (the model keeps
  /// no RAM contents).
  /// - Parameter store: what a store writes; `nil` for a load.
  /// - Returns: what a load read; `nil` for a store or a load of RAM.
  mutating func mmioAccess(_ vm: VMID, gpa: GPA, hpa: HPA, size: UInt64, store: UInt64?) -> UInt64? {
    guard let slot = kvm.vms[vm]?.memslot(containing: gpa.gfn), let binding = slot.dmaBuf else { return nil }
    guard let (device, bar) = functionDecoding(hpa, hint: vfio.dmaBuf(binding.dmaBuf)?.device),
          let function = vfio.device(device)?.function else {
      trace.emit(.guest, "vm\(vm.rawValue) \(store == nil ? "load" : "store") \(gpa) -> \(hpa): no function decodes it (master abort)")
      return store == nil ? BARContents.allOnes(size: size) : nil
    }
    let offset = hpa.rawValue - bar.base.rawValue
    guard let store else {
      let value = function.memoryRead(bar: bar.index, offset: offset, size: size)
      trace.emit(.guest, "vm\(vm.rawValue) load \(gpa) size \(size) -> \(function.name) BAR\(bar.index) +0x\(String(offset, radix: 16))"
                 + " = 0x\(String(value, radix: 16))\(function.memoryDecodeEnabled ? "" : " (no decode: master abort)")")
      return value
    }
    var taken = false
    do {
      try vfio.withFunction(of: device) { (f: inout PCIFunction) throws(Errno) in
        taken = f.memoryWrite(bar: bar.index, offset: offset, size: size, value: store)
      }
    } catch {
      return nil  // the device was found above: withFunction cannot refuse it
    }
    trace.emit(.guest, "vm\(vm.rawValue) store \(gpa) size \(size) -> \(function.name) BAR\(bar.index) +0x\(String(offset, radix: 16))"
               + " = 0x\(String(store & BARContents.allOnes(size: size), radix: 16))\(taken ? "" : " (no decode: dropped)")")
    return nil
  }

  /// The function and BAR that decode `hpa`: the exporting device first (the usual case),
  /// else any device (a buffer cleaned up "for good" no longer names its device).
  /// - Complexity: O(1) when `hint` decodes it, else O(devices).
  func functionDecoding(_ hpa: HPA, hint: VFIODeviceID?) -> (VFIODeviceID, BAR)? {
    if let hint, let bar = vfio.device(hint)?.function.bars.first(where: { $0.contains(hpa) }) { return (hint, bar) }
    for (id, device) in vfio.devices {
      if let bar = device.function.bars.first(where: { $0.contains(hpa) }) { return (id, bar) }
    }
    return nil
  }
}
