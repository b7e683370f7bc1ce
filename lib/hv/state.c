/*
 * lib/hv/state.c - the vCPU state accessors of the hypervisor core: the
 * application reads and writes the machine model's registers, MSRs and
 * CPUID table (between runs, on the vCPU's thread).
 */
#include <string.h>

#include "hv.h"

int pvm_hv_get_regs(pvm_vcpu *v, struct pvm_regs *r)
{
    const struct pvm_cpu *c = &pvm_hv_of(v)->cpu;
    r->rax = c->gpr[PVM_RAX]; r->rbx = c->gpr[PVM_RBX]; r->rcx = c->gpr[PVM_RCX];
    r->rdx = c->gpr[PVM_RDX]; r->rsi = c->gpr[PVM_RSI]; r->rdi = c->gpr[PVM_RDI];
    r->rsp = c->gpr[PVM_RSP]; r->rbp = c->gpr[PVM_RBP];
    r->r8 = c->gpr[PVM_R8]; r->r9 = c->gpr[PVM_R9]; r->r10 = c->gpr[PVM_R10]; r->r11 = c->gpr[PVM_R11];
    r->r12 = c->gpr[PVM_R12]; r->r13 = c->gpr[PVM_R13]; r->r14 = c->gpr[PVM_R14]; r->r15 = c->gpr[PVM_R15];
    r->rip = c->rip;
    r->rflags = c->rflags;
    return 0;
}

int pvm_hv_set_regs(pvm_vcpu *v, const struct pvm_regs *r)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    struct pvm_cpu *c = &hv->cpu;
    c->gpr[PVM_RAX] = r->rax; c->gpr[PVM_RBX] = r->rbx; c->gpr[PVM_RCX] = r->rcx;
    c->gpr[PVM_RDX] = r->rdx; c->gpr[PVM_RSI] = r->rsi; c->gpr[PVM_RDI] = r->rdi;
    c->gpr[PVM_RSP] = r->rsp; c->gpr[PVM_RBP] = r->rbp;
    c->gpr[PVM_R8] = r->r8; c->gpr[PVM_R9] = r->r9; c->gpr[PVM_R10] = r->r10; c->gpr[PVM_R11] = r->r11;
    c->gpr[PVM_R12] = r->r12; c->gpr[PVM_R13] = r->r13; c->gpr[PVM_R14] = r->r14; c->gpr[PVM_R15] = r->r15;
    c->rip = r->rip;
    /* §5.7: a hypervisor RFLAGS write in smod is mirrored into PVCS.IF. */
    pvm_m_set_rflags(c, &hv->mem, r->rflags);
    return 0;
}

int pvm_hv_get_sregs(pvm_vcpu *v, struct pvm_sregs *s)
{
    const struct pvm_cpu *c = &pvm_hv_of(v)->cpu;
    memset(s, 0, sizeof(*s));
    s->mode = c->mode;
    if (c->mode == PVM_MODE_SUPERVISOR) {
        /* §1.2: guest-visible smod CS/SS are emulated from STAR. */
        s->cs = (uint16_t)((c->msr_star >> 32) & ~3ull);
        s->ss = (uint16_t)(s->cs + 8);
    } else {
        /* §1.2 decision: report the real selectors, not the RFC's GDT index. */
        s->cs = c->cs;
        s->ss = c->ss;
    }
    s->ds = c->ds; s->es = c->es; s->fs = c->fs; s->gs = c->gs;
    s->fs_base = c->fs_base;
    s->gs_base = c->gs_base;
    s->cr0 = c->cr0; s->cr2 = c->cr2; s->cr3 = c->cr3; s->cr4 = c->cr4; s->efer = c->efer;
    return 0;
}

int pvm_hv_set_sregs(pvm_vcpu *v, const struct pvm_sregs *s)
{
    struct pvm_cpu *c = &pvm_hv_of(v)->cpu;
    if (s->mode != PVM_MODE_SUPERVISOR && s->mode != PVM_MODE_USER)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_sregs: mode %u is neither smod nor umod", s->mode);
    if (s->mode == PVM_MODE_USER && s->cs != PVM_USER_CS && s->cs != PVM_USER32_CS)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_sregs: umod CS must be 0x33 or 0x23, not 0x%x", s->cs);
    c->mode = s->mode;
    c->cs = s->mode == PVM_MODE_USER ? s->cs : PVM_USER_CS;
    c->ss = PVM_USER_DS;
    c->ds = s->ds; c->es = s->es; c->fs = s->fs; c->gs = s->gs;
    c->fs_base = s->fs_base;
    c->gs_base = s->gs_base;
    c->cr0 = s->cr0; c->cr2 = s->cr2; c->cr3 = s->cr3; c->cr4 = s->cr4; c->efer = s->efer;
    return 0;
}

int pvm_hv_get_msr(pvm_vcpu *v, uint32_t index, uint64_t *value)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    if (pvm_m_rdmsr(&hv->cpu, &hv->mem, index, value, true) < 0)
        return pvm__error(PVM_ENOENT, "pvm_vcpu_get_msr: MSR 0x%x is not supported", index);
    return 0;
}

int pvm_hv_set_msr(pvm_vcpu *v, uint32_t index, uint64_t value)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    if (pvm_m_wrmsr(&hv->cpu, &hv->mem, index, value, true) < 0)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_msr: MSR 0x%x is not supported or rejects 0x%llx",
                          index, (unsigned long long)value);
    return 0;
}

int pvm_hv_set_cpuid(pvm_vcpu *v, const struct pvm_cpuid_entry *e, size_t n)
{
    int rc = pvm_m_set_cpuid(&pvm_hv_of(v)->cpu, e, n);
    if (rc < 0)
        return pvm__error(rc, "pvm_vcpu_set_cpuid: table rejected");
    pvm_hv_of(v)->cpuid_gen++; /* the stubs' copies are stale (setup_fast) */
    return 0;
}

int pvm_hv_translate(pvm_vcpu *v, uint64_t gva, uint64_t *gpa)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    struct pvm_walk_result res;
    pvm_hv_refresh_env(hv);
    if (pvm_mmu_walk(&hv->env, hv->cpu.cr3, gva, 0, false, &res) != PVM_WALK_OK)
        return PVM_EFAULT;
    *gpa = res.gpa;
    return 0;
}
