/*
 * lib/machine/cpu.c - vCPU reset, the RFLAGS/IF protocol, shutdown and the
 * allowed-address rule.  Section numbers (§) refer to shared/docs/pvm-abi.md.
 *
 * §10.29 decision: the model speaks Gen A only (RFC v1 numbering and PVCS layout).
 */
#include <stdio.h>
#include <string.h>

#include "model.h"

void pvm_m_reset(struct pvm_cpu *cpu, uint64_t default_linear_range)
{
    /* §10.11 decision: REDZONE is not reset (RFC); RETU/RETS read back 0xff..fe. */
    uint64_t redzone = cpu->msr_redzone;

    /* Everything before the CPUID table; the table and vcpu_id survive (machine.h). */
    memset(cpu, 0, offsetof(struct pvm_cpu, nr_cpuid));
    cpu->msr_redzone = redzone;

    /* §9.3 values, but already converted to PVM mode (§9.4): 64-bit smod. */
    cpu->mode = PVM_MODE_SUPERVISOR;
    cpu->rflags = PVM_RFLAGS_FIXED;
    cpu->cs = PVM_USER_CS; /* §1.2: smod runs on __USER_CS/__USER_DS */
    cpu->ss = PVM_USER_DS;
    cpu->cr0 = PVM_M_RESET_CR0;
    cpu->cr4 = PVM_M_RESET_CR4;
    cpu->efer = PVM_M_RESET_EFER;
    cpu->msr_star = PVM_M_RESET_STAR;
    /* §10.30 decision: the backend picks the default range; it is also the bound. */
    cpu->msr_linear_range = default_linear_range;
    cpu->msr_linear_range_default = default_linear_range;
    /* §10.31: the NMI mask is also cleared by reset/INIT (memset above). */
    cpu->pending_exit = PVM_EXIT_NONE;
}

struct pvm_vcpu_struct *pvm_m__pvcs(const struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    if (cpu->msr_vcpu_struct == 0 || !mem || !mem->phys)
        return NULL;
    /* The RFC maps the whole page; the MSR write already checked it (§2). */
    return mem->phys(mem->opaque, cpu->msr_vcpu_struct, 4096, true);
}

struct pvm_vcpu_struct *pvm_m_pvcs(const struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    return pvm_m__pvcs(cpu, mem);
}

bool pvm_m_la57(const struct pvm_cpu *cpu)
{
    return (cpu->cr4 & PVM_CR4_LA57) != 0;
}

bool pvm_m_irq_enabled(const struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    if (cpu->mode != PVM_MODE_SUPERVISOR)
        return true; /* §1.2: umod always behaves as IF=1 */
    /* §10.22 decision: no PVCS means smod IF reads as 0 (RFC). */
    struct pvm_vcpu_struct *p = pvm_m__pvcs(cpu, mem);
    return p && (p->event_flags & PVM_EVENT_FLAGS_IF);
}

void pvm_m__sync_if(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    if (cpu->mode != PVM_MODE_SUPERVISOR)
        return;
    cpu->rflags &= ~PVM_RFLAGS_IF;
    if (pvm_m_irq_enabled(cpu, mem))
        cpu->rflags |= PVM_RFLAGS_IF;
}

void pvm_m_set_rflags(struct pvm_cpu *cpu, const struct pvm_mem *mem, uint64_t rflags)
{
    /* The cached IF must be the guest's current one: it may have changed PVCS bit 9. */
    pvm_m__sync_if(cpu, mem);
    bool old_if = cpu->rflags & PVM_RFLAGS_IF;
    bool new_if = rflags & PVM_RFLAGS_IF;

    cpu->rflags = rflags | PVM_RFLAGS_FIXED;
    if (cpu->mode != PVM_MODE_SUPERVISOR) {
        cpu->rflags |= PVM_RFLAGS_IF; /* §1.2: umod always runs with IF = 1 */
        return;
    }
    /* §5.7: mirror IF into the PVCS only when it changes (smod only). */
    if (old_if == new_if)
        return;
    struct pvm_vcpu_struct *p = pvm_m__pvcs(cpu, mem);
    if (!p)
        return;
    if (new_if) {
        /* §10.31 decision: IP is cleared only when IF goes 0 -> 1 (RFC, not the spec). */
        p->event_flags = (p->event_flags | PVM_EVENT_FLAGS_IF) & ~PVM_EVENT_FLAGS_IP;
    } else {
        p->event_flags &= ~PVM_EVENT_FLAGS_IF;
    }
}

uint16_t pvm_m__sup_cs(const struct pvm_cpu *cpu)
{
    return (uint16_t)((cpu->msr_star >> 32) & 0xfffc);
}

static unsigned va_bits(const struct pvm_cpu *cpu)
{
    return (cpu->cr4 & PVM_CR4_LA57) ? 57 : 48;
}

uint64_t pvm_m__canonicalize(const struct pvm_cpu *cpu, uint64_t v)
{
    unsigned shift = 64 - va_bits(cpu);
    return (uint64_t)((int64_t)(v << shift) >> shift);
}

bool pvm_m__is_canonical(const struct pvm_cpu *cpu, uint64_t v)
{
    return pvm_m__canonicalize(cpu, v) == v;
}

void pvm_m__flush(const struct pvm_mem *mem, enum pvm_flush_kind kind, uint64_t gva)
{
    if (mem && mem->flush)
        mem->flush(mem->opaque, kind, gva);
}

bool pvm_m_la_allowed(uint64_t range, uint64_t gva)
{
    /* §10.13 decision: address 0 is not allowed (RFC tests va > 0). */
    if (!(gva >> 63))
        return gva != 0;
    /* §8.2: [(0x1fffe00 | START) << 39, (0x1fffe00 | END) << 39), modulo 2^64. */
    uint64_t s4 = (uint64_t)(0x1fffe00u | PVM_LA_RANGE_PML4_START(range)) << 39;
    uint64_t e4 = (uint64_t)(0x1fffe00u | PVM_LA_RANGE_PML4_END(range)) << 39;
    if (gva >= s4 && gva < e4)
        return true;
    uint64_t s5 = (uint64_t)(0xfe00u | PVM_LA_RANGE_PML5_START(range)) << 48;
    uint64_t e5 = (uint64_t)(0xfe00u | PVM_LA_RANGE_PML5_END(range)) << 48;
    return gva >= s5 && gva < e5;
}

enum pvm_m_result pvm_m_shutdown(struct pvm_cpu *cpu, const char *fmt, ...)
{
    va_list ap;
    memset(&cpu->exit, 0, sizeof(cpu->exit));
    cpu->exit.reason = PVM_EXIT_SHUTDOWN;
    cpu->exit.u.shutdown.rip = cpu->rip;
    va_start(ap, fmt);
    vsnprintf(cpu->exit.u.shutdown.reason, sizeof(cpu->exit.u.shutdown.reason), fmt, ap);
    va_end(ap);
    cpu->pending_exit = PVM_EXIT_NONE;
    return PVM_M_SHUTDOWN;
}

void pvm_m_internal_exit(struct pvm_exit *e, int code, const char *fmt, va_list ap)
{
    memset(e, 0, sizeof(*e));
    e->reason = PVM_EXIT_INTERNAL_ERROR;
    e->u.internal.code = code;
    vsnprintf(e->u.internal.msg, sizeof(e->u.internal.msg), fmt, ap);
}

enum pvm_m_result pvm_m__internal_error(struct pvm_cpu *cpu, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pvm_m_internal_exit(&cpu->exit, code, fmt, ap);
    va_end(ap);
    cpu->pending_exit = PVM_EXIT_NONE;
    return PVM_M_EXIT;
}

enum pvm_m_result pvm_m__trap_begin(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    if (cpu->mode != PVM_MODE_SUPERVISOR && cpu->mode != PVM_MODE_USER)
        return pvm_m__internal_error(cpu, PVM_EINTERNAL, "machine: invalid mode %u", cpu->mode);
    /*
     * §5.10 / §10.18 decision: smod must run on __USER_CS/__USER_DS; a far
     * transfer or IRETQ to another DPL-3 selector triple-faults at the next exit.
     */
    if (cpu->mode == PVM_MODE_SUPERVISOR && (cpu->cs != PVM_USER_CS || cpu->ss != PVM_USER_DS))
        return pvm_m_shutdown(cpu, "smod exit with hardware CS %#x SS %#x (must be %#x/%#x)",
                              cpu->cs, cpu->ss, PVM_USER_CS, PVM_USER_DS);
    pvm_m__sync_if(cpu, mem);
    return PVM_M_RESUME;
}

enum pvm_m_result pvm_m__trap_end(struct pvm_cpu *cpu, const struct pvm_mem *mem,
                                  enum pvm_m_result r)
{
    /* KVM checks and injects events before every guest entry. */
    if (r != PVM_M_RESUME)
        return r;
    return pvm_m_check_events(cpu, mem);
}
