// One work in a loop, for a profiler: `perf record -g .build/release/profile fault-default`
// or `valgrind --tool=callgrind .build/release/profile fault-td 20000`.
import CFloor
#if canImport(Glibc)
import Glibc
#endif
import KernelCore
import KVM
import Platform
import Rigs

let usage = "usage: profile fault-default|fault-td|fault-c|fault-td-c|zap-td|snapshot|mmu-map|mmu-zap|mmu-snapshot [COUNT]"
let args = CommandLine.arguments.dropFirst()
guard let work = args.first else { print(usage); exit(2) }
let count = args.dropFirst().first.flatMap { UInt64($0) } ?? (1 << 18)

func run() throws {
  let start = ContinuousClock.now
  var ops = count
  switch work {
  case "fault-default", "fault-td":
    let rig = try Rig(td: work == "fault-td", barSize: Size.gib, gpaSkew: pageSize)
    var m = rig.machine
    try Rig.touchAll(&m, rig, 0 ..< min(count, Size.gib >> 12))
    ops = min(count, Size.gib >> 12)
  case "fault-c", "fault-td-c":
    let rig = CRig(td: work == "fault-td-c", barSize: Size.gib, gpaSkew: pageSize)
    let vm = rig.make()
    try rig.touchAll(vm, 0 ..< min(count, Size.gib >> 12))
    ops = min(count, Size.gib >> 12)
    cf_vm_destroy(vm)
  case "zap-td":
    // A TD's BAR of COUNT pages (rounded up to 2 MiB) mapped and accepted, then one revoke
    // (TDISP stop): the Secure-EPT zap blocks, tracks, kicks and unmaps every page.
    let bytes = (count * pageSize + Size.mib2 - 1) & ~(Size.mib2 - 1)
    let rig = try Rig(td: true, barSize: bytes, gpaSkew: pageSize)
    var m = rig.machine
    try Rig.touchAll(&m, rig, 0 ..< bytes >> 12)
    let mapped = ContinuousClock.now
    print("mapped in \(mapped - start)")
    try Rig.revoke(&m, rig)
    guard Rig.mappedPages(m) == 0 else { throw RigError("still mapped: \(Rig.mappedPages(m))") }
    ops = bytes >> 12
    print("zapped in \(ContinuousClock.now - mapped)")
  case "snapshot":
    var rig = try Rig(td: false, barSize: Size.gib, gpaSkew: pageSize)
    try Rig.touchAll(&rig.machine, rig, 0 ..< (Size.gib >> 12) - 1)
    for _ in 0 ..< count {
      var copy = rig.machine
      guard Rig.touch(&copy, rig, page: (Size.gib >> 12) - 1) else { throw RigError("step failed") }
    }
  case "mmu-map", "mmu-zap":
    // The MMU alone: COUNT 4 KiB maps (in place), then for mmu-zap one zap of them all.
    var mmu = TDPMMU()
    for i in 0 ..< count {
      try mmu.map(GFN((1 << 24) + i), level: .level4K,
                  spte: SPTE(pfn: PFN(0x400_0000 + i), level: .level4K, writable: true, executable: true, mmio: true))
    }
    if work == "mmu-zap" {
      let mapped = ContinuousClock.now
      print("mapped in \(mapped - start)")
      mmu.zap(GFN(1 << 24) ..< GFN((1 << 24) + count))
    }
    guard mmu.mappedPages == (work == "mmu-map" ? count : 0) else { throw RigError("mmu has \(mmu.mappedPages)") }
  case "mmu-snapshot":
    // The MMU alone: 1 GiB mapped at 4 KiB but its last page, then COUNT times a copy and
    // one map on the copy.
    var mmu = TDPMMU()
    let pages = Size.gib >> 12
    func spte(_ i: UInt64) -> SPTE { SPTE(pfn: PFN(0x400_0000 + i), level: .level4K, writable: true, executable: true, mmio: true) }
    for i in 0 ..< pages - 1 { try mmu.map(GFN((1 << 24) + i), level: .level4K, spte: spte(i)) }
    let mapped = ContinuousClock.now
    print("mapped in \(mapped - start)")
    for _ in 0 ..< count {
      var copy = mmu
      try copy.map(GFN((1 << 24) + pages - 1), level: .level4K, spte: spte(pages - 1))
      guard copy.mappedPages == pages else { throw RigError("copy has \(copy.mappedPages)") }
    }
    print("steps in \(ContinuousClock.now - mapped)")
  default:
    print(usage); exit(2)
  }
  let elapsed = ContinuousClock.now - start
  print("\(work): \(ops) ops in \(elapsed)")
}

do { try run() } catch { print("error: \(error)"); exit(1) }
