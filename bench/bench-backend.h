/*
 * bench/bench-backend.h - the --backend option of the libpvm benchmarks.
 */
#ifndef PVM_BENCH_BACKEND_H
#define PVM_BENCH_BACKEND_H

#include <stdio.h>
#include <string.h>

#include "pvm/pvm.h"

/*
 * --backend: the backend a libpvm benchmark runs on.  Native's rows are
 * "pvm.*", the kvm backend's "pvm_kvm.*" (report.py sets them side by side).
 */
static enum pvm_backend bench_backend = PVM_BACKEND_NATIVE;
static const char *bench_prefix = "pvm";

static inline int bench_set_backend(const char *name)
{
    if (pvm_backend_from_name(name, &bench_backend) < 0 || bench_backend == PVM_BACKEND_AUTO) {
        fprintf(stderr, "--backend: native, kvm or kmod\n");
        return -1;
    }
    bench_prefix = bench_backend == PVM_BACKEND_NATIVE ? "pvm" : bench_backend == PVM_BACKEND_KVM ? "pvm_kvm" : "pvm_kmod";
    return 0;
}

/* Row @name ("pvm.x") under this run's prefix; the last four results stay valid. */
static inline const char *bench_row(const char *name)
{
    static char buf[4][64];
    static unsigned i;
    char *b = buf[i++ % 4];
    const char *dot = strchr(name, '.');
    snprintf(b, sizeof(buf[0]), "%s%s", bench_prefix, dot ? dot : name);
    return b;
}

#endif /* PVM_BENCH_BACKEND_H */
