/*
 * lib/backends/native/native.h - internal hooks of the native backend for
 * tests and statistics (not part of the public API).
 */
#ifndef PVM_NATIVE_H
#define PVM_NATIVE_H

#include <stdbool.h>
#include <stdint.h>

#include "pvm/pvm.h"

/*
 * The smod fast path (docs/design.md "Fast path"): on unless the environment
 * variable PVM_NATIVE_FASTPATH is "0" when the vCPU is created.
 */
bool pvm__native_fastpath(const pvm_vcpu *v);
/* Events the stub handled without a report on @v so far (0 for other backends). */
uint64_t pvm__native_fast_events(const pvm_vcpu *v);
/* Of those, external interrupts delivered in the stub (§5.5, stub/fast.c irq_check). */
uint64_t pvm__native_fast_irqs(const pvm_vcpu *v);
/* Shadow mappings installed ahead of a guest's #PF retry (native.c pf_prefetch). */
uint64_t pvm__native_prefetches(const pvm_vcpu *v);
/* Shadow mappings installed ahead of the fetch at RIP (lib/hv/run.c pvm_hv_fetch_prefetch). */
uint64_t pvm__native_fetch_prefetches(const pvm_vcpu *v);

/*
 * User SYSCALLs the kernel stub took straight from the user stub (the
 * hand-off, stub/link.c; on with the fast path unless PVM_NATIVE_LINK is
 * "0" when the vCPU is created), and of those, the ones whose kernel
 * needed the library before its ERETU (the library adopted its report).
 */
uint64_t pvm__native_link_trips(const pvm_vcpu *v);
uint64_t pvm__native_link_adopts(const pvm_vcpu *v);

/* Host pid of the stub of address-space slot @slot (tests: /proc accounting), or -1. */
int pvm__native_stub_pid(const pvm_vcpu *v, unsigned slot);

#endif /* PVM_NATIVE_H */
