/*
 * lib/machine/hypercall.c - a trapped SYSCALL (§6.2-§7): user syscall event,
 * ERETU, ERETS, PVM hypercalls, generic KVM hypercalls, and host calls
 * (libpvm convention, pvm/abi.h: everything outside the two hypercall ranges
 * reaches the application as a HYPERCALL exit).
 */
#include <string.h>

#include "model.h"

#define PVM_M_ENOSYS 38 /* Linux errno returned by the AMD compat-SYSCALL stub */
#define PVM_M_EIO 5

/* KVM_FEATURE_* bits of leaf 0x40000001 EAX that gate KVM hypercalls. */
#define PVM_M_KVM_FEATURE_PV_UNHALT      (1u << 7)
#define PVM_M_KVM_FEATURE_PV_SEND_IPI    (1u << 11)
#define PVM_M_KVM_FEATURE_PV_SCHED_YIELD (1u << 13)

/* LA57 in CPUID.(7,0):ECX. */
#define PVM_M_CPUID7_ECX_LA57 (1u << 16)

/* GDT layout of a Linux x86-64 host (the descriptors PVM guests can name). */
#define PVM_M_GDT_TLS_MIN 12
#define PVM_M_GDT_TLS_ENTRIES 3
#define PVM_M_GDT_USER_DS (PVM_USER_DS >> 3)

static uint64_t desc_base(uint64_t d)
{
    return ((d >> 16) & 0xffffff) | (((d >> 56) & 0xff) << 24);
}

/* §7.2 PVM_HC_LOAD_TLS: keep present 32-bit data descriptors, normalised. */
static uint64_t normalise_tls(uint64_t d)
{
    const uint64_t present = 1ull << 47, code = 1ull << 43, db = 1ull << 54;
    const uint64_t accessed = 1ull << 40, s = 1ull << 44, dpl3 = 3ull << 45, l = 1ull << 53;
    if (!(d & present) || (d & code) || !(d & db))
        return 0;
    return (d | accessed | s | dpl3) & ~l;
}

/* §7.2 PVM_HC_LOAD_GS: the base of the descriptor the selector loads (NULL -> 0). */
static uint64_t load_gs(struct pvm_cpu *cpu, uint16_t sel)
{
    unsigned idx = sel >> 3;

    if (sel != 0 && (sel & 3) != 3)
        sel = 0; /* RPL != 3 loads NULL */
    if (sel != 0 && !(sel & 4) && idx >= PVM_M_GDT_TLS_MIN &&
        idx < PVM_M_GDT_TLS_MIN + PVM_M_GDT_TLS_ENTRIES && cpu->tls[idx - PVM_M_GDT_TLS_MIN]) {
        cpu->gs = sel;
        return desc_base(cpu->tls[idx - PVM_M_GDT_TLS_MIN]);
    }
    if (sel != 0 && !(sel & 4) && idx == PVM_M_GDT_USER_DS) {
        cpu->gs = sel;
        return 0; /* flat */
    }
    cpu->gs = 0; /* a selector that fails to load becomes NULL */
    return 0;
}

/* One of the ten PVM hypercalls; false for an undefined number in the PVM range. */
static bool pvm_hypercall(struct pvm_cpu *cpu, const struct pvm_mem *mem, uint64_t nr,
                          enum pvm_m_result *res)
{
    *res = PVM_M_RESUME;
    uint64_t a0 = cpu->gpr[PVM_RBX], a1 = cpu->gpr[PVM_R10], a2 = cpu->gpr[PVM_RDX];
    uint64_t v;
    int rc;

    /* §10.9 decision: RAX keeps the hypercall number unless a result is defined (RFC). */
    switch (nr) {
    case PVM_HC_LOAD_PGTBL: {
        /* §10.25 decision: no validation of the roots; bit1 = 0 clears LA57 (RFC). */
        uint64_t old_cr4 = cpu->cr4;
        uint32_t l7[4];
        pvm_m_cpuid(cpu, 7, 0, l7);
        if (!(a0 & PVM_LOAD_PGTBL_FLAGS_LA57))
            cpu->cr4 &= ~PVM_CR4_LA57;
        else if (l7[2] & PVM_M_CPUID7_ECX_LA57)
            cpu->cr4 |= PVM_CR4_LA57;
        cpu->cr3 = a1;
        cpu->msr_switch_cr3 = a2;
        if (cpu->cr4 != old_cr4)
            pvm_m__flush(mem, PVM_FLUSH_ALL, 0); /* "reset the MMU context" */
        else if (a0 & PVM_LOAD_PGTBL_FLAGS_TLB)
            /* The RFC flushes everything; flushing the two named roots is what is asked. */
            pvm_m__flush(mem, PVM_FLUSH_CURRENT, 0);
        return true;
    }
    case PVM_HC_IRQ_WIN: {
        struct pvm_vcpu_struct *p = pvm_m__pvcs(cpu, mem);
        if (p)
            p->event_flags &= ~PVM_EVENT_FLAGS_IP;
        return true; /* events are re-evaluated on the way out */
    }
    case PVM_HC_IRQ_HALT:
        /* §10.27 decision: spec typos ignored ("IRQ_HLT" is this; KERNEL_RSP = SUPERVISOR_RSP). */
        pvm_m_set_rflags(cpu, mem, cpu->rflags | PVM_RFLAGS_IF);
        *res = pvm_m__halt(cpu, mem);
        return true;
    case PVM_HC_TLB_FLUSH:
        pvm_m__flush(mem, PVM_FLUSH_ALL, 0);
        return true;
    case PVM_HC_TLB_FLUSH_CURRENT:
        /* The RFC flushes everything; CR3 + SWITCH_CR3 is the defined effect. */
        pvm_m__flush(mem, PVM_FLUSH_CURRENT, 0);
        return true;
    case PVM_HC_TLB_INVLPG:
        pvm_m__flush(mem, PVM_FLUSH_ONE, a0);
        return true;
    case PVM_HC_LOAD_GS:
        /* The current GS base is not changed; the guest stores the result itself. */
        cpu->gpr[PVM_RAX] = load_gs(cpu, (uint16_t)a0);
        return true;
    case PVM_HC_RDMSR:
        rc = pvm_m_rdmsr(cpu, mem, (uint32_t)a0, &v, false);
        cpu->gpr[PVM_RAX] = rc == 0 ? v : 0;
        return true;
    case PVM_HC_WRMSR:
        rc = pvm_m_wrmsr(cpu, mem, (uint32_t)a0, a1, false);
        if (rc == -2) {
            *res = PVM_M_SHUTDOWN; /* §10.12: EVENT_ENTRY requested a triple fault */
            return true;
        }
        /* §10.9 / §10.31 decision: failures return -EIO, not #GP or -EINVAL (RFC). */
        cpu->gpr[PVM_RAX] = rc == 0 ? 0 : (uint64_t)-PVM_M_EIO;
        return true;
    case PVM_HC_LOAD_TLS:
        /* §10.9 decision: RAX unchanged, no GDT index returned (RFC). */
        cpu->tls[0] = normalise_tls(a0);
        cpu->tls[1] = normalise_tls(a1);
        cpu->tls[2] = normalise_tls(a2);
        return true;
    default:
        return false; /* undefined: the KVM handler answers */
    }
}

/* §7.1/§7.3: generic KVM hypercalls, as KVM with enforced PV-feature CPUID. */
static void kvm_hypercall(struct pvm_cpu *cpu, uint64_t nr)
{
    uint32_t feat[4];
    int64_t ret = -PVM_KVM_ENOSYS;

    /* PVM copies R10 into RCX before the generic handler and back after. */
    cpu->gpr[PVM_RCX] = cpu->gpr[PVM_R10];
    pvm_m_cpuid(cpu, PVM_KVM_CPUID_FEATURES, 0, feat);
    switch (nr) {
    case PVM_KVM_HC_VAPIC_POLL_IRQ:
        ret = 0;
        break;
    case PVM_KVM_HC_CLOCK_PAIRING:
        ret = -PVM_KVM_EOPNOTSUPP; /* no kvmclock in the model */
        break;
    case PVM_KVM_HC_SCHED_YIELD:
        if (feat[0] & PVM_M_KVM_FEATURE_PV_SCHED_YIELD)
            ret = 0; /* a yield to nobody */
        break;
    case PVM_KVM_HC_KICK_CPU:
    case PVM_KVM_HC_SEND_IPI:
        /* Cross-vCPU wake-ups are not modelled: -KVM_ENOSYS as without PV_UNHALT/PV_SEND_IPI. */
        break;
    case PVM_KVM_HC_MAP_GPA_RANGE:
        /* §10.10 decision: the exit is never enabled, so KVM answers -KVM_ENOSYS (no skip issue). */
        break;
    default:
        break; /* MMU_OP, FEATURES, PPC, MIPS and unknown numbers */
    }
    cpu->gpr[PVM_RAX] = (uint64_t)ret;
    cpu->gpr[PVM_R10] = cpu->gpr[PVM_RCX];
}

static enum pvm_m_result host_call(struct pvm_cpu *cpu, uint64_t nr)
{
    memset(&cpu->exit, 0, sizeof(cpu->exit));
    cpu->exit.reason = PVM_EXIT_HYPERCALL;
    cpu->exit.u.hypercall.nr = nr;
    cpu->exit.u.hypercall.args[0] = cpu->gpr[PVM_RBX];
    cpu->exit.u.hypercall.args[1] = cpu->gpr[PVM_R10];
    cpu->exit.u.hypercall.args[2] = cpu->gpr[PVM_RDX];
    cpu->exit.u.hypercall.args[3] = cpu->gpr[PVM_RSI];
    cpu->exit.u.hypercall.args[4] = cpu->gpr[PVM_RDI];
    cpu->exit.u.hypercall.args[5] = cpu->gpr[PVM_R8];
    cpu->exit.u.hypercall.ret = nr; /* RAX unchanged unless the application answers */
    /* RIP is already past the SYSCALL: completion must not skip (§7.1, §10.10). */
    cpu->pending_exit = PVM_EXIT_HYPERCALL;
    return PVM_M_EXIT;
}

static enum pvm_m_result smod_syscall(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    /* §6.3: ERETU is compared first, so it wins when both MSRs are equal. */
    if (cpu->rip == cpu->msr_retu_rip_plus2)
        return pvm_m__eretu(cpu, mem);
    if (cpu->rip == cpu->msr_rets_rip_plus2)
        return pvm_m__erets(cpu, mem);

    uint64_t nr = cpu->gpr[PVM_RAX];
    if (nr >= PVM_HC_SPECIAL_BASE && nr < PVM_HC_SPECIAL_BASE + PVM_HC_SPECIAL_MAX_NR) {
        enum pvm_m_result r;
        if (pvm_hypercall(cpu, mem, nr, &r))
            return r;
        kvm_hypercall(cpu, nr); /* §7.2: undefined PVM numbers fall through: -1000 */
        return PVM_M_RESUME;
    }
    if (nr < PVM_KVM_HC_RANGE_END) {
        kvm_hypercall(cpu, nr);
        return PVM_M_RESUME;
    }
    return host_call(cpu, nr);
}

enum pvm_m_result pvm_m_syscall(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    enum pvm_m_result r = pvm_m__trap_begin(cpu, mem);
    if (r != PVM_M_RESUME)
        return r;
    if (cpu->mode == PVM_MODE_SUPERVISOR) {
        r = smod_syscall(cpu, mem);
    } else if (cpu->cs == PVM_USER32_CS) {
        /* §10.19 decision: 32-bit user SYSCALL returns -ENOSYS in RAX without an event, like AMD. */
        cpu->gpr[PVM_RAX] = (uint64_t)-PVM_M_ENOSYS;
        r = PVM_M_RESUME;
    } else {
        r = pvm_m_deliver(cpu, mem, PVM_M_VEC_SYSCALL, false, 0);
    }
    return pvm_m__trap_end(cpu, mem, r);
}
