#ifndef CKVM_SHIM_H
#define CKVM_SHIM_H
/*
 * The parts of <linux/kvm.h> that Swift cannot import on its own.
 *
 * Ioctl request numbers are function-like macros (_IO/_IOR/_IOW/_IOWR) and do not import, so each
 * one used by HostKVM is re-exported as a `static const unsigned long ckvm_<NAME>`. The system
 * header on the build machines is Linux 6.1; the memslot and guest_memfd uAPI of 6.8 is defined
 * here with the upstream layout, behind #ifndef so that a newer header wins.
 */
#include <linux/kvm.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <time.h>

#ifndef KVM_SET_USER_MEMORY_REGION2
/* include/uapi/linux/kvm.h, Linux 6.8 */
struct kvm_userspace_memory_region2 {
	__u32 slot;
	__u32 flags;
	__u64 guest_phys_addr;
	__u64 memory_size;
	__u64 userspace_addr;
	__u64 guest_memfd_offset;
	__u32 guest_memfd;
	__u32 pad1;
	__u64 pad2[14];
};
#define KVM_SET_USER_MEMORY_REGION2 _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)
#endif

#ifndef KVM_CREATE_GUEST_MEMFD
struct kvm_create_guest_memfd {
	__u64 size;
	__u64 flags;
	__u64 reserved[6];
};
#define KVM_CREATE_GUEST_MEMFD _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)
#endif

#ifndef KVM_MEM_GUEST_MEMFD
#define KVM_MEM_GUEST_MEMFD (1UL << 2)
#endif
#ifndef GUEST_MEMFD_FLAG_MMAP
#define GUEST_MEMFD_FLAG_MMAP (1ULL << 0)
#endif
#ifndef GUEST_MEMFD_FLAG_INIT_SHARED
#define GUEST_MEMFD_FLAG_INIT_SHARED (1ULL << 1)
#endif
#ifndef KVM_CAP_USER_MEMORY2
#define KVM_CAP_USER_MEMORY2 231
#endif
#ifndef KVM_CAP_GUEST_MEMFD
#define KVM_CAP_GUEST_MEMFD 234
#endif
#ifndef KVM_CAP_VM_TYPES
#define KVM_CAP_VM_TYPES 235
#endif
#ifndef KVM_CAP_GUEST_MEMFD_FLAGS
#define KVM_CAP_GUEST_MEMFD_FLAGS 244
#endif

/* Request numbers, as values Swift can see. */
static const unsigned long ckvm_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long ckvm_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long ckvm_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long ckvm_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long ckvm_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long ckvm_KVM_SET_USER_MEMORY_REGION2 = KVM_SET_USER_MEMORY_REGION2;
static const unsigned long ckvm_KVM_CREATE_GUEST_MEMFD = KVM_CREATE_GUEST_MEMFD;
static const unsigned long ckvm_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long ckvm_KVM_RUN = KVM_RUN;
static const unsigned long ckvm_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long ckvm_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long ckvm_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long ckvm_KVM_SET_SREGS = KVM_SET_SREGS;

/* Flags and values used by HostKVM that are plain macros but are gathered here for one spelling. */
static const uint32_t ckvm_KVM_MEM_GUEST_MEMFD = (uint32_t)KVM_MEM_GUEST_MEMFD;
static const uint64_t ckvm_GUEST_MEMFD_FLAG_MMAP = GUEST_MEMFD_FLAG_MMAP;
static const uint64_t ckvm_GUEST_MEMFD_FLAG_INIT_SHARED = GUEST_MEMFD_FLAG_INIT_SHARED;

/*
 * ioctl(2) is variadic and does not import into Swift; these fixed-arity wrappers are the one
 * seam every KVM ioctl passes through. They return the ioctl's result, or -errno.
 */
int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg);
int ckvm_ioctl_val(int fd, unsigned long request, unsigned long arg);

/* memfd_create(name, MFD_CLOEXEC): the declaration needs _GNU_SOURCE, which Swift does not set.
 * Returns the fd, or -errno. */
int ckvm_memfd_create(const char *name);

/* The kvm_run exit payloads HostKVM decodes; accessors keep Swift off the anonymous unions. */
static inline struct kvm_run *ckvm_run_ptr(void *p) { return (struct kvm_run *)p; }
static inline uint8_t *ckvm_run_io_data(struct kvm_run *run) {
	return (uint8_t *)run + run->io.data_offset;
}
/*
 * KVM_EXIT_MMIO's payload by pointer: Swift imports the anonymous union as computed properties,
 * so `run.pointee.mmio.data` would copy the union out and back on every exit.
 */
static inline uint64_t ckvm_run_mmio_phys_addr(const struct kvm_run *run) { return run->mmio.phys_addr; }
static inline uint32_t ckvm_run_mmio_len(const struct kvm_run *run) { return run->mmio.len; }
static inline uint8_t ckvm_run_mmio_is_write(const struct kvm_run *run) { return run->mmio.is_write; }
static inline uint8_t *ckvm_run_mmio_data(struct kvm_run *run) { return run->mmio.data; }
/*
 * Loads and stores through a shared mapping that another thread, or the guest, may change under
 * us: volatile so the compiler neither caches nor drops them.
 */
static inline uint32_t ckvm_load32(const void *p) { return *(const volatile uint32_t *)p; }
static inline void ckvm_store32(void *p, uint32_t v) { *(volatile uint32_t *)p = v; }

/*
 * CLOCK_MONOTONIC in nanoseconds. HostKVM and the C reference VMM both time their exits with this
 * one clock, so a Swift-vs-C ratio never compares two clocks (ContinuousClock is CLOCK_BOOTTIME).
 */
static inline uint64_t ckvm_now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
#endif
