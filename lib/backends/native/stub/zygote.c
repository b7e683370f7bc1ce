/*
 * lib/backends/native/stub/zygote.c - the stub image's zygote mode and the
 * death-pipe backstop.
 *
 * Why a zygote: a stub spawned from the library (clone + execveat) copies the
 * library's whole fd table and the child's close_range walks it again, so
 * creation got slower with every VM's fds and every fd of the application.
 * The zygote is the same image exec'd once with argv[1] = "zygote" and an fd
 * table of three entries; it forks each stub, and the child goes straight
 * on into the normal stub start-up (no exec: the code is already here).
 * Same image rather than a second program: the child needs the stub's code
 * at the stub's fixed addresses anyway, and one image keeps one build.
 *
 * The zygote is trusted code: no guest ever runs in it (each stub installs
 * its seccomp filter after the fork).  It double-forks at start so that it is
 * not the library's child (no SIGCHLD for the application, invisible to its
 * waitpid(-1)); it reaps its own children and reports how each ended in its
 * slot of the shared page (stub_abi.h).  It exits, killing its stubs, when
 * the library process is gone (pidfd), when the library closes its socket
 * (exec), and - kernel-enforced - by the death-pipe SIGKILL.
 *
 * Freestanding, like stub_main.c.
 */
#include <stddef.h>
#include <stdint.h>

#include <asm/signal.h>
#include <asm/siginfo.h>
#include <asm/unistd.h>
#include <linux/fcntl.h>
#include <linux/futex.h>
#include <linux/mman.h>
#include <linux/poll.h>
#include <linux/prctl.h>
#include <linux/wait.h>

#include "stub_abi.h"
#include "zygote.h"

#pragma GCC visibility push(hidden)

long nstub_sys(long nr, long a1, long a2, long a3, long a4, long a5, long a6);
void nstub_restorer(void);
#define SYS(nr, a, b, c, d, e, f) \
    nstub_sys((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef __NR_close_range
#define __NR_close_range 436
#endif
/* <sys/socket.h> values (no libc headers here). */
#define SOL_SOCKET 1
#define SCM_RIGHTS 1
#define MSG_CTRUNC 0x8
#define MSG_DONTWAIT 0x40
#ifndef F_SETSIG
#define F_SETSIG 10
#endif

#define ZP ((volatile struct nstub_zpage *)NSTUB_ZYG_ADDR)
#define ZPAGE_MAP 8192ull

/* Minimal userspace ABI structs (no libc). */
struct k_cmsg {
    size_t len;
    int level, type;
    int fds[NSTUB_ZREQ_MAXFDS];
};
struct k_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};
struct k_pollfd {
    int fd;
    short events, revents;
};

static int32_t zpid[NSTUB_ZYG_SLOTS];   /* the child in each slot, 0 = none */

int nstub_is_zygote(const uint64_t *sp)
{
    static const char want[] = NSTUB_ZYGOTE_ARG;
    if (sp[0] < 2)
        return 0;
    const char *a = (const char *)(uintptr_t)sp[2];
    for (unsigned i = 0; i < sizeof(want); i++)
        if (a[i] != want[i])
            return 0;
    return 1;
}

int nstub_backstop(void)
{
    /* A new open file description: F_SETOWN/O_ASYNC belong to it, not to the fd we inherited. */
    static const char path[] = "/proc/self/fd/5";
    _Static_assert(NSTUB_FD_DEATH == 5, "path above");
    long fd = SYS(__NR_open, path, O_RDONLY | O_NONBLOCK, 0, 0, 0, 0);
    if (fd < 0)
        return (int)fd;
    long pid = SYS(__NR_getpid, 0, 0, 0, 0, 0, 0);
    long r = SYS(__NR_fcntl, fd, F_SETOWN, pid, 0, 0, 0);
    if (r == 0)
        r = SYS(__NR_fcntl, fd, F_SETSIG, SIGKILL, 0, 0, 0);
    if (r == 0)
        r = SYS(__NR_fcntl, fd, F_SETFL, O_RDONLY | O_NONBLOCK | FASYNC, 0, 0, 0);
    if (r == 0 && SYS(__NR_dup2, fd, NSTUB_FD_DEATH, 0, 0, 0, 0) != NSTUB_FD_DEATH)
        r = -9;
    SYS(__NR_close, fd, 0, 0, 0, 0, 0);
    if (r < 0)
        return (int)r;
    /* The writer may have gone before O_ASYNC was armed: then nobody will signal us. */
    struct k_pollfd p = { NSTUB_FD_DEATH, POLLIN, 0 };
    if (SYS(__NR_poll, &p, 1, 0, 0, 0, 0) == 1 && (p.revents & (POLLHUP | POLLERR)))
        return 1;
    return 0;
}

static void wake(volatile uint32_t *w)
{
    SYS(__NR_futex, w, FUTEX_WAKE, 0x7fffffff, 0, 0, 0);   /* shared: the library maps the page too */
}

static __attribute__((noreturn)) void zexit(int code)
{
    for (;;)
        SYS(__NR_exit_group, code, 0, 0, 0, 0, 0);
}

static __attribute__((noreturn)) void zfail(long err)
{
    ZP->fail = (int32_t)-err;
    __atomic_store_n(&ZP->ready, 2, __ATOMIC_SEQ_CST);
    wake(&ZP->ready);
    zexit(125);
}

/* The library is gone: so are its stubs. */
static __attribute__((noreturn)) void kill_all_and_exit(void)
{
    for (unsigned i = 0; i < NSTUB_ZYG_SLOTS; i++)
        if (zpid[i] > 0)
            SYS(__NR_kill, zpid[i], SIGKILL, 0, 0, 0, 0);
    zexit(0);
}

static void on_sigchld(int sig)
{
    (void)sig;
}

/* Reap every exited child; its slot gets how it ended (EXITED) before the pid is freed (REAPED). */
static void reap(void)
{
    for (;;) {
        siginfo_t si;
        si.si_pid = 0;
        if (SYS(__NR_waitid, P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT, 0, 0) < 0 || si.si_pid == 0)
            return;
        int pid = si.si_pid;
        volatile struct nstub_zslot *sl = NULL;
        unsigned i = 0;
        for (; i < NSTUB_ZYG_SLOTS; i++)
            if (zpid[i] == pid) {
                sl = &ZP->slot[i];
                break;
            }
        if (sl) {
            sl->code = si.si_code;
            sl->status = si.si_status;
            __atomic_store_n(&sl->state, NSTUB_Z_EXITED, __ATOMIC_SEQ_CST);
        }
        SYS(__NR_waitid, P_PID, pid, &si, WEXITED, 0, 0);
        if (sl) {
            zpid[i] = 0;
            __atomic_store_n(&sl->state, NSTUB_Z_REAPED, __ATOMIC_SEQ_CST);
            wake(&sl->state);
        }
    }
}

/*
 * In the forked child: the request's fds become the stub's fds @mask names
 * (fds[] in increasing fd order), NSTUB_FD_DEATH stays, nothing else is
 * open (our socket sits on fd 3: it goes unless the RAM memfd replaces it);
 * then the stub start-up.
 */
/* Set bits (no libgcc here for __builtin_popcount). */
static int bits(uint32_t m)
{
    int n = 0;
    for (; m; m &= m - 1)
        n++;
    return n;
}

static void become_stub(uint32_t mask, const int *fds)
{
    int tmp[NSTUB_ZREQ_MAXFDS], k = 0;
    for (int n = 0; n <= NSTUB_FD_LAST; n++)
        if (mask & (1u << n)) {
            tmp[k] = (int)SYS(__NR_fcntl, fds[k], F_DUPFD, 16, 0, 0, 0);
            if (tmp[k] < 0)
                zexit(124);
            k++;
        }
    k = 0;
    for (int n = 3; n <= NSTUB_FD_LAST; n++) {
        if (mask & (1u << n)) {
            if (SYS(__NR_dup2, tmp[k++], n, 0, 0, 0, 0) != n)
                zexit(124);
        } else if (n != NSTUB_FD_DEATH) {
            SYS(__NR_close, n, 0, 0, 0, 0, 0);
        }
    }
    SYS(__NR_close_range, 0, 2, 0, 0, 0, 0);
    SYS(__NR_close_range, NSTUB_FD_LAST + 1, ~0u, 0, 0, 0, 0);
    /* Nothing of the zygote's bookkeeping stays visible to a guest. */
    for (unsigned i = 0; i < NSTUB_ZYG_SLOTS; i++)
        zpid[i] = 0;
    SYS(__NR_munmap, NSTUB_ZYG_ADDR, ZPAGE_MAP, 0, 0, 0, 0);
    struct k_sigaction dfl = { 0 };
    SYS(__NR_rt_sigaction, SIGCHLD, &dfl, 0, 8, 0, 0);
    SYS(__NR_prctl, PR_SET_NAME, "pvm-stub", 0, 0, 0, 0);
}

void nstub_zygote_main(void)
{
    long r = SYS(__NR_mmap, NSTUB_ZYG_ADDR, ZPAGE_MAP, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                 NSTUB_ZFD_PAGE, 0);
    if (r != (long)NSTUB_ZYG_ADDR || ZP->magic != NSTUB_ZYG_MAGIC)
        zexit(126);
    SYS(__NR_close, NSTUB_ZFD_PAGE, 0, 0, 0, 0, 0);
    int lib = ZP->lib_pid;
    if (SYS(__NR_getppid, 0, 0, 0, 0, 0, 0) != lib)
        zexit(125);
    /* Opened while the library is surely alive (it waits for us): its death is what we watch. */
    long libfd = SYS(__NR_pidfd_open, lib, 0, 0, 0, 0, 0);
    if (libfd < 0)
        zfail(libfd);
    /* Not the library's child: the intermediate exits at once and the library reaps it. */
    r = SYS(__NR_clone, SIGCHLD, 0, 0, 0, 0, 0);
    if (r < 0)
        zfail(r);
    if (r > 0)
        zexit(0);

    SYS(__NR_setsid, 0, 0, 0, 0, 0, 0);
    SYS(__NR_prctl, PR_SET_NAME, "pvm-zygote", 0, 0, 0, 0);
    SYS(__NR_prctl, PR_SET_DUMPABLE, 0, 0, 0, 0, 0);
    struct k_sigaction sa = { .handler = on_sigchld, .flags = SA_RESTORER | SA_NOCLDSTOP,
                              .restorer = nstub_restorer, .mask = ~0ull };
    if ((r = SYS(__NR_rt_sigaction, SIGCHLD, &sa, 0, 8, 0, 0)) != 0)
        zfail(r);
    /* Every signal stays blocked (the library blocked them around the spawn) except in ppoll. */
    uint64_t all = ~0ull;
    SYS(__NR_rt_sigprocmask, SIG_SETMASK, &all, 0, 8, 0, 0);
    int bs = nstub_backstop();
    if (bs == 1)
        zexit(0);
    ZP->backstop = bs;
    ZP->zygote_pid = (int32_t)SYS(__NR_getpid, 0, 0, 0, 0, 0, 0);
    __atomic_store_n(&ZP->ready, 1, __ATOMIC_SEQ_CST);
    wake(&ZP->ready);

    for (;;) {
        reap();
        struct k_pollfd p[2] = { { NSTUB_ZFD_SOCK, POLLIN, 0 }, { (int)libfd, POLLIN, 0 } };
        uint64_t mask = ~(1ull << (SIGCHLD - 1));
        r = SYS(__NR_ppoll, p, 2, 0, &mask, 8, 0);
        if (r < 0)
            continue;   /* EINTR: SIGCHLD */
        if (p[1].revents)
            kill_all_and_exit();
        if (!(p[0].revents & POLLIN)) {
            if (p[0].revents & (POLLHUP | POLLERR | POLLNVAL))
                kill_all_and_exit();
            continue;
        }
        struct nstub_zreq req = { 0, 0, 0 };
        struct k_cmsg cm;
        struct k_iovec iov = { &req, sizeof(req) };
        struct k_msghdr mh = { 0, 0, &iov, 1, &cm, sizeof(cm), 0 };
        cm.len = 0;
        long n = SYS(__NR_recvmsg, NSTUB_ZFD_SOCK, &mh, MSG_DONTWAIT, 0, 0, 0);
        if (n == 0)
            kill_all_and_exit();   /* the library closed its end: exec */
        if (n < 0)
            continue;
        int nfds = 0, fds[NSTUB_ZREQ_MAXFDS] = { -1, -1, -1, -1, -1 };
        const size_t hdr = __builtin_offsetof(struct k_cmsg, fds);
        if (mh.controllen >= hdr + sizeof(int) && cm.level == SOL_SOCKET && cm.type == SCM_RIGHTS) {
            nfds = (int)((cm.len - hdr) / sizeof(int));
            for (int i = 0; i < nfds && i < NSTUB_ZREQ_MAXFDS; i++)
                fds[i] = cm.fds[i];
        }
        if (n != sizeof(req) || req.op != NSTUB_ZOP_SPAWN || req.slot >= NSTUB_ZYG_SLOTS ||
            (req.fds & ~NSTUB_ZREQ_FDS) || !(req.fds & (1u << NSTUB_FD_CTL)) ||
            nfds != bits(req.fds) || (mh.flags & MSG_CTRUNC)) {
            for (int i = 0; i < nfds && i < NSTUB_ZREQ_MAXFDS; i++)
                SYS(__NR_close, fds[i], 0, 0, 0, 0, 0);
            if (req.slot < NSTUB_ZYG_SLOTS) {
                ZP->slot[req.slot].status = 22;
                __atomic_store_n(&ZP->slot[req.slot].state, NSTUB_Z_FAILED, __ATOMIC_SEQ_CST);
                wake(&ZP->slot[req.slot].state);
            }
            continue;
        }
        volatile struct nstub_zslot *sl = &ZP->slot[req.slot];
        long pid = SYS(__NR_clone, SIGCHLD, 0, 0, 0, 0, 0);
        if (pid == 0) {
            become_stub(req.fds, fds);   /* without RAM: a pooled stub, it comes on the socket */
            return;   /* into the stub start-up */
        }
        for (int i = 0; i < nfds; i++)
            SYS(__NR_close, fds[i], 0, 0, 0, 0, 0);
        if (pid < 0) {
            sl->status = (int32_t)-pid;
            __atomic_store_n(&sl->state, NSTUB_Z_FAILED, __ATOMIC_SEQ_CST);
        } else {
            zpid[req.slot] = (int32_t)pid;
            sl->pid = (int32_t)pid;
            __atomic_store_n(&sl->state, NSTUB_Z_SPAWNED, __ATOMIC_SEQ_CST);
        }
        wake(&sl->state);
    }
}
