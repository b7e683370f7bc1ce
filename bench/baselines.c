/*
 * bench/baselines.c - the host baselines every libpvm number is compared with,
 * measured in the same run on the same machine:
 *   host getpid syscall; in-process seccomp trap + SIGSYS handler + sigreturn (T);
 *   signal round trip (tgkill -> handler -> back); ptrace PTRACE_SYSEMU round trip
 *   (a tracee doing syscalls, the tracer resuming it); host compute loop; and the
 *   two wake-ups libpvm's injection rows are held against: a signal to a process
 *   spinning on the other CPU, and a futex wake of a thread sleeping on the other
 *   CPU, each from the send to the handler's first instruction (TSC stamps, as
 *   bench-pvm's inject rows); and a ud2 -> SIGILL -> sigreturn round trip, the
 *   exception counterpart of T; and the two shapes a native user-syscall round
 *   trip can have (docs/benchmarks.md): two processes that hand a trap to each
 *   other from inside their SIGSYS handlers (the two-stub floor), and the same
 *   through a third process that relays each hand-off (the library thread).
 * Usage: bench-baselines [--json FILE] [--quick]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "compute.h"

static int op_getpid(void *ctx, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        syscall(SYS_getpid);
    return 0;
}

static volatile unsigned sig_count;
static void on_sigsys(int sig, siginfo_t *si, void *uc_)
{
    sig_count++;
}

/* A syscall number nothing else uses, trapped by the filter. */
#define TRAP_NR 0x1337

static int install_trap_filter_only(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TRAP_NR, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

static int install_trap_filter(void)
{
    struct sigaction sa = { .sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO };
    sigaction(SIGSYS, &sa, NULL);
    return install_trap_filter_only();
}

static int op_seccomp_trap(void *ctx, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        syscall(TRAP_NR);
    return 0;
}

static void on_usr1(int sig)
{
    sig_count++;
}

static int op_tgkill(void *ctx, unsigned n)
{
    pid_t pid = getpid(), tid = (pid_t)syscall(SYS_gettid);
    for (unsigned i = 0; i < n; i++)
        syscall(SYS_tgkill, pid, tid, SIGUSR1);
    return 0;
}

/* ptrace: the child stops at every syscall entry (SYSEMU: the syscall is skipped). */
struct ptrace_ctx {
    pid_t child;
};

static int op_sysemu(void *ctx, unsigned n)
{
    struct ptrace_ctx *p = ctx;
    for (unsigned i = 0; i < n; i++) {
        int st;
        if (ptrace(PTRACE_SYSEMU, p->child, 0, 0) < 0 || waitpid(p->child, &st, 0) < 0 || !WIFSTOPPED(st))
            return -1;
    }
    return 0;
}

static pid_t start_tracee(void)
{
    pid_t c = fork();
    if (c == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        raise(SIGSTOP);
        for (;;)
            syscall(SYS_getppid);
    }
    int st;
    waitpid(c, &st, 0);
    return c;
}

/* A hardware exception instead of a syscall: ud2 -> SIGILL handler (skips it) -> sigreturn. */
static void on_sigill(int sig, siginfo_t *si, void *ucv)
{
    (void)sig;
    (void)si;
    ((ucontext_t *)ucv)->uc_mcontext.gregs[REG_RIP] += 2;
    sig_count++;
}

static int op_ud_trap(void *ctx, unsigned n)
{
    (void)ctx;
    for (unsigned i = 0; i < n; i++)
        __asm__ volatile("ud2" ::: "memory");
    return 0;
}

/* A page fault: a load from a PROT_NONE page -> SIGSEGV handler (skips the 3-byte load) -> sigreturn. */
static void on_sigsegv(int sig, siginfo_t *si, void *ucv)
{
    (void)sig;
    (void)si;
    ((ucontext_t *)ucv)->uc_mcontext.gregs[REG_RIP] += 3;
    sig_count++;
}

static int op_pf_trap(void *ctx, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        __asm__ volatile("mov (%0), %%rax" ::"r"(ctx) : "rax", "memory");   /* 48 8b 00 */
    return 0;
}

static int op_compute(void *ctx, unsigned n)
{
    volatile uint64_t sink = 0;
    for (unsigned i = 0; i < n; i++)
        sink += bench_compute(1000);
    return 0;
}

/*
 * ---- the hand-off floors of a native user syscall --------------------------
 *
 * A user SYSCALL on the native backend is a seccomp trap in the user stub, the
 * guest kernel in the kernel stub, and its ERETU (another trap) back.  Here the
 * same shape without libpvm: process U traps (its "user SYSCALL"), its SIGSYS
 * handler hands the event to process K, which waits inside its own SIGSYS
 * handler, sigreturns and traps at once (its "ERETU"), handing back to U.
 * Every wait spins with sched_yield, as the stubs do.  "direct": U and K hand
 * to each other (the two-stub floor); "relay": a third process L stands in the
 * middle of both hand-offs, as the library's vCPU thread does today.
 */
struct hand {
    volatile uint32_t uk, kl;     /* U <-> (L or K), L <-> K: 1 = request, 2 = answered */
    volatile uint32_t ready;
    volatile int32_t failed;
    double ns[64];                /* per-batch ns per round trip, from U */
    uint32_t fpu_size;            /* "fpu": bytes of the XSAVE image carried (from U's first trap) */
    uint8_t fpu[65536] __attribute__((aligned(64)));   /* the image in transit */
};
static struct hand *hd;
static volatile uint32_t *hand_word;   /* this process's word; set before its first trap */
static volatile uint32_t hand_post, hand_until;
static bool hand_fpu;                  /* carry the signal frame's XSAVE image with each hand-off */

/* The XSAVE image of a signal frame: its size (sw_reserved.xstate_size, or the 512-byte FXSAVE area). */
static uint32_t frame_fpu_size(const uint8_t *fp)
{
    uint32_t magic1, size;
    memcpy(&magic1, fp + 464, 4);
    memcpy(&size, fp + 464 + 16, 4);
    return magic1 == 0x46505853u && size <= sizeof(hd->fpu) ? size : 512;
}

static void hand_wait(volatile uint32_t *w, uint32_t v)
{
    while (__atomic_load_n(w, __ATOMIC_ACQUIRE) != v)
        sched_yield();
}

static void on_hand_sigsys(int sig, siginfo_t *si, void *ucv)
{
    (void)sig, (void)si;
    uint8_t *fp = hand_fpu ? (uint8_t *)((ucontext_t *)ucv)->uc_mcontext.fpregs : NULL;
    uint32_t n = fp ? frame_fpu_size(fp) : 0;
    if (fp)   /* the image goes with the registers (the link page would carry it) ... */
        memcpy(hd->fpu, fp, n);
    __atomic_store_n(hand_word, hand_post, __ATOMIC_RELEASE);
    hand_wait(hand_word, hand_until);
    if (fp) { /* ... and the other side's comes back into this frame (same host: same layout) */
        memcpy(fp, hd->fpu, n);
        hd->fpu_size = n;
    }
}

/* This process's SIGSYS handler and trap filter: each trap posts @post to *@word and waits for @until. */
static int hand_filter(volatile uint32_t *word, uint32_t post, uint32_t until)
{
    hand_word = word, hand_post = post, hand_until = until;
    struct sigaction sa = { .sa_sigaction = on_hand_sigsys, .sa_flags = SA_SIGINFO };
    sigaction(SIGSYS, &sa, NULL);
    return install_trap_filter_only();
}

static void measure_handoff(FILE *json, const char *name, bool relay, bool fpu, unsigned batches, unsigned iters)
{
    hand_fpu = fpu && !relay;
    hd = mmap(NULL, sizeof(*hd), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (hd == MAP_FAILED || batches > 64)
        return;
    volatile uint32_t *kw = relay ? &hd->kl : &hd->uk;
    pid_t k = fork(), l = -1, u = -1;
    if (k == 0) {
        /* K: answer (2), wait for the next request (1); its first trap announces it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);   /* K and L spin forever: they go with us */
        if (hand_filter(kw, 2, 1) != 0)
            hd->failed = 1;
        for (;;)
            syscall(TRAP_NR);
    }
    if (k > 0 && relay && (l = fork()) == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (;;) {
            hand_wait(&hd->uk, 1);
            hd->uk = 0;
            __atomic_store_n(&hd->kl, 1, __ATOMIC_RELEASE);
            hand_wait(&hd->kl, 2);
            __atomic_store_n(&hd->uk, 2, __ATOMIC_RELEASE);
        }
    }
    if (k > 0 && (!relay || l > 0) && (u = fork()) == 0) {
        /* U: wait until K is in its handler, then request (1) and wait for the answer (2) per trap. */
        uint64_t deadline = bench_now_ns() + 2000000000ull;
        while (__atomic_load_n(kw, __ATOMIC_ACQUIRE) != 2 && !hd->failed && bench_now_ns() < deadline)
            sched_yield();
        if (hd->failed || *kw != 2 || hand_filter(&hd->uk, 1, 2) != 0) {
            hd->failed = 1;
            _exit(1);
        }
        for (unsigned b = 0; b <= batches; b++) {
            uint64_t t0 = bench_now_ns();
            for (unsigned i = 0; i < iters; i++)
                syscall(TRAP_NR);
            if (b)   /* batch 0 warms up */
                hd->ns[b - 1] = (double)(bench_now_ns() - t0) / iters;
        }
        hd->ready = 1;
        _exit(0);
    }
    int st = 0;
    if (u > 0)
        waitpid(u, &st, 0);
    if (k > 0) {
        kill(k, SIGKILL);
        waitpid(k, NULL, 0);
    }
    if (l > 0) {
        kill(l, SIGKILL);
        waitpid(l, NULL, 0);
    }
    if (u > 0 && hd->ready && !hd->failed) {
        struct bench_result r;
        bench_from_samples(&r, name, hd->ns, batches);
        bench_print(&r), bench_json(json, &r);
    }
    munmap(hd, sizeof(*hd));
}

/* ---- wake-up latencies (bench-pvm's inject rows use the same method) ------ */

struct stamps {
    volatile uint64_t count, stamp[4096];
    volatile uint32_t word;
};
static struct stamps *st;

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static void pause_us(unsigned us)
{
    struct timespec ts = { 0, (long)us * 1000 };
    nanosleep(&ts, NULL);
}

static void on_stamp(int sig)
{
    uint64_t t = bench_rdtsc();
    (void)sig;
    uint64_t i = st->count;
    if (i < 4096)
        st->stamp[i] = t;
    st->count = i + 1;
}

static void *futex_sleeper(void *arg)
{
    (void)arg;
    pin(1);
    for (uint32_t seen = 0;;) {
        while (__atomic_load_n(&st->word, __ATOMIC_ACQUIRE) == seen)
            syscall(SYS_futex, &st->word, FUTEX_WAIT, seen, NULL, NULL, 0);
        uint64_t t = bench_rdtsc();
        seen = __atomic_load_n(&st->word, __ATOMIC_ACQUIRE);
        if (seen == UINT32_MAX)
            return NULL;
        uint64_t i = st->count;
        if (i < 4096)
            st->stamp[i] = t;
        __atomic_store_n(&st->count, i + 1, __ATOMIC_RELEASE);
    }
}

/* @n wake-ups of a spinning process (signal) or a sleeping thread (futex); row @name. */
static void measure_wake(FILE *json, const char *name, bool futex, unsigned n)
{
    double tpn = bench_tsc_per_ns(), *lat = calloc(n, sizeof(double));
    st = mmap(NULL, sizeof(*st), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (st == MAP_FAILED || !lat) {
        free(lat);
        return;
    }
    pid_t child = -1;
    pthread_t th;
    if (futex) {
        pthread_create(&th, NULL, futex_sleeper, NULL);
    } else {
        child = fork();
        if (child == 0) {
            pin(1);
            signal(SIGUSR2, on_stamp);
            for (;;)
                __asm__ volatile("pause");
        }
    }
    pin(0);
    pause_us(20000);
    unsigned got = 0;
    for (unsigned i = 0; i < n; i++) {
        pause_us(300 + (i * 37) % 200);
        uint64_t t0 = bench_rdtsc();
        if (futex) {
            __atomic_store_n(&st->word, i + 1, __ATOMIC_RELEASE);
            syscall(SYS_futex, &st->word, FUTEX_WAKE, 1, NULL, NULL, 0);
        } else {
            kill(child, SIGUSR2);
        }
        uint64_t deadline = bench_now_ns() + 1000000000ull;
        while (__atomic_load_n(&st->count, __ATOMIC_ACQUIRE) <= i && bench_now_ns() < deadline)
            pause_us(50);
        if (st->count <= i)
            break;
        lat[got++] = (double)(st->stamp[i] - t0) / tpn;
    }
    if (futex) {
        __atomic_store_n(&st->word, UINT32_MAX, __ATOMIC_RELEASE);
        syscall(SYS_futex, &st->word, FUTEX_WAKE, 1, NULL, NULL, 0);
        pthread_join(th, NULL);
    } else {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
    cpu_set_t all;
    CPU_ZERO(&all);
    for (int c = 0; c < CPU_SETSIZE; c++)
        CPU_SET(c, &all);
    sched_setaffinity(0, sizeof(all), &all);
    if (got > n / 10) {
        struct bench_result r;
        bench_from_samples(&r, name, lat + n / 10, got - n / 10);
        bench_print(&r), bench_json(json, &r);
    }
    munmap((void *)st, sizeof(*st));
    free(lat);
}

int main(int argc, char **argv)
{
    FILE *json = NULL;
    unsigned scale = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = fopen(argv[++i], "a");
        else if (!strcmp(argv[i], "--quick"))
            scale = 10;
        else {
            fprintf(stderr, "usage: %s [--json FILE] [--quick]\n"
                            "Measures the host baselines libpvm is compared with.\n", argv[0]);
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    struct bench_result r;
    if (!bench_measure(&r, "baseline.getpid", 50, 20000 / scale, op_getpid, NULL))
        bench_print(&r), bench_json(json, &r);

    signal(SIGUSR1, on_usr1);
    if (!bench_measure(&r, "baseline.tgkill_roundtrip", 50, 5000 / scale, op_tgkill, NULL))
        bench_print(&r), bench_json(json, &r);

    struct ptrace_ctx p = { .child = start_tracee() };
    if (!bench_measure(&r, "baseline.ptrace_sysemu_roundtrip", 30, 2000 / scale, op_sysemu, &p))
        bench_print(&r), bench_json(json, &r);
    kill(p.child, SIGKILL);
    waitpid(p.child, NULL, 0);

    if (!bench_measure(&r, "baseline.compute_1000", 50, 200 / scale, op_compute, NULL))
        bench_print(&r), bench_json(json, &r);
    /* The floor of an exception-based guest event: bench-pvm's #UD row is one of these plus one T. */
    struct sigaction ill = { .sa_sigaction = on_sigill, .sa_flags = SA_SIGINFO };
    sigaction(SIGILL, &ill, NULL);
    if (!bench_measure(&r, "baseline.ud_sigill_roundtrip", 50, 5000 / scale, op_ud_trap, NULL))
        bench_print(&r), bench_json(json, &r);
    void *guard = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct sigaction segv = { .sa_sigaction = on_sigsegv, .sa_flags = SA_SIGINFO };
    sigaction(SIGSEGV, &segv, NULL);
    if (guard != MAP_FAILED && !bench_measure(&r, "baseline.pf_sigsegv_roundtrip", 50, 5000 / scale, op_pf_trap, guard))
        bench_print(&r), bench_json(json, &r);
    signal(SIGSEGV, SIG_DFL);
    measure_wake(json, "baseline.signal_to_spinning_process", false, 2000 / scale);
    measure_wake(json, "baseline.futex_wake_sleeping_thread", true, 2000 / scale);
    measure_handoff(json, "baseline.handoff_two_process", false, false, 30, 2000 / scale);
    /* The same, each hand-off also carrying the XSAVE image, as a real stub-to-stub hand-off must. */
    measure_handoff(json, "baseline.handoff_two_process_fpu", false, true, 30, 2000 / scale);
    measure_handoff(json, "baseline.handoff_relayed", true, false, 30, 2000 / scale);

    /* Last: the filter stays installed for the rest of the process. */
    if (install_trap_filter() == 0 &&
        !bench_measure(&r, "baseline.seccomp_trap_T", 50, 5000 / scale, op_seccomp_trap, NULL))
        bench_print(&r), bench_json(json, &r);
    if (json)
        fclose(json);
    return 0;
}
