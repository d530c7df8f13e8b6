// swift-tools-version: 6.1
// PrivateMMIO: an executable, uAPI-faithful model of the Linux private-MMIO stack
// (VFIO-PCI dma-buf export, KVM dma-buf memslots and TDP MMU, TDX Secure-EPT MMIO).
import PackageDescription

let collections: Target.Dependency = .product(name: "HashTreeCollections", package: "swift-collections")

let package = Package(
  name: "PrivateMMIO",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "pmmio", targets: ["pmmio"]),
    .library(name: "PrivateMMIO", targets: ["Platform", "Scenarios", "Explorer", "Fuzz"]),
    .library(name: "HostKVM", targets: ["HostKVM"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
  ],
  targets: [
    // Subsystems, arrows as in the kernel: VFIO -> PCI, DmaBuf; KVM -> DmaBuf, TDX (via protocols).
    .target(name: "KernelCore", dependencies: [collections]),
    .target(name: "PCI", dependencies: ["KernelCore"]),
    .target(name: "DmaBuf", dependencies: ["KernelCore", collections]),
    .target(name: "VFIO", dependencies: ["KernelCore", "PCI", "DmaBuf", collections]),
    .target(name: "TDX", dependencies: ["KernelCore", collections]),
    .target(name: "KVM", dependencies: ["KernelCore", "DmaBuf", collections]),
    .target(name: "Platform", dependencies: ["KernelCore", "PCI", "DmaBuf", "VFIO", "TDX", "KVM", collections]),
    // What a machine looks like (text, JSON, SVG) and where outputs are written.
    .target(name: "Reports", dependencies: ["KernelCore", "PCI", "DmaBuf", "VFIO", "TDX", "KVM", "Platform"]),
    .target(name: "Scenarios", dependencies: ["KernelCore", "DmaBuf", "KVM", "Platform", "Reports", .product(name: "Yams", package: "Yams")]),
    // Real /dev/kvm: a C shim for the ioctl numbers Swift cannot import, and a plain-C reference VMM
    // that runs the same guest in the same process, so figures are compared side by side.
    .target(name: "CKVMShim", path: "Sources/CKVMShim"),
    .target(name: "CReferenceVMM", dependencies: ["CKVMShim"], path: "Sources/CReferenceVMM"),
    .target(name: "HostKVM", dependencies: ["KernelCore", "DmaBuf", "KVM", "Platform", "CKVMShim", "CReferenceVMM"]),
    // The interleaving explorer: every schedule of a scenario's concurrent paths.
    .target(name: "Explorer", dependencies: ["KernelCore", "Platform", "Scenarios",
                                             .product(name: "DequeModule", package: "swift-collections")]),
    // pmmio fuzz: random op sequences with shrinking, and the running kernel's KVM as an oracle.
    .target(name: "Fuzz", dependencies: ["KernelCore", "KVM", "TDX", "Platform", "Scenarios", "HostKVM"]),
    .executableTarget(name: "pmmio", dependencies: [
      "KernelCore", "Platform", "Scenarios", "Reports", "HostKVM", "Explorer", "Fuzz",
      .product(name: "ArgumentParser", package: "swift-argument-parser"),
    ]),

    .testTarget(name: "KernelCoreTests", dependencies: ["KernelCore"]),
    .testTarget(name: "PCITests", dependencies: ["KernelCore", "PCI"]),
    .testTarget(name: "DmaBufTests", dependencies: ["KernelCore", "DmaBuf"]),
    .testTarget(name: "VFIOTests", dependencies: ["KernelCore", "PCI", "DmaBuf", "VFIO"]),
    .testTarget(name: "TDXTests", dependencies: ["KernelCore", "TDX"]),
    .testTarget(name: "KVMTests", dependencies: ["KernelCore", "DmaBuf", "KVM"]),
    .testTarget(name: "PlatformTests", dependencies: ["KernelCore", "Platform", "PCI", "DmaBuf", "VFIO", "TDX", "KVM"]),
    .testTarget(name: "ScenariosTests", dependencies: ["KernelCore", "Platform", "Scenarios"]),
    // Golden/ holds the expected SVG; the test reads it by path.
    .testTarget(name: "ReportsTests", dependencies: ["KernelCore", "Platform", "Reports", "Scenarios"], exclude: ["Golden"]),
    .testTarget(name: "HostKVMTests", dependencies: ["KernelCore", "KVM", "Platform", "HostKVM"]),
    .testTarget(name: "ExplorerTests", dependencies: ["KernelCore", "Platform", "Scenarios", "Explorer"]),
    .testTarget(name: "FuzzTests", dependencies: ["KernelCore", "DmaBuf", "KVM", "Platform", "Scenarios", "HostKVM", "Fuzz", "pmmio"]),
    .testTarget(name: "pmmioTests", dependencies: ["pmmio", "Scenarios"]),
  ]
)
