import KernelCore

extension Machine {
  /// The function whose `fdget()` looks up the fd of an operation that reaches a file through
  /// `use`: the ioctl syscall, `pread`/`pwrite` (a region access, a config write), `mmap`. An
  /// fd that is not open fails there (`EBADF`, with this function in the reason), before the
  /// file's kind is looked at; a function that takes an fd as an argument names its own
  /// `fget()` (`dma_buf_get`, `kvm_gmem_bind`, `iommufd_ctx_from_fd`).
  static func entry(_ use: FileUse) -> StaticString {
    switch use {
    case .ioctl, .other: "sys_ioctl"
    case .positional(let write): write ? "ksys_pwrite64" : "ksys_pread64"
    case .mmap: "ksys_mmap_pgoff"
    }
  }
}
