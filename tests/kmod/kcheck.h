/*
 * tests/kmod/kcheck.h - the checks of the kmod tests (they run inside QEMU
 * without Check): each prints its line on failure and counts it in
 * `failures`, which the including file defines.
 */
#ifndef PVM_TESTS_KCHECK_H
#define PVM_TESTS_KCHECK_H

#include <errno.h>
#include <stdio.h>
#include <string.h>

extern int failures;

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
            failures++;                                                         \
        }                                                                       \
    } while (0)

/* Two integers must be equal: both are printed on failure. */
#define CHECK_EQ(a, b)                                                          \
    do {                                                                        \
        unsigned long long a_ = (a), b_ = (b);                                  \
        if (a_ != b_) {                                                         \
            fprintf(stderr, "FAIL %s:%d: %s = %#llx, want %#llx\n", __FILE__,   \
                    __LINE__, #a, a_, b_);                                      \
            failures++;                                                         \
        }                                                                       \
    } while (0)

/* expr must fail with exactly errno e. */
#define CHECK_ERR(expr, e)                                                      \
    do {                                                                        \
        errno = 0;                                                              \
        long r_ = (long)(expr);                                                 \
        if (r_ != -1 || errno != (e)) {                                         \
            fprintf(stderr, "FAIL %s:%d: %s = %ld errno %d (%s), want -1 %s\n", \
                    __FILE__, __LINE__, #expr, r_, errno, strerror(errno), #e); \
            failures++;                                                         \
        }                                                                       \
    } while (0)

#endif /* PVM_TESTS_KCHECK_H */
