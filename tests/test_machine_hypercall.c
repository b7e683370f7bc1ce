/*
 * tests/test_machine_hypercall.c - hypercalls (§7): the ten PVM_HC_*, the
 * generic KVM numbers and the host-call exit.
 */
#include "test_machine_fake.h"

#define SITE 0x15000ull

/* SYSCALL in smod at SITE with RAX = nr, a0 = RBX, a1 = R10, a2 = RDX. */
static enum pvm_m_result hc(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2)
{
    cpu->rip = SITE + 2;
    cpu->gpr[PVM_RCX] = SITE + 2;
    cpu->gpr[PVM_R11] = 0x246;
    cpu->gpr[PVM_RAX] = nr;
    cpu->gpr[PVM_RBX] = a0;
    cpu->gpr[PVM_R10] = a1;
    cpu->gpr[PVM_RDX] = a2;
    return pvm_m_syscall(cpu, &mem);
}

static void assert_hw_syscall_regs(void)
{
    ck_assert_uint_eq(cpu->rip, SITE + 2);        /* nothing skipped */
    ck_assert_uint_eq(cpu->gpr[PVM_RCX], SITE + 2);
    ck_assert_uint_eq(cpu->gpr[PVM_R11], 0x246);
}

START_TEST(load_pgtbl)
{
    ck_assert_int_eq(hc(PVM_HC_LOAD_PGTBL, 0, 0x11000, 0x12000), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->cr3, 0x11000);
    ck_assert_uint_eq(cpu->msr_switch_cr3, 0x12000);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], PVM_HC_LOAD_PGTBL); /* RAX unchanged */
    ck_assert_int_eq(fm.nflush, 0);
    assert_hw_syscall_regs();

    ck_assert_int_eq(hc(PVM_HC_LOAD_PGTBL, PVM_LOAD_PGTBL_FLAGS_TLB, 0x13000, 0x14000), PVM_M_RESUME);
    ck_assert_int_eq(fm.nflush, 1);
    ck_assert_int_eq(fm.last_kind, PVM_FLUSH_CURRENT);
    ck_assert_uint_eq(cpu->cr3, 0x13000);
}
END_TEST

START_TEST(load_pgtbl_la57)
{
    struct pvm_cpuid_entry la57 = { .function = 7, .index = 0, .flags = PVM_CPUID_FLAG_SIGNIFICANT_INDEX,
                                    .ecx = 1u << 16 };
    /* bit1 = 1 without LA57 in CPUID: CR4 unchanged. */
    ck_assert_int_eq(hc(PVM_HC_LOAD_PGTBL, PVM_LOAD_PGTBL_FLAGS_LA57, 0x11000, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->cr4 & (1u << 12), 0);
    ck_assert_int_eq(pvm_m_set_cpuid(cpu, &la57, 1), 0);
    ck_assert_int_eq(hc(PVM_HC_LOAD_PGTBL, PVM_LOAD_PGTBL_FLAGS_LA57, 0x11000, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->cr4 & (1u << 12), 1u << 12);
    ck_assert_int_eq(fm.last_kind, PVM_FLUSH_ALL); /* CR4 changed: MMU context reset */
    /* §10.25: bit1 = 0 clears LA57 even on an LA57-capable guest. */
    ck_assert_int_eq(hc(PVM_HC_LOAD_PGTBL, 0, 0x11000, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->cr4 & (1u << 12), 0);
}
END_TEST

START_TEST(irq_win)
{
    set_pvcs_flags(PVM_EVENT_FLAGS_IF | PVM_EVENT_FLAGS_IP);
    ck_assert_int_eq(hc(PVM_HC_IRQ_WIN, 0, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IF);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], PVM_HC_IRQ_WIN);
    assert_hw_syscall_regs();
}
END_TEST

START_TEST(irq_win_delivers_pending_irq)
{
    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = 0x50 };
    set_pvcs_flags(0);
    ck_assert_int_eq(pvm_m_queue_event(cpu, &ev), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IP);
    /* Guest irq_enable: set IF in the PVCS, see IP, issue IRQ_WIN. */
    set_pvcs_flags(PVM_EVENT_FLAGS_IF | PVM_EVENT_FLAGS_IP);
    ck_assert_int_eq(hc(PVM_HC_IRQ_WIN, 0, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->rip, ENTRY + 512);
    ck_assert_uint_eq(rd64(PVCS_GPA + 96), SITE + 2);
    ck_assert_uint_eq(rd32(PVCS_GPA + 88), 0x246);
    ck_assert_uint_eq(pvcs_flags(), 0);
}
END_TEST

START_TEST(irq_halt)
{
    set_pvcs_flags(PVM_EVENT_FLAGS_IP);
    ck_assert_int_eq(hc(PVM_HC_IRQ_HALT, 0, 0, 0), PVM_M_HALT);
    ck_assert(cpu->halted);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IF); /* IF 0 -> 1 cleared IP */
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], PVM_HC_IRQ_HALT);
    assert_hw_syscall_regs();

    /* An interrupt wakes it. */
    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = 0x31 };
    ck_assert_int_eq(pvm_m_queue_event(cpu, &ev), 0);
    ck_assert(pvm_m_event_ready(cpu, &mem));
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert(!cpu->halted);
    ck_assert_uint_eq(cpu->rip, ENTRY + 512);
    ck_assert_uint_eq(rd64(PVCS_GPA + 96), SITE + 2);
}
END_TEST

START_TEST(irq_halt_with_if_set_keeps_ip)
{
    set_pvcs_flags(PVM_EVENT_FLAGS_IF | PVM_EVENT_FLAGS_IP);
    ck_assert_int_eq(hc(PVM_HC_IRQ_HALT, 0, 0, 0), PVM_M_HALT);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IF | PVM_EVENT_FLAGS_IP);
}
END_TEST

START_TEST(irq_halt_with_pending_irq_does_not_block)
{
    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = 0x31 };
    set_pvcs_flags(0);
    ck_assert_int_eq(pvm_m_queue_event(cpu, &ev), 0);
    ck_assert_int_eq(hc(PVM_HC_IRQ_HALT, 0, 0, 0), PVM_M_RESUME);
    ck_assert(!cpu->halted);
    ck_assert_uint_eq(cpu->rip, ENTRY + 512);
    ck_assert_uint_eq(rd32(PVCS_GPA + 88), 0x246); /* interrupted with IF = 1 */
}
END_TEST

START_TEST(tlb_hypercalls)
{
    ck_assert_int_eq(hc(PVM_HC_TLB_FLUSH, 0, 0, 0), PVM_M_RESUME);
    ck_assert_int_eq(fm.last_kind, PVM_FLUSH_ALL);
    ck_assert_int_eq(hc(PVM_HC_TLB_FLUSH_CURRENT, 0, 0, 0), PVM_M_RESUME);
    ck_assert_int_eq(fm.last_kind, PVM_FLUSH_CURRENT);
    ck_assert_int_eq(hc(PVM_HC_TLB_INVLPG, 0xffffd90000123000ull, 0, 0), PVM_M_RESUME);
    ck_assert_int_eq(fm.last_kind, PVM_FLUSH_ONE);
    ck_assert_uint_eq(fm.last_gva, 0xffffd90000123000ull);
    ck_assert_int_eq(fm.nflush, 3);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], PVM_HC_TLB_INVLPG);
}
END_TEST

/* A 32-bit data descriptor with @base, limit 0xfffff, G, D, P (type: writable data). */
static uint64_t data_desc(uint32_t base)
{
    return 0xffffull | ((uint64_t)(base & 0xffffff) << 16) | (0x2ull << 40) | (1ull << 44) |
           (3ull << 45) | (1ull << 47) | (0xfull << 48) | (1ull << 54) | (1ull << 55) |
           ((uint64_t)(base >> 24) << 56);
}

START_TEST(load_tls_and_gs)
{
    uint64_t d0 = data_desc(0x12345678) & ~(1ull << 40) & ~(3ull << 45); /* not accessed, DPL 0 */
    uint64_t code = data_desc(0x1000) | (1ull << 43);
    uint64_t d16 = data_desc(0x2000) & ~(1ull << 54);
    cpu->gs_base = 0x4444;
    ck_assert_int_eq(hc(PVM_HC_LOAD_TLS, d0, code, d16), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->tls[0], d0 | (1ull << 40) | (3ull << 45)); /* accessed, DPL 3 */
    ck_assert_uint_eq(cpu->tls[1], 0);   /* code: dropped */
    ck_assert_uint_eq(cpu->tls[2], 0);   /* 16-bit: dropped */
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], PVM_HC_LOAD_TLS); /* §10.9 */

    ck_assert_int_eq(hc(PVM_HC_LOAD_GS, 0x63, 0, 0), PVM_M_RESUME); /* GDT 12, RPL 3 */
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x12345678);
    ck_assert_uint_eq(cpu->gs, 0x63);
    ck_assert_uint_eq(cpu->gs_base, 0x4444); /* not changed */

    ck_assert_int_eq(hc(PVM_HC_LOAD_GS, 0x60, 0, 0), PVM_M_RESUME); /* RPL 0 -> NULL */
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0);
    ck_assert_uint_eq(cpu->gs, 0);
    ck_assert_int_eq(hc(PVM_HC_LOAD_GS, 0x6b, 0, 0), PVM_M_RESUME); /* empty slot -> NULL */
    ck_assert_uint_eq(cpu->gs, 0);
    ck_assert_int_eq(hc(PVM_HC_LOAD_GS, 0x2b, 0, 0), PVM_M_RESUME); /* __USER_DS: flat */
    ck_assert_uint_eq(cpu->gs, 0x2b);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0);
}
END_TEST

START_TEST(rdmsr_wrmsr)
{
    ck_assert_int_eq(hc(PVM_HC_RDMSR, PVM_MSR_LSTAR, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], LSTAR);
    ck_assert_int_eq(hc(PVM_HC_RDMSR, 0xdead, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0); /* failure reads 0 */
    ck_assert_int_eq(hc(PVM_HC_RDMSR, (1ull << 32) | MSR_PVM_RETU_RIP, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], RETU_RIP); /* index is the low 32 bits */

    ck_assert_int_eq(hc(PVM_HC_WRMSR, PVM_MSR_KERNEL_GS_BASE, 0xffffd90000000000ull, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0);
    ck_assert_uint_eq(cpu->msr_kernel_gs_base, 0xffffd90000000000ull);
    ck_assert_int_eq(hc(PVM_HC_WRMSR, MSR_PVM_VCPU_STRUCT, 0x1234, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], (uint64_t)-5); /* -EIO (§10.9) */
    ck_assert_uint_eq(cpu->msr_vcpu_struct, PVCS_GPA);
    assert_hw_syscall_regs();
}
END_TEST

START_TEST(wrmsr_event_entry_triple_fault)
{
    ck_assert_int_eq(hc(PVM_HC_WRMSR, MSR_PVM_EVENT_ENTRY, 0x0000800000000000ull, 0), PVM_M_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason,
                     "WRMSR MSR_PVM_EVENT_ENTRY 0x800000000000: entry block not canonical");
    ck_assert_uint_eq(cpu->msr_event_entry, ENTRY);
}
END_TEST

START_TEST(undefined_pvm_number_goes_to_kvm)
{
    ck_assert_int_eq(hc(PVM_HC_SPECIAL_BASE + 10, 0, 0x99, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], (uint64_t)-1000);
    ck_assert_uint_eq(cpu->gpr[PVM_RCX], 0x99); /* RCX := R10 */
    ck_assert_uint_eq(cpu->gpr[PVM_R10], 0x99);
}
END_TEST

START_TEST(kvm_hypercalls)
{
    ck_assert_int_eq(hc(PVM_KVM_HC_VAPIC_POLL_IRQ, 0, 7, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0);
    ck_assert_uint_eq(cpu->gpr[PVM_RCX], 7);
    ck_assert_uint_eq(cpu->gpr[PVM_R10], 7);
    ck_assert_uint_eq(cpu->rip, SITE + 2);
    ck_assert_int_eq(hc(PVM_KVM_HC_FEATURES, 0, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], (uint64_t)-1000);
    ck_assert_int_eq(hc(PVM_KVM_HC_MAP_GPA_RANGE, 0x1000, 1, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], (uint64_t)-1000); /* §10.10: never exits */
    ck_assert_uint_eq(cpu->rip, SITE + 2);
    ck_assert_int_eq(hc(PVM_KVM_HC_CLOCK_PAIRING, 0, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], (uint64_t)-95);
    ck_assert_int_eq(hc(PVM_KVM_HC_KICK_CPU, 0, 1, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], (uint64_t)-1000);
    ck_assert_int_eq(hc(PVM_KVM_HC_SCHED_YIELD, 1, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], (uint64_t)-1000); /* PV_SCHED_YIELD not advertised */
    ck_assert_int_eq(hc(0xfff0, 0, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], (uint64_t)-1000);
}
END_TEST

START_TEST(kvm_sched_yield_when_advertised)
{
    struct pvm_cpuid_entry f = { .function = PVM_KVM_CPUID_FEATURES, .eax = 1u << 13 };
    ck_assert_int_eq(pvm_m_set_cpuid(cpu, &f, 1), 0);
    ck_assert_int_eq(hc(PVM_KVM_HC_SCHED_YIELD, 1, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0);
}
END_TEST

START_TEST(host_call_exit)
{
    cpu->gpr[PVM_RSI] = 4;
    cpu->gpr[PVM_RDI] = 5;
    cpu->gpr[PVM_R8] = 6;
    ck_assert_int_eq(hc(PVM_HOSTCALL(PVM_HOSTCALL_EXIT), 1, 2, 3), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_HYPERCALL);
    ck_assert_uint_eq(cpu->exit.u.hypercall.nr, PVM_HOSTCALL_BASE + 1);
    for (int i = 0; i < 6; i++)
        ck_assert_uint_eq(cpu->exit.u.hypercall.args[i], (uint64_t)i + 1);
    ck_assert_uint_eq(cpu->exit.u.hypercall.ret, PVM_HOSTCALL_BASE + 1);
    ck_assert_uint_eq(cpu->pending_exit, PVM_EXIT_HYPERCALL);

    struct pvm_exit ans = cpu->exit;
    ans.u.hypercall.ret = 42;
    pvm_m_complete(cpu, &ans);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 42);
    ck_assert_uint_eq(cpu->rip, SITE + 2); /* no skip */
    ck_assert_uint_eq(cpu->pending_exit, PVM_EXIT_NONE);
}
END_TEST

START_TEST(other_numbers_exit_too)
{
    ck_assert_int_eq(hc(0x12345678, 0, 0, 0), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.hypercall.nr, 0x12345678);
    pvm_m_complete(cpu, &cpu->exit); /* unanswered: RAX stays the number */
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x12345678);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("machine_hypercall");
    TCase *tc = fake_tcase("hypercall");
    tcase_add_test(tc, load_pgtbl);
    tcase_add_test(tc, load_pgtbl_la57);
    tcase_add_test(tc, irq_win);
    tcase_add_test(tc, irq_win_delivers_pending_irq);
    tcase_add_test(tc, irq_halt);
    tcase_add_test(tc, irq_halt_with_if_set_keeps_ip);
    tcase_add_test(tc, irq_halt_with_pending_irq_does_not_block);
    tcase_add_test(tc, tlb_hypercalls);
    tcase_add_test(tc, load_tls_and_gs);
    tcase_add_test(tc, rdmsr_wrmsr);
    tcase_add_test(tc, wrmsr_event_entry_triple_fault);
    tcase_add_test(tc, undefined_pvm_number_goes_to_kvm);
    tcase_add_test(tc, kvm_hypercalls);
    tcase_add_test(tc, kvm_sched_yield_when_advertised);
    tcase_add_test(tc, host_call_exit);
    tcase_add_test(tc, other_numbers_exit_too);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return pvm_test_run_suite(suite());
}
