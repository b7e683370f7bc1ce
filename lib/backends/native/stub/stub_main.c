/*
 * lib/backends/native/stub/stub_main.c - the stub program: sets up its
 * address space and seccomp filter, then serves traps forever.
 *
 * Freestanding (no libc), built with -mgeneral-regs-only so that the handler
 * never touches the guest's FPU/SSE state (the kernel keeps that in the
 * signal frame, where the library reads and writes it).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <asm/errno.h>
#include <asm/poll.h>
#include <asm/prctl.h>
#include <asm/signal.h>
#include <asm/siginfo.h>
#include <asm/sigcontext.h>
#include <asm/ucontext.h>
#include <asm/unistd.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/mman.h>
#include <linux/prctl.h>
#include <linux/seccomp.h>
#include <linux/time.h>

#include "stub_abi.h"
#include "fast.h"
#include "link.h"
#include "zygote.h"

#define CTL ((volatile struct nstub_ctl *)NSTUB_CTL_ADDR)
#define TASK_SIZE 0x7ffffffff000ull   /* the top user page is never mappable on x86-64 */

/* Everything is local to the image: RIP-relative references, no GOT. */
#pragma GCC visibility push(hidden)

long nstub_sys(long nr, long a1, long a2, long a3, long a4, long a5, long a6);
void nstub_restorer(void);
void nstub_boot_trap(void);
void stub_main(const uint64_t *sp);
extern char sys_insn[];
extern char stub_image_end[];

#define SYS(nr, a, b, c, d, e, f) \
    nstub_sys((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

/*
 * The compiler may emit calls to these for struct copies; link.c moves XSAVE
 * images (kilobytes) with memcpy on every hand-off: string instructions, not
 * a byte loop (no vector registers here: -mgeneral-regs-only).
 */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n)
{
    void *d = dst;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
    return dst;
}
void *memset(void *dst, int c, size_t n)
{
    void *d = dst;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return dst;
}

static __attribute__((noreturn)) void die(const char *msg)
{
    /* The control area may not be mapped yet: only write it if it is ours. */
    if (CTL->magic == NSTUB_ABI_MAGIC) {
        size_t i = 0;
        for (; msg[i] && i < sizeof(CTL->fail_msg) - 1; i++)
            CTL->fail_msg[i] = msg[i];
        CTL->fail_msg[i] = 0;
    }
    for (;;)
        SYS(__NR_exit_group, 127, 0, 0, 0, 0, 0);
}

static inline int canonical(uint64_t a)
{
    return (uint64_t)((int64_t)(a << 16) >> 16) == a;
}

/* ---- outliving the library: never -------------------------------------------- */

/*
 * Not PR_SET_PDEATHSIG: Linux sends it when the *thread* that created us
 * exits, and the library may create a stub on a thread that ends long before
 * the VM does.  Not getppid() either: it would show a guest a host pid.  The
 * library holds the only write end of the death pipe (NSTUB_FD_DEATH): it
 * hangs up when the whole library process is gone, whichever thread made us.
 * poll() with a zero timeout is all the filter allows (no sleep: see
 * nstub_confirm_stopped), and it tells a guest nothing about the host.
 */
static void exit_if_orphaned(void)
{
    struct { int fd; short events, revents; } p = { NSTUB_FD_DEATH, 0, 0 };
    if (SYS(__NR_poll, &p, 1, 0, 0, 0, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)))
        die("the library process is gone");
}

void nstub_orphan_check(void)
{
    exit_if_orphaned();
}

/*
 * SIGPROF from ITIMER_PROF: a guest burning CPU (user or system time) comes
 * here once per NSTUB_ORPHAN_CPU_US.  Handled entirely here and invisible to
 * the guest: nothing is reported, and sigreturn restores the frame as the
 * kernel saved it (registers, fs/gs base untouched, -mgeneral-regs-only keeps
 * the XSAVE image in the frame intact).  Every signal is blocked meanwhile,
 * so a kick waits until the guest runs again and is reported with the
 * guest's registers, not ours.
 */
static void prof_handler(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    (void)uc;
    exit_if_orphaned();
}

/* ---- handing traps to the library ---------------------------------------- */

static void publish(uint32_t st)
{
    volatile struct nstub_ctl *c = CTL;
    __atomic_store_n(&c->state, st, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->lib_sleeping, __ATOMIC_SEQ_CST))
        SYS(__NR_futex, &c->state, FUTEX_WAKE, 1, 0, 0, 0);
}

/*
 * Wait until ctl->state is no longer @old: spin for spin_tsc ticks, then
 * sleep; woken with the state unchanged (a pre-wake: nstub_prewake, the
 * library about to answer), spin again first.  A kernel stub of an armed
 * link takes the user stub's requests while it spins (NSTUB_ST_CLAIMED),
 * never asleep: a stub asleep here runs no guest code until the library
 * wakes it (nstub_confirm_stopped).
 */
static uint32_t wait_change(uint32_t old)
{
    volatile struct nstub_ctl *c = CTL;
    uint32_t st;
    for (;;) {
        uint64_t spin = c->spin_tsc, t0 = rdtsc();
        int linked = 0;
        for (unsigned n = 1;; n++) {
            st = __atomic_load_n(&c->state, __ATOMIC_ACQUIRE);
            if (st != old)
                break;
            if (c->link_role == NSTUB_ROLE_KERNEL) {
                if (!linked) {
                    /* Armed: a user resume is under way, its first SYSCALL may take a wake-up to come. */
                    nstub_link_spinning(linked = 1);
                    t0 = rdtsc();
                    spin *= NSTUB_LINK_ARMED_SPINS;
                }
                if (nstub_link_claim()) {
                    st = NSTUB_ST_CLAIMED;
                    break;
                }
            }
            if (rdtsc() - t0 >= spin || __atomic_load_n(&c->park, __ATOMIC_ACQUIRE))
                break;
            /* spin_tsc sits in the guest-writable page: do not let a huge value hide a dead library. */
            if (!(n & 1023))
                exit_if_orphaned();
            /*
             * sched_yield, not PAUSE: if the library shares our CPU it must run to
             * answer (measured: PAUSE spins cost 22 T there, yields 3 T; across
             * CPUs both about 1.7 T).
             */
            SYS(__NR_sched_yield, 0, 0, 0, 0, 0, 0);
        }
        if (linked)
            nstub_link_spinning(0);
        if (st != old)
            return st;
        __atomic_store_n(&c->stub_sleeping, 1, __ATOMIC_SEQ_CST);
        st = __atomic_load_n(&c->state, __ATOMIC_SEQ_CST);
        if (st != old)
            break;
        /*
         * Untimed, as the filter demands: a stub asleep here runs no guest code
         * until the library wakes it, which is what nstub_confirm_stopped()
         * checks.  A library that dies closes the death pipe: the kernel's
         * SIGKILL (nstub_backstop) ends this sleep.
         */
        SYS(__NR_futex, &c->state, FUTEX_WAIT, old, 0, 0, 0);
        exit_if_orphaned();
        __atomic_store_n(&c->stub_sleeping, 0, __ATOMIC_SEQ_CST);
    }
    __atomic_store_n(&c->stub_sleeping, 0, __ATOMIC_RELAXED);
    return st;
}

/* Apply queued map/unmap commands; on failure record which and stop. */
static int apply_cmds(void)
{
    volatile struct nstub_ctl *c = CTL;
    uint32_t n = c->nr_cmds;
    c->nr_cmds = 0;
    if (n > NSTUB_MAX_CMDS) {
        c->cmd_err = -22;
        c->cmd_err_idx = n;
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint64_t gva = c->cmds[i].gva, len = c->cmds[i].len, off = c->cmds[i].off;
        uint32_t op = c->cmds[i].op, prot = c->cmds[i].prot;
        long r;
        uint32_t fd = c->cmds[i].fd;
        if (op == NSTUB_CMD_MAP && fd != NSTUB_FD_RAM && fd != NSTUB_FD_SNAP) {
            r = -9;
        } else if (op == NSTUB_CMD_MAP) {
            r = SYS(__NR_mmap, gva, len, prot, MAP_SHARED | MAP_FIXED, fd, off);
            if (r >= 0 && (uint64_t)r != gva)
                r = -14;
        } else if (op == NSTUB_CMD_UNMAP) {
            r = SYS(__NR_munmap, gva, len, 0, 0, 0, 0);
        } else if (op == NSTUB_CMD_PVCS) {
            r = SYS(__NR_mmap, NSTUB_PVCS_ADDR, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, NSTUB_FD_RAM,
                    off);
            if (r >= 0 && (uint64_t)r != NSTUB_PVCS_ADDR)
                r = -14;
        } else if (op == NSTUB_CMD_LINK) {
            r = SYS(__NR_mmap, NSTUB_LINK_ADDR, NSTUB_LINK_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                    NSTUB_FD_LINK, off);
            if (r >= 0 && (uint64_t)r != NSTUB_LINK_ADDR)
                r = -14;
        } else {
            r = -22;
        }
        if (r < 0) {
            c->cmd_err = (int32_t)r;
            c->cmd_err_idx = i;
            return -1;
        }
    }
    return 0;
}

/* What every return into the guest resets: a forged sigreturn's mask and stack. */
static void sane_return(struct ucontext *uc)
{
    uc->uc_sigmask = 0;
    uc->uc_stack.ss_sp = (void *)(NSTUB_CTL_ADDR + NSTUB_ALTSTACK_OFF);
    uc->uc_stack.ss_size = NSTUB_ALTSTACK_SIZE;
    uc->uc_stack.ss_flags = 0;
}

/*
 * Set the FS or GS base the guest resumes with (@cur: what it is now).  By
 * arch_prctl, not WRFSBASE: a kernel that does not itself use FSGSBASE (no
 * "fsgsbase" in /proc/cpuinfo, yet CR4.FSGSBASE set for user mode, as under
 * some PVM hosts) restores only the base it knows of at each context switch,
 * and a WRFSBASE'd one is lost at the next preemption.  A non-canonical base
 * is refused (the kernel would, and WRFSBASE would #GP).
 */
void nstub_set_base(int code, uint64_t want, uint64_t cur)
{
    if (want != cur && canonical(want))
        SYS(__NR_arch_prctl, code, want, 0, 0, 0, 0);
}

void nstub_gprs_to(volatile struct nstub_abi_regs *r, const struct sigcontext *sc)
{
    const uint64_t g[16] = { sc->rax, sc->rcx, sc->rdx, sc->rbx, sc->rsp, sc->rbp, sc->rsi, sc->rdi,
                             sc->r8,  sc->r9,  sc->r10, sc->r11, sc->r12, sc->r13, sc->r14, sc->r15 };
    for (int i = 0; i < 16; i++)
        r->gpr[i] = g[i];
}

void nstub_gprs_from(struct sigcontext *sc, const volatile struct nstub_abi_regs *r)
{
    sc->rax = r->gpr[0];
    sc->rcx = r->gpr[1];
    sc->rdx = r->gpr[2];
    sc->rbx = r->gpr[3];
    sc->rsp = r->gpr[4];
    sc->rbp = r->gpr[5];
    sc->rsi = r->gpr[6];
    sc->rdi = r->gpr[7];
    sc->r8 = r->gpr[8];
    sc->r9 = r->gpr[9];
    sc->r10 = r->gpr[10];
    sc->r11 = r->gpr[11];
    sc->r12 = r->gpr[12];
    sc->r13 = r->gpr[13];
    sc->r14 = r->gpr[14];
    sc->r15 = r->gpr[15];
}

void nstub_note_frame(struct ucontext *uc)
{
    volatile struct nstub_ctl *c = CTL;
    struct sigcontext *sc = &uc->uc_mcontext;
    c->frame_off = (uint64_t)(uintptr_t)uc - NSTUB_CTL_ADDR;
    c->fpstate_off = 0;
    c->fpstate_size = 0;
    if (sc->fpstate) {
        const struct _fpx_sw_bytes *sw = &sc->fpstate->sw_reserved;
        c->fpstate_off = (uint64_t)(uintptr_t)sc->fpstate - NSTUB_CTL_ADDR;
        c->fpstate_size = sw->magic1 == FP_XSTATE_MAGIC1 ? sw->xstate_size : 512;
    }
}

static int ram_pending;   /* a pooled stub's boot trap: its memfds come first (receive_ram) */
static void receive_ram(void);

static void handler(int sig, siginfo_t *si, void *ucv)
{
    struct ucontext *uc = ucv;
    struct sigcontext *sc = &uc->uc_mcontext;
    volatile struct nstub_ctl *c = CTL;
    volatile struct nstub_abi_regs *r = &c->regs;
    uint64_t fs = rdfsbase(), gs = rdgsbase();

    /* smod events the stub answers itself (fast.c): straight back into the guest. */
    int fast = nstub_fast(sig, si, uc);
    if (fast == 1) {
        /* A kick signal that is SIGPROF, answered in the stub (a poke): still the orphan check. */
        if (sig == SIGPROF)
            exit_if_orphaned();
        sane_return(uc);
        return;
    }
    if (fast == NSTUB_FAST_LINKED) {
        /* The guest kernel's ERETU went to the user stub (link.c): wait for the next request. */
        nstub_note_frame(uc);
        publish(NSTUB_ST_TRAPPED);
        goto wait;
    }
    /* A user SYSCALL the kernel stub answered (link.c): back to user code with the result. */
    if (nstub_link_user(sig, si, uc)) {
        sane_return(uc);
        return;
    }

    nstub_gprs_to(r, sc);
    r->rip = sc->rip;
    r->rflags = sc->eflags;
    r->fs_base = fs;
    r->gs_base = gs;
    r->cs = sc->cs;
    r->ss = (uc->uc_flags & UC_SIGCONTEXT_SS) ? sc->ss : 0x2b;

    c->signo = sig;
    c->si_code = si->si_code;
    c->sys_arch = sig == SIGSYS ? si->si_arch : 0;
    c->sys_nr = sig == SIGSYS ? (uint32_t)si->si_syscall : 0;
    c->sys_call_addr = sig == SIGSYS ? (uint64_t)(uintptr_t)si->si_call_addr : 0;
    c->trapno = sc->trapno;
    c->err = sc->err;
    c->cr2 = sc->cr2;
    c->fault_addr = (uint64_t)(uintptr_t)si->si_addr;
    nstub_note_frame(uc);
    c->cmd_err = 0;
    c->cmd_err_idx = 0;
    c->trap_seq++;
    if (ram_pending) {
        /* The boot trap of a pooled stub: its exception is behind it when a VM takes it. */
        receive_ram();
        ram_pending = 0;
    }

    publish(NSTUB_ST_TRAPPED);
    /* A kernel stub that took a user SYSCALL: the user stub reports too, the library adopts this report. */
    nstub_link_reported();
wait:
    for (;;) {
        uint32_t st = wait_change(NSTUB_ST_TRAPPED);
        if (st == NSTUB_ST_CLAIMED) {
            /* A user SYSCALL (link.c): into the guest kernel's entry, state RUNNING already. */
            nstub_link_enter(uc);
            sane_return(uc);
            return;
        }
        if (st == NSTUB_ST_RESUME) {
            if (apply_cmds() == 0)
                break;
        } else if (st == NSTUB_ST_SYNC) {
            apply_cmds();
        } else {
            die("bad request in the control page");
        }
        publish(NSTUB_ST_TRAPPED);
    }

    nstub_gprs_from(sc, r);
    sc->rip = r->rip;
    sc->eflags = r->rflags;
    sc->cs = r->cs;
    sc->ss = r->ss;
    uc->uc_flags |= UC_SIGCONTEXT_SS;
    nstub_set_base(ARCH_SET_FS, r->fs_base, fs);
    nstub_set_base(ARCH_SET_GS, r->gs_base, gs);
    /* Undo whatever a forged sigreturn may have set: every trap unblocks all signals again. */
    sane_return(uc);
    __atomic_store_n(&c->state, NSTUB_ST_RUNNING, __ATOMIC_RELEASE);
}

/* ---- the seccomp filter ---------------------------------------------------- */

enum { L_NEXT, L_ALLOW, L_TRAP, L_ARCH, L_POLL, L_FUTEX, L_MMAP, L_MMAP_FD, L_MMAP_LINK, L_SOCK, L_RANGE, L_NOCARRY, L_HI,
       L_COUNT };

struct bpf {
    struct sock_filter f[128];
    uint8_t jt[128], jf[128], ja[128];
    int at[L_COUNT];
    unsigned n;
};

static void emit(struct bpf *b, uint16_t code, uint32_t k, uint8_t jt, uint8_t jf)
{
    if (b->n >= sizeof(b->f) / sizeof(b->f[0]))
        die("seccomp filter too long");
    b->f[b->n] = (struct sock_filter){ code, 0, 0, k };
    b->jt[b->n] = jt;
    b->jf[b->n] = jf;
    b->ja[b->n] = 0;
    b->n++;
}
#define LD(off) emit(b, BPF_LD | BPF_W | BPF_ABS, (off), 0, 0)
#define JEQ(k, t, f) emit(b, BPF_JMP | BPF_JEQ | BPF_K, (k), (t), (f))
#define JGE(k, t, f) emit(b, BPF_JMP | BPF_JGE | BPF_K, (k), (t), (f))
#define JGT(k, t, f) emit(b, BPF_JMP | BPF_JGT | BPF_K, (k), (t), (f))
#define JSET(k, t, f) emit(b, BPF_JMP | BPF_JSET | BPF_K, (k), (t), (f))
#define RET(k) emit(b, BPF_RET | BPF_K, (k), 0, 0)
#define LABEL(l) (b->at[(l)] = (int)b->n)

/* seccomp_data offsets (little endian halves of the 64-bit fields) */
#define D_NR 0
#define D_ARCH 4
#define D_IP_LO 8
#define D_IP_HI 12
#define D_ARG_LO(i) (16 + 8 * (i))
#define D_ARG_HI(i) (20 + 8 * (i))

static uint8_t rel(const struct bpf *b, unsigned i, uint8_t label)
{
    if (label == L_NEXT)
        return 0;
    int d = b->at[label] - (int)i - 1;
    if (d < 0 || d > 255)
        die("seccomp filter: bad jump");
    return (uint8_t)d;
}

static void install_filter(void)
{
    static struct bpf bb;
    struct bpf *b = &bb;
    uint64_t ip = (uint64_t)(uintptr_t)sys_insn + 2;      /* after the SYSCALL */
    uint64_t fw = (uint64_t)(uintptr_t)&CTL->state;

    /* Only x86-64 syscalls, only from sys_insn.  Everything else is the guest's: SIGSYS. */
    LD(D_ARCH);
    JEQ(AUDIT_ARCH_X86_64, L_NEXT, L_TRAP);
    LD(D_IP_HI);
    JEQ((uint32_t)(ip >> 32), L_NEXT, L_TRAP);
    LD(D_IP_LO);
    JEQ((uint32_t)ip, L_NEXT, L_TRAP);
    LD(D_NR);
    JEQ(__NR_rt_sigreturn, L_ALLOW, L_NEXT);
    JEQ(__NR_restart_syscall, L_ALLOW, L_NEXT);
    JEQ(__NR_exit_group, L_ALLOW, L_NEXT);
    JEQ(__NR_sched_yield, L_ALLOW, L_NEXT);
    JEQ(__NR_poll, L_POLL, L_NEXT);
    JEQ(__NR_arch_prctl, L_ARCH, L_NEXT);
    JEQ(__NR_futex, L_FUTEX, L_NEXT);
    JEQ(__NR_mmap, L_MMAP, L_NEXT);
    JEQ(__NR_recvmsg, L_SOCK, L_NEXT);
    JEQ(__NR_close, L_SOCK, L_NEXT);
    JEQ(__NR_munmap, L_RANGE, L_TRAP);

    /*
     * recvmsg/close: only of the approval socket, for a pooled stub to take its RAM memfd
     * after this filter (receive_ram); it is closed before any guest code runs.
     */
    LABEL(L_SOCK);
    LD(D_ARG_HI(0));
    JEQ(0, L_NEXT, L_TRAP);
    LD(D_ARG_LO(0));
    JEQ(NSTUB_FD_NOTIFY, L_ALLOW, L_TRAP);

    /* arch_prctl: only the FS and GS bases (the guest's own, which WRFSBASE sets too). */
    LABEL(L_ARCH);
    LD(D_ARG_HI(0));
    JEQ(0, L_NEXT, L_TRAP);
    LD(D_ARG_LO(0));
    JEQ(ARCH_SET_FS, L_ALLOW, L_NEXT);
    JEQ(ARCH_SET_GS, L_ALLOW, L_TRAP);

    /* poll: one fd, zero timeout (exit_if_orphaned): a guest must not sleep where the stub parks. */
    LABEL(L_POLL);
    LD(D_ARG_HI(1));
    JEQ(0, L_NEXT, L_TRAP);
    LD(D_ARG_LO(1));
    JEQ(1, L_NEXT, L_TRAP);
    LD(D_ARG_LO(2));
    JEQ(0, L_ALLOW, L_TRAP);

    /* futex: only WAIT/WAKE (shared) on the control page's state word. */
    LABEL(L_FUTEX);
    LD(D_ARG_HI(0));
    JEQ((uint32_t)(fw >> 32), L_NEXT, L_TRAP);
    LD(D_ARG_LO(0));
    JEQ((uint32_t)fw, L_NEXT, L_TRAP);
    LD(D_ARG_LO(1));
    JEQ(FUTEX_WAKE, L_ALLOW, L_NEXT);
    JEQ(FUTEX_WAIT, L_NEXT, L_TRAP);
    /* WAIT only untimed: a stub (or guest) asleep on the state word wakes only when the library says. */
    LD(D_ARG_LO(3));
    JEQ(0, L_NEXT, L_TRAP);
    LD(D_ARG_HI(3));
    JEQ(0, L_ALLOW, L_TRAP);

    /*
     * mmap: only the guest-RAM memfd or the snapshot memfd (sealed against
     * writes: the kernel refuses it PROT_WRITE), MAP_SHARED|MAP_FIXED, plain prot bits ...
     */
    LABEL(L_MMAP);
    LD(D_ARG_LO(4));
    JEQ(NSTUB_FD_RAM, L_MMAP_FD, L_NEXT);
    JEQ(NSTUB_FD_SNAP, L_MMAP_FD, L_NEXT);
    JEQ(NSTUB_FD_LINK, L_MMAP_LINK, L_TRAP);

    /* The link memfd: only exactly the vCPU's area (NSTUB_CMD_LINK; the approval checks the offset). */
    LABEL(L_MMAP_LINK);
    LD(D_ARG_LO(3));
    JEQ(MAP_SHARED | MAP_FIXED, L_NEXT, L_TRAP);
    LD(D_ARG_HI(3));
    JEQ(0, L_NEXT, L_TRAP);
    LD(D_ARG_LO(2));
    JEQ(PROT_READ | PROT_WRITE, L_NEXT, L_TRAP);
    LD(D_ARG_HI(2));
    JEQ(0, L_NEXT, L_TRAP);
    LD(D_ARG_HI(0));
    JEQ((uint32_t)(NSTUB_LINK_ADDR >> 32), L_NEXT, L_TRAP);
    LD(D_ARG_LO(0));
    JEQ((uint32_t)NSTUB_LINK_ADDR, L_NEXT, L_TRAP);
    LD(D_ARG_HI(1));
    JEQ(0, L_NEXT, L_TRAP);
    LD(D_ARG_LO(1));
    JEQ((uint32_t)NSTUB_LINK_SIZE, L_ALLOW, L_TRAP);

    LABEL(L_MMAP_FD);
    LD(D_ARG_LO(3));
    JEQ(MAP_SHARED | MAP_FIXED, L_NEXT, L_TRAP);
    LD(D_ARG_HI(3));
    JEQ(0, L_NEXT, L_TRAP);
    LD(D_ARG_LO(2));
    JSET(~(uint32_t)(PROT_READ | PROT_WRITE | PROT_EXEC), L_TRAP, L_NEXT);
    LD(D_ARG_HI(2));
    JEQ(0, L_NEXT, L_TRAP);
    /* ... either exactly the PVCS page (NSTUB_CMD_PVCS; guest RAM, so the guest gains nothing) ... */
    LD(D_ARG_HI(0));
    JEQ((uint32_t)(NSTUB_PVCS_ADDR >> 32), L_NEXT, L_RANGE);
    LD(D_ARG_LO(0));
    JEQ((uint32_t)NSTUB_PVCS_ADDR, L_NEXT, L_RANGE);
    LD(D_ARG_HI(1));
    JEQ(0, L_NEXT, L_RANGE);
    LD(D_ARG_LO(1));
    JEQ(4096, L_ALLOW, L_RANGE);

    /* ... or mmap/munmap only inside [0, NSTUB_IMAGE_BASE): addr + len <= base. */
    LABEL(L_RANGE);
    uint32_t hi_lim = (uint32_t)(NSTUB_IMAGE_BASE >> 32);
    LD(D_ARG_HI(0));
    JGE(hi_lim, L_TRAP, L_NEXT);
    LD(D_ARG_HI(1));
    JGE(hi_lim, L_TRAP, L_NEXT);
    LD(D_ARG_LO(0));
    emit(b, BPF_MISC | BPF_TAX, 0, 0, 0);
    LD(D_ARG_LO(1));
    emit(b, BPF_ALU | BPF_ADD | BPF_X, 0, 0, 0);
    emit(b, BPF_ST, 0, 0, 0);                              /* M[0] = low half of the sum */
    emit(b, BPF_JMP | BPF_JGE | BPF_X, 0, L_NOCARRY, L_NEXT);
    emit(b, BPF_LD | BPF_IMM, 1, 0, 0);
    emit(b, BPF_JMP | BPF_JA, 0, 0, 0);
    b->ja[b->n - 1] = L_HI;
    LABEL(L_NOCARRY);
    emit(b, BPF_LD | BPF_IMM, 0, 0, 0);
    LABEL(L_HI);
    emit(b, BPF_MISC | BPF_TAX, 0, 0, 0);
    LD(D_ARG_HI(0));
    emit(b, BPF_ALU | BPF_ADD | BPF_X, 0, 0, 0);
    emit(b, BPF_MISC | BPF_TAX, 0, 0, 0);
    LD(D_ARG_HI(1));
    emit(b, BPF_ALU | BPF_ADD | BPF_X, 0, 0, 0);           /* high half of the sum */
    JGT(hi_lim, L_TRAP, L_NEXT);
    JEQ(hi_lim, L_NEXT, L_ALLOW);
    emit(b, BPF_LD | BPF_MEM, 0, 0, 0);
    JEQ(0, L_ALLOW, L_TRAP);

    LABEL(L_ALLOW);
    RET(SECCOMP_RET_ALLOW);
    LABEL(L_TRAP);
    RET(SECCOMP_RET_TRAP);

    for (unsigned i = 0; i < b->n; i++) {
        if (BPF_CLASS(b->f[i].code) != BPF_JMP)
            continue;
        if (BPF_OP(b->f[i].code) == BPF_JA) {
            b->f[i].k = rel(b, i, b->ja[i]);
        } else {
            b->f[i].jt = rel(b, i, b->jt[i]);
            b->f[i].jf = rel(b, i, b->jf[i]);
        }
    }
    struct sock_fprog prog = { .len = (unsigned short)b->n, .filter = b->f };
    if (SYS(__NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0) != 0)
        die("prctl(PR_SET_NO_NEW_PRIVS) failed");
    /* No SECCOMP_FILTER_FLAG_SPEC_ALLOW: the guest is untrusted, keep the kernel's SSB/IB mitigations. */
    if (SYS(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog, 0, 0, 0) != 0)
        die("seccomp(SECCOMP_SET_MODE_FILTER) failed");
}

/*
 * Mapping approval (stub_abi.h NSTUB_FD_NOTIFY).  Anything the stub can ask
 * the kernel, a guest can too, by jumping to sys_insn with its own registers:
 * the filter below cannot tell the two apart.  So every mmap of guest RAM
 * (NSTUB_FD_RAM, or a snapshot's NSTUB_FD_SNAP) goes to the library
 * (SECCOMP_RET_USER_NOTIF), which lets it proceed only
 * if its arguments are exactly those of the mapping command it is waiting
 * for.  mmap's arguments are registers, copied by the kernel before the
 * library looks: approve-and-continue cannot be raced.  A filter of its
 * own, installed first: seccomp takes the strictest answer of all filters,
 * so install_filter()'s ALLOW for such an mmap still ends here.  Its
 * listener goes to the library over the socket, which is then closed.
 */
/* One SCM_RIGHTS header with room for three fds (the approval listener out; RAM, link and snapshot memfds in). */
struct k_cmsg_fds {
    size_t len;
    int level, type;
    int fd[3];
    int pad;
};

/*
 * A pooled stub (nstub_create's pool) is started, filters and all, before it
 * has a VM: it waits here, inside its boot trap's handler, blocked and using
 * no CPU, until the library has put its memfds on the socket and says GO on
 * the state word (a futex wake, not the socket's: that one is synchronous and
 * would queue us behind the application on its CPU).  Installing a seccomp
 * filter costs tens of microseconds on these hosts (a BPF JIT image,
 * speculation controls), and the boot trap's exception several more, so a
 * pooled stub does both ahead.  recvmsg puts fds on the lowest free numbers:
 * fds 0-2 are held (copies of the control memfd), so the RAM memfd lands on
 * NSTUB_FD_RAM (and a snapshot's on NSTUB_FD_SNAP) with no dup2, which the
 * filter would refuse.  The library gone, the death pipe's SIGKILL ends the
 * wait (nstub_backstop).
 */
static void receive_ram(void)
{
    char byte;
    struct k_iovec iov = { &byte, 1 };
    struct k_cmsg_fds cm = { 0, 0, 0, { -1, -1, -1 }, 0 };
    struct k_msghdr mh = { 0, 0, &iov, 1, &cm, sizeof(cm), 0 };
    long n;
    volatile struct nstub_ctl *c = CTL;
    while (__atomic_load_n(&c->state, __ATOMIC_ACQUIRE) == NSTUB_ST_BOOT)
        SYS(__NR_futex, &c->state, FUTEX_WAIT, NSTUB_ST_BOOT, 0, 0, 0);
    while ((n = SYS(__NR_recvmsg, NSTUB_FD_NOTIFY, &mh, 0, 0, 0, 0)) == -EINTR)
        ;
    /* The RAM and link memfds, and for a VM from a snapshot its sealed memfd: on 3, 7 and 8, the lowest free fds. */
    const size_t two = offsetof(struct k_cmsg_fds, fd) + 2 * sizeof(int), three = two + sizeof(int);
    _Static_assert(NSTUB_FD_LINK == NSTUB_FD_NOTIFY + 1 && NSTUB_FD_SNAP == NSTUB_FD_LINK + 1,
                   "the link and snapshot memfds land on the next free fds");
    if (n != 1 || cm.level != 1 || cm.type != 1 || (cm.len != two && cm.len != three) || cm.fd[0] != NSTUB_FD_RAM ||
        cm.fd[1] != NSTUB_FD_LINK || (cm.len == three && cm.fd[2] != NSTUB_FD_SNAP))
        die("no RAM memfd for a pooled stub (the library gave it up)");
    SYS(__NR_close, NSTUB_FD_NOTIFY, 0, 0, 0, 0, 0);
}

/* @keep_socket: a pooled stub still takes its RAM memfd over it (receive_ram). */
static void install_map_approval(bool keep_socket)
{
    /*
     * munmap too: an unmap the library queued counts as done only once the
     * stub asked for exactly it (a forged sleeper woken with unmaps queued
     * would skip them; docs/design.md "Mapping approval").  The main filter's
     * TRAP for munmap outside the guest range is stricter and still wins.
     */
    static struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, D_NR),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_munmap, 5, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mmap, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, D_ARG_LO(4)),   /* the kernel reads the fd as 32 bits */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NSTUB_FD_RAM, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NSTUB_FD_LINK, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NSTUB_FD_SNAP, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
    if (SYS(__NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0) != 0)
        die("prctl(PR_SET_NO_NEW_PRIVS) failed");
    long lfd = SYS(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog, 0, 0, 0);
    if (lfd < 0)
        die("seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER) failed");
    char byte = 'L';
    struct k_iovec iov = { &byte, 1 };
    struct k_cmsg_fds cm = { .len = offsetof(struct k_cmsg_fds, fd) + sizeof(int), .level = 1 /* SOL_SOCKET */,
                             .type = 1 /* SCM_RIGHTS */, .fd = { (int)lfd, -1 } };
    struct k_msghdr mh = { 0, 0, &iov, 1, &cm, sizeof(cm), 0 };
    if (SYS(__NR_sendmsg, NSTUB_FD_NOTIFY, &mh, 0x4000 /* MSG_NOSIGNAL */, 0, 0, 0) != 1)
        die("sending the mapping-approval listener failed");
    SYS(__NR_close, lfd, 0, 0, 0, 0, 0);
    if (!keep_socket)
        SYS(__NR_close, NSTUB_FD_NOTIFY, 0, 0, 0, 0, 0);
}

/* ---- startup --------------------------------------------------------------- */

struct ksigaction {
    void (*handler)(int, siginfo_t *, void *);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

/* The kernel marks this robust-futex word FUTEX_OWNER_DIED and wakes the library when we die. */
static struct robust_list death_entry;
static struct robust_list_head death_head;

void stub_main(const uint64_t *sp)
{
    volatile struct nstub_ctl *c = CTL;

    /* Started as the zygote: it returns only in a forked child, set up like an exec'd stub. */
    if (nstub_is_zygote(sp))
        nstub_zygote_main();

    long r = SYS(__NR_mmap, NSTUB_CTL_ADDR, NSTUB_CTL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                 NSTUB_FD_CTL, 0);
    if (r != (long)NSTUB_CTL_ADDR || c->magic != NSTUB_ABI_MAGIC)
        SYS(__NR_exit_group, 126, 0, 0, 0, 0, 0);
    if (c->version != NSTUB_ABI_VERSION)
        die("control area version mismatch");
    int kick = c->kick_signal;
    if (kick < 1 || kick > 64 || kick == SIGKILL || kick == SIGSTOP)
        die("bad kick signal");
    exit_if_orphaned();
    /* Kernel-enforced, unlike the checks here: SIGKILL once the death pipe loses its writer. */
    if (nstub_backstop() == 1)
        die("the library process is gone");

    /* Not in the caller's session: terminal signals (^C, ^Z) are not ours. */
    SYS(__NR_setsid, 0, 0, 0, 0, 0, 0);
    /* No core dumps, even if the guest gets us killed by SIGSYS. */
    SYS(__NR_prctl, PR_SET_DUMPABLE, 0, 0, 0, 0, 0);
    /*
     * No capabilities for guest code: a root library's stub would otherwise
     * keep CAP_SYS_RAWIO and could map page 0 despite vm.mmap_min_addr.  The
     * uid stays: a stub running as nobody could be signalled by any other
     * nobody process.  Nothing regains them: no_new_privs and the filter
     * forbid execve.
     */
    struct __user_cap_header_struct caph = { .version = _LINUX_CAPABILITY_VERSION_3 };
    struct __user_cap_data_struct capd[2] = { { 0 } };
    if (SYS(__NR_capset, &caph, capd, 0, 0, 0, 0) != 0)
        die("capset failed");

    long pid = SYS(__NR_getpid, 0, 0, 0, 0, 0, 0);
    c->death = (uint32_t)pid | FUTEX_WAITERS;
    death_head.list.next = &death_entry;
    death_entry.next = &death_head.list;
    death_head.futex_offset = (long)((uintptr_t)&c->death - (uintptr_t)&death_entry);
    death_head.list_op_pending = 0;
    if (SYS(__NR_set_robust_list, &death_head, sizeof(death_head), 0, 0, 0, 0) != 0)
        die("set_robust_list failed");

    stack_t ss = { .ss_sp = (void *)(NSTUB_CTL_ADDR + NSTUB_ALTSTACK_OFF), .ss_flags = 0,
                   .ss_size = NSTUB_ALTSTACK_SIZE };
    if (SYS(__NR_sigaltstack, &ss, 0, 0, 0, 0, 0) != 0)
        die("sigaltstack failed");
    static const int sigs[] = { SIGSYS, SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGFPE };
    struct ksigaction sa = { .handler = handler, .flags = SA_SIGINFO | SA_ONSTACK | SA_RESTORER,
                             .restorer = nstub_restorer, .mask = ~0ull };
    for (unsigned i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        if (SYS(__NR_rt_sigaction, sigs[i], &sa, 0, 8, 0, 0) != 0)
            die("rt_sigaction failed");
    /* If the kick signal is SIGPROF, the trap handler wins: each tick is then a spurious kick,
     * a round trip the library answers by resuming (and a dead library by the wait's timeout). */
    struct ksigaction prof = sa;
    prof.handler = prof_handler;
    if (SYS(__NR_rt_sigaction, SIGPROF, &prof, 0, 8, 0, 0) != 0)
        die("rt_sigaction(SIGPROF) failed");
    if (SYS(__NR_rt_sigaction, kick, &sa, 0, 8, 0, 0) != 0)
        die("rt_sigaction(kick signal) failed");
    /* The library blocked every signal around the spawn; execve kept that mask. */
    uint64_t none = 0;
    if (SYS(__NR_rt_sigprocmask, SIG_SETMASK, &none, 0, 8, 0, 0) != 0)
        die("rt_sigprocmask failed");

    /* Own nothing but the image and the control area: no stack, vDSO or vvar. */
    uint64_t end = ((uint64_t)(uintptr_t)stub_image_end + 4095) & ~4095ull;
    if (SYS(__NR_munmap, 0, NSTUB_IMAGE_BASE, 0, 0, 0, 0) != 0)
        die("munmap below the stub region failed");
    if (end < NSTUB_CTL_ADDR && SYS(__NR_munmap, end, NSTUB_CTL_ADDR - end, 0, 0, 0, 0) != 0)
        die("munmap between image and control area failed");
    if (SYS(__NR_munmap, NSTUB_CTL_ADDR + NSTUB_CTL_SIZE, TASK_SIZE - NSTUB_CTL_ADDR - NSTUB_CTL_SIZE, 0, 0, 0, 0) != 0)
        die("munmap above the control area failed");

    /* CPU time, user and system: a guest can also burn it in the few syscalls the filter allows. */
    struct itimerval it = { .it_interval = { 0, NSTUB_ORPHAN_CPU_US }, .it_value = { 0, NSTUB_ORPHAN_CPU_US } };
    if (SYS(__NR_setitimer, ITIMER_PROF, &it, 0, 0, 0, 0) != 0)
        die("setitimer(ITIMER_PROF) failed");

    int pooled = c->pooled == 1;
    if (pooled)
        for (int fd = 0; fd < NSTUB_FD_RAM; fd++)
            if (SYS(__NR_dup2, NSTUB_FD_CTL, fd, 0, 0, 0, 0) != fd)
                die("dup2 for a pooled stub failed");
    if (c->approve_maps)
        install_map_approval(pooled);
    else
        SYS(__NR_close, NSTUB_FD_NOTIFY, 0, 0, 0, 0, 0);
    install_filter();
    /* A pooled stub takes the boot trap now and waits in it for its VM (handler). */
    ram_pending = pooled;
    /* The first report: the library's first RESUME replaces this frame with the guest's registers. */
    nstub_boot_trap();
    die("boot trap returned");
}
