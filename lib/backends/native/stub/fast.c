/*
 * lib/backends/native/stub/fast.c - the smod fast path: common PVM events
 * answered inside the stub's trap handler, with exactly the results of the
 * library's machine model (lib/machine/), then a sigreturn straight back
 * into the guest.  Section numbers (§) refer to shared/docs/pvm-abi.md.
 *
 *   ERETS (§6.3)                     frame at RSP -> RIP/RSP/RCX/R11/RFLAGS
 *   exceptions without error code    §5.4 frame, entry + 256 (#DE #DB #BP #OF
 *     that the model reflects          #BR #UD #NM #MF #XM, exception.c)
 *   hypercalls without state (§7)    PVM_HC_IRQ_WIN, every KVM-range number
 *   synthetic CPUID (§6.1)           from the table the library published
 *   WRMSR/RDMSR (§2) of SUPERVISOR_RSP, REDZONE, EVENT_ENTRY (canonical
 *     only), RETU_RIP, RETS_RIP: plain vCPU state kept in this block, read
 *     back (and re-checked as a guest WRMSR) by the library after the report
 *   external interrupts (§5.5)       vectors the library posted in irq[] (a
 *                                      "poke": the kick signal without attention),
 *                                      and after each event above, as the model's
 *                                      pvm_m__trap_end -> pvm_m_check_events would
 *
 * Everything else, and anything not exactly like the model's common case,
 * returns 0: the event is reported and the library handles it.  The library
 * enables the path only in smod, with the PVCS mapped at NSTUB_PVCS_ADDR and
 * no event pending; with nothing pending, the model's event check after each
 * of these events (pvm_m__trap_end) has nothing to do, so skipping it is exact.
 *
 * Guest memory is touched only inside windows (installed shadow mappings the
 * library published) with the right permission, and code bytes only where the
 * CPU has just fetched them: the handler runs with every signal blocked and
 * must never fault.  A guest that forges the control page can make it fault,
 * which kills its own stub and nothing else.
 */
#include <stddef.h>
#include <stdint.h>

#include <asm/signal.h>
#include <asm/siginfo.h>
#include <asm/sigcontext.h>
#include <asm/ucontext.h>
#include <linux/audit.h>

#include "pvm/abi.h"
#include "stub_abi.h"
#include "fast.h"
#include "link.h"

#pragma GCC visibility push(hidden)

#define FAST (&((volatile struct nstub_ctl *)NSTUB_CTL_ADDR)->fast)
#define PVCS ((volatile struct pvm_vcpu_struct *)NSTUB_PVCS_ADDR)
#define PVCS_FLAGS ((volatile uint64_t *)(NSTUB_PVCS_ADDR + offsetof(struct pvm_vcpu_struct, event_flags)))
#define KICK_SIGNAL (((volatile struct nstub_ctl *)NSTUB_CTL_ADDR)->kick_signal)

#define GUEST_LO 0x10000ull           /* below: vm.mmap_min_addr (stub.h NSTUB_GUEST_LO) */
#define GUEST_HI NSTUB_IMAGE_BASE
#define RF_IF    0x200ull
#define RF_FIXED 0x2ull
#define USER_CS  0x33
#define USER_DS  0x2b

/* Is [a, a+len) inside one published window with @prot? */
static int in_window(volatile struct nstub_fast *f, uint64_t a, uint64_t len, uint32_t prot)
{
    uint32_t n = f->nr_windows;
    if (a < GUEST_LO || a > GUEST_HI - len)
        return 0;
    if (n > NSTUB_FAST_WINDOWS)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t s = f->win[i].start, l = f->win[i].len;
        if ((f->win[i].prot & prot) == prot && a - s < l && l - (a - s) >= len)
            return 1;
    }
    return 0;
}

/* The underlying RFLAGS the library would load for guest RFLAGS @fl (native.c regs_to_stub, §1.1). */
static uint64_t underlying(uint64_t fl)
{
    return (fl & NSTUB_RFLAGS_ALLOWED) | RF_IF | RF_FIXED;
}

/* §5.7 RFLAGS setter (cpu.c pvm_m_set_rflags): IF to PVCS bit 9 only on a change; 0 -> 1 clears IP. */
static void set_virtual_if(uint64_t new_if)
{
    uint64_t ef = *PVCS_FLAGS;
    if ((ef & PVM_EVENT_FLAGS_IF) == (new_if & RF_IF))
        return;
    if (new_if & RF_IF)
        *PVCS_FLAGS = (ef | PVM_EVENT_FLAGS_IF) & ~PVM_EVENT_FLAGS_IP;
    else
        *PVCS_FLAGS = ef & ~PVM_EVENT_FLAGS_IF;
}

/* §6.3 ERETS (eret.c pvm_m__erets). */
static int erets(volatile struct nstub_fast *f, struct sigcontext *sc)
{
    uint64_t rsp = sc->rsp;
    if (!in_window(f, rsp, PVM_FRAME_SIZE, NSTUB_PROT_READ))
        return 0;
    const volatile uint64_t *fr = (const volatile uint64_t *)rsp;
    uint64_t rip = fr[1], rflags = fr[3], nrsp = fr[4], rcx = fr[6], r11 = fr[7];
    uint64_t fl = (rflags & NSTUB_RFLAGS_ALLOWED) | RF_FIXED;

    f->nmi_masked = 0;
    set_virtual_if(fl);
    sc->rip = rip;
    sc->rsp = nrsp;
    sc->rcx = rcx;
    sc->r11 = r11;
    sc->eflags = underlying(fl);
    return 1;
}

/* §7.3 generic KVM hypercall (hypercall.c kvm_hypercall): RCX := R10, RAX := result, R10 := RCX. */
static void kvm_hypercall(volatile struct nstub_fast *f, struct sigcontext *sc, uint64_t nr)
{
    int64_t ret = -PVM_KVM_ENOSYS;
    sc->rcx = sc->r10;
    if (nr == PVM_KVM_HC_VAPIC_POLL_IRQ)
        ret = 0;
    else if (nr == PVM_KVM_HC_CLOCK_PAIRING)
        ret = -PVM_KVM_EOPNOTSUPP;
    else if (nr == PVM_KVM_HC_SCHED_YIELD && (f->kvm_features & (1u << 13)))   /* PV_SCHED_YIELD */
        ret = 0;
    sc->rax = (uint64_t)ret;
    sc->r10 = sc->rcx;
}

/* A trapped SYSCALL in smod (hypercall.c smod_syscall). */
static int smod_syscall(volatile struct nstub_fast *f, siginfo_t *si, struct ucontext *uc)
{
    struct sigcontext *sc = &uc->uc_mcontext;
    uint64_t rip = sc->rip;
    /* A real SYSCALL (not INT 0x80, not the kernel's vsyscall emulation) ... */
    if (si->si_arch != AUDIT_ARCH_X86_64 || (uint64_t)(uintptr_t)si->si_call_addr != rip)
        return 0;
    /* ... in guest code: its two bytes were just fetched, so they are mapped and readable. */
    if (rip < GUEST_LO + 2 || rip > GUEST_HI)
        return 0;
    const volatile uint8_t *insn = (const volatile uint8_t *)(rip - 2);
    if (insn[0] != 0x0f || insn[1] != 0x05)
        return 0;   /* native.c trapped_on_int80 reads these bytes too */

    /* §6.3: ERETU is compared first and wins.  Ours only back to a linked user stub (link.c). */
    if (rip == f->retu_plus2)
        return nstub_link_eretu(uc) ? NSTUB_FAST_LINKED : 0;
    if (rip == f->rets_plus2)
        return erets(f, sc);

    uint64_t nr = sc->rax;
    if (nr >= PVM_HC_SPECIAL_BASE && nr < PVM_HC_SPECIAL_BASE + PVM_HC_SPECIAL_MAX_NR) {
        if (nr == PVM_HC_IRQ_WIN)
            *PVCS_FLAGS &= ~PVM_EVENT_FLAGS_IP;   /* RAX keeps the number (§10.9) */
        else if (nr <= PVM_HC_LOAD_TLS)
            return 0;                             /* a defined PVM hypercall: the library's */
        else
            kvm_hypercall(f, sc, nr);             /* §7.2: undefined numbers fall through */
    } else if (nr < PVM_KVM_HC_RANGE_END) {
        kvm_hypercall(f, sc, nr);
    } else {
        return 0;                                 /* host call: an exit to the application */
    }
    sc->eflags = underlying(sc->eflags);
    return 1;
}

/* §6.1 synthetic CPUID on #GP (emulate.c synthetic_cpuid_insn; cpuid.c pvm_m_cpuid on the effective table). */
static int synthetic_cpuid(volatile struct nstub_fast *f, struct sigcontext *sc)
{
    static const uint8_t seq[PVM_SYNTHETIC_CPUID_LEN] = { PVM_SYNTHETIC_CPUID_BYTES };
    uint64_t rip = sc->rip;
    /* The INVLPG half would need a flush when the address is guest-allowed: not here. */
    if (!(f->flags & NSTUB_FAST_CPUID))
        return 0;
    /* All ten bytes in the page the CPU fetched the faulting INVLPG from. */
    if (rip < GUEST_LO || rip >= GUEST_HI || (rip & 4095) > 4096 - PVM_SYNTHETIC_CPUID_LEN)
        return 0;
    const volatile uint8_t *insn = (const volatile uint8_t *)rip;
    for (unsigned i = 0; i < PVM_SYNTHETIC_CPUID_LEN; i++)
        if (insn[i] != seq[i])
            return 0;

    uint32_t leaf = (uint32_t)sc->rax, sub = (uint32_t)sc->rcx, n = f->nr_cpuid;
    uint32_t out[4] = { 0, 0, 0, 0 };
    if (n > NSTUB_FAST_MAX_CPUID)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        volatile struct nstub_cpuid *e = &f->cpuid[i];
        if (e->function != leaf || ((e->flags & 1) && e->index != sub))
            continue;
        out[0] = e->eax;
        out[1] = e->ebx;
        out[2] = e->ecx;
        out[3] = e->edx;
        break;
    }
    sc->rax = out[0];
    sc->rbx = out[1];
    sc->rcx = out[2];
    sc->rdx = out[3];
    sc->rip = rip + PVM_SYNTHETIC_CPUID_LEN;
    sc->eflags = underlying(sc->eflags);
    return 1;
}

/* 4-level canonical: then also canonical with LA57 (cpu.c pvm_m__is_canonical). */
static int canonical48(uint64_t v)
{
    return (uint64_t)((int64_t)(v << 16) >> 16) == v;
}

/*
 * §2 WRMSR / RDMSR on #GP in smod (emulate.c, msr.c pvm_m_wrmsr/pvm_m_rdmsr)
 * of the PVM MSRs whose write has no effect beyond the stored value.  Only the
 * plain 2-byte forms: prefixed ones, other MSRs and a non-canonical
 * EVENT_ENTRY (§10.12: triple fault) are the library's.
 */
static int msr_insn(volatile struct nstub_fast *f, struct sigcontext *sc)
{
    uint64_t rip = sc->rip;
    /* The CPU fetched the first byte; 0f makes it fetch the second (same page: no doubt). */
    if (rip < GUEST_LO || rip >= GUEST_HI || (rip & 4095) == 4095)
        return 0;
    const volatile uint8_t *insn = (const volatile uint8_t *)rip;
    if (insn[0] != 0x0f)
        return 0;
    uint8_t op = insn[1];
    uint32_t index = (uint32_t)sc->rcx;
    uint64_t v;
    if (op == 0x30) {           /* WRMSR: EDX:EAX */
        v = (sc->rdx << 32) | (uint32_t)sc->rax;
        switch (index) {
        case MSR_PVM_SUPERVISOR_RSP:     f->sup_rsp = v; break;
        case MSR_PVM_SUPERVISOR_REDZONE: f->redzone = v; break;
        case MSR_PVM_EVENT_ENTRY:
            if (!canonical48(v) || !canonical48(v + PVM_ENTRY_SUPERVISOR_EXCEPTION) ||
                !canonical48(v + PVM_ENTRY_SUPERVISOR_INTERRUPT))
                return 0;
            f->event_entry = v;
            break;
        case MSR_PVM_RETU_RIP:           f->retu_plus2 = v + 2; break;   /* §10.11: stored +2 */
        case MSR_PVM_RETS_RIP:           f->rets_plus2 = v + 2; break;
        default:                         return 0;
        }
    } else if (op == 0x32) {    /* RDMSR: zero-extended halves into RAX, RDX */
        switch (index) {
        case MSR_PVM_SUPERVISOR_RSP:     v = f->sup_rsp; break;
        case MSR_PVM_SUPERVISOR_REDZONE: v = f->redzone; break;
        case MSR_PVM_EVENT_ENTRY:        v = f->event_entry; break;
        case MSR_PVM_RETU_RIP:           v = f->retu_plus2 - 2; break;
        case MSR_PVM_RETS_RIP:           v = f->rets_plus2 - 2; break;
        default:                         return 0;
        }
        sc->rax = (uint32_t)v;
        sc->rdx = v >> 32;
    } else {
        return 0;
    }
    sc->rip = rip + 2;
    sc->eflags = underlying(sc->eflags);
    return 1;
}

/* §5.4 supervisor exception without error code (event.c supervisor_exception, §5.6 entry state). */
static int exception(volatile struct nstub_fast *f, struct sigcontext *sc, unsigned vector)
{
    uint64_t rsp = sc->rsp;
    uint64_t frame = ((rsp - f->redzone) & ~0xfull) - PVM_FRAME_SIZE;
    if (!in_window(f, frame, PVM_FRAME_SIZE, NSTUB_PROT_READ | NSTUB_PROT_WRITE))
        return 0;
    uint64_t entry = f->event_entry + PVM_ENTRY_SUPERVISOR_EXCEPTION, cs = f->sup_cs;
    /* Guest-view RFLAGS: the virtual IF from the PVCS (§1.2, native.c regs_from_stub). */
    uint64_t rflags = (sc->eflags & ~RF_IF) | (*PVCS_FLAGS & PVM_EVENT_FLAGS_IF);
    volatile uint64_t *fr = (volatile uint64_t *)frame;
    fr[0] = (uint64_t)vector << 32;   /* §10.4: no error code -> low half 0 */
    fr[1] = sc->rip;
    fr[2] = cs;
    fr[3] = rflags;
    fr[4] = rsp;
    fr[5] = cs + 8;
    fr[6] = sc->rcx;
    fr[7] = sc->r11;
    sc->rsp = frame;
    sc->rip = entry;
    sc->rcx = entry;
    set_virtual_if(PVM_ENTRY_RFLAGS);
    sc->r11 = PVM_ENTRY_R11;
    sc->eflags = underlying(PVM_ENTRY_RFLAGS);
    return 1;
}

/* A hardware fault: the vector exactly as stub.c classify() derives it, then §5.12 / exception.c. */
static int fault(volatile struct nstub_fast *f, int sig, siginfo_t *si, struct sigcontext *sc)
{
    if (si->si_code <= 0)
        return 0;   /* sent by a process, not raised by the CPU */
    /* SYSCALL 335 (uretprobe) arrives as SIGILL with RAX = -1: a syscall for the library. */
    if (sig == SIGILL && si->si_code == SI_KERNEL && sc->rax == ~0ull)
        return 0;
    /* ERETU/ERETS lost to the host's unfiltered syscall 336 (native.c lost_eret). */
    if (sc->rax == (uint64_t)-6 && sc->rcx == sc->rip && (sc->rip == f->retu_plus2 || sc->rip == f->rets_plus2))
        return 0;
    unsigned vector;
    if (sc->trapno < 32)
        vector = (unsigned)sc->trapno;
    else if (sig == SIGILL)
        vector = PVM_VEC_UD;
    else if (sig == SIGTRAP)
        vector = PVM_VEC_BP;
    else if (sig == SIGFPE)
        vector = PVM_VEC_DE;
    else if (sig == SIGSEGV || sig == SIGBUS)
        vector = PVM_VEC_GP;
    else
        return 0;

    switch (vector) {
    case PVM_VEC_GP:
        return sig == SIGSEGV ? msr_insn(f, sc) || synthetic_cpuid(f, sc) : 0;
    case PVM_VEC_DE: case PVM_VEC_DB: case PVM_VEC_BP: case PVM_VEC_OF: case PVM_VEC_BR:
    case PVM_VEC_UD: case PVM_VEC_NM: case PVM_VEC_MF: case PVM_VEC_XM:
        return exception(f, sc, vector);
    default:
        return 0;
    }
}

/* Highest posted vector (irq.c highest_irq), or -1.  Bits below 32 are never posted: ignored. */
static int highest_irq(volatile struct nstub_fast *f)
{
    for (int w = 3; w >= 0; w--) {
        uint64_t m = __atomic_load_n(&f->irq[w], __ATOMIC_ACQUIRE);
        if (w == 0)
            m &= ~0xffffffffull;
        if (m)
            return w * 64 + 63 - __builtin_clzll(m);
    }
    return -1;
}

/* §5.5 supervisor interrupt (event.c supervisor_interrupt + enter_handler, §5.6): nothing is pushed. */
static void deliver_irq(volatile struct nstub_fast *f, struct sigcontext *sc, unsigned vector)
{
    volatile struct pvm_vcpu_struct *p = PVCS;
    /* Guest-view RFLAGS with the virtual IF (native.c regs_from_stub); §10.8: 32 bits. */
    uint64_t rflags = (sc->eflags & ~RF_IF) | (*PVCS_FLAGS & PVM_EVENT_FLAGS_IF);
    uint64_t entry = f->event_entry + PVM_ENTRY_SUPERVISOR_INTERRUPT;
    p->eflags = (uint32_t)rflags;
    p->rip = sc->rip;
    p->rsp = sc->rsp;
    p->rcx = sc->rcx;
    p->r11 = sc->r11;
    p->event_vector = vector;   /* no error code: event_errcode stays (§10.4) */
    sc->rsp = (sc->rsp - f->redzone) & ~0xfull;
    sc->rip = entry;
    sc->rcx = entry;
    set_virtual_if(PVM_ENTRY_RFLAGS);
    sc->r11 = PVM_ENTRY_R11;
    sc->eflags = underlying(PVM_ENTRY_RFLAGS);
}

/*
 * irq.c pvm_m_check_events with only interrupts pending (an exception or NMI
 * sets attention, so the stub reports instead): IF = 1 delivers the highest
 * vector, and whatever is still pending with IF = 0 sets IP (§5.7).
 */
static void irq_check(volatile struct nstub_fast *f, struct sigcontext *sc)
{
    int v = highest_irq(f);
    if (v < 0)
        return;
    if (*PVCS_FLAGS & PVM_EVENT_FLAGS_IF) {
        uint64_t bit = 1ull << (v % 64);
        /* Claim it: only the stub clears bits while it runs, so this always wins. */
        if (__atomic_fetch_and(&f->irq[v / 64], ~bit, __ATOMIC_ACQ_REL) & bit) {
            deliver_irq(f, sc, (unsigned)v);
            f->irqs++;
            f->count++;
        }
        if (highest_irq(f) < 0)
            return;
    }
    *PVCS_FLAGS |= PVM_EVENT_FLAGS_IP;
}

int nstub_fast(int sig, siginfo_t *si, struct ucontext *uc)
{
    volatile struct nstub_fast *f = FAST;
    struct sigcontext *sc = &uc->uc_mcontext;
    int done;

    /* Any kick signal may be the poke: re-arm pokes before irq[] is read (stub_abi.h). */
    if (sig == KICK_SIGNAL)
        __atomic_store_n(&f->poke_pending, 0, __ATOMIC_SEQ_CST);
    if (f->enabled != NSTUB_FAST_ON || __atomic_load_n(&f->attention, __ATOMIC_ACQUIRE))
        return 0;
    /* §5.10: smod runs on __USER_CS/__USER_DS; anything else is the library's to judge. */
    if (sc->cs != USER_CS || ((uc->uc_flags & UC_SIGCONTEXT_SS) && sc->ss != USER_DS))
        return 0;
    if (sig == SIGSYS) {
        done = smod_syscall(f, si, uc);
        if (done == NSTUB_FAST_LINKED)
            return done;   /* counted there; this context does not return to the guest */
    }
    else if (sig == SIGILL || sig == SIGTRAP || sig == SIGFPE || sig == SIGSEGV || sig == SIGBUS)
        done = fault(f, sig, si, sc);
    else if (sig != KICK_SIGNAL)
        done = 0;   /* anything else: report */
    else {
        /* The kick signal without attention: a poke (interrupts posted) or a stale kick. */
        irq_check(f, sc);
        return 1;
    }
    if (done) {
        f->count++;
        irq_check(f, sc);   /* the model's pvm_m__trap_end */
    }
    return done;
}
