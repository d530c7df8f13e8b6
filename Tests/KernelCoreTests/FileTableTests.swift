import Testing
@testable import KernelCore

/// `alloc_fd()`'s `next_fd`: the lowest free fd is found without scanning from fd 3 each time,
/// and the hint never shows in the table's value.
@Suite struct FileTableAllocationTests {
  @Test func openingNFilesScansEachSlotOnce() throws {
    var table = FileTable<Int>()
    let n = Int(FileTable<Int>.limit) - 3
    for i in 0..<n { #expect(try table.install(i) == FD(Int32(3 + i))) }
    // One slot looked at per install: linear, where a scan from fd 3 was n²/2 (≈ 520,000 here).
    #expect(table.slotsScanned == n)
    #expect(throws: Errno.EMFILE) { try table.install(-1) }
  }

  @Test func aClosedFdIsReusedFirstAndTheScanResumesAboveIt() throws {
    var table = FileTable<Int>()
    for i in 0..<100 { _ = try table.install(i) }
    _ = try table.remove(FD(50))
    _ = try table.remove(FD(20))
    let before = table.slotsScanned
    #expect(try table.install(1000) == FD(20))
    #expect(try table.install(1001) == FD(50))
    #expect(try table.install(1002) == FD(103))
    // 1 + (21...50: 30 slots) + (51...103: 53 slots): never back from fd 3.
    #expect(table.slotsScanned - before == 1 + 30 + 53)
  }

  @Test func theHintIsNotPartOfTheValue() throws {
    var a = FileTable<Int>(), b = FileTable<Int>()
    _ = try a.install(7)
    _ = try a.install(8)
    _ = try a.remove(FD(4))
    _ = try b.install(7)
    #expect(a == b)
    #expect(a.hashValue == b.hashValue)
    // Both hand out fd 4 next, whatever their history.
    #expect(try a.install(9) == b.install(9))
  }

  @Test func emfileSaysWhy() throws {
    var table = FileTable<Int>()
    for i in 0..<Int(FileTable<Int>.limit - 3) { _ = try table.install(i) }
    do { _ = try table.install(0); Issue.record("installed past the limit") } catch {
      #expect(error == .EMFILE)
      #expect(error.reason?.description
              == "alloc_fd: every fd below the process's limit of 1024 (RLIMIT_NOFILE) is open: 1021 files and the 3 standard streams")
    }
  }
}
