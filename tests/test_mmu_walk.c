/* tests/test_mmu_walk.c - pvm_mmu_walk over guest page tables in memfd RAM. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "machine/mmu.h"
#include "testutil.h"

#define RAM_SIZE (4ull << 20)
#define PT_BASE  (1ull << 20) /* page tables from 1 MiB up */
#define KiB4 0x1000ull
#define MiB2 0x200000ull
#define GiB1 0x40000000ull
#define UPPER_LO 0xffffd90000000000ull /* §8.2 worked example */
#define UPPER_HI 0xffffe90000000000ull
#define W PVM_PFEC_W
#define U PVM_PFEC_U
#define I PVM_PFEC_I
#define P PVM_PFEC_P
#define RSVD PVM_PFEC_RSVD
#define E_P  PVM_PTE_P
#define E_RW PVM_PTE_W
#define E_US PVM_PTE_U
#define E_A  PVM_PTE_A
#define E_D  PVM_PTE_D
#define E_PS PVM_PTE_PS
#define E_NX PVM_PTE_NX
#define UPPER_FLAGS (E_P | E_RW | E_US)

struct ram {
    uint8_t *mem;
    uint64_t size, next;
};

static struct ram ram;
static struct pvm_walk_env env;
static uint64_t root;

static uint64_t *pte_ptr(void *opaque, uint64_t gpa)
{
    struct ram *r = opaque;
    if (gpa >= r->size || r->size - gpa < 8)
        return NULL;
    return (uint64_t *)(r->mem + gpa);
}

static uint64_t alloc_pt(void)
{
    uint64_t g = ram.next;
    ram.next += KiB4;
    ck_assert_uint_le(ram.next, ram.size);
    memset(ram.mem + g, 0, KiB4);
    return g;
}

static void setup_env(void)
{
    env = (struct pvm_walk_env){
        .opaque = &ram,
        .pte_ptr = pte_ptr,
        .la_range = PVM_LA_RANGE_MAKE(0x1b2, 0x1d2, 0x1ff, 0x1ff),
        .nxe = true,
        .maxphyaddr_mask = 0x000ffffffffff000ull,
    };
    ram.next = PT_BASE;
    root = alloc_pt();
}

/* Guest RAM in a memfd mapping, like lib/core's memory slots. */
static void setup(void)
{
    int fd = memfd_create("mmu-walk", 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)RAM_SIZE), 0);
    ram.mem = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ck_assert_ptr_ne(ram.mem, MAP_FAILED);
    close(fd);
    ram.size = RAM_SIZE;
    setup_env();
}

static void teardown(void)
{
    munmap(ram.mem, RAM_SIZE);
}

/* The entry for @gva at @level (4..1), creating upper tables with UPPER_FLAGS. */
static uint64_t *entry(uint64_t gva, int level)
{
    uint64_t table = root;
    for (int l = 4;; l--) {
        uint64_t *e = (uint64_t *)(ram.mem + table) + ((gva >> (12 + 9 * (l - 1))) & 511);
        if (l == level)
            return e;
        if (!(*e & E_P))
            *e = alloc_pt() | UPPER_FLAGS;
        table = *e & PVM_PTE_ADDR;
    }
}

static uint64_t *map(uint64_t gva, uint64_t gpa, uint64_t size, uint64_t flags)
{
    int level = size == GiB1 ? 3 : size == MiB2 ? 2 : 1;
    uint64_t *e = entry(gva, level);
    *e = gpa | flags | (level > 1 ? E_PS : 0);
    return e;
}

static struct pvm_walk_result res;

static enum pvm_walk_status walk(uint64_t gva, uint32_t access)
{
    memset(&res, 0xa5, sizeof(res));
    return pvm_mmu_walk(&env, root, gva, access, true, &res);
}

static void expect_fault(uint64_t gva, uint32_t access, uint32_t pfec)
{
    ck_assert_int_eq(walk(gva, access), PVM_WALK_FAULT);
    ck_assert_msg(res.pfec == pfec, "gva %#llx access %#x: pfec %#x, want %#x", (unsigned long long)gva,
                  access, res.pfec, pfec);
}

static void expect_ok(uint64_t gva, uint32_t access, uint64_t gpa)
{
    ck_assert_msg(walk(gva, access) == PVM_WALK_OK, "gva %#llx access %#x: pfec %#x",
                  (unsigned long long)gva, access, res.pfec);
    ck_assert_uint_eq(res.gpa, gpa);
    ck_assert_uint_eq(res.pfec, 0);
}

/* ---- translation -------------------------------------------------------- */

START_TEST(t_4k)
{
    uint64_t *e = map(0x400000, 0x5000, KiB4, E_P | E_RW | E_US);
    expect_ok(0x400123, 0, 0x5123);
    ck_assert_uint_eq(res.page_gva, 0x400000);
    ck_assert_uint_eq(res.page_gpa, 0x5000);
    ck_assert_uint_eq(res.page_size, KiB4);
    ck_assert(res.writable && res.user && res.executable && !res.dirty);
    ck_assert_ptr_eq(ram.mem + res.leaf_pte_gpa, (uint8_t *)e);
    ck_assert_uint_eq(res.leaf_pte, *e);
    /* PAT (bit 7) of a 4 KiB PTE is not PS. */
    *e |= E_PS;
    expect_ok(0x400fff, W | U, 0x5fff);
    ck_assert_uint_eq(res.page_size, KiB4);
    ck_assert(res.dirty);
}
END_TEST

START_TEST(t_2m)
{
    map(0x600000, 0x200000, MiB2, E_P | E_RW | (1ull << 12) /* PAT */);
    expect_ok(0x6abcde, W, 0x2abcde);
    ck_assert_uint_eq(res.page_gva, 0x600000);
    ck_assert_uint_eq(res.page_gpa, 0x200000);
    ck_assert_uint_eq(res.page_size, MiB2);
    ck_assert(res.writable && !res.user && res.dirty);
}
END_TEST

START_TEST(t_1g)
{
    map(0x80000000, GiB1, GiB1, E_P | E_US | (1ull << 12));
    expect_ok(0xbfedcba9, U, GiB1 + 0x3fedcba9);
    ck_assert_uint_eq(res.page_gva, 0x80000000);
    ck_assert_uint_eq(res.page_gpa, GiB1);
    ck_assert_uint_eq(res.page_size, GiB1);
    ck_assert(!res.writable && res.user && res.executable);
}
END_TEST

START_TEST(t_upper_half)
{
    map(UPPER_LO + 0x1000, 0x7000, KiB4, E_P);
    expect_ok(UPPER_LO + 0x1008, 0, 0x7008);
    ck_assert_uint_eq(res.page_gva, UPPER_LO + 0x1000);
}
END_TEST

START_TEST(t_cr3_flags_ignored)
{
    map(0x400000, 0x5000, KiB4, E_P);
    uint64_t plain = root;
    root = plain | 0xfff | (1ull << 63); /* PCID, PWT/PCD, NOFLUSH */
    expect_ok(0x400001, 0, 0x5001);
    root = plain;
}
END_TEST

/* ---- #PF error codes ---------------------------------------------------- */

static const uint32_t accesses[] = { 0, W, U, W | U, I, I | U };

/* Not present at each level: P=0, access bits, I only with NXE. */
START_TEST(t_pfec_not_present)
{
    map(0x400000, 0x5000, KiB4, E_P); /* creates PML4E/PDPTE/PDE for 0x400000 */
    const uint64_t gvas[] = {
        0x0000008000000000ull, /* PML4E missing */
        0x0000000040000000ull, /* PDPTE missing */
        0x0000000000800000ull, /* PDE missing */
        0x0000000000401000ull, /* PTE missing */
    };
    for (int nxe = 0; nxe < 2; nxe++) {
        env.nxe = nxe;
        for (size_t g = 0; g < 4; g++)
            for (size_t a = 0; a < sizeof(accesses) / sizeof(accesses[0]); a++)
                expect_fault(gvas[g], accesses[a], nxe ? accesses[a] : accesses[a] & ~I);
    }
}
END_TEST

START_TEST(t_pfec_protection)
{
    map(0x400000, 0x5000, KiB4, E_P | E_US);           /* user, read-only */
    map(0x401000, 0x6000, KiB4, E_P | E_RW);           /* supervisor */
    map(0x402000, 0x7000, KiB4, E_P | E_RW | E_US | E_NX);
    expect_fault(0x400000, W, P | W); /* CR0.WP=1: supervisor writes obey R/W */
    expect_fault(0x400000, W | U, P | W | U);
    expect_ok(0x400000, U, 0x5000);
    expect_ok(0x400000, I | U, 0x5000);
    expect_fault(0x401000, U, P | U);
    expect_fault(0x401000, W | U, P | W | U);
    expect_fault(0x401000, I | U, P | U | I);
    expect_ok(0x401000, W, 0x6000);
    expect_fault(0x402000, I, P | I);
    expect_fault(0x402000, I | U, P | I | U);
    expect_ok(0x402000, W | U, 0x7000);
    ck_assert(!res.executable);
}
END_TEST

/* No SMEP/SMAP (§1.4): supervisor accesses reach U=1 pages. */
START_TEST(t_supervisor_on_user_pages)
{
    map(0x400000, 0x5000, KiB4, E_P | E_RW | E_US);
    expect_ok(0x400000, 0, 0x5000);
    expect_ok(0x400000, W, 0x5000);
    expect_ok(0x400000, I, 0x5000);
}
END_TEST

/* Permissions combine over all levels. */
START_TEST(t_effective_upper_levels)
{
    map(0x400000, 0x5000, KiB4, E_P | E_RW | E_US);
    *entry(0x400000, 2) &= ~E_RW;
    expect_fault(0x400000, W, P | W);
    expect_ok(0x400000, U, 0x5000);
    ck_assert(!res.writable && res.user);
    *entry(0x400000, 2) |= E_RW;
    *entry(0x400000, 4) &= ~E_US;
    expect_fault(0x400000, U, P | U);
    expect_ok(0x400000, W, 0x5000);
    ck_assert(!res.user);
    *entry(0x400000, 3) |= E_NX;
    expect_fault(0x400000, I, P | I);
    env.nxe = false; /* now NX is a reserved bit in the PDPTE */
    expect_fault(0x400000, 0, P | RSVD);
}
END_TEST

START_TEST(t_pfec_reserved)
{
    uint64_t *pte = map(0x400000, 0x5000, KiB4, E_P | E_RW | E_US | E_NX);
    /* NX without EFER.NXE is reserved; I is not reported without NXE. */
    env.nxe = false;
    expect_fault(0x400000, 0, P | RSVD);
    expect_fault(0x400000, I | U, P | RSVD | U);
    env.nxe = true;
    *pte &= ~E_NX;

    /* Address bits above MAXPHYADDR, leaf and non-leaf. */
    env.maxphyaddr_mask = 0x0000000ffffff000ull; /* 36 bits */
    expect_ok(0x400000, 0, 0x5000);
    *pte |= 1ull << 40;
    expect_fault(0x400000, W, P | RSVD | W);
    *pte &= ~(1ull << 40);
    *entry(0x400000, 2) |= 1ull << 36;
    expect_fault(0x400000, 0, P | RSVD);
    *entry(0x400000, 2) &= ~(1ull << 36);
    /* Bits 62:52 are ignored, not reserved. */
    *pte |= 0x7ff0000000000000ull;
    expect_ok(0x400000, 0, 0x5000);
    env.maxphyaddr_mask = 0x000ffffffffff000ull;

    /* PS in a PML4E. */
    *entry(0x400000, 4) |= E_PS;
    expect_fault(0x400000, U, P | RSVD | U);
    *entry(0x400000, 4) &= ~E_PS;

    /* RSVD beats protection: user write to a supervisor read-only page. */
    env.maxphyaddr_mask = 0x0000000ffffff000ull;
    *pte = 0x5000 | E_P | (1ull << 51);
    expect_fault(0x400000, W | U, P | RSVD | W | U);

    /* A reserved bit above a not-present entry: the walk stops at the first. */
    *pte = 0;
    *entry(0x400000, 3) |= 1ull << 51;
    expect_fault(0x400000, 0, P | RSVD);
}
END_TEST

START_TEST(t_reserved_large_pages)
{
    uint64_t *pde = map(0x600000, 0x200000, MiB2, E_P);
    *pde |= 1ull << 13;
    expect_fault(0x600000, 0, P | RSVD);
    *pde = 0x200000 | E_P | E_PS | (1ull << 20);
    expect_fault(0x600000, 0, P | RSVD);
    *pde = 0x200000 | E_P | E_PS | (1ull << 12); /* PAT is fine */
    expect_ok(0x600000, 0, 0x200000);

    uint64_t *pdpte = map(0x80000000, GiB1, GiB1, E_P);
    *pdpte |= 1ull << 29;
    expect_fault(0x80000000, 0, P | RSVD);
    *pdpte = GiB1 | E_P | E_PS | (1ull << 13);
    expect_fault(0x80000000, 0, P | RSVD);
    *pdpte = GiB1 | E_P | E_PS | (1ull << 12);
    expect_ok(0x80000000, 0, GiB1);
    /* A 1 GiB page above MAXPHYADDR. */
    env.maxphyaddr_mask = 0x0000000ffffff000ull;
    *pdpte = (1ull << 40) | E_P | E_PS;
    expect_fault(0x80000000, 0, P | RSVD);
}
END_TEST

/* ---- accessed / dirty --------------------------------------------------- */

static uint64_t *lv[5];

static void collect(uint64_t gva, int leaf_level)
{
    for (int l = 4; l >= leaf_level; l--)
        lv[l] = entry(gva, l);
}

START_TEST(t_accessed_dirty)
{
    map(0x400000, 0x5000, KiB4, E_P | E_RW | E_US);
    collect(0x400000, 1);

    /* A failed walk leaves guest memory untouched (decision, mmu_walk.c). */
    *lv[1] &= ~E_RW;
    expect_fault(0x400000, W, P | W);
    for (int l = 4; l >= 1; l--)
        ck_assert_uint_eq(*lv[l] & (E_A | E_D), 0);
    *lv[1] |= E_RW;

    /* No updates without set_ad. */
    ck_assert_int_eq(pvm_mmu_walk(&env, root, 0x400000, W, false, &res), PVM_WALK_OK);
    ck_assert(!res.dirty);
    for (int l = 4; l >= 1; l--)
        ck_assert_uint_eq(*lv[l] & (E_A | E_D), 0);

    /* A read sets A at every level, D nowhere. */
    expect_ok(0x400000, 0, 0x5000);
    ck_assert(!res.dirty);
    for (int l = 4; l >= 1; l--)
        ck_assert_uint_eq(*lv[l] & (E_A | E_D), E_A);
    ck_assert_uint_eq(res.leaf_pte, *lv[1]);

    /* A write sets D on the leaf only. */
    expect_ok(0x400000, W, 0x5000);
    ck_assert(res.dirty);
    ck_assert_uint_eq(*lv[1] & (E_A | E_D), E_A | E_D);
    for (int l = 4; l >= 2; l--)
        ck_assert_uint_eq(*lv[l] & (E_A | E_D), E_A);

    /* A later read reports the leaf D bit. */
    expect_ok(0x400000, 0, 0x5000);
    ck_assert(res.dirty);
}
END_TEST

START_TEST(t_accessed_dirty_large)
{
    map(0x600000, 0x200000, MiB2, E_P | E_RW);
    collect(0x600000, 2);
    expect_ok(0x600000, W, 0x200000);
    ck_assert_uint_eq(*lv[2] & (E_A | E_D), E_A | E_D);
    ck_assert_uint_eq(*lv[3] & (E_A | E_D), E_A);
    ck_assert_uint_eq(*lv[4] & (E_A | E_D), E_A);

    map(0x80000000, GiB1, GiB1, E_P | E_RW);
    collect(0x80000000, 3);
    expect_ok(0x80000000, 0, GiB1);
    ck_assert_uint_eq(*lv[3] & (E_A | E_D), E_A);
    expect_ok(0x80000000, W, GiB1);
    ck_assert_uint_eq(*lv[3] & (E_A | E_D), E_A | E_D);
}
END_TEST

/* ---- §8.2 allowed range ------------------------------------------------- */

START_TEST(t_address_zero)
{
    map(0, 0x200000, MiB2, E_P | E_RW | E_US);
    for (size_t a = 0; a < sizeof(accesses) / sizeof(accesses[0]); a++)
        expect_fault(0, accesses[a], accesses[a]); /* §10.13: P=0 */
    /* The failed walks for 0 set no A bit. */
    ck_assert_uint_eq(*entry(0, 2) & E_A, 0);
    expect_ok(1, 0, 0x200001);
    expect_ok(0x1000, W | U, 0x201000);
    ck_assert_uint_eq(*entry(0, 2) & (E_A | E_D), E_A | E_D);
}
END_TEST

START_TEST(t_allowed_range_walk)
{
    /* Mapped but outside the range: not-present error code. */
    map(0xffffffff80000000ull, 0x5000, KiB4, E_P | E_RW);
    expect_fault(0xffffffff80000000ull, W, W);
    map(UPPER_LO - KiB4, 0x5000, KiB4, E_P);
    expect_fault(UPPER_LO - KiB4, 0, 0);
    map(UPPER_LO, 0x6000, KiB4, E_P);
    expect_ok(UPPER_LO, 0, 0x6000);
    map(UPPER_HI - KiB4, 0x7000, KiB4, E_P);
    expect_ok(UPPER_HI - 1, 0, 0x7fff);
    map(UPPER_HI, 0x8000, KiB4, E_P);
    expect_fault(UPPER_HI, I, I);
    /* Top of the lower half is allowed. */
    map(0x00007ffffffff000ull, 0x9000, KiB4, E_P);
    expect_ok(0x00007fffffffffffull, 0, 0x9fff);
    /* Non-canonical: fails like a not-present page. */
    expect_fault(0x0000800000000000ull, W | U, W | U);
    expect_fault(0xffff7fffffffffffull, 0, 0);
    expect_fault(0x8000000000000000ull, 0, 0);
}
END_TEST

START_TEST(t_la_allowed)
{
    uint64_t v = PVM_LA_RANGE_MAKE(0x1b2, 0x1d2, 0x1ff, 0x1ff);
    ck_assert_uint_eq(v, 0xffffffffffd2ffb2ull); /* §8.2 worked example */
    ck_assert(!pvm_mmu_la_allowed(v, 0));
    ck_assert(pvm_mmu_la_allowed(v, 1));
    ck_assert(pvm_mmu_la_allowed(v, 0x7fffffffffffffffull));
    ck_assert(!pvm_mmu_la_allowed(v, UPPER_LO - 1));
    ck_assert(pvm_mmu_la_allowed(v, UPPER_LO));
    ck_assert(pvm_mmu_la_allowed(v, UPPER_HI - 1));
    ck_assert(!pvm_mmu_la_allowed(v, UPPER_HI));
    ck_assert(!pvm_mmu_la_allowed(v, 0xffffffffffffffffull));
    ck_assert(!pvm_mmu_la_allowed(v, 0xff00000000000000ull)); /* empty 5-level range */
    /* 5-level range [(0xfe00|0x100)<<48, (0xfe00|0x110)<<48). */
    v = PVM_LA_RANGE_MAKE(0x1b2, 0x1d2, 0x100, 0x110);
    ck_assert(pvm_mmu_la_allowed(v, 0xff00000000000000ull));
    ck_assert(pvm_mmu_la_allowed(v, 0xff0fffffffffffffull));
    ck_assert(!pvm_mmu_la_allowed(v, 0xff10000000000000ull));
    ck_assert(!pvm_mmu_la_allowed(v, 0xfeffffffffffffffull));
    /* An inverted range (§10.14, unchecked by the RFC) is empty. */
    v = PVM_LA_RANGE_MAKE(0x1d2, 0x1b2, 0x1ff, 0x1ff);
    ck_assert(!pvm_mmu_la_allowed(v, UPPER_LO));
    ck_assert(!pvm_mmu_la_allowed(v, 0xffffe00000000000ull));
    /* Canonicality helper. */
    ck_assert(pvm_mmu_canonical(0x00007fffffffffffull));
    ck_assert(pvm_mmu_canonical(0xffff800000000000ull));
    ck_assert(!pvm_mmu_canonical(0x0000800000000000ull));
    ck_assert(!pvm_mmu_canonical(0xfffe800000000000ull));
}
END_TEST

/* ---- page tables outside RAM ---------------------------------------------- */

/* Heap RAM of exact size: any read past pte_ptr's answer is an ASan error. */
START_TEST(t_bad_pt)
{
    munmap(ram.mem, RAM_SIZE);
    ram.size = 2 * 1024 * 1024;
    ram.mem = aligned_alloc(4096, ram.size);
    ck_assert_ptr_nonnull(ram.mem);
    setup_env();

    map(0x400000, 0x5000, KiB4, E_P);
    expect_ok(0x400000, 0, 0x5000);

    /* The root itself outside RAM. */
    uint64_t good = root;
    root = ram.size;
    ck_assert_int_eq(walk(0x400000, W | U), PVM_WALK_BAD_PT);
    ck_assert_uint_eq(res.pfec, W | U);
    root = good;

    /* Each level pointing just past the end of RAM, and far beyond. */
    for (int l = 4; l >= 2; l--) {
        uint64_t *e = entry(0x400000, l), saved = *e;
        *e = ram.size | UPPER_FLAGS;
        ck_assert_int_eq(walk(0x400000, I), PVM_WALK_BAD_PT);
        ck_assert_uint_eq(res.pfec, I);
        *e = (1ull << 51) | UPPER_FLAGS;
        ck_assert_int_eq(walk(0x400fff, 0), PVM_WALK_BAD_PT);
        ck_assert_uint_eq(res.pfec, 0);
        *e = saved;
    }
    /* The last page of RAM as a page table is fine, including entry 511. */
    uint64_t last = ram.size - KiB4;
    memset(ram.mem + last, 0, KiB4);
    *entry(0x400000, 2) = last | UPPER_FLAGS;
    ((uint64_t *)(ram.mem + last))[511] = 0x9000 | E_P;
    expect_ok(0x5ff000, 0, 0x9000);
    free(ram.mem);
    ram.mem = NULL;
}
END_TEST

static void teardown_any(void)
{
    if (ram.mem && ram.size == RAM_SIZE)
        teardown();
}

int main(void)
{
    Suite *s = suite_create("mmu_walk");
    TCase *tc = tcase_create("walk");
    tcase_add_checked_fixture(tc, setup, teardown_any);
    tcase_add_test(tc, t_4k);
    tcase_add_test(tc, t_2m);
    tcase_add_test(tc, t_1g);
    tcase_add_test(tc, t_upper_half);
    tcase_add_test(tc, t_cr3_flags_ignored);
    tcase_add_test(tc, t_pfec_not_present);
    tcase_add_test(tc, t_pfec_protection);
    tcase_add_test(tc, t_supervisor_on_user_pages);
    tcase_add_test(tc, t_effective_upper_levels);
    tcase_add_test(tc, t_pfec_reserved);
    tcase_add_test(tc, t_reserved_large_pages);
    tcase_add_test(tc, t_accessed_dirty);
    tcase_add_test(tc, t_accessed_dirty_large);
    tcase_add_test(tc, t_address_zero);
    tcase_add_test(tc, t_allowed_range_walk);
    tcase_add_test(tc, t_la_allowed);
    tcase_add_test(tc, t_bad_pt);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
