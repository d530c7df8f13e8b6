extension TDXStatus {
  /// Statuses beyond the ones STACK.md names, added by the TDX module as it needs them.
  static var moreNamed: [(name: String, status: TDXStatus)] { [] }
}
