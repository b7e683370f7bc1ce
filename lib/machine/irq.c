/*
 * lib/machine/irq.c - pending events and their delivery rules: the IF/IP
 * protocol (§5.7) and the NMI mask (§5.8).
 */
#include "model.h"

static bool irq_is_pending(const struct pvm_cpu *cpu)
{
    return cpu->irq_pending[0] | cpu->irq_pending[1] | cpu->irq_pending[2] | cpu->irq_pending[3];
}

/* Highest pending vector (KVM delivers the highest priority first), or -1. */
static int highest_irq(const struct pvm_cpu *cpu)
{
    for (int w = 3; w >= 0; w--)
        if (cpu->irq_pending[w])
            return w * 64 + 63 - __builtin_clzll(cpu->irq_pending[w]);
    return -1;
}

int pvm_m_queue_event(struct pvm_cpu *cpu, const struct pvm_event *ev)
{
    if (!ev)
        return PVM_EINVAL;
    switch (ev->type) {
    case PVM_EVENT_EXCEPTION:
        if (ev->vector >= 32 || ev->vector == PVM_VEC_NMI)
            return PVM_EINVAL;
        if (cpu->exc_pending)
            return PVM_EBUSY;
        cpu->exc_pending = true;
        cpu->exc_vector = ev->vector;
        cpu->exc_has_error = ev->has_error_code != 0;
        cpu->exc_error = ev->has_error_code ? ev->error_code : 0;
        cpu->exc_cr2 = ev->cr2;
        return 0;
    case PVM_EVENT_INTERRUPT:
        if (ev->vector < 32)
            return PVM_EINVAL;
        /* Bit v of the 256-bit map (vectors < 32 never set). */
        cpu->irq_pending[ev->vector / 64] |= 1ull << (ev->vector % 64);
        return 0;
    case PVM_EVENT_NMI:
        cpu->nmi_pending = true; /* NMIs collapse into one pending NMI */
        return 0;
    default:
        return PVM_EINVAL;
    }
}

bool pvm_m_event_ready(const struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    if (cpu->exc_pending)
        return true;
    /* §5.8: NMIs are gated by the NMI mask only, never by IF. */
    if (cpu->nmi_pending && !cpu->nmi_masked)
        return true;
    /* §5.7 / §10.15: no interrupt shadow: IF (or umod) is the whole rule. */
    return irq_is_pending(cpu) && pvm_m_irq_enabled(cpu, mem);
}

/* Deliver one event if one is deliverable; *delivered says whether. */
static enum pvm_m_result deliver_one(struct pvm_cpu *cpu, const struct pvm_mem *mem, bool *delivered)
{
    *delivered = true;
    if (cpu->exc_pending) {
        cpu->exc_pending = false;
        if (cpu->exc_vector == PVM_VEC_PF)
            cpu->cr2 = cpu->exc_cr2; /* §5.1: payload first */
        return pvm_m__deliver_injected(cpu, mem, cpu->exc_vector, cpu->exc_has_error, cpu->exc_error);
    }
    if (cpu->nmi_pending && !cpu->nmi_masked) {
        cpu->nmi_pending = false;
        /* §10.21 decision: an smod NMI uses the stack frame at +256 (errcode word 2 << 32). */
        enum pvm_m_result r = pvm_m_deliver(cpu, mem, PVM_VEC_NMI, false, 0);
        cpu->nmi_masked = true; /* §5.8: released only by ERETU / ERETS */
        return r;
    }
    int v = highest_irq(cpu);
    if (v >= 0 && pvm_m_irq_enabled(cpu, mem)) {
        cpu->irq_pending[v / 64] &= ~(1ull << (v % 64));
        return pvm_m_deliver(cpu, mem, (unsigned)v, false, 0);
    }
    if (v >= 0) {
        /*
         * §5.7 IRQ window: set PVCS IP (only smod gets here).  §10.22: without a
         * PVCS nothing is set and no interrupt is ever delivered in smod.
         */
        struct pvm_vcpu_struct *p = pvm_m__pvcs(cpu, mem);
        if (p)
            p->event_flags |= PVM_EVENT_FLAGS_IP;
    }
    *delivered = false;
    return PVM_M_RESUME;
}

enum pvm_m_result pvm_m_check_events(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    /*
     * §5.1: delivery is immediate.  Keep delivering while something is
     * deliverable (an exception, then an NMI, then an IRQ), as back-to-back
     * KVM entries would; each delivery leaves smod with IF=0, so this ends.
     */
    for (int i = 0; i < 4; i++) {
        bool delivered;
        enum pvm_m_result r = deliver_one(cpu, mem, &delivered);
        if (r != PVM_M_RESUME)
            return r;
        if (!delivered)
            break;
        cpu->halted = false;
    }
    /* A still-halted vCPU is reported through cpu->halted, not the result. */
    return PVM_M_RESUME;
}

enum pvm_m_result pvm_m__halt(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    /* Like KVM's HLT: no blocking when an event can be delivered now. */
    if (pvm_m_event_ready(cpu, mem))
        return pvm_m_check_events(cpu, mem);
    cpu->halted = true;
    enum pvm_m_result r = pvm_m_check_events(cpu, mem); /* sets IP for a masked IRQ */
    if (r != PVM_M_RESUME)
        return r;
    return cpu->halted ? PVM_M_HALT : PVM_M_RESUME;
}
