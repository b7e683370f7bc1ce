/* lib/core/log.c - the process-wide log sink (callback, or $PVM_LOG to stderr). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static pvm_log_fn log_fn;
static void *log_opaque;
static int log_level;
static int env_level = -1; /* -1: $PVM_LOG unset, nothing goes to stderr */
static int max_level = -1; /* atomic: the level messages are wanted up to (pvm__log_on) */

static void read_env(void)
{
    static const char *names[] = { "error", "warn", "info", "debug", "trace" };
    const char *e = getenv("PVM_LOG");
    if (!e)
        return;
    env_level = PVM_LOG_WARN;
    for (int i = 0; i < 5; i++)
        if (!strcmp(e, names[i]))
            env_level = i;
    __atomic_store_n(&max_level, env_level, __ATOMIC_RELAXED);
}

bool pvm__log_on(enum pvm_log_level level)
{
    pthread_once(&env_once, read_env);
    return (int)level <= __atomic_load_n(&max_level, __ATOMIC_RELAXED);
}

void pvm_set_log_callback(pvm_log_fn fn, void *opaque, enum pvm_log_level level)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_opaque = opaque;
    log_level = (int)level;
    pthread_once(&env_once, read_env);
    __atomic_store_n(&max_level, fn ? (int)level : env_level, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&log_lock);
}

void pvm__log(enum pvm_log_level level, const char *fmt, ...)
{
    static const char *tags[] = { "error", "warn", "info", "debug", "trace" };
    pthread_once(&env_once, read_env);
    pthread_mutex_lock(&log_lock);
    pvm_log_fn fn = log_fn;
    void *opaque = log_opaque;
    int max = fn ? log_level : env_level;
    pthread_mutex_unlock(&log_lock);
    if ((int)level > max)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (fn)
        fn(opaque, level, msg);
    else
        fprintf(stderr, "libpvm %s: %s\n", tags[level], msg);
}
