/*
 * tests/test_memory.c - guest memory under concurrency: freeing memory while
 * vCPUs run, from inside a host-call handler, and all-or-nothing guest reads.
 * Run under -DPVM_ASAN=ON to make use-after-unmap strict.
 */
#include <pthread.h>
#include <stdlib.h>

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

int main(void)
{
    Suite *s = suite_create("memory");
    TCase *tc = tcase_create("memory");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, free_from_handler_is_refused);
    tcase_add_test(tc, free_while_running);
    tcase_add_test(tc, read_guest_all_or_nothing);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
