#include "ckvm_shim.h"
int ckvm_shim_placeholder(void) { return 0; }
