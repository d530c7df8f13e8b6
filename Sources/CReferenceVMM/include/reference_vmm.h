#ifndef REFERENCE_VMM_H
#define REFERENCE_VMM_H
/*
 * A plain-C VMM that runs the same guest, the same way, as HostKVM: a BAR at a fixed GPA that
 * has no memslot until the first access exits KVM_EXIT_MMIO. It exists so that figures measured
 * on a machine whose KVM emulates guest instructions are compared side by side, in one process,
 * with what C does with no abstraction at all.
 */
#include <stdint.h>

/* Where the guest's BAR lives and how big it is; HostKVM uses the same values. */
#define RVMM_BAR_GPA 0x10000000ULL
#define RVMM_BAR_SIZE 0x4000ULL
#define RVMM_CODE_GPA 0x1000ULL
#define RVMM_RAM_SIZE 0x10000ULL
/* Register 0 of the BAR reads this until the buffer is revoked. */
#define RVMM_REGISTER_VALUE 0x5EED0001u
/* Written into the backing after revoke: a guest read that returns it read a revoked buffer. */
#define RVMM_SENTINEL 0xDEADBEEFu
/* The guest stops after this many all-ones reads (after revoke, every read is one). */
#define RVMM_ALLONES_TO_STOP 16
/* Iterations the revoke run may take after `revoke_after` before the guest gives up. */
#define RVMM_REVOKE_BOUND 0x100000ULL
/* The guest reports all-ones reads on this port, then reads of the sentinel on the next. */
#define RVMM_REPORT_PORT 0x10

struct rvmm_config {
	uint64_t iterations;   /* guest loop iterations per run; each does one read and one write */
	uint64_t revoke_after; /* iterations of the revoke run before it revokes; 0 skips that run */
	int allow_guest_memfd; /* back the BAR with guest_memfd where the host supports it */
	int trapped_only;      /* run only the trapped run */
};

struct rvmm_result {
	int status;               /* 0, or -errno of the step that failed */
	char failed_step[48];     /* the ioctl or call that failed */
	int guest_memfd;          /* 1: BAR slot backed by guest_memfd; 0: memfd mapping */
	uint64_t trapped_exits;   /* MMIO exits of the trapped run */
	uint64_t mapped_exits;    /* MMIO exits of the lazily mapped run */
	double trapped_ns_per_access;
	double mapped_ns_per_access;
	/* Handling of the exit that installed the BAR slot, from KVM_RUN's return to the completed
	 * access: the seq read, one exporter lookup per BAR page, KVM_SET_USER_MEMORY_REGION2 per run
	 * of contiguous PFNs, the MMIO completion; timed with ckvm_now_ns() as HostKVM times it. */
	double first_fault_us;
	/* The exporter's revoke: mark revoked and, under its lock, move_notify deleting the slot under
	 * a running vCPU. */
	double revoke_us;
	uint64_t revoke_allones_reads; /* guest reads that returned all-ones after revoke */
	uint64_t revoke_stale_reads;   /* guest reads that returned the sentinel: must be 0 */
	int revoke_backing_untouched;  /* 1 when no guest write reached the backing after revoke */
};

/* The guest's code, loaded at RVMM_CODE_GPA; HostKVM loads the same bytes. */
extern const uint8_t rvmm_guest_code[];
extern const uint64_t rvmm_guest_code_size;
/* The same bytes for Swift, which cannot import an array of unknown size. */
const uint8_t *rvmm_guest_code_bytes(void);

/* Runs the trapped, lazily mapped and (if asked) revoke runs; fills *out. Returns out->status. */
int rvmm_run(const struct rvmm_config *config, struct rvmm_result *out);
/*
 * One run each, on a fresh VM, filling only that run's fields of *out (which they do not clear):
 * trapped (trapped_*), lazily mapped (mapped_*, first_fault_us, guest_memfd) and revoke (revoke_*;
 * -EINVAL for revoke_after == 0). Each returns 0 or -errno (and sets status and failed_step).
 */
int rvmm_run_trapped(const struct rvmm_config *config, struct rvmm_result *out);
int rvmm_run_mapped(const struct rvmm_config *config, struct rvmm_result *out);
int rvmm_run_revoke(const struct rvmm_config *config, struct rvmm_result *out);
#endif
