#ifndef CKVM_SHIM_H
#define CKVM_SHIM_H
/* Placeholder until HostKVM lands. */
int ckvm_shim_placeholder(void);
#endif
