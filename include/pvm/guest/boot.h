/*
 * pvm/guest/boot.h - how an SDK guest starts.
 *
 * The loader starts every vCPU at _start (lib/guest/entry.S) in 64-bit smod
 * with RDI = GVA of its struct pvm_boot_info, RSI = vCPU id and RSP = its
 * boot stack.  The runtime checks that it runs on PVM (synthetic CPUID,
 * §8.1), sets up the vCPU's PVCS and PVM MSRs, then
 *   - on vCPU 0 calls main(argc, argv) with the boot command line split at
 *     spaces, and exits with main's return value;
 *   - on every other vCPU waits until vCPU 0 finished the runtime setup, calls
 *     pvm_secondary_main(id) and stops that vCPU (HLT with interrupts off)
 *     when it returns.
 * Interrupts are disabled when main / pvm_secondary_main start.
 */
#ifndef PVM_GUEST_BOOT_H
#define PVM_GUEST_BOOT_H

#include "pvm/abi.h"

/** vCPUs the runtime supports (ids 0..PVM_GUEST_MAX_VCPUS-1). */
#define PVM_GUEST_MAX_VCPUS 64

/** SDK version stamped into the ELF note: 0x00MMmmpp like PVM_VERSION. */
#define PVM_SDK_VERSION 0x000100u

/*
 * The guest's entry on vCPU 0 is main, as `int main(void)` or
 * `int main(int argc, char **argv)` (optional: without it the guest exits
 * with 0).  It is not declared here so either form compiles.
 */
/** Entry of vCPUs other than 0; the default returns at once. */
int pvm_secondary_main(unsigned cpu_id);

/** This vCPU's boot-info block (copied to guest RAM by the loader). */
const struct pvm_boot_info *pvm_boot_info(void);

/** Stop this vCPU for good: interrupts off, HLT (the host sees PVM_EXIT_HALT). */
__attribute__((noreturn)) void pvm_cpu_stop(void);

/** Spin-wait hint. */
static inline void pvm_cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

#endif /* PVM_GUEST_BOOT_H */
