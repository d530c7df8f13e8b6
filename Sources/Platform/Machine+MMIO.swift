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
    guard let binding = kvm.vms[vm]?.memslot(containing: gpa.gfn)?.dmaBuf else { return nil }
    guard let (device, function, bar) = functionDecoding(hpa, hint: vfio.dmaBuf(binding.dmaBuf)?.device) else {
      let value = store ?? BARContents.allOnes(size: size)
      trace.emit(store == nil ? .guestMMIORead : .guestMMIOWrite,
                 "vm\(vm.rawValue) \(store == nil ? "load" : "store") \(gpa) -> \(hpa): no function decodes it (master abort)",
                 [.vm(vm), .gpa(gpa), .hpa(hpa), .int("size", size), .hex("value", value), .flag("decode", false)])
      return store == nil ? value : nil
    }
    let offset = hpa.rawValue - bar.base.rawValue
    guard let store else {
      let value = function.memoryRead(bar: bar.index, offset: offset, size: size)
      traceMMIO(.guestMMIORead, vm, gpa, hpa, function, bar, offset, size, value, decoded: function.memoryDecodeEnabled)
      return value
    }
    // The device was found above, so the update always runs.
    let decoded = vfio.updateFunction(of: device) { $0.memoryWrite(bar: bar.index, offset: offset, size: size, value: store) } ?? false
    traceMMIO(.guestMMIOWrite, vm, gpa, hpa, function, bar, offset, size, store & BARContents.allOnes(size: size), decoded: decoded)
    return nil
  }

  /// The `guest:mmio_read` or `guest:mmio_write` event of an access a function answered.
  private mutating func traceMMIO(_ event: TraceEventName, _ vm: VMID, _ gpa: GPA, _ hpa: HPA, _ function: PCIFunction,
                                  _ bar: BAR, _ offset: UInt64, _ size: UInt64, _ value: UInt64, decoded: Bool) {
    let load = event == .guestMMIORead
    trace.emit(event, "vm\(vm.rawValue) \(load ? "load" : "store") \(gpa) size \(size) -> \(function.name) BAR\(bar.index) +0x\(String(offset, radix: 16))"
               + " = 0x\(String(value, radix: 16))\(decoded ? "" : load ? " (no decode: master abort)" : " (no decode: dropped)")",
               [.vm(vm), .gpa(gpa), .hpa(hpa), .text("device", function.name), .int("bar", bar.index), .hex("offset", offset),
                .int("size", size), .hex("value", value), .flag("decode", decoded)])
  }

  /// The function and BAR that decode `hpa`: the exporting device first (the usual case),
  /// else any device (a buffer cleaned up "for good" no longer names its device).
  /// - Complexity: O(1) when `hint` decodes it, else O(devices).
  func functionDecoding(_ hpa: HPA, hint: VFIODeviceID?) -> (VFIODeviceID, PCIFunction, BAR)? {
    if let hint, let function = vfio.device(hint)?.function, let bar = function.bars.first(where: { $0.contains(hpa) }) {
      return (hint, function, bar)
    }
    for (id, device) in vfio.devices {
      if let bar = device.function.bars.first(where: { $0.contains(hpa) }) { return (id, device.function, bar) }
    }
    return nil
  }
}
