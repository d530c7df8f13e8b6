import Testing
@testable import KernelCore

@Suite struct ErrnoTests {
  @Test(arguments: [("EPERM", 1), ("ENOENT", 2), ("EIO", 5), ("EBADF", 9), ("EAGAIN", 11),
                    ("EFAULT", 14), ("EBUSY", 16), ("EEXIST", 17), ("ENODEV", 19), ("EINVAL", 22),
                    ("EMFILE", 24), ("EOVERFLOW", 75), ("EOPNOTSUPP", 95)] as [(String, Int32)])
  func linuxValues(name: String, value: Int32) {
    #expect(Errno(name: name)?.rawValue == value)
    #expect(Errno(rawValue: value).name == name)
  }

  @Test func unknownNameIsNil() {
    #expect(Errno(name: "EWHATEVER") == nil)
    #expect(Errno(rawValue: 9999).name == "errno 9999")
  }
}

@Suite struct AddressTests {
  @Test func frameConversions() {
    #expect(GPA(0x8000_1234).gfn == GFN(0x80001))
    #expect(GFN(0x80001).gpa == GPA(0x8000_1000))
    #expect(HPA(0xfe00_0fff).pfn == PFN(0xfe000))
    #expect(PFN(0xfe000).hpa == HPA(0xfe00_0000))
    #expect(GPA(0x1000).isPageAligned && !GPA(0x1001).isPageAligned)
    #expect(GPA(0x20_0000).isAligned(to: 0x20_0000) && !GPA(0x1000).isAligned(to: 0x20_0000))
    #expect(HPA(0x1234).pageOffset == 0x234)
  }

  @Test func addingOverflowIsEOVERFLOW() throws {
    #expect(try GPA(0x1000).adding(0x1000) == GPA(0x2000))
    #expect(throws: Errno.EOVERFLOW) { try GPA(UInt64.max - 0xfff).adding(0x1000) }
    #expect(GPA(0x3000).offset(from: GPA(0x1000)) == 0x2000)
    #expect(GPA(0x1000).offset(from: GPA(0x3000)) == nil)
  }
}

@Suite struct FileTableTests {
  @Test func lowestFreeFromThree() throws {
    var table = FileTable<String>()
    let a = try table.install("a"), b = try table.install("b"), c = try table.install("c")
    #expect([a, b, c] == [FD(3), FD(4), FD(5)])
    #expect(try table.remove(b) == "b")
    #expect(try table.install("d") == FD(4))
    #expect(try table.install("e") == FD(6))
  }

  @Test(arguments: [FD(0), FD(3), FD(-1), FD(1000)])
  func unknownFdIsEBADF(fd: FD) {
    var table = FileTable<String>()
    #expect(throws: Errno.EBADF) { try table.lookup(fd) }
    #expect(throws: Errno.EBADF) { try table.remove(fd) }
  }

  @Test func closedFdIsEBADFAndTableIsCanonical() throws {
    var table = FileTable<String>()
    let fresh = table
    let fd = try table.install("x")
    _ = try table.remove(fd)
    #expect(throws: Errno.EBADF) { try table.lookup(fd) }
    #expect(table == fresh)
  }

  @Test func limitIsEMFILE() throws {
    var table = FileTable<Int>()
    for i in 3..<FileTable<Int>.limit { _ = try table.install(Int(i)) }
    #expect(throws: Errno.EMFILE) { try table.install(0) }
  }
}

@Suite struct LockTests {
  let a = ContextID(rawValue: 1), b = ContextID(rawValue: 2)

  @Test func mutexExclusion() throws {
    var m = KernelMutex("resv")
    #expect(try m.tryLock(a))
    #expect(try !m.tryLock(b))
    #expect(throws: LockViolation.self) { try m.tryLock(a) }
    #expect(throws: LockViolation.self) { try m.unlock(b) }
    #expect(throws: LockViolation.self) { try m.assertHeld(by: b) }
    try m.assertHeld(by: a)
    try m.unlock(a)
    #expect(!m.isLocked)
    #expect(throws: LockViolation.self) { try m.assertHeld(by: a) }
  }

  @Test func rwSemaphoreReadersAndWriter() throws {
    var s = KernelRWSemaphore("memory_lock")
    #expect(try s.tryLockRead(b))
    #expect(try s.tryLockRead(a))
    #expect(s.readers == [a, b])
    #expect(try !s.tryLockWrite(ContextID(rawValue: 3)))
    try s.assertHeld(by: a)
    #expect(throws: LockViolation.self) { try s.assertHeldWrite(by: a) }
    try s.unlock(a); try s.unlock(b)
    #expect(s.writeWait(for: a) == nil)
    #expect(try s.tryLockWrite(a))
    #expect(s.readWait(for: b) == .lock("memory_lock", write: false, heldBy: a))
    #expect(try !s.tryLockRead(b))
    try s.assertHeldWrite(by: a)
    try s.unlock(a)
    #expect(!s.isLocked)
  }
}

@Suite struct TraceTests {
  @Test func traceIsNotState() {
    var t1 = Trace(), t2 = Trace()
    t1.emit(.vfio, "revoke")
    #expect(t1 == t2)
    #expect(t1.events.count == 1)
    t2.isEnabled = false
    t2.emit(.vfio, "revoke")
    #expect(t2.events.isEmpty)
    #expect(t1.drain().map(\.description) == ["vfio: revoke"])
    #expect(t1.events.isEmpty)
  }
}

@Suite("Errno reasons")
struct ErrnoReasonTests {
  @Test("a reason is carried but takes no part in equality or hashing")
  func reasonIsAnObservation() {
    let plain = Errno.EINVAL
    let explained = Errno.EINVAL.because("__kvm_set_memory_region", "memory_size is not page aligned")
    #expect(plain == explained)
    #expect(plain.hashValue == explained.hashValue)
    #expect(plain.reason == nil)
    #expect(explained.reason?.description == "__kvm_set_memory_region: memory_size is not page aligned")
    #expect(explained != Errno.EEXIST.because("__kvm_set_memory_region", "memory_size is not page aligned"))
  }
}
