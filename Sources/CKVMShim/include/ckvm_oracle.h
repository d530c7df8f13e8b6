#ifndef CKVM_ORACLE_H
#define CKVM_ORACLE_H
/*
 * The uAPI the fuzz oracle (pmmio fuzz --oracle kvm) sends to /dev/kvm beyond what HostKVM's VMM
 * needs: KVM_SET_MEMORY_ATTRIBUTES (Linux 6.8) and the capability numbers it reads, defined with the
 * upstream layout behind #ifndef, as ckvm_shim.h does, so that a newer system header wins.
 */
#include "ckvm_shim.h"

#ifndef KVM_SET_MEMORY_ATTRIBUTES
/* include/uapi/linux/kvm.h, Linux 6.8 */
struct kvm_memory_attributes {
	__u64 address;
	__u64 size;
	__u64 attributes;
	__u64 flags;
};
#define KVM_SET_MEMORY_ATTRIBUTES _IOW(KVMIO, 0xd2, struct kvm_memory_attributes)
#endif

#ifndef KVM_CAP_MULTI_ADDRESS_SPACE
#define KVM_CAP_MULTI_ADDRESS_SPACE 118
#endif
#ifndef KVM_CAP_MEMORY_ATTRIBUTES
#define KVM_CAP_MEMORY_ATTRIBUTES 233
#endif

static const unsigned long ckvm_KVM_SET_MEMORY_ATTRIBUTES = KVM_SET_MEMORY_ATTRIBUTES;
#endif
