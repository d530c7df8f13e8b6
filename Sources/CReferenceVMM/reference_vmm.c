/*
 * Reference VMM: the HostKVM runs, written the way a C VMM author would, with nothing between
 * the code and the ioctls. See reference_vmm.h.
 */
#define _GNU_SOURCE
#include "reference_vmm.h"
#include "ckvm_shim.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/*
 * 32-bit protected mode, flat segments, no paging. In: ESI = BAR GPA, ECX = iterations,
 * EDX = sentinel, EBX = EBP = 0.
 */
const uint8_t rvmm_guest_code[] = {
	0x8B, 0x06,       /* 0:  mov eax, [esi]      read BAR register 0 */
	0x39, 0xD0,       /* 2:  cmp eax, edx        the sentinel: a read of revoked backing */
	0x75, 0x01,       /* 4:  jne 7 */
	0x45,             /* 6:  inc ebp */
	0x83, 0xF8, 0xFF, /* 7:  cmp eax, -1         all-ones: the device is gone */
	0x75, 0x01,       /* 10: jne 13 */
	0x43,             /* 12: inc ebx */
	0x89, 0x4E, 0x08, /* 13: mov [esi+8], ecx    write BAR register 2: iterations left */
	0x83, 0xFB, 0x10, /* 16: cmp ebx, 16         enough all-ones reads: stop early */
	0x73, 0x03,       /* 19: jae 24 */
	0x49,             /* 21: dec ecx */
	0x75, 0xE8,       /* 22: jnz 0 */
	0x89, 0xD8,       /* 24: mov eax, ebx */
	0xE7, 0x10,       /* 26: out 0x10, eax       report all-ones reads */
	0x89, 0xE8,       /* 28: mov eax, ebp */
	0xE7, 0x11,       /* 30: out 0x11, eax       report sentinel reads */
	0xF4,             /* 32: hlt */
};
const uint64_t rvmm_guest_code_size = sizeof(rvmm_guest_code);
const uint8_t *rvmm_guest_code_bytes(void) { return rvmm_guest_code; }

enum mode { MODE_TRAPPED, MODE_MAPPED };

/*
 * The exporter, as HostKVM's InMemoryBARExporter: a revoked flag and a run of PFNs under its own
 * lock, a lookup per page, and a move_notify called under that lock on revoke.
 */
struct exporter {
	pthread_mutex_t lock;
	int revoked;
	uint64_t pages;
	struct vm *importer; /* whose move_notify revoke calls */
};

struct vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	int run_size;
	uint8_t *ram;
	int dev_fd;          /* device memory: guest_memfd or memfd */
	volatile uint8_t *dev; /* host view, to complete exits and check the sentinel */
	int guest_memfd;
	int has_region2;
	struct exporter exp;
	/* The importer's side, as HostKVM's BARSlots: installed slots and the invalidation sequence
	 * that closes the race between an unlocked lookup and move_notify (mmu_invalidate_seq). */
	pthread_mutex_t slots_lock;
	uint64_t invalidate_seq;
	uint32_t installed[RVMM_BAR_SIZE / 4096];
	int n_installed;
	int notify_error;
	uint64_t mmio_exits;
	uint32_t allones, stale;
	uint64_t first_fault_ns;
};

static uint64_t now_ns(void) { return ckvm_now_ns(); }

static int fail(struct rvmm_result *out, const char *step, int err) {
	out->status = err < 0 ? err : -err;
	snprintf(out->failed_step, sizeof out->failed_step, "%s", step);
	return out->status;
}

static int set_slot(struct vm *v, uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size,
                    uint64_t uaddr, uint64_t gmem_offset, int gmem_fd) {
	if (v->has_region2) {
		struct kvm_userspace_memory_region2 r = {
			.slot = slot, .flags = flags, .guest_phys_addr = gpa, .memory_size = size,
			.userspace_addr = uaddr, .guest_memfd_offset = gmem_offset, .guest_memfd = (uint32_t)gmem_fd,
		};
		return ckvm_ioctl_ptr(v->vm, KVM_SET_USER_MEMORY_REGION2, &r);
	}
	struct kvm_userspace_memory_region r = {
		.slot = slot, .flags = flags, .guest_phys_addr = gpa, .memory_size = size,
		.userspace_addr = uaddr,
	};
	return ckvm_ioctl_ptr(v->vm, KVM_SET_USER_MEMORY_REGION, &r);
}

static void vm_close(struct vm *v) {
	if (v->dev) munmap((void *)v->dev, RVMM_BAR_SIZE);
	if (v->run) munmap(v->run, (size_t)v->run_size);
	if (v->ram) munmap(v->ram, RVMM_RAM_SIZE);
	if (v->dev_fd >= 0) close(v->dev_fd);
	if (v->vcpu >= 0) close(v->vcpu);
	if (v->vm >= 0) close(v->vm);
	if (v->kvm >= 0) close(v->kvm);
	pthread_mutex_destroy(&v->exp.lock);
	pthread_mutex_destroy(&v->slots_lock);
}

static int vm_open(struct vm *v, const struct rvmm_config *c, struct rvmm_result *out,
                   uint64_t iterations) {
	memset(v, 0, sizeof *v);
	v->kvm = v->vm = v->vcpu = v->dev_fd = -1;
	pthread_mutex_init(&v->exp.lock, NULL);
	pthread_mutex_init(&v->slots_lock, NULL);
	v->exp.pages = RVMM_BAR_SIZE / 4096;
	v->exp.importer = v;
	int r;
	if ((v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) return fail(out, "open /dev/kvm", errno);
	if ((r = ckvm_ioctl_val(v->kvm, KVM_CREATE_VM, 0)) < 0) return fail(out, "KVM_CREATE_VM", r);
	v->vm = r;
	v->has_region2 = ckvm_ioctl_val(v->vm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY2) > 0;
	int gmem_flags = ckvm_ioctl_val(v->vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD_FLAGS);
	uint64_t want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
	if (c->allow_guest_memfd && v->has_region2 &&
	    ckvm_ioctl_val(v->vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD) > 0 && gmem_flags > 0 &&
	    ((uint64_t)gmem_flags & want) == want) {
		struct kvm_create_guest_memfd g = { .size = RVMM_BAR_SIZE, .flags = want };
		if ((r = ckvm_ioctl_ptr(v->vm, KVM_CREATE_GUEST_MEMFD, &g)) >= 0) {
			v->dev_fd = r;
			v->guest_memfd = 1;
		}
	}
	if (v->dev_fd < 0) {
		if ((v->dev_fd = memfd_create("bar0", MFD_CLOEXEC)) < 0) return fail(out, "memfd_create", errno);
		if (ftruncate(v->dev_fd, RVMM_BAR_SIZE) < 0) return fail(out, "ftruncate", errno);
	}
	void *dev = mmap(NULL, RVMM_BAR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, v->dev_fd, 0);
	if (dev == MAP_FAILED) return fail(out, "mmap device memory", errno);
	v->dev = dev;
	*(volatile uint32_t *)(v->dev + 0) = RVMM_REGISTER_VALUE;

	void *ram = mmap(NULL, RVMM_RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED) return fail(out, "mmap RAM", errno);
	v->ram = ram;
	memcpy(v->ram + RVMM_CODE_GPA, rvmm_guest_code, sizeof rvmm_guest_code);
	if ((r = set_slot(v, 0, 0, 0, RVMM_RAM_SIZE, (uint64_t)(uintptr_t)ram, 0, 0)) < 0)
		return fail(out, "KVM_SET_USER_MEMORY_REGION2 ram", r);

	if ((r = ckvm_ioctl_val(v->vm, KVM_CREATE_VCPU, 0)) < 0) return fail(out, "KVM_CREATE_VCPU", r);
	v->vcpu = r;
	if ((r = ckvm_ioctl_val(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0)) < 0) return fail(out, "KVM_GET_VCPU_MMAP_SIZE", r);
	v->run_size = r;
	void *run = mmap(NULL, (size_t)r, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
	if (run == MAP_FAILED) return fail(out, "mmap kvm_run", errno);
	v->run = run;

	struct kvm_sregs s;
	if ((r = ckvm_ioctl_ptr(v->vcpu, KVM_GET_SREGS, &s)) < 0) return fail(out, "KVM_GET_SREGS", r);
	struct kvm_segment code = { .base = 0, .limit = 0xFFFFFFFF, .selector = 0x08, .type = 11,
		.present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1 };
	struct kvm_segment data = code;
	data.selector = 0x10;
	data.type = 3;
	s.cs = code;
	s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.cr0 |= 1; /* PE */
	if ((r = ckvm_ioctl_ptr(v->vcpu, KVM_SET_SREGS, &s)) < 0) return fail(out, "KVM_SET_SREGS", r);
	struct kvm_regs g = { .rip = RVMM_CODE_GPA, .rflags = 2, .rsi = RVMM_BAR_GPA,
		.rcx = iterations, .rdx = RVMM_SENTINEL };
	if ((r = ckvm_ioctl_ptr(v->vcpu, KVM_SET_REGS, &g)) < 0) return fail(out, "KVM_SET_REGS", r);
	return 0;
}

/* InMemoryBARExporter.lookup: -ENODEV once revoked, -EINVAL past the end; PFN N is page N. */
static int exporter_lookup(struct exporter *e, uint64_t page, uint64_t *pfn) {
	pthread_mutex_lock(&e->lock);
	int revoked = e->revoked;
	pthread_mutex_unlock(&e->lock);
	if (revoked) return -ENODEV;
	if (page >= e->pages) return -EINVAL;
	*pfn = page;
	return 0;
}

/* BARSlots.region: the slot points at the mapping of the device memory at the PFN's page, and
 * for guest_memfd at the same offset of the guest_memfd. */
static int set_bar_slot(struct vm *v, uint32_t slot, uint64_t gpa, uint64_t size, uint64_t off) {
	return set_slot(v, slot, v->guest_memfd ? KVM_MEM_GUEST_MEMFD : 0, gpa, size,
	                size ? (uint64_t)(uintptr_t)v->dev + off : 0, v->guest_memfd ? off : 0,
	                v->guest_memfd ? v->dev_fd : 0);
}

/* BARSlots.moveNotify: delete every BAR slot, bump the sequence. Called under the exporter lock. */
static void move_notify(struct vm *v) {
	pthread_mutex_lock(&v->slots_lock);
	for (int i = 0; i < v->n_installed; i++) {
		int r = set_bar_slot(v, v->installed[i], RVMM_BAR_GPA, 0, 0);
		if (r < 0 && v->notify_error == 0) v->notify_error = r;
	}
	v->n_installed = 0;
	v->invalidate_seq++;
	pthread_mutex_unlock(&v->slots_lock);
}

/* InMemoryBARExporter.revoke: later lookups fail, and move_notify has returned. */
static int exporter_revoke(struct exporter *e) {
	pthread_mutex_lock(&e->lock);
	if (!e->revoked) {
		e->revoked = 1;
		move_notify(e->importer);
	}
	pthread_mutex_unlock(&e->lock);
	return e->importer->notify_error;
}

/*
 * LazyBARVM.faultIn: look every page up without the slots lock, then install one slot per run of
 * contiguous PFNs under it unless an invalidation ran in between (then retry). Returns 0 with
 * *pfn the faulting page's PFN, -ENODEV when revoked, or the failing errno.
 */
static int fault_in(struct vm *v, uint64_t page, uint64_t *pfn) {
	enum { PAGES = RVMM_BAR_SIZE / 4096 };
	for (;;) {
		pthread_mutex_lock(&v->slots_lock);
		uint64_t seq = v->invalidate_seq;
		pthread_mutex_unlock(&v->slots_lock);
		uint64_t pfns[PAGES];
		for (uint64_t i = 0; i < PAGES; i++) {
			int r = exporter_lookup(&v->exp, i, &pfns[i]);
			if (r == -ENODEV) return r;
			if (r < 0 || pfns[i] >= PAGES) return -EIO;
		}
		pthread_mutex_lock(&v->slots_lock);
		if (v->invalidate_seq != seq) {
			pthread_mutex_unlock(&v->slots_lock);
			continue;
		}
		int r = 0;
		if (v->n_installed == 0) {
			uint64_t start = 0;
			for (uint64_t i = 1; i <= PAGES && r == 0; i++) {
				if (i < PAGES && pfns[i] == pfns[i - 1] + 1) continue;
				uint32_t slot = (uint32_t)(1 + v->n_installed);
				r = set_bar_slot(v, slot, RVMM_BAR_GPA + (start << 12), (i - start) << 12,
				                 pfns[start] << 12);
				if (r == 0) v->installed[v->n_installed++] = slot;
				start = i;
			}
		}
		pthread_mutex_unlock(&v->slots_lock);
		if (r < 0) return r;
		*pfn = pfns[page];
		return 0;
	}
}

static int run_guest(struct vm *v, enum mode mode, struct rvmm_result *out) {
	for (;;) {
		int r = ckvm_ioctl_val(v->vcpu, KVM_RUN, 0);
		/* The exit's handling is timed from here, KVM_RUN having returned, to the completed
		 * access, as HostKVM times it. */
		uint64_t t0 = now_ns();
		if (r == -EINTR || r == -EAGAIN) continue;
		if (r < 0) return fail(out, "KVM_RUN", r);
		struct kvm_run *run = v->run;
		switch (run->exit_reason) {
		case KVM_EXIT_MMIO: {
			v->mmio_exits++;
			uint64_t off = run->mmio.phys_addr - RVMM_BAR_GPA;
			uint32_t len = run->mmio.len;
			if (run->mmio.phys_addr < RVMM_BAR_GPA || off + len > RVMM_BAR_SIZE || len > 8)
				return fail(out, "MMIO outside the BAR", -EFAULT);
			uint64_t page = off >> 12, pfn = 0;
			int first = 0;
			if (mode == MODE_TRAPPED) {
				r = exporter_lookup(&v->exp, page, &pfn);
			} else {
				r = fault_in(v, page, &pfn);
				first = r == 0;
			}
			if (r < 0 && r != -ENODEV) return fail(out, "BAR fault", r);
			if (r == -ENODEV) {
				if (!run->mmio.is_write) memset(run->mmio.data, 0xFF, len);
			} else {
				volatile uint8_t *p = v->dev + (pfn << 12) + (off & 4095);
				if (run->mmio.is_write) memcpy((void *)p, run->mmio.data, len);
				else memcpy(run->mmio.data, (void *)p, len);
			}
			if (first && v->first_fault_ns == 0) v->first_fault_ns = now_ns() - t0;
			break;
		}
		case KVM_EXIT_IO: {
			uint32_t value = 0;
			memcpy(&value, (uint8_t *)run + run->io.data_offset, run->io.size < 4 ? run->io.size : 4);
			if (run->io.port == RVMM_REPORT_PORT) v->allones = value;
			else if (run->io.port == RVMM_REPORT_PORT + 1) v->stale = value;
			break;
		}
		case KVM_EXIT_HLT:
			if (v->notify_error) return fail(out, "KVM_SET_USER_MEMORY_REGION2 delete", v->notify_error);
			return 0;
		case KVM_EXIT_SHUTDOWN:
			return fail(out, "KVM_EXIT_SHUTDOWN", -EIO);
		case KVM_EXIT_FAIL_ENTRY:
			return fail(out, "KVM_EXIT_FAIL_ENTRY", -EIO);
		case KVM_EXIT_INTERNAL_ERROR:
			return fail(out, "KVM_EXIT_INTERNAL_ERROR", -EIO);
		default:
			return fail(out, "unexpected exit", -EIO);
		}
	}
}

struct revoker {
	struct vm *v;
	uint64_t iterations, revoke_after;
	uint64_t revoke_ns;
	int status;
};

static void *revoker_main(void *arg) {
	struct revoker *rv = arg;
	volatile uint32_t *left = (volatile uint32_t *)(rv->v->dev + 8);
	/* Register 2 counts down from `iterations`: wait until the guest has done revoke_after. */
	uint32_t until = (uint32_t)(rv->iterations - rv->revoke_after);
	while (*left == 0 || *left > until) sched_yield();
	uint64_t t0 = now_ns();
	rv->status = exporter_revoke(&rv->v->exp);
	rv->revoke_ns = now_ns() - t0;
	/* The old backing now holds the sentinel: a stale read or write would show. */
	*(volatile uint32_t *)(rv->v->dev + 0) = RVMM_SENTINEL;
	*(volatile uint32_t *)(rv->v->dev + 8) = RVMM_SENTINEL;
	return NULL;
}

int rvmm_run_trapped(const struct rvmm_config *c, struct rvmm_result *out) {
	uint64_t n = c->iterations ? c->iterations : 1;
	struct vm v;
	int r;
	if ((r = vm_open(&v, c, out, n)) == 0) {
		uint64_t t0 = now_ns();
		if ((r = run_guest(&v, MODE_TRAPPED, out)) == 0) {
			out->trapped_ns_per_access = (double)(now_ns() - t0) / (double)(2 * n);
			out->trapped_exits = v.mmio_exits;
		}
	}
	vm_close(&v);
	return r;
}

int rvmm_run_mapped(const struct rvmm_config *c, struct rvmm_result *out) {
	uint64_t n = c->iterations ? c->iterations : 1;
	struct vm v;
	int r;
	if ((r = vm_open(&v, c, out, n)) == 0) {
		out->guest_memfd = v.guest_memfd;
		uint64_t t0 = now_ns();
		if ((r = run_guest(&v, MODE_MAPPED, out)) == 0) {
			out->mapped_ns_per_access = (double)(now_ns() - t0) / (double)(2 * n);
			out->mapped_exits = v.mmio_exits;
			out->first_fault_us = (double)v.first_fault_ns / 1e3;
		}
	}
	vm_close(&v);
	return r;
}

int rvmm_run_revoke(const struct rvmm_config *c, struct rvmm_result *out) {
	/* The revoke run loops until the guest has seen RVMM_ALLONES_TO_STOP all-ones reads, however
	 * late the revoking thread is scheduled; the bound only stops a guest whose revoke never came. */
	if (c->revoke_after == 0) return fail(out, "revoke_after", -EINVAL);
	uint64_t bound = c->revoke_after + RVMM_REVOKE_BOUND;
	struct vm v;
	int r;
	if ((r = vm_open(&v, c, out, bound)) == 0) {
		struct revoker rv = { .v = &v, .iterations = bound, .revoke_after = c->revoke_after };
		pthread_t t;
		if ((r = pthread_create(&t, NULL, revoker_main, &rv)) != 0) {
			r = fail(out, "pthread_create", r);
		} else {
			r = run_guest(&v, MODE_MAPPED, out);
			pthread_join(t, NULL);
			if (r == 0 && rv.status < 0) r = fail(out, "KVM_SET_USER_MEMORY_REGION2 delete", rv.status);
			out->revoke_us = (double)rv.revoke_ns / 1e3;
			out->revoke_allones_reads = v.allones;
			out->revoke_stale_reads = v.stale;
			out->revoke_backing_untouched = *(volatile uint32_t *)(v.dev + 8) == RVMM_SENTINEL;
		}
	}
	vm_close(&v);
	return r;
}

int rvmm_run(const struct rvmm_config *c, struct rvmm_result *out) {
	memset(out, 0, sizeof *out);
	int r = rvmm_run_trapped(c, out);
	if (r || c->trapped_only) return r;
	if ((r = rvmm_run_mapped(c, out)) || c->revoke_after == 0) return r;
	return rvmm_run_revoke(c, out);
}
