/*
 * tests/test_machine_eret.c - ERETU (§6.2, §1.3), ERETS (§6.3) and the NMI
 * mask they release (§5.8).
 */
#include "test_machine_fake.h"

/* A SYSCALL at @site traps with RIP past it and the hardware RCX/R11. */
static enum pvm_m_result syscall_at(uint64_t site)
{
    cpu->rip = site + 2;
    cpu->gpr[PVM_RCX] = site + 2;
    cpu->gpr[PVM_R11] = 0x246;
    return pvm_m_syscall(cpu, &mem);
}

static void fill_user_pvcs(void)
{
    wr16(PVCS_GPA + 64, 0x30);                   /* user_cs: RPL 3 is OR-ed in */
    wr16(PVCS_GPA + 66, 0x28);                   /* user_ss */
    wr64(PVCS_GPA + 80, 0x0000800000001000ull);  /* non-canonical user_gsbase */
    wr32(PVCS_GPA + 88, 0x3000 | 0x4000 | 0x20000 | 0x80000 | 0x100000 | 0xd5); /* IOPL NT VM VIF VIP + arith */
    wr32(PVCS_GPA + 92, 0x55555555);             /* pkru: not loaded */
    wr64(PVCS_GPA + 96, 0x400000);
    wr64(PVCS_GPA + 104, 0x7fff0000);
    wr64(PVCS_GPA + 112, 0x400abc);
    wr64(PVCS_GPA + 120, 0x202);
}

START_TEST(eretu)
{
    fill_user_pvcs();
    set_pvcs_flags(PVM_EVENT_FLAGS_IP); /* IF = 0 (guest cleared it before ERETU) */
    cpu->nmi_masked = true;
    cpu->gpr[PVM_RSP] = 0x6f000;
    cpu->gs_base = KERNEL_GS;
    ck_assert_int_eq(syscall_at(RETU_RIP), PVM_M_RESUME);

    ck_assert_uint_eq(cpu->mode, PVM_MODE_USER);
    ck_assert(!cpu->nmi_masked);
    ck_assert_uint_eq(cpu->msr_supervisor_rsp, 0x6f000);
    ck_assert_uint_eq(cpu->cr3, UROOT);
    ck_assert_uint_eq(cpu->msr_switch_cr3, KROOT);
    ck_assert_uint_eq(pvcs_flags(), 0);         /* IP cleared */
    ck_assert_uint_eq(cpu->cs, 0x33);
    ck_assert_uint_eq(cpu->ss, 0x2b);
    ck_assert_uint_eq(cpu->gs_base, 0xffff800000001000ull); /* §10.7 */
    /* §10.8: | IF, filtered: IOPL, VM, VIF, VIP dropped; NT kept; bit 1 set. */
    ck_assert_uint_eq(cpu->rflags, 0x4000 | 0x200 | 0xd5 | 0x2);
    ck_assert_uint_eq(cpu->rip, 0x400000);
    ck_assert_uint_eq(cpu->gpr[PVM_RSP], 0x7fff0000);
    ck_assert_uint_eq(cpu->gpr[PVM_RCX], 0x400abc);
    ck_assert_uint_eq(cpu->gpr[PVM_R11], 0x202);
    ck_assert_uint_eq(cpu->msr_kernel_gs_base, KERNEL_GS);
    ck_assert_int_eq(fm.nflush, 0);
}
END_TEST

START_TEST(eretu_then_syscall_round_trip)
{
    fill_user_pvcs();
    wr16(PVCS_GPA + 64, 0x33);
    wr16(PVCS_GPA + 66, 0x2b);
    wr64(PVCS_GPA + 80, 0x7000);
    cpu->gpr[PVM_RSP] = 0x6f000;
    ck_assert_int_eq(syscall_at(RETU_RIP), PVM_M_RESUME);
    ck_assert_int_eq(syscall_at(0x400100), PVM_M_RESUME);  /* user syscall */
    ck_assert_uint_eq(cpu->mode, PVM_MODE_SUPERVISOR);
    ck_assert_uint_eq(cpu->gpr[PVM_RSP], 0x6f000);          /* SUPERVISOR_RSP saved by ERETU */
    ck_assert_uint_eq(cpu->rip, LSTAR);
    ck_assert_uint_eq(cpu->cr3, KROOT);
    ck_assert_uint_eq(cpu->gs_base, KERNEL_GS);
    ck_assert_uint_eq(rd64(PVCS_GPA + 80), 0x7000);
    ck_assert_uint_eq(rd64(PVCS_GPA + 96), 0x400102);
}
END_TEST

START_TEST(eretu_without_pvcs)
{
    cpu->msr_vcpu_struct = 0;
    cpu->gpr[PVM_RSP] = 0x6f000;
    ck_assert_int_eq(syscall_at(RETU_RIP), PVM_M_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason, "ERETU: PVCS not mapped (MSR_PVM_VCPU_STRUCT 0)");
    /* §10.24: the switch already happened. */
    ck_assert_uint_eq(cpu->mode, PVM_MODE_USER);
    ck_assert_uint_eq(cpu->cr3, UROOT);
    ck_assert_uint_eq(cpu->msr_supervisor_rsp, 0x6f000);
}
END_TEST

START_TEST(eretu_delivers_pending_irq)
{
    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = 0x30 };
    fill_user_pvcs();
    wr16(PVCS_GPA + 64, 0x33);
    wr16(PVCS_GPA + 66, 0x2b);
    set_pvcs_flags(0);
    ck_assert_int_eq(pvm_m_queue_event(cpu, &ev), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IP);
    ck_assert_int_eq(syscall_at(RETU_RIP), PVM_M_RESUME);
    /* In umod the IRQ is deliverable: it arrives as a user event at once. */
    ck_assert_uint_eq(cpu->mode, PVM_MODE_SUPERVISOR);
    ck_assert_uint_eq(cpu->rip, ENTRY);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 0x30);
    ck_assert_uint_eq(rd64(PVCS_GPA + 96), 0x400000);
    ck_assert_uint_eq(pvcs_flags(), 0);
}
END_TEST

static const uint64_t frame_at = 0x6ff00;

static void put_frame(uint64_t rflags)
{
    wr64(frame_at + 0, (14ull << 32) | 7);
    wr64(frame_at + 8, 0x123456);
    wr64(frame_at + 16, 0x77);      /* cs: ignored */
    wr64(frame_at + 24, rflags);
    wr64(frame_at + 32, 0x6ffc8);
    wr64(frame_at + 40, 0x88);      /* ss: ignored */
    wr64(frame_at + 48, 0xcccc);
    wr64(frame_at + 56, 0x1111);
    cpu->gpr[PVM_RSP] = frame_at;
}

START_TEST(erets)
{
    put_frame(0x3000 | 0x246);
    set_pvcs_flags(PVM_EVENT_FLAGS_IP); /* IF 0 -> 1 clears IP */
    cpu->nmi_masked = true;
    ck_assert_int_eq(syscall_at(RETS_RIP), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->rip, 0x123456);
    ck_assert_uint_eq(cpu->gpr[PVM_RSP], 0x6ffc8);
    ck_assert_uint_eq(cpu->gpr[PVM_RCX], 0xcccc);
    ck_assert_uint_eq(cpu->gpr[PVM_R11], 0x1111);
    ck_assert_uint_eq(cpu->rflags, 0x246);      /* IOPL filtered */
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IF);
    ck_assert(!cpu->nmi_masked);
    ck_assert_uint_eq(cpu->mode, PVM_MODE_SUPERVISOR);
    ck_assert_uint_eq(cpu->cs, 0x33);
    ck_assert_uint_eq(cpu->ss, 0x2b);
    ck_assert_uint_eq(cpu->cr3, KROOT);
}
END_TEST

START_TEST(erets_if_unchanged_keeps_ip)
{
    /* §10.31: IP is cleared only when IF goes from 0 to 1. */
    put_frame(0x246);
    set_pvcs_flags(PVM_EVENT_FLAGS_IF | PVM_EVENT_FLAGS_IP);
    ck_assert_int_eq(syscall_at(RETS_RIP), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IF | PVM_EVENT_FLAGS_IP);

    put_frame(0x046);
    set_pvcs_flags(PVM_EVENT_FLAGS_IP);
    ck_assert_int_eq(syscall_at(RETS_RIP), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IP);
    ck_assert_uint_eq(cpu->rflags, 0x046);
}
END_TEST

START_TEST(erets_if_to_zero)
{
    put_frame(0x046);
    ck_assert_int_eq(syscall_at(RETS_RIP), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), 0);
}
END_TEST

START_TEST(erets_unreadable_frame)
{
    cpu->gpr[PVM_RSP] = FAKE_RAM_SIZE - 32;
    ck_assert_int_eq(syscall_at(RETS_RIP), PVM_M_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason, "ERETS: cannot read the 64-byte frame at RSP 0xfffe0");
}
END_TEST

START_TEST(eretu_wins_on_tie)
{
    wrmsr_ok(MSR_PVM_RETS_RIP, RETU_RIP);
    fill_user_pvcs();
    put_frame(0x246);
    ck_assert_int_eq(syscall_at(RETU_RIP), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->mode, PVM_MODE_USER);
}
END_TEST

START_TEST(nmi_masked_until_erets)
{
    struct pvm_event nmi = { .type = PVM_EVENT_NMI, .vector = 2 };
    const uint64_t frame = ((KSTACK - REDZONE) & ~0xfull) - 64;

    ck_assert_int_eq(pvm_m_queue_event(cpu, &nmi), 0);
    ck_assert(pvm_m_event_ready(cpu, &mem));
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert(cpu->nmi_masked);
    ck_assert_uint_eq(cpu->rip, ENTRY + 256);            /* §10.21: stack frame in smod */
    ck_assert_uint_eq(rd64(frame), 2ull << 32);
    ck_assert_uint_eq(rd64(frame + 8), 0x10000);

    /* A second NMI waits, whatever IF says. */
    ck_assert_int_eq(pvm_m_queue_event(cpu, &nmi), 0);
    set_pvcs_flags(PVM_EVENT_FLAGS_IF);
    ck_assert(!pvm_m_event_ready(cpu, &mem));
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->rip, ENTRY + 256);
    ck_assert(cpu->nmi_pending);

    /* ERETS releases the mask: the pending NMI is delivered on the way out. */
    ck_assert_int_eq(syscall_at(RETS_RIP), PVM_M_RESUME);
    ck_assert(!cpu->nmi_pending);
    ck_assert(cpu->nmi_masked);
    ck_assert_uint_eq(cpu->rip, ENTRY + 256);
    ck_assert_uint_eq(rd64(cpu->gpr[PVM_RSP] + 8), 0x10000); /* returned-to RIP in the new frame */
}
END_TEST

START_TEST(nmi_in_umod_and_eretu_unmasks)
{
    struct pvm_event nmi = { .type = PVM_EVENT_NMI };
    go_user();
    ck_assert_int_eq(pvm_m_queue_event(cpu, &nmi), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 2);
    ck_assert_uint_eq(cpu->rip, ENTRY);
    ck_assert(cpu->nmi_masked);
    fill_user_pvcs();
    ck_assert_int_eq(syscall_at(RETU_RIP), PVM_M_RESUME);
    ck_assert(!cpu->nmi_masked);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("machine_eret");
    TCase *tc = fake_tcase("eret");
    tcase_add_test(tc, eretu);
    tcase_add_test(tc, eretu_then_syscall_round_trip);
    tcase_add_test(tc, eretu_without_pvcs);
    tcase_add_test(tc, eretu_delivers_pending_irq);
    tcase_add_test(tc, erets);
    tcase_add_test(tc, erets_if_unchanged_keeps_ip);
    tcase_add_test(tc, erets_if_to_zero);
    tcase_add_test(tc, erets_unreadable_frame);
    tcase_add_test(tc, eretu_wins_on_tie);
    tcase_add_test(tc, nmi_masked_until_erets);
    tcase_add_test(tc, nmi_in_umod_and_eretu_unmasks);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return pvm_test_run_suite(suite());
}
