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
    let event: TraceEventName = store == nil ? .guestMMIORead : .guestMMIOWrite
    let kind = store == nil ? "load" : "store"
    guard let (device, bar) = functionDecoding(hpa, hint: vfio.dmaBuf(binding.dmaBuf)?.device),
          let function = vfio.device(device)?.function else {
      let value = store ?? BARContents.allOnes(size: size)
      trace.emit(event, "vm\(vm.rawValue) \(kind) \(gpa) -> \(hpa): no function decodes it (master abort)",
                 [.vm(vm), .gpa(gpa), .hpa(hpa), .int("size", size), .hex("value", value), .flag("decode", false)])
      return store == nil ? value : nil
    }
    let offset = hpa.rawValue - bar.base.rawValue
    var value = store.map { $0 & BARContents.allOnes(size: size) } ?? 0
    var decoded = true
    if store != nil {
      do {
        try vfio.withFunction(of: device) { (f: inout PCIFunction) throws(Errno) in
          decoded = f.memoryWrite(bar: bar.index, offset: offset, size: size, value: value)
        }
      } catch {
        return nil  // the device was found above: withFunction cannot refuse it
      }
    } else {
      value = function.memoryRead(bar: bar.index, offset: offset, size: size)
      decoded = function.memoryDecodeEnabled
    }
    trace.emit(event, "vm\(vm.rawValue) \(kind) \(gpa) size \(size) -> \(function.name) BAR\(bar.index) +0x\(String(offset, radix: 16))"
               + " = 0x\(String(value, radix: 16))\(decoded ? "" : store == nil ? " (no decode: master abort)" : " (no decode: dropped)")",
               [.vm(vm), .gpa(gpa), .hpa(hpa), .text("device", function.name), .int("bar", bar.index), .hex("offset", offset),
                .int("size", size), .hex("value", value), .flag("decode", decoded)])
    return store == nil ? value : nil
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
