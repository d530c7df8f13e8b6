import Testing
// Placeholder until the module's tests land; the owner deletes this file.
