/*
 * tests/test_machine_irq.c - the event queue and the IF/IP protocol (§5.7,
 * §5.8) and the RFLAGS setter.
 */
#include "test_machine_fake.h"

static int queue(uint32_t type, uint8_t vector)
{
    struct pvm_event ev = { .type = type, .vector = vector };
    return pvm_m_queue_event(cpu, &ev);
}

START_TEST(queue_errors)
{
    struct pvm_event ev = { .type = PVM_EVENT_EXCEPTION, .vector = 14, .has_error_code = 1,
                            .error_code = 2, .cr2 = 0x1000 };
    ck_assert_int_eq(pvm_m_queue_event(cpu, NULL), PVM_EINVAL);
    ck_assert_int_eq(queue(PVM_EVENT_EXCEPTION, 32), PVM_EINVAL);
    ck_assert_int_eq(queue(PVM_EVENT_EXCEPTION, 2), PVM_EINVAL);
    ck_assert_int_eq(queue(PVM_EVENT_INTERRUPT, 31), PVM_EINVAL);
    ck_assert_int_eq(queue(7, 40), PVM_EINVAL);
    ck_assert_int_eq(pvm_m_queue_event(cpu, &ev), 0);
    ck_assert_int_eq(queue(PVM_EVENT_EXCEPTION, 6), PVM_EBUSY);
    ck_assert_int_eq(queue(PVM_EVENT_INTERRUPT, 255), 0);
    ck_assert_int_eq(queue(PVM_EVENT_NMI, 0), 0);
}
END_TEST

START_TEST(queued_page_fault)
{
    struct pvm_event ev = { .type = PVM_EVENT_EXCEPTION, .vector = 14, .has_error_code = 1,
                            .error_code = 3, .cr2 = 0xfeed000 };
    const uint64_t frame = ((KSTACK - REDZONE) & ~0xfull) - 64;
    ck_assert_int_eq(pvm_m_queue_event(cpu, &ev), 0);
    ck_assert(pvm_m_event_ready(cpu, &mem));
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd64(frame), (14ull << 32) | 3);
    ck_assert_uint_eq(rd64(PVCS_GPA + 16), 0xfeed000);
    ck_assert(!cpu->exc_pending);
    ck_assert(!pvm_m_event_ready(cpu, &mem));
}
END_TEST

START_TEST(irq_masked_sets_ip)
{
    set_pvcs_flags(0);
    ck_assert_int_eq(queue(PVM_EVENT_INTERRUPT, 0x40), 0);
    ck_assert(!pvm_m_event_ready(cpu, &mem));
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IP);
    ck_assert_uint_eq(cpu->rip, 0x10000); /* nothing delivered */
    /* The guest sets IF itself (no exit): the next check sees it. */
    set_pvcs_flags(PVM_EVENT_FLAGS_IF | PVM_EVENT_FLAGS_IP);
    ck_assert(pvm_m_event_ready(cpu, &mem));
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->rip, ENTRY + 512);
}
END_TEST

START_TEST(no_pvcs_no_smod_interrupts)
{
    cpu->msr_vcpu_struct = 0;
    set_pvcs_flags(PVM_EVENT_FLAGS_IF);
    ck_assert(!pvm_m_irq_enabled(cpu, &mem)); /* §10.22 */
    ck_assert_int_eq(queue(PVM_EVENT_INTERRUPT, 0x40), 0);
    ck_assert(!pvm_m_event_ready(cpu, &mem));
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IF); /* nothing written */
    ck_assert_uint_eq(cpu->rip, 0x10000);
}
END_TEST

START_TEST(highest_vector_first)
{
    ck_assert_int_eq(queue(PVM_EVENT_INTERRUPT, 0x40), 0);
    ck_assert_int_eq(queue(PVM_EVENT_INTERRUPT, 0xfe), 0);
    ck_assert_int_eq(queue(PVM_EVENT_INTERRUPT, 0x80), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 0xfe);
    /* IF is now 0: the others wait with IP set. */
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IP);
    set_pvcs_flags(PVM_EVENT_FLAGS_IF);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 0x80);
    set_pvcs_flags(PVM_EVENT_FLAGS_IF);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 0x40);
    ck_assert_uint_eq(pvcs_flags(), 0);
}
END_TEST

START_TEST(umod_irq_ignores_pvcs_if)
{
    go_user();
    set_pvcs_flags(0);
    ck_assert(pvm_m_irq_enabled(cpu, &mem));
    ck_assert_int_eq(queue(PVM_EVENT_INTERRUPT, 0x40), 0);
    ck_assert(pvm_m_event_ready(cpu, &mem));
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->rip, ENTRY);
    ck_assert_uint_eq(cpu->mode, PVM_MODE_SUPERVISOR);
}
END_TEST

START_TEST(priority_exception_nmi_irq)
{
    const uint64_t f1 = ((KSTACK - REDZONE) & ~0xfull) - 64;
    const uint64_t f2 = ((f1 - REDZONE) & ~0xfull) - 64;
    ck_assert_int_eq(queue(PVM_EVENT_INTERRUPT, 0x40), 0);
    ck_assert_int_eq(queue(PVM_EVENT_NMI, 2), 0);
    ck_assert_int_eq(queue(PVM_EVENT_EXCEPTION, 6), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    /* #UD first, then the NMI on top of it; the IRQ waits (IF = 0). */
    ck_assert_uint_eq(rd64(f1), 6ull << 32);
    ck_assert_uint_eq(rd64(f2), 2ull << 32);
    ck_assert_uint_eq(rd64(f2 + 8), ENTRY + 256);
    ck_assert_uint_eq(cpu->gpr[PVM_RSP], f2);
    ck_assert(cpu->nmi_masked);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IP);
    ck_assert(!pvm_m_event_ready(cpu, &mem));
}
END_TEST

START_TEST(halted_cleared_by_delivery)
{
    set_pvcs_flags(0);
    cpu->halted = true;
    ck_assert_int_eq(queue(PVM_EVENT_INTERRUPT, 0x40), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME); /* masked: still halted */
    ck_assert(cpu->halted);
    ck_assert_int_eq(queue(PVM_EVENT_NMI, 2), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert(!cpu->halted);
    ck_assert_uint_eq(cpu->rip, ENTRY + 256);
}
END_TEST

START_TEST(set_rflags_protocol)
{
    set_pvcs_flags(PVM_EVENT_FLAGS_IP);
    pvm_m_set_rflags(cpu, &mem, 0x202);           /* 0 -> 1: IF set, IP cleared */
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IF);
    ck_assert_uint_eq(cpu->rflags, 0x202);
    set_pvcs_flags(PVM_EVENT_FLAGS_IF | PVM_EVENT_FLAGS_IP);
    pvm_m_set_rflags(cpu, &mem, 0x246);           /* 1 -> 1: IP kept */
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IF | PVM_EVENT_FLAGS_IP);
    pvm_m_set_rflags(cpu, &mem, 0x46);            /* 1 -> 0: IF cleared, IP kept */
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IP);
    ck_assert_uint_eq(cpu->rflags, 0x46);
    pvm_m_set_rflags(cpu, &mem, 0);               /* bit 1 always reads 1 */
    ck_assert_uint_eq(cpu->rflags, 0x2);
    go_user();
    set_pvcs_flags(0);
    pvm_m_set_rflags(cpu, &mem, 0x202);           /* umod: the PVCS is not touched */
    ck_assert_uint_eq(pvcs_flags(), 0);
}
END_TEST

START_TEST(irq_enabled_reads_pvcs_live)
{
    set_pvcs_flags(0);
    ck_assert(!pvm_m_irq_enabled(cpu, &mem));
    set_pvcs_flags(PVM_EVENT_FLAGS_IF);
    ck_assert(pvm_m_irq_enabled(cpu, &mem));
    /* and the frame of the next exception shows it */
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_BP, false, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(rd64(cpu->gpr[PVM_RSP] + 24) & PVM_RFLAGS_IF, PVM_RFLAGS_IF);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("machine_irq");
    TCase *tc = fake_tcase("irq");
    tcase_add_test(tc, queue_errors);
    tcase_add_test(tc, queued_page_fault);
    tcase_add_test(tc, irq_masked_sets_ip);
    tcase_add_test(tc, no_pvcs_no_smod_interrupts);
    tcase_add_test(tc, highest_vector_first);
    tcase_add_test(tc, umod_irq_ignores_pvcs_if);
    tcase_add_test(tc, priority_exception_nmi_irq);
    tcase_add_test(tc, halted_cleared_by_delivery);
    tcase_add_test(tc, set_rflags_protocol);
    tcase_add_test(tc, irq_enabled_reads_pvcs_live);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return pvm_test_run_suite(suite());
}
