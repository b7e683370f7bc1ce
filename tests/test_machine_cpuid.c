/*
 * tests/test_machine_cpuid.c - the CPUID table, the synthetic CPUID (§6.1,
 * §8.1) and the allowed linear-address rule (§8.2).
 */
#include "test_machine_fake.h"

static const uint8_t synth[] = { PVM_SYNTHETIC_CPUID_BYTES };

START_TEST(default_leaves)
{
    uint32_t r[4];
    pvm_m_cpuid(cpu, 0x40000000, 0, r);
    ck_assert_uint_eq(r[0], 0x40000002);
    char sig[13] = { 0 };
    memcpy(sig, &r[1], 4);
    memcpy(sig + 4, &r[2], 4);
    memcpy(sig + 8, &r[3], 4);
    ck_assert_str_eq(sig, "KVMKVMKVM");
    pvm_m_cpuid(cpu, 0x40000002, 0, r);
    ck_assert_uint_eq(r[0], 0);
    ck_assert_uint_eq(r[1], 0x4d5650);
    ck_assert_uint_eq(r[2], 0);
    ck_assert_uint_eq(r[3], 0);
    pvm_m_cpuid(cpu, 0x40000001, 0, r);
    ck_assert_uint_eq(r[0] | r[1] | r[2] | r[3], 0);
    pvm_m_cpuid(cpu, 0x12345, 0, r);
    ck_assert_uint_eq(r[0] | r[1] | r[2] | r[3], 0);
}
END_TEST

START_TEST(set_cpuid_table)
{
    struct pvm_cpuid_entry t[] = {
        { .function = 0, .eax = 0xd, .ebx = 0x756e6547 },
        { .function = 7, .index = 0, .flags = PVM_CPUID_FLAG_SIGNIFICANT_INDEX, .ebx = 0x11 },
        { .function = 7, .index = 1, .flags = PVM_CPUID_FLAG_SIGNIFICANT_INDEX, .eax = 0x22 },
        { .function = 0x40000000, .eax = 0x40000001, .ebx = 1 }, /* VMM override */
    };
    uint32_t r[4];
    ck_assert_int_eq(pvm_m_set_cpuid(cpu, t, 4), 0);
    ck_assert_uint_eq(cpu->nr_cpuid, 6); /* 0x40000001 and 0x40000002 added */
    pvm_m_cpuid(cpu, 0, 0, r);
    ck_assert_uint_eq(r[0], 0xd);
    pvm_m_cpuid(cpu, 7, 1, r);
    ck_assert_uint_eq(r[0], 0x22);
    pvm_m_cpuid(cpu, 7, 0, r);
    ck_assert_uint_eq(r[1], 0x11);
    pvm_m_cpuid(cpu, 7, 2, r);
    ck_assert_uint_eq(r[0] | r[1], 0);
    pvm_m_cpuid(cpu, 0x40000000, 0, r);
    ck_assert_uint_eq(r[0], 0x40000001);
    pvm_m_cpuid(cpu, 0x40000002, 0, r);
    ck_assert_uint_eq(r[1], 0x4d5650);
    ck_assert_int_eq(pvm_m_set_cpuid(cpu, t, PVM_MAX_CPUID_ENTRIES + 1), PVM_EINVAL);
    ck_assert_int_eq(pvm_m_set_cpuid(cpu, NULL, 1), PVM_EINVAL);
    ck_assert_int_eq(pvm_m_set_cpuid(cpu, NULL, 0), 0);
    ck_assert_uint_eq(cpu->nr_cpuid, 3);
}
END_TEST

START_TEST(full_table_still_answers_pvm_leaves)
{
    static struct pvm_cpuid_entry t[PVM_MAX_CPUID_ENTRIES];
    uint32_t r[4];
    for (unsigned i = 0; i < PVM_MAX_CPUID_ENTRIES; i++)
        t[i] = (struct pvm_cpuid_entry){ .function = 0x80000000u + i };
    ck_assert_int_eq(pvm_m_set_cpuid(cpu, t, PVM_MAX_CPUID_ENTRIES), 0);
    pvm_m_cpuid(cpu, 0x40000002, 0, r);
    ck_assert_uint_eq(r[1], 0x4d5650);
}
END_TEST

START_TEST(synthetic_cpuid)
{
    put_bytes(0x10000, synth, sizeof(synth));
    cpu->gpr[PVM_RAX] = 0xffffffff40000000ull; /* leaf is EAX */
    cpu->gpr[PVM_RCX] = 0;
    cpu->gpr[PVM_RBX] = 0xffffffffffffffffull;
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_GP, true, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x40000002);
    ck_assert_uint_eq(cpu->gpr[PVM_RBX], 0x4b4d564b);
    ck_assert_uint_eq(cpu->gpr[PVM_RCX], 0x564b4d56);
    ck_assert_uint_eq(cpu->gpr[PVM_RDX], 0x4d);
    ck_assert_uint_eq(cpu->rip, 0x1000a);
    ck_assert_int_eq(fm.nflush, 0); /* 0xffffffffff4d5650 is not guest-allowed */

    put_bytes(0x1000a, synth, sizeof(synth));
    cpu->gpr[PVM_RAX] = 0x40000002;
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_GP, true, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RBX], 0x4d5650);
    ck_assert_uint_eq(cpu->rip, 0x10014);
}
END_TEST

START_TEST(synthetic_cpuid_in_umod_is_gp)
{
    go_user();
    cpu->rip = 0x40002;
    put_bytes(0x40002, synth, sizeof(synth));
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_GP, true, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->mode, PVM_MODE_SUPERVISOR);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 13);
    ck_assert_uint_eq(rd32(PVCS_GPA + 8), 0);
    ck_assert_uint_eq(rd64(PVCS_GPA + 96), 0x40002);
}
END_TEST

START_TEST(synthetic_cpuid_mismatch_is_gp)
{
    uint8_t bad[sizeof(synth)];
    memcpy(bad, synth, sizeof(bad));
    bad[6] = 0x4e; /* a different INVLPG address */
    put_bytes(0x10000, bad, sizeof(bad));
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_GP, true, 0, 0), PVM_M_RESUME);
    /* plain INVLPG emulated instead, then CPUID is not reached */
    ck_assert_uint_eq(cpu->rip, 0x10008);
    ck_assert_int_eq(fm.last_kind, PVM_FLUSH_ONE);
    ck_assert_uint_eq(fm.last_gva, 0xffffffffff4e5650ull);
}
END_TEST

START_TEST(la_allowed)
{
    const uint64_t r = TEST_RANGE;
    ck_assert(!pvm_m_la_allowed(r, 0));                        /* §10.13 */
    ck_assert(pvm_m_la_allowed(r, 1));
    ck_assert(pvm_m_la_allowed(r, 0x00007fffffffffffull));
    ck_assert(pvm_m_la_allowed(r, 0x7fffffffffffffffull));     /* bit 63 = 0 */
    ck_assert(!pvm_m_la_allowed(r, 0xffffd8ffffffffffull));
    ck_assert(pvm_m_la_allowed(r, 0xffffd90000000000ull));
    ck_assert(pvm_m_la_allowed(r, 0xffffe8ffffffffffull));
    ck_assert(!pvm_m_la_allowed(r, 0xffffe90000000000ull));
    ck_assert(!pvm_m_la_allowed(r, 0xffffffff80000000ull));    /* host-only top 2 GiB */
    ck_assert(!pvm_m_la_allowed(r, 0xff00000000000000ull));    /* empty 5-level range */
    /* 5-level part: [(0xfe00|0x1fe) << 48, (0xfe00|0x1ff) << 48) */
    const uint64_t r5 = PVM_LA_RANGE_MAKE(0x1b2, 0x1d2, 0x1fe, 0x1ff);
    ck_assert(pvm_m_la_allowed(r5, 0xfffe000000000000ull));
    ck_assert(pvm_m_la_allowed(r5, 0xfffeffffffffffffull));
    ck_assert(!pvm_m_la_allowed(r5, 0xfffdffffffffffffull));
    /* Index 0x1ff can never be inside (END is exclusive): the synthetic-CPUID
     * INVLPG address is never guest-allowed, so §6.1's INVLPG never happens. */
    ck_assert(!pvm_m_la_allowed(PVM_LA_RANGE_MAKE(0x100, 0x1ff, 0x100, 0x1ff), PVM_SYNTHETIC_CPUID_ADDRESS));
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("machine_cpuid");
    TCase *tc = fake_tcase("cpuid");
    tcase_add_test(tc, default_leaves);
    tcase_add_test(tc, set_cpuid_table);
    tcase_add_test(tc, full_table_still_answers_pvm_leaves);
    tcase_add_test(tc, synthetic_cpuid);
    tcase_add_test(tc, synthetic_cpuid_in_umod_is_gp);
    tcase_add_test(tc, synthetic_cpuid_mismatch_is_gp);
    tcase_add_test(tc, la_allowed);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return pvm_test_run_suite(suite());
}
