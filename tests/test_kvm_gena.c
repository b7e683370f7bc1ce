/*
 * tests/test_kvm_gena.c - the kvm backend's Gen A kvm-pvm mode at the ioctl
 * boundary: every structure the mode hands to KVM (CPUID table, boot sregs,
 * regs and MSRs, sregs and MSR writes, memslots, vCPU events), every exit it
 * translates back, and the rule that decides which of KVM_SET_VCPU_EVENTS,
 * KVM_NMI, KVM_INTERRUPT or an interrupt-window request goes before the next
 * KVM_RUN, checked value for value on the pure functions of gena.h.
 *
 * What these tests do NOT prove.  No Gen A kvm-pvm host was reachable (this
 * machine has no /dev/kvm; others have a standard-x86 one).  The expected
 * values come from reading pvm-abi.md and the RFC kvm-pvm code, so these
 * tests show that the library sends what that reading says it should,
 * byte for byte.  They do not show that a real kvm-pvm host accepts this
 * programming, that a guest boots from the state it sets, that interrupts
 * arrive when the gating rule expects, or that gena.c issues the ioctls in
 * the order the comments describe: nothing here runs KVM_RUN.  Only the
 * probe test touches the host, and there only to check the refusal.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/kvm/gena.h"
#include "backends/kvm/kvm.h"
#include "core/backend.h"
#include "machine/machine.h"
#include "testutil.h"

extern const struct pvm_backend_ops pvm_kvm_gena_backend;

#define STAR_RESET 0x0023001000000000ull

static struct kvm_cpuid2 *table(const struct kvm_cpuid_entry2 *e, unsigned n)
{
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(*e));
    ck_assert_ptr_nonnull(c);
    c->nent = n;
    memcpy(c->entries, e, n * sizeof(*e));
    return c;
}

static const struct kvm_cpuid_entry2 pvm_leaf = { .function = 0x40000002, .ebx = 0x4d5650 };
static const uint32_t all_pvm_msrs[] = { 0x10, 0x4b564df0, 0x4b564df1, 0x4b564df2, 0x4b564df3,
                                         0x4b564df4, 0x4b564df5, 0x4b564df6, 0x4b564df7, 0xc0000080 };

/* ---- detection (kvm.c) --------------------------------------------------------------- */

START_TEST(detection)
{
    struct kvm_cpuid_entry2 ents[2] = { { .function = 0x40000000, .eax = 0x40000002 }, pvm_leaf };
    struct kvm_cpuid2 *c = table(ents, 2);
    ck_assert(kvm_is_gen_a(c, all_pvm_msrs, 10));
    /* The leaf alone is not enough: every one of the eight MSRs must be listed (§9.8). */
    uint32_t missing[9];
    for (unsigned skip = 1; skip <= 8; skip++) {
        unsigned k = 0;
        for (unsigned i = 0; i < 10; i++)
            if (i != skip && k < 9)
                missing[k++] = all_pvm_msrs[i];
        ck_assert_msg(!kvm_is_gen_a(c, missing, k), "MSR 0x%x missing yet Gen A", all_pvm_msrs[skip]);
    }
    /* Gen B lacks REDZONE (0x4b564df3) and SWITCH_CR3 (0x4b564df7). */
    const uint32_t gen_b[] = { 0x4b564df0, 0x4b564df1, 0x4b564df2, 0x4b564df4, 0x4b564df5, 0x4b564df6 };
    ck_assert(!kvm_is_gen_a(c, gen_b, 6));
    /* The third-party fork's numbering (§0.2) is not Gen A either. */
    const uint32_t fork[] = { 0x4b564d20, 0x4b564d21, 0x4b564d22, 0x4b564d23, 0x4b564d24, 0x4b564d25,
                              0x4b564d26, 0x4b564d27 };
    ck_assert(!kvm_is_gen_a(c, fork, 8));
    ck_assert(!kvm_is_gen_a(c, NULL, 0));
    free(c);

    /* All MSRs but no leaf, or the spec's typo 0x6d7670 (§10.31): not Gen A. */
    ck_assert(!kvm_is_gen_a(NULL, all_pvm_msrs, 10));
    struct kvm_cpuid_entry2 typo = { .function = 0x40000002, .ebx = 0x6d7670 };
    c = table(&typo, 1);
    ck_assert(!kvm_is_gen_a(c, all_pvm_msrs, 10));
    free(c);
    /* The signature on another leaf does not count. */
    struct kvm_cpuid_entry2 elsewhere = { .function = 0x40000001, .ebx = 0x4d5650 };
    c = table(&elsewhere, 1);
    ck_assert(!kvm_is_gen_a(c, all_pvm_msrs, 10));
    free(c);
}
END_TEST

/* ---- CPUID --------------------------------------------------------------------------- */

static const struct kvm_cpuid_entry2 host_leaves[] = {
    { .function = 0, .eax = 0xd, .ebx = 0x68747541 },
    { .function = 7, .index = 0, .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .ebx = 0x1 },
    { .function = 7, .index = 1, .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .eax = 0x10 },
    { .function = 0x40000000, .eax = 0x40000001, .ebx = 0x4b4d564b, .ecx = 0x564b4d56, .edx = 0x4d },
    { .function = 0x40000001, .eax = 0x1234 },
    { .function = 0x40000002, .ebx = 0x4d5650 },
};

static void entry_eq(const struct kvm_cpuid_entry2 *a, const struct kvm_cpuid_entry2 *b)
{
    ck_assert_uint_eq(a->function, b->function);
    ck_assert_uint_eq(a->index, b->index);
    ck_assert_uint_eq(a->flags, b->flags);
    ck_assert_uint_eq(a->eax, b->eax);
    ck_assert_uint_eq(a->ebx, b->ebx);
    ck_assert_uint_eq(a->ecx, b->ecx);
    ck_assert_uint_eq(a->edx, b->edx);
}

START_TEST(cpuid_host_table)
{
    struct kvm_cpuid2 *sup = table(host_leaves, 6);
    struct kvm_cpuid_entry2 out[8];
    ck_assert_int_eq(kvm_gena_cpuid(sup, NULL, 0, out, 8), 6);
    for (unsigned i = 0; i < 6; i++) {
        struct kvm_cpuid_entry2 want = host_leaves[i];
        if (want.function == 0x40000000)
            want.eax = 0x40000002; /* §9.2: the leaf must admit 0x40000002 */
        entry_eq(&out[i], &want);
    }
    /* Exactly @max fits; one less does not. */
    ck_assert_int_eq(kvm_gena_cpuid(sup, NULL, 0, out, 6), 6);
    ck_assert_int_eq(kvm_gena_cpuid(sup, NULL, 0, out, 5), -1);
    free(sup);

    /* No host table: the two PVM leaves of §8.1, as the machine model's defaults. */
    ck_assert_int_eq(kvm_gena_cpuid(NULL, NULL, 0, out, 8), 2);
    entry_eq(&out[0], &(struct kvm_cpuid_entry2){ .function = 0x40000000, .eax = 0x40000002, .ebx = 0x4b4d564b,
                                                   .ecx = 0x564b4d56, .edx = 0x4d });
    entry_eq(&out[1], &(struct kvm_cpuid_entry2){ .function = 0x40000002, .ebx = 0x4d5650 });
    ck_assert_int_eq(kvm_gena_cpuid(NULL, NULL, 0, out, 1), -1);
}
END_TEST

START_TEST(cpuid_user_leaves_replace_host_leaves)
{
    struct kvm_cpuid2 *sup = table(host_leaves, 6);
    struct kvm_cpuid_entry2 out[8];
    /* One user entry for leaf 7 replaces both host subleaves; its flag maps to KVM's. */
    const struct pvm_cpuid_entry u7 = { .function = 7, .index = 0, .flags = PVM_CPUID_FLAG_SIGNIFICANT_INDEX,
                                        .ebx = 0x2, .edx = 0x99 };
    ck_assert_int_eq(kvm_gena_cpuid(sup, &u7, 1, out, 8), 5);
    entry_eq(&out[0], &host_leaves[0]);
    entry_eq(&out[1], &(struct kvm_cpuid_entry2){ .function = 0x40000000, .eax = 0x40000002, .ebx = 0x4b4d564b,
                                                   .ecx = 0x564b4d56, .edx = 0x4d });
    entry_eq(&out[2], &host_leaves[4]);
    entry_eq(&out[3], &host_leaves[5]);
    entry_eq(&out[4], &(struct kvm_cpuid_entry2){ .function = 7, .index = 0,
                                                   .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .ebx = 0x2, .edx = 0x99 });

    /* The user may override the PVM leaves (pvm_vcpu_set_cpuid): theirs win, nothing is added or raised. */
    const struct pvm_cpuid_entry upvm[2] = { { .function = 0x40000000, .eax = 0x40000001 },
                                             { .function = 0x40000002, .ebx = 0x1 } };
    ck_assert_int_eq(kvm_gena_cpuid(sup, upvm, 2, out, 8), 6);
    entry_eq(&out[4], &(struct kvm_cpuid_entry2){ .function = 0x40000000, .eax = 0x40000001 });
    entry_eq(&out[5], &(struct kvm_cpuid_entry2){ .function = 0x40000002, .ebx = 0x1 });
    free(sup);

    /* A host table without the PVM leaves gets them after the user's entries. */
    struct kvm_cpuid2 *plain = table(host_leaves, 3);
    const struct pvm_cpuid_entry u1 = { .function = 1, .ecx = 0x80000000 };
    ck_assert_int_eq(kvm_gena_cpuid(plain, &u1, 1, out, 8), 6);
    entry_eq(&out[3], &(struct kvm_cpuid_entry2){ .function = 1, .ecx = 0x80000000 });
    ck_assert_uint_eq(out[4].function, 0x40000000);
    ck_assert_uint_eq(out[4].eax, 0x40000002);
    entry_eq(&out[5], &(struct kvm_cpuid_entry2){ .function = 0x40000002, .ebx = 0x4d5650 });
    /* The user's entries count against @max too. */
    ck_assert_int_eq(kvm_gena_cpuid(plain, &u1, 1, out, 3), -1);
    free(plain);
}
END_TEST

/* ---- boot state ---------------------------------------------------------------------- */

START_TEST(boot_msrs)
{
    struct kvm_msr_entry e[KVM_GENA_BOOT_MSRS + 1];
    memset(e, 0x5a, sizeof(e));
    ck_assert_uint_eq(kvm_gena_boot_msrs(e), 8);
    static const struct { uint32_t index; uint64_t data; } want[8] = {
        { 0xc0000081, 0x0023001000000000ull }, /* STAR: smod CS 0x10, SS 0x18 (§1.2) */
        { 0x4b564df1, 0 },                     /* VCPU_STRUCT */
        { 0x4b564df2, 0 },                     /* SUPERVISOR_RSP */
        { 0x4b564df3, 0 },                     /* SUPERVISOR_REDZONE */
        { 0x4b564df4, 0 },                     /* EVENT_ENTRY */
        { 0x4b564df5, 0xfffffffffffffffeull }, /* RETU_RIP: stored + 2 = 0 */
        { 0x4b564df6, 0xfffffffffffffffeull }, /* RETS_RIP */
        { 0x4b564df7, 0 },                     /* SWITCH_CR3 */
    };
    for (unsigned i = 0; i < 8; i++) {
        ck_assert_uint_eq(e[i].index, want[i].index);
        ck_assert_uint_eq(e[i].reserved, 0);
        ck_assert_uint_eq(e[i].data, want[i].data);
    }
    ck_assert_uint_eq(e[8].index, 0x5a5a5a5a); /* nothing beyond */
    /* The machine model starts from the same values (every backend boots the same vCPU). */
    struct pvm_cpu *cpu = calloc(1, sizeof(*cpu));
    ck_assert_ptr_nonnull(cpu);
    pvm_m_reset(cpu, PVM_LA_RANGE_MAKE(0x1b2, 0x1d2, 0x1ff, 0x1ff));
    for (unsigned i = 0; i < 8; i++) {
        uint64_t v;
        ck_assert_int_eq(pvm_m_rdmsr(cpu, NULL, e[i].index, &v, true), 0);
        ck_assert_uint_eq(v, e[i].data);
    }
    free(cpu);
}
END_TEST

static struct kvm_sregs fresh_sregs(void)
{
    /* A fresh kvm-pvm vCPU (RFC pvm_vcpu_reset), plus values that must survive. */
    struct kvm_sregs s;
    memset(&s, 0, sizeof(s));
    s.cs = (struct kvm_segment){ .base = 0xffff0000, .limit = 0xffff, .selector = 0xf000, .type = 0xb,
                                 .present = 1, .s = 1 };
    s.ds = s.es = s.fs = s.gs = s.ss = (struct kvm_segment){ .limit = 0xffff, .type = 3, .present = 1, .s = 1 };
    s.tr = (struct kvm_segment){ .limit = 0xffff, .type = 11, .present = 1 };
    s.ldt = (struct kvm_segment){ .limit = 0xffff, .type = 2, .present = 1 };
    s.gdt = (struct kvm_dtable){ .base = 0x1000, .limit = 0xffff };
    s.idt = (struct kvm_dtable){ .base = 0x2000, .limit = 0xffff };
    s.cr0 = 0x60000010;
    s.cr8 = 0;
    s.apic_base = 0xfee00900;
    s.interrupt_bitmap[1] = 1; /* would queue vector 64 */
    return s;
}

static void seg_eq(const struct kvm_segment *a, const struct kvm_segment *b)
{
    ck_assert_uint_eq(a->base, b->base);
    ck_assert_uint_eq(a->limit, b->limit);
    ck_assert_uint_eq(a->selector, b->selector);
    ck_assert_uint_eq(a->type, b->type);
    ck_assert_uint_eq(a->present, b->present);
    ck_assert_uint_eq(a->dpl, b->dpl);
    ck_assert_uint_eq(a->db, b->db);
    ck_assert_uint_eq(a->s, b->s);
    ck_assert_uint_eq(a->l, b->l);
    ck_assert_uint_eq(a->g, b->g);
    ck_assert_uint_eq(a->avl, b->avl);
    ck_assert_uint_eq(a->unusable, b->unusable);
}

static const struct kvm_segment CODE64_K = { .limit = 0xffffffff, .selector = 0x10, .type = 11, .present = 1,
                                             .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1 };
static const struct kvm_segment DATA_K = { .limit = 0xffffffff, .selector = 0x18, .type = 3, .present = 1,
                                           .dpl = 0, .db = 1, .s = 1, .g = 1 };
static const struct kvm_segment NULL_DATA = { .limit = 0xffffffff, .selector = 0, .type = 3, .present = 1,
                                              .dpl = 0, .db = 1, .s = 1, .g = 1 };

START_TEST(boot_sregs_and_regs)
{
    struct kvm_sregs cur = fresh_sregs(), s;
    kvm_gena_boot_sregs(&cur, &s);
    ck_assert_uint_eq(s.cr0, 0x80050033);
    ck_assert_uint_eq(s.cr4, 0x10620);
    ck_assert_uint_eq(s.efer, 0xd01);
    ck_assert_uint_eq(s.cr2, 0);
    ck_assert_uint_eq(s.cr3, 0);
    seg_eq(&s.cs, &CODE64_K); /* DPL 0 and L 1: smod, converted to PVM mode at once (§9.4) */
    seg_eq(&s.ss, &DATA_K);
    seg_eq(&s.ds, &NULL_DATA);
    seg_eq(&s.es, &NULL_DATA);
    seg_eq(&s.fs, &NULL_DATA);
    seg_eq(&s.gs, &NULL_DATA);
    /* Kept from KVM: no effect in PVM (§1.4); the LDT selector stays 0 (non-NULL is a triple fault). */
    seg_eq(&s.tr, &cur.tr);
    seg_eq(&s.ldt, &cur.ldt);
    ck_assert_uint_eq(s.ldt.selector, 0);
    ck_assert_uint_eq(s.gdt.base, 0x1000);
    ck_assert_uint_eq(s.idt.base, 0x2000);
    ck_assert_uint_eq(s.apic_base, 0xfee00900);
    for (unsigned i = 0; i < sizeof(s.interrupt_bitmap) / sizeof(s.interrupt_bitmap[0]); i++)
        ck_assert_uint_eq(s.interrupt_bitmap[i], 0);

    struct kvm_regs r;
    memset(&r, 0x77, sizeof(r));
    kvm_gena_boot_regs(&r);
    struct kvm_regs want;
    memset(&want, 0, sizeof(want));
    want.rflags = 2;
    ck_assert(memcmp(&r, &want, sizeof(r)) == 0);

    /* Same as the machine model's reset (lib/machine/cpu.c). */
    struct pvm_cpu *cpu = calloc(1, sizeof(*cpu));
    ck_assert_ptr_nonnull(cpu);
    pvm_m_reset(cpu, PVM_LA_RANGE_MAKE(0x1b2, 0x1d2, 0x1ff, 0x1ff));
    ck_assert_uint_eq(s.cr0, cpu->cr0);
    ck_assert_uint_eq(s.cr4, cpu->cr4);
    ck_assert_uint_eq(s.efer, cpu->efer);
    ck_assert_uint_eq(s.cs.selector, (cpu->msr_star >> 32) & 0xfffc);
    ck_assert_uint_eq(r.rflags, cpu->rflags);
    ck_assert_uint_eq(cpu->msr_star, STAR_RESET);
    free(cpu);
}
END_TEST

/* ---- registers and sregs ----------------------------------------------------------------- */

START_TEST(regs_both_ways)
{
    struct pvm_regs r = { .rax = 1, .rbx = 2, .rcx = 3, .rdx = 4, .rsi = 5, .rdi = 6, .rsp = 7, .rbp = 8,
                          .r8 = 9, .r9 = 10, .r10 = 11, .r11 = 12, .r12 = 13, .r13 = 14, .r14 = 15, .r15 = 16,
                          .rip = 0xffffd90000001000ull, .rflags = 0x246 };
    struct kvm_regs k;
    kvm_gena_regs_to_kvm(&r, &k);
    ck_assert_uint_eq(k.rax, 1); ck_assert_uint_eq(k.rbx, 2); ck_assert_uint_eq(k.rcx, 3);
    ck_assert_uint_eq(k.rdx, 4); ck_assert_uint_eq(k.rsi, 5); ck_assert_uint_eq(k.rdi, 6);
    ck_assert_uint_eq(k.rsp, 7); ck_assert_uint_eq(k.rbp, 8); ck_assert_uint_eq(k.r8, 9);
    ck_assert_uint_eq(k.r9, 10); ck_assert_uint_eq(k.r10, 11); ck_assert_uint_eq(k.r11, 12);
    ck_assert_uint_eq(k.r12, 13); ck_assert_uint_eq(k.r13, 14); ck_assert_uint_eq(k.r14, 15);
    ck_assert_uint_eq(k.r15, 16);
    ck_assert_uint_eq(k.rip, 0xffffd90000001000ull);
    ck_assert_uint_eq(k.rflags, 0x246); /* IF as given: kvm-pvm mirrors it into the PVCS (§5.7) */
    struct pvm_regs back;
    memset(&back, 0xee, sizeof(back));
    kvm_gena_regs_from_kvm(&k, &back);
    ck_assert(memcmp(&back, &r, sizeof(r)) == 0);
}
END_TEST

START_TEST(sregs_from_kvm)
{
    struct kvm_sregs k = fresh_sregs();
    k.cs = CODE64_K;
    k.ss = DATA_K;
    k.ds.selector = 0x2b;
    k.fs = (struct kvm_segment){ .selector = 0, .base = 0x7000 };
    k.gs = (struct kvm_segment){ .selector = 0x63, .base = 0xffffd90000002000ull };
    k.cr0 = 0x80050033; k.cr2 = 0x1234; k.cr3 = 0x5000; k.cr4 = 0x10620; k.efer = 0xd01;
    struct pvm_sregs s;
    kvm_gena_sregs_from_kvm(&k, &s);
    ck_assert_uint_eq(s.mode, PVM_MODE_SUPERVISOR);
    ck_assert_uint_eq(s.cs, 0x10);
    ck_assert_uint_eq(s.ss, 0x18);
    ck_assert_uint_eq(s.ds, 0x2b);
    ck_assert_uint_eq(s.fs, 0);
    ck_assert_uint_eq(s.gs, 0x63);
    ck_assert_uint_eq(s.fs_base, 0x7000);
    ck_assert_uint_eq(s.gs_base, 0xffffd90000002000ull);
    ck_assert_uint_eq(s.cr0, 0x80050033); ck_assert_uint_eq(s.cr2, 0x1234); ck_assert_uint_eq(s.cr3, 0x5000);
    ck_assert_uint_eq(s.cr4, 0x10620); ck_assert_uint_eq(s.efer, 0xd01);

    /* umod on the RFC host: selectors >> 3 (6, 5); libpvm reports the real ones (§1.2). */
    k.cs = (struct kvm_segment){ .selector = 6, .dpl = 3, .l = 1 };
    k.ss = (struct kvm_segment){ .selector = 5, .dpl = 3 };
    kvm_gena_sregs_from_kvm(&k, &s);
    ck_assert_uint_eq(s.mode, PVM_MODE_USER);
    ck_assert_uint_eq(s.cs, 0x33);
    ck_assert_uint_eq(s.ss, 0x2b);
    k.cs = (struct kvm_segment){ .selector = 4, .dpl = 3, .l = 0, .db = 1 };
    kvm_gena_sregs_from_kvm(&k, &s);
    ck_assert_uint_eq(s.cs, 0x23);
    /* A host that reports real selectors (the later code) passes through. */
    k.cs = (struct kvm_segment){ .selector = 0x33, .dpl = 3, .l = 1 };
    k.ss = (struct kvm_segment){ .selector = 0x2b, .dpl = 3 };
    kvm_gena_sregs_from_kvm(&k, &s);
    ck_assert_uint_eq(s.cs, 0x33);
    ck_assert_uint_eq(s.ss, 0x2b);
}
END_TEST

START_TEST(sregs_to_kvm)
{
    struct kvm_sregs cur = fresh_sregs(), k;
    cur.cs = CODE64_K; /* smod */
    const char *why = "x";
    struct pvm_sregs s = { .mode = PVM_MODE_SUPERVISOR, .cs = 0x99, .ss = 0x77, .ds = 0x2b, .es = 0, .fs = 0,
                           .gs = 0x2b, .fs_base = 0x7000, .gs_base = 0xffffd90000002000ull, .cr0 = 0x80050033,
                           .cr2 = 0xabc, .cr3 = 0x6000, .cr4 = 0x10620, .efer = 0xd01 };
    /* smod CS/SS come from STAR (here a guest-set kernel CS 0x20), not from pvm_sregs. */
    ck_assert_int_eq(kvm_gena_sregs_to_kvm(&s, &cur, 0x0023002000000000ull, true, &k, &why), 0);
    ck_assert_ptr_null(why);
    struct kvm_segment cs = CODE64_K, ss = DATA_K;
    cs.selector = 0x20;
    ss.selector = 0x28;
    seg_eq(&k.cs, &cs);
    seg_eq(&k.ss, &ss);
    seg_eq(&k.ds, &(struct kvm_segment){ .limit = 0xffffffff, .selector = 0x2b, .type = 3, .present = 1,
                                         .dpl = 3, .db = 1, .s = 1, .g = 1 });
    seg_eq(&k.es, &NULL_DATA);
    struct kvm_segment fs = NULL_DATA;
    fs.base = 0x7000;
    seg_eq(&k.fs, &fs);
    seg_eq(&k.gs, &(struct kvm_segment){ .base = 0xffffd90000002000ull, .limit = 0xffffffff, .selector = 0x2b,
                                         .type = 3, .present = 1, .dpl = 3, .db = 1, .s = 1, .g = 1 });
    ck_assert_uint_eq(k.cr0, 0x80050033); ck_assert_uint_eq(k.cr2, 0xabc); ck_assert_uint_eq(k.cr3, 0x6000);
    ck_assert_uint_eq(k.cr4, 0x10620); ck_assert_uint_eq(k.efer, 0xd01);
    ck_assert_uint_eq(k.apic_base, cur.apic_base);
    seg_eq(&k.tr, &cur.tr);
    ck_assert_uint_eq(k.interrupt_bitmap[1], 0); /* never queues an interrupt */

    /* Entering umod before the first run (§9.4, migration): CS 0x33 DPL 3, SS 0x2b. */
    s.mode = PVM_MODE_USER;
    s.cs = 0x33;
    ck_assert_int_eq(kvm_gena_sregs_to_kvm(&s, &cur, STAR_RESET, false, &k, &why), 0);
    seg_eq(&k.cs, &(struct kvm_segment){ .limit = 0xffffffff, .selector = 0x33, .type = 11, .present = 1,
                                         .dpl = 3, .db = 0, .s = 1, .l = 1, .g = 1 });
    seg_eq(&k.ss, &(struct kvm_segment){ .limit = 0xffffffff, .selector = 0x2b, .type = 3, .present = 1,
                                         .dpl = 3, .db = 1, .s = 1, .g = 1 });
    /* ... but not after it: a DPL change is a triple fault there (§5.10). */
    ck_assert_int_eq(kvm_gena_sregs_to_kvm(&s, &cur, STAR_RESET, true, &k, &why), PVM_ESTATE);
    ck_assert(strstr(why, "first run"));
    /* The RFC never loads the hardware CS from KVM_SET_SREGS: entering umod means 0x33. */
    s.cs = 0x23;
    ck_assert_int_eq(kvm_gena_sregs_to_kvm(&s, &cur, STAR_RESET, false, &k, &why), PVM_ENOTSUP);
    ck_assert(strstr(why, "ERETU"));
    /* Already in 32-bit umod: 0x23 stays, 0x33 cannot be had. */
    struct kvm_sregs cur32 = cur;
    cur32.cs = (struct kvm_segment){ .selector = 4, .dpl = 3, .l = 0, .db = 1, .type = 11, .present = 1, .s = 1 };
    ck_assert_int_eq(kvm_gena_sregs_to_kvm(&s, &cur32, STAR_RESET, true, &k, &why), 0);
    seg_eq(&k.cs, &(struct kvm_segment){ .limit = 0xffffffff, .selector = 0x23, .type = 11, .present = 1,
                                         .dpl = 3, .db = 1, .s = 1, .l = 0, .g = 1 });
    s.cs = 0x33;
    ck_assert_int_eq(kvm_gena_sregs_to_kvm(&s, &cur32, STAR_RESET, true, &k, &why), PVM_ENOTSUP);
    /* Bad arguments. */
    s.cs = 0x1b;
    ck_assert_int_eq(kvm_gena_sregs_to_kvm(&s, &cur, STAR_RESET, false, &k, &why), PVM_EINVAL);
    s.mode = 7;
    ck_assert_int_eq(kvm_gena_sregs_to_kvm(&s, &cur, STAR_RESET, false, &k, &why), PVM_EINVAL);
    ck_assert_ptr_nonnull(why);
}
END_TEST

START_TEST(msr_rules)
{
    for (uint32_t i = 0x4b564df0; i <= 0x4b564df7; i++)
        ck_assert(kvm_gena_msr_known(i));
    ck_assert(!kvm_gena_msr_known(0x4b564def));
    ck_assert(!kvm_gena_msr_known(0x4b564df8)); /* PVM range, but undefined in Gen A */
    static const uint32_t std[] = { 0xc0000080, 0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0xc0000100,
                                    0xc0000101, 0xc0000102, 0xc0000103, 0x174, 0x175, 0x176, 0x1d9, 0x10 };
    for (unsigned i = 0; i < sizeof(std) / sizeof(std[0]); i++)
        ck_assert_msg(kvm_gena_msr_known(std[i]), "MSR 0x%x", std[i]);
    ck_assert(!kvm_gena_msr_known(0x140)); /* MISC_FEATURES_ENABLES: not in the documented set */
    ck_assert(!kvm_gena_msr_known(0x4b564d00));
    ck_assert_int_eq(kvm_gena_msr_check(0x140, 0, false), PVM_ENOENT);

    /* EFER: SCE LME LMA stay, only NXE may change (no non-PVM mode). */
    ck_assert_int_eq(kvm_gena_msr_check(0xc0000080, 0xd01, false), 0);
    ck_assert_int_eq(kvm_gena_msr_check(0xc0000080, 0x501, false), 0);
    ck_assert_int_eq(kvm_gena_msr_check(0xc0000080, 0x901, false), PVM_EINVAL);  /* no LMA */
    ck_assert_int_eq(kvm_gena_msr_check(0xc0000080, 0xd00, false), PVM_EINVAL);  /* no SCE */
    ck_assert_int_eq(kvm_gena_msr_check(0xc0000080, 0x4d01, false), PVM_EINVAL); /* FFXSR */

    /* EVENT_ENTRY: +0, +256 and +512 canonical, or kvm-pvm triple-faults even on a host write (§10.12). */
    ck_assert_int_eq(kvm_gena_msr_check(0x4b564df4, 0, false), 0);
    ck_assert_int_eq(kvm_gena_msr_check(0x4b564df4, 0xffffd90000000000ull, false), 0);
    ck_assert_int_eq(kvm_gena_msr_check(0x4b564df4, 0x00007ffffffffd00ull, false), 0);
    ck_assert_int_eq(kvm_gena_msr_check(0x4b564df4, 0x00007ffffffffe00ull, false), PVM_EINVAL); /* +512 */
    ck_assert_int_eq(kvm_gena_msr_check(0x4b564df4, 0x00007fffffffff00ull, false), PVM_EINVAL); /* +256 */
    ck_assert_int_eq(kvm_gena_msr_check(0x4b564df4, 0x0000800000000000ull, false), PVM_EINVAL);
    ck_assert_int_eq(kvm_gena_msr_check(0x4b564df4, 0x0000800000000000ull, true), 0); /* 57-bit */
    ck_assert_int_eq(kvm_gena_msr_check(0x4b564df4, 0x0100000000000000ull, true), PVM_EINVAL);
    /* Everything else is the kernel's to check. */
    ck_assert_int_eq(kvm_gena_msr_check(0x4b564df0, 0x1, false), 0);
    ck_assert_int_eq(kvm_gena_msr_check(0xc0000081, 0xdead, false), 0);
}
END_TEST

/* ---- memory ---------------------------------------------------------------------------- */

START_TEST(memslots)
{
    static uint8_t buf[3 * 4096] __attribute__((aligned(4096)));
    struct pvm_region r = { .gpa = 0x100000, .size = 0x2000, .host = buf, .flags = 0, .memfd_off = 0 };
    struct kvm_userspace_memory_region m;
    const char *why = "x";
    ck_assert_int_eq(kvm_gena_memslot(&r, 3, true, &m, &why), 0);
    ck_assert_ptr_null(why);
    ck_assert_uint_eq(m.slot, 3);
    ck_assert_uint_eq(m.flags, 0);
    ck_assert_uint_eq(m.guest_phys_addr, 0x100000);
    ck_assert_uint_eq(m.memory_size, 0x2000);
    ck_assert_uint_eq(m.userspace_addr, (uint64_t)(uintptr_t)buf);
    r.flags = PVM_MEM_READONLY;
    ck_assert_int_eq(kvm_gena_memslot(&r, 0, true, &m, &why), 0);
    ck_assert_uint_eq(m.flags, KVM_MEM_READONLY);
    ck_assert_int_eq(kvm_gena_memslot(&r, 0, false, &m, &why), PVM_ENOTSUP);
    ck_assert(strstr(why, "KVM_CAP_READONLY_MEM"));
    r.flags = PVM_MEM_NOEXEC;
    ck_assert_int_eq(kvm_gena_memslot(&r, 0, true, &m, &why), PVM_ENOTSUP);
    ck_assert(strstr(why, "instruction fetches"));

    struct kvm_translation t = { .linear_address = 0x1000, .physical_address = 0x5000, .valid = 1 };
    uint64_t gpa = 0;
    ck_assert_int_eq(kvm_gena_translation(&t, &gpa), 0);
    ck_assert_uint_eq(gpa, 0x5000);
    t.valid = 0;
    gpa = 7;
    ck_assert_int_eq(kvm_gena_translation(&t, &gpa), -1);
    ck_assert_uint_eq(gpa, 7);
}
END_TEST

/* ---- exits ------------------------------------------------------------------------------ */

#define RUN_SIZE 8192u
static union {
    struct kvm_run run;
    uint8_t bytes[RUN_SIZE];
} page __attribute__((aligned(4096)));

static struct kvm_run *fresh_run(uint32_t reason)
{
    memset(&page, 0, sizeof(page));
    page.run.exit_reason = reason;
    return &page.run;
}

static struct kvm_run *io(uint8_t dir, uint16_t port, uint8_t size, uint32_t count, uint64_t off)
{
    struct kvm_run *run = fresh_run(KVM_EXIT_IO);
    run->io.direction = dir;
    run->io.port = port;
    run->io.size = size;
    run->io.count = count;
    run->io.data_offset = off;
    return run;
}

static void internal_error_says(const struct kvm_run *run, const char *text)
{
    struct pvm_exit e;
    struct kvm_gena_pending p = { .kind = 9 };
    ck_assert_int_eq(kvm_gena_exit(run, RUN_SIZE, &e, &p), KVM_GENA_TO_APP);
    ck_assert_uint_eq(e.reason, PVM_EXIT_INTERNAL_ERROR);
    ck_assert_int_eq(e.u.internal.code, PVM_EINTERNAL);
    ck_assert_msg(strstr(e.u.internal.msg, text), "\"%s\" lacks \"%s\"", e.u.internal.msg, text);
    ck_assert_uint_eq(p.kind, KVM_GENA_PEND_NONE);
}

START_TEST(exit_io)
{
    struct pvm_exit e;
    struct kvm_gena_pending p;
    struct kvm_run *run = io(KVM_EXIT_IO_OUT, 0x3f8, 1, 1, 4096);
    page.bytes[4096] = 'A';
    page.bytes[4097] = 0xff;
    ck_assert_int_eq(kvm_gena_exit(run, RUN_SIZE, &e, &p), KVM_GENA_TO_APP);
    ck_assert_uint_eq(e.reason, PVM_EXIT_IO);
    ck_assert_uint_eq(e.u.io.port, 0x3f8);
    ck_assert_uint_eq(e.u.io.size, 1);
    ck_assert_uint_eq(e.u.io.is_write, 1);
    ck_assert_uint_eq(e.u.io.data, 0x41); /* one byte only */
    ck_assert_uint_eq(p.kind, KVM_GENA_PEND_NONE);

    run = io(KVM_EXIT_IO_OUT, 0x510, 4, 1, 4096);
    memcpy(page.bytes + 4096, "\xef\xbe\xad\xde", 4);
    ck_assert_int_eq(kvm_gena_exit(run, RUN_SIZE, &e, &p), KVM_GENA_TO_APP);
    ck_assert_uint_eq(e.u.io.data, 0xdeadbeef);
    ck_assert_uint_eq(e.u.io.size, 4);

    /* IN: the application's answer goes back into the data page, size bytes, nothing more. */
    run = io(KVM_EXIT_IO_IN, 0x60, 2, 1, 4096);
    memset(page.bytes + 4096, 0xcc, 8);
    ck_assert_int_eq(kvm_gena_exit(run, RUN_SIZE, &e, &p), KVM_GENA_TO_APP);
    ck_assert_uint_eq(e.reason, PVM_EXIT_IO);
    ck_assert_uint_eq(e.u.io.port, 0x60);
    ck_assert_uint_eq(e.u.io.size, 2);
    ck_assert_uint_eq(e.u.io.is_write, 0);
    ck_assert_uint_eq(e.u.io.data, 0);
    ck_assert_uint_eq(p.kind, KVM_GENA_PEND_IO_IN);
    ck_assert_uint_eq(p.size, 2);
    ck_assert_uint_eq(p.offset, 4096);
    e.u.io.data = 0xaabb1234;
    kvm_gena_complete(run, RUN_SIZE, &p, &e);
    ck_assert_uint_eq(page.bytes[4096], 0x34);
    ck_assert_uint_eq(page.bytes[4097], 0x12);
    ck_assert_uint_eq(page.bytes[4098], 0xcc);

    /* Kernel-returned values are checked before use. */
    internal_error_says(io(KVM_EXIT_IO_OUT, 0x80, 3, 1, 4096), "size 3");
    internal_error_says(io(KVM_EXIT_IO_OUT, 0x80, 1, 2, 4096), "string I/O");
    internal_error_says(io(KVM_EXIT_IO_OUT, 0x80, 1, 0, 4096), "0 elements");
    internal_error_says(io(KVM_EXIT_IO_OUT, 0x80, 4, 1, RUN_SIZE - 2), "outside");
    internal_error_says(io(KVM_EXIT_IO_IN, 0x80, 4, 1, 0xfffffffffffffffeull), "outside");
    ck_assert_int_eq(kvm_gena_exit(io(KVM_EXIT_IO_OUT, 0x80, 4, 1, RUN_SIZE - 4), RUN_SIZE, &e, &p),
                     KVM_GENA_TO_APP);
    ck_assert_uint_eq(e.reason, PVM_EXIT_IO);

    /* A completion that no longer fits the mapping writes nothing. */
    memset(&page, 0, sizeof(page));
    struct kvm_gena_pending bad = { .kind = KVM_GENA_PEND_IO_IN, .size = 4, .offset = RUN_SIZE - 2 };
    e.u.io.data = 0xffffffff;
    kvm_gena_complete(&page.run, RUN_SIZE, &bad, &e);
    ck_assert_uint_eq(page.bytes[RUN_SIZE - 2], 0);
    struct kvm_gena_pending none = { .kind = KVM_GENA_PEND_NONE, .size = 4, .offset = 4096 };
    kvm_gena_complete(&page.run, RUN_SIZE, &none, &e);
    ck_assert_uint_eq(page.bytes[4096], 0);
}
END_TEST

START_TEST(exit_mmio)
{
    struct pvm_exit e;
    struct kvm_gena_pending p;
    struct kvm_run *run = fresh_run(KVM_EXIT_MMIO);
    run->mmio.phys_addr = 0xfee00300;
    run->mmio.len = 8;
    run->mmio.is_write = 1;
    memcpy(run->mmio.data, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    ck_assert_int_eq(kvm_gena_exit(run, RUN_SIZE, &e, &p), KVM_GENA_TO_APP);
    ck_assert_uint_eq(e.reason, PVM_EXIT_MMIO);
    ck_assert_uint_eq(e.u.mmio.gpa, 0xfee00300);
    ck_assert_uint_eq(e.u.mmio.size, 8);
    ck_assert_uint_eq(e.u.mmio.is_write, 1);
    ck_assert_uint_eq(e.u.mmio.data, 0x0807060504030201ull);
    ck_assert_uint_eq(p.kind, KVM_GENA_PEND_NONE);

    run = fresh_run(KVM_EXIT_MMIO);
    run->mmio.phys_addr = 0xd0000000;
    run->mmio.len = 4;
    memset(run->mmio.data, 0xcc, 8);
    ck_assert_int_eq(kvm_gena_exit(run, RUN_SIZE, &e, &p), KVM_GENA_TO_APP);
    ck_assert_uint_eq(e.u.mmio.is_write, 0);
    ck_assert_uint_eq(e.u.mmio.size, 4);
    ck_assert_uint_eq(e.u.mmio.data, 0);
    ck_assert_uint_eq(p.kind, KVM_GENA_PEND_MMIO_READ);
    ck_assert_uint_eq(p.size, 4);
    e.u.mmio.data = 0x1122334455667788ull;
    kvm_gena_complete(run, RUN_SIZE, &p, &e);
    ck_assert(memcmp(run->mmio.data, "\x88\x77\x66\x55\xcc\xcc\xcc\xcc", 8) == 0);

    run = fresh_run(KVM_EXIT_MMIO);
    run->mmio.len = 3;
    internal_error_says(run, "length 3");
    run = fresh_run(KVM_EXIT_MMIO);
    run->mmio.len = 16;
    internal_error_says(run, "length 16");
}
END_TEST

START_TEST(exit_others)
{
    struct pvm_exit e;
    struct kvm_gena_pending p;
    ck_assert_int_eq(kvm_gena_exit(fresh_run(KVM_EXIT_HLT), RUN_SIZE, &e, &p), KVM_GENA_HALTED);
    ck_assert_uint_eq(e.reason, PVM_EXIT_HALT);
    ck_assert_int_eq(kvm_gena_exit(fresh_run(KVM_EXIT_IRQ_WINDOW_OPEN), RUN_SIZE, &e, &p), KVM_GENA_AGAIN);
    ck_assert_uint_eq(e.reason, PVM_EXIT_NONE);
    ck_assert_int_eq(kvm_gena_exit(fresh_run(KVM_EXIT_INTR), RUN_SIZE, &e, &p), KVM_GENA_INTERRUPTED);
    ck_assert_uint_eq(e.reason, PVM_EXIT_KICKED);

    ck_assert_int_eq(kvm_gena_exit(fresh_run(KVM_EXIT_SHUTDOWN), RUN_SIZE, &e, &p), KVM_GENA_TO_APP);
    ck_assert_uint_eq(e.reason, PVM_EXIT_SHUTDOWN);
    ck_assert_uint_eq(e.u.shutdown.rip, 0); /* gena.c fills it with KVM_GET_REGS */
    ck_assert_str_eq(e.u.shutdown.reason, "triple fault (KVM_EXIT_SHUTDOWN from kvm-pvm, pvm-abi.md §5.10)");

    struct kvm_run *run = fresh_run(KVM_EXIT_INTERNAL_ERROR);
    run->internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
    ck_assert_int_eq(kvm_gena_exit(run, RUN_SIZE, &e, &p), KVM_GENA_TO_APP);
    ck_assert_str_eq(e.u.internal.msg, "KVM internal error, suberror 1 (emulation failed)");
    run = fresh_run(KVM_EXIT_INTERNAL_ERROR);
    run->internal.suberror = KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON;
    run->internal.ndata = 2;
    run->internal.data[0] = 0x401;
    run->internal.data[1] = 3;
    ck_assert_int_eq(kvm_gena_exit(run, RUN_SIZE, &e, &p), KVM_GENA_TO_APP);
    ck_assert_str_eq(e.u.internal.msg, "KVM internal error, suberror 4 (unexpected exit reason), data 0x401 0x3");
    run->internal.ndata = 17; /* more than data[] holds */
    internal_error_says(run, "ndata 17 out of range");

    run = fresh_run(KVM_EXIT_FAIL_ENTRY);
    run->fail_entry.hardware_entry_failure_reason = 0x21;
    internal_error_says(run, "entry failed, hardware reason 0x21");
    run = fresh_run(KVM_EXIT_EXCEPTION);
    run->ex.exception = 21;
    run->ex.error_code = 5;
    internal_error_says(run, "vector 21 (error code 0x5)");
    run = fresh_run(KVM_EXIT_HYPERCALL);
    run->hypercall.nr = 0x4c50564d00000000ull;
    internal_error_says(run, "KVM_EXIT_HYPERCALL nr 0x4c50564d00000000, which the library never enables");
    internal_error_says(fresh_run(KVM_EXIT_DEBUG), "unexpected KVM exit reason 4");
    internal_error_says(fresh_run(0xffffffffu), "unexpected KVM exit reason 4294967295");
}
END_TEST

/* ---- the gating rule ---------------------------------------------------------------------- */

struct plan_case {
    const char *what;
    uint64_t irq[4];
    bool nmi, exc, ready, if_flag;
    bool want_exc, want_nmi;
    int want_irq;
    bool want_window;
};

#define V(v) [(v) / 64] = 1ull << ((v) % 64)

static const struct plan_case plan_cases[] = {
    { "nothing pending", { 0 }, false, false, true, true, false, false, -1, false },
    { "nothing pending, not ready", { 0 }, false, false, false, false, false, false, -1, false },
    { "interrupt, ready, IF", { V(0x30) }, false, false, true, true, false, false, 0x30, false },
    { "interrupt pending, not ready -> request window, no KVM_INTERRUPT", { V(0x30) }, false, false, false, true,
      false, false, -1, true },
    { "interrupt, not ready, IF 0", { V(0x30) }, false, false, false, false, false, false, -1, true },
    { "interrupt, 'ready' but IF 0: not trusted", { V(0x30) }, false, false, true, false, false, false, -1, true },
    { "two interrupts: highest first, window for the rest", { V(0x30), [3] = 1ull << 44 }, false, false, true, true,
      false, false, 0xec, true },
    { "vector 255", { [3] = 1ull << 63 }, false, false, true, true, false, false, 255, false },
    { "NMI beats interrupt", { V(0x30) }, true, false, true, true, false, true, -1, true },
    { "NMI alone, not gated by IF", { 0 }, true, false, false, false, false, true, -1, false },
    { "exception pending -> SET_VCPU_EVENTS first", { V(0x30) }, false, true, true, true, true, false, -1, true },
    { "exception alone", { 0 }, false, true, false, false, true, false, -1, false },
    { "exception and NMI: both, KVM orders them", { 0 }, true, true, true, true, true, true, -1, false },
    { "exception, NMI and interrupt", { V(0x40) }, true, true, true, true, true, true, -1, true },
    { "vectors below 32 are not interrupts", { 1ull << 5 }, false, false, true, true, false, false, -1, false },
};

START_TEST(gating_rule)
{
    const struct plan_case *c = &plan_cases[_i];
    struct kvm_gena_plan p;
    memset(&p, 0x55, sizeof(p));
    kvm_gena_plan(c->irq, c->nmi, c->exc, c->ready, c->if_flag, &p);
    ck_assert_msg(p.set_exception == c->want_exc, "%s: set_exception", c->what);
    ck_assert_msg(p.nmi == c->want_nmi, "%s: nmi", c->what);
    ck_assert_msg(p.irq == c->want_irq, "%s: irq %d, want %d", c->what, p.irq, c->want_irq);
    ck_assert_msg(p.request_window == c->want_window, "%s: request_window", c->what);
}
END_TEST

START_TEST(highest_irq)
{
    uint64_t m[4] = { 0 };
    ck_assert_int_eq(kvm_gena_highest_irq(m), -1);
    m[0] = 1ull << 32;
    ck_assert_int_eq(kvm_gena_highest_irq(m), 32);
    m[1] = 1ull << 0 | 1ull << 7;
    ck_assert_int_eq(kvm_gena_highest_irq(m), 71);
    m[3] = 1ull << 63;
    ck_assert_int_eq(kvm_gena_highest_irq(m), 255);
    uint64_t low[4] = { 0xffffffffull, 0, 0, 0 };
    ck_assert_int_eq(kvm_gena_highest_irq(low), -1);
}
END_TEST

START_TEST(exception_events)
{
    struct kvm_vcpu_events cur, out;
    memset(&cur, 0, sizeof(cur));
    cur.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM;
    cur.nmi.pending = 1;
    cur.nmi.masked = 1;
    cur.interrupt.shadow = 0;
    cur.sipi_vector = 7;
    struct pvm_event pf = { .type = PVM_EVENT_EXCEPTION, .vector = 14, .has_error_code = 1, .error_code = 6,
                            .cr2 = 0xffffd90000003008ull };
    ck_assert_int_eq(kvm_gena_exception_events(&cur, &pf, &out), 0);
    ck_assert_uint_eq(out.exception.injected, 0);
    ck_assert_uint_eq(out.exception.pending, 1);
    ck_assert_uint_eq(out.exception.nr, 14);
    ck_assert_uint_eq(out.exception.has_error_code, 1);
    ck_assert_uint_eq(out.exception.error_code, 6);
    ck_assert_uint_eq(out.exception_has_payload, 1);
    ck_assert_uint_eq(out.exception_payload, 0xffffd90000003008ull); /* CR2, set before delivery (§5.1) */
    ck_assert_uint_eq(out.flags, KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW |
                                     KVM_VCPUEVENT_VALID_SMM | KVM_VCPUEVENT_VALID_PAYLOAD);
    /* The rest round-trips: the NMI state is not lost. */
    ck_assert_uint_eq(out.nmi.pending, 1);
    ck_assert_uint_eq(out.nmi.masked, 1);
    ck_assert_uint_eq(out.sipi_vector, 7);
    ck_assert_uint_eq(out.interrupt.injected, 0);

    struct pvm_event ud = { .type = PVM_EVENT_EXCEPTION, .vector = 6, .cr2 = 0x1234, .error_code = 99 };
    ck_assert_int_eq(kvm_gena_exception_events(&cur, &ud, &out), 0);
    ck_assert_uint_eq(out.exception.nr, 6);
    ck_assert_uint_eq(out.exception.has_error_code, 0);
    ck_assert_uint_eq(out.exception.error_code, 0);
    ck_assert_uint_eq(out.exception_has_payload, 0);
    ck_assert_uint_eq(out.exception_payload, 0);

    /* KVM already holds one: ours waits. */
    cur.exception.pending = 1;
    ck_assert_int_eq(kvm_gena_exception_events(&cur, &ud, &out), -1);
    cur.exception.pending = 0;
    cur.exception.injected = 1;
    ck_assert_int_eq(kvm_gena_exception_events(&cur, &ud, &out), -1);
}
END_TEST

START_TEST(take_back)
{
    struct kvm_vcpu_events ev;
    struct pvm_event exc;
    int irq = -1;
    memset(&ev, 0, sizeof(ev));
    ev.exception.pending = 1;
    ev.exception.nr = 14;
    ev.exception.has_error_code = 1;
    ev.exception.error_code = 2;
    ev.exception_has_payload = 1;
    ev.exception_payload = 0x5000;
    ev.interrupt.injected = 1;
    ev.interrupt.nr = 0x30;
    ev.nmi.masked = 1;
    ck_assert_uint_eq(kvm_gena_take_back(&ev, true, &exc, &irq), KVM_GENA_TOOK_EXC | KVM_GENA_TOOK_IRQ);
    ck_assert_uint_eq(exc.type, PVM_EVENT_EXCEPTION);
    ck_assert_uint_eq(exc.vector, 14);
    ck_assert_uint_eq(exc.has_error_code, 1);
    ck_assert_uint_eq(exc.error_code, 2);
    ck_assert_uint_eq(exc.cr2, 0x5000);
    ck_assert_int_eq(irq, 0x30);
    ck_assert_uint_eq(ev.exception.pending, 0);
    ck_assert_uint_eq(ev.exception.injected, 0);
    ck_assert_uint_eq(ev.exception_has_payload, 0);
    ck_assert_uint_eq(ev.interrupt.injected, 0);
    ck_assert_uint_eq(ev.nmi.masked, 1); /* untouched */

    /* The library's slot is busy: the exception stays in KVM. */
    memset(&ev, 0, sizeof(ev));
    ev.exception.injected = 1;
    ev.exception.nr = 13;
    ck_assert_uint_eq(kvm_gena_take_back(&ev, false, &exc, &irq), 0);
    ck_assert_uint_eq(ev.exception.injected, 1);
    /* Injected (not pending) works the same when the slot is free. */
    ck_assert_uint_eq(kvm_gena_take_back(&ev, true, &exc, &irq), KVM_GENA_TOOK_EXC);
    ck_assert_uint_eq(exc.vector, 13);
    ck_assert_uint_eq(exc.has_error_code, 0);
    ck_assert_uint_eq(exc.cr2, 0);

    /* What the library cannot queue again exactly stays: #DB's DR6 payload, NMI, soft or low vectors. */
    memset(&ev, 0, sizeof(ev));
    ev.exception.pending = 1;
    ev.exception.nr = 1;
    ev.exception_has_payload = 1;
    ev.exception_payload = 0x4000;
    ck_assert_uint_eq(kvm_gena_take_back(&ev, true, &exc, &irq), 0);
    ck_assert_uint_eq(ev.exception.pending, 1);
    ev.exception_has_payload = 0;
    ev.exception.nr = 2;
    ck_assert_uint_eq(kvm_gena_take_back(&ev, true, &exc, &irq), 0);
    memset(&ev, 0, sizeof(ev));
    ev.interrupt.injected = 1;
    ev.interrupt.nr = 0x80;
    ev.interrupt.soft = 1;
    ck_assert_uint_eq(kvm_gena_take_back(&ev, true, &exc, &irq), 0);
    ev.interrupt.soft = 0;
    ev.interrupt.nr = 8;
    ck_assert_uint_eq(kvm_gena_take_back(&ev, true, &exc, &irq), 0);
    ck_assert_uint_eq(ev.interrupt.injected, 1);
}
END_TEST

START_TEST(halt_rule)
{
    /* (halted, if_flag, irqs, nmi, exc) */
    ck_assert_int_eq(kvm_gena_halt(false, false, false, false, false), KVM_GENA_RUN);
    ck_assert_int_eq(kvm_gena_halt(true, false, false, false, true), KVM_GENA_RUN);
    ck_assert_int_eq(kvm_gena_halt(true, false, false, true, false), KVM_GENA_RUN);
    ck_assert_int_eq(kvm_gena_halt(true, true, true, false, false), KVM_GENA_RUN);
    ck_assert_int_eq(kvm_gena_halt(true, true, false, false, false), KVM_GENA_WAIT);
    ck_assert_int_eq(kvm_gena_halt(true, false, true, false, false), KVM_GENA_EXIT_HALT);
    ck_assert_int_eq(kvm_gena_halt(true, false, false, false, false), KVM_GENA_EXIT_HALT);
}
END_TEST

/* ---- the mode on this host ------------------------------------------------------------------ */

START_TEST(probe_on_this_host)
{
    const struct pvm_backend_ops *o = &pvm_kvm_gena_backend;
    ck_assert_str_eq(o->name, "kvm");
    ck_assert_int_eq(o->id, PVM_BACKEND_KVM);
    ck_assert(o->probe && o->vm_init && o->vm_fini && o->vcpu_init && o->vcpu_fini && o->run && o->get_regs &&
              o->set_regs && o->get_sregs && o->set_sregs && o->get_msr && o->set_msr && o->inject && o->kick);
    ck_assert(o->region_add && o->region_del && o->set_cpuid && o->translate && o->linear_range && o->prefer);
    ck_assert_ptr_null(o->cpu); /* the kernel is the hypervisor: no lib/hv/ provider */

    const struct kvm_host *h = kvm_host();
    if (h->gen_a) {
        /* A real Gen A host: the probe passes (nothing else here claims it was tried). */
        ck_assert_int_eq(o->probe(), 0);
        return;
    }
    ck_assert_int_eq(o->probe(), PVM_ENODEV);
    if (!h->fd_ok) /* no usable /dev/kvm: the standard mode's reason, word for word */
        ck_assert_str_eq(pvm_last_error(), h->why);
    else
        ck_assert_msg(strstr(pvm_last_error(), "kvm: not a Gen A kvm-pvm host ("), "%s", pvm_last_error());

    if (access("/dev/kvm", F_OK) == 0)
        return; /* a standard /dev/kvm: the standard mode may take it (test_native, kvm_host_e2e) */
    /* No /dev/kvm (this machine): both modes refuse with the one reason, said once. */
    ck_assert_int_eq(pvm_backend_probe(PVM_BACKEND_KVM), PVM_ENODEV);
    ck_assert_str_eq(pvm_last_error(), h->why);
    struct pvm_vm_options opts = PVM_VM_OPTIONS_INIT;
    opts.backend = PVM_BACKEND_KVM;
    pvm_vm *vm = (pvm_vm *)1;
    ck_assert_int_eq(pvm_vm_create(&vm, &opts), PVM_ENODEV);
    ck_assert_ptr_null(vm);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kvm_gena");
    TCase *tc = tcase_create("abi");
    tcase_add_test(tc, detection);
    tcase_add_test(tc, cpuid_host_table);
    tcase_add_test(tc, cpuid_user_leaves_replace_host_leaves);
    tcase_add_test(tc, boot_msrs);
    tcase_add_test(tc, boot_sregs_and_regs);
    tcase_add_test(tc, regs_both_ways);
    tcase_add_test(tc, sregs_from_kvm);
    tcase_add_test(tc, sregs_to_kvm);
    tcase_add_test(tc, msr_rules);
    tcase_add_test(tc, memslots);
    tcase_add_test(tc, exit_io);
    tcase_add_test(tc, exit_mmio);
    tcase_add_test(tc, exit_others);
    tcase_add_loop_test(tc, gating_rule, 0, sizeof(plan_cases) / sizeof(plan_cases[0]));
    tcase_add_test(tc, highest_irq);
    tcase_add_test(tc, exception_events);
    tcase_add_test(tc, take_back);
    tcase_add_test(tc, halt_rule);
    suite_add_tcase(s, tc);
    TCase *host = tcase_create("host");
    tcase_add_test(host, probe_on_this_host);
    suite_add_tcase(s, host);
    return s;
}

int main(void)
{
    return pvm_test_run_suite(suite());
}
