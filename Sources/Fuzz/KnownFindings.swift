import KernelCore
import Platform

/// Model bugs the fuzzer found in code it does not own, each with its shrunk scenario in
/// `Examples/fuzz-findings/`: until they are fixed, a failure that matches one ends its sequence
/// and is counted under the finding's name instead of stopping the run (`--strict` reports them).
public struct KnownFinding: Sendable {
  /// Its name in reports, and its scenario's file name without `.yaml`.
  public let name: String
  /// What goes wrong, in a line.
  public let summary: String
  /// Whether `failure`, seen on `machine`, is this finding.
  let matches: @Sendable (FuzzFailure, Machine) -> Bool

  public static let all: [KnownFinding] = [
    KnownFinding(
      name: "killed-td-revoke",
      summary: "after its guest touched an unaccepted MMIO page the TD is fatal; a later revoke's TDH.MMIO.BLOCK "
        + "answers TDX_TD_FATAL and KVM_BUG_ON kills the VM with the SPTEs still mapping the revoked buffer",
      matches: { failure, machine in
        failure.kind == .invariant && machine.kvm.tdx.tds.values.contains { $0.isFatal }
      }),
  ]

  /// Arguments that make the model trap today: the generator leaves them out unless strict
  /// (a trap ends the process, so no run could go on past one).
  public static let traps: [(name: String, summary: String)] = []

  /// The known finding `failure` on `machine` is, if any.
  static func match(_ failure: FuzzFailure, _ machine: Machine) -> KnownFinding? {
    all.first { $0.matches(failure, machine) }
  }
}
