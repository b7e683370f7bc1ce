/*
 * lib/guest/trap.c - from the entry stubs' saved frame to C handlers.
 */
#include <stddef.h>

#include "pvm/guest/pvm_guest.h"
#include "percpu.h"
#include "runtime.h"

static pvm_trap_fn trap_handlers[256];
static pvm_trap_fn syscall_handler;

void pvm_set_trap_handler(unsigned vector, pvm_trap_fn fn)
{
    if (vector < 256)
        __atomic_store_n(&trap_handlers[vector], fn, __ATOMIC_RELEASE);
}

void pvm_set_syscall_handler(pvm_trap_fn fn)
{
    __atomic_store_n(&syscall_handler, fn, __ATOMIC_RELEASE);
}

const char *pvm_vector_name(unsigned vector)
{
    static const char *const names[32] = {
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS",
        "#NP", "#SS", "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
    };
    if (vector < 32)
        return names[vector] ? names[vector] : "reserved";
    return "interrupt";
}

static int has_error_code(unsigned vector)
{
    switch (vector) {
    case PVM_VEC_DF: case PVM_VEC_TS: case PVM_VEC_NP: case PVM_VEC_SS:
    case PVM_VEC_GP: case PVM_VEC_PF: case PVM_VEC_AC: case 21: case 29: case 30:
        return 1;
    default:
        return 0;
    }
}

void pvm__trap_dispatch(struct pvm_frame *f)
{
    if (f->kind == PVM_FRAME_SYSCALL) {
        pvm_trap_fn h = __atomic_load_n(&syscall_handler, __ATOMIC_ACQUIRE);
        if (h)
            h(f);
        else
            f->rax = (uint64_t)-38; /* ENOSYS */
        return;
    }
    unsigned vector = (unsigned)f->vector & 0xff;
    f->vector = vector;
    /* PVCS.event_errcode keeps stale values for events without one (§10.4). */
    if (vector >= 32 || !has_error_code(vector))
        f->error_code = 0;
    pvm_trap_fn h = __atomic_load_n(&trap_handlers[vector], __ATOMIC_ACQUIRE);
    if (h) {
        h(f);
        return;
    }
    if (vector >= 32)
        return; /* unhandled interrupts are ignored */
    pvm_panic("unhandled %s exception %u (%s) error 0x%lx at rip 0x%lx rsp 0x%lx cr2 0x%lx on vCPU %u",
              pvm_frame_is_user(f) ? "user" : "kernel", vector, pvm_vector_name(vector),
              (unsigned long)f->error_code, (unsigned long)f->rip, (unsigned long)f->rsp,
              (unsigned long)f->cr2, pvm_cpu_id());
}
