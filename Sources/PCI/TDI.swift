import KernelCore
/// A TEE Device Interface: the TDISP state machine a TDISP-capable function carries.
///
/// The state carries its data: the start nonce exists only while CONFIG_LOCKED (it is spent
/// by START_INTERFACE), the lock parameters only while CONFIG_LOCKED or RUN (they shape the
/// interface report). Transitions happen only through `PCIFunction`, which also sees the
/// config-space events (FLR, resets, command and power writes) that drive the TDI to ERROR.
public struct TDI: Hashable, Sendable {
  enum Phase: Hashable, Sendable {
    case configUnlocked
    case configLocked(TDISPLockParameters, startNonce: TDISPNonce)
    case run(TDISPLockParameters)
    case error
  }

  var phase: Phase = .configUnlocked
  /// Seeds the device's nonce generator: a stable hash of the function name.
  let nonceSeed: UInt64
  /// Locks granted so far; each grant draws a fresh nonce. History: outside equality (the
  /// nonce a lock hands out is state, and what it was drawn from cannot be observed).
  private(set) var locksGranted = Observed(UInt64(0))

  init(functionName: String) {
    nonceSeed = Self.fnv1a(functionName)
  }

  /// The TDISP state (what GET_DEVICE_INTERFACE_STATE answers).
  public var state: TDIState {
    switch phase {
    case .configUnlocked: .configUnlocked
    case .configLocked: .configLocked
    case .run: .run
    case .error: .error
    }
  }

  /// The parameters of the lock in force, while CONFIG_LOCKED or RUN.
  public var lockParameters: TDISPLockParameters? {
    switch phase {
    case .configLocked(let parameters, _), .run(let parameters): parameters
    case .configUnlocked, .error: nil
    }
  }

  /// The nonce LOCK_INTERFACE_RESPONSE carried, while it can still be spent (CONFIG_LOCKED).
  /// The host TSM keeps it from the response; it is exposed so callers can echo it.
  public var issuedStartNonce: TDISPNonce? {
    if case .configLocked(_, let nonce) = phase { return nonce }
    return nil
  }

  /// Grants a lock: draws the next nonce and enters CONFIG_LOCKED. Callers check the state.
  mutating func grantLock(_ parameters: TDISPLockParameters) -> TDISPNonce {
    locksGranted.value &+= 1
    let nonce = TDISPNonce(rawValue: Self.mix(nonceSeed ^ locksGranted.value))
    phase = .configLocked(parameters, startNonce: nonce)
    return nonce
  }

  /// FNV-1a over the UTF-8 bytes: unlike `Hasher`, stable across processes, which replay
  /// of a recorded schedule needs.
  static func fnv1a(_ text: String) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in text.utf8 {
      hash ^= UInt64(byte)
      hash &*= 0x0000_0100_0000_01b3
    }
    return hash
  }

  /// The splitmix64 finaliser: spreads a counter over all 64 bits.
  static func mix(_ value: UInt64) -> UInt64 {
    var z = value &+ 0x9e37_79b9_7f4a_7c15
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}
