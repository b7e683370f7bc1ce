/*
 * bench/bench-pvm.c - libpvm event round trips, injection latency and guest
 * compute, measured with bench-guest.elf on the native backend (or the one
 * --backend kvm: its rows are then "pvm_kvm.*" instead of "pvm.*").
 *
 * Each operation runs in a guest-side loop of n iterations between two host
 * calls; the host times the whole run and divides by n after subtracting the
 * cost of an empty run (the two host-call exits themselves).
 *
 * Usage: bench-pvm [--backend NAME] [--guest FILE] [--json FILE] [--quick]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdbool.h>
#include <unistd.h>

#include "pvm/abi.h"
#include "pvm/pvm.h"

#include "bench-guest.h"
#include "bench-backend.h"
#include "bench.h"
#include "compute.h"

struct bg {
    pvm_vm *vm;
    pvm_vcpu *cpu;
    struct pvm_exit e;          /* stopped at BG_HC_NEXT between runs */
    volatile uint64_t *stamps;  /* guest irq_stamps[], host view */
    volatile uint64_t *count;   /* guest irq_count */
    double empty_ns;            /* one empty run: NEXT -> DONE */
    unsigned pio_exits;
    uint64_t done_a0;           /* BG_HC_DONE's argument: guest stack growth over the run */
    uint64_t done_a1;           /* BG_HC_DONE's a1: TSC ticks of the guest's compute loop */
};

static double tsc_per_ns;
/* A failed measurement jumps back here; the guest is restarted and the row skipped. */
static jmp_buf *fail_jmp;
static const char *guest_path;
static int die(const char *what)
{
    fprintf(stderr, "bench-pvm: %s: %s\n", what, pvm_last_error());
    exit(1);
}

static int is_hc(const struct pvm_exit *e, uint32_t nr)
{
    return e->reason == PVM_EXIT_HYPERCALL && e->u.hypercall.nr == PVM_HOSTCALL(nr);
}

static void run_checked(struct bg *g)
{
    if (pvm_vcpu_run(g->cpu, &g->e) < 0)
        die("pvm_vcpu_run");
    if (g->e.reason == PVM_EXIT_HYPERCALL && g->e.u.hypercall.nr == PVM_HOSTCALL(PVM_HOSTCALL_CONSOLE_WRITE)) {
        char buf[256];
        size_t n = g->e.u.hypercall.args[1] < sizeof(buf) ? g->e.u.hypercall.args[1] : sizeof(buf);
        if (pvm_vcpu_read_guest(g->cpu, g->e.u.hypercall.args[0], buf, n) == 0)
            fprintf(stderr, "guest: %.*s", (int)n, buf);
        g->e.u.hypercall.ret = n;
        run_checked(g);
        return;
    }
    if (g->e.reason != PVM_EXIT_HYPERCALL && g->e.reason != PVM_EXIT_IO) {
        fprintf(stderr, "bench-pvm: unexpected exit %u: %s\n", g->e.reason,
                g->e.reason == PVM_EXIT_SHUTDOWN ? g->e.u.shutdown.reason
                : g->e.reason == PVM_EXIT_INTERNAL_ERROR ? g->e.u.internal.msg : "");
        if (fail_jmp)
            longjmp(*fail_jmp, 1);
        exit(1);
    }
}

static void *host_ptr(struct bg *g, uint64_t gva, size_t len)
{
    pvm_gpa_t gpa;
    if (pvm_vcpu_translate(g->cpu, gva, &gpa) < 0)
        die("translate");
    void *p = pvm_vm_gpa_to_host(g->vm, gpa, len);
    if (!p)
        die("gpa_to_host");
    return p;
}

static void bg_start(struct bg *g, const char *path)
{
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.backend = bench_backend;
    struct pvm_load_options lo = PVM_LOAD_OPTIONS_INIT;
    struct pvm_load_info info;
    lo.ram_size = 32ull << 20;
    if (pvm_vm_create(&g->vm, &o) < 0)
        die("pvm_vm_create");
    if (pvm_vm_load_elf(g->vm, path, &lo, &info) < 0)
        die(path);
    if (pvm_vcpu_create(&g->cpu, g->vm, NULL) < 0 || pvm_vcpu_setup_boot(g->cpu, 0) < 0)
        die("vcpu");
    run_checked(g);
    if (!is_hc(&g->e, BG_HC_HELLO))
        die("guest did not say hello");
    /* Both variables sit in one page of .bss. */
    g->stamps = host_ptr(g, g->e.u.hypercall.args[0], BG_IRQ_MAX * 8);
    g->count = host_ptr(g, g->e.u.hypercall.args[1], 8);
    run_checked(g);
    if (!is_hc(&g->e, BG_HC_NEXT))
        die("guest did not ask for work");
}

/* One guest run of @n operations; returns its wall time in ns. */
static double bg_run(struct bg *g, unsigned op, unsigned n)
{
    g->e.u.hypercall.ret = (uint64_t)op << 32 | n;
    uint64_t t0 = bench_now_ns();
    for (;;) {
        run_checked(g);
        if (g->e.reason == PVM_EXIT_IO) {
            g->pio_exits++;
            continue; /* an OUT: nothing to answer */
        }
        if (is_hc(&g->e, BG_HC_DONE)) {
            g->done_a0 = g->e.u.hypercall.args[0];
            g->done_a1 = g->e.u.hypercall.args[1];
            break;
        }
        fprintf(stderr, "bench-pvm: op %u: unexpected hypercall 0x%llx (a0 0x%llx)\n", op,
                (unsigned long long)g->e.u.hypercall.nr, (unsigned long long)g->e.u.hypercall.args[0]);
        if (fail_jmp)
            longjmp(*fail_jmp, 1);
        exit(1);
    }
    double t = (double)(bench_now_ns() - t0);
    run_checked(g); /* back to NEXT, untimed */
    return t;
}

/* @batches runs of @n operations after one warm-up run; per-operation stats. */
static void bg_start(struct bg *g, const char *path);

/* Called on a failed run: report the row as failed and start a fresh guest. */
static void restart(struct bg *g, FILE *json, const char *name)
{
    fprintf(stderr, "bench-pvm: %s: FAILED, guest restarted\n", name);
    if (json)
        fprintf(json, "{\"name\": \"%s\", \"failed\": 1}\n", name);
    pvm_vm_destroy(g->vm);
    double empty = g->empty_ns;
    memset(g, 0, sizeof(*g));
    g->empty_ns = empty;
    bg_start(g, guest_path);
}

/* BENCH_ROWS=text[,text...] (env): measure only the rows whose name contains one of them. */
static bool skip_row(const char *name)
{
    const char *only = getenv("BENCH_ROWS");
    if (!only || !*only)
        return false;
    for (const char *p = only; *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) {
        char part[64];
        size_t n = strcspn(p, ",");
        if (n && n < sizeof(part)) {
            memcpy(part, p, n);
            part[n] = 0;
            if (strstr(name, part))
                return false;
        }
    }
    return true;
}

static void measure(struct bg *g, FILE *json, const char *name, unsigned op, unsigned batches, unsigned n)
{
    if (skip_row(name))
        return;
    double *volatile s = calloc(batches, sizeof(*s));
    jmp_buf jb;
    if (setjmp(jb)) {
        fail_jmp = NULL;
        free(s);
        restart(g, json, name);
        return;
    }
    fail_jmp = &jb;
    bg_run(g, op, n);
    for (unsigned b = 0; b < batches; b++) {
        double t = bg_run(g, op, n) - g->empty_ns;
        s[b] = (t > 0 ? t : 0) / n;
    }
    struct bench_result r;
    bench_from_samples(&r, name, s, batches);
    r.iters = n;
    bench_print(&r);
    bench_json(json, &r);
    free(s);
    fail_jmp = NULL;
}

/* ---- injection: a host thread injects, the guest handler stamps the TSC -- */

struct inj {
    struct bg *g;
    unsigned n;
    double *lat_ns;
    int failed;
};

static void sleep_us(unsigned us)
{
    struct timespec ts = { 0, (long)us * 1000 };
    nanosleep(&ts, NULL);
}

static void *injector(void *arg)
{
    struct inj *in = arg;
    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = BG_IRQ_VECTOR };
    for (unsigned i = 0; i < __atomic_load_n(&in->n, __ATOMIC_ACQUIRE); i++) {
        sleep_us(300 + (i * 37) % 200); /* let the guest settle (spinning or halted) */
        uint64_t t0 = bench_rdtsc();
        if (pvm_vcpu_inject(in->g->cpu, &ev) < 0) {
            in->failed = 1;
            return NULL;
        }
        /* Sleep, do not spin: on 2 CPUs a spinning injector would steal the vCPU's CPU. */
        uint64_t deadline = bench_now_ns() + 2000000000ull;
        while (__atomic_load_n(in->g->count, __ATOMIC_ACQUIRE) <= i) {
            if (bench_now_ns() > deadline || !__atomic_load_n(&in->n, __ATOMIC_ACQUIRE)) {
                in->failed = 1;
                return NULL;
            }
            sleep_us(50);
        }
        in->lat_ns[i] = (double)(in->g->stamps[i] - t0) / tsc_per_ns;
    }
    return NULL;
}

static void measure_inject(struct bg *g, FILE *json, const char *name, unsigned op, unsigned n)
{
    if (skip_row(name))
        return;
    static struct inj in;
    static pthread_t th;
    in = (struct inj){ .g = g, .n = n, .lat_ns = calloc(n, sizeof(double)) };
    jmp_buf jb;
    if (setjmp(jb)) {
        fail_jmp = NULL;
        in.n = 0; /* stop the injector before the VM goes */
        pthread_join(th, NULL);
        free(in.lat_ns);
        restart(g, json, name);
        return;
    }
    fail_jmp = &jb;
    pthread_create(&th, NULL, injector, &in);
    bg_run(g, op, n);
    fail_jmp = NULL;
    pthread_join(th, NULL);
    if (in.failed) {
        fprintf(stderr, "bench-pvm: %s: injection failed or timed out\n", name);
        free(in.lat_ns);
        return;
    }
    unsigned warm = n / 10;
    struct bench_result r;
    bench_from_samples(&r, name, in.lat_ns + warm, n - warm);
    bench_print(&r);
    bench_json(json, &r);
    free(in.lat_ns);
}

static int op_host_compute(void *ctx, unsigned n)
{
    volatile uint64_t sink = 0;
    for (unsigned i = 0; i < n; i++)
        sink += bench_compute(BG_COMPUTE_N);
    return 0;
}

/*
 * Guest vs host compute: the same function, timed with the TSC around the loop
 * on both sides (the guest reports its ticks), batch by batch in alternation so
 * that frequency and load drift on a shared machine hit both alike.
 */
static void measure_compute(struct bg *g, FILE *json, unsigned batches, unsigned n)
{
    double *gs = calloc(batches, sizeof(*gs)), *hs = calloc(batches, sizeof(*hs));
    if (!gs || !hs) {
        free(gs);
        free(hs);
        return;
    }
    bg_run(g, BG_OP_COMPUTE, n);
    op_host_compute(NULL, n);
    for (unsigned b = 0; b < batches; b++) {
        bg_run(g, BG_OP_COMPUTE, n);
        gs[b] = (double)g->done_a1 / tsc_per_ns / n;
        uint64_t t0 = bench_rdtsc();
        op_host_compute(NULL, n);
        hs[b] = (double)(bench_rdtsc() - t0) / tsc_per_ns / n;
    }
    struct bench_result r;
    bench_from_samples(&r, bench_row("pvm.guest_compute_1000"), gs, batches);
    r.iters = n;
    bench_print(&r);
    bench_json(json, &r);
    bench_from_samples(&r, bench_row("pvm.host_compute_1000"), hs, batches);
    r.iters = n;
    bench_print(&r);
    bench_json(json, &r);
    free(gs);
    free(hs);
}

/*
 * The mixed workload (k = 1 user syscall per m compute units): ns per
 * iteration in the guest, and the host's own bench_compute(m) in the same run
 * for the ratio.  bench-qemu and bench-kvm --mixed run the same loop
 * (tinykernel.S), so a reader sees where each platform wins as m grows.
 */
static const unsigned mixed_work[] = { 100, 1000, 10000, 100000 };

static void measure_mixed(struct bg *g, FILE *json, unsigned q)
{
    for (unsigned i = 0; i < sizeof(mixed_work) / sizeof(mixed_work[0]); i++) {
        unsigned m = mixed_work[i], n = (m >= 10000 ? 20000000 / m : 2000) / q;
        char name[64], host[64];
        snprintf(name, sizeof(name), "pvm.mixed_m%u", m);
        snprintf(host, sizeof(host), "pvm.mixed_host_compute_m%u", m);
        if (skip_row(name))
            continue;
        measure(g, json, bench_row(name), BG_OP_MIXED | m << BG_OP_BITS, 10, n ? n : 1);
        double hs[10];
        for (unsigned b = 0; b < 10; b++) {
            volatile uint64_t sink = 0;
            uint64_t t0 = bench_now_ns();
            for (unsigned k = 0; k < n; k++)
                sink += bench_compute(m);
            hs[b] = (double)(bench_now_ns() - t0) / (n ? n : 1);
        }
        struct bench_result r;
        bench_from_samples(&r, bench_row(host), hs, 10);
        r.iters = n;
        bench_print(&r);
        bench_json(json, &r);
    }
}

int main(int argc, char **argv)
{
    FILE *json = NULL;
    unsigned q = 1;
    char guest[PATH_MAX];
    bench_sibling_path(guest, sizeof(guest), "bench-guest.elf");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = fopen(argv[++i], "a");
        else if (!strcmp(argv[i], "--guest") && i + 1 < argc)
            snprintf(guest, sizeof(guest), "%s", argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            q = 4;
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            if (bench_set_backend(argv[++i]) < 0)
                return 2;
        } else {
            fprintf(stderr, "usage: %s [--backend native|kvm|kmod] [--guest FILE] [--json FILE] [--quick]\n"
                            "Measures libpvm round trips (hypercall, #UD, WRMSR, CPUID, port I/O, user\n"
                            "syscall, user #PF), injection latency and guest compute with bench-guest.elf.\n"
                            "BENCH_ONLY=op:n:runs (env) runs one operation alone, e.g. under perf or strace;\n"
                            "BENCH_ROWS=text[,text...] (env) measures only the rows whose name contains one of them.\n",
                    argv[0]);
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    guest_path = guest;
    tsc_per_ns = bench_tsc_per_ns();
    bench_json_value(json, "info.tsc_ghz", tsc_per_ns, "GHz");

    struct bg g = { 0 };
    bg_start(&g, guest);

    /* BENCH_ONLY=op:n:runs runs one operation (for profiling with perf/strace). */
    const char *only = getenv("BENCH_ONLY");
    if (only) {
        unsigned op = 0, n = 0, runs = 0;
        sscanf(only, "%u:%u:%u", &op, &n, &runs);
        for (unsigned i = 0; i < runs; i++)
            printf("run %u: %.1f ns/op, guest stack leak %lld bytes\n", i, bg_run(&g, op, n) / (n ? n : 1),
                   (long long)g.done_a0);
        pvm_vm_destroy(g.vm); /* PVM_LOG=debug: the backend's per-vCPU statistics */
        return 0;
    }

    /* The two host-call exits that bracket every run. */
    double e[41];
    for (unsigned i = 0; i < 41; i++)
        e[i] = bg_run(&g, BG_OP_EMPTY, 0);
    struct bench_result r;
    bench_from_samples(&r, bench_row("pvm.hostcall_exit_pair"), e, 41);
    bench_print(&r), bench_json(json, &r);
    g.empty_ns = r.p50;

    measure(&g, json, bench_row("pvm.hypercall"), BG_OP_HYPERCALL, 30, 2000 / q);
    /* Events per run for the fault-page and injection rows (bounded by BG_PF_PAGES). */
    const unsigned EV_RUN = 200 / q;
    measure(&g, json, bench_row("pvm.exception_ud_erets"), BG_OP_UD, 30, 2000 / q);
    measure(&g, json, bench_row("pvm.wrmsr_pvm_msr"), BG_OP_WRMSR, 30, 2000 / q);
    measure(&g, json, bench_row("pvm.cpuid_synthetic"), BG_OP_CPUID, 30, 2000 / q);
    measure(&g, json, bench_row("pvm.pio_exit_to_app"), BG_OP_PIO, 30, 2000 / q);
    measure(&g, json, bench_row("pvm.user_syscall_eretu"), BG_OP_USER_SYSCALL, 30, 1000 / q);
    /* Fresh pages: (1 + 40) * EV_RUN must fit BG_PF_PAGES. */
    measure(&g, json, bench_row("pvm.user_pf_eretu"), BG_OP_USER_PF, 40, EV_RUN);

    measure_compute(&g, json, 20, 2000 / q);
    measure_mixed(&g, json, q);

    measure_inject(&g, json, bench_row("pvm.inject_running_to_handler"), BG_OP_IRQ_SPIN, EV_RUN);
    measure_inject(&g, json, bench_row("pvm.inject_halted_to_handler"), BG_OP_IRQ_HALT, 400 / q);

    g.e.u.hypercall.ret = (uint64_t)BG_OP_QUIT << 32;
    pvm_vcpu_run(g.cpu, &g.e);
    pvm_vm_destroy(g.vm);
    if (json)
        fclose(json);
    return 0;
}
