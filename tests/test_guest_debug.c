/*
 * tests/test_guest_debug.c - pvm_vcpu_set_guest_debug(): single steps end
 * after exactly one instruction (also one the library emulates or completes),
 * caught exceptions exit before the guest sees them with the state at the
 * fault, and nothing is caught once debugging is off.  Tiny guests on the
 * backend PVM_TEST_BACKEND names (native by default).
 */
#include <stdio.h>
#include <string.h>

#include "guestvm.h"
#include "testutil.h"

#define HC(n) GVM_HC(n)

static uint64_t gaddr(const uint8_t *block_start, const uint8_t *label)
{
    return GVM_CODE + (uint64_t)(label - block_start);
}

static void set_debug(struct gvm *g, uint32_t flags, uint32_t catch_smod)
{
    struct pvm_guest_debug d = PVM_GUEST_DEBUG_INIT;
    d.flags = flags;
    d.catch_smod = catch_smod;
    ck_assert_int_eq(pvm_vcpu_set_guest_debug(g->cpu, &d), 0);
}

static void expect_debug(const struct pvm_exit *e, uint32_t vector, uint64_t rip)
{
    ck_assert_uint_eq(e->reason, PVM_EXIT_DEBUG);
    ck_assert_uint_eq(e->u.debug.vector, vector);
    ck_assert_uint_eq(e->u.debug.rip, rip);
}

extern const uint8_t g_s1[], g_s2[], g_s3[], g_s4[], g_s5[];
GVM_CODE_BLOCK(g_step,
    "mov $1, %rbx\n"
    ".globl g_s1\ng_s1:\n add $2, %rbx\n"
    ".globl g_s2\ng_s2:\n mov $0x4b564df4, %ecx\n xor %eax, %eax\n"
    ".globl g_s3\ng_s3:\n rdmsr\n"                 /* MSR_PVM_EVENT_ENTRY: emulated (#GP in smod) */
    ".globl g_s4\ng_s4:\n" HC(5)                   /* an exit to the application */
    ".globl g_s5\ng_s5:\n mov $7, %rbx\n ud2\n");

START_TEST(single_step_one_instruction_each)
{
    struct gvm g;
    struct pvm_exit e;
    struct pvm_regs r;
    gvm_boot(&g, g_step_start, g_step_end);
    set_debug(&g, PVM_GUEST_DEBUG_SINGLESTEP, 0);

    ck_assert_uint_eq(gvm_run(&g, &e), PVM_EXIT_DEBUG);
    expect_debug(&e, 1, gaddr(g_step_start, g_s1));
    gvm_regs(&g, &r);
    ck_assert_uint_eq(r.rbx, 1);
    ck_assert_uint_eq(r.rip, gaddr(g_step_start, g_s1));
    ck_assert_uint_eq(r.rflags & 0x100, 0); /* the guest does not see the debugger's TF */

    gvm_run(&g, &e);
    expect_debug(&e, 1, gaddr(g_step_start, g_s2));
    gvm_regs(&g, &r);
    ck_assert_uint_eq(r.rbx, 3);
    gvm_run(&g, &e); /* mov */
    gvm_run(&g, &e); /* xor */
    expect_debug(&e, 1, gaddr(g_step_start, g_s3));
    gvm_run(&g, &e); /* RDMSR: emulated, one step */
    expect_debug(&e, 1, gaddr(g_step_start, g_s4));
    gvm_regs(&g, &r);
    ck_assert_uint_eq(r.rax, GVM_ENTRY);
    gvm_run(&g, &e); /* movabs */
    gvm_run(&g, &e); /* SYSCALL: the host call exits first, the step ends when it completes */
    gvm_expect_hc(&e, 5);
    e.u.hypercall.ret = 0x55;
    gvm_run(&g, &e);
    expect_debug(&e, 1, gaddr(g_step_start, g_s5));
    gvm_regs(&g, &r);
    ck_assert_uint_eq(r.rax, 0x55);

    /* Off again: the rest runs to the #UD, which the guest's handler reports. */
    ck_assert_int_eq(pvm_vcpu_set_guest_debug(g.cpu, NULL), 0);
    gvm_run(&g, &e);
    gvm_expect_hc(&e, GVM_HC_REPORT_EXC);
    gvm_regs(&g, &r);
    ck_assert_uint_eq(r.rbx, 7);
    gvm_fini(&g);
}
END_TEST

extern const uint8_t g_c_ud[], g_c_bp_after[], g_c_gp[];
GVM_CODE_BLOCK(g_catch,
    "mov $0x11, %rbx\n"
    ".globl g_c_ud\ng_c_ud:\n ud2\n"
    "int3\n.globl g_c_bp_after\ng_c_bp_after:\n"
    "mov $0x4b564df4, %ecx\n rdmsr\n"              /* an emulated #GP is never caught */
    "movabs $0x8000000000000000, %rcx\n"
    ".globl g_c_gp\ng_c_gp:\n mov (%rcx), %rdx\n"); /* non-canonical: a #GP the guest gets */

START_TEST(caught_exceptions_exit_first)
{
    struct gvm g;
    struct pvm_exit e;
    struct pvm_regs r;
    gvm_boot(&g, g_catch_start, g_catch_end);
    struct pvm_supervisor_event *f = (void *)(g.ram + GVM_FRAME_ADDR);
    set_debug(&g, 0, (1u << PVM_VEC_UD) | (1u << PVM_VEC_BP) | (1u << PVM_VEC_GP));

    ck_assert_uint_eq(gvm_run(&g, &e), PVM_EXIT_DEBUG);
    expect_debug(&e, PVM_VEC_UD, gaddr(g_catch_start, g_c_ud));
    ck_assert_uint_eq(e.u.debug.has_error_code, 0);
    gvm_regs(&g, &r);
    ck_assert_uint_eq(r.rip, gaddr(g_catch_start, g_c_ud));
    ck_assert_uint_eq(r.rsp, GVM_STACK_TOP); /* nothing was delivered */

    /* Passed on with pvm_vcpu_inject: the guest gets it, and it is not caught again. */
    struct pvm_event ev = { .type = PVM_EVENT_EXCEPTION, .vector = PVM_VEC_UD };
    ck_assert_int_eq(pvm_vcpu_inject(g.cpu, &ev), 0);
    gvm_run(&g, &e);
    gvm_expect_hc(&e, GVM_HC_REPORT_EXC);
    ck_assert_uint_eq(f->errcode, 6ull << 32);
    ck_assert_uint_eq(f->rip, gaddr(g_catch_start, g_c_ud));
    f->rip += 2;
    e.u.hypercall.ret = GVM_RETS_SITE;

    gvm_run(&g, &e);
    expect_debug(&e, PVM_VEC_BP, gaddr(g_catch_start, g_c_bp_after)); /* #BP is a trap */

    gvm_run(&g, &e); /* RDMSR emulated, then the non-canonical load */
    expect_debug(&e, PVM_VEC_GP, gaddr(g_catch_start, g_c_gp));
    ck_assert_uint_eq(e.u.debug.has_error_code, 1);
    ck_assert_uint_eq(e.u.debug.error_code, 0);
    gvm_regs(&g, &r);
    ck_assert_uint_eq(r.rax, GVM_ENTRY);
    ck_assert_uint_eq(r.rip, gaddr(g_catch_start, g_c_gp));
    gvm_fini(&g);
}
END_TEST

START_TEST(bad_arguments)
{
    struct gvm g;
    gvm_boot(&g, g_catch_start, g_catch_end);
    struct pvm_guest_debug d = PVM_GUEST_DEBUG_INIT;
    ck_assert_int_eq(pvm_vcpu_set_guest_debug(NULL, &d), PVM_EINVAL);
    d.version = 2;
    ck_assert_int_eq(pvm_vcpu_set_guest_debug(g.cpu, &d), PVM_EVERSION);
    d.version = PVM_GUEST_DEBUG_VERSION;
    d.flags = 2;
    ck_assert_int_eq(pvm_vcpu_set_guest_debug(g.cpu, &d), PVM_EINVAL);
    d.flags = 0;
    d.catch_umod = 1u << PVM_VEC_NMI;
    ck_assert_int_eq(pvm_vcpu_set_guest_debug(g.cpu, &d), PVM_EINVAL);
    ck_assert_str_eq(pvm_last_error(), "pvm_vcpu_set_guest_debug: vector 2 (NMI) is not an exception");
    gvm_fini(&g);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("guest_debug");
    TCase *tc = tcase_create("debug");
    tcase_add_test(tc, single_step_one_instruction_each);
    tcase_add_test(tc, caught_exceptions_exit_first);
    tcase_add_test(tc, bad_arguments);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
