/// Which version of the feature the model follows, at the points where they differ.
///
/// `rfcV1` is the RFC as posted (January 2025), its uAPI and its known bugs; `reviewed` takes
/// the review's side and the later merged kernel (6.19 VFIO dma-buf uAPI, symmetric
/// revoke/restore, revoke before reset, immutable slots, slices, any VM type). Variants are
/// small switches where behaviour differs, never copies of code.
public enum Variant: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
  case rfcV1 = "rfc-v1"
  case reviewed = "reviewed"
  public var description: String { rawValue }
}
