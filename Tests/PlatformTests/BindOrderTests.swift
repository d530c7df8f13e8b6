import Testing
import KernelCore
import VFIO
@testable import Platform

/// `vfio_df_ioctl_bind_iommufd()` (`drivers/vfio/device_cdev.c`) checks the flags,
/// `df->access_granted` and the token before `iommufd_ctx_from_fd(bind.iommufd)`: a second bind
/// is "bound twice" whatever fd it names, and a bad fd answers only on a first bind.
@Suite struct BindOrderTests {
  @Test func aSecondBindIsBoundTwiceBeforeItsFdIsLookedUp() throws {
    var bench = try Bench()
    let dev = try bench.fd(.vfioOpen(device: "nic0"))
    try bench.ok(.vfioBindIOMMUFD(fd: dev, private: true, vm: bench.td))
    let result = bench.machine.perform(.vfioBindIOMMUFD(fd: dev, private: true, vm: FD(99)))
    #expect(result == .failure(.errno(.EINVAL)))
    #expect(result.failureReason?.function == "vfio_df_ioctl_bind_iommufd")
  }

  @Test func aFirstBindWithAnFdThatIsNotOpenIsEBADF() throws {
    var bench = try Bench()
    let dev = try bench.fd(.vfioOpen(device: "nic0"))
    let before = bench.machine
    let result = bench.machine.perform(.vfioBindIOMMUFD(fd: dev, private: true, vm: FD(99)))
    #expect(result == .failure(.errno(.EBADF)))
    #expect(result.failureReason?.function == "iommufd_ctx_from_fd")
    #expect(bench.machine == before)
  }
}
