/* lib/guest/runtime.h - runtime-internal functions shared between files. */
#ifndef PVM_GUEST_RUNTIME_H
#define PVM_GUEST_RUNTIME_H

#include <stdint.h>

#include "pvm/guest/trap.h"

extern uint64_t pvm__direct_map_base;
extern uint64_t pvm__kernel_root;

void pvm__boot(const struct pvm_boot_info *bi, uint64_t id);
void pvm__page_alloc_init(uint64_t free_gpa, uint64_t ram_size);
void pvm__trap_dispatch(struct pvm_frame *f);
long pvm__enter_user(uint64_t rip, uint64_t rsp);

#endif
