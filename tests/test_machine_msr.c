/*
 * tests/test_machine_msr.c - reset state and the MSRs of §2: reset values,
 * read-back quirks, every rejected write.
 */
#include "test_machine_fake.h"

static uint64_t rd(uint32_t idx)
{
    uint64_t v = 0x5555;
    ck_assert_int_eq(pvm_m_rdmsr(cpu, &mem, idx, &v, false), 0);
    return v;
}

static int wr(uint32_t idx, uint64_t v)
{
    return pvm_m_wrmsr(cpu, &mem, idx, v, false);
}

START_TEST(reset_values)
{
    ck_assert_uint_eq(rd(MSR_PVM_LINEAR_ADDRESS_RANGE), TEST_RANGE);
    ck_assert_uint_eq(TEST_RANGE, 0xffffffffffd2ffb2ull); /* §8.2 worked example */
    ck_assert_uint_eq(cpu->msr_linear_range_default, TEST_RANGE);
    ck_assert_uint_eq(rd(MSR_PVM_VCPU_STRUCT), 0);
    ck_assert_uint_eq(rd(MSR_PVM_SUPERVISOR_RSP), 0);
    ck_assert_uint_eq(rd(MSR_PVM_SUPERVISOR_REDZONE), 0);
    ck_assert_uint_eq(rd(MSR_PVM_EVENT_ENTRY), 0);
    ck_assert_uint_eq(rd(MSR_PVM_RETU_RIP), 0xfffffffffffffffeull);
    ck_assert_uint_eq(rd(MSR_PVM_RETS_RIP), 0xfffffffffffffffeull);
    ck_assert_uint_eq(rd(MSR_PVM_SWITCH_CR3), 0);
    ck_assert_uint_eq(rd(PVM_MSR_STAR), 0x0023001000000000ull);
    ck_assert_uint_eq(rd(PVM_MSR_LSTAR), 0);
    ck_assert_uint_eq(rd(PVM_MSR_KERNEL_GS_BASE), 0);
    ck_assert_uint_eq(rd(PVM_MSR_EFER), 0xd01); /* SCE LME LMA NXE */
    ck_assert_uint_eq(rd(PVM_MSR_IA32_SYSENTER_CS), 0);
    ck_assert_uint_eq(rd(PVM_MSR_IA32_DEBUGCTL), 0);
    ck_assert_uint_eq(cpu->mode, PVM_MODE_SUPERVISOR);
    ck_assert_uint_eq(cpu->cs, 0x33);
    ck_assert_uint_eq(cpu->ss, 0x2b);
    ck_assert_uint_eq(cpu->rflags, 0x2);
    ck_assert_uint_eq(cpu->cr0, 0x80050033);
    ck_assert_uint_eq(cpu->cr4, 0x10620);
    ck_assert(!cpu->nmi_masked);
    ck_assert(!pvm_m_irq_enabled(cpu, &mem)); /* no PVCS: IF reads 0 */
    ck_assert_uint_eq(cpu->pending_exit, PVM_EXIT_NONE);
}
END_TEST

START_TEST(reset_keeps_redzone_and_cpuid)
{
    struct pvm_cpuid_entry e = { .function = 1, .eax = 0x806f0 };
    ck_assert_int_eq(wr(MSR_PVM_SUPERVISOR_REDZONE, 128), 0);
    ck_assert_int_eq(wr(MSR_PVM_RETU_RIP, 0x1000), 0);
    ck_assert_int_eq(pvm_m_set_cpuid(cpu, &e, 1), 0);
    cpu->vcpu_id = 3;
    cpu->nmi_masked = true;
    pvm_m_reset(cpu, TEST_RANGE);
    ck_assert_uint_eq(rd(MSR_PVM_SUPERVISOR_REDZONE), 128); /* §10.11 */
    ck_assert_uint_eq(rd(MSR_PVM_RETU_RIP), 0xfffffffffffffffeull);
    ck_assert(!cpu->nmi_masked);
    ck_assert_uint_eq(cpu->vcpu_id, 3);
    uint32_t r[4];
    pvm_m_cpuid(cpu, 1, 0, r);
    ck_assert_uint_eq(r[0], 0x806f0);
}
END_TEST

START_TEST(ret_rips_stored_plus2)
{
    ck_assert_int_eq(wr(MSR_PVM_RETU_RIP, 0x30000), 0);
    ck_assert_uint_eq(cpu->msr_retu_rip_plus2, 0x30002);
    ck_assert_uint_eq(rd(MSR_PVM_RETU_RIP), 0x30000);
    ck_assert_int_eq(wr(MSR_PVM_RETS_RIP, 0xffffffffffffffffull), 0);
    ck_assert_uint_eq(cpu->msr_rets_rip_plus2, 1);
    ck_assert_uint_eq(rd(MSR_PVM_RETS_RIP), 0xffffffffffffffffull);
}
END_TEST

START_TEST(plain_pvm_msrs)
{
    ck_assert_int_eq(wr(MSR_PVM_SUPERVISOR_RSP, 0x1234567), 0);
    ck_assert_uint_eq(rd(MSR_PVM_SUPERVISOR_RSP), 0x1234567);
    ck_assert_int_eq(wr(MSR_PVM_SUPERVISOR_REDZONE, 16), 0);
    ck_assert_uint_eq(rd(MSR_PVM_SUPERVISOR_REDZONE), 16);
    ck_assert_int_eq(wr(MSR_PVM_SWITCH_CR3, 0xabc000), 0);
    ck_assert_uint_eq(rd(MSR_PVM_SWITCH_CR3), 0xabc000);
    ck_assert_int_eq(fm.nflush, 0); /* SWITCH_CR3 write does not flush */
    uint64_t v;
    ck_assert_int_eq(pvm_m_rdmsr(cpu, &mem, 0x4b564df8, &v, false), -1);
    ck_assert_int_eq(wr(0x4b564df8, 0), -1);
}
END_TEST

START_TEST(linear_range_checks)
{
    /* filler bytes not 0xff */
    ck_assert_int_eq(wr(MSR_PVM_LINEAR_ADDRESS_RANGE, TEST_RANGE & ~0x100ull), -1);
    /* outside the host default */
    ck_assert_int_eq(wr(MSR_PVM_LINEAR_ADDRESS_RANGE, PVM_LA_RANGE_MAKE(0x1b1, 0x1d2, 0x1ff, 0x1ff)), -1);
    ck_assert_int_eq(wr(MSR_PVM_LINEAR_ADDRESS_RANGE, PVM_LA_RANGE_MAKE(0x1b2, 0x1d3, 0x1ff, 0x1ff)), -1);
    /* §10.14: inverted / empty rejected for the guest, allowed for the host */
    uint64_t inv = PVM_LA_RANGE_MAKE(0x1c0, 0x1b8, 0x1ff, 0x1ff);
    ck_assert_int_eq(wr(MSR_PVM_LINEAR_ADDRESS_RANGE, inv), -1);
    ck_assert_int_eq(wr(MSR_PVM_LINEAR_ADDRESS_RANGE, PVM_LA_RANGE_MAKE(0x1c0, 0x1c0, 0x1ff, 0x1ff)), -1);
    ck_assert_int_eq(pvm_m_wrmsr(cpu, &mem, MSR_PVM_LINEAR_ADDRESS_RANGE, inv, true), 0);
    ck_assert_uint_eq(rd(MSR_PVM_LINEAR_ADDRESS_RANGE), inv);
    /* a sub-range is fine; so is the default itself */
    ck_assert_int_eq(wr(MSR_PVM_LINEAR_ADDRESS_RANGE, PVM_LA_RANGE_MAKE(0x1b8, 0x1c0, 0x1ff, 0x1ff)), 0);
    ck_assert_int_eq(wr(MSR_PVM_LINEAR_ADDRESS_RANGE, TEST_RANGE), 0);
    /* host writes still need the filler and containment */
    ck_assert_int_eq(pvm_m_wrmsr(cpu, &mem, MSR_PVM_LINEAR_ADDRESS_RANGE, 0x01d201b201ff01ffull, true), -1);
}
END_TEST

START_TEST(linear_range_empty_default)
{
    /* The native backend's default may be the empty range 0x1ff/0x1ff. */
    const uint64_t empty = PVM_LA_RANGE_MAKE(0x1ff, 0x1ff, 0x1ff, 0x1ff);
    pvm_m_reset(cpu, empty);
    ck_assert_uint_eq(empty, 0xffffffffffffffffull);
    ck_assert_int_eq(wr(MSR_PVM_LINEAR_ADDRESS_RANGE, empty), 0);
    ck_assert(!pvm_m_la_allowed(empty, 0xffffff8000000000ull));
    ck_assert(pvm_m_la_allowed(empty, 0x1000));
}
END_TEST

START_TEST(vcpu_struct_checks)
{
    ck_assert_int_eq(wr(MSR_PVM_VCPU_STRUCT, 0x1800), -1);           /* not 4 KiB aligned */
    ck_assert_int_eq(wr(MSR_PVM_VCPU_STRUCT, FAKE_RAM_SIZE), -1);    /* not RAM */
    ck_assert_uint_eq(rd(MSR_PVM_VCPU_STRUCT), PVCS_GPA);
    ck_assert_int_eq(wr(MSR_PVM_VCPU_STRUCT, FAKE_RAM_SIZE - 4096), 0);
    ck_assert_int_eq(wr(MSR_PVM_VCPU_STRUCT, 0), 0);                 /* 0 disables */
    ck_assert(!pvm_m_irq_enabled(cpu, &mem));
}
END_TEST

START_TEST(event_entry_checks)
{
    ck_assert_int_eq(wr(MSR_PVM_EVENT_ENTRY, 0xffffd90000001000ull), 0);
    ck_assert_uint_eq(rd(MSR_PVM_EVENT_ENTRY), 0xffffd90000001000ull);
    /* base canonical but base + 256 is not */
    ck_assert_int_eq(wr(MSR_PVM_EVENT_ENTRY, 0x00007fffffffff00ull), -2);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason,
                     "WRMSR MSR_PVM_EVENT_ENTRY 0x7fffffffff00: entry block not canonical");
    ck_assert_uint_eq(rd(MSR_PVM_EVENT_ENTRY), 0xffffd90000001000ull);
    /* +512 crosses */
    ck_assert_int_eq(wr(MSR_PVM_EVENT_ENTRY, 0x00007ffffffffe00ull), -2);
    /* host: refused, no triple fault */
    cpu->exit.reason = PVM_EXIT_NONE;
    ck_assert_int_eq(pvm_m_wrmsr(cpu, &mem, MSR_PVM_EVENT_ENTRY, 0x8000000000000000ull, true), -1);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_NONE);
}
END_TEST

START_TEST(star_checks)
{
    ck_assert_int_eq(wr(PVM_MSR_STAR, (0x3ull << 32) | (0x23ull << 48)), -1);  /* kernel CS & ~3 = 0 */
    ck_assert_int_eq(wr(PVM_MSR_STAR, (0x10ull << 32) | (0x1bull << 48)), -1); /* user CS 0x2b */
    ck_assert_int_eq(wr(PVM_MSR_STAR, (0x10ull << 32) | (0x20ull << 48)), 0);  /* (0x20|3)+16 = 0x33 */
    ck_assert_int_eq(wr(PVM_MSR_STAR, (0x80ull << 32) | (0x23ull << 48)), 0);
    ck_assert_uint_eq(rd(PVM_MSR_STAR), (0x80ull << 32) | (0x23ull << 48));
    ck_assert_int_eq(pvm_m_wrmsr(cpu, &mem, PVM_MSR_STAR, 0, true), 0); /* host: unchecked */
    ck_assert_uint_eq(rd(PVM_MSR_STAR), 0);
}
END_TEST

START_TEST(standard_msrs)
{
    ck_assert_int_eq(wr(PVM_MSR_LSTAR, 0x0000800000000000ull), -1);
    ck_assert_int_eq(wr(PVM_MSR_LSTAR, 0xffffd90000000000ull), 0);
    ck_assert_uint_eq(rd(PVM_MSR_LSTAR), 0xffffd90000000000ull);
    ck_assert_int_eq(wr(PVM_MSR_GS_BASE, 0x1234), 0);
    ck_assert_uint_eq(cpu->gs_base, 0x1234);
    ck_assert_uint_eq(rd(PVM_MSR_GS_BASE), 0x1234);
    ck_assert_int_eq(wr(PVM_MSR_FS_BASE, 0x5678), 0);
    ck_assert_uint_eq(cpu->fs_base, 0x5678);
    ck_assert_int_eq(wr(PVM_MSR_KERNEL_GS_BASE, 0x0001000000000000ull), -1);
    ck_assert_int_eq(wr(PVM_MSR_TSC_AUX, 1ull << 32), -1);
    ck_assert_int_eq(wr(PVM_MSR_TSC_AUX, 7), 0);
    ck_assert_uint_eq(rd(PVM_MSR_TSC_AUX), 7);
    ck_assert_int_eq(wr(PVM_MSR_SYSCALL_MASK, 0x47700), 0);
    ck_assert_uint_eq(rd(PVM_MSR_SYSCALL_MASK), 0x47700);
    ck_assert_int_eq(wr(PVM_MSR_IA32_DEBUGCTL, 3), 0);
    ck_assert_uint_eq(rd(PVM_MSR_IA32_DEBUGCTL), 0);
    ck_assert_int_eq(wr(PVM_MSR_IA32_TSC, 0), 0); /* §10.28: ignored */
    ck_assert_int_eq(wr(PVM_MSR_EFER, 0x501), 0); /* NXE off */
    ck_assert_int_eq(fm.last_kind, PVM_FLUSH_ALL);
    ck_assert_int_eq(wr(PVM_MSR_EFER, 0x401), -1); /* LME off */
    ck_assert_int_eq(wr(PVM_MSR_EFER, 0xd01 | (1 << 12)), -1);
    ck_assert_uint_eq(rd(PVM_MSR_EFER), 0x501);
}
END_TEST

START_TEST(gs_base_is_mode_dependent)
{
    go_user();
    ck_assert_uint_eq(rd(PVM_MSR_GS_BASE), 0x7000001234ull);
    ck_assert_int_eq(pvm_m_syscall(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd(PVM_MSR_GS_BASE), KERNEL_GS);
    ck_assert_uint_eq(rd(PVM_MSR_KERNEL_GS_BASE), KERNEL_GS);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("machine_msr");
    TCase *bare = tcase_create("reset");
    tcase_add_checked_fixture(bare, fake_setup_bare, fake_teardown);
    tcase_add_test(bare, reset_values);
    tcase_add_test(bare, reset_keeps_redzone_and_cpuid);
    tcase_add_test(bare, ret_rips_stored_plus2);
    tcase_add_test(bare, plain_pvm_msrs);
    tcase_add_test(bare, linear_range_checks);
    tcase_add_test(bare, linear_range_empty_default);
    suite_add_tcase(s, bare);
    TCase *tc = fake_tcase("msr");
    tcase_add_test(tc, vcpu_struct_checks);
    tcase_add_test(tc, event_entry_checks);
    tcase_add_test(tc, star_checks);
    tcase_add_test(tc, standard_msrs);
    tcase_add_test(tc, gs_base_is_mode_dependent);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return pvm_test_run_suite(suite());
}
