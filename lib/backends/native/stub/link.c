/*
 * lib/backends/native/stub/link.c - the user/kernel hand-off: a user SYSCALL
 * goes from the user stub straight to the kernel stub of the same vCPU,
 * spinning in its wait, and the guest kernel's ERETU straight back, without
 * the library in between (docs/design.md "The user stub and the kernel stub
 * hand off"; the protocol is stub_abi.h struct nstub_link).  Both legs have
 * exactly the machine model's results: the entry is event.c user_event() for
 * a SYSCALL (§5.3, §5.6), the return eret.c pvm_m__eretu() (§6.2).
 *
 * The library arms it per user resume, only when the model would do nothing
 * between the two legs but run them (nothing pending, NMIs unmasked, no
 * debugging, 4-level paging, the kernel's address space resident with its
 * stub waiting): see native.c link_arm().  Anything else - any other trap of
 * the guest kernel, an injection or kick (attention), a 32-bit user, the
 * user stub tired of waiting - goes to the library, which then adopts the
 * kernel stub's report as if it had run it itself.
 *
 * The link area is writable by guest code in both stubs.  Nothing here
 * trusts it beyond what the guest could do with a real SYSCALL or ERETU, and
 * nothing here can fault on what it holds: a forged request runs the guest
 * kernel's own entry with registers of the user's choosing (as a forged
 * report to the library would), and the library's stop rules bound the rest
 * (docs/design.md "Stops between address spaces").
 */
#include <stddef.h>
#include <stdint.h>

#include <asm/prctl.h>
#include <asm/signal.h>
#include <asm/siginfo.h>
#include <asm/sigcontext.h>
#include <asm/ucontext.h>
#include <asm/unistd.h>
#include <linux/audit.h>

#include "pvm/abi.h"
#include "stub_abi.h"
#include "link.h"

#pragma GCC visibility push(hidden)

long nstub_sys(long nr, long a1, long a2, long a3, long a4, long a5, long a6);
void *memcpy(void *dst, const void *src, size_t n);

#define CTL ((volatile struct nstub_ctl *)NSTUB_CTL_ADDR)
#define LINK ((volatile struct nstub_link *)NSTUB_LINK_ADDR)
#define LINK_FPU ((uint8_t *)(NSTUB_LINK_ADDR + NSTUB_LINK_FPU_OFF))
#define PVCS ((volatile struct pvm_vcpu_struct *)NSTUB_PVCS_ADDR)
#define PVCS_FLAGS ((volatile uint64_t *)(NSTUB_PVCS_ADDR + offsetof(struct pvm_vcpu_struct, event_flags)))

#define GUEST_LO 0x10000ull
#define GUEST_HI NSTUB_IMAGE_BASE
#define RF_IF    0x200ull
#define RF_FIXED 0x2ull
#define USER_CS  0x33
#define USER_DS  0x2b
#define USER_WAIT_SPINS 4   /* the user stub waits this many spin times for the guest kernel */

/* The link word for state @st in this arm's generation. */
static uint32_t word(uint32_t st)
{
    return NSTUB_LINK_WORD(CTL->link_gen & NSTUB_LINK_GEN_MASK, st);
}

static int cas(uint32_t from, uint32_t to)
{
    uint32_t f = word(from);
    return __atomic_compare_exchange_n(&LINK->word, &f, word(to), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

/* The XSAVE image in this trap's frame and its size (as stub_main.c reports it), or 0. */
static uint32_t frame_fpu(struct ucontext *uc, uint8_t **img)
{
    struct _fpstate *fp = uc->uc_mcontext.fpstate;
    if (!fp)
        return 0;
    uint32_t n = fp->sw_reserved.magic1 == FP_XSTATE_MAGIC1 ? fp->sw_reserved.xstate_size : 512;
    if (n > NSTUB_ALTSTACK_SIZE)
        return 0;
    *img = (uint8_t *)fp;
    return n;
}

/* This frame's XSAVE image into the link, for the other stub to take. */
static void put_fpu(struct ucontext *uc)
{
    uint8_t *img;
    uint32_t n = frame_fpu(uc, &img);
    LINK->fpu_size = n;
    if (n)
        memcpy(LINK_FPU, img, n);
}

/* Only an image of our own size (the same host's XSAVE layout): else the frame keeps its own. */
static void take_fpu(struct ucontext *uc)
{
    uint8_t *img;
    uint32_t n = frame_fpu(uc, &img);
    if (n && LINK->fpu_size == n)
        memcpy(img, LINK_FPU, n);
}

/* One copy of the link's register file: what we act on cannot change under us. */
static void read_link_regs(struct nstub_abi_regs *r)
{
    volatile struct nstub_abi_regs *l = &LINK->regs;
    for (int i = 0; i < 16; i++)
        r->gpr[i] = l->gpr[i];
    r->rip = l->rip;
    r->rflags = l->rflags;
    r->fs_base = l->fs_base;
    r->gs_base = l->gs_base;
    r->cs = l->cs;
    r->ss = l->ss;
}

/* ---- user role ------------------------------------------------------------ */

int nstub_link_user(int sig, siginfo_t *si, struct ucontext *uc)
{
    volatile struct nstub_ctl *c = CTL;
    volatile struct nstub_link *l = LINK;
    struct sigcontext *sc = &uc->uc_mcontext;
    uint64_t rip = sc->rip;

    /* A 64-bit SYSCALL instruction of guest code (stub.c classify: the vsyscall page and INT 0x80 are not) ... */
    if (c->link_role != NSTUB_ROLE_USER || sig != SIGSYS || si->si_arch != AUDIT_ARCH_X86_64 ||
        (uint64_t)(uintptr_t)si->si_call_addr != rip || sc->cs != USER_CS ||
        ((uc->uc_flags & UC_SIGCONTEXT_SS) && sc->ss != USER_DS) || rip < GUEST_LO + 2 || rip > GUEST_HI ||
        __atomic_load_n(&c->fast.attention, __ATOMIC_ACQUIRE))
        return 0;
    /* ... whose two bytes the CPU just fetched (so they are mapped) ... */
    const volatile uint8_t *insn = (const volatile uint8_t *)(rip - 2);
    if (insn[0] != 0x0f || insn[1] != 0x05)
        return 0;
    /* ... with the kernel stub there to take it. */
    if (__atomic_load_n(&l->word, __ATOMIC_ACQUIRE) != word(NSTUB_LINK_ARMED) ||
        !__atomic_load_n(&l->k_spinning, __ATOMIC_ACQUIRE))
        return 0;

    uint64_t fs = rdfsbase(), gs = rdgsbase();
    volatile struct nstub_abi_regs *r = &l->regs;
    nstub_gprs_to(r, sc);
    r->rip = rip;
    r->rflags = sc->eflags;
    r->fs_base = fs;
    r->gs_base = gs;
    r->cs = USER_CS;
    r->ss = USER_DS;
    put_fpu(uc);
    if (!cas(NSTUB_LINK_ARMED, NSTUB_LINK_REQ))
        return 0;

    uint64_t spin = c->spin_tsc, t0 = rdtsc();
    for (unsigned n = 1;; n++) {
        uint32_t w = __atomic_load_n(&l->word, __ATOMIC_ACQUIRE);
        if (w == word(NSTUB_LINK_DONE))
            break;
        if (w == word(NSTUB_LINK_REQ)) {
            /* Not taken (the kernel stub went to sleep): withdraw and report as usual. */
            if (rdtsc() - t0 >= spin && cas(NSTUB_LINK_REQ, NSTUB_LINK_ARMED))
                return 0;
        } else if (w == word(NSTUB_LINK_RUN)) {
            /* A long call: the library takes over the kernel stub (it adopts its next report). */
            if (rdtsc() - t0 >= USER_WAIT_SPINS * spin && cas(NSTUB_LINK_RUN, NSTUB_LINK_LEFT))
                return 0;
        } else {
            return 0;   /* REPORT: the kernel stub reported, so do we; anything else is no answer of ours */
        }
        if (!(n & 1023))
            nstub_orphan_check();
        nstub_sys(__NR_sched_yield, 0, 0, 0, 0, 0, 0);
    }

    /* The guest kernel's ERETU (nstub_link_eretu): return to user code with its result. */
    struct nstub_abi_regs u;
    read_link_regs(&u);
    nstub_gprs_from(sc, &u);
    sc->rip = u.rip;
    sc->eflags = u.rflags;
    sc->cs = USER_CS;
    sc->ss = USER_DS;
    uc->uc_flags |= UC_SIGCONTEXT_SS;
    take_fpu(uc);
    nstub_set_base(ARCH_SET_FS, u.fs_base, fs);
    nstub_set_base(ARCH_SET_GS, u.gs_base, gs);
    cas(NSTUB_LINK_DONE, NSTUB_LINK_ARMED);   /* ready for the next SYSCALL */
    return 1;
}

/* ---- kernel role ---------------------------------------------------------- */

void nstub_link_spinning(int on)
{
    __atomic_store_n(&LINK->k_spinning, (uint32_t)on, __ATOMIC_RELEASE);
}

int nstub_link_claim(void)
{
    volatile struct nstub_ctl *c = CTL;
    if (c->link_role != NSTUB_ROLE_KERNEL || __atomic_load_n(&LINK->word, __ATOMIC_ACQUIRE) != word(NSTUB_LINK_REQ))
        return 0;
    /* Running from now, unless the library asked something first (it never does while armed). */
    uint32_t t = NSTUB_ST_TRAPPED;
    if (!__atomic_compare_exchange_n(&c->state, &t, NSTUB_ST_RUNNING, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        return 0;
    if (cas(NSTUB_LINK_REQ, NSTUB_LINK_RUN))
        return 1;
    /* Withdrawn, or the library took the link back: waiting again. */
    __atomic_store_n(&c->state, NSTUB_ST_TRAPPED, __ATOMIC_SEQ_CST);
    return 0;
}

/* §1.1 underlying RFLAGS for guest RFLAGS @fl (fast.c underlying, run.c regs_to_provider). */
static uint64_t underlying(uint64_t fl)
{
    return (fl & NSTUB_RFLAGS_ALLOWED) | RF_IF | RF_FIXED;
}

void nstub_link_enter(struct ucontext *uc)
{
    volatile struct nstub_ctl *c = CTL;
    volatile struct pvm_vcpu_struct *p = PVCS;
    struct sigcontext *sc = &uc->uc_mcontext;
    uint64_t fs = rdfsbase(), gs = rdgsbase();
    struct nstub_abi_regs u;
    read_link_regs(&u);

    /* event.c user_event(): the user state to the PVCS (umod's IF is 1, §1.2; §10.8 32-bit eflags; §10.6 pkru 0). */
    p->user_cs = u.cs;
    p->user_ss = u.ss;
    p->eflags = (uint32_t)(u.rflags | RF_IF);
    p->pkru = 0;
    p->user_gsbase = u.gs_base;
    p->rip = u.rip;
    p->rsp = u.gpr[4];
    p->rcx = u.gpr[1];
    p->r11 = u.gpr[11];
    /* §10.3: IF cleared on user events; §5.6 entry state at LSTAR; RSP = SUPERVISOR_RSP, no red zone. */
    *PVCS_FLAGS &= ~PVM_EVENT_FLAGS_IF;
    nstub_gprs_from(sc, &u);
    sc->rsp = c->fast.sup_rsp;
    sc->rip = c->link_lstar;
    sc->rcx = c->link_lstar;
    sc->r11 = PVM_ENTRY_R11;
    sc->eflags = underlying(PVM_ENTRY_RFLAGS);
    sc->cs = USER_CS;
    sc->ss = USER_DS;
    uc->uc_flags |= UC_SIGCONTEXT_SS;
    take_fpu(uc);
    nstub_set_base(ARCH_SET_FS, u.fs_base, fs);
    nstub_set_base(ARCH_SET_GS, c->link_kgs, gs);
    c->fast.count++;
}

int nstub_link_eretu(struct ucontext *uc)
{
    volatile struct nstub_ctl *c = CTL;
    volatile struct nstub_fast *f = &c->fast;
    volatile struct nstub_link *l = LINK;
    volatile struct pvm_vcpu_struct *p = PVCS;
    struct sigcontext *sc = &uc->uc_mcontext;

    if (c->link_role != NSTUB_ROLE_KERNEL || __atomic_load_n(&l->word, __ATOMIC_ACQUIRE) != word(NSTUB_LINK_RUN))
        return 0;
    /* §10.26: RPL 3 OR-ed in; only 64-bit user code goes back this way (32-bit: the library). */
    uint16_t cs = p->user_cs | 3, ss = p->user_ss | 3;
    if (cs != USER_CS || ss != USER_DS)
        return 0;
    /* eret.c pvm_m__eretu(): §10.8 eflags | IF filtered; §10.7 user_gsbase canonical (4-level: armed only so). */
    uint64_t fl = (((uint64_t)p->eflags | RF_IF) & NSTUB_RFLAGS_ALLOWED) | RF_FIXED;
    uint64_t ugs = (uint64_t)((int64_t)(p->user_gsbase << 16) >> 16);
    volatile struct nstub_abi_regs *r = &l->regs;
    nstub_gprs_to(r, sc);
    r->gpr[4] = p->rsp;
    r->gpr[1] = p->rcx;
    r->gpr[11] = p->r11;
    r->rip = p->rip;
    r->rflags = underlying(fl);
    r->fs_base = rdfsbase();
    r->gs_base = ugs;
    r->cs = cs;
    r->ss = ss;
    put_fpu(uc);
    /* The rest of §6.2 before the user runs: NMI mask (§10.31), SUPERVISOR_RSP, IP cleared (§5.7). */
    f->nmi_masked = 0;
    f->sup_rsp = sc->rsp;
    *PVCS_FLAGS &= ~PVM_EVENT_FLAGS_IP;
    f->count++;
    /* The user stub gave up waiting: report the ERETU, the library performs it (same result). */
    if (!cas(NSTUB_LINK_RUN, NSTUB_LINK_DONE))
        return 0;
    l->trips++;
    return 1;
}

void nstub_link_reported(void)
{
    if (CTL->link_role == NSTUB_ROLE_KERNEL)
        cas(NSTUB_LINK_RUN, NSTUB_LINK_REPORT);
}
