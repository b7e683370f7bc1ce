/*
 * lib/backends/native/stub.c - the library side of stub processes: spawn,
 * the control-page protocol, mapping commands, kicks, death.
 *
 * The control area's protocol is described in stub/stub_abi.h.  Every value
 * read from it was writable by the guest: it is copied once and validated.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include "pvm/abi.h"
#include "core/core.h"
#include "pvm/pvm.h"
#include "spawn.h"
#include "stub.h"
#include "stub/stub_abi.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 0x02
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define DEFAULT_SPIN_NS 30000u             /* ARCHITECTURE.md: never wait on a cross-CPU wake */
#define BOOT_SPIN_NS 1000000ull           /* stub start-up: spin, a cross-CPU wake costs 20-85 us */
#define BOOT_TIMEOUT_NS 2000000000ull      /* stub start-up, generous for loaded machines */
#define REFILL_WAIT_NS 1000000ull          /* a guest running this long without a trap: time for the pool's requests */
#define CHECK_PERIOD_NS 100000000ull       /* how often a long wait checks the stub is alive */
#define KICK_TIMEOUT_NS 2000000000ull      /* a stub that ignores a kick this long is wedged */
#define VSYSCALL_PAGE 0xffffffffff600000ull /* the one mapping a stub cannot remove */
#define APPROVE_TIMEOUT_NS 2000000000ull   /* a stub that does not ask for its next mapping this long lied */
#define APPROVE_SLICE_MS 10                /* how often that wait looks at the stub's state */

struct nstub {
    uint64_t boot_tsc0, boot_t0;      /* when its start was asked for (TSC calibration) */
    pid_t pid;
    int pidfd;
    int ctl_fd;                       /* only until the stub is started */
    struct nspawn sp;                 /* who forked it and reaps it (spawn.c) */
    int kick_signal;
    volatile struct nstub_ctl *ctl;   /* the control area (NSTUB_CTL_SIZE bytes, shared) */
    uint32_t death_expected;          /* ctl->death while the stub lives, 0 = not registered */
    bool death_seen;                  /* ctl->death said FUTEX_OWNER_DIED once */

    uint32_t kicks;                   /* atomic: nstub_kick() calls */
    uint32_t kicks_seen;              /* kicks already reported */
    uint32_t pokes;                   /* atomic: poke signals sent (watchdog) */
    int in_guest;                     /* atomic: inside nstub_run */

    bool stopped;                     /* at a trap: ctl may be written */
    int stat_fd;                      /* /proc/<pid>/stat, opened by the first nstub_confirm_stopped */
    bool dead;
    char dead_msg[128];

    uint32_t spin_ns;
    size_t fpu_size;                  /* XSAVE image size, from the boot trap */
    uint64_t fpu_off;                 /* validated image offset at the last trap, 0 = unusable */

    uint32_t nr_cmds;                 /* queued mapping changes (copied to ctl on resume) */
    struct nstub_cmd cmds[NSTUB_MAX_CMDS];
    uint32_t nr_sent;                 /* the commands of the current resume, to approve */
    struct nstub_cmd sent[NSTUB_MAX_CMDS];
    int notif_fd;                     /* seccomp listener of the stub's mmaps (approval), or -1 */
    int sock, peer;                   /* approval socket (ours, the stub's) until the boot trap, or -1 */
    uint64_t approved;                /* mmaps let through (statistics) */
    bool escape;                      /* a guest's own mmap was refused: report it as its SYSCALL */
    uint64_t escape_nr;

    struct nstub_fast_cfg fast;       /* what the next run publishes (stub/fast.c) */
    struct nstub_fast_result fast_res;/* what the fast path did in the last run */
    uint64_t pvcs_off;                /* memfd offset mapped (or queued) at NSTUB_PVCS_ADDR, or UINT64_MAX */
    bool has_snap;                    /* holds a snapshot memfd as NSTUB_FD_SNAP */
    bool has_link;                    /* holds the VM's link memfd as NSTUB_FD_LINK */
    uint64_t link_off;                /* its area mapped (or queued) at NSTUB_LINK_ADDR, or UINT64_MAX */
    uint64_t irq_posted[4];           /* vectors posted to ctl->fast.irq since the last take (caller's lock) */
};

_Static_assert(NSTUB_RFLAGS_ALLOWED == 0x254fd7ull, "pvm-abi.md §1.1 allowed RFLAGS (machine.h)");
_Static_assert(sizeof(((struct nstub_fast_cfg *)0)->win) / sizeof(((struct nstub_fast_cfg *)0)->win[0]) ==
               NSTUB_FAST_WINDOWS, "fast-path windows");
_Static_assert(sizeof(struct nstub_cpuid) == sizeof(struct pvm_cpuid_entry), "CPUID entry layout");

/* ---- small helpers --------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static bool canonical(uint64_t a)
{
    return (uint64_t)((int64_t)(a << 16) >> 16) == a;
}

static bool fault_signal(int sig)
{
    return sig == SIGSYS || sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGTRAP || sig == SIGFPE;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static long futex_op(volatile uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

/* TSC ticks per microsecond, measured across stub start-ups; the stub spins on the TSC. */
static uint64_t tsc_per_us = 3000;

/* ---- waiting for the stub -------------------------------------------------- */

static bool stub_exited(struct nstub *s)
{
    struct pollfd p = { .fd = s->pidfd, .events = POLLIN };
    return poll(&p, 1, 0) > 0;
}

/* Mark the stub dead with a reason; it is killed so that its state is final. */
static void make_dead(struct nstub *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void make_dead(struct nstub *s, const char *fmt, ...)
{
    if (s->dead)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->dead_msg, sizeof(s->dead_msg), fmt, ap);
    va_end(ap);
    s->dead = true;
    s->stopped = false;
    syscall(SYS_pidfd_send_signal, s->pidfd, SIGKILL, NULL, 0);
}

/* Why did the stub go away?  Does not reap (nstub_destroy does). */
static void explain_death(struct nstub *s)
{
    int code = 0, status = 0;
    bool known = nspawn_exit_status(&s->sp, s->pidfd, &code, &status);
    if (known && (code == CLD_KILLED || code == CLD_DUMPED)) {
        make_dead(s, "stub process %d was killed by signal %d (%s)", (int)s->pid, status, strsignal(status));
    } else if (known && code == CLD_EXITED) {
        /* A start-up failure leaves its reason in the control page: print only what is printable. */
        char why[sizeof(s->ctl->fail_msg)];
        size_t i = 0;
        for (; i < sizeof(why) - 1; i++) {
            char ch = s->ctl->fail_msg[i];
            if (!ch)
                break;
            why[i] = (ch >= 0x20 && ch < 0x7f) ? ch : '?';
        }
        why[i] = 0;
        make_dead(s, "stub process %d exited with status %d%s%s", (int)s->pid, status, i ? ": " : "", why);
    } else {
        make_dead(s, "stub process %d is gone", (int)s->pid);
    }
}

/* ---- mapping approval (stub_abi.h, stub_main.c install_map_approval) ------------ */

/* The kernel's struct seccomp_notif may outgrow ours: receive into room for both. */
union notif_buf {
    struct seccomp_notif n;
    char room[512];
};

static bool notif_size_ok(void)
{
    static int ok = -1;
    if (ok < 0) {
        struct seccomp_notif_sizes sz;
        /* RECV writes the kernel's size into our room; SEND reads the kernel's size from our struct. */
        ok = syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sz) == 0 && sz.seccomp_notif <= sizeof(union notif_buf) &&
             sz.seccomp_notif_resp <= sizeof(struct seccomp_notif_resp);
    }
    return ok;
}

/* Answer a request: @error 0 lets the mmap run as asked, else it fails with -@error. */
static void notif_answer(struct nstub *s, uint64_t id, int error)
{
    struct seccomp_notif_resp r = { .id = id, .error = error ? -error : 0,
                                    .flags = error ? 0 : SECCOMP_USER_NOTIF_FLAG_CONTINUE };
    /* ENOENT: the caller went away (killed, or a signal withdrew the request). */
    ioctl(s->notif_fd, SECCOMP_IOCTL_NOTIF_SEND, &r);
}

/* Take one pending request without waiting: 1 taken, 0 none. */
static int notif_take(struct nstub *s, union notif_buf *b)
{
    struct pollfd p = { .fd = s->notif_fd, .events = POLLIN };
    if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN))
        return 0;
    memset(b, 0, sizeof(*b));
    return ioctl(s->notif_fd, SECCOMP_IOCTL_NOTIF_RECV, &b->n) == 0;
}

/*
 * Wait for the stub's next mapping request until @deadline: 1 received,
 * 0 the stub reported a trap instead, -1 the stub is dead (marked).
 */
static int notif_wait(struct nstub *s, union notif_buf *b, uint64_t deadline)
{
    /* The request follows within microseconds: spin (yielding) first, as wait_trapped() does. */
    uint64_t spin_end = now_ns() + s->spin_ns;
    for (;;) {
        struct pollfd p[2] = { { .fd = s->notif_fd, .events = POLLIN }, { .fd = s->pidfd, .events = POLLIN } };
        bool spin = now_ns() < spin_end;
        int r = poll(p, 2, spin ? 0 : APPROVE_SLICE_MS);
        if (r == 0 && spin) {
            sched_yield();
            continue;
        }
        if (r > 0 && (p[0].revents & POLLIN)) {
            memset(b, 0, sizeof(*b));
            if (ioctl(s->notif_fd, SECCOMP_IOCTL_NOTIF_RECV, &b->n) == 0)
                return 1;
            if (errno != ENOENT && errno != EINTR) {
                make_dead(s, "stub process %d: receiving its mapping request: %s", (int)s->pid, strerror(errno));
                return -1;
            }
            continue;
        }
        if (r > 0 && ((p[1].revents & POLLIN) || (p[0].revents & (POLLHUP | POLLERR)))) {
            explain_death(s);
            return -1;
        }
        if (__atomic_load_n(&s->ctl->state, __ATOMIC_ACQUIRE) == NSTUB_ST_TRAPPED)
            return 0;
        if (now_ns() > deadline) {
            make_dead(s, "stub process %d did not apply its mapping commands (a forged report?)", (int)s->pid);
            return -1;
        }
    }
}

/* The six arguments of the syscall that applies @c (stub_main.c apply_cmds). */
static void cmd_args(const struct nstub_cmd *c, uint64_t a[6])
{
    memset(a, 0, 6 * sizeof(a[0]));
    if (c->op == NSTUB_CMD_UNMAP) {   /* munmap(gva, len) */
        a[0] = c->gva, a[1] = c->len;
    } else if (c->op == NSTUB_CMD_PVCS) {
        a[0] = NSTUB_PVCS_ADDR, a[1] = 4096, a[2] = PROT_READ | PROT_WRITE, a[3] = MAP_SHARED | MAP_FIXED;
        a[4] = NSTUB_FD_RAM, a[5] = c->off;
    } else if (c->op == NSTUB_CMD_LINK) {
        a[0] = NSTUB_LINK_ADDR, a[1] = NSTUB_LINK_SIZE, a[2] = PROT_READ | PROT_WRITE, a[3] = MAP_SHARED | MAP_FIXED;
        a[4] = NSTUB_FD_LINK, a[5] = c->off;
    } else {
        a[0] = c->gva, a[1] = c->len, a[2] = c->prot, a[3] = MAP_SHARED | MAP_FIXED, a[4] = c->fd, a[5] = c->off;
    }
}

/*
 * After a resume with commands: let each mmap and munmap of them through, in
 * order, and nothing else.  The stub applies them before it runs guest code;
 * a request that is not the next command can only come from guest code
 * running on a forged report: the stub is killed.  An unmap counts as done
 * only once asked for: a forged sleeper that a resume wakes would return to
 * guest code without it (docs/design.md "Stops between address spaces").
 * Returns 0, or -1 with the stub dead.
 */
static int approve_cmds(struct nstub *s)
{
    if (s->notif_fd < 0)
        return 0;
    for (uint32_t i = 0; i < s->nr_sent; i++) {
        const struct nstub_cmd *c = &s->sent[i];
        const bool unmap = c->op == NSTUB_CMD_UNMAP;
        uint64_t want[6];
        cmd_args(c, want);
        union notif_buf b;
        /* Per request: a batch may hold 256 mappings, each a round trip on a loaded machine. */
        int r = notif_wait(s, &b, now_ns() + APPROVE_TIMEOUT_NS);
        if (r < 0)
            return -1;
        if (r == 0) {
            /* Reported without asking: only a failed command may (cmds_failed() reads which). */
            if (s->ctl->cmd_err == 0) {
                make_dead(s, "stub process %d reported a trap before applying its mapping commands", (int)s->pid);
                return -1;
            }
            return 0;
        }
        const struct seccomp_data *d = &b.n.data;
        if (d->nr != (unmap ? __NR_munmap : __NR_mmap) || d->arch != AUDIT_ARCH_X86_64 ||
            memcmp(d->args, want, sizeof(want))) {
            notif_answer(s, b.n.id, EPERM);
            make_dead(s, "stub process %d asked to map or unmap what the library did not queue (a hostile guest)",
                      (int)s->pid);
            return -1;
        }
        notif_answer(s, b.n.id, 0);
        s->approved += !unmap;
    }
    return 0;
}

/*
 * While the guest runs: an mmap request now is the guest's own (it jumped to
 * the stub's SYSCALL).  Refuse it and make the stub report at once, so that
 * its kernel sees the attempt as the SYSCALL it was (nstub_run).
 */
static void refuse_escape(struct nstub *s)
{
    union notif_buf b;
    if (s->notif_fd < 0 || !notif_take(s, &b))
        return;
    s->escape = true;
    s->escape_nr = b.n.data.nr;
    __atomic_store_n(&s->ctl->fast.attention, 1, __ATOMIC_SEQ_CST);   /* not a poke for the fast path */
    /*
     * The signal first: it ends the wait (EINTR, the request withdrawn) and is
     * taken right at the SYSCALL's end.  Sent after an answer, the guest could
     * run on first.  The answer covers a guest that blocked the signal.
     */
    syscall(SYS_pidfd_send_signal, s->pidfd, s->kick_signal, NULL, 0);
    notif_answer(s, b.n.id, EPERM);
}

static void pool_refill_wanted(void);
static bool pool_refill_pending(void);
static void stub_free(struct nstub *s);

static int futex_waitv_ok = 1;

/* Sleep until ctl->state may have changed from @st, the stub may have died, or @deadline. */
static void sleep_on_state(struct nstub *s, uint32_t st, uint64_t deadline)
{
    volatile struct nstub_ctl *c = s->ctl;
    uint32_t death = __atomic_load_n(&c->death, __ATOMIC_SEQ_CST);
    struct timespec ts = { .tv_sec = (time_t)(deadline / 1000000000ull), .tv_nsec = (long)(deadline % 1000000000ull) };

    /* The robust-futex word wakes us when the stub dies; skip it if the guest scribbled on it. */
    if (__atomic_load_n(&futex_waitv_ok, __ATOMIC_RELAXED) && s->death_expected && death == s->death_expected) {
        struct {
            uint64_t val, uaddr;
            uint32_t flags, reserved;
        } w[2] = {
            { st, (uint64_t)(uintptr_t)&c->state, FUTEX2_SIZE_U32, 0 },
            { death, (uint64_t)(uintptr_t)&c->death, FUTEX2_SIZE_U32, 0 },
        };
        if (syscall(SYS_futex_waitv, w, 2u, 0u, &ts, CLOCK_MONOTONIC) >= 0 || errno == EAGAIN ||
            errno == ETIMEDOUT || errno == EINTR)
            return;
        /* No futex_waitv (before Linux 5.16): one word, and death is seen by the periodic check. */
        __atomic_store_n(&futex_waitv_ok, 0, __ATOMIC_RELAXED);
    }
    uint64_t now = now_ns();
    if (now >= deadline)
        return;
    uint64_t left = deadline - now;
    struct timespec rel = { .tv_sec = (time_t)(left / 1000000000ull), .tv_nsec = (long)(left % 1000000000ull) };
    futex_op(&c->state, FUTEX_WAIT, st, &rel);
}

/*
 * Wait for ctl->state == TRAPPED: spin for spin_ns, then sleep.  Returns 0,
 * or -1 with the stub marked dead.  @boot: the start-up handshake (bounded).
 */
static int wait_trapped(struct nstub *s, bool boot)
{
    volatile struct nstub_ctl *c = s->ctl;
    uint64_t t0 = now_ns(), next_check = t0 + CHECK_PERIOD_NS, kick_since = 0, poke_since = 0;
    uint32_t st, poke_seen = 0;

    /* At start-up the stub is known to be busy for ~100 us: spin (yielding) through it. */
    uint64_t spin = boot ? BOOT_SPIN_NS : s->spin_ns;
    while ((st = __atomic_load_n(&c->state, __ATOMIC_ACQUIRE)) != NSTUB_ST_TRAPPED) {
        if (now_ns() - t0 >= spin)
            goto sleep;
        /* sched_yield, not PAUSE: if the stub shares our CPU it must run to trap (see stub_main.c). */
        sched_yield();
    }
    return 0;

sleep:;
    /*
     * A guest that has run for REFILL_WAIT_NS is computing: a good time for
     * the pool's requests (the zygote's fork takes ~1 ms of CPU; during a
     * short call it would take the CPUs the call needs: docs/benchmarks.md).
     */
    uint64_t refill_at = !boot && pool_refill_pending() ? t0 + REFILL_WAIT_NS : UINT64_MAX;
    for (;;) {
        __atomic_store_n(&c->lib_sleeping, 1, __ATOMIC_SEQ_CST);
        st = __atomic_load_n(&c->state, __ATOMIC_SEQ_CST);
        if (st == NSTUB_ST_TRAPPED)
            break;
        uint64_t now = now_ns();
        if (now >= refill_at) {
            refill_at = UINT64_MAX;
            pool_refill_wanted();
        }
        if (now >= next_check) {
            next_check = now + CHECK_PERIOD_NS;
            if (stub_exited(s)) {
                explain_death(s);
                return -1;
            }
            if (!boot)
                refuse_escape(s);
            if (boot && now - t0 > BOOT_TIMEOUT_NS) {
                make_dead(s, "stub process %d did not start within %llu ms", (int)s->pid,
                          BOOT_TIMEOUT_NS / 1000000ull);
                return -1;
            }
            /* A guest can block the kick signal with a forged sigreturn: that is a wedge. */
            if (__atomic_load_n(&s->kicks, __ATOMIC_SEQ_CST) != s->kicks_seen) {
                if (!kick_since)
                    kick_since = now;
                else if (now - kick_since > KICK_TIMEOUT_NS) {
                    make_dead(s, "stub process %d does not respond to kicks", (int)s->pid);
                    return -1;
                }
            }
            /* Likewise the same poke signal still unconsumed (pending flag set, none sent since). */
            uint32_t pk = __atomic_load_n(&s->pokes, __ATOMIC_SEQ_CST);
            if (!__atomic_load_n(&c->fast.poke_pending, __ATOMIC_SEQ_CST) || pk != poke_seen || !poke_since) {
                poke_seen = pk;
                poke_since = __atomic_load_n(&c->fast.poke_pending, __ATOMIC_SEQ_CST) ? now : 0;
            } else if (now - poke_since > KICK_TIMEOUT_NS) {
                make_dead(s, "stub process %d does not respond to kicks", (int)s->pid);
                return -1;
            }
        }
        uint32_t death = __atomic_load_n(&c->death, __ATOMIC_SEQ_CST);
        if (s->death_expected && death != s->death_expected && (death & FUTEX_OWNER_DIED) && !s->death_seen) {
            /* The kernel marks the word while the stub exits, a moment before the pidfd says so.
             * Wait for that once; a guest that forged the bit costs us this wait only once. */
            s->death_seen = true;
            struct pollfd p = { .fd = s->pidfd, .events = POLLIN };
            if (poll(&p, 1, 1000) > 0) {
                explain_death(s);
                return -1;
            }
        }
        sleep_on_state(s, st, refill_at < next_check ? refill_at : next_check);
    }
    __atomic_store_n(&c->lib_sleeping, 0, __ATOMIC_RELAXED);
    return 0;
}

static void publish(struct nstub *s, uint32_t st)
{
    volatile struct nstub_ctl *c = s->ctl;
    c->spin_tsc = (uint64_t)s->spin_ns * __atomic_load_n(&tsc_per_us, __ATOMIC_RELAXED) / 1000u;
    __atomic_store_n(&c->state, st, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->stub_sleeping, __ATOMIC_SEQ_CST))
        futex_op(&c->state, FUTEX_WAKE, 1, NULL);
}

/* Copy the queued commands into the control page. */
static void flush_cmds(struct nstub *s)
{
    volatile struct nstub_ctl *c = s->ctl;
    for (uint32_t i = 0; i < s->nr_cmds; i++) {
        c->cmds[i].gva = s->cmds[i].gva;
        c->cmds[i].len = s->cmds[i].len;
        c->cmds[i].off = s->cmds[i].off;
        c->cmds[i].op = s->cmds[i].op;
        c->cmds[i].prot = s->cmds[i].prot;
        c->cmds[i].fd = s->cmds[i].fd;
        s->sent[i] = s->cmds[i];
    }
    c->nr_cmds = s->nr_cmds;
    s->nr_sent = s->nr_cmds;
    s->nr_cmds = 0;
}

/* After a trap: did the stub fail to apply the commands? */
static bool cmds_failed(struct nstub *s)
{
    int32_t e = s->ctl->cmd_err;
    uint32_t idx = s->ctl->cmd_err_idx;
    if (e == 0)
        return false;
    make_dead(s, "stub process %d could not apply mapping command %u: %s", (int)s->pid, idx,
              e < 0 && e > -4096 ? strerror(-e) : "bad report");
    return true;
}

/* Validate and remember where the XSAVE image of the current trap is. */
static void note_fpu(struct nstub *s)
{
    uint64_t off = s->ctl->fpstate_off;
    uint64_t size = s->ctl->fpstate_size;
    s->fpu_off = 0;
    if (size != s->fpu_size || off < NSTUB_ALTSTACK_OFF || off > NSTUB_CTL_SIZE || size > NSTUB_CTL_SIZE - off ||
        (off & 63))
        return;
    s->fpu_off = off;
}

/* ---- create / destroy ------------------------------------------------------ */

/* The stub's listener fd from @sock (its one message, SCM_RIGHTS), checked to be one; or -1. */
static int recv_listener(int sock)
{
    char byte;
    struct iovec iov = { &byte, 1 };
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } cm;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof(cm.buf) };
    if (recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) != 1 || (mh.msg_flags & MSG_CTRUNC))
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof(fd));
    char path[32], link[64] = "";
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof(link) - 1);
    if (n > 0)
        link[n] = 0;
    if (n > 0 && strcmp(link, "anon_inode:seccomp notify") != 0) {   /* no /proc: trust our own stub */
        close(fd);
        return -1;
    }
    return fd;
}

/* A stub's library half before its process exists: control area and approval socket. */
static struct nstub *stub_alloc(int kick_signal, bool trust_maps, char *err, size_t errlen, int *rc)
{
    struct nstub *s = calloc(1, sizeof(*s));
    if (!s) {
        *rc = PVM_ENOMEM;
        return set_err(err, errlen, "nstub_create: out of memory"), NULL;
    }
    s->pid = -1;
    s->pidfd = -1;
    s->stat_fd = -1;
    s->kick_signal = kick_signal;
    s->spin_ns = DEFAULT_SPIN_NS;
    s->ctl = MAP_FAILED;
    s->pvcs_off = UINT64_MAX;
    s->link_off = UINT64_MAX;
    s->notif_fd = -1;
    s->sock = s->peer = -1;

    int sv[2];
    if (!trust_maps && (!notif_size_ok() || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)) {
        set_err(err, errlen, "nstub_create: mapping approval needs seccomp user notification (Linux 5.5): %s",
                strerror(errno));
        *rc = PVM_ENOTSUP;
        goto fail;
    }
    if (!trust_maps) {
        s->sock = sv[0];
        s->peer = sv[1];
    }
    s->ctl_fd = memfd_create("pvm-stub-ctl", MFD_CLOEXEC);
    if (s->ctl_fd < 0 || ftruncate(s->ctl_fd, (off_t)NSTUB_CTL_SIZE) < 0) {
        set_err(err, errlen, "nstub_create: control memfd: %s", strerror(errno));
        *rc = PVM_ENOMEM;
        goto fail;
    }
    void *m = mmap(NULL, NSTUB_CTL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, s->ctl_fd, 0);
    if (m == MAP_FAILED) {
        set_err(err, errlen, "nstub_create: mapping the control area: %s", strerror(errno));
        *rc = PVM_ENOMEM;
        goto fail;
    }
    s->ctl = m;
    s->ctl->magic = NSTUB_ABI_MAGIC;
    s->ctl->version = NSTUB_ABI_VERSION;
    s->ctl->kick_signal = kick_signal;
    s->ctl->approve_maps = !trust_maps;
    s->ctl->state = NSTUB_ST_BOOT;
    s->ctl->spin_tsc = (uint64_t)s->spin_ns * tsc_per_us / 1000u;
    return s;

fail:
    stub_free(s);
    return NULL;
}

/* The stub process exists (pid, pidfd): its fds were sent, ours can go. */
static void stub_spawned(struct nstub *s, pid_t pid, int pidfd)
{
    s->pid = pid;
    s->pidfd = pidfd;
    s->death_expected = (uint32_t)pid | FUTEX_WAITERS;
}

static void close_spawn_fds(struct nstub *s)
{
    /* Mapped, and the stub has its own copies: no per-stub fd stays but the pidfd and listener. */
    if (s->ctl_fd >= 0)
        close(s->ctl_fd);
    if (s->peer >= 0)
        close(s->peer);
    s->ctl_fd = s->peer = -1;
}

/* Wait for the boot trap and check it; take the approval listener.  0 or a PVM_E* code. */
static int stub_boot(struct nstub *s, char *err, size_t errlen)
{
    if (wait_trapped(s, true) < 0)
        return set_err(err, errlen, "nstub_create: %s", s->dead_msg), PVM_EIO;
    uint64_t dt = now_ns() - s->boot_t0, dtsc = __rdtsc() - s->boot_tsc0;
    if (dt >= 20000)
        __atomic_store_n(&tsc_per_us, dtsc * 1000u / dt, __ATOMIC_RELAXED);

    /* The boot trap: a ud2 in the stub, with a sane signal frame. */
    if (s->ctl->signo != SIGILL || s->ctl->death != s->death_expected)
        return set_err(err, errlen, "nstub_create: unexpected start-up report (signal %d)", (int)s->ctl->signo),
               PVM_EINTERNAL;
    uint64_t fsz = s->ctl->fpstate_size;
    if (fsz < 512 || fsz > NSTUB_ALTSTACK_SIZE)
        return set_err(err, errlen, "nstub_create: unexpected XSAVE image size %llu", (unsigned long long)fsz),
               PVM_EINTERNAL;
    s->fpu_size = fsz;
    note_fpu(s);
    if (s->sock >= 0) {
        /* Sent before the filter that forbids sendmsg, so before the boot trap: no guest code has run. */
        s->notif_fd = recv_listener(s->sock);
        close(s->sock);
        s->sock = -1;
        if (s->notif_fd < 0)
            return set_err(err, errlen, "nstub_create: the stub sent no mapping-approval listener"), PVM_EINTERNAL;
        /*
         * Not SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: it wakes the stub on this
         * CPU, where this thread goes on spinning for its report, and a
         * sched_yield spin does not reliably hand the CPU over (EEVDF):
         * the first run of a VM was 40-90 us slower with it
         * (docs/benchmarks.md, eighth session).
         */
    }
    s->stopped = true;
    return 0;
}

/* ---- the pool of pre-started stubs ------------------------------------------ */

/*
 * VM creation waits for a stub to start (a zygote fork and the stub's own
 * set-up, most of a VM's creation time).  Stubs for the pool are requested
 * from a zygote without waiting and park before they have a VM; a create
 * takes one, hands it the VM's memfd and asks for a replacement, so the fork
 * happens off the create path.  Size: PVM_NATIVE_POOL (default
 * NSTUB_POOL_DEFAULT, 0 = off, at most NSTUB_POOL_MAX), read at the first
 * create.  Only stubs with the approval socket (not trust_maps) and the kick
 * signal of the first pooled create are pooled.  Each costs one parked
 * process and one fd in the library.  A forked child forgets its parent's.
 */
#define NSTUB_POOL_DEFAULT 2
#define NSTUB_POOL_MAX 16

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static struct nstub *pool[NSTUB_POOL_MAX];
static unsigned pool_n, pool_size;
static int pool_kick;
static uint64_t pool_hits;

static void pool_atfork_prepare(void)
{
    pthread_mutex_lock(&pool_lock);
}

static void pool_atfork_parent(void)
{
    pthread_mutex_unlock(&pool_lock);
}

static void pool_atfork_child(void)
{
    for (unsigned i = 0; i < pool_n; i++)
        if (pool[i]->sock >= 0)
            close(pool[i]->sock);   /* the structs stay: they are the parent's stubs */
    pool_n = 0;
    pthread_mutex_unlock(&pool_lock);
}

static void pool_init(void)
{
    const char *e = getenv("PVM_NATIVE_POOL");
    pool_size = e ? (unsigned)atoi(e) : NSTUB_POOL_DEFAULT;
    if (pool_size > NSTUB_POOL_MAX)
        pool_size = NSTUB_POOL_MAX;
    pthread_atfork(pool_atfork_prepare, pool_atfork_parent, pool_atfork_child);
}

/* Ask zygotes for stubs until the pool is full (no waiting). */
static void pool_refill(int kick_signal)
{
    pthread_mutex_lock(&pool_lock);
    if (!pool_kick)
        pool_kick = kick_signal;
    while (pool_n < pool_size && kick_signal == pool_kick) {
        int rc;
        struct nstub *s = stub_alloc(kick_signal, false, NULL, 0, &rc);
        if (!s)
            break;
        s->ctl->pooled = 1;
        struct nspawn_fds fds = { .ram = -1, .ctl = s->ctl_fd, .notify = s->peer, .link = -1, .snap = -1 };
        if (nspawn_request(&s->sp, &fds, NULL, 0) < 0) {
            stub_free(s);
            pool_size = 0;   /* no zygote: no pool */
            break;
        }
        close_spawn_fds(s);
        pool[pool_n++] = s;
    }
    pthread_mutex_unlock(&pool_lock);
}

/*
 * Not on the create path: on a busy machine the zygote that a request wakes
 * preempts the requester and forks on its CPU, which would put the fork's
 * time right back into the create.  Nor during a short run: the fork and the
 * new stub's set-up (~1 ms of CPU) would take the CPUs the guest and this
 * thread need.  A create only notes that the pool wants stubs; the request
 * goes out at the end of a stub's destroy, or once this thread has waited
 * REFILL_WAIT_NS for a guest that computes (wait_trapped).
 */
static int pool_wanted;   /* atomic: the kick signal of the stubs to request, 0 = none */

static void pool_want(int kick_signal)
{
    __atomic_store_n(&pool_wanted, kick_signal, __ATOMIC_RELAXED);
}

static void pool_refill_wanted(void)
{
    int kick = __atomic_exchange_n(&pool_wanted, 0, __ATOMIC_RELAXED);
    if (kick)
        pool_refill(kick);
}

static bool pool_refill_pending(void)
{
    return __atomic_load_n(&pool_wanted, __ATOMIC_RELAXED) != 0;
}

static struct nstub *pool_take(int kick_signal)
{
    struct nstub *s = NULL;
    pthread_mutex_lock(&pool_lock);
    if (pool_n && kick_signal == pool_kick) {
        s = pool[0];
        memmove(&pool[0], &pool[1], --pool_n * sizeof(pool[0]));
    }
    pthread_mutex_unlock(&pool_lock);
    return s;
}

/* A guest can reach every fd its stub holds: a snapshot memfd must refuse writable mappings. */
static bool snap_ok(const struct nstub_config *cfg)
{
    int seals = cfg->snap_memfd > 0 ? fcntl(cfg->snap_memfd, F_GET_SEALS) : 0;
    return cfg->snap_memfd <= 0 || (seals >= 0 && (seals & F_SEAL_WRITE));
}

/* A pooled stub becomes @memfd's and @link's (and @snap's, if > 0): collect its process and send the fds. */
static int pool_send(struct nstub *s, int memfd, int link, int snap, char *err, size_t errlen)
{
    s->boot_tsc0 = __rdtsc();
    s->boot_t0 = now_ns();
    pid_t pid;
    int pidfd;
    char why[160] = "";
    int rc = nspawn_collect(&s->sp, &pid, &pidfd, why, sizeof(why));
    if (rc < 0)
        return set_err(err, errlen, "nstub_create: pooled stub: %s", why), rc;
    stub_spawned(s, pid, pidfd);
    s->has_snap = snap > 0;
    s->has_link = true;
    /* In this order they land on NSTUB_FD_RAM, _LINK and _SNAP (stub_main.c receive_ram). */
    const int fds[3] = { memfd, link, snap };
    if (nspawn_send_fds(s->sock, "M", 1, fds, snap > 0 ? 3 : 2) != 1)
        return set_err(err, errlen, "nstub_create: handing the memfd to a pooled stub: %s", strerror(errno)), PVM_EIO;
    /*
     * The stub waits on its state word, not in recvmsg: a socket wakes its
     * reader synchronously, onto this CPU, where it would wait for the
     * application to stop; a futex wake lets it run at once on an idle CPU.
     */
    __atomic_store_n(&s->ctl->state, NSTUB_ST_GO, __ATOMIC_SEQ_CST);
    futex_op(&s->ctl->state, FUTEX_WAKE, 1, NULL);
    return 0;
}

/* ... and then wait for its boot trap. */
static int pool_finish(struct nstub *s, int memfd, int link, int snap, char *err, size_t errlen)
{
    int rc = pool_send(s, memfd, link, snap, err, errlen);
    return rc < 0 ? rc : stub_boot(s, err, errlen);
}

struct nstub *nstub_prestart(const struct nstub_config *cfg)
{
    if (!cfg || cfg->trust_maps || cfg->memfd < 0 || cfg->link_memfd <= 0 || !snap_ok(cfg))
        return NULL;
    pthread_once(&pool_once, pool_init);
    struct nstub *s = pool_take(cfg->kick_signal);
    if (!s)
        return NULL;
    pool_want(cfg->kick_signal);
    char err[200];
    s->has_snap = cfg->snap_memfd > 0;
    if (pool_send(s, cfg->memfd, cfg->link_memfd, cfg->snap_memfd, err, sizeof(err)) < 0) {
        pvm__log(PVM_LOG_DEBUG, "%s; no early stub", err);
        stub_free(s);
        return NULL;
    }
    return s;
}

int nstub_adopt(struct nstub *s, char *err, size_t errlen)
{
    int rc = stub_boot(s, err, errlen);
    if (rc == 0)
        __atomic_add_fetch(&pool_hits, 1, __ATOMIC_RELAXED);
    return rc;
}

bool nstub_maps_snapshot(const struct nstub *s)
{
    return s && s->has_snap;
}

uint64_t nstub_pool_hits(void)
{
    return __atomic_load_n(&pool_hits, __ATOMIC_RELAXED);
}

int nstub_create(struct nstub **out, const struct nstub_config *cfg, char *err, size_t errlen)
{
    if (!out || !cfg)
        return set_err(err, errlen, "nstub_create: NULL argument"), PVM_EINVAL;
    *out = NULL;
    if (cfg->memfd < 0 || fcntl(cfg->memfd, F_GETFD) < 0)
        return set_err(err, errlen, "nstub_create: bad guest memfd %d", cfg->memfd), PVM_EBADF;
    if (cfg->kick_signal < 1 || cfg->kick_signal >= NSIG || cfg->kick_signal == SIGKILL ||
        cfg->kick_signal == SIGSTOP || fault_signal(cfg->kick_signal))
        return set_err(err, errlen, "nstub_create: kick signal %d cannot be used", cfg->kick_signal), PVM_EINVAL;

    if (!snap_ok(cfg))
        return set_err(err, errlen, "nstub_create: snapshot memfd %d is not sealed against writes", cfg->snap_memfd),
               PVM_EBADF;

    pthread_once(&pool_once, pool_init);
    struct nstub *s = cfg->trust_maps || cfg->link_memfd <= 0 ? NULL : pool_take(cfg->kick_signal);
    if (s) {
        int rc = pool_finish(s, cfg->memfd, cfg->link_memfd, cfg->snap_memfd, err, errlen);
        pool_want(cfg->kick_signal);
        if (rc == 0) {
            __atomic_add_fetch(&pool_hits, 1, __ATOMIC_RELAXED);
            *out = s;
            return 0;
        }
        /* A pooled stub that failed (killed meanwhile, say): start one the usual way. */
        pvm__log(PVM_LOG_DEBUG, "%s; starting a stub directly", err ? err : "pooled stub failed");
        stub_free(s);
    }

    int rc;
    if (!(s = stub_alloc(cfg->kick_signal, cfg->trust_maps, err, errlen, &rc)))
        return rc;
    s->has_snap = cfg->snap_memfd > 0;
    s->has_link = cfg->link_memfd > 0;
    s->boot_tsc0 = __rdtsc();
    s->boot_t0 = now_ns();
    pid_t pid;
    int pidfd;
    char why[160] = "";
    struct nspawn_fds fds = { .ram = cfg->memfd, .ctl = s->ctl_fd, .notify = s->peer,
                              .link = cfg->link_memfd > 0 ? cfg->link_memfd : -1,
                              .snap = cfg->snap_memfd > 0 ? cfg->snap_memfd : -1 };
    rc = nspawn_stub(&s->sp, &fds, &pid, &pidfd, why, sizeof(why));
    close_spawn_fds(s);
    if (rc < 0) {
        set_err(err, errlen, "nstub_create: %s", why);
        goto fail;
    }
    stub_spawned(s, pid, pidfd);
    if ((rc = stub_boot(s, err, errlen)) < 0)
        goto fail;
    if (!cfg->trust_maps)
        pool_want(cfg->kick_signal);   /* the next create is a pooled one */
    *out = s;
    return 0;

fail:
    stub_free(s);
    return rc;
}

/* Kill, reap and free (the pool's own error paths too: no pool work here, they hold pool_lock). */
static void stub_free(struct nstub *s)
{
    if (!s)
        return;
    if (s->pidfd >= 0) {
        syscall(SYS_pidfd_send_signal, s->pidfd, SIGKILL, NULL, 0);
        nspawn_reap(&s->sp, s->pidfd);   /* no zombie left behind, whoever the parent is */
        close(s->pidfd);
    }
    if (s->ctl != MAP_FAILED)
        munmap((void *)s->ctl, NSTUB_CTL_SIZE);
    if (s->ctl_fd >= 0)
        close(s->ctl_fd);
    if (s->stat_fd >= 0)
        close(s->stat_fd);
    if (s->notif_fd >= 0)
        close(s->notif_fd);
    if (s->sock >= 0)
        close(s->sock);
    if (s->peer >= 0)
        close(s->peer);
    free(s);
}

void nstub_destroy(struct nstub *s)
{
    if (!s)
        return;
    stub_free(s);
    pool_refill_wanted();   /* after the kill and unmaps: the woken zygote would preempt them */
}

/* ---- mapping commands -------------------------------------------------- */

static bool guest_range_ok(uint64_t gva, uint64_t len)
{
    return len && !(gva & 4095) && !(len & 4095) && gva >= NSTUB_GUEST_LO && gva < NSTUB_GUEST_HI &&
           len <= NSTUB_GUEST_HI - gva;
}

static int queue(struct nstub *s, uint32_t op, uint64_t gva, uint64_t len, uint64_t off, uint32_t prot, uint32_t fd)
{
    if (s->nr_cmds) {
        /* Shadow MMUs install page by page: merge runs that continue the last command. */
        struct nstub_cmd *l = &s->cmds[s->nr_cmds - 1];
        if (l->op == op && l->prot == prot && l->fd == fd && l->gva + l->len == gva &&
            (op == NSTUB_CMD_UNMAP || l->off + l->len == off)) {
            l->len += len;
            return 0;
        }
    }
    if (s->nr_cmds == NSTUB_MAX_CMDS) {
        int rc = nstub_sync(s);
        if (rc < 0)
            return rc;
    }
    s->cmds[s->nr_cmds++] = (struct nstub_cmd){ .gva = gva, .len = len, .off = off, .op = op, .prot = prot, .fd = fd };
    return 0;
}

int nstub_map_fd(struct nstub *s, unsigned fd, uint64_t gva, uint64_t len, uint64_t off, int prot)
{
    if (!s || !guest_range_ok(gva, len) || (off & 4095) || off > (uint64_t)INT64_MAX - len ||
        (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) || (fd != NSTUB_FD_RAM && fd != NSTUB_FD_SNAP) ||
        (fd == NSTUB_FD_SNAP && (!s->has_snap || (prot & PROT_WRITE))))
        return PVM_EINVAL;
    if (s->dead)
        return 0;
    return queue(s, NSTUB_CMD_MAP, gva, len, off, (uint32_t)prot, fd);
}

int nstub_map(struct nstub *s, uint64_t gva, uint64_t len, uint64_t off, int prot)
{
    return nstub_map_fd(s, NSTUB_FD_RAM, gva, len, off, prot);
}

int nstub_unmap(struct nstub *s, uint64_t gva, uint64_t len)
{
    if (!s || !guest_range_ok(gva, len))
        return PVM_EINVAL;
    if (s->dead)
        return 0;
    return queue(s, NSTUB_CMD_UNMAP, gva, len, 0, 0, 0);
}

int nstub_unmap_all(struct nstub *s)
{
    if (!s)
        return PVM_EINVAL;
    s->nr_cmds = 0;   /* everything queued is superseded */
    s->pvcs_off = UINT64_MAX;   /* a queued PVCS mapping too: map it again */
    s->link_off = UINT64_MAX;
    if (s->dead)
        return 0;
    return queue(s, NSTUB_CMD_UNMAP, NSTUB_GUEST_LO, NSTUB_GUEST_HI - NSTUB_GUEST_LO, 0, 0, 0);
}

/* Queue the mapping of one of the stub's fixed areas (@op at @gva) from @off; *at remembers it. */
static int queue_fixed(struct nstub *s, uint32_t op, uint64_t gva, uint64_t len, uint64_t off, uint64_t *at)
{
    if (!s || (off & 4095) || off > (uint64_t)INT64_MAX - len)
        return PVM_EINVAL;
    if (s->dead || off == *at)
        return 0;
    if (s->nr_cmds == NSTUB_MAX_CMDS) {
        int rc = nstub_sync(s);
        if (rc < 0)
            return rc;
    }
    s->cmds[s->nr_cmds++] = (struct nstub_cmd){ .gva = gva, .len = len, .off = off, .op = op };
    *at = off;
    return 0;
}

int nstub_map_pvcs(struct nstub *s, uint64_t off)
{
    return s ? queue_fixed(s, NSTUB_CMD_PVCS, NSTUB_PVCS_ADDR, 4096, off, &s->pvcs_off) : PVM_EINVAL;
}

int nstub_map_link(struct nstub *s, uint64_t off)
{
    if (s && !s->has_link)
        return PVM_ENOTSUP;
    return s ? queue_fixed(s, NSTUB_CMD_LINK, NSTUB_LINK_ADDR, NSTUB_LINK_SIZE, off, &s->link_off) : PVM_EINVAL;
}

int nstub_sync(struct nstub *s)
{
    if (!s)
        return PVM_EINVAL;
    if (s->dead || !s->nr_cmds)
        return 0;
    if (!s->stopped)
        return PVM_ESTATE;
    flush_cmds(s);
    s->ctl->cmd_err = 0;
    s->stopped = false;
    publish(s, NSTUB_ST_SYNC);
    if (approve_cmds(s) < 0 || wait_trapped(s, false) < 0)
        return 0;   /* the next nstub_run reports DIED */
    s->stopped = true;
    int32_t e = s->ctl->cmd_err;
    if (e) {
        s->ctl->cmd_err = 0;
        return e == -ENOMEM ? PVM_ENOMEM : PVM_EINVAL;
    }
    return 0;
}

int nstub_sync_unmaps(struct nstub *s, char *err, size_t errlen)
{
    if (!s)
        return 0;
    bool any = false;
    for (uint32_t i = 0; i < s->nr_cmds && !any; i++)
        any = s->cmds[i].op == NSTUB_CMD_UNMAP;
    if (!any)
        return 0;   /* a dead stub without unmaps queued reports DIED when it runs */
    int rc = s->dead ? 0 : nstub_sync(s);
    if (s->dead)
        return set_err(err, errlen, "%s", s->dead_msg), -1;
    if (rc < 0)
        return set_err(err, errlen, "stub process %d: applying its unmaps: %s", (int)s->pid, pvm_strerror(rc)), -1;
    return 1;
}

/* ---- running ------------------------------------------------------------- */

void nstub_set_spin(struct nstub *s, uint32_t spin_ns)
{
    if (s)
        s->spin_ns = spin_ns;
}

static bool take_kick(struct nstub *s)
{
    uint32_t k = __atomic_load_n(&s->kicks, __ATOMIC_SEQ_CST);
    if (k == s->kicks_seen)
        return false;
    s->kicks_seen = k;
    return true;
}

static void read_regs(struct nstub *s, struct nstub_regs *r)
{
    volatile struct nstub_abi_regs *a = &s->ctl->regs;
    for (int i = 0; i < 16; i++)
        r->gpr[i] = a->gpr[i];
    r->rip = a->rip;
    r->rflags = a->rflags;
    r->fs_base = a->fs_base;
    r->gs_base = a->gs_base;
    r->cs = a->cs;
    r->ss = a->ss;
}

static void write_regs(struct nstub *s, const struct nstub_regs *r)
{
    volatile struct nstub_abi_regs *a = &s->ctl->regs;
    for (int i = 0; i < 16; i++)
        a->gpr[i] = r->gpr[i];
    a->rip = r->rip;
    a->rflags = r->rflags;
    a->fs_base = r->fs_base;
    a->gs_base = r->gs_base;
    a->cs = r->cs;
    a->ss = r->ss;
}

/* ---- the smod fast path -------------------------------------------------- */

void nstub_set_fast(struct nstub *s, const struct nstub_fast_cfg *cfg)
{
    if (!s)
        return;
    if (cfg && cfg->nr_windows <= NSTUB_FAST_WINDOWS)
        s->fast = *cfg;
    else
        s->fast.enabled = false;
}

void nstub_fast_result(const struct nstub *s, struct nstub_fast_result *out)
{
    *out = s->fast_res;
}

int nstub_set_cpuid(struct nstub *s, const struct pvm_cpuid_entry *e, size_t n)
{
    if (!s || n > NSTUB_FAST_MAX_CPUID || (n && !e))
        return PVM_EINVAL;
    if (s->dead)
        return 0;
    if (!s->stopped)
        return PVM_ESTATE;
    volatile struct nstub_fast *f = &s->ctl->fast;
    for (size_t i = 0; i < n; i++)
        f->cpuid[i] = (struct nstub_cpuid){ e[i].function, e[i].index, e[i].flags, e[i].eax, e[i].ebx, e[i].ecx,
                                            e[i].edx };
    f->nr_cpuid = (uint32_t)n;
    return 0;
}

/* Before a resume: the fast-path block of the control page (stub_abi.h). */
static void publish_fast(struct nstub *s)
{
    volatile struct nstub_fast *f = &s->ctl->fast;
    const struct nstub_fast_cfg *c = &s->fast;
    f->count = 0;
    f->irqs = 0;
    if (!c->enabled) {
        f->enabled = 0;
        return;
    }
    f->flags = c->cpuid ? NSTUB_FAST_CPUID : 0;
    f->retu_plus2 = c->retu_plus2;
    f->rets_plus2 = c->rets_plus2;
    f->event_entry = c->event_entry;
    f->redzone = c->redzone;
    f->sup_rsp = c->sup_rsp;
    f->sup_cs = c->sup_cs;
    f->kvm_features = c->kvm_features;
    f->nmi_masked = c->nmi_masked;
    for (unsigned i = 0; i < c->nr_windows; i++) {
        f->win[i].start = c->win[i].start;
        f->win[i].len = c->win[i].len;
        f->win[i].prot = ((c->win[i].prot & PROT_READ) ? NSTUB_PROT_READ : 0) |
                         ((c->win[i].prot & PROT_WRITE) ? NSTUB_PROT_WRITE : 0);
    }
    f->nr_windows = c->nr_windows;
    f->enabled = NSTUB_FAST_ON;
}

/*
 * Did a fast WRMSR change MSR @index (stub_abi.h)?  Record the new value and
 * publish it from now on (a spurious report resumes with s->fast).
 */
static void collect_msr(struct nstub *s, uint32_t index, volatile uint64_t *now, uint64_t *cfg, uint64_t *res)
{
    uint64_t v = *now;
    if (v == *cfg)
        return;
    *cfg = v;
    *res = v;
    s->fast_res.msr_changed |= 1u << (index - MSR_PVM_LINEAR_ADDRESS_RANGE);
}

/*
 * After a report: what the fast path did.  Guest-writable: only what an ERETS
 * or a WRMSR could do is taken (the caller validates the MSRs as WRMSRs).
 */
static void collect_fast(struct nstub *s)
{
    volatile struct nstub_fast *f = &s->ctl->fast;
    struct nstub_fast_cfg *c = &s->fast;
    struct nstub_fast_result *r = &s->fast_res;
    if (!c->enabled)
        return;
    r->events += f->count;
    r->irqs += f->irqs;
    if (c->nmi_masked && !f->nmi_masked) {
        r->nmi_unmasked = true;
        c->nmi_masked = false;
    }
    collect_msr(s, MSR_PVM_SUPERVISOR_RSP, &f->sup_rsp, &c->sup_rsp, &r->sup_rsp);
    collect_msr(s, MSR_PVM_SUPERVISOR_REDZONE, &f->redzone, &c->redzone, &r->redzone);
    collect_msr(s, MSR_PVM_EVENT_ENTRY, &f->event_entry, &c->event_entry, &r->event_entry);
    collect_msr(s, MSR_PVM_RETU_RIP, &f->retu_plus2, &c->retu_plus2, &r->retu_plus2);
    collect_msr(s, MSR_PVM_RETS_RIP, &f->rets_plus2, &c->rets_plus2, &r->rets_plus2);
}

static void report_died(struct nstub *s, struct nstub_trap *t)
{
    t->kind = NSTUB_TRAP_DIED;
    snprintf(t->msg, sizeof(t->msg), "%s", s->dead_msg);
}

enum classify { C_REPORT, C_SPURIOUS, C_BAD };

/* Turn the stub's raw report into *t. */
static enum classify classify(struct nstub *s, struct nstub_regs *regs, struct nstub_trap *t)
{
    volatile struct nstub_ctl *c = s->ctl;
    int signo = c->signo, code = c->si_code;
    uint64_t trapno = c->trapno, err = c->err, cr2 = c->cr2;

    t->signo = signo;
    t->si_code = code;
    if (signo == SIGSYS) {
        uint64_t at = c->sys_call_addr;
        if (at >= VSYSCALL_PAGE && at - VSYSCALL_PAGE < 4096 && at != regs->rip) {
            /*
             * A call into the vsyscall page, which the kernel emulates (and asks
             * seccomp about) instead of faulting; it has also emulated the RET.
             * To the guest it is an instruction fetch from an unmapped address:
             * undo the RET.  (rax now holds the emulated call's number.)
             */
            regs->rip = at;
            regs->gpr[4] -= 8;
            t->kind = NSTUB_TRAP_FAULT;
            t->vector = 14;
            t->error_code = 0x14;   /* user, instruction fetch, not present */
            t->cr2 = at;
            return C_REPORT;
        }
        /* rax holds the number; INT 0x80 arrives here too (audit arch i386). */
        t->kind = NSTUB_TRAP_SYSCALL;
        return C_REPORT;
    }
    if (signo == s->kick_signal)
        return C_SPURIOUS;   /* the caller decides whether a kick was asked for */
    if (signo == SIGILL && code == SI_KERNEL && regs->gpr[0] == UINT64_MAX) {
        /*
         * SYSCALL with rax = 335 (uretprobe): the kernel skips seccomp for it and,
         * outside a uretprobe trampoline, answers with SIGILL and rax = -1.  To
         * the guest it is a system call like any other.
         */
        regs->gpr[0] = 335;
        t->kind = NSTUB_TRAP_SYSCALL;
        return C_REPORT;
    }
    if (!fault_signal(signo))
        return C_BAD;
    if (code <= 0)
        return C_SPURIOUS;   /* sent by some process, not raised by the CPU */
    t->kind = NSTUB_TRAP_FAULT;
    if (trapno < 32) {
        t->vector = (uint32_t)trapno;
    } else {
        switch (signo) {
        case SIGILL: t->vector = 6; break;
        case SIGTRAP: t->vector = 3; break;
        case SIGFPE: t->vector = 0; break;
        case SIGBUS:
        case SIGSEGV: t->vector = 13; break;
        default: return C_BAD;
        }
    }
    t->error_code = (uint32_t)err;
    t->cr2 = t->vector == 14 ? cr2 : 0;
    return C_REPORT;
}

static int run_until_report(struct nstub *s, struct nstub_regs *regs, struct nstub_trap *trap, bool resume);

int nstub_run(struct nstub *s, struct nstub_regs *regs, struct nstub_trap *trap)
{
    if (!s || !regs || !trap)
        return PVM_EINVAL;
    memset(trap, 0, sizeof(*trap));
    if (s->dead) {
        report_died(s, trap);
        return 0;
    }
    if (!s->stopped)
        return PVM_ESTATE;
    if ((regs->cs != 0x33 && regs->cs != 0x23) || regs->ss != 0x2b || !canonical(regs->fs_base) ||
        !canonical(regs->gs_base))
        return PVM_EINVAL;

    memset(&s->fast_res, 0, sizeof(s->fast_res));
    __atomic_store_n(&s->in_guest, 1, __ATOMIC_SEQ_CST);
    /* Before looking at the kicks: a kick after this sets it again (nstub_kick). */
    __atomic_store_n(&s->ctl->fast.attention, 0, __ATOMIC_SEQ_CST);
    if (take_kick(s)) {
        __atomic_store_n(&s->in_guest, 0, __ATOMIC_SEQ_CST);
        trap->kind = NSTUB_TRAP_KICK;
        trap->signo = s->kick_signal;
        return 0;
    }
    write_regs(s, regs);
    __atomic_store_n(&s->ctl->park, 0, __ATOMIC_SEQ_CST);
    return run_until_report(s, regs, trap, true);
}

/*
 * nstub_run's loop: (@resume) publish the resume, then wait for the report
 * and turn it into *trap; a spurious one resumes the guest where it was.
 * Without @resume the stub already runs (a kernel stub that took a linked
 * SYSCALL: nstub_link_adopt).
 */
static int run_until_report(struct nstub *s, struct nstub_regs *regs, struct nstub_trap *trap, bool resume)
{
    for (;; resume = true) {
        if (resume) {
            flush_cmds(s);
            s->ctl->cmd_err = 0;
            publish_fast(s);
            s->stopped = false;
            publish(s, NSTUB_ST_RESUME);
            if (approve_cmds(s) < 0)
                break;
        }
        if (wait_trapped(s, false) < 0)
            break;
        s->stopped = true;
        collect_fast(s);
        if (cmds_failed(s))
            break;
        read_regs(s, regs);
        note_fpu(s);
        memset(trap, 0, sizeof(*trap));
        enum classify k = classify(s, regs, trap);
        if (k == C_BAD) {
            make_dead(s, "stub process %d sent a bad report (signal %d): control page corrupted", (int)s->pid,
                      trap->signo);
            break;
        }
        bool escaped = s->escape;   /* only this report can be its kick */
        s->escape = false;
        if (k == C_SPURIOUS && escaped) {
            /* The guest's refused mmap (refuse_escape), reported right after its SYSCALL. */
            if (regs->rip == NSTUB_SYSCALL_INSN + 2) {
                regs->gpr[0] = s->escape_nr;
                trap->kind = NSTUB_TRAP_SYSCALL;
                __atomic_store_n(&s->in_guest, 0, __ATOMIC_SEQ_CST);
                return 0;
            }
        }
        if (k == C_SPURIOUS) {
            __atomic_store_n(&s->ctl->fast.attention, 0, __ATOMIC_SEQ_CST);
            if (!take_kick(s))
                continue;   /* a stale kick signal: resume where the guest was */
            trap->kind = NSTUB_TRAP_KICK;
        }
        __atomic_store_n(&s->in_guest, 0, __ATOMIC_SEQ_CST);
        return 0;
    }
    __atomic_store_n(&s->in_guest, 0, __ATOMIC_SEQ_CST);
    memset(trap, 0, sizeof(*trap));
    report_died(s, trap);
    return 0;
}

/* ---- the user/kernel hand-off (stub/link.c) ------------------------------- */

int nstub_link_arm(struct nstub *u, struct nstub *k, const struct nstub_link_cfg *cfg)
{
    if (!u || !k || u == k || !cfg || !cfg->link)
        return PVM_EINVAL;
    /* The kernel stub must wait with nothing to apply (the library never talks to it while armed). */
    if (u->dead || k->dead || !u->stopped || !k->stopped || k->nr_cmds || !k->fast.enabled ||
        u->link_off == UINT64_MAX || u->link_off != k->link_off ||
        __atomic_load_n(&k->ctl->state, __ATOMIC_ACQUIRE) != NSTUB_ST_TRAPPED)
        return PVM_ESTATE;
    volatile struct nstub_ctl *kc = k->ctl, *uc = u->ctl;
    uint32_t gen = cfg->gen & NSTUB_LINK_GEN_MASK;
    publish_fast(k);
    memset(&k->fast_res, 0, sizeof(k->fast_res));
    __atomic_store_n(&kc->fast.attention, 0, __ATOMIC_SEQ_CST);
    kc->link_gen = gen;
    kc->link_lstar = cfg->lstar;
    kc->link_kgs = cfg->kernel_gs_base;
    kc->park = 0;
    cfg->link->k_spinning = 0;
    cfg->link->trips = 0;
    __atomic_store_n(&cfg->link->word, NSTUB_LINK_WORD(gen, NSTUB_LINK_ARMED), __ATOMIC_SEQ_CST);
    /* From here the kernel stub may run guest code: kicks must reach it (nstub_kick). */
    k->stopped = false;
    __atomic_store_n(&k->in_guest, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&kc->link_role, NSTUB_ROLE_KERNEL, __ATOMIC_SEQ_CST);
    uc->link_gen = gen;
    uc->link_role = NSTUB_ROLE_USER;
    return 0;
}

int nstub_link_take(struct nstub *u, struct nstub *k, const struct nstub_link_cfg *cfg, uint64_t *trips)
{
    uint32_t gen = cfg->gen & NSTUB_LINK_GEN_MASK;
    uint32_t w = __atomic_exchange_n(&cfg->link->word, NSTUB_LINK_IDLE, __ATOMIC_SEQ_CST);
    *trips = cfg->link->trips;   /* statistics (guest-writable) */
    u->ctl->link_role = NSTUB_ROLE_NONE;
    __atomic_store_n(&k->ctl->link_role, NSTUB_ROLE_NONE, __ATOMIC_SEQ_CST);
    uint32_t st = w & 0xff;
    /* The kernel stub took a SYSCALL and has not handed it back: its next report is the vCPU's. */
    if (w >> 8 == gen && (st == NSTUB_LINK_RUN || st == NSTUB_LINK_REPORT || st == NSTUB_LINK_LEFT))
        return 1;
    /* Else it waits, or is about to (a claim the exchange made fail, a hand-back's publish). */
    if (!k->dead && wait_trapped(k, false) < 0) {
        __atomic_store_n(&k->in_guest, 0, __ATOMIC_SEQ_CST);
        return -1;
    }
    __atomic_store_n(&k->in_guest, 0, __ATOMIC_SEQ_CST);
    k->stopped = true;
    collect_fast(k);
    note_fpu(k);
    return k->dead ? -1 : 0;
}

int nstub_link_adopt(struct nstub *k, struct nstub_regs *regs, struct nstub_trap *trap)
{
    memset(trap, 0, sizeof(*trap));
    if (k->dead) {
        __atomic_store_n(&k->in_guest, 0, __ATOMIC_SEQ_CST);
        report_died(k, trap);
        return 0;
    }
    return run_until_report(k, regs, trap, false);
}

const char *nstub_dead_msg(const struct nstub *s)
{
    return s ? s->dead_msg : "no stub";
}

/* The state letter of /proc/<pid>/stat ("S" sleeping, "R" running, ...), or 0. */
static char proc_state(struct nstub *s)
{
    char buf[256];
    if (s->stat_fd < 0) {
        char path[48];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)s->pid);
        s->stat_fd = open(path, O_RDONLY | O_CLOEXEC);
        if (s->stat_fd < 0)
            return 0;
    }
    ssize_t n = pread(s->stat_fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the name may hold anything: the state follows its last ')' */
    return p && p[1] == ' ' ? p[2] : 0;
}

int nstub_confirm_stopped(struct nstub *s, unsigned timeout_ms, char *err, size_t errlen)
{
    if (!s || !s->stopped)
        return set_err(err, errlen, "nstub_confirm_stopped: no stopped stub"), -1;
    if (s->dead)
        return set_err(err, errlen, "%s", s->dead_msg), -1;
    /*
     * Asleep ("S") can only mean its untimed futex wait on ctl->state or an
     * mmap waiting for our approval: the filter allows no other sleep.
     * Whether the stub's own handler or a guest that jumped there sleeps, no
     * guest code runs until we wake it or answer (only nstub_run does).
     */
    __atomic_store_n(&s->ctl->park, 1, __ATOMIC_SEQ_CST);
    uint64_t t0 = now_ns();
    for (unsigned i = 0;; i++) {
        char st = proc_state(s);
        if (st == 'S')
            return 0;
        if (st == 0 || st == 'Z' || st == 'X') {
            explain_death(s);
            return set_err(err, errlen, "%s", s->dead_msg), -1;
        }
        if (now_ns() - t0 > (uint64_t)timeout_ms * 1000000ull)
            break;
        if (i < 100)
            sched_yield();
        else
            usleep(100);
    }
    make_dead(s, "stub process %d reported a stop but keeps running guest code (a forged report)", (int)s->pid);
    return set_err(err, errlen, "%s", s->dead_msg), -1;
}

void nstub_prewake(struct nstub *s)
{
    if (s && !s->dead && __atomic_load_n(&s->ctl->stub_sleeping, __ATOMIC_SEQ_CST)) {
        int saved = errno;
        futex_op(&s->ctl->state, FUTEX_WAKE, 1, NULL);
        errno = saved;
    }
}

int nstub_kick(struct nstub *s)
{
    if (!s)
        return PVM_EINVAL;
    __atomic_add_fetch(&s->kicks, 1, __ATOMIC_SEQ_CST);
    /* The fast path must not keep the guest running past an injection or kick (stub/fast.c). */
    __atomic_store_n(&s->ctl->fast.attention, 1, __ATOMIC_SEQ_CST);
    /* Outside nstub_run the next run sees the count; inside it the signal interrupts the guest. */
    if (__atomic_load_n(&s->in_guest, __ATOMIC_SEQ_CST)) {
        int saved = errno;
        if (syscall(SYS_pidfd_send_signal, s->pidfd, s->kick_signal, NULL, 0) < 0 && errno == ENOSYS)
            kill(s->pid, s->kick_signal);
        errno = saved;
    }
    return 0;
}

int nstub_post_irq(struct nstub *s, unsigned vector)
{
    if (!s || vector < 32 || vector > 255)
        return PVM_EINVAL;
    uint64_t bit = 1ull << (vector % 64);
    s->irq_posted[vector / 64] |= bit;
    /* Set before the poke's signal: the stub's handler sees it (stub_abi.h, fast.c irq_check). */
    __atomic_fetch_or(&s->ctl->fast.irq[vector / 64], bit, __ATOMIC_SEQ_CST);
    return 0;
}

void nstub_poke(struct nstub *s)
{
    if (!s)
        return;
    /* Coalesced (stub_abi.h): a poke still queued will see the bits posted before this. */
    if (__atomic_exchange_n(&s->ctl->fast.poke_pending, 1, __ATOMIC_SEQ_CST))
        return;
    __atomic_add_fetch(&s->pokes, 1, __ATOMIC_SEQ_CST);
    /* Even outside nstub_run: a stopped stub gets the signal right after its next resume. */
    int saved = errno, r = (int)syscall(SYS_pidfd_send_signal, s->pidfd, s->kick_signal, NULL, 0);
    if (r < 0 && errno == ENOSYS)
        r = kill(s->pid, s->kick_signal);
    if (r < 0) /* not sent (e.g. EAGAIN): let the next poke try */
        __atomic_store_n(&s->ctl->fast.poke_pending, 0, __ATOMIC_SEQ_CST);
    errno = saved;
}

void nstub_take_irqs(struct nstub *s, uint64_t out[4])
{
    if (!s)
        return;
    for (int w = 0; w < 4; w++) {
        /* Guest-writable: keep only what was posted (a cleared bit was delivered in the stub). */
        uint64_t m = __atomic_exchange_n(&s->ctl->fast.irq[w], 0, __ATOMIC_SEQ_CST);
        out[w] |= m & s->irq_posted[w];
        s->irq_posted[w] = 0;
    }
    /* Stopped: re-arm pokes (a signal still queued is then merely stale). */
    __atomic_store_n(&s->ctl->fast.poke_pending, 0, __ATOMIC_SEQ_CST);
}

/* ---- FPU state ------------------------------------------------------------- */

size_t nstub_fpu_size(const struct nstub *s)
{
    return s ? s->fpu_size : 0;
}

int nstub_get_fpu(struct nstub *s, void *buf, size_t len)
{
    if (!s || !buf || len < s->fpu_size)
        return PVM_EINVAL;
    if (s->dead || !s->stopped)
        return PVM_ESTATE;
    if (!s->fpu_off)
        return PVM_EFAULT;
    memcpy(buf, (const char *)s->ctl + s->fpu_off, s->fpu_size);
    return 0;
}

int nstub_set_fpu(struct nstub *s, const void *buf, size_t len)
{
    if (!s || !buf || len < s->fpu_size)
        return PVM_EINVAL;
    if (s->dead || !s->stopped)
        return PVM_ESTATE;
    if (!s->fpu_off)
        return PVM_EFAULT;
    memcpy((char *)s->ctl + s->fpu_off, buf, s->fpu_size);
    return 0;
}

uint64_t nstub_approved(const struct nstub *s)
{
    return s ? s->approved : 0;
}

int nstub_pid(const struct nstub *s)
{
    return s ? (int)s->pid : -1;
}
