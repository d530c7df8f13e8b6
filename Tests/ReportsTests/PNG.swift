/// Just enough PNG to count pixels of a browser's screenshot: 8-bit RGB or RGBA, not
/// interlaced (what Chromium and Firefox write), decoded with a small inflate.
struct PNGImage {
  var width: Int
  var height: Int
  /// Bytes per pixel: 3 (RGB) or 4 (RGBA).
  var channels: Int
  var pixels: [UInt8]

  enum Failure: Error { case notPNG, unsupported(String), corrupt(String) }

  init(_ data: [UInt8]) throws {
    guard data.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) else { throw Failure.notPNG }
    var offset = 8
    var idat: [UInt8] = []
    var w = 0, h = 0, colourType = 0
    func u32(_ i: Int) -> Int { Int(data[i]) << 24 | Int(data[i + 1]) << 16 | Int(data[i + 2]) << 8 | Int(data[i + 3]) }
    while offset + 8 <= data.count {
      let length = u32(offset)
      let type = String(decoding: data[(offset + 4)..<(offset + 8)], as: UTF8.self)
      let body = offset + 8
      guard body + length <= data.count else { throw Failure.corrupt("chunk \(type) past the end") }
      switch type {
      case "IHDR":
        w = u32(body); h = u32(body + 4)
        guard data[body + 8] == 8 else { throw Failure.unsupported("bit depth \(data[body + 8])") }
        colourType = Int(data[body + 9])
        guard data[body + 12] == 0 else { throw Failure.unsupported("interlaced") }
      case "IDAT": idat += data[body..<(body + length)]
      default: break
      }
      offset = body + length + 4
    }
    guard colourType == 2 || colourType == 6 else { throw Failure.unsupported("colour type \(colourType)") }
    width = w; height = h; channels = colourType == 6 ? 4 : 3
    // zlib: 2 header bytes, deflate data, 4 bytes of Adler-32.
    var inflater = Inflate(Array(idat.dropFirst(2)))
    let raw = try inflater.run()
    let stride = w * channels
    guard raw.count >= h * (stride + 1) else { throw Failure.corrupt("\(raw.count) bytes for \(w)x\(h)") }
    var out = [UInt8](repeating: 0, count: h * stride)
    for y in 0..<h {
      let filter = raw[y * (stride + 1)]
      for x in 0..<stride {
        let value = raw[y * (stride + 1) + 1 + x]
        let a = x >= channels ? Int(out[y * stride + x - channels]) : 0
        let b = y > 0 ? Int(out[(y - 1) * stride + x]) : 0
        let c = x >= channels && y > 0 ? Int(out[(y - 1) * stride + x - channels]) : 0
        let predicted: Int
        switch filter {
        case 0: predicted = 0
        case 1: predicted = a
        case 2: predicted = b
        case 3: predicted = (a + b) / 2
        case 4:
          let p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c)
          predicted = pa <= pb && pa <= pc ? a : pb <= pc ? b : c
        default: throw Failure.corrupt("filter \(filter)")
        }
        out[y * stride + x] = UInt8(truncatingIfNeeded: Int(value) + predicted)
      }
    }
    pixels = out
  }

  /// Pixels that are not (nearly) white.
  var nonWhitePixels: Int {
    var count = 0
    for i in stride(from: 0, to: pixels.count, by: channels) where pixels[i] < 240 || pixels[i + 1] < 240 || pixels[i + 2] < 240 {
      count += 1
    }
    return count
  }

  /// Distinct colours, coarsely (each channel to 32 levels).
  var colours: Int {
    var seen = Set<Int>()
    for i in stride(from: 0, to: pixels.count, by: channels) {
      seen.insert(Int(pixels[i] >> 3) << 10 | Int(pixels[i + 1] >> 3) << 5 | Int(pixels[i + 2] >> 3))
    }
    return seen.count
  }
}

/// RFC 1951 inflate: stored, fixed and dynamic Huffman blocks.
struct Inflate {
  let input: [UInt8]
  var bit = 0
  var output: [UInt8] = []

  init(_ input: [UInt8]) { self.input = input }

  mutating func bits(_ n: Int) throws -> Int {
    var value = 0
    for i in 0..<n {
      guard bit >> 3 < input.count else { throw PNGImage.Failure.corrupt("deflate stream ends early") }
      value |= Int((input[bit >> 3] >> UInt8(bit & 7)) & 1) << i
      bit += 1
    }
    return value
  }

  /// A canonical Huffman code: counts per length and symbols in order.
  struct Huffman {
    var counts = [Int](repeating: 0, count: 16)
    var symbols: [Int] = []
    init(lengths: [Int]) {
      for l in lengths { counts[l] += 1 }
      counts[0] = 0
      var offsets = [Int](repeating: 0, count: 16)
      for l in 1..<16 { offsets[l] = offsets[l - 1] + counts[l - 1] }
      symbols = [Int](repeating: 0, count: lengths.count)
      for (symbol, l) in lengths.enumerated() where l != 0 {
        symbols[offsets[l]] = symbol
        offsets[l] += 1
      }
    }
  }

  mutating func decode(_ h: Huffman) throws -> Int {
    var code = 0, first = 0, index = 0
    for length in 1..<16 {
      code |= try bits(1)
      let count = h.counts[length]
      if code - count < first { return h.symbols[index + (code - first)] }
      index += count
      first += count
      first <<= 1
      code <<= 1
    }
    throw PNGImage.Failure.corrupt("bad Huffman code")
  }

  static let lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
  static let lengthExtra = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
  static let distanceBase = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
                             2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
  static let distanceExtra = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]

  mutating func run() throws -> [UInt8] {
    var last = 0
    repeat {
      last = try bits(1)
      switch try bits(2) {
      case 0:
        bit = (bit + 7) & ~7
        let start = bit >> 3
        guard start + 4 <= input.count else { throw PNGImage.Failure.corrupt("stored block header") }
        let length = Int(input[start]) | Int(input[start + 1]) << 8
        guard start + 4 + length <= input.count else { throw PNGImage.Failure.corrupt("stored block") }
        output += input[(start + 4)..<(start + 4 + length)]
        bit = (start + 4 + length) << 3
      case 1:
        let lengths = [Int](repeating: 8, count: 144) + [Int](repeating: 9, count: 112) + [Int](repeating: 7, count: 24)
          + [Int](repeating: 8, count: 8)
        try block(Huffman(lengths: lengths), Huffman(lengths: [Int](repeating: 5, count: 30)))
      case 2:
        let hlit = try bits(5) + 257, hdist = try bits(5) + 1, hclen = try bits(4) + 4
        let order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
        var codeLengths = [Int](repeating: 0, count: 19)
        for i in 0..<hclen { codeLengths[order[i]] = try bits(3) }
        let lengthCode = Huffman(lengths: codeLengths)
        var lengths: [Int] = []
        while lengths.count < hlit + hdist {
          let symbol = try decode(lengthCode)
          switch symbol {
          case 0..<16: lengths.append(symbol)
          case 16:
            guard let previous = lengths.last else { throw PNGImage.Failure.corrupt("repeat with nothing before") }
            lengths += [Int](repeating: previous, count: 3 + (try bits(2)))
          case 17: lengths += [Int](repeating: 0, count: 3 + (try bits(3)))
          default: lengths += [Int](repeating: 0, count: 11 + (try bits(7)))
          }
        }
        try block(Huffman(lengths: Array(lengths[..<hlit])), Huffman(lengths: Array(lengths[hlit...])))
      default:
        throw PNGImage.Failure.corrupt("block type 3")
      }
    } while last == 0
    return output
  }

  mutating func block(_ literals: Huffman, _ distances: Huffman) throws {
    while true {
      let symbol = try decode(literals)
      if symbol < 256 { output.append(UInt8(symbol)); continue }
      if symbol == 256 { return }
      let i = symbol - 257
      guard i < Self.lengthBase.count else { throw PNGImage.Failure.corrupt("length symbol \(symbol)") }
      let length = Self.lengthBase[i] + (try bits(Self.lengthExtra[i]))
      let d = try decode(distances)
      guard d < Self.distanceBase.count else { throw PNGImage.Failure.corrupt("distance symbol \(d)") }
      let distance = Self.distanceBase[d] + (try bits(Self.distanceExtra[d]))
      guard distance <= output.count else { throw PNGImage.Failure.corrupt("distance past the start") }
      let from = output.count - distance
      for k in 0..<length { output.append(output[from + k]) }
    }
  }
}
