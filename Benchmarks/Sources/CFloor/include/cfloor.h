// The plain-C floor for the PrivateMMIO benchmarks: the work of a private-MMIO fault, zap and
// snapshot written as a competent C programmer would, with no model around it.
//
// - memslots: a sorted array searched by binary search behind a last-used-slot cache (what
//   `search_memslots()` did before the rbtree, and what `kvm->last_used_slot` still does);
// - the exporter: a dma-buf's list of physical ranges with cumulative page offsets, searched
//   for the PFN of a buffer page and the largest naturally aligned block around it;
// - the TDP MMU: a 4-level radix of 512-entry tables with per-table entry counts, leaf SPTEs
//   in EPT format, child entries tagged in bit 63; emptied tables are freed;
// - a TD: the Secure EPT as a second radix whose 4 KiB entries hold HPA | state, and the
//   MMIO metadata table as a sorted extent list (owner per range of PFNs).
#ifndef CFLOOR_H
#define CFLOOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cf_vm cf_vm;

/// One physical range of an exported buffer, in buffer order.
typedef struct cf_range {
  uint64_t pfn;
  uint64_t npages;
} cf_range;

/// Access outcomes, as the model's `FaultOutcome`.
enum {
  CF_MAPPED = 0,
  CF_ALREADY_MAPPED = 1,
  CF_EXIT_MMIO = 2,
  CF_EIO = -5,
  CF_EINVAL = -22,
};

/// A VM; `td` non-zero makes it a TD (4 KiB private MMIO through the Secure EPT).
cf_vm *cf_vm_create(int td);
void cf_vm_destroy(cf_vm *vm);
/// A deep copy (what a snapshot costs without persistent structures).
cf_vm *cf_vm_clone(const cf_vm *vm);

/// Adds a dma-buf memslot of `npages` at `base_gfn` over a buffer made of `nranges` ranges,
/// starting at buffer page `pgoff`. For a TD the ranges are also added to the MMIO metadata
/// table as owned by this TD. Returns 0 or CF_EINVAL (overlap, too many slots).
int cf_vm_add_slot(cf_vm *vm, uint64_t base_gfn, uint64_t npages, const cf_range *ranges,
                   size_t nranges, uint64_t pgoff);

/// A guest read of `gpa` by a default VM: already mapped, or fault in (slot, exporter PFN and
/// order, level choice, radix insert). `max_level` caps the mapping level (1 = 4 KiB).
int cf_guest_read(cf_vm *vm, uint64_t gpa);
/// A TD's accept of `gpa` expecting `hpa`: Secure EPT lookup; on a miss the fault maps it
/// MMIO_PENDING (MMIO metadata ownership check, SEPT insert, mirror insert), then the accept
/// moves it to MAPPED.
int cf_guest_accept(cf_vm *vm, uint64_t gpa, uint64_t hpa);

/// Removes every mapping in [gfn_start, gfn_end) and returns the 4 KiB pages unmapped. For a
/// TD each Secure EPT leaf is blocked, the epoch tracked, then each leaf unmapped.
uint64_t cf_zap(cf_vm *vm, uint64_t gfn_start, uint64_t gfn_end);

/// Maps one leaf directly in the radix (bench set-up for sizes a fault loop cannot reach fast).
int cf_map(cf_vm *vm, uint64_t gfn, int level, uint64_t pfn);

/// A hash of every mapping (mirror radix, and the Secure EPT for a TD): walks populated tables.
uint64_t cf_hash(const cf_vm *vm);

/// 4 KiB pages mapped; bytes of tables and metadata held.
uint64_t cf_mapped_pages(const cf_vm *vm);
uint64_t cf_model_bytes(const cf_vm *vm);

/// Bytes malloc reports in use (glibc `mallinfo2().uordblks`), to measure any model's heap.
uint64_t cf_heap_in_use(void);

#ifdef __cplusplus
}
#endif
#endif
