import Testing
@testable import TDX
