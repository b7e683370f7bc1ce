/*
 * bench/compute.h - the compute kernel run both on the host and inside a guest
 * (freestanding: no libc).  An xorshift + multiply mix that the compiler cannot
 * fold away.
 */
#ifndef PVM_BENCH_COMPUTE_H
#define PVM_BENCH_COMPUTE_H
#include <stdint.h>

/* always_inline: bench-guest runs it in user mode, from its user-text section. */
static inline __attribute__((always_inline)) uint64_t bench_compute(uint64_t n)
{
    uint64_t x = 0x9e3779b97f4a7c15ull, acc = 0;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc += x * (i | 1);
    }
    return acc;
}
#endif
