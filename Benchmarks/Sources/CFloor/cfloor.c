// The plain-C floor: see cfloor.h. Written for speed and clarity, not as a copy of any kernel
// or TDX module code; the SPTE bits are the EPT ones the model uses.
#include "cfloor.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#define PT_ENTRIES 512
#define PAGE_SHIFT 12
#define MAX_SLOTS 32
#define MAX_ORDER 18

// EPT leaf bits, as the model's SPTE: R, W, X, memory type UC (0), large, KVM's present bit.
#define SPTE_RWX 0x7ULL
#define SPTE_LARGE (1ULL << 7)
#define SPTE_PRESENT (1ULL << 11)
#define SPTE_ADDR_MASK (((1ULL << 52) - 1) & ~0xfffULL)
// A child-table entry: the table's address tagged in bit 63, which no leaf built here sets.
#define CHILD_TAG (1ULL << 63)

// Secure EPT leaf states, kept in the low bits of HPA | state.
enum { SEPT_PENDING = 1, SEPT_MAPPED = 2, SEPT_BLOCKED = 3 };
#define SEPT_STATE_MASK 0x7ULL

typedef struct pt {
  uint64_t e[PT_ENTRIES];
  uint32_t used; // non-empty entries
} pt;

typedef struct radix {
  pt *root; // level 4
  uint64_t mapped; // 4 KiB pages
  uint64_t tables; // including the root
} radix;

typedef struct bufrange {
  uint64_t first; // first buffer page of this range
  uint64_t pfn;
  uint64_t npages;
} bufrange;

typedef struct slot {
  uint64_t base_gfn;
  uint64_t npages;
  uint64_t pgoff;
  bufrange *ranges;
  size_t nranges;
} slot;

// One MMIO metadata extent: PFNs owned by the TD, with one bit per page for "mapped".
typedef struct extent {
  uint64_t first_pfn;
  uint64_t npages;
  uint64_t *mapped_bits;
} extent;

struct cf_vm {
  int td;
  radix mmu;
  radix sept; // TD only
  uint64_t epoch;
  slot slots[MAX_SLOTS];
  size_t nslots;
  size_t last_used;
  extent *extents;
  size_t nextents;
};

static inline uint64_t level_pages(int level) { return 1ULL << (9 * (level - 1)); }
static inline unsigned pt_index(uint64_t gfn, int level) {
  return (unsigned)((gfn >> (9 * (level - 1))) & (PT_ENTRIES - 1));
}
static inline pt *child_of(uint64_t e) { return (pt *)(uintptr_t)(e & ~CHILD_TAG); }

static pt *pt_alloc(radix *r) {
  pt *t = calloc(1, sizeof(pt));
  if (!t) abort();
  r->tables++;
  return t;
}

static void radix_init(radix *r) {
  r->tables = 0;
  r->mapped = 0;
  r->root = pt_alloc(r);
}

// Frees a subtree, returning the 4 KiB pages it mapped.
static uint64_t pt_free(radix *r, pt *t, int level) {
  uint64_t pages = 0;
  if (level == 1) {
    pages = t->used;
  } else {
    for (unsigned i = 0; i < PT_ENTRIES && t->used; i++) {
      uint64_t e = t->e[i];
      if (!e) continue;
      pages += (e & CHILD_TAG) ? pt_free(r, child_of(e), level - 1) : level_pages(level);
    }
  }
  free(t);
  r->tables--;
  return pages;
}

static void radix_destroy(radix *r) {
  if (r->root) pt_free(r, r->root, 4);
  r->root = NULL;
}

static pt *pt_clone(const pt *t, int level) {
  pt *c = malloc(sizeof(pt));
  if (!c) abort();
  memcpy(c, t, sizeof(pt));
  if (level > 1)
    for (unsigned i = 0; i < PT_ENTRIES; i++)
      if (c->e[i] & CHILD_TAG) c->e[i] = (uint64_t)(uintptr_t)pt_clone(child_of(c->e[i]), level - 1) | CHILD_TAG;
  return c;
}

// The leaf entry covering gfn, or 0.
static inline uint64_t radix_lookup(const radix *r, uint64_t gfn, int *level_out) {
  const pt *t = r->root;
  for (int level = 4;; level--) {
    uint64_t e = t->e[pt_index(gfn, level)];
    if (!(e & CHILD_TAG)) {
      if (level_out) *level_out = level;
      return e;
    }
    t = child_of(e);
  }
}

// The 4 KiB entry of gfn, or NULL when no table holds it (no allocation).
static inline uint64_t *radix_slot4k(radix *r, uint64_t gfn) {
  pt *t = r->root;
  for (int level = 4; level > 1; level--) {
    uint64_t e = t->e[pt_index(gfn, level)];
    if (!(e & CHILD_TAG)) return NULL;
    t = child_of(e);
  }
  return &t->e[pt_index(gfn, 1)];
}

// Installs `value` for the level-aligned block at gfn; a huge leaf in the way is dropped, a
// table under a new huge leaf is freed.
static void radix_insert(radix *r, uint64_t gfn, int level, uint64_t value) {
  pt *t = r->root;
  for (int l = 4; l > level; l--) {
    uint64_t *e = &t->e[pt_index(gfn, l)];
    if (*e & CHILD_TAG) {
      t = child_of(*e);
      continue;
    }
    if (*e) {
      r->mapped -= level_pages(l);
      t->used--;
    }
    pt *c = pt_alloc(r);
    *e = (uint64_t)(uintptr_t)c | CHILD_TAG;
    t->used++;
    t = c;
  }
  uint64_t *e = &t->e[pt_index(gfn, level)];
  if (*e & CHILD_TAG) {
    r->mapped -= pt_free(r, child_of(*e), level - 1);
  } else if (*e) {
    r->mapped -= level_pages(level);
  } else {
    t->used++;
  }
  *e = value;
  r->mapped += level_pages(level);
}

// Removes the mappings of [start, end) under table t (covering from `base`); returns pages.
static uint64_t radix_zap_in(radix *r, pt *t, int level, uint64_t base, uint64_t start, uint64_t end) {
  uint64_t span = level_pages(level), removed = 0;
  uint64_t lo = start > base ? start : base;
  uint64_t top = base + PT_ENTRIES * span, hi = end < top ? end : top;
  if (lo >= hi) return 0;
  for (unsigned i = (unsigned)((lo - base) / span); i <= (unsigned)((hi - 1 - base) / span); i++) {
    uint64_t e = t->e[i];
    if (!e) continue;
    uint64_t eb = base + i * span;
    int covered = start <= eb && eb + span <= end;
    if (!(e & CHILD_TAG)) {
      if (covered) {
        t->e[i] = 0;
        t->used--;
        removed += span;
        continue;
      }
      // A huge leaf partly covered: split it into the next level, then zap inside.
      pt *c = pt_alloc(r);
      uint64_t cspan = level_pages(level - 1), pfn = (e & SPTE_ADDR_MASK) >> PAGE_SHIFT;
      uint64_t attrs = (e & ~SPTE_ADDR_MASK) & ~(level - 1 == 1 ? SPTE_LARGE : 0);
      for (unsigned j = 0; j < PT_ENTRIES; j++) c->e[j] = attrs | ((pfn + j * cspan) << PAGE_SHIFT);
      c->used = PT_ENTRIES;
      e = t->e[i] = (uint64_t)(uintptr_t)c | CHILD_TAG;
    }
    pt *c = child_of(e);
    if (covered) {
      removed += pt_free(r, c, level - 1);
      t->e[i] = 0;
      t->used--;
      continue;
    }
    removed += radix_zap_in(r, c, level - 1, eb, start, end);
    if (!c->used) {
      free(c);
      r->tables--;
      t->e[i] = 0;
      t->used--;
    }
  }
  return removed;
}

static uint64_t radix_zap(radix *r, uint64_t start, uint64_t end) {
  uint64_t removed = radix_zap_in(r, r->root, 4, 0, start, end);
  r->mapped -= removed;
  return removed;
}

// Applies `f` to every present 4 KiB entry of [start, end) (SEPT walks).
typedef void (*entry_fn)(uint64_t *e, uint64_t gfn, void *ctx);
static void radix_walk4k(pt *t, int level, uint64_t base, uint64_t start, uint64_t end, entry_fn f, void *ctx) {
  uint64_t span = level_pages(level);
  uint64_t lo = start > base ? start : base;
  uint64_t top = base + PT_ENTRIES * span, hi = end < top ? end : top;
  if (lo >= hi) return;
  for (unsigned i = (unsigned)((lo - base) / span); i <= (unsigned)((hi - 1 - base) / span); i++) {
    uint64_t e = t->e[i];
    if (!e) continue;
    if (level == 1) f(&t->e[i], base + i, ctx);
    else if (e & CHILD_TAG) radix_walk4k(child_of(e), level - 1, base + i * span, start, end, f, ctx);
  }
}

static inline uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

static uint64_t radix_hash_in(const pt *t, int level, uint64_t h) {
  for (unsigned i = 0; i < PT_ENTRIES; i++) {
    uint64_t e = t->e[i];
    if (!e) continue;
    if (e & CHILD_TAG) h = radix_hash_in(child_of(e), level - 1, mix(h ^ (0x1000u | i)));
    else h = mix(h ^ e ^ ((uint64_t)i << 52));
  }
  return h;
}

// MARK: memslots and the exporter

static const slot *find_slot(cf_vm *vm, uint64_t gfn) {
  const slot *s = &vm->slots[vm->last_used];
  if (vm->nslots && gfn - s->base_gfn < s->npages) return s;
  size_t lo = 0, hi = vm->nslots;
  while (lo < hi) { // first slot with base > gfn
    size_t mid = (lo + hi) / 2;
    if (vm->slots[mid].base_gfn <= gfn) lo = mid + 1;
    else hi = mid;
  }
  if (lo == 0) return NULL;
  s = &vm->slots[lo - 1];
  if (gfn - s->base_gfn >= s->npages) return NULL;
  vm->last_used = lo - 1;
  return s;
}

// The PFN of buffer page `page` and the largest naturally aligned block around it that one
// physical range holds with the same alignment; -1 past the end.
static int buf_lookup(const slot *s, uint64_t page, uint64_t *pfn, unsigned *order) {
  size_t lo = 0, hi = s->nranges;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (s->ranges[mid].first <= page) lo = mid + 1;
    else hi = mid;
  }
  if (lo == 0) return -1;
  const bufrange *r = &s->ranges[lo - 1];
  if (page - r->first >= r->npages) return -1;
  *pfn = r->pfn + (page - r->first);
  uint64_t diff = *pfn ^ page;
  unsigned o = diff ? (unsigned)__builtin_ctzll(diff) : MAX_ORDER;
  if (o > MAX_ORDER) o = MAX_ORDER;
  for (; o > 0; o--) {
    uint64_t block = 1ULL << o, start = page & ~(block - 1);
    if (start >= r->first && start + block <= r->first + r->npages) break;
  }
  *order = o;
  return 0;
}

static inline uint64_t make_spte(uint64_t pfn, int level) {
  return SPTE_PRESENT | SPTE_RWX | (pfn << PAGE_SHIFT) | (level > 1 ? SPTE_LARGE : 0);
}

// MARK: MMIO metadata extents

static extent *find_extent(cf_vm *vm, uint64_t pfn) {
  size_t lo = 0, hi = vm->nextents;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (vm->extents[mid].first_pfn <= pfn) lo = mid + 1;
    else hi = mid;
  }
  if (lo == 0) return NULL;
  extent *x = &vm->extents[lo - 1];
  return pfn - x->first_pfn < x->npages ? x : NULL;
}

static int add_extent(cf_vm *vm, uint64_t pfn, uint64_t npages) {
  extent *grown = realloc(vm->extents, (vm->nextents + 1) * sizeof(extent));
  if (!grown) abort();
  vm->extents = grown;
  size_t at = vm->nextents;
  while (at > 0 && vm->extents[at - 1].first_pfn > pfn) {
    vm->extents[at] = vm->extents[at - 1];
    at--;
  }
  vm->extents[at] = (extent){pfn, npages, calloc((npages + 63) / 64, 8)};
  vm->nextents++;
  return 0;
}

// MARK: the API

cf_vm *cf_vm_create(int td) {
  cf_vm *vm = calloc(1, sizeof(cf_vm));
  if (!vm) abort();
  vm->td = td;
  radix_init(&vm->mmu);
  if (td) radix_init(&vm->sept);
  vm->epoch = 1;
  return vm;
}

void cf_vm_destroy(cf_vm *vm) {
  if (!vm) return;
  radix_destroy(&vm->mmu);
  if (vm->td) radix_destroy(&vm->sept);
  for (size_t i = 0; i < vm->nslots; i++) free(vm->slots[i].ranges);
  for (size_t i = 0; i < vm->nextents; i++) free(vm->extents[i].mapped_bits);
  free(vm->extents);
  free(vm);
}

cf_vm *cf_vm_clone(const cf_vm *vm) {
  cf_vm *c = malloc(sizeof(cf_vm));
  if (!c) abort();
  *c = *vm;
  c->mmu.root = pt_clone(vm->mmu.root, 4);
  if (vm->td) c->sept.root = pt_clone(vm->sept.root, 4);
  for (size_t i = 0; i < vm->nslots; i++) {
    size_t bytes = vm->slots[i].nranges * sizeof(bufrange);
    c->slots[i].ranges = malloc(bytes);
    memcpy(c->slots[i].ranges, vm->slots[i].ranges, bytes);
  }
  c->extents = malloc(vm->nextents * sizeof(extent) + 1);
  for (size_t i = 0; i < vm->nextents; i++) {
    size_t bytes = (vm->extents[i].npages + 63) / 64 * 8;
    c->extents[i] = vm->extents[i];
    c->extents[i].mapped_bits = malloc(bytes);
    memcpy(c->extents[i].mapped_bits, vm->extents[i].mapped_bits, bytes);
  }
  return c;
}

int cf_vm_add_slot(cf_vm *vm, uint64_t base_gfn, uint64_t npages, const cf_range *ranges, size_t nranges,
                   uint64_t pgoff) {
  if (vm->nslots == MAX_SLOTS || nranges == 0 || npages == 0) return CF_EINVAL;
  size_t at = vm->nslots;
  for (size_t i = 0; i < vm->nslots; i++) {
    const slot *s = &vm->slots[i];
    if (base_gfn < s->base_gfn + s->npages && s->base_gfn < base_gfn + npages) return CF_EINVAL;
  }
  while (at > 0 && vm->slots[at - 1].base_gfn > base_gfn) {
    vm->slots[at] = vm->slots[at - 1];
    at--;
  }
  bufrange *copy = malloc(nranges * sizeof(bufrange));
  uint64_t first = 0;
  for (size_t i = 0; i < nranges; i++) {
    copy[i] = (bufrange){first, ranges[i].pfn, ranges[i].npages};
    first += ranges[i].npages;
    if (vm->td) add_extent(vm, ranges[i].pfn, ranges[i].npages);
  }
  vm->slots[at] = (slot){base_gfn, npages, pgoff, copy, nranges};
  vm->nslots++;
  vm->last_used = at;
  return 0;
}

int cf_guest_read(cf_vm *vm, uint64_t gpa) {
  uint64_t gfn = gpa >> PAGE_SHIFT;
  if (radix_lookup(&vm->mmu, gfn, NULL)) return CF_ALREADY_MAPPED;
  const slot *s = find_slot(vm, gfn);
  if (!s) return CF_EXIT_MMIO;
  uint64_t pfn;
  unsigned order;
  if (buf_lookup(s, s->pgoff + (gfn - s->base_gfn), &pfn, &order)) return CF_EIO;
  int level = 1;
  for (int l = vm->td ? 1 : 3; l > 1; l--) {
    uint64_t mask = level_pages(l) - 1, base = gfn & ~mask;
    if (9u * (l - 1) > order || ((gfn ^ pfn) & mask)) continue;
    if (base < s->base_gfn || base + level_pages(l) > s->base_gfn + s->npages) continue;
    level = l;
    break;
  }
  uint64_t mask = level_pages(level) - 1;
  radix_insert(&vm->mmu, gfn & ~mask, level, make_spte(pfn & ~mask, level));
  return CF_MAPPED;
}

// TDH.MMIO.MAP of one 4 KiB page: the PFN must be this TD's and not mapped yet, the SEPT
// entry free; the entry becomes PENDING and KVM's mirror gets the leaf.
static int td_mmio_map(cf_vm *vm, uint64_t gfn, uint64_t pfn) {
  extent *x = find_extent(vm, pfn);
  if (!x) return CF_EIO;
  uint64_t bit = pfn - x->first_pfn, *word = &x->mapped_bits[bit / 64], m = 1ULL << (bit % 64);
  if (*word & m) return CF_EIO;
  uint64_t *e = radix_slot4k(&vm->sept, gfn);
  if (e && *e) return CF_EIO;
  *word |= m;
  radix_insert(&vm->sept, gfn, 1, (pfn << PAGE_SHIFT) | SEPT_PENDING);
  radix_insert(&vm->mmu, gfn, 1, make_spte(pfn, 1));
  return 0;
}

int cf_guest_accept(cf_vm *vm, uint64_t gpa, uint64_t hpa) {
  uint64_t gfn = gpa >> PAGE_SHIFT;
  for (int tries = 0; tries < 2; tries++) {
    uint64_t *e = radix_slot4k(&vm->sept, gfn);
    if (e && *e) {
      if ((*e & ~SEPT_STATE_MASK) != (hpa & ~0xfffULL)) return CF_EINVAL;
      switch (*e & SEPT_STATE_MASK) {
      case SEPT_PENDING: *e = (*e & ~SEPT_STATE_MASK) | SEPT_MAPPED; return CF_MAPPED;
      case SEPT_MAPPED: return CF_ALREADY_MAPPED;
      default: return CF_EINVAL;
      }
    }
    // EPT violation: KVM's fault path for a private MMIO page.
    const slot *s = find_slot(vm, gfn);
    if (!s) return CF_EXIT_MMIO;
    uint64_t pfn;
    unsigned order;
    if (buf_lookup(s, s->pgoff + (gfn - s->base_gfn), &pfn, &order)) return CF_EIO;
    int err = td_mmio_map(vm, gfn, pfn);
    if (err) return err;
  }
  return CF_EIO;
}

static void sept_block(uint64_t *e, uint64_t gfn, void *ctx) {
  (void)gfn, (void)ctx;
  *e = (*e & ~SEPT_STATE_MASK) | SEPT_BLOCKED;
}

static void sept_unmap(uint64_t *e, uint64_t gfn, void *ctx) {
  cf_vm *vm = ctx;
  uint64_t pfn = *e >> PAGE_SHIFT;
  extent *x = find_extent(vm, pfn);
  if (x) x->mapped_bits[(pfn - x->first_pfn) / 64] &= ~(1ULL << ((pfn - x->first_pfn) % 64));
  (void)gfn;
}

uint64_t cf_zap(cf_vm *vm, uint64_t gfn_start, uint64_t gfn_end) {
  if (vm->td) {
    // TDH.MMIO.BLOCK every entry, TDH.MEM.TRACK, then TDH.MMIO.UNMAP every entry.
    radix_walk4k(vm->sept.root, 4, 0, gfn_start, gfn_end, sept_block, vm);
    vm->epoch++;
    radix_walk4k(vm->sept.root, 4, 0, gfn_start, gfn_end, sept_unmap, vm);
    radix_zap(&vm->sept, gfn_start, gfn_end);
  }
  return radix_zap(&vm->mmu, gfn_start, gfn_end);
}

int cf_map(cf_vm *vm, uint64_t gfn, int level, uint64_t pfn) {
  if (level < 1 || level > 3 || (gfn & (level_pages(level) - 1))) return CF_EINVAL;
  radix_insert(&vm->mmu, gfn, level, make_spte(pfn, level));
  return 0;
}

uint64_t cf_hash(const cf_vm *vm) {
  uint64_t h = radix_hash_in(vm->mmu.root, 4, vm->mmu.mapped);
  if (vm->td) h = radix_hash_in(vm->sept.root, 4, h);
  return h;
}

uint64_t cf_mapped_pages(const cf_vm *vm) { return vm->mmu.mapped; }

uint64_t cf_model_bytes(const cf_vm *vm) {
  uint64_t bytes = sizeof(cf_vm) + (vm->mmu.tables + vm->sept.tables) * sizeof(pt);
  for (size_t i = 0; i < vm->nslots; i++) bytes += vm->slots[i].nranges * sizeof(bufrange);
  for (size_t i = 0; i < vm->nextents; i++) bytes += sizeof(extent) + (vm->extents[i].npages + 63) / 64 * 8;
  return bytes;
}

uint64_t cf_heap_in_use(void) { return (uint64_t)mallinfo2().uordblks; }
