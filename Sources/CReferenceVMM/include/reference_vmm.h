#ifndef REFERENCE_VMM_H
#define REFERENCE_VMM_H
/* Placeholder until HostKVM lands. */
int reference_vmm_placeholder(void);
#endif
