import CReferenceVMM
import KernelCore

/// The guest both VMMs run: 32-bit protected mode, flat segments, no paging. Each iteration reads
/// BAR register 0 and writes the iterations left into register 2; it counts reads that return
/// all-ones (device gone) and reads that return the sentinel (revoked backing reached: must never
/// happen), stops after `allOnesToStop` all-ones reads, reports both counts with `OUT` and halts.
///
/// In: ESI = BAR GPA, ECX = iterations, EDX = sentinel, EBX = EBP = 0.
public enum GuestProgram {
  public static let code: [UInt8] = [
    0x8B, 0x06,  //  0: mov eax, [esi]      read BAR register 0
    0x39, 0xD0,  //  2: cmp eax, edx        the sentinel?
    0x75, 0x01,  //  4: jne 7
    0x45,  //  6: inc ebp
    0x83, 0xF8, 0xFF,  //  7: cmp eax, -1         all-ones?
    0x75, 0x01,  // 10: jne 13
    0x43,  // 12: inc ebx
    0x89, 0x4E, 0x08,  // 13: mov [esi+8], ecx    register 2 := iterations left
    0x83, 0xFB, 0x10,  // 16: cmp ebx, 16         enough all-ones reads
    0x73, 0x03,  // 19: jae 24
    0x49,  // 21: dec ecx
    0x75, 0xE8,  // 22: jnz 0
    0x89, 0xD8,  // 24: mov eax, ebx
    0xE7, 0x10,  // 26: out 0x10, eax       all-ones reads
    0x89, 0xE8,  // 28: mov eax, ebp
    0xE7, 0x11,  // 30: out 0x11, eax       sentinel reads
    0xF4,  // 32: hlt
  ]

  /// Where the code is loaded; the RAM slot is `ramSize` bytes at GPA 0.
  public static let codeGPA = GPA(RVMM_CODE_GPA)
  public static let ramSize = UInt64(RVMM_RAM_SIZE)
  /// The BAR: no memslot until the first access.
  public static let barGPA = GPA(RVMM_BAR_GPA)
  public static let barSize = UInt64(RVMM_BAR_SIZE)
  /// Register 0 reads this while the buffer is live.
  public static let registerValue = UInt32(RVMM_REGISTER_VALUE)
  public static let sentinel = UInt32(RVMM_SENTINEL)
  public static let reportPort = UInt16(RVMM_REPORT_PORT)
  public static let allOnesToStop = UInt32(RVMM_ALLONES_TO_STOP)
  /// Iterations the revoke run may loop after the revoke point before the guest gives up.
  public static let revokeBound = UInt64(RVMM_REVOKE_BOUND)
  /// Byte offset of register 2, the countdown the guest writes.
  public static let countdownOffset: UInt64 = 8
}
