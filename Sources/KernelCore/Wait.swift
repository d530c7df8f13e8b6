/// What a kernel thread waits for when its next atomic region cannot start: a lock another
/// context holds, or a wait (an SRCU grace period, the IPIs of a vCPU kick).
///
/// A step that answers ``Wait`` changed nothing; the thread tries the same step again when it
/// is next scheduled. The explorer reports a deadlock when every live thread waits.
public struct Wait: Hashable, Sendable, CustomStringConvertible {
  public enum Kind: Hashable, Sendable {
    /// A mutex, rwlock or rw_semaphore held by `holder` (`nil`: by readers).
    case lock(name: String, write: Bool, holder: ContextID?)
    /// A wait on something other than a lock.
    case event(String)
    /// `synchronize_srcu(&kvm->srcu)` while `reader` is in a read section.
    case srcuReader(ContextID)
    /// A kick (`KVM_REQ_OUTSIDE_GUEST_MODE`) waiting for a vCPU of VM `vm` to leave guest mode.
    case guestModeExit(vm: UInt32, vcpu: UInt32)
  }
  public let kind: Kind
  public init(_ kind: Kind) { self.kind = kind }

  /// Waiting to take `name` (for write, or for read) while `holder` has it.
  public static func lock(_ name: String, write: Bool = true, heldBy holder: ContextID?) -> Wait {
    Wait(.lock(name: name, write: write, holder: holder))
  }

  /// Waiting for an event.
  public static func event(_ what: String) -> Wait { Wait(.event(what)) }

  /// `synchronize_srcu()` waiting for `reader` (nothing is formatted until it is printed: the
  /// explorer probes blocked threads in every state).
  public static func srcuReader(_ reader: ContextID) -> Wait { Wait(.srcuReader(reader)) }

  /// A kick waiting for vCPU `vcpu` of VM `vm` to leave guest mode.
  public static func guestModeExit(vm: UInt32, vcpu: UInt32) -> Wait { Wait(.guestModeExit(vm: vm, vcpu: vcpu)) }

  public var description: String {
    switch kind {
    case .lock(let name, let write, let holder):
      "\(name) (\(write ? "write" : "read")), held by \(holder.map(\.description) ?? "readers")"
    case .event(let what): what
    case .srcuReader(let reader): "synchronize_srcu: \(reader) is in a kvm->srcu read section"
    case .guestModeExit(let vm, let vcpu): "vm\(vm) vcpu\(vcpu) to leave guest mode (KVM_REQ_OUTSIDE_GUEST_MODE)"
    }
  }
}
