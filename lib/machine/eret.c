/*
 * lib/machine/eret.c - the two synthetic return instructions: ERETU (§6.2,
 * smod -> umod through the PVCS) and ERETS (§6.3, smod -> smod through the
 * 64-byte stack frame).
 */
#include "model.h"

enum pvm_m_result pvm_m__eretu(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    /*
     * §1.3 smod -> umod, in the RFC order.  §10.31 decision: the NMI mask is
     * cleared here (the KVM slow path; the host fast path would leave it set).
     */
    cpu->nmi_masked = false;
    cpu->msr_supervisor_rsp = cpu->gpr[PVM_RSP];
    cpu->mode = PVM_MODE_USER;
    uint64_t cr3 = cpu->cr3; /* §10.25: the swap does not flush */
    cpu->cr3 = cpu->msr_switch_cr3;
    cpu->msr_switch_cr3 = cr3;

    struct pvm_vcpu_struct *p = pvm_m__pvcs(cpu, mem);
    /* §10.24 decision: the failure comes after the switch (RFC); shutdown follows anyway. */
    if (!p)
        return pvm_m_shutdown(cpu, "ERETU: PVCS not mapped (MSR_PVM_VCPU_STRUCT %#llx)",
                              (unsigned long long)cpu->msr_vcpu_struct);
    /* §5.7: ERETU clears IP; pending events are re-evaluated by the caller. */
    p->event_flags &= ~PVM_EVENT_FLAGS_IP;

    /* §10.26 decision: only RPL 3 is OR-ed in; the selectors are not validated (RFC). */
    cpu->cs = p->user_cs | 3;
    cpu->ss = p->user_ss | 3;
    /* §10.7 decision: canonicalise user_gsbase (sign-extend bit 47, or 56 with LA57). */
    cpu->gs_base = pvm_m__canonicalize(cpu, p->user_gsbase);
    /* §10.8: 32-bit eflags | IF, filtered to the bits a guest can hold. */
    cpu->rflags = (((uint64_t)p->eflags | PVM_RFLAGS_IF) & PVM_RFLAGS_ALLOWED) | PVM_RFLAGS_FIXED;
    /* §10.6: PVCS.pkru is not loaded. */
    cpu->rip = p->rip;
    cpu->gpr[PVM_RSP] = p->rsp;
    cpu->gpr[PVM_RCX] = p->rcx;
    cpu->gpr[PVM_R11] = p->r11;
    return PVM_M_RESUME;
}

enum pvm_m_result pvm_m__erets(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    struct pvm_supervisor_event f;
    uint64_t rsp = cpu->gpr[PVM_RSP];

    if (!mem->read_virt || mem->read_virt(mem->opaque, rsp, &f, sizeof(f)) != 0)
        return pvm_m_shutdown(cpu, "ERETS: cannot read the 64-byte frame at RSP %#llx",
                              (unsigned long long)rsp);
    cpu->nmi_masked = false;
    /*
     * §6.3: RFLAGS through the setter, so IF lands in PVCS bit 9 and a 0 -> 1
     * change clears IP (§10.31); filtered as on every entry (§10.8).
     */
    pvm_m_set_rflags(cpu, mem, (f.rflags & PVM_RFLAGS_ALLOWED) | PVM_RFLAGS_FIXED);
    cpu->rip = f.rip;
    cpu->gpr[PVM_RSP] = f.rsp;
    cpu->gpr[PVM_RCX] = f.rcx;
    cpu->gpr[PVM_R11] = f.r11;
    /* errcode, cs and ss of the frame are ignored; mode and CS/SS stay. */
    return PVM_M_RESUME;
}
