/*
 * lib/hv/provider.c - helpers the cpu providers share: a lost vCPU's trap,
 * the kick signal's no-op handler (a kick only has to end a blocking run
 * with EINTR), and what auto's calibrations compare with.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hv.h"

void pvm_hv_trap_died(struct pvm_hv_trap *t, const char *fmt, ...)
{
    va_list ap;
    memset(t, 0, sizeof(*t));
    t->kind = PVM_HV_TRAP_DIED;
    va_start(ap, fmt);
    vsnprintf(t->msg, sizeof(t->msg), fmt, ap);
    va_end(ap);
}

static void kick_handler(int sig)
{
    (void)sig; /* only there to make a blocking run return EINTR */
}

int pvm_hv_install_kick_handler(int sig)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct sigaction old;
    int rc = 0;
    pthread_mutex_lock(&lock);
    /* The application's own handler for that signal stays: it ends the run just as well. */
    if (sigaction(sig, NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
        (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN)) {
        struct sigaction sa = { .sa_handler = kick_handler };
        sigemptyset(&sa.sa_mask);
        if (sigaction(sig, &sa, NULL) < 0)
            rc = pvm__error(PVM_EINTERNAL, "sigaction(%d) for the kick signal failed: %s", sig, strerror(errno));
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

double pvm_hv_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double pvm_hv_median(double *t, size_t n)
{
    qsort(t, n, sizeof(*t), cmp_double);
    return n ? t[n / 2] : 0;
}

double pvm_hv_native_event_us(void)
{
    double best = 1e9;
    for (int round = 0; round < 5; round++) {
        double t0 = pvm_hv_now_us();
        for (int i = 0; i < 200; i++)
            syscall(SYS_getpid);
        double d = (pvm_hv_now_us() - t0) / 200;
        best = d < best ? d : best;
    }
    /*
     * ARCHITECTURE.md: T (a seccomp trap + handler + sigreturn) is about 12.5
     * getpids on these machines, and a native event (exception or interrupt
     * to the guest and back) costs about 3 T.
     */
    return 3 * best / 0.08;
}
