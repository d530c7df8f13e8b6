#define _GNU_SOURCE
#include "ckvm_shim.h"
#include <errno.h>
#include <sys/mman.h>

int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg) {
	int r = ioctl(fd, request, arg);
	return r < 0 ? -errno : r;
}

int ckvm_ioctl_val(int fd, unsigned long request, unsigned long arg) {
	int r = ioctl(fd, request, arg);
	return r < 0 ? -errno : r;
}

int ckvm_memfd_create(const char *name) {
	int fd = memfd_create(name, MFD_CLOEXEC);
	return fd < 0 ? -errno : fd;
}
