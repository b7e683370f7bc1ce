/*
 * lib/hv/provider.c - helpers the cpu providers share: a lost vCPU's trap,
 * and the kick signal's no-op handler (a kick only has to end a blocking
 * run with EINTR).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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
