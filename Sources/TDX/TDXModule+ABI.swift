import KernelCore

/// The register-level ABI: SEAMCALL and TDCALL as the CPU delivers them, leaf in RAX and
/// arguments in RCX, RDX, R8, R9 (`args[0]`, `args[1]`, … ; missing registers read as zero).
///
/// Argument encoding, per leaf (the model's handles stand where the ABI passes the HPA of a
/// control page):
///
/// | leaf | RCX | RDX | R8 | R9 | output |
/// |---|---|---|---|---|---|
/// | TDH.VP.ENTER 0 | TDVPR: TD handle << 32 \| vCPU index | | | | — |
/// | TDH.MNG.CREATE 9 | vCPU count | | | | TD handle |
/// | TDH.MEM.TRACK 38 | TD handle (TDR) | | | | — |
/// | TDH.DEVIF.CREATE 137 | TD handle | routing id | | | DEVIF handle |
/// | TDH.DEVIF.REMOVE 138 | DEVIF handle | | | | — |
/// | TDH.MMIO.MT.ADD 154 | first HPA | DEVIF handle | page count | attributes | — |
/// | TDH.MMIO.MT.SET 155 | HPA | attributes | | | — |
/// | TDH.MMIO.MAP 158 | GPA \| level | TD handle | HPA | | — |
/// | TDH.MMIO.BLOCK 159 | GPA \| level | TD handle | | | — |
/// | TDH.MMIO.UNMAP 160 | GPA \| level | TD handle | | | HPA |
/// | TDG.MMIO.ACCEPT 71 (TDCALL) | GPA \| level | expected HPA | | | 0 accepted, 1 EPT-violation exit |
///
/// "GPA | level" is the Secure-EPT mapping-info format of TDH.MEM.PAGE.AUG: level in bits 2:0
/// (0 = 4K, 1 = 2M, 2 = 1G), bits 11:3 reserved (zero), GPA in bits 51:12, bits 63:52
/// reserved. A handle of 0, or one past 32 bits, names nothing. A leaf the model does not
/// implement (an unknown number, or a known one such as TDH.MEM.PAGE.AUG that private MMIO
/// does not use) fails `TDX_OPERAND_INVALID` with operand RAX, as the module answers an
/// unsupported leaf.
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
      }
      let (gpa, level) = try r.gpaAndLevel()
      guard level == .level4K else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx) }
      switch try tdgMMIOAccept(td: td, vcpu: vcpu, gpa: gpa, expectedHPA: HPA(r.rdx)) {
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
      let td = try Registers.handle(r.rcx >> 32, TDTag.self, operand: TDXOperand.rcx)
      try tdhVPEnter(td: td, vcpu: UInt32(truncatingIfNeeded: r.rcx))
      return []
    case .mngCreate:
      guard r.rcx <= UInt64(UInt32.max) else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx) }
      return [UInt64(try tdhMngCreate(vcpuCount: UInt32(r.rcx)).rawValue)]
    case .memTrack:
      try tdhMemTrack(td: try Registers.handle(r.rcx, TDTag.self, operand: TDXOperand.rcx))
      return []
    case .devifCreate:
      let td = try Registers.handle(r.rcx, TDTag.self, operand: TDXOperand.rcx)
      guard r.rdx <= UInt64(UInt32.max) else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rdx) }
      let id = try tdhDevifCreate(td: td, interface: DeviceInterfaceID(UInt32(r.rdx)))
      return [UInt64(id.rawValue)]
    case .devifRemove:
      try tdhDevifRemove(devif: try Registers.handle(r.rcx, DevifTag.self, operand: TDXOperand.rcx))
      return []
    case .mmioMTAdd:
      let devif = try Registers.handle(r.rdx, DevifTag.self, operand: TDXOperand.rdx)
      guard r.r9 <= UInt64(UInt32.max) else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.r9) }
      try tdhMMIOMTAdd(devif: devif, first: HPA(r.rcx), count: r.r8,
                       attributes: MMIOMTAttributes(rawValue: UInt32(r.r9)))
      return []
    case .mmioMTSet:
      guard r.rdx <= UInt64(UInt32.max) else { throw TDXStatus.operandInvalid.with(operand: TDXOperand.rdx) }
      try tdhMMIOMTSet(hpa: HPA(r.rcx), attributes: MMIOMTAttributes(rawValue: UInt32(r.rdx)))
      return []
    case .mmioMap:
      let (gpa, level) = try r.gpaAndLevel()
      let td = try Registers.handle(r.rdx, TDTag.self, operand: TDXOperand.rdx)
      try tdhMMIOMap(td: td, gpa: gpa, level: level, hpa: HPA(r.r8))
      return []
    case .mmioBlock:
      let (gpa, level) = try r.gpaAndLevel()
      try tdhMMIOBlock(td: try Registers.handle(r.rdx, TDTag.self, operand: TDXOperand.rdx), gpa: gpa, level: level)
      return []
    case .mmioUnmap:
      let (gpa, level) = try r.gpaAndLevel()
      let hpa = try tdhMMIOUnmap(td: try Registers.handle(r.rdx, TDTag.self, operand: TDXOperand.rdx),
                                 gpa: gpa, level: level)
      return [hpa.rawValue]
    default:
      trace.emit(.tdx, "\(leaf) -> TDX_OPERAND_INVALID (leaf not supported)")
      throw TDXStatus.operandInvalid.with(operand: TDXOperand.rax)
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

  /// RCX as Secure-EPT mapping info: GPA in bits 51:12, level in bits 2:0.
  func gpaAndLevel() throws(TDXStatus) -> (GPA, SEPTLevel) {
    let reserved: UInt64 = 0xFFF0_0000_0000_0FF8
    guard rcx & reserved == 0, let level = SEPTLevel(rawValue: UInt8(rcx & 0x7)) else {
      throw TDXStatus.operandInvalid.with(operand: TDXOperand.rcx)
    }
    return (GPA(rcx & ~0xFFF), level)
  }

  /// A register holding an object handle: non-zero and within 32 bits.
  static func handle<Tag>(_ value: UInt64, _: Tag.Type, operand: UInt32) throws(TDXStatus) -> ObjectID<Tag> {
    guard value != 0, value <= UInt64(UInt32.max) else { throw TDXStatus.operandInvalid.with(operand: operand) }
    return ObjectID<Tag>(UInt32(value))
  }
}
