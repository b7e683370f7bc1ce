/*
 * tests/test_kvm_layout.c - the kvm provider's pure parts, byte for byte:
 * descriptor tables, trampoline and kernel half (layout.c), the decoding of
 * a trampoline exit, and the per-slot page tables (pagetable.c).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backends/kvm/kvm.h"
#include "testutil.h"

#include <check.h>

#define PRIV_GPA (64ull << 30)

static uint8_t *priv;

static void setup(void)
{
    priv = mmap(NULL, KVM_PRIV_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    ck_assert_ptr_ne(priv, MAP_FAILED);
    kvm_layout_build(priv, PRIV_GPA);
}

static void teardown(void)
{
    munmap(priv, KVM_PRIV_SIZE);
}

static uint64_t rd64(uint64_t off)
{
    uint64_t v;
    memcpy(&v, priv + off, 8);
    return v;
}

START_TEST(gdt_is_linux_layout)
{
    ck_assert_uint_eq(rd64(KVM_OFF_GDT + 0x00), 0);
    ck_assert_uint_eq(rd64(KVM_OFF_GDT + 0x10), 0x00af9b000000ffffull); /* 64-bit code, DPL 0 */
    ck_assert_uint_eq(rd64(KVM_OFF_GDT + 0x18), 0x00cf93000000ffffull);
    ck_assert_uint_eq(rd64(KVM_OFF_GDT + 0x20), 0x00cffb000000ffffull); /* 0x23: 32-bit user code */
    ck_assert_uint_eq(rd64(KVM_OFF_GDT + 0x28), 0x00cff3000000ffffull); /* 0x2b */
    ck_assert_uint_eq(rd64(KVM_OFF_GDT + 0x30), 0x00affb000000ffffull); /* 0x33: 64-bit user code */
    /* TSS at 0x40: base KVM_KBASE + KVM_OFF_TSS, limit 0x67, busy 64-bit TSS. */
    uint64_t tss = KVM_KBASE + KVM_OFF_TSS;
    ck_assert_uint_eq(rd64(KVM_OFF_GDT + 0x40),
                      0x67 | ((tss & 0xffffff) << 16) | (0x8bull << 40) | (((tss >> 24) & 0xff) << 56));
    ck_assert_uint_eq(rd64(KVM_OFF_GDT + 0x48), tss >> 32);
}
END_TEST

START_TEST(idt_points_every_vector_at_its_hlt)
{
    for (unsigned v = 0; v < 256; v++) {
        uint64_t lo = rd64(KVM_OFF_IDT + 16 * v), hi = rd64(KVM_OFF_IDT + 16 * v + 8);
        uint64_t target = (lo & 0xffff) | (((lo >> 48) & 0xffff) << 16) | (hi << 32);
        ck_assert_uint_eq(target, KVM_KBASE + KVM_OFF_TRAMP + v);
        ck_assert_uint_eq((lo >> 16) & 0xffff, KVM_SEL_KCODE);
        /* Interrupt gates; DPL 3 only where Linux has it: INT3, INTO, INT 0x80. */
        unsigned attr = (lo >> 40) & 0xff;
        ck_assert_uint_eq(attr, (v == 3 || v == 4 || v == 0x80) ? 0xee : 0x8e);
    }
    for (unsigned i = 0; i < KVM_TRAMP_SIZE; i++)
        ck_assert_uint_eq(priv[KVM_OFF_TRAMP + i], 0xf4);
    ck_assert_uint_eq(rd64(KVM_OFF_TSS + 4), KVM_KBASE + KVM_STACK_TOP); /* RSP0 */
    ck_assert_uint_eq(priv[KVM_OFF_TSS + 0x66], 104);                     /* no I/O bitmap */
}
END_TEST

START_TEST(kernel_half_is_supervisor_only)
{
    ck_assert_uint_eq(rd64(KVM_OFF_KPDPT), (PRIV_GPA + KVM_OFF_KPD) | KVM_PTE_P | KVM_PTE_W | KVM_PTE_A);
    ck_assert_uint_eq(rd64(KVM_OFF_KPD), (PRIV_GPA + KVM_OFF_KPT) | KVM_PTE_P | KVM_PTE_W | KVM_PTE_A);
    for (unsigned i = 0; i < KVM_MAPPED_PAGES; i++) {
        uint64_t e = rd64(KVM_OFF_KPT + 8 * i);
        ck_assert_uint_eq(e & KVM_PTE_ADDR, PRIV_GPA + 4096ull * i);
        ck_assert_uint_eq(e & KVM_PTE_U, 0);
        /* Only the trampoline executes; only the TSS and the stack are writable. */
        ck_assert_uint_eq(!(e & KVM_PTE_NX), 4096ull * i == KVM_OFF_TRAMP);
        ck_assert_uint_eq(!!(e & KVM_PTE_W), 4096ull * i == KVM_OFF_TSS || 4096ull * i >= KVM_OFF_STACK);
    }
    ck_assert_uint_eq(rd64(KVM_OFF_KPT + 8 * KVM_MAPPED_PAGES), 0);
}
END_TEST

static void put_frame(bool err, uint64_t e, uint64_t rip, uint64_t cs, uint64_t fl, uint64_t rsp, uint64_t ss)
{
    uint64_t f[6] = { e, rip, cs, fl, rsp, ss };
    memcpy(priv + KVM_STACK_TOP - 40 - (err ? 8 : 0), err ? f : f + 1, err ? 48 : 40);
}

START_TEST(decode_exits)
{
    struct kvm_trap_frame f;
    uint64_t tramp = KVM_KBASE + KVM_OFF_TRAMP;
    /* SYSCALL: entry 256, registers as the instruction left them. */
    ck_assert_int_eq(kvm_decode_exit(priv, tramp + 257, 0x1234, &f), 0);
    ck_assert(f.syscall);
    /* #PF (vector 14) from CPL 3: error code, then the frame. */
    put_frame(true, 0x6, 0x401000, 0x33, 0x10246, 0x7ffff000, 0x2b);
    ck_assert_int_eq(kvm_decode_exit(priv, tramp + 15, KVM_KBASE + KVM_STACK_TOP - 48, &f), 0);
    ck_assert(!f.syscall);
    ck_assert_uint_eq(f.vector, 14);
    ck_assert(f.has_error);
    ck_assert_uint_eq(f.error_code, 6);
    ck_assert_uint_eq(f.rip, 0x401000);
    ck_assert_uint_eq(f.cs, 0x33);
    ck_assert_uint_eq(f.rflags, 0x10246);
    ck_assert_uint_eq(f.rsp, 0x7ffff000);
    ck_assert_uint_eq(f.ss, 0x2b);
    /* #UD (6) has no error code: the frame starts 8 bytes higher. */
    put_frame(false, 0, 0x402000, 0x23, 0x202, 0x5000, 0x2b);
    ck_assert_int_eq(kvm_decode_exit(priv, tramp + 7, KVM_KBASE + KVM_STACK_TOP - 40, &f), 0);
    ck_assert_uint_eq(f.vector, 6);
    ck_assert(!f.has_error);
    ck_assert_uint_eq(f.rip, 0x402000);
    ck_assert_uint_eq(f.cs, 0x23);
    /* Not a trampoline entry, a frame elsewhere, or one from CPL 0: refused. */
    ck_assert_int_eq(kvm_decode_exit(priv, tramp + 258, 0, &f), -1);
    ck_assert_int_eq(kvm_decode_exit(priv, tramp, 0, &f), -1);
    ck_assert_int_eq(kvm_decode_exit(priv, tramp + 7, KVM_KBASE + KVM_STACK_TOP - 48, &f), -1);
    put_frame(false, 0, 0x402000, 0x10, 0x202, 0x5000, 0x18);
    ck_assert_int_eq(kvm_decode_exit(priv, tramp + 7, KVM_KBASE + KVM_STACK_TOP - 40, &f), -1);
    for (unsigned v = 0; v < 32; v++)
        ck_assert_int_eq(kvm_vector_has_error(v), v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 ||
                                                      v == 29 || v == 30);
}
END_TEST

START_TEST(page_tables_per_slot)
{
    struct kvm_ptables pt;
    uint64_t gpa, pte;
    ck_assert_int_eq(kvm_pt_init(&pt, priv, PRIV_GPA), 0);
    uint64_t root = kvm_pt_root(&pt, 1);
    ck_assert_uint_ne(root, 0);
    /* Every PML4 holds the kernel half at 511. */
    ck_assert_uint_eq(rd64(root - PRIV_GPA + 8 * 511), (PRIV_GPA + KVM_OFF_KPDPT) | KVM_PTE_P | KVM_PTE_W | KVM_PTE_A);

    /* 4 KiB, read-only, no-exec user page. */
    ck_assert_int_eq(kvm_pt_map(&pt, 1, 0x401000, 4096, 0x5000, false, false), 0);
    ck_assert_int_eq(kvm_pt_lookup(&pt, 1, 0x401123, &gpa, &pte), 0);
    ck_assert_uint_eq(gpa, 0x5123);
    ck_assert_uint_eq(pte, 0x5000 | KVM_PTE_P | KVM_PTE_U | KVM_PTE_A | KVM_PTE_D | KVM_PTE_NX);
    ck_assert_int_eq(kvm_pt_lookup(&pt, 0, 0x401123, &gpa, &pte), -1); /* other slots see nothing */
    ck_assert(!pt.replaced);
    /* 2 MiB aligned both ways: one large, writable, executable entry. */
    ck_assert_int_eq(kvm_pt_map(&pt, 1, 0x40000000, 2ull << 20, 0x200000, true, true), 0);
    ck_assert_int_eq(kvm_pt_lookup(&pt, 1, 0x40012345, &gpa, &pte), 0);
    ck_assert_uint_eq(gpa, 0x212345);
    ck_assert_uint_eq(pte, 0x200000 | KVM_PTE_P | KVM_PTE_W | KVM_PTE_U | KVM_PTE_A | KVM_PTE_D | KVM_PTE_PS);
    /* Mapping over a present entry is a changed translation: the provider must flush. */
    ck_assert_int_eq(kvm_pt_map(&pt, 1, 0x401000, 4096, 0x6000, true, false), 0);
    ck_assert(pt.replaced);
    ck_assert_int_eq(kvm_pt_lookup(&pt, 1, 0x401000, &gpa, &pte), 0);
    ck_assert_uint_eq(gpa, 0x6000);
    /* Unmap: a range covering part of the large page drops all of it. */
    kvm_pt_unmap(&pt, 1, 0x40100000, 4096);
    ck_assert_int_eq(kvm_pt_lookup(&pt, 1, 0x40012345, &gpa, &pte), -1);
    ck_assert_int_eq(kvm_pt_lookup(&pt, 1, 0x401000, &gpa, &pte), 0);
    kvm_pt_unmap(&pt, 1, 0x401000, 4096);
    ck_assert_int_eq(kvm_pt_lookup(&pt, 1, 0x401000, &gpa, &pte), -1);
    /* Reset frees the slot's tables but its PML4, which keeps the kernel half. */
    unsigned used = pt.used;
    ck_assert_uint_gt(used, 1);
    kvm_pt_reset(&pt, 1);
    ck_assert_uint_eq(pt.used, 1);
    ck_assert_uint_eq(kvm_pt_root(&pt, 1), root);
    ck_assert_uint_eq(rd64(root - PRIV_GPA + 8 * 511), (PRIV_GPA + KVM_OFF_KPDPT) | KVM_PTE_P | KVM_PTE_W | KVM_PTE_A);
    ck_assert_uint_eq(rd64(root - PRIV_GPA), 0);
    kvm_pt_fini(&pt);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kvm_layout");
    TCase *tc = tcase_create("layout");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, gdt_is_linux_layout);
    tcase_add_test(tc, idt_points_every_vector_at_its_hlt);
    tcase_add_test(tc, kernel_half_is_supervisor_only);
    tcase_add_test(tc, decode_exits);
    tcase_add_test(tc, page_tables_per_slot);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
