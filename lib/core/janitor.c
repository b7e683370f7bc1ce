/*
 * lib/core/janitor.c - teardown work that need not hold up the caller.
 *
 * Destroying a VM unmaps its RAM and its stubs' control areas and, on native,
 * asks a zygote for a replacement pool stub.  On the hosts this library was
 * measured on (a cloud VM whose kernel's page tables are shadowed by its own
 * hypervisor) each munmap costs 60-180 us and the zygote's wake-up up to
 * 0.5 ms: most of pvm_vm_destroy() (docs/benchmarks.md, eighth session).
 * None of it changes what the application sees: the guest is dead before the
 * work is queued, and the addresses are no longer the application's.  So a
 * thread of the library does it, started on first use, with every signal
 * blocked (a vCPU's kick signal must never land on it).
 *
 * Only unmaps and calls are deferred, never closes: an fd the library
 * closes is gone when pvm_vm_destroy() returns, as callers count on.
 * pvm__janitor_drain() waits for what was queued (tests, snapshots of RSS).
 * A forked child starts its own thread on first use; entries queued before
 * the fork are the child's mappings too and are done by it.  At exit the
 * queue is left to the kernel.  PVM_JANITOR=0 (read once) does it all
 * inline, as does a process where the thread cannot start.
 */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "core.h"

struct job {
    struct job *next;
    void *addr;         /* munmap(addr, len) ... */
    size_t len;
    void (*fn)(void);   /* ... or fn() */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER, idle = PTHREAD_COND_INITIALIZER;
static struct job *head, **tail = &head;
static bool running, busy, off;   /* off: no thread could be started; work inline */
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void *janitor(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "pvm-janitor");
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!head) {
            busy = false;
            pthread_cond_broadcast(&idle);
            pthread_cond_wait(&more, &lock);
        }
        struct job *j = head;
        if (!(head = j->next))
            tail = &head;
        busy = true;
        pthread_mutex_unlock(&lock);
        if (j->fn)
            j->fn();
        else
            munmap(j->addr, j->len);
        free(j);
        pthread_mutex_lock(&lock);
    }
    return NULL;
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&lock);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&lock);
}

static void atfork_child(void)
{
    running = busy = false;   /* the thread did not come along; the queue did */
    pthread_cond_init(&more, NULL);
    pthread_cond_init(&idle, NULL);
    pthread_mutex_unlock(&lock);
}

static void init(void)
{
    off = getenv("PVM_JANITOR") && getenv("PVM_JANITOR")[0] == '0';
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* With the lock held: a thread runs, or off is set. */
static void ensure_thread(void)
{
    if (running || off)
        return;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);   /* the thread inherits it */
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 64 * 1024);
    pthread_t t;
    running = pthread_create(&t, &a, janitor, NULL) == 0;
    off = !running;
    pthread_attr_destroy(&a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static bool queue(void *addr, size_t len, void (*fn)(void))
{
    pthread_once(&once, init);
    struct job *j = malloc(sizeof(*j));
    if (!j)
        return false;
    *j = (struct job){ NULL, addr, len, fn };
    pthread_mutex_lock(&lock);
    ensure_thread();
    if (off) {
        pthread_mutex_unlock(&lock);
        free(j);
        return false;
    }
    *tail = j;
    tail = &j->next;
    busy = true;
    pthread_cond_signal(&more);
    pthread_mutex_unlock(&lock);
    return true;
}

void pvm__janitor_munmap(void *addr, size_t len)
{
    if (addr && len && !queue(addr, len, NULL))
        munmap(addr, len);
}

void pvm__janitor_call(void (*fn)(void))
{
    if (fn && !queue(NULL, 0, fn))
        fn();
}

void pvm__janitor_drain(void)
{
    pthread_once(&once, init);
    pthread_mutex_lock(&lock);
    if (!running && head)
        ensure_thread();   /* a forked child's inherited queue */
    while (running && (head || busy))
        pthread_cond_wait(&idle, &lock);
    /* No thread could be started: do the rest here. */
    for (struct job *j; (j = head);) {
        if (!(head = j->next))
            tail = &head;
        pthread_mutex_unlock(&lock);
        if (j->fn)
            j->fn();
        else
            munmap(j->addr, j->len);
        free(j);
        pthread_mutex_lock(&lock);
    }
    pthread_mutex_unlock(&lock);
}
