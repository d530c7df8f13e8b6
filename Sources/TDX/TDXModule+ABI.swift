import KernelCore

/// The register-level ABI: SEAMCALL and TDCALL as the CPU delivers them, leaf in RAX and
/// arguments in RCX, RDX, R8, R9 (`args[0]`, `args[1]`, … ; missing registers read as zero).
///
/// Register layouts are the module's (handler signatures in `include/tdxio/
/// tdxio_vmm_api_handlers.h` and the `tdh_*.c` / `tdg_*.c` handlers at commit `6e66b9d2`); the
/// model's handles stand where the ABI passes the HPA of a control page (TDR, TDVPR):
///
/// | leaf | RCX | RDX | R8 | R9 | output |
/// |---|---|---|---|---|---|
/// | TDH.VP.ENTER 0 | TDVPR: TD handle << 32 \| vCPU index | | | | — |
/// | TDH.MNG.CREATE 9 | vCPU count | | | | TD handle (model) |
/// | TDH.MEM.TRACK 38 | TDR (TD handle) | | | | — |
/// | TDH.DEVIF.CREATE 137 | DEVIF id: function id in 63:32, type in 31:24 (0 = PF/VF) | TDR | DEVIFCS page | TD TDISP buffer (R10: VMM buffer) | — |
/// | TDH.DEVIF.REMOVE 138 | function id (63:32 reserved) | | | | RCX, RDX buffers (0 in the model), R8 TDR |
/// | TDH.MMIO.MT.ADD 154 | MMIOMT index (level 2:0, address 51:12) | new 4 KiB table page | | | — |
/// | TDH.MMIO.MT.SET 155 | MMIOMT index | set info: type 1:0, function id 43:12 | | | — |
/// | TDH.MMIO.MAP 158 | GPA \| level | TDR | MMIO HPA | | — |
/// | TDH.MMIO.BLOCK 159 | GPA \| level | TDR | | | — |
/// | TDH.MMIO.UNMAP 160 | GPA \| level | TDR | | | R8: the HPA that was mapped |
/// | TDG.MMIO.ACCEPT 71 (TDCALL) | GPA \| level | MMIO offset (host address + the TD's reporting offset) | | | 0 accepted, 1 EPT-violation exit (model) |
///
/// "GPA | level" is `page_info_api_input_t`: level in bits 2:0 (0 = 4K, 1 = 2M, 2 = 1G),
/// bits 11:3 reserved (zero), GPA in bits 51:12, bits 63:52 reserved. A TDR or TDVPR handle of
/// 0, or one past 32 bits, names nothing. The DEVIFCS page and the TDISP buffers (R8 ... R10 of
/// DEVIF.CREATE) are not modelled: the model keeps no PAMT. A leaf the model does not implement
/// fails `TDX_OPERAND_INVALID` with operand RAX, as the module answers an unsupported leaf.
extension TDXModule {
  /// Executes SEAMCALL `leaf` with register arguments `args`.
  /// - Returns: the output registers on `TDX_SUCCESS`, else the status.
  public mutating func seamcall(leaf: UInt64, args: [UInt64]) -> Result<[UInt64], TDXStatus> {
    do throws(TDXStatus) {
      return .success(try decodeSeamcall(SeamcallLeaf(rawValue: leaf), Registers(args)))
    } catch {
      return .failure(error)
    }
  }

  /// Executes TDCALL `leaf` with register arguments `args`, issued by vCPU `vcpu` of `td`.
  /// - Returns: the output registers on success, else the status.
  public mutating func tdcall(td: TDID, vcpu: UInt32, leaf: UInt64, args: [UInt64]) -> Result<[UInt64], TDXStatus> {
    do throws(TDXStatus) {
      let r = Registers(args)
      guard TdcallLeaf(rawValue: leaf) == .mmioAccept else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rax)
          .because("tdx_td_dispatcher", "TDCALL leaf \(leaf) is not supported")
      }
      let (gpa, level) = try r.gpaAndLevel()
      let offset = tds[td]?.mmioReportingOffset ?? 0
      switch try tdgMMIOAccept(td: td, vcpu: vcpu, gpa: gpa, level: level, expectedHPA: HPA(r.rdx &- offset)) {
      case .accepted: return .success([0])
      case .eptViolation: return .success([1])
      }
    } catch {
      return .failure(error)
    }
  }

  mutating func decodeSeamcall(_ leaf: SeamcallLeaf, _ r: Registers) throws(TDXStatus) -> [UInt64] {
    switch leaf {
    case .vpEnter:
      let td = try Registers.handle(r.rcx >> 32, TDTag.self, operand: TDXOperand.rcx, leaf: "TDH.VP.ENTER")
      try tdhVPEnter(td: td, vcpu: UInt32(truncatingIfNeeded: r.rcx))
      return []
    case .mngCreate:
      guard r.rcx <= UInt64(UInt32.max) else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
          .because("TDH.MNG.CREATE", "RCX 0x\(String(r.rcx, radix: 16)) is not a vCPU count (above 32 bits)")
      }
      return [UInt64(try tdhMngCreate(vcpuCount: UInt32(r.rcx)).rawValue)]
    case .memTrack:
      try tdhMemTrack(td: try Registers.handle(r.rcx, TDTag.self, operand: TDXOperand.rcx, leaf: "TDH.MEM.TRACK"))
      return []
    case .devifCreate:
      let td = try Registers.handle(r.rdx, TDTag.self, operand: TDXOperand.rdx, leaf: "TDH.DEVIF.CREATE")
      guard r.rcx & 0xFF00_0000 == 0 else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx).because("TDH.DEVIF.CREATE", "devif_type is not DEVIF_TYPE_PFVF")
      }
      _ = try tdhDevifCreate(td: td, interface: DeviceInterfaceID(UInt32(truncatingIfNeeded: r.rcx >> 32)))
      return []
    case .devifRemove:
      guard r.rcx >> 32 == 0 else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx).because("TDH.DEVIF.REMOVE", "function_id_reg reserved bits set")
      }
      let interface = DeviceInterfaceID(UInt32(r.rcx))
      guard let devif = devif(for: interface) else {
        throw TDXStatus.devifmtNotPresent.with(operand: TDXOperand.rcx).because("TDH.DEVIF.REMOVE", "no DEVIF for \(interface)")
      }
      let td = devifs[devif]!.td
      try tdhDevifRemove(devif: devif)
      return [0, 0, UInt64(td.rawValue)]
    case .mmioMTAdd:
      guard let index = MMIOMTIndex(rawValue: r.rcx) else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx).because("TDH.MMIO.MT.ADD", "Invalid mmiomt_idx: reserved bits")
      }
      try tdhMMIOMTAdd(index: index, page: HPA(r.rdx))
      return []
    case .mmioMTSet:
      guard let index = MMIOMTIndex(rawValue: r.rcx) else {
        throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx).because("TDH.MMIO.MT.SET", "MMIOMT index is not valid")
      }
      // The set info (RDX) is verified after the MMIOMT walk, as tdh_mmio_mt_set.c does.
      try tdhMMIOMTSet(index: index, setInfo: MMIOMTSetInfo(rawValue: r.rdx))
      return []
    case .mmioMap:
      let (gpa, level) = try r.gpaAndLevel()
      let td = try Registers.handle(r.rdx, TDTag.self, operand: TDXOperand.rdx, leaf: "TDH.MMIO.MAP")
      try tdhMMIOMap(td: td, gpa: gpa, level: level, hpa: HPA(r.r8))
      return []
    case .mmioBlock:
      let (gpa, level) = try r.gpaAndLevel()
      try tdhMMIOBlock(td: try Registers.handle(r.rdx, TDTag.self, operand: TDXOperand.rdx, leaf: "TDH.MMIO.BLOCK"), gpa: gpa, level: level)
      return []
    case .mmioUnmap:
      let (gpa, level) = try r.gpaAndLevel()
      let hpa = try tdhMMIOUnmap(td: try Registers.handle(r.rdx, TDTag.self, operand: TDXOperand.rdx, leaf: "TDH.MMIO.UNMAP"),
                                 gpa: gpa, level: level)
      return [hpa.rawValue]
    default:
      trace.emit(.tdxSeamcall, "\(leaf) -> TDX_OPERAND_INVALID (leaf not supported)",
                 [.text("leaf", "\(leaf)"), .text("status", TDXStatus.operandInvalid.name), .hex("operand", UInt64(TDXOperand.rax))])
      throw TDXStatus.operandInvalid.with(operand: TDXOperand.rax)
        .because("tdx_vmm_dispatcher", "SEAMCALL leaf \(leaf.rawValue) is not supported")
    }
  }
}

/// The argument registers of one call.
struct Registers {
  let rcx, rdx, r8, r9: UInt64
  init(_ args: [UInt64]) {
    func reg(_ i: Int) -> UInt64 { i < args.count ? args[i] : 0 }
    rcx = reg(0); rdx = reg(1); r8 = reg(2); r9 = reg(3)
  }

  /// RCX as Secure-EPT mapping info (`page_info_api_input_t`): GPA in bits 51:12, level in
  /// bits 2:0 (4K ... 1G), the rest reserved.
  func gpaAndLevel() throws(TDXStatus) -> (GPA, SEPTLevel) {
    let reserved: UInt64 = 0xFFF0_0000_0000_0FF8
    guard rcx & reserved == 0, let level = SEPTLevel(rawValue: UInt8(rcx & 0x7)) else {
      throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
        .because("verify_page_info_input", "reserved bits or level above LVL_PDPT in 0x\(String(rcx, radix: 16))")
    }
    return (GPA(rcx & ~0xFFF), level)
  }

  /// A register holding an object handle: non-zero and within 32 bits (the model's stand-in
  /// for the HPA of a TDR or TDVPR page, which `check_lock_and_map_explicit_tdr()` checks).
  static func handle<Tag>(_ value: UInt64, _: Tag.Type, operand: UInt32, leaf: StaticString) throws(TDXStatus) -> ObjectID<Tag> {
    guard value != 0, value <= UInt64(UInt32.max) else {
      throw TDXStatus.operandInvalid.with(operand: operand)
        .because(leaf, "check_lock_and_map_explicit_tdr: 0x\(String(value, radix: 16)) names no TDR page (0, or past 32 bits)")
    }
    return ObjectID<Tag>(UInt32(value))
  }
}
