import Testing
import KernelCore
@testable import Platform

/// An ioctl on an fd of another kind is answered by that file's own handler:
/// - `drivers/vfio/vfio_main.c` `vfio_device_fops_unl_ioctl()`: `if (!smp_load_acquire(
///   &df->access_granted)) return -EINVAL;` before the command, for all but BIND; once bound,
///   `default:` -> `device->ops->ioctl` = `vfio_pci_core_ioctl()`, `default: return -ENOTTY;`
/// - `drivers/dma-buf/dma-buf.c` `dma_buf_ioctl()`: `default: return -ENOTTY;`
/// - `virt/kvm/kvm_main.c` `kvm_vm_ioctl()` -> `kvm_arch_vm_ioctl()`: `default: r = -ENOTTY;`
/// - `virt/kvm/guest_memfd.c` `kvm_gmem_fops` has no `.unlocked_ioctl`: `fs/ioctl.c`
///   `vfs_ioctl()`: `if (!filp->f_op->unlocked_ioctl) goto out;` with `error = -ENOTTY`.
@Suite struct WrongFileIoctlTests {
  enum Target: String, CaseIterable, Sendable { case vmIoctl, vfioIoctl }
  enum Actual: String, CaseIterable, Sendable { case unboundVFIO, boundVFIO, dmaBuf, vm, guestMemfd }

  static let arguments: [(Target, Actual)] = Target.allCases.flatMap { t in Actual.allCases.map { (t, $0) } }

  @Test(arguments: arguments)
  func theActualFilesHandlerAnswers(_ target: Target, _ actual: Actual) throws {
    var bench = try Bench(.reviewed)
    let fd: FD
    switch actual {
    case .unboundVFIO: fd = try bench.fd(.vfioOpen(device: "nic0"))
    case .boundVFIO: fd = try bench.openDevice(private: false)
    case .dmaBuf: fd = try bench.exportBAR0(try bench.openDevice(private: false))
    case .vm: fd = bench.plain
    case .guestMemfd: fd = try bench.fd(.kvmCreateGuestMemfd(vm: bench.td, size: 0x1000, flags: 0))
    }
    let op: Operation = switch target {
    case .vmIoctl: .kvmCreateVCPU(vm: fd, id: 7)
    case .vfioIoctl: .vfioRegionInfo(fd: fd, regionIndex: 0)
    }
    let expected: (Errno, String)? = switch (target, actual) {
    case (.vmIoctl, .vm), (.vfioIoctl, .boundVFIO): nil   // the right file: the op succeeds
    case (.vmIoctl, .unboundVFIO): (.EINVAL, "vfio_device_fops_unl_ioctl")
    // The right kind of file, not bound: the same check, named by the model's shared helper.
    case (.vfioIoctl, .unboundVFIO): (.EINVAL, "vfio_device_fops_unl_ioctl")
    case (.vmIoctl, .boundVFIO): (.ENOTTY, "vfio_pci_core_ioctl")
    case (_, .dmaBuf): (.ENOTTY, "dma_buf_ioctl")
    case (.vfioIoctl, .vm): (.ENOTTY, "kvm_vm_ioctl")
    case (_, .guestMemfd): (.ENOTTY, "vfs_ioctl")
    }
    let before = bench.machine
    let result = bench.machine.perform(op)
    guard let expected else {
      guard case .success = result else { Issue.record("\(op) failed: \(result)"); return }
      return
    }
    #expect(result == .failure(.errno(expected.0)))
    #expect(result.failureReason?.function == expected.1)
    var after = bench.machine
    after.trace = before.trace
    #expect(after == before)
  }
}
