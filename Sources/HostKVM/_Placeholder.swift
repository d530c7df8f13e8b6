import KernelCore
// Placeholder until the module lands; the owner of the module deletes this file.
