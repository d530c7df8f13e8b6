import Testing
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
@testable import Reports
import Scenarios

/// The SVG address map: byte-for-byte against a golden file, and drawn by a real browser.
@Suite struct AddressMapTests {
  static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Golden/default-after-step-15.svg")

  /// The default scenario's map after step 15: both pages accepted and mapped.
  static func defaultMap() throws -> String {
    let report = try ScenarioRunner.run(try BuiltinScenarios.defaultScenario(),
                                        options: RunOptions(stopAfterStep: 15, keepState: true))
    let step = try #require(report.steps.last)
    return AddressMap(try #require(report.state), title: "private-mmio-td (variant reviewed), after step 15 of 23",
                      caption: "\(step.location): \(step.text)").svg
  }

  /// Set PMMIO_UPDATE_GOLDEN=1 to rewrite the golden file after a deliberate change, then review its diff.
  @Test func defaultScenarioMatchesTheGoldenFile() throws {
    let svg = try Self.defaultMap()
    if ProcessInfo.processInfo.environment["PMMIO_UPDATE_GOLDEN"] == "1" {
      try svg.write(to: Self.golden, atomically: false, encoding: .utf8)
    }
    let expected = try String(contentsOf: Self.golden, encoding: .utf8)
    #expect(svg == expected, "the SVG changed; if that is intended, rerun with PMMIO_UPDATE_GOLDEN=1 and review the diff")
  }

  @Test func theMapIsWellFormedAndNamesWhatItDraws() throws {
    let svg = try Self.defaultMap()
    let document = try XMLDocument(data: Data(svg.utf8))
    #expect(document.rootElement()?.name == "svg")
    #expect(svg.contains("nic0 BAR0  64-bit  2 MiB"))
    #expect(svg.contains("0x80000000  8 KiB  MMIO_MAPPED -&gt; 0x4000000000"))
    #expect(svg.contains("marker-end=\"url(#arrow)\""))
  }

  @Test func anEmptyMachineStillDraws() {
    let svg = AddressMap(MachineState(variant: "reviewed"), title: "empty").svg
    #expect(svg.contains(">no BARs</text>") && svg.contains(">no VMs</text>"))
  }

  @Test func namesAreEscaped() {
    var state = MachineState(variant: "reviewed")
    state.devices = [MachineState.Device(name: "a<b&c", id: 1, command: 0, memoryDecode: false, busMaster: false, power: "D0",
                                         tdi: nil, openCount: 0, binding: nil,
                                         bars: [MachineState.BAR(index: 0, base: 0x1000, size: 0x1000, is64Bit: true, prefetchable: true)],
                                         dmabufs: [], hostMappings: [], registrations: 1, resetsUnderLiveImport: 0)]
    let svg = AddressMap(state, title: "\"quoted\"").svg
    #expect(svg.contains("a&lt;b&amp;c BAR0"))
    #expect(!svg.contains("a<b"))
  }

  /// A headless Chromium or Firefox from the system's packages (`apt-get install chromium`).
  static let browser: (path: String, kind: String)? = {
    let candidates = [("/usr/bin/chromium", "chromium"), ("/usr/bin/chromium-browser", "chromium"),
                      ("/usr/bin/google-chrome", "chromium"), ("/usr/bin/firefox", "firefox"), ("/usr/bin/firefox-esr", "firefox")]
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0.0) }.map { (path: $0.0, kind: $0.1) }
  }()

  @Test("a real browser draws the default map, and the picture is not blank",
        .enabled(if: browser != nil, "no headless browser here: install one with apt-get install chromium"),
        .timeLimit(.minutes(2)))
  func browserRendersIt() throws {
    let browser = try #require(Self.browser)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pmmio-svg-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let svgURL = dir.appendingPathComponent("map.svg"), pngURL = dir.appendingPathComponent("map.png")
    try Self.defaultMap().write(to: svgURL, atomically: false, encoding: .utf8)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: browser.path)
    process.arguments = browser.kind == "chromium"
      ? ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--user-data-dir=\(dir.path)/profile",
         "--window-size=1400,700", "--screenshot=\(pngURL.path)", svgURL.absoluteString]
      : ["--headless", "--profile", dir.appendingPathComponent("profile").path, "--window-size=1400,700",
         "--screenshot", pngURL.path, svgURL.absoluteString]
    process.environment = ["HOME": dir.path, "PATH": "/usr/bin:/bin"]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    #expect(process.terminationStatus == 0)
    let image = try PNGImage(Array(try Data(contentsOf: pngURL)))
    #expect(image.width == 1400 && image.height == 700)
    // Boxes, text and arrows: thousands of pixels that are not white, in several colours.
    #expect(image.nonWhitePixels > 5_000, "only \(image.nonWhitePixels) non-white pixels")
    #expect(image.colours > 8)
  }
}
