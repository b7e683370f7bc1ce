/*
 * bench/bench.h - measurement helpers shared by the benchmark programs.
 *
 * A measurement runs `batches` batches of `iters` operations after a warm-up,
 * and reports the per-operation time of each batch as median / p10 / p90 (ns).
 */
#ifndef PVM_BENCH_H
#define PVM_BENCH_H

#include <libgen.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct bench_result {
    const char *name;
    double p10, p50, p90; /* ns per operation */
    unsigned batches, iters;
};

/* Path of @name in the directory of the running benchmark (where CMake puts the guests). */
static inline void bench_sibling_path(char *buf, size_t len, const char *name)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[n > 0 ? n : 0] = 0;
    snprintf(buf, len, "%s/%s", dirname(exe), name);
}

static inline uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Percentiles of @n samples (sorted in place). */
static inline void bench_stats(double *s, unsigned n, struct bench_result *r)
{
    qsort(s, n, sizeof(*s), bench_cmp_double);
    r->p10 = s[n / 10];
    r->p50 = s[n / 2];
    r->p90 = s[(n * 9) / 10];
}

/*
 * Run @op(@ctx, iters) @batches times after one warm-up batch; @op performs
 * @iters operations and returns 0 (non-zero aborts the measurement).
 */
static inline int bench_measure(struct bench_result *r, const char *name, unsigned batches, unsigned iters,
                                int (*op)(void *ctx, unsigned iters), void *ctx)
{
    double *s = calloc(batches, sizeof(*s));
    if (!s || op(ctx, iters)) {
        free(s);
        return -1;
    }
    for (unsigned b = 0; b < batches; b++) {
        uint64_t t0 = bench_now_ns();
        if (op(ctx, iters)) {
            free(s);
            return -1;
        }
        s[b] = (double)(bench_now_ns() - t0) / iters;
    }
    r->name = name;
    r->batches = batches;
    r->iters = iters;
    bench_stats(s, batches, r);
    free(s);
    return 0;
}

static inline void bench_print(const struct bench_result *r)
{
    printf("%-40s p50 %10.1f ns   p10 %10.1f   p90 %10.1f\n", r->name, r->p50, r->p10, r->p90);
    fflush(stdout);
}

/* One JSON object per line: {"name": ..., "p50_ns": ...}. */
static inline void bench_json(FILE *f, const struct bench_result *r)
{
    if (f)
        fprintf(f, "{\"name\": \"%s\", \"p10_ns\": %.1f, \"p50_ns\": %.1f, \"p90_ns\": %.1f, \"batches\": %u, "
                   "\"iters\": %u}\n", r->name, r->p10, r->p50, r->p90, r->batches, r->iters);
}

/* A single value (count, size, ratio) as one JSON line. */
static inline void bench_json_value(FILE *f, const char *name, double value, const char *unit)
{
    printf("%-40s %12.1f %s\n", name, value, unit);
    fflush(stdout);
    if (f)
        fprintf(f, "{\"name\": \"%s\", \"value\": %.3f, \"unit\": \"%s\"}\n", name, value, unit);
}

/* Stats over raw samples (ns each): fills @r like bench_measure. */
static inline void bench_from_samples(struct bench_result *r, const char *name, double *s, unsigned n)
{
    r->name = name;
    r->batches = n;
    r->iters = 1;
    bench_stats(s, n, r);
}

static inline uint64_t bench_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* TSC ticks per ns, measured against CLOCK_MONOTONIC over ~50 ms. */
static inline double bench_tsc_per_ns(void)
{
    uint64_t n0 = bench_now_ns(), t0 = bench_rdtsc();
    while (bench_now_ns() - n0 < 50000000ull)
        ;
    uint64_t n1 = bench_now_ns(), t1 = bench_rdtsc();
    return (double)(t1 - t0) / (double)(n1 - n0);
}

/* The number after @key in a /proc file (e.g. "Pss:" in smaps_rollup), in its unit (kB); 0 if absent. */
static inline double bench_field_kib(const char *path, const char *key)
{
    char line[256];
    double v = 0;
    size_t kl = strlen(key);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, key, kl)) {
            v = atof(line + kl);
            break;
        }
    fclose(f);
    return v;
}

/* Is /proc/@pid a zygote of this process ("pvm-zygote zygote <our pid>"; its stubs are our VMs')? */
static inline int bench_is_our_zygote(const char *pid)
{
    char p[640], buf[256];
    snprintf(p, sizeof(p), "/proc/%s/cmdline", pid);
    FILE *f = pid[0] >= '1' && pid[0] <= '9' ? fopen(p, "r") : NULL;
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *a1 = buf + strlen(buf) + 1;
    return !strcmp(buf, "pvm-zygote") && a1 < buf + n && !strcmp(a1, "zygote") && atoi(a1 + strlen(a1) + 1) == getpid();
}

#endif
