#include "reference_vmm.h"
int reference_vmm_placeholder(void) { return 0; }
