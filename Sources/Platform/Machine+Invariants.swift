import KernelCore
import DmaBuf
import VFIO

/// The machine's named invariants, checked after every step by `run`, `explore` and `fuzz`.
/// Each returns the violations it finds; an empty list means it held.
extension Machine {
  /// Every invariant, in a fixed order, with its verdict.
  public func checkInvariants() -> [InvariantCheck] {
    Self.invariants.map { invariant in
      let violations = invariant.check(self)
      return InvariantCheck(name: invariant.name, violation: violations.isEmpty ? nil : violations.joined(separator: "; "))
    }
  }

  /// One named invariant.
  public struct Invariant: Sendable {
    public let name: String
    public let summary: String
    let check: @Sendable (Machine) -> [String]
  }

  /// All invariants, by name.
  public static let invariants: [Invariant] = [
    Invariant(name: "NoHostMappingOfPrivateMMIO",
              summary: "no user-space mapping of a BAR of a device bound private",
              check: { $0.hostMappingsOfPrivateMMIO() }),
    Invariant(name: "DmaBufRefcountsBalance",
              summary: "every dma-buf's file references equal its fds plus its attachments",
              check: { $0.dmaBufRefcountViolations() }),
    Invariant(name: "VFIORegistrationsBalance",
              summary: "a device's registrations are its own plus one per buffer still on its list",
              check: { $0.registrationViolations() }),
    Invariant(name: "DecodeOffImpliesRevoked",
              summary: "a buffer of a device whose memory decode is off (or not in D0) is revoked",
              check: { $0.decodeOffButLive() }),
    Invariant(name: "UsableDeviceBuffersRestored",
              summary: "a buffer of an open device whose memory is enabled is not left revoked",
              check: { $0.usableButRevoked() }),
    Invariant(name: "ClosedDeviceBuffersRevoked",
              summary: "a buffer whose device was closed is revoked for good",
              check: { $0.orphansLive() }),
    Invariant(name: "NoResetUnderLiveImport",
              summary: "no function reset while an importer could still map one of its buffers",
              check: { $0.resetsUnderLiveImport() }),
  ]

  func hostMappingsOfPrivateMMIO() -> [String] {
    vfio.devices.values.filter { $0.isPrivate && !$0.hostMappings.isEmpty }
      .map { "vfio-dev\($0.id.rawValue) is private but BAR\($0.hostMappings.map(String.init).joined(separator: ",")) is mapped in user space" }
  }

  func dmaBufRefcountViolations() -> [String] {
    dmabufCore.refcountViolations(
      fdRefs: { id in files.count { $0 == .dmaBuf(id) } },
      extraRefs: { _ in 0 })
  }

  func registrationViolations() -> [String] {
    vfio.devices.values.compactMap { device in
      let held = vfio.dmabufs.values.filter { $0.device == device.id }.count
      return device.registrations == 1 + held ? nil
        : "vfio-dev\(device.id.rawValue) has \(device.registrations) registrations for \(held) buffer(s)"
    }
  }

  func decodeOffButLive() -> [String] {
    vfio.dmabufs.values.compactMap { buffer in
      guard let id = buffer.device, let device = vfio.device(id), !device.memoryEnabled, !buffer.revoked else { return nil }
      return "dmabuf\(buffer.buffer.rawValue) is live while vfio-dev\(id.rawValue) has memory disabled"
    }
  }

  func usableButRevoked() -> [String] {
    vfio.dmabufs.values.compactMap { buffer in
      guard let id = buffer.device, let device = vfio.device(id), device.openCount > 0,
            device.memoryEnabled, buffer.revoked else { return nil }
      return "dmabuf\(buffer.buffer.rawValue) stays revoked although vfio-dev\(id.rawValue) is usable"
    }
  }

  func orphansLive() -> [String] {
    vfio.dmabufs.values.compactMap { buffer in
      let open = buffer.device.flatMap { vfio.device($0) }.map { $0.openCount > 0 } ?? false
      return open || buffer.revoked ? nil : "dmabuf\(buffer.buffer.rawValue) is live but its device is closed"
    }
  }

  func resetsUnderLiveImport() -> [String] {
    vfio.devices.values.filter { $0.resetsUnderLiveImport > 0 }
      .map { "vfio-dev\($0.id.rawValue) was reset \($0.resetsUnderLiveImport) time(s) while importers could map its buffers" }
  }
}
