import KernelCore

extension Machine {
  /// `fd`, once the kernel function `function` has found a file open at it: the syscall's own
  /// `fdget()` (`sys_ioctl`, `ksys_pread64`, `ksys_mmap_pgoff` …), or the `fget()` of a
  /// function that takes an fd as an argument (`dma_buf_get`, `kvm_gmem_bind`). An fd that is
  /// not open fails there, before the file's kind is looked at.
  /// - Throws: `EBADF`, with `function` and the fd as the reason.
  func opened(_ fd: FD, by function: StaticString) throws(Errno) -> FD {
    guard files.isOpen(fd) else { throw Errno.EBADF.because(function, FileTable<OpenFile>.notOpen(fd)) }
    return fd
  }

  /// The function whose `fdget()` looks up the fd of an operation that reaches a file through
  /// `use`: the ioctl syscall, `pread`/`pwrite` (a region access, a config write), `mmap`.
  static func entry(_ use: FileUse) -> StaticString {
    switch use {
    case .ioctl, .other: "sys_ioctl"
    case .positional(let write): write ? "ksys_pwrite64" : "ksys_pread64"
    case .mmap: "ksys_mmap_pgoff"
    }
  }
}
