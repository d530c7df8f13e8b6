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

struct vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	int run_size;
	uint8_t *ram;
	int dev_fd;          /* device memory: guest_memfd or memfd */
	volatile uint8_t *dev; /* host view, to complete exits and check the sentinel */
	int guest_memfd;
	int has_region2;
	/* The exporter's side: a revoked flag and the slot, both under one lock. */
	pthread_mutex_t lock;
	int revoked;
	int bar_mapped;
	uint64_t mmio_exits;
	uint32_t allones, stale;
	double first_fault_ns;
};

static double now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int fail(struct rvmm_result *out, const char *step, int err) {
	out->status = err < 0 ? err : -err;
	snprintf(out->failed_step, sizeof out->failed_step, "%s", step);
	return out->status;
}

static int set_slot(struct vm *v, uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size,
                    uint64_t uaddr, int gmem_fd) {
	if (v->has_region2) {
		struct kvm_userspace_memory_region2 r = {
			.slot = slot, .flags = flags, .guest_phys_addr = gpa, .memory_size = size,
			.userspace_addr = uaddr, .guest_memfd_offset = 0, .guest_memfd = (uint32_t)gmem_fd,
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
	pthread_mutex_destroy(&v->lock);
}

static int vm_open(struct vm *v, const struct rvmm_config *c, struct rvmm_result *out,
                   uint64_t iterations) {
	memset(v, 0, sizeof *v);
	v->kvm = v->vm = v->vcpu = v->dev_fd = -1;
	pthread_mutex_init(&v->lock, NULL);
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
	if ((r = set_slot(v, 0, 0, 0, RVMM_RAM_SIZE, (uint64_t)(uintptr_t)ram, 0)) < 0)
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

/* Exporter lookup plus memslot install, under the exporter lock so revoke cannot slip between. */
static int fault_in(struct vm *v) {
	pthread_mutex_lock(&v->lock);
	int r = -ENODEV;
	if (!v->revoked) {
		r = set_slot(v, 1, v->guest_memfd ? KVM_MEM_GUEST_MEMFD : 0, RVMM_BAR_GPA, RVMM_BAR_SIZE,
		             (uint64_t)(uintptr_t)v->dev, v->guest_memfd ? v->dev_fd : 0);
		if (r == 0) v->bar_mapped = 1;
	}
	pthread_mutex_unlock(&v->lock);
	return r;
}

static int revoke_bar(struct vm *v) {
	pthread_mutex_lock(&v->lock);
	v->revoked = 1;
	int r = 0;
	if (v->bar_mapped) {
		r = set_slot(v, 1, v->guest_memfd ? KVM_MEM_GUEST_MEMFD : 0, RVMM_BAR_GPA, 0, 0,
		             v->guest_memfd ? v->dev_fd : 0);
		v->bar_mapped = 0;
	}
	pthread_mutex_unlock(&v->lock);
	return r;
}

static int run_guest(struct vm *v, enum mode mode, struct rvmm_result *out) {
	for (;;) {
		int r = ckvm_ioctl_val(v->vcpu, KVM_RUN, 0);
		if (r == -EINTR || r == -EAGAIN) continue;
		if (r < 0) return fail(out, "KVM_RUN", r);
		struct kvm_run *run = v->run;
		switch (run->exit_reason) {
		case KVM_EXIT_MMIO: {
			double t0 = now_ns();
			v->mmio_exits++;
			uint64_t off = run->mmio.phys_addr - RVMM_BAR_GPA;
			uint32_t len = run->mmio.len;
			if (run->mmio.phys_addr < RVMM_BAR_GPA || off + len > RVMM_BAR_SIZE || len > 8)
				return fail(out, "MMIO outside the BAR", -EFAULT);
			int first = 0;
			pthread_mutex_lock(&v->lock);
			int revoked = v->revoked;
			pthread_mutex_unlock(&v->lock);
			if (!revoked && mode == MODE_MAPPED) {
				r = fault_in(v);
				if (r == -ENODEV) revoked = 1;
				else if (r < 0) return fail(out, "KVM_SET_USER_MEMORY_REGION2 bar", r);
				else first = 1;
			}
			if (revoked) {
				if (!run->mmio.is_write) memset(run->mmio.data, 0xFF, len);
			} else if (run->mmio.is_write) {
				memcpy((void *)(v->dev + off), run->mmio.data, len);
			} else {
				memcpy(run->mmio.data, (void *)(v->dev + off), len);
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
	double revoke_ns;
	int status;
};

static void *revoker_main(void *arg) {
	struct revoker *rv = arg;
	volatile uint32_t *left = (volatile uint32_t *)(rv->v->dev + 8);
	/* Register 2 counts down from `iterations`: wait until the guest has done revoke_after. */
	uint32_t until = (uint32_t)(rv->iterations - rv->revoke_after);
	while (*left == 0 || *left > until) sched_yield();
	double t0 = now_ns();
	rv->status = revoke_bar(rv->v);
	rv->revoke_ns = now_ns() - t0;
	/* The old backing now holds the sentinel: a stale read or write would show. */
	*(volatile uint32_t *)(rv->v->dev + 0) = RVMM_SENTINEL;
	*(volatile uint32_t *)(rv->v->dev + 8) = RVMM_SENTINEL;
	return NULL;
}

int rvmm_run(const struct rvmm_config *c, struct rvmm_result *out) {
	memset(out, 0, sizeof *out);
	uint64_t n = c->iterations ? c->iterations : 1;
	struct vm v;
	int r;

	if ((r = vm_open(&v, c, out, n)) == 0) {
		double t0 = now_ns();
		if ((r = run_guest(&v, MODE_TRAPPED, out)) == 0) {
			out->trapped_ns_per_access = (now_ns() - t0) / (double)(2 * n);
			out->trapped_exits = v.mmio_exits;
		}
	}
	vm_close(&v);
	if (r || c->trapped_only) return r;

	if ((r = vm_open(&v, c, out, n)) == 0) {
		out->guest_memfd = v.guest_memfd;
		double t0 = now_ns();
		if ((r = run_guest(&v, MODE_MAPPED, out)) == 0) {
			out->mapped_ns_per_access = (now_ns() - t0) / (double)(2 * n);
			out->mapped_exits = v.mmio_exits;
			out->first_fault_us = v.first_fault_ns / 1e3;
		}
	}
	vm_close(&v);
	if (r || c->revoke_after == 0) return r;

	/* The revoke run loops until the guest has seen RVMM_ALLONES_TO_STOP all-ones reads, however
	 * late the revoking thread is scheduled; the bound only stops a guest whose revoke never came. */
	uint64_t bound = c->revoke_after + RVMM_REVOKE_BOUND;
	if ((r = vm_open(&v, c, out, bound)) == 0) {
		struct revoker rv = { .v = &v, .iterations = bound, .revoke_after = c->revoke_after };
		pthread_t t;
		if ((r = pthread_create(&t, NULL, revoker_main, &rv)) != 0) {
			r = fail(out, "pthread_create", r);
		} else {
			r = run_guest(&v, MODE_MAPPED, out);
			pthread_join(t, NULL);
			if (r == 0 && rv.status < 0) r = fail(out, "KVM_SET_USER_MEMORY_REGION2 delete", rv.status);
			out->revoke_us = rv.revoke_ns / 1e3;
			out->revoke_allones_reads = v.allones;
			out->revoke_stale_reads = v.stale;
			out->revoke_backing_untouched = *(volatile uint32_t *)(v.dev + 8) == RVMM_SENTINEL;
		}
	}
	vm_close(&v);
	return r;
}
