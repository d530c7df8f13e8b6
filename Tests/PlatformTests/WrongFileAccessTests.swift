import Testing
import KernelCore
import VFIO
@testable import Platform

/// A pread, pwrite or mmap meant for a VFIO device, on a file of another kind. The model's other
/// files are anonymous-inode files (dma-buf, KVM VM, guest_memfd): `ksys_pread64()` and
/// `ksys_pwrite64()` answer ESPIPE, as they have no FMODE_PREAD/FMODE_PWRITE; an mmap runs the
/// file's own mmap. Checked on this machine's Linux 6.18: on a KVM VM fd and on a guest_memfd,
/// pread and pwrite fail ESPIPE and mmap fails ENODEV.
@Suite struct WrongFileAccessTests {
  enum Kind: String, CaseIterable, Sendable { case dmaBuf, vm, gmem, gmemMmap }
  enum Access: String, CaseIterable, Sendable { case read, write, configWrite, mmap }

  static func expected(_ kind: Kind, _ access: Access) -> (Errno, String)? {
    switch (access, kind) {
    case (.read, _): (.ESPIPE, "ksys_pread64")
    case (.write, _), (.configWrite, _): (.ESPIPE, "ksys_pwrite64")
    case (.mmap, .vm): (.ENODEV, "do_mmap")
    case (.mmap, .gmem): (.ENODEV, "kvm_gmem_mmap")
    case (.mmap, .dmaBuf): (.EINVAL, "dma_buf_mmap_internal")
    case (.mmap, .gmemMmap): nil  // kvm_gmem_mmap() maps a file created with GUEST_MEMFD_FLAG_MMAP
    }
  }

  @Test(arguments: Kind.allCases, Access.allCases)
  func theOtherFileAnswers(kind: Kind, access: Access) throws {
    var bench = try Bench()
    let fd: FD
    switch kind {
    case .dmaBuf: fd = try bench.exportBAR0(try bench.openDevice(private: false))
    case .vm: fd = bench.plain
    case .gmem: fd = try bench.fd(.kvmCreateGuestMemfd(vm: bench.plain, size: 0x10000, flags: 0))
    case .gmemMmap: fd = try bench.fd(.kvmCreateGuestMemfd(vm: bench.plain, size: 0x10000, flags: 1))
    }
    let op: Operation = switch access {
    case .read: .vfioRead(fd: fd, regionIndex: 0, offset: 0, size: 4)
    case .write: .vfioWrite(fd: fd, regionIndex: 0, offset: 0, size: 4)
    case .configWrite: .vfioSetMemoryDecode(fd: fd, enable: false)
    case .mmap: .vfioMmap(fd: fd, regionIndex: 0)
    }
    let before = bench.machine
    let result = bench.machine.perform(op)
    guard let (errno, function) = Self.expected(kind, access) else {
      #expect(result == .success(.none))
      return
    }
    #expect(result == .failure(.errno(errno)))
    #expect(result.failureReason?.function == function)
    #expect(bench.machine == before)
  }
}
