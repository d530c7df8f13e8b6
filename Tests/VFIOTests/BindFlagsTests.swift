import Testing
import KernelCore
import PCI
@testable import VFIO

/// `VFIO_DEVICE_BIND_IOMMUFD`'s flags in each kernel. `reviewed` is 6.19:
/// `include/uapi/linux/vfio.h` `#define VFIO_DEVICE_BIND_FLAG_TOKEN (1 << 0)` and
/// `drivers/vfio/device_cdev.c` `vfio_df_ioctl_bind_iommufd()`:
/// `const u32 VALID_FLAGS = VFIO_DEVICE_BIND_FLAG_TOKEN;` ... `if (bind.iommufd < 0 ||
/// bind.flags & ~VALID_FLAGS) return -EINVAL;`, then `df->access_granted`, then
/// `vfio_df_check_token()` -> `vfio_pci_core_match_token_uuid()`: `} else if (uuid) {
/// "VF token incorrectly provided, not a PF or VF"; return -EINVAL; }` (commit be2e70b96c3e).
/// `rfc-v1` is RFC patch 8 on 6.13: `if (bind.flags & ~(VFIO_DEVICE_BIND_IOMMUFD_PRIVATE))
/// return -EINVAL;` with `VFIO_DEVICE_BIND_IOMMUFD_PRIVATE (1 << 0)`.
@Suite struct BindFlagsTests {
  struct Case: Sendable, CustomTestStringConvertible {
    let variant: Variant, flags: UInt32
    /// `nil`: the bind succeeds; `isPrivate` then says how.
    let errno: Errno?, function: String?, isPrivate: Bool
    var testDescription: String { "\(variant) flags 0x\(String(flags, radix: 16))" }
  }
  static let cases: [Case] = [
    // RFC patch 8: bit 0 is PRIVATE; nothing else is valid.
    Case(variant: .rfcV1, flags: 0, errno: nil, function: nil, isPrivate: false),
    Case(variant: .rfcV1, flags: 1 << 0, errno: nil, function: nil, isPrivate: true),
    Case(variant: .rfcV1, flags: 1 << 1, errno: .EINVAL, function: "vfio_df_ioctl_bind_iommufd", isPrivate: false),
    // 6.19: bit 0 is TOKEN, past the flags check; the device is no VF and no PF with a VF
    // token, so vfio_pci_core_match_token_uuid() refuses the uuid.
    Case(variant: .reviewed, flags: 0, errno: nil, function: nil, isPrivate: false),
    Case(variant: .reviewed, flags: 1 << 0, errno: .EINVAL, function: "vfio_pci_core_match_token_uuid", isPrivate: false),
    Case(variant: .reviewed, flags: 1 << 0 | 1 << 1, errno: .EINVAL, function: "vfio_pci_core_match_token_uuid", isPrivate: false),
    // This model's VFIO_DEVICE_BIND_FLAG_PRIVATE, the next free bit.
    Case(variant: .reviewed, flags: 1 << 1, errno: nil, function: nil, isPrivate: true),
    Case(variant: .reviewed, flags: 1 << 2, errno: .EINVAL, function: "vfio_df_ioctl_bind_iommufd", isPrivate: false),
  ]

  @Test(arguments: cases)
  func flagsMeanWhatTheirKernelSays(_ c: Case) throws {
    var driver = VFIOPCIDriver(variant: c.variant)
    let function = try PCIFunction(name: "nic0", bars: [BAR(index: 0, size: 0x40_0000, base: HPA(0x40_0000_0000))], tdisp: true)
    let device = driver.registerDevice(function)
    var trace = Trace()
    let file = try driver.openCdev(device, trace: &trace)
    let before = driver
    do {
      try driver.bindIOMMUFD(file, flags: VFIOBindFlags(rawValue: c.flags), vm: VMID(1), trace: &trace)
      #expect(c.errno == nil)
      #expect(driver.devices[device]?.binding == VFIOBinding(isPrivate: c.isPrivate, vm: VMID(1)))
    } catch {
      #expect(error == c.errno)
      #expect(error.reason?.function == c.function)
      #expect(driver == before)
    }
  }

  /// 6.19 checks `df->access_granted` before `vfio_df_check_token()`: a TOKEN bind of a bound
  /// fd is refused as "bound twice".
  @Test func aBoundFileIsRefusedBeforeTheToken() throws {
    var driver = VFIOPCIDriver(variant: .reviewed)
    let device = driver.registerDevice(try PCIFunction(name: "nic0", bars: [BAR(index: 0, size: 0x40_0000, base: HPA(0x40_0000_0000))], tdisp: true))
    var trace = Trace()
    let file = try driver.openCdev(device, trace: &trace)
    try driver.bindIOMMUFD(file, flags: [], vm: nil, trace: &trace)
    #expect(throws: Errno.EINVAL) { try driver.bindIOMMUFD(file, flags: .token, vm: nil, trace: &trace) }
    do { try driver.bindIOMMUFD(file, flags: .token, vm: nil, trace: &trace) } catch {
      #expect(error.reason?.check.contains("df->access_granted") == true)
    }
  }

  @Test func theFlagValues() {
    #expect(VFIOBindFlags.token.rawValue == 1 << 0)
    #expect(VFIOBindFlags.rfcPrivate.rawValue == 1 << 0)
    #expect(VFIOBindFlags.reviewedPrivate.rawValue == 1 << 1)
    #expect(VFIOBindFlags.valid(.rfcV1).rawValue == 0x1)
    #expect(VFIOBindFlags.valid(.reviewed).rawValue == 0x3)
  }
}
