/*
 * bench/bench-qemu.c - QEMU TCG running tinykernel.bin: boot time (process
 * start -> the kernel's first debug-port byte seen by this process) and the
 * ring-3 SYSCALL -> ring-0 -> IRETQ round trip (time between batch marks).
 *
 * Usage: bench-qemu [--kernel FILE] [--qemu PATH] [--json FILE] [--runs N] [--quick] [--mixed]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "tinykernel.h"

extern char **environ;

struct run {
    double boot_ns;
    double *batch_ns; /* per-op times of batches 1.. (batch 0 is the warm-up) */
    unsigned nbatch, lost;
    int ok;
};

static void qemu_run(const char *qemu, const char *kernel, unsigned iters, unsigned batches, struct run *out)
{
    int p[2];
    memset(out, 0, sizeof(*out));
    if (pipe(p) < 0)
        return;
    char *argv[] = { (char *)qemu, "-machine", "pc", "-accel", "tcg", "-m", "32M", "-display", "none",
                     "-nodefaults", "-no-user-config", "-no-reboot", "-kernel", (char *)kernel,
                     "-chardev", "stdio,id=dbg,signal=off", "-device", "isa-debugcon,iobase=0xe9,chardev=dbg",
                     "-device", "isa-debug-exit,iobase=0xf4,iosize=4", NULL };
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_addclose(&fa, p[0]);
    pid_t pid;
    uint64_t t0 = bench_now_ns();
    if (posix_spawn(&pid, qemu, &fa, NULL, argv, environ) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        close(p[0]);
        close(p[1]);
        return;
    }
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    out->batch_ns = calloc(batches, sizeof(double));
    uint64_t last_mark = 0;
    unsigned marks = 0;
    char c;
    ssize_t n;
    while ((n = read(p[0], &c, 1)) == 1 || (n < 0 && errno == EINTR)) {
        if (n != 1)
            continue;
        uint64_t t = bench_now_ns();
        if (c == 'B')
            out->boot_ns = (double)(t - t0);
        else if (c == 'M') {
            /*
             * Interval k (between marks k and k+1) is batch k; batch 0 warms up.
             * Two marks read back to back were queued in the pipe while this
             * process waited for a CPU: that interval is lost, not ~0.
             */
            if (marks >= 2 && t - last_mark >= 50000)
                out->batch_ns[out->nbatch++] = (double)(t - last_mark) / iters;
            else if (marks >= 2)
                out->lost++;
            last_mark = t;
            marks++;
        } else if (c == 'X')
            out->ok = out->boot_ns > 0 && out->nbatch + out->lost == batches - 1 && out->nbatch > 0;
    }
    close(p[0]);
    waitpid(pid, NULL, 0);
}

static const unsigned mixed_work[] = { 100, 1000, 10000, 100000 };

/*
 * @runs boots of the kernel patched for @iters x (@work compute units + a
 * SYSCALL) per batch; prints the boot row (@boot_row, unless NULL) and the
 * per-iteration row.  0, or -1 when no run completed.
 */
static int series(const char *qemu, struct tk_image *k, unsigned work, unsigned iters, unsigned batches, unsigned runs,
                  FILE *json, const char *boot_row, const char *op_row)
{
    if (!iters)
        iters = 1;
    /* QEMU reads the kernel from a file: write the patched copy to a temporary one. */
    k->params->iters = iters;
    k->params->batches = batches;
    k->params->work = work;
    char tmp[] = "/tmp/tinykernel-XXXXXX";
    int fd = mkstemp(tmp);
    if (fd < 0 || write(fd, k->data, k->len) != (ssize_t)k->len) {
        fprintf(stderr, "bench-qemu: cannot write %s\n", tmp);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);

    double *boot = calloc(runs, sizeof(double)), *ops = calloc(runs * batches, sizeof(double));
    unsigned nb = 0, no = 0;
    for (unsigned r = 0; r < runs; r++) {
        struct run out;
        qemu_run(qemu, tmp, iters, batches, &out);
        if (!out.ok) {
            fprintf(stderr, "bench-qemu: run %u did not complete\n", r);
            free(out.batch_ns);
            continue;
        }
        boot[nb++] = out.boot_ns;
        memcpy(ops + no, out.batch_ns, out.nbatch * sizeof(double));
        no += out.nbatch;
        free(out.batch_ns);
    }
    unlink(tmp);
    int rc = nb ? 0 : -1;
    if (nb) {
        struct bench_result res;
        if (boot_row) {
            bench_from_samples(&res, boot_row, boot, nb);
            bench_print(&res), bench_json(json, &res);
        }
        bench_from_samples(&res, op_row, ops, no);
        res.iters = iters;
        bench_print(&res), bench_json(json, &res);
    }
    free(boot);
    free(ops);
    return rc;
}

int main(int argc, char **argv)
{
    FILE *json = NULL;
    const char *qemu = "/usr/bin/qemu-system-x86_64";
    unsigned runs = 5, iters = 200000, batches = 11;
    bool mixed = false, quick = false;
    char kernel[PATH_MAX];
    bench_sibling_path(kernel, sizeof(kernel), "tinykernel.bin");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = fopen(argv[++i], "a");
        else if (!strcmp(argv[i], "--kernel") && i + 1 < argc)
            snprintf(kernel, sizeof(kernel), "%s", argv[++i]);
        else if (!strcmp(argv[i], "--qemu") && i + 1 < argc)
            qemu = argv[++i];
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            runs = 3, iters = 50000, quick = true;
        else if (!strcmp(argv[i], "--mixed"))
            mixed = true;
        else {
            fprintf(stderr, "usage: %s [--kernel FILE] [--qemu PATH] [--json FILE] [--runs N] [--quick] [--mixed]\n"
                            "Boots tinykernel.bin under QEMU TCG: boot time and SYSCALL round trip.\n"
                            "--mixed: also m compute units + 1 SYSCALL per iteration (qemu_tcg.mixed_m*).\n",
                    argv[0]);
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (access(qemu, X_OK) != 0) {
        fprintf(stderr, "bench-qemu: %s not found: skipped\n", qemu);
        return 77;
    }
    struct tk_image k;
    if (tk_load(&k, kernel) < 0) {
        fprintf(stderr, "bench-qemu: cannot load %s\n", kernel);
        return 1;
    }
    if (series(qemu, &k, 0, iters, batches, runs, json, "qemu_tcg.boot_to_first_insn",
               "qemu_tcg.user_syscall_roundtrip") < 0)
        return 1;
    /*
     * The mixed workload (bench-pvm's pvm.mixed_m*): fewer iterations as m
     * grows, about 20 ms of host compute a batch (5 ms with --quick), so that
     * when this process reads a mark late (a busy 2-CPU machine) the batch
     * is hardly stretched.
     */
    for (unsigned i = 0; mixed && i < sizeof(mixed_work) / sizeof(mixed_work[0]); i++) {
        unsigned m = mixed_work[i], n = 10000000u / (m + 50);
        char name[64];
        snprintf(name, sizeof(name), "qemu_tcg.mixed_m%u", m);
        if (series(qemu, &k, m, quick ? n / 4 : n, batches, quick ? 1 : 3, json, NULL, name) < 0)
            return 1;
    }
    if (json)
        fclose(json);
    return 0;
}
