/*
 * tests/test_machine_emulate.c - #GP emulation of privileged instructions in
 * smod (real instruction bytes), their #GP in umod, MMIO decoding and the
 * completion of IO/MMIO exits.
 */
#include "test_machine_fake.h"

#define CODE 0x10000ull

static enum pvm_m_result gp_on(const void *bytes, size_t n)
{
    cpu->rip = CODE;
    put_bytes(CODE, bytes, n);
    return pvm_m_exception(cpu, &mem, PVM_VEC_GP, true, 0, 0);
}

static const uint64_t gp_frame = ((KSTACK - REDZONE) & ~0xfull) - 64;

static void assert_gp0_delivered(void)
{
    ck_assert_uint_eq(cpu->rip, ENTRY + 256);
    ck_assert_uint_eq(rd64(gp_frame), 13ull << 32);
    ck_assert_uint_eq(rd64(gp_frame + 8), CODE); /* faulting RIP, not advanced */
}

START_TEST(rdmsr)
{
    static const uint8_t insn[] = { 0x0f, 0x32 };
    cpu->gpr[PVM_RCX] = PVM_MSR_LSTAR;
    wrmsr_ok(PVM_MSR_LSTAR, 0xffffd90012345678ull);
    cpu->gpr[PVM_RAX] = cpu->gpr[PVM_RDX] = ~0ull;
    ck_assert_int_eq(gp_on(insn, 2), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x12345678);
    ck_assert_uint_eq(cpu->gpr[PVM_RDX], 0xffffd900);
    ck_assert_uint_eq(cpu->rip, CODE + 2);
}
END_TEST

START_TEST(rdmsr_unknown_is_gp)
{
    static const uint8_t insn[] = { 0x0f, 0x32 };
    cpu->gpr[PVM_RCX] = 0x4b564dff;
    ck_assert_int_eq(gp_on(insn, 2), PVM_M_RESUME);
    assert_gp0_delivered();
}
END_TEST

START_TEST(wrmsr)
{
    static const uint8_t insn[] = { 0x0f, 0x30 };
    cpu->gpr[PVM_RCX] = MSR_PVM_SUPERVISOR_REDZONE;
    cpu->gpr[PVM_RAX] = 0xffffffff00000080ull; /* high half of RAX ignored */
    cpu->gpr[PVM_RDX] = 0;
    ck_assert_int_eq(gp_on(insn, 2), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->msr_redzone, 0x80);
    ck_assert_uint_eq(cpu->rip, CODE + 2);
}
END_TEST

START_TEST(wrmsr_rejected_is_gp)
{
    static const uint8_t insn[] = { 0x0f, 0x30 };
    cpu->gpr[PVM_RCX] = PVM_MSR_STAR;
    cpu->gpr[PVM_RAX] = 0;
    cpu->gpr[PVM_RDX] = 0x001b0010; /* user CS would be 0x2b */
    ck_assert_int_eq(gp_on(insn, 2), PVM_M_RESUME);
    assert_gp0_delivered();
    ck_assert_uint_eq(cpu->msr_star, STAR_VALUE);
}
END_TEST

START_TEST(wrmsr_event_entry_triple_fault)
{
    static const uint8_t insn[] = { 0x0f, 0x30 };
    cpu->gpr[PVM_RCX] = MSR_PVM_EVENT_ENTRY;
    cpu->gpr[PVM_RAX] = 0;
    cpu->gpr[PVM_RDX] = 0x8000;
    ck_assert_int_eq(gp_on(insn, 2), PVM_M_SHUTDOWN);
    ck_assert_str_eq(cpu->exit.u.shutdown.reason,
                     "WRMSR MSR_PVM_EVENT_ENTRY 0x800000000000: entry block not canonical");
}
END_TEST

START_TEST(cli_sti)
{
    static const uint8_t cli[] = { 0xfa }, sti[] = { 0xfb };
    set_pvcs_flags(PVM_EVENT_FLAGS_IF);
    ck_assert_int_eq(gp_on(cli, 1), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), 0);
    ck_assert_uint_eq(cpu->rflags & PVM_RFLAGS_IF, 0);
    ck_assert_uint_eq(cpu->rip, CODE + 1);
    set_pvcs_flags(PVM_EVENT_FLAGS_IP);
    ck_assert_int_eq(gp_on(sti, 1), PVM_M_RESUME);
    ck_assert_uint_eq(pvcs_flags(), PVM_EVENT_FLAGS_IF); /* 0 -> 1 clears IP */
    ck_assert_uint_eq(cpu->rip, CODE + 1);
}
END_TEST

START_TEST(sti_takes_pending_irq_at_once)
{
    static const uint8_t sti[] = { 0xfb };
    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = 0xef };
    set_pvcs_flags(0);
    ck_assert_int_eq(pvm_m_queue_event(cpu, &ev), 0);
    ck_assert_int_eq(pvm_m_check_events(cpu, &mem), PVM_M_RESUME);
    ck_assert_int_eq(gp_on(sti, 1), PVM_M_RESUME);
    /* §10.15: no STI shadow. */
    ck_assert_uint_eq(cpu->rip, ENTRY + 512);
    ck_assert_uint_eq(rd64(PVCS_GPA + 96), CODE + 1);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 0xef);
}
END_TEST

START_TEST(hlt)
{
    static const uint8_t insn[] = { 0xf4 };
    ck_assert_int_eq(gp_on(insn, 1), PVM_M_HALT);
    ck_assert(cpu->halted);
    ck_assert_uint_eq(cpu->rip, CODE + 1);
}
END_TEST

START_TEST(hlt_at_end_of_memory)
{
    static const uint8_t insn[] = { 0xf4 };
    cpu->rip = FAKE_RAM_SIZE - 1; /* only one byte can be fetched */
    put_bytes(FAKE_RAM_SIZE - 1, insn, 1);
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_GP, true, 0, 0), PVM_M_HALT);
    ck_assert_uint_eq(cpu->rip, FAKE_RAM_SIZE);
}
END_TEST

START_TEST(mov_cr3)
{
    static const uint8_t to_cr3[] = { 0x0f, 0x22, 0xd8 };   /* mov cr3, rax */
    static const uint8_t from_cr3[] = { 0x0f, 0x20, 0xda }; /* mov rdx, cr3 */
    cpu->gpr[PVM_RAX] = 0x33000;
    ck_assert_int_eq(gp_on(to_cr3, 3), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->cr3, 0x33000);
    ck_assert_uint_eq(cpu->msr_switch_cr3, UROOT); /* §10.25 */
    ck_assert_int_eq(fm.nflush, 1);
    ck_assert_int_eq(fm.last_kind, PVM_FLUSH_CURRENT);
    ck_assert_uint_eq(cpu->rip, CODE + 3);
    ck_assert_int_eq(gp_on(from_cr3, 3), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RDX], 0x33000);
}
END_TEST

START_TEST(mov_cr3_noflush_with_pcid)
{
    static const uint8_t to_cr3[] = { 0x0f, 0x22, 0xd8 };
    cpu->cr4 |= 1u << 17; /* PCIDE */
    cpu->gpr[PVM_RAX] = (1ull << 63) | 0x34001;
    ck_assert_int_eq(gp_on(to_cr3, 3), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->cr3, 0x34001);
    ck_assert_int_eq(fm.nflush, 0);
    cpu->gpr[PVM_RAX] = 1ull << 52; /* reserved bit */
    ck_assert_int_eq(gp_on(to_cr3, 3), PVM_M_RESUME);
    assert_gp0_delivered();
}
END_TEST

START_TEST(mov_cr0_cr4)
{
    static const uint8_t rd_cr0[] = { 0x0f, 0x20, 0xc0 };   /* mov rax, cr0 */
    static const uint8_t wr_cr0[] = { 0x0f, 0x22, 0xc0 };   /* mov cr0, rax */
    static const uint8_t rd_cr4[] = { 0x0f, 0x20, 0xe1 };   /* mov rcx, cr4 */
    static const uint8_t wr_cr4[] = { 0x0f, 0x22, 0xe1 };   /* mov cr4, rcx */
    ck_assert_int_eq(gp_on(rd_cr0, 3), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x80050033);
    ck_assert_int_eq(gp_on(wr_cr0, 3), PVM_M_RESUME);   /* same value: fine */
    ck_assert_uint_eq(cpu->rip, CODE + 3);
    ck_assert_int_eq(gp_on(rd_cr4, 3), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RCX], 0x10620);
    cpu->gpr[PVM_RCX] |= 1u << 7; /* PGE */
    ck_assert_int_eq(gp_on(wr_cr4, 3), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->cr4, 0x106a0);
    ck_assert_int_eq(fm.last_kind, PVM_FLUSH_ALL);
}
END_TEST

START_TEST(mov_cr0_change_is_gp)
{
    static const uint8_t wr_cr0[] = { 0x0f, 0x22, 0xc0 };
    cpu->gpr[PVM_RAX] = 0x80050033 & ~(1u << 16); /* clear WP */
    ck_assert_int_eq(gp_on(wr_cr0, 3), PVM_M_RESUME);
    assert_gp0_delivered();
    ck_assert_uint_eq(cpu->cr0, 0x80050033);
}
END_TEST

START_TEST(mov_cr4_bad_is_gp)
{
    static const uint8_t wr_cr4[] = { 0x0f, 0x22, 0xe1 };
    cpu->gpr[PVM_RCX] = 0x10620 | (1u << 20); /* SMEP */
    ck_assert_int_eq(gp_on(wr_cr4, 3), PVM_M_RESUME);
    assert_gp0_delivered();
}
END_TEST

START_TEST(mov_cr4_clear_pae_is_gp)
{
    static const uint8_t wr_cr4[] = { 0x0f, 0x22, 0xe1 };
    cpu->gpr[PVM_RCX] = 0x10600;
    ck_assert_int_eq(gp_on(wr_cr4, 3), PVM_M_RESUME);
    assert_gp0_delivered();
    ck_assert_uint_eq(cpu->cr4, 0x10620);
}
END_TEST

START_TEST(mov_cr8_is_gp)
{
    static const uint8_t insn[] = { 0x44, 0x0f, 0x22, 0xc0 }; /* mov cr8, rax */
    ck_assert_int_eq(gp_on(insn, 4), PVM_M_RESUME);
    assert_gp0_delivered();
}
END_TEST

START_TEST(invlpg)
{
    static const uint8_t insn[] = { 0x0f, 0x01, 0x78, 0x10 }; /* invlpg [rax + 0x10] */
    cpu->gpr[PVM_RAX] = 0xffffd90000001000ull;
    ck_assert_int_eq(gp_on(insn, 4), PVM_M_RESUME);
    ck_assert_int_eq(fm.last_kind, PVM_FLUSH_ONE);
    ck_assert_uint_eq(fm.last_gva, 0xffffd90000001010ull);
    ck_assert_uint_eq(cpu->rip, CODE + 4);
}
END_TEST

START_TEST(out_imm)
{
    static const uint8_t insn[] = { 0xe6, 0x80 }; /* out 0x80, al */
    cpu->gpr[PVM_RAX] = 0x1234567890abcdefull;
    ck_assert_int_eq(gp_on(insn, 2), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_IO);
    ck_assert_uint_eq(cpu->exit.u.io.port, 0x80);
    ck_assert_uint_eq(cpu->exit.u.io.size, 1);
    ck_assert_uint_eq(cpu->exit.u.io.is_write, 1);
    ck_assert_uint_eq(cpu->exit.u.io.data, 0xef);
    ck_assert_uint_eq(cpu->rip, CODE);
    pvm_m_complete(cpu, &cpu->exit);
    ck_assert_uint_eq(cpu->rip, CODE + 2);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x1234567890abcdefull);
    ck_assert_uint_eq(cpu->pending_exit, PVM_EXIT_NONE);
}
END_TEST

START_TEST(out_dx_word)
{
    static const uint8_t insn[] = { 0x66, 0xef }; /* out dx, ax */
    cpu->gpr[PVM_RAX] = 0xabcd1234;
    cpu->gpr[PVM_RDX] = 0xffff03f8;
    ck_assert_int_eq(gp_on(insn, 2), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.io.port, 0x3f8);
    ck_assert_uint_eq(cpu->exit.u.io.size, 2);
    ck_assert_uint_eq(cpu->exit.u.io.data, 0x1234);
}
END_TEST

START_TEST(in_dx_dword)
{
    static const uint8_t insn[] = { 0xed }; /* in eax, dx */
    cpu->gpr[PVM_RAX] = ~0ull;
    cpu->gpr[PVM_RDX] = 0xcfc;
    ck_assert_int_eq(gp_on(insn, 1), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.io.port, 0xcfc);
    ck_assert_uint_eq(cpu->exit.u.io.size, 4);
    ck_assert_uint_eq(cpu->exit.u.io.is_write, 0);
    struct pvm_exit ans = cpu->exit;
    ans.u.io.data = 0x12345678;
    pvm_m_complete(cpu, &ans);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x12345678); /* zero-extended */
    ck_assert_uint_eq(cpu->rip, CODE + 1);
}
END_TEST

/* An application that moves RIP after an IO exit abandons the instruction (KVM's rule). */
START_TEST(in_abandoned_when_rip_moves)
{
    static const uint8_t insn[] = { 0xed }; /* in eax, dx */
    cpu->gpr[PVM_RAX] = 0x1122334455667788ull;
    cpu->gpr[PVM_RDX] = 0xcfc;
    ck_assert_int_eq(gp_on(insn, 1), PVM_M_EXIT);
    struct pvm_exit ans = cpu->exit;
    ans.u.io.data = 0x12345678;
    cpu->rip = CODE + 0x40;
    pvm_m_complete(cpu, &ans);
    ck_assert_uint_eq(cpu->rip, CODE + 0x40);                  /* no skip at the new RIP */
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x1122334455667788ull); /* no IN result */
    ck_assert_uint_eq(cpu->pending_exit, PVM_EXIT_NONE);
    /* Unchanged RIP: completed as before. */
    ck_assert_int_eq(gp_on(insn, 1), PVM_M_EXIT);
    pvm_m_complete(cpu, &ans);
    ck_assert_uint_eq(cpu->rip, CODE + 1);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x12345678);
}
END_TEST

START_TEST(in_al_keeps_upper_bits)
{
    static const uint8_t insn[] = { 0xe4, 0x60 }; /* in al, 0x60 */
    cpu->gpr[PVM_RAX] = 0x1122334455667788ull;
    ck_assert_int_eq(gp_on(insn, 2), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.io.port, 0x60);
    struct pvm_exit ans = cpu->exit;
    ans.u.io.data = 0xffffffab;
    pvm_m_complete(cpu, &ans);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x11223344556677abull);
    ck_assert_uint_eq(cpu->rip, CODE + 2);
}
END_TEST

START_TEST(plain_cpuid)
{
    static const uint8_t insn[] = { 0x0f, 0xa2 };
    cpu->gpr[PVM_RAX] = 0x40000002;
    ck_assert_int_eq(gp_on(insn, 2), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->gpr[PVM_RBX], 0x4d5650);
    ck_assert_uint_eq(cpu->rip, CODE + 2);
}
END_TEST

START_TEST(unemulated_is_gp0)
{
    static const uint8_t swapgs[] = { 0x0f, 0x01, 0xf8 };
    static const uint8_t iretq[] = { 0x48, 0xcf };
    static const uint8_t lgdt[] = { 0x0f, 0x01, 0x10 };
    static const uint8_t insb[] = { 0x6c };
    ck_assert_int_eq(gp_on(swapgs, 3), PVM_M_RESUME);
    assert_gp0_delivered();
    fake_teardown();
    fake_setup();
    ck_assert_int_eq(gp_on(iretq, 2), PVM_M_RESUME);
    assert_gp0_delivered();
    fake_teardown();
    fake_setup();
    ck_assert_int_eq(gp_on(lgdt, 3), PVM_M_RESUME);
    assert_gp0_delivered();
    fake_teardown();
    fake_setup();
    ck_assert_int_eq(gp_on(insb, 1), PVM_M_RESUME);
    assert_gp0_delivered();
}
END_TEST

START_TEST(hardware_error_code_replaced_by_zero)
{
    static const uint8_t int_n[] = { 0xcd, 0x21 }; /* int 0x21: hardware #GP(0x10a) */
    cpu->rip = CODE;
    put_bytes(CODE, int_n, 2);
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_GP, true, 0x10a, 0), PVM_M_RESUME);
    assert_gp0_delivered();
}
END_TEST

START_TEST(unfetchable_is_gp0)
{
    cpu->rip = FAKE_RAM_SIZE + 0x1000;
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_GP, true, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->rip, ENTRY + 256);
    ck_assert_uint_eq(rd64(gp_frame), 13ull << 32);
}
END_TEST

START_TEST(privileged_in_umod_is_gp)
{
    static const uint8_t cli[] = { 0xfa };
    go_user();
    cpu->rip = 0x40000;
    put_bytes(0x40000, cli, 1);
    ck_assert_int_eq(pvm_m_exception(cpu, &mem, PVM_VEC_GP, true, 0, 0), PVM_M_RESUME);
    ck_assert_uint_eq(cpu->mode, PVM_MODE_SUPERVISOR);
    ck_assert_uint_eq(rd32(PVCS_GPA + 12), 13);
    ck_assert_uint_eq(rd32(PVCS_GPA + 8), 0);
    ck_assert_uint_eq(rd64(PVCS_GPA + 96), 0x40000);
    ck_assert_uint_eq(cpu->rip, ENTRY);
}
END_TEST

/* ---- MMIO ------------------------------------------------------------------ */

static enum pvm_m_result mmio_on(const void *bytes, size_t n, uint64_t gpa, bool is_write)
{
    cpu->rip = CODE;
    put_bytes(CODE, bytes, n);
    return pvm_m_mmio(cpu, &mem, gpa, is_write);
}

static void answer(uint64_t data)
{
    struct pvm_exit ans = cpu->exit;
    ans.u.mmio.data = data;
    pvm_m_complete(cpu, &ans);
}

START_TEST(mmio_store_reg)
{
    static const uint8_t insn[] = { 0x89, 0x08 }; /* mov [rax], ecx */
    cpu->gpr[PVM_RCX] = 0xaaaaaaaa12345678ull;
    ck_assert_int_eq(mmio_on(insn, 2, 0xfee00000, true), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_MMIO);
    ck_assert_uint_eq(cpu->exit.u.mmio.gpa, 0xfee00000);
    ck_assert_uint_eq(cpu->exit.u.mmio.size, 4);
    ck_assert_uint_eq(cpu->exit.u.mmio.is_write, 1);
    ck_assert_uint_eq(cpu->exit.u.mmio.data, 0x12345678);
    ck_assert_uint_eq(cpu->rip, CODE);
    pvm_m_complete(cpu, &cpu->exit);
    ck_assert_uint_eq(cpu->rip, CODE + 2);
}
END_TEST

START_TEST(mmio_store_high8_and_imm)
{
    static const uint8_t ah[] = { 0x88, 0x20 };                                /* mov [rax], ah */
    static const uint8_t imm[] = { 0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff }; /* mov qword [rax], -1 */
    cpu->gpr[PVM_RAX] = 0x9988;
    ck_assert_int_eq(mmio_on(ah, 2, 0xd0000000, true), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.mmio.size, 1);
    ck_assert_uint_eq(cpu->exit.u.mmio.data, 0x99);
    pvm_m_complete(cpu, &cpu->exit);
    ck_assert_int_eq(mmio_on(imm, 7, 0xd0000000, true), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.mmio.size, 8);
    ck_assert_uint_eq(cpu->exit.u.mmio.data, ~0ull);
    pvm_m_complete(cpu, &cpu->exit);
    ck_assert_uint_eq(cpu->rip, CODE + 7);
}
END_TEST

START_TEST(mmio_loads)
{
    static const uint8_t ld32[] = { 0x8b, 0x03 };             /* mov eax, [rbx] */
    static const uint8_t ld8[] = { 0x8a, 0x03 };              /* mov al, [rbx] */
    static const uint8_t ldah[] = { 0x8a, 0x23 };             /* mov ah, [rbx] */
    static const uint8_t zx[] = { 0x0f, 0xb6, 0x08 };         /* movzx ecx, byte [rax] */
    static const uint8_t sx[] = { 0x48, 0x0f, 0xbf, 0x08 };   /* movsx rcx, word [rax] */
    static const uint8_t sxd[] = { 0x48, 0x63, 0x10 };        /* movsxd rdx, dword [rax] */
    static const uint8_t ld64[] = { 0x4c, 0x8b, 0x00 };       /* mov r8, [rax] */

    cpu->gpr[PVM_RAX] = ~0ull;
    ck_assert_int_eq(mmio_on(ld32, 2, 0xd0000004, false), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.mmio.size, 4);
    ck_assert_uint_eq(cpu->exit.u.mmio.is_write, 0);
    answer(0xffffffff87654321ull);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x87654321);
    ck_assert_uint_eq(cpu->rip, CODE + 2);

    cpu->gpr[PVM_RAX] = 0x1111111111111111ull;
    ck_assert_int_eq(mmio_on(ld8, 2, 0xd0000000, false), PVM_M_EXIT);
    answer(0xab);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x11111111111111abull);

    ck_assert_int_eq(mmio_on(ldah, 2, 0xd0000000, false), PVM_M_EXIT);
    answer(0xcd);
    ck_assert_uint_eq(cpu->gpr[PVM_RAX], 0x111111111111cdabull);

    cpu->gpr[PVM_RCX] = ~0ull;
    ck_assert_int_eq(mmio_on(zx, 3, 0xd0000000, false), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.mmio.size, 1);
    answer(0x80);
    ck_assert_uint_eq(cpu->gpr[PVM_RCX], 0x80);

    ck_assert_int_eq(mmio_on(sx, 4, 0xd0000000, false), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.mmio.size, 2);
    answer(0x8001);
    ck_assert_uint_eq(cpu->gpr[PVM_RCX], 0xffffffffffff8001ull);
    ck_assert_uint_eq(cpu->rip, CODE + 4);

    ck_assert_int_eq(mmio_on(sxd, 3, 0xd0000000, false), PVM_M_EXIT);
    answer(0x80000000);
    ck_assert_uint_eq(cpu->gpr[PVM_RDX], 0xffffffff80000000ull);

    ck_assert_int_eq(mmio_on(ld64, 3, 0xd0000000, false), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.u.mmio.size, 8);
    answer(0x0123456789abcdefull);
    ck_assert_uint_eq(cpu->gpr[PVM_R8], 0x0123456789abcdefull);
}
END_TEST

START_TEST(mmio_undecodable)
{
    static const uint8_t movsb[] = { 0xf3, 0xa4 }; /* rep movsb */
    ck_assert_int_eq(mmio_on(movsb, 2, 0xd0000000, true), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_INTERNAL_ERROR);
    ck_assert_ptr_nonnull(strstr(cpu->exit.u.internal.msg, "[f3 a4]"));
    ck_assert_uint_eq(cpu->pending_exit, PVM_EXIT_NONE);
    ck_assert_uint_eq(cpu->rip, CODE);
}
END_TEST

START_TEST(mmio_direction_mismatch)
{
    static const uint8_t ld32[] = { 0x8b, 0x03 };
    ck_assert_int_eq(mmio_on(ld32, 2, 0xd0000000, true), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_INTERNAL_ERROR);
}
END_TEST

START_TEST(mmio_from_umod)
{
    static const uint8_t st[] = { 0x89, 0x08 };
    go_user();
    cpu->rip = CODE;
    put_bytes(CODE, st, 2);
    ck_assert_int_eq(pvm_m_mmio(cpu, &mem, 0xd0000000, true), PVM_M_EXIT);
    ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_MMIO);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("machine_emulate");
    TCase *tc = fake_tcase("emulate");
    tcase_add_test(tc, rdmsr);
    tcase_add_test(tc, rdmsr_unknown_is_gp);
    tcase_add_test(tc, wrmsr);
    tcase_add_test(tc, wrmsr_rejected_is_gp);
    tcase_add_test(tc, wrmsr_event_entry_triple_fault);
    tcase_add_test(tc, cli_sti);
    tcase_add_test(tc, sti_takes_pending_irq_at_once);
    tcase_add_test(tc, hlt);
    tcase_add_test(tc, hlt_at_end_of_memory);
    tcase_add_test(tc, mov_cr3);
    tcase_add_test(tc, mov_cr3_noflush_with_pcid);
    tcase_add_test(tc, mov_cr0_cr4);
    tcase_add_test(tc, mov_cr0_change_is_gp);
    tcase_add_test(tc, mov_cr4_bad_is_gp);
    tcase_add_test(tc, mov_cr4_clear_pae_is_gp);
    tcase_add_test(tc, mov_cr8_is_gp);
    tcase_add_test(tc, invlpg);
    tcase_add_test(tc, out_imm);
    tcase_add_test(tc, out_dx_word);
    tcase_add_test(tc, in_dx_dword);
    tcase_add_test(tc, in_al_keeps_upper_bits);
    tcase_add_test(tc, in_abandoned_when_rip_moves);
    tcase_add_test(tc, plain_cpuid);
    tcase_add_test(tc, unemulated_is_gp0);
    tcase_add_test(tc, hardware_error_code_replaced_by_zero);
    tcase_add_test(tc, unfetchable_is_gp0);
    tcase_add_test(tc, privileged_in_umod_is_gp);
    suite_add_tcase(s, tc);
    TCase *m = fake_tcase("mmio");
    tcase_add_test(m, mmio_store_reg);
    tcase_add_test(m, mmio_store_high8_and_imm);
    tcase_add_test(m, mmio_loads);
    tcase_add_test(m, mmio_undecodable);
    tcase_add_test(m, mmio_direction_mismatch);
    tcase_add_test(m, mmio_from_umod);
    suite_add_tcase(s, m);
    return s;
}

int main(void)
{
    return pvm_test_run_suite(suite());
}
