/*
 * tests/test_memory.c - guest memory under concurrency: freeing memory while
 * vCPUs run, from inside a host-call handler, all-or-nothing guest reads, and
 * a destroyed VM's memory unmapped by the library's janitor thread.
 * Run under -DPVM_ASAN=ON to make use-after-unmap strict.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "guestvm.h"
#include "testutil.h"

/* A guest that makes host calls forever; the host call's a0 counts them. */
/* R12 keeps the previous host call's answer. */
GVM_CODE_BLOCK(g_loop, "xor %ebx, %ebx\n 1: inc %rbx\n" GVM_HC(0x40) "mov %rax, %r12\n jmp 1b\n");

static int free_in_handler(void *opaque, pvm_vcpu *v, uint32_t nr, const uint64_t args[6], uint64_t *ret)
{
    void **mem = opaque;
    int rc = pvm_vm_free_memory(pvm_vcpu_vm(v), *mem);
    *ret = (uint64_t)(int64_t)rc;
    return args[0] >= 3 ? -1 : 0; /* the third call reaches the application */
}

START_TEST(free_from_handler_is_refused)
{
    struct gvm g;
    struct pvm_exit e;
    gvm_init(&g);
    void *extra;
    ck_assert_int_eq(pvm_vm_alloc_memory(g.vm, 4096, &extra), 0);
    ck_assert_int_eq(pvm_vm_set_hostcall_handler(g.vm, free_in_handler, &extra), 0);
    gvm_load(&g, GVM_CODE, g_loop_start, g_loop_end);
    gvm_start(&g, GVM_CODE, GVM_STACK_TOP);
    gvm_run(&g, &e);
    gvm_expect_hc(&e, 0x40);
    ck_assert_uint_eq(e.u.hypercall.args[0], 3);
    struct pvm_regs r;
    gvm_regs(&g, &r);
    ck_assert_int_eq((int64_t)r.r12, PVM_EBUSY); /* the handler's answer to call 2 */
    /* Outside the run it works. */
    ck_assert_int_eq(pvm_vm_free_memory(g.vm, extra), 0);
    gvm_fini(&g);
}
END_TEST

struct churn {
    pvm_vm *vm;
    volatile int stop;
    int cycles;
};

/* Allocate, map, unmap and free memory beside running vCPUs, as fast as possible. */
static void *churn_thread(void *p)
{
    struct churn *c = p;
    while (!c->stop) {
        void *m;
        if (pvm_vm_alloc_memory(c->vm, 64 << 10, &m) < 0)
            break;
        if (pvm_vm_map_memory(c->vm, 0x40000000, m, 64 << 10, 0) == 0)
            pvm_vm_unmap_memory(c->vm, 0x40000000, 64 << 10);
        if (pvm_vm_free_memory(c->vm, m) < 0)
            break;
        c->cycles++;
    }
    return NULL;
}

START_TEST(free_while_running)
{
    struct gvm g;
    struct pvm_exit e;
    gvm_init(&g);
    gvm_load(&g, GVM_CODE, g_loop_start, g_loop_end);
    gvm_start(&g, GVM_CODE, GVM_STACK_TOP);
    struct churn c = { .vm = g.vm };
    pthread_t t;
    pthread_create(&t, NULL, churn_thread, &c);
    for (uint64_t i = 1; i <= 3000; i++) {
        gvm_run(&g, &e);
        gvm_expect_hc(&e, 0x40);
        ck_assert_uint_eq(e.u.hypercall.args[0], i);
    }
    c.stop = 1;
    pthread_join(t, NULL);
    ck_assert_int_gt(c.cycles, 10);
    gvm_fini(&g);
}
END_TEST

START_TEST(read_guest_all_or_nothing)
{
    struct gvm g;
    gvm_init(&g);
    /* GVM_DATA is mapped, the page after it is not. */
    memset(g.ram + GVM_DATA, 0x5a, 4096);
    uint8_t buf[64];
    memset(buf, 0xee, sizeof(buf));
    ck_assert_int_eq(pvm_vcpu_read_guest(g.cpu, GVM_DATA + 4096 - 32, buf, sizeof(buf)), PVM_EFAULT);
    for (size_t i = 0; i < sizeof(buf); i++)
        ck_assert_uint_eq(buf[i], 0xee); /* nothing copied */
    ck_assert_int_eq(pvm_vcpu_read_guest(g.cpu, GVM_DATA + 4096 - 32, buf, 32), 0);
    ck_assert_uint_eq(buf[0], 0x5a);
    ck_assert_uint_eq(buf[31], 0x5a);
    memset(buf, 0x11, sizeof(buf));
    ck_assert_int_eq(pvm_vcpu_write_guest(g.cpu, GVM_DATA + 4096 - 32, buf, sizeof(buf)), PVM_EFAULT);
    ck_assert_uint_eq(g.ram[GVM_DATA + 4095], 0x5a); /* nothing written */
    gvm_fini(&g);
}
END_TEST

/* lib/core/janitor.c (tests link the static library). */
void pvm__janitor_drain(void);

/* The signal mask of this process's thread named @name (SigBlk of its status), or 0 if none. */
static uint64_t blocked_of_thread(const char *name)
{
    DIR *d = opendir("/proc/self/task");
    uint64_t mask = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        char path[300], comm[64] = "", line[256];
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (!fgets(comm, sizeof(comm), f))
            comm[0] = 0;
        fclose(f);
        comm[strcspn(comm, "\n")] = 0;
        if (strcmp(comm, name))
            continue;
        snprintf(path, sizeof(path), "/proc/self/task/%s/status", e->d_name);
        if (!(f = fopen(path, "r")))
            continue;
        while (fgets(line, sizeof(line), f))
            if (!strncmp(line, "SigBlk:", 7))
                mask = strtoull(line + 7, NULL, 16);
        fclose(f);
    }
    if (d)
        closedir(d);
    return mask;
}

START_TEST(destroy_unmaps_on_the_janitor)
{
    struct gvm g;
    struct pvm_exit e;
    gvm_init(&g);
    gvm_load(&g, GVM_CODE, g_loop_start, g_loop_end);
    gvm_start(&g, GVM_CODE, GVM_STACK_TOP);
    gvm_run(&g, &e); /* a stub (native) exists and ran */
    gvm_expect_hc(&e, 0x40);
    unsigned char v;
    ck_assert_int_eq(mincore(g.ram, 4096, &v), 0);
    gvm_fini(&g);
    pvm__janitor_drain();
    /* The RAM from pvm_vm_alloc_memory() is gone once the queued work is done ... */
    errno = 0;
    ck_assert_int_eq(mincore(g.ram, 4096, &v), -1);
    ck_assert_int_eq(errno, ENOMEM);
    /* ... done by a thread that takes no signal a vCPU's kick or the application could send. */
    uint64_t blk = blocked_of_thread("pvm-janitor");
    const int sigs[] = { SIGUSR1, SIGUSR2, SIGALRM, SIGPROF, SIGCHLD, SIGTERM, SIGINT, SIGRTMIN, SIGRTMAX };
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        ck_assert_msg(blk & (1ull << (sigs[i] - 1)), "the janitor thread (SigBlk %llx) takes signal %d",
                      (unsigned long long)blk, sigs[i]);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("memory");
    TCase *tc = tcase_create("memory");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, free_from_handler_is_refused);
    tcase_add_test(tc, free_while_running);
    tcase_add_test(tc, read_guest_all_or_nothing);
    tcase_add_test(tc, destroy_unmaps_on_the_janitor);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
