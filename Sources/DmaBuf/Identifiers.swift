import KernelCore

/// Identity of a `struct dma_buf`.
public enum DmaBufTag {}
public typealias DmaBufID = ObjectID<DmaBufTag>

/// Identity of a `struct dma_buf_attachment`.
public enum AttachmentTag {}
public typealias AttachmentID = ObjectID<AttachmentTag>
