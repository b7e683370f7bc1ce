/*
 * tests/test_machine_event.c - event delivery (§5.1-§5.6, §5.10, §5.12),
 * byte by byte against pvm-abi.md.
 */
#include "test_machine_fake.h"

#define SENTINEL32 0xa5a5a5a5u
#define SENTINEL64 0x5a5a5a5a5a5a5a5aull

static void fill_sentinels(void)
{
    wr32(PVCS_GPA + 8, SENTINEL32);   /* event_errcode */
    wr32(PVCS_GPA + 12, SENTINEL32);  /* event_vector */
    wr64(PVCS_GPA + 16, SENTINEL64);  /* cr2 */
    wr32(PVCS_GPA + 92, 0xdeadbeef);  /* pkru */
}

static void assert_entry(uint64_t rip, uint64_t rsp)
{
    ck_assert_uint_eq(cpu->rip, rip);
    ck_assert_uint_eq(cpu->gpr[PVM_RCX], rip);
    ck_assert_uint_eq(cpu->rflags, 0x2);
    ck_assert_uint_eq(cpu->gpr[PVM_R11], 0x202);
    ck_assert_uint_eq(cpu->gpr[PVM_RSP], rsp);
    ck_assert_uint_eq(cpu->mode, PVM_MODE_SUPERVISOR);
    ck_assert_uint_eq(cpu->cs, 0x33);
    ck_assert_uint_eq(cpu->ss, 0x2b);
    ck_assert_uint_eq(pvcs_flags() & PVM_EVENT_FLAGS_IF, 0);
}

/* ---- user events (§5.3) --------------------------------------------------- */

START_TEST(user_syscall)
{
    go_user();
    fill_sentinels();
    cpu->gpr[PVM_RAX] = 39;
    cpu->gpr[PVM_RDI] = 0x1111;
    ck_assert_int_eq(pvm_m_syscall(cpu, &mem), PVM_M_RESUME);

    ck_assert_uint_eq(rd16(PVCS_GPA + 64), 0x33);           /* user_cs */
    ck_assert_uint_eq(rd16(PVCS_GPA + 66), 0x2b);           /* user_ss */
    ck_assert_uint_eq(rd64(PVCS_GPA + 80), 0x7000001234ull); /* user_gsbase */
    ck_assert_uint_eq(rd32(PVCS_GPA + 88), 0x246);          /* eflags */
    ck_assert_uint_eq(rd32(PVCS_GPA + 92), 0);              /* pkru written as 0 (§10.6) */
    ck_assert_uint_eq(rd64(PVCS_GPA + 96), 0x401002);       /* rip */
    ck_assert_uint_eq(rd64(PVCS_GPA + 104), 0x7ffff000);    /* rsp */
    ck_assert_uint_eq(rd64(PVCS_GPA + 112), 0x401002);      /* rcx */
    ck_assert_uint_eq(rd64(PVCS_GPA + 120), 0x246);         /* r11 */
    /* §10.5: SYSCALL leaves errcode, vector and cr2 alone. */
    ck_assert_uint_eq(rd32(PVCS_GPA + 8), SENTINEL32);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), SENTINEL32);
    ck_assert_uint_eq(rd64(PVCS_GPA + 16), SENTINEL64);

    assert_entry(LSTAR, SUP_RSP);
    ck_assert_uint_eq(cpu->cr3, KROOT);             /* CR3 <-> SWITCH_CR3 */
    ck_assert_uint_eq(cpu->msr_switch_cr3, UROOT);
    ck_assert_uint_eq(cpu->gs_base, KERNEL_GS);     /* GS base <- KERNEL_GS_BASE */
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 39);       /* other GPRs untouched */
    ck_assert_uint_eq(cpu->gpr[PVM_RDI], 0x1111);
    ck_assert_int_eq(fm.nflush, 0);                 /* no TLB flush on a mode switch */
}
END_TEST

START_TEST(user_page_fault)
{
    go_user();
    fill_sentinels();
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_PF, true, 6, 0xdead000), PVM_M_RESUME);
    ck_assert_uint_eq(rd32(PVCS_GPA + 8), 6);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 14);
    ck_assert_uint_eq(rd64(PVCS_GPA + 16), 0xdead000);
    ck_assert_uint_eq(rd64(PVCS_GPA + 96), 0x401002);
    assert_entry(ENTRY + 0, SUP_RSP);
}
END_TEST

START_TEST(user_interrupt_keeps_stale_errcode)
{
    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = 0x40 };
    go_user();
    fill_sentinels();
    ck_assert_int_eq(pvm_m_queue_event(cpu, &ev), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 0x40);
    ck_assert_uint_eq(rd32(PVCS_GPA + 8), SENTINEL32); /* §10.4 */
    ck_assert_uint_eq(rd64(PVCS_GPA + 16), SENTINEL64);
    assert_entry(ENTRY, SUP_RSP);
}
END_TEST

START_TEST(user_event_clears_if_even_if_pvcs_if_was_set)
{
    go_user();
    set_pvcs_flags(PVM_EVENT_FLAGS_IF | PVM_EVENT_FLAGS_IP);
    ck_assert_int_eq(pvm_m_syscall(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IP); /* §10.3: IF cleared, IP kept */
}
END_TEST

START_TEST(user_int80)
{
    go_user();
    ck_assert_int_eq(pvm_m_int80(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 0x80);
    assert_entry(ENTRY, SUP_RSP);
}
END_TEST

START_TEST(user_event_without_pvcs_triple_faults)
{
    go_user();
    cpu->msr_vcpu_struct = 0;
    ck_assert_int_eq(pvm_m_syscall(cpu, &mem), PVM_M_SHUTDOWN);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason,
                     "user SYSCALL: PVCS not mapped (MSR_PVM_VCPU_STRUCT 0)");
    ck_assert_uint_eq(cpu->mode, PVM_MODE_USER); /* nothing else changed */
    ck_assert_uint_eq(cpu->cr3, UROOT);

    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_UD, false, 0, 0), PVM_M_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason,
                     "user event (vector 6): PVCS not mapped (MSR_PVM_VCPU_STRUCT 0)");
}
END_TEST

START_TEST(user32_syscall_enosys)
{
    go_user();
    cpu->cs = PVM_USER32_CS;
    cpu->gpr[PVM_RAX] = 4;
    ck_assert_int_eq(pvm_m_syscall(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], (uint64_t)-38); /* §10.19 */
    ck_assert_uint_eq(cpu->mode, PVM_MODE_USER);
    ck_assert_uint_eq(cpu->rip, 0x401002);
}
END_TEST

START_TEST(user32_event_saves_compat_cs)
{
    go_user();
    cpu->cs = PVM_USER32_CS;
    ck_assert_int_eq(pvm_m_int80(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd16(PVCS_GPA + 64), 0x23);
    ck_assert_uint_eq(cpu->cs, 0x33);
}
END_TEST

/* ---- supervisor exceptions (§5.4) ----------------------------------------- */

START_TEST(supervisor_exception_frame)
{
    const uint64_t frame = ((KSTACK - REDZONE) & ~0xfull) - 64;
    cpu->gpr[PVM_RCX] = 0xc0c0;
    cpu->gpr[PVM_R11] = 0x1111;
    cpu->rip = 0x12345;
    ck_assert_uint_eq(frame, 0x6ffb0);
    ck_assert_int_eq(pvm_m_deliver(cpu, &mem, PVM_VEC_GP, true, 0x18), PVM_M_RESUME);

    ck_assert_uint_eq(rd64(frame + 0), (13ull << 32) | 0x18);
    ck_assert_uint_eq(rd64(frame + 8), 0x12345);
    ck_assert_uint_eq(rd64(frame + 16), 0x10);      /* STAR[47:32] & ~3 */
    ck_assert_uint_eq(rd64(frame + 24), 0x246);     /* guest RFLAGS with the virtual IF */
    ck_assert_uint_eq(rd64(frame + 32), KSTACK);
    ck_assert_uint_eq(rd64(frame + 40), 0x18);      /* CS + 8 */
    ck_assert_uint_eq(rd64(frame + 48), 0xc0c0);
    ck_assert_uint_eq(rd64(frame + 56), 0x1111);
    assert_entry(ENTRY + 256, frame);
    ck_assert_uint_eq(cpu->cr3, KROOT);             /* no CR3 / GS change */
    ck_assert_uint_eq(cpu->msr_switch_cr3, UROOT);
}
END_TEST

START_TEST(supervisor_exception_without_error_code)
{
    const uint64_t frame = ((KSTACK - REDZONE) & ~0xfull) - 64;
    set_pvcs_flags(0);
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_UD, false, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(rd64(frame + 0), 6ull << 32);
    ck_assert_uint_eq(rd64(frame + 24), 0x46); /* IF clear: it was 0 in the PVCS */
    assert_entry(ENTRY + 256, frame);
}
END_TEST

START_TEST(supervisor_exception_with_hw_error_code)
{
    const uint64_t frame = ((KSTACK - REDZONE) & ~0xfull) - 64;
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_NP, true, 0x2b, 0), PVM_M_RESUME);
    ck_assert_uint_eq(rd64(frame), (11ull << 32) | 0x2b);
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_DE, true, 0x77, 0), PVM_M_RESUME);
    /* Nested: the second frame sits below the first one's red zone. */
    ck_assert_uint_eq(cpu->gpr[PVM_RSP], ((frame - REDZONE) & ~0xfull) - 64);
    ck_assert_uint_eq(rd64(cpu->gpr[PVM_RSP]), 0); /* #DE: vector 0, no error code */
    ck_assert_uint_eq(rd64(cpu->gpr[PVM_RSP] + 32), frame);
}
END_TEST

START_TEST(supervisor_page_fault_cr2)
{
    const uint64_t frame = ((KSTACK - REDZONE) & ~0xfull) - 64;
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_PF, true, 2, 0xbad000), PVM_M_RESUME);
    ck_assert_uint_eq(rd64(PVCS_GPA + 16), 0xbad000);
    ck_assert_uint_eq(rd64(frame), (14ull << 32) | 2);
    ck_assert_uint_eq(cpu->cr2, 0xbad000);
}
END_TEST

START_TEST(supervisor_exception_frame_write_fails)
{
    fm.hole_lo = 0x6f000;
    fm.hole_hi = 0x70000;
    ck_assert_int_eq(pvm_m_deliver(cpu, &mem, PVM_VEC_UD, false, 0), PVM_M_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason, "supervisor exception (vector 6): cannot write "
                     "the 64-byte frame at 0x6ffb0 (RSP 0x70008)");
    ck_assert_uint_eq(cpu->exit.u.shutdown.rip, 0x10000);
}
END_TEST

START_TEST(supervisor_pf_without_pvcs_triple_faults)
{
    const uint64_t frame = ((KSTACK - REDZONE) & ~0xfull) - 64;
    cpu->msr_vcpu_struct = 0;
    /* §10.22: other exceptions still work without a PVCS. */
    ck_assert_int_eq(pvm_m_deliver(cpu, &mem, PVM_VEC_UD, false, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RSP], frame);
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_PF, true, 0, 0x1000), PVM_M_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason,
                     "supervisor #PF: PVCS not mapped for the CR2 store (MSR_PVM_VCPU_STRUCT 0)");
}
END_TEST

/* ---- supervisor interrupts (§5.5) ----------------------------------------- */

START_TEST(supervisor_interrupt)
{
    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = 0x41 };
    fill_sentinels();
    cpu->gpr[PVM_RCX] = 0xc1;
    cpu->gpr[PVM_R11] = 0x11;
    ck_assert_int_eq(pvm_m_queue_event(cpu, &ev), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd32(PVCS_GPA + 88), 0x246);
    ck_assert_uint_eq(rd64(PVCS_GPA + 96), 0x10000);
    ck_assert_uint_eq(rd64(PVCS_GPA + 104), KSTACK);
    ck_assert_uint_eq(rd64(PVCS_GPA + 112), 0xc1);
    ck_assert_uint_eq(rd64(PVCS_GPA + 120), 0x11);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 0x41);
    ck_assert_uint_eq(rd32(PVCS_GPA + 8), SENTINEL32);
    ck_assert_uint_eq(rd64(PVCS_GPA + 16), SENTINEL64);
    ck_assert_uint_eq(rd32(PVCS_GPA + 92), 0xdeadbeef); /* pkru untouched */
    assert_entry(ENTRY + 512, (KSTACK - REDZONE) & ~0xfull);
    ck_assert_uint_eq(cpu->gpr[PVM_RSP], 0x6fff0);
}
END_TEST

START_TEST(supervisor_interrupt_without_pvcs)
{
    cpu->msr_vcpu_struct = 0;
    ck_assert_int_eq(pvm_m_deliver(cpu, &mem, 0x40, false, 0), PVM_M_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason,
                     "supervisor interrupt (vector 64): PVCS not mapped (MSR_PVM_VCPU_STRUCT 0)");
}
END_TEST

START_TEST(supervisor_int80)
{
    ck_assert_int_eq(pvm_m_int80(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 0x80);
    assert_entry(ENTRY + 512, 0x6fff0);
}
END_TEST

/* ---- §5.10 / §5.12 ---------------------------------------------------------- */

START_TEST(smod_with_foreign_cs_triple_faults)
{
    cpu->cs = 0x23;
    ck_assert_int_eq(pvm_m_syscall(cpu, &mem), PVM_M_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason,
                     "smod exit with hardware CS 0x23 SS 0x2b (must be 0x33/0x2b)");
    cpu->cs = 0x33;
    cpu->ss = 0x3b;
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_UD, false, 0, 0), PVM_M_SHUTDOWN);
}
END_TEST

START_TEST(double_fault_is_triple_fault)
{
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_DF, true, 0, 0), PVM_M_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason, "double fault (#DF) at RIP 0x10000");
}
END_TEST

START_TEST(host_events_are_invisible)
{
    struct pvm_cpu before = *cpu;
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_NMI, false, 0, 0), PVM_M_RESUME);
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_MC, false, 0, 0), PVM_M_RESUME);
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, 0xec, false, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->rip, before.rip);
    ck_assert_uint_eq(cpu->gpr[PVM_RSP], before.gpr[PVM_RSP]);
}
END_TEST

START_TEST(unknown_exception_is_internal_error)
{
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, 21, true, 0, 0), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_INTERNAL_ERROR);
}
END_TEST

START_TEST(deliver_rejects_bad_vector)
{
    ck_assert_int_eq(pvm_m_deliver(cpu, &mem, 300, false, 0), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_INTERNAL_ERROR);
}
END_TEST

/* ---- a debugger's catch (pvm_mem.catch_exc) ------------------------------ */

static unsigned asked_vector, asked_mode, asked;

static bool catch_ud_pf(void *o, unsigned vector, uint32_t mode)
{
    (void)o;
    asked_vector = vector;
    asked_mode = mode;
    asked++;
    return vector == PVM_VEC_UD || (vector == PVM_VEC_PF && mode == PVM_MODE_SUPERVISOR);
}

START_TEST(caught_exception_is_not_delivered)
{
    mem.catch_exc = catch_ud_pf;
    asked = 0;
    fill_sentinels();
    uint8_t before[FAKE_RAM_SIZE / 16];
    memcpy(before, fm.ram + KSTACK - sizeof(before) / 2, sizeof(before));
    uint64_t rsp = cpu->gpr[PVM_RSP], rip = cpu->rip;
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_PF, true, 2, 0xbad000), PVM_M_EXIT);
    ck_assert_uint_eq(asked, 1);
    ck_assert_uint_eq(asked_vector, PVM_VEC_PF);
    ck_assert_uint_eq(asked_mode, PVM_MODE_SUPERVISOR);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_DEBUG);
    ck_assert_uint_eq(cpu->exit.u.debug.vector, PVM_VEC_PF);
    ck_assert_uint_eq(cpu->exit.u.debug.has_error_code, 1);
    ck_assert_uint_eq(cpu->exit.u.debug.error_code, 2);
    ck_assert_uint_eq(cpu->exit.u.debug.cr2, 0xbad000);
    ck_assert_uint_eq(cpu->exit.u.debug.rip, rip);
    /* Nothing delivered: same RIP and RSP, no frame written. */
    ck_assert_uint_eq(cpu->rip, rip);
    ck_assert_uint_eq(cpu->gpr[PVM_RSP], rsp);
    ck_assert_int_eq(memcmp(before, fm.ram + KSTACK - sizeof(before) / 2, sizeof(before)), 0);
    /* Not asked for: delivered as usual. */
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_DE, false, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(asked, 2);
    ck_assert_uint_eq(cpu->rip, ENTRY + 256);
}
END_TEST

START_TEST(injected_exception_is_never_caught)
{
    mem.catch_exc = catch_ud_pf;
    asked = 0;
    struct pvm_event ev = { .type = PVM_EVENT_EXCEPTION, .vector = PVM_VEC_UD };
    ck_assert_int_eq(pvm_m_queue_event(cpu, &ev), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(asked, 0);
    ck_assert_uint_eq(cpu->rip, ENTRY + 256);
    ck_assert_uint_eq(rd64(cpu->gpr[PVM_RSP]), (uint64_t)PVM_VEC_UD << 32);
}
END_TEST

START_TEST(user_exception_caught_by_mode)
{
    mem.catch_exc = catch_ud_pf;
    go_user();
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_PF, true, 6, 0xdead000), PVM_M_RESUME); /* umod #PF: not asked for */
    ck_assert_uint_eq(asked_mode, PVM_MODE_USER);
    go_user();
    uint64_t rip = cpu->rip;
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_UD, false, 0, 0), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.debug.vector, PVM_VEC_UD);
    ck_assert_uint_eq(cpu->mode, PVM_MODE_USER);
    ck_assert_uint_eq(cpu->rip, rip);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("machine_event");
    TCase *u = fake_tcase("user");
    tcase_add_test(u, user_syscall);
    tcase_add_test(u, user_page_fault);
    tcase_add_test(u, user_interrupt_keeps_stale_errcode);
    tcase_add_test(u, user_event_clears_if_even_if_pvcs_if_was_set);
    tcase_add_test(u, user_int80);
    tcase_add_test(u, user_event_without_pvcs_triple_faults);
    tcase_add_test(u, user32_syscall_enosys);
    tcase_add_test(u, user32_event_saves_compat_cs);
    suite_add_tcase(s, u);
    TCase *k = fake_tcase("supervisor");
    tcase_add_test(k, supervisor_exception_frame);
    tcase_add_test(k, supervisor_exception_without_error_code);
    tcase_add_test(k, supervisor_exception_with_hw_error_code);
    tcase_add_test(k, supervisor_page_fault_cr2);
    tcase_add_test(k, supervisor_exception_frame_write_fails);
    tcase_add_test(k, supervisor_pf_without_pvcs_triple_faults);
    tcase_add_test(k, supervisor_interrupt);
    tcase_add_test(k, supervisor_interrupt_without_pvcs);
    tcase_add_test(k, supervisor_int80);
    suite_add_tcase(s, k);
    TCase *x = fake_tcase("exits");
    tcase_add_test(x, smod_with_foreign_cs_triple_faults);
    tcase_add_test(x, double_fault_is_triple_fault);
    tcase_add_test(x, host_events_are_invisible);
    tcase_add_test(x, unknown_exception_is_internal_error);
    tcase_add_test(x, deliver_rejects_bad_vector);
    tcase_add_test(x, caught_exception_is_not_delivered);
    tcase_add_test(x, injected_exception_is_never_caught);
    tcase_add_test(x, user_exception_caught_by_mode);
    suite_add_tcase(s, x);
    return s;
}

int main(void)
{
    return pvm_test_run_suite(suite());
}
