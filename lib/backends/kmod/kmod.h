/*
 * lib/backends/kmod/kmod.h - what the kmod backend tells tests and benchmarks.
 */
#ifndef PVM_BACKEND_KMOD_H
#define PVM_BACKEND_KMOD_H

#include <stdint.h>

#include "core/core.h"

/*
 * Events the module delivered itself on @v so far (PVM_KMOD_RUN_PVM), and
 * how many of them switched mode (user events, ERETU); 0 for a vCPU of
 * another backend.  The vCPU's thread, or while it is stopped.
 */
uint64_t pvm__kmod_events(const pvm_vcpu *v);
uint64_t pvm__kmod_switches(const pvm_vcpu *v);

#endif
