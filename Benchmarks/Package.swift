// swift-tools-version: 6.1
// Benchmarks of the PrivateMMIO model beside a plain-C floor: the same work written as a
// competent C programmer would. Run with `swift package --package-path Benchmarks benchmark`.
import PackageDescription

let package = Package(
  name: "PrivateMMIOBenchmarks",
  platforms: [.macOS(.v15)],
  dependencies: [
    .package(name: "PrivateMMIO", path: ".."),
    // The default traits need a runtime-interposer library this machine lacks.
    .package(url: "https://github.com/ordo-one/benchmark.git", exact: "1.38.1", traits: ["MallocInterposer"]),
  ],
  targets: [
    // The C floor: memslot lookup, exporter offset -> PFN, a 4-level 512-ary radix, SEPT states.
    .target(name: "CFloor", path: "Sources/CFloor"),
    // Machines set up as the default scenario does, and their C twins.
    .target(name: "Rigs", dependencies: ["CFloor", .product(name: "PrivateMMIO", package: "PrivateMMIO")],
            path: "Sources/Rigs"),
    // `swift run -c release --package-path Benchmarks profile WORK [COUNT]`: one work in a loop,
    // for perf or callgrind.
    .executableTarget(name: "profile", dependencies: ["Rigs", "CFloor", .product(name: "PrivateMMIO", package: "PrivateMMIO")],
                      path: "Sources/Profile"),
    .executableTarget(
      name: "ModelBenchmarks",
      dependencies: [
        "CFloor",
        "Rigs",
        .product(name: "PrivateMMIO", package: "PrivateMMIO"),
        .product(name: "Benchmark", package: "benchmark"),
      ],
      path: "Benchmarks/ModelBenchmarks",
      plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
    ),
  ]
)
