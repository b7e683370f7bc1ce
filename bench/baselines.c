/*
 * bench/baselines.c - the host baselines every libpvm number is compared with,
 * measured in the same run on the same machine:
 *   host getpid syscall; in-process seccomp trap + SIGSYS handler + sigreturn (T);
 *   signal round trip (tgkill -> handler -> back); ptrace PTRACE_SYSEMU round trip
 *   (a tracee doing syscalls, the tracer resuming it); host compute loop.
 * Usage: bench-baselines [--json FILE] [--quick]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
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

static int install_trap_filter(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TRAP_NR, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
    struct sigaction sa = { .sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO };
    sigaction(SIGSYS, &sa, NULL);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
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

static int op_compute(void *ctx, unsigned n)
{
    volatile uint64_t sink = 0;
    for (unsigned i = 0; i < n; i++)
        sink += bench_compute(1000);
    return 0;
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

    /* Last: the filter stays installed for the rest of the process. */
    if (install_trap_filter() == 0 &&
        !bench_measure(&r, "baseline.seccomp_trap_T", 50, 5000 / scale, op_seccomp_trap, NULL))
        bench_print(&r), bench_json(json, &r);
    if (json)
        fclose(json);
    return 0;
}
