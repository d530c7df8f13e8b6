import Testing
import Foundation
@testable import Scenarios
import Platform
import KernelCore

/// The README's op table and invariant list are the code's own: a change to either that is
/// not carried into the README fails here.
@Suite struct ReadmeTests {
  static let readme = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("README.md")

  @Test func opTableIsTheParsers() throws {
    let text = try String(contentsOf: Self.readme, encoding: .utf8)
    #expect(text.contains("<!-- op-table:begin -->\n" + OpSpec.referenceTable + "<!-- op-table:end -->"))
  }

  @Test func stateKeyTableIsTheParsers() throws {
    let text = try String(contentsOf: Self.readme, encoding: .utf8)
    #expect(text.contains("<!-- state-keys:begin -->\n" + StateExpectation.referenceTable + "<!-- state-keys:end -->"))
  }

  @Test func traceEventTableIsTheCatalogue() throws {
    let text = try String(contentsOf: Self.readme, encoding: .utf8)
    #expect(text.contains("<!-- trace-events:begin -->\n" + TraceEventName.referenceTable + "<!-- trace-events:end -->"))
  }

  @Test func everyInvariantIsListed() throws {
    let text = try String(contentsOf: Self.readme, encoding: .utf8)
    #expect(text.contains("<!-- invariants:begin -->\n" + Machine.invariantTable + "<!-- invariants:end -->"))
    for invariant in Machine.invariants {
      #expect(text.contains("| `\(invariant.name)` | \(invariant.kind.rawValue) | \(invariant.summary) |"), "\(invariant.name)")
    }
  }
}
