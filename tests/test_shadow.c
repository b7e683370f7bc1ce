/*
 * tests/test_shadow.c - the shadow cache against a recording fake provider:
 * every install / remove / reset_slot call is checked exactly, and the fake
 * keeps a model of each slot's address space to check TLB semantics.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "machine/mmu.h"
#include "pvm/pvm.h"
#include "testutil.h"

#define RAM_SIZE (16ull << 20)
#define PT_BASE  (12ull << 20)
#define KiB4 0x1000ull
#define MiB 0x100000ull
#define MiB2 0x200000ull
#define GiB1 0x40000000ull
#define W PVM_PFEC_W
#define U PVM_PFEC_U
#define I PVM_PFEC_I
#define P PVM_PFEC_P
#define R_ PVM_PROT_READ
#define W_ PVM_PROT_WRITE
#define X_ PVM_PROT_EXEC
#define E_P  PVM_PTE_P
#define E_RW PVM_PTE_W
#define E_US PVM_PTE_U
#define E_A  PVM_PTE_A
#define E_D  PVM_PTE_D
#define E_NX PVM_PTE_NX
#define UPPER_FLAGS (E_P | E_RW | E_US)

/* ---- guest RAM and page tables (memfd) ------------------------------------ */

static uint8_t *mem;
static uint64_t next_pt, root, root2;
static struct pvm_walk_env env;

static uint64_t *pte_ptr(void *opaque, uint64_t gpa)
{
    (void)opaque;
    return gpa < RAM_SIZE && RAM_SIZE - gpa >= 8 ? (uint64_t *)(mem + gpa) : NULL;
}

static uint64_t alloc_pt(void)
{
    uint64_t g = next_pt;
    next_pt += KiB4;
    ck_assert_uint_le(next_pt, RAM_SIZE);
    memset(mem + g, 0, KiB4);
    return g;
}

static uint64_t *entry_in(uint64_t r, uint64_t gva, int level)
{
    uint64_t table = r;
    for (int l = 4;; l--) {
        uint64_t *e = (uint64_t *)(mem + table) + ((gva >> (12 + 9 * (l - 1))) & 511);
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
    uint64_t *e = entry_in(root, gva, level);
    *e = gpa | flags | (level > 1 ? PVM_PTE_PS : 0);
    return e;
}

/* ---- the recording fake provider ------------------------------------------ */

enum { OP_INSTALL, OP_REMOVE, OP_RESET };
struct call {
    int op;
    unsigned slot;
    uint64_t gva, len, gpa;
    unsigned prot;
};
struct iv {
    uint64_t gva, len, gpa;
    unsigned prot;
};

#define MAX_CALLS 512
#define MAX_IV 64
static struct {
    struct call calls[MAX_CALLS];
    int n;
    int fail_install, fail_remove;
    struct iv iv[PVM_SHADOW_MAX_ROOTS][MAX_IV];
    int niv[PVM_SHADOW_MAX_ROOTS];
} rec;

static void log_call(struct call c)
{
    ck_assert_int_lt(rec.n, MAX_CALLS);
    rec.calls[rec.n++] = c;
}

static bool ov(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a >= b ? a - b < blen : b - a < alen;
}

static int f_install(void *o, unsigned slot, uint64_t gva, uint64_t len, uint64_t gpa, unsigned prot)
{
    (void)o;
    log_call((struct call){ OP_INSTALL, slot, gva, len, gpa, prot });
    if (rec.fail_install)
        return -1;
    ck_assert_uint_lt(slot, PVM_SHADOW_MAX_ROOTS);
    ck_assert(len && !(gva % KiB4) && !(len % KiB4) && !(gpa % KiB4));
    /* The shadow must remove before it replaces. */
    for (int i = 0; i < rec.niv[slot]; i++)
        ck_assert(!ov(gva, len, rec.iv[slot][i].gva, rec.iv[slot][i].len));
    ck_assert_int_lt(rec.niv[slot], MAX_IV);
    rec.iv[slot][rec.niv[slot]++] = (struct iv){ gva, len, gpa, prot };
    return 0;
}

static int f_remove(void *o, unsigned slot, uint64_t gva, uint64_t len)
{
    (void)o;
    log_call((struct call){ OP_REMOVE, slot, gva, len, 0, 0 });
    if (rec.fail_remove)
        return -1;
    int w = 0;
    for (int i = 0; i < rec.niv[slot]; i++) {
        struct iv v = rec.iv[slot][i];
        if (!ov(gva, len, v.gva, v.len)) {
            rec.iv[slot][w++] = v;
            continue;
        }
        /* Removes cover whole mappings. */
        ck_assert(v.gva >= gva && v.gva - gva + v.len <= len);
    }
    rec.niv[slot] = w;
    return 0;
}

static void f_reset(void *o, unsigned slot)
{
    (void)o;
    log_call((struct call){ OP_RESET, slot, 0, 0, 0, 0 });
    rec.niv[slot] = 0;
}

/* Logical RAM layout (ram_extent), independent of the page-table buffer. */
static const struct {
    uint64_t gpa, size;
    uint32_t flags;
} regions[] = {
    { 0, 8 * MiB, 0 },
    { 8 * MiB, MiB, PVM_MEM_READONLY },
    { 9 * MiB, MiB, PVM_MEM_NOEXEC },
    { 10 * MiB, 5 * MiB, 0 }, /* 15M-16M: MMIO */
    { GiB1, GiB1, 0 },
};
#define MMIO_GPA 0xc0000000ull

static uint64_t f_extent(void *o, uint64_t gpa, uint32_t *flags)
{
    (void)o;
    for (size_t i = 0; i < sizeof(regions) / sizeof(regions[0]); i++)
        if (gpa - regions[i].gpa < regions[i].size) {
            *flags = regions[i].flags;
            return regions[i].size - (gpa - regions[i].gpa);
        }
    return 0;
}

static const struct pvm_shadow_ops ops = {
    .install = f_install, .remove = f_remove, .reset_slot = f_reset, .ram_extent = f_extent,
};

static struct pvm_shadow *sh;

static void setup_with(size_t max_mappings)
{
    int fd = memfd_create("shadow", 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)RAM_SIZE), 0);
    mem = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ck_assert_ptr_ne(mem, MAP_FAILED);
    close(fd);
    next_pt = PT_BASE;
    root = alloc_pt();
    root2 = alloc_pt();
    env = (struct pvm_walk_env){
        .opaque = NULL,
        .pte_ptr = pte_ptr,
        .la_range = PVM_LA_RANGE_MAKE(0x1b2, 0x1d2, 0x1ff, 0x1ff),
        .nxe = true,
        .maxphyaddr_mask = 0x000ffffffffff000ull,
    };
    memset(&rec, 0, sizeof(rec));
    sh = pvm_shadow_create(&ops, NULL, 0, max_mappings);
    ck_assert_ptr_nonnull(sh);
}

static void setup(void)
{
    setup_with(0);
}

static void teardown(void)
{
    pvm_shadow_destroy(sh);
    munmap(mem, RAM_SIZE);
}

/* ---- helpers -------------------------------------------------------------- */

static uint32_t pfec;
static uint64_t gpa_out;

static enum pvm_shadow_fault_result fault(uint64_t gva, uint32_t access)
{
    pfec = 0xdead;
    gpa_out = 0xdead;
    return pvm_shadow_fault(sh, &env, gva, access, &pfec, &gpa_out);
}

static void expect_calls(const struct call *want, int n)
{
    ck_assert_msg(rec.n == n, "%d calls, want %d", rec.n, n);
    for (int i = 0; i < n; i++) {
        const struct call *c = &rec.calls[i];
        ck_assert_msg(c->op == want[i].op && c->slot == want[i].slot && c->gva == want[i].gva &&
                          c->len == want[i].len && c->gpa == want[i].gpa && c->prot == want[i].prot,
                      "call %d: op %d slot %u gva %#llx len %#llx gpa %#llx prot %u", i, c->op, c->slot,
                      (unsigned long long)c->gva, (unsigned long long)c->len,
                      (unsigned long long)c->gpa, c->prot);
    }
    rec.n = 0;
}

#define EXPECT(...)                                                                 \
    do {                                                                            \
        const struct call want_[] = { __VA_ARGS__ };                                \
        expect_calls(want_, (int)(sizeof(want_) / sizeof(want_[0])));               \
    } while (0)
#define EXPECT_NONE() expect_calls(NULL, 0)
#define INS(s, g, l, p, pr) { OP_INSTALL, s, g, l, p, pr }
#define REM(s, g, l)        { OP_REMOVE, s, g, l, 0, 0 }
#define RST(s)              { OP_RESET, s, 0, 0, 0, 0 }

/* Protection the fake provider has at @gva in @slot (0 = unmapped). */
static unsigned mapped(unsigned slot, uint64_t gva)
{
    for (int i = 0; i < rec.niv[slot]; i++)
        if (gva - rec.iv[slot][i].gva < rec.iv[slot][i].len)
            return rec.iv[slot][i].prot;
    return 0;
}

/* ---- slots ---------------------------------------------------------------- */

START_TEST(t_slots_lru)
{
    const uint64_t A = 0x100000, B = 0x200000, C = 0x300000, D = 0x400000;
    ck_assert_uint_eq(pvm_shadow_activate(sh, A, false), 0);
    /* Only CR3 bits 51:12 name the root (PCID, bit 63 ignored). */
    ck_assert_uint_eq(pvm_shadow_activate(sh, A | 0x18 | (1ull << 63), false), 0);
    ck_assert_uint_eq(pvm_shadow_activate(sh, A, true), 1);
    ck_assert_uint_eq(pvm_shadow_activate(sh, B, false), 2);
    ck_assert_uint_eq(pvm_shadow_activate(sh, C, false), 3);
    EXPECT_NONE();
    /* Full: D evicts the least recently used (A, supervisor). */
    ck_assert_uint_eq(pvm_shadow_activate(sh, D, false), 0);
    EXPECT(RST(0));
    ck_assert_uint_eq(pvm_shadow_activate(sh, A, true), 1);
    ck_assert_uint_eq(pvm_shadow_activate(sh, A, false), 2); /* evicts B */
    EXPECT(RST(2));
    ck_assert_uint_eq(pvm_shadow_activate(sh, C, false), 3);
    ck_assert_uint_eq(pvm_shadow_activate(sh, B, false), 0); /* evicts D */
    EXPECT(RST(0));
}
END_TEST

/* pvm_shadow_find: the slot of a resident root, -1 otherwise, and no effect on the LRU or the active slot. */
START_TEST(t_find_has_no_effect)
{
    const uint64_t A = 0x100000, B = 0x200000, C = 0x300000;
    ck_assert_int_eq(pvm_shadow_find(sh, A, false), -1); /* nothing resident yet */
    ck_assert_uint_eq(pvm_shadow_activate(sh, A, false), 0);
    ck_assert_uint_eq(pvm_shadow_activate(sh, A, true), 1);
    ck_assert_uint_eq(pvm_shadow_activate(sh, B, false), 2);
    ck_assert_uint_eq(pvm_shadow_activate(sh, C, false), 3);
    ck_assert_int_eq(pvm_shadow_find(sh, A | 0x18 | (1ull << 63), false), 0);
    ck_assert_int_eq(pvm_shadow_find(sh, A, true), 1);
    ck_assert_int_eq(pvm_shadow_find(sh, B, true), -1); /* B is resident for supervisor mode only */
    ck_assert_int_eq(pvm_shadow_find(sh, root, false), -1);
    EXPECT_NONE();
    /* Finding A (the least recently used) did not refresh it: the next root still evicts it. */
    ck_assert_uint_eq(pvm_shadow_activate(sh, root, false), 0);
    EXPECT(RST(0));
    ck_assert_int_eq(pvm_shadow_find(sh, A, false), -1);
    /* Nor does it change the active slot: a fault still installs in root's. */
    map(0x400000, 0x5000, KiB4, E_P);
    ck_assert_int_eq(pvm_shadow_find(sh, C, false), 3);
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x400000, KiB4, 0x5000, R_ | X_));
}
END_TEST

START_TEST(t_no_active_slot)
{
    map(0x400000, 0x5000, KiB4, E_P);
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_ERROR);
    EXPECT_NONE();
}
END_TEST

/* ---- installs --------------------------------------------------------------- */

START_TEST(t_fault_4k_then_write)
{
    uint64_t *pte = map(0x400000, 0x5000, KiB4, E_P | E_RW | E_US);
    pvm_shadow_activate(sh, root, false);
    /* A read of a clean writable page is installed read-only. */
    ck_assert_int_eq(fault(0x400010, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x400000, KiB4, 0x5000, R_ | X_));
    ck_assert_uint_eq(*pte & (E_A | E_D), E_A);
    /* The write sets D and replaces the weaker mapping. */
    ck_assert_int_eq(fault(0x400010, W), PVM_SHADOW_FIXED);
    EXPECT(REM(0, 0x400000, KiB4), INS(0, 0x400000, KiB4, 0x5000, R_ | W_ | X_));
    ck_assert_uint_eq(*pte & (E_A | E_D), E_A | E_D);
    /* A dirty page is installed writable even for a read. */
    map(0x402000, 0x7000, KiB4, E_P | E_RW | E_D | E_NX);
    ck_assert_int_eq(fault(0x402000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x402000, KiB4, 0x7000, R_ | W_));
}
END_TEST

START_TEST(t_fault_large)
{
    pvm_shadow_activate(sh, root, false);
    map(0x600000, 0x200000, MiB2, E_P | E_RW);
    ck_assert_int_eq(fault(0x6abcde, W), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x600000, MiB2, 0x200000, R_ | W_ | X_));
    map(0x80000000, GiB1, GiB1, E_P | E_NX);
    ck_assert_int_eq(fault(0x9abcdef0, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x80000000, GiB1, GiB1, R_));
    /* A 2 MiB page only half backed by its region: just the 4 KiB page. */
    map(0xa00000, 8 * MiB, MiB2, E_P | E_RW | E_D);
    ck_assert_int_eq(fault(0xa01234, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0xa01000, KiB4, 8 * MiB + 0x1000, R_ | X_)); /* READONLY region */
    /* A 2 MiB page starting in one region and running into MMIO. */
    map(0xc00000, 14 * MiB, MiB2, E_P); /* 14M-15M RAM, 15M-16M MMIO */
    ck_assert_int_eq(fault(0xc00000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0xc00000, KiB4, 14 * MiB, R_ | X_));
    ck_assert_int_eq(fault(0xd00008, 0), PVM_SHADOW_MMIO);
    ck_assert_uint_eq(gpa_out, 15 * MiB + 8);
    EXPECT_NONE();
}
END_TEST

/* §10.13: a large page over address 0 is installed without page 0. */
START_TEST(t_large_page_at_zero)
{
    pvm_shadow_activate(sh, root, false);
    map(0, 0x200000, MiB2, E_P | E_RW | E_US);
    ck_assert_int_eq(fault(0, 0), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, 0);
    ck_assert_int_eq(fault(0x1234, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, KiB4, MiB2 - KiB4, 0x201000, R_ | X_));
    ck_assert_int_eq(fault(0, W), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, W);
    EXPECT_NONE();
    /* A fault inside page 0 (not at 0) maps page 0 alone; then, as on
     * kvm-pvm, address 0 is reachable until a flush. */
    ck_assert_int_eq(fault(0x10, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0, KiB4, 0x200000, R_ | X_));
    ck_assert_uint_eq(mapped(0, 0), R_ | X_);
}
END_TEST

START_TEST(t_runs)
{
    pvm_shadow_activate(sh, root, false);
    const uint64_t g = 0x800000, p = 0x10000;
    for (int i = 0; i < 8; i++)
        map(g + i * KiB4, p + i * KiB4, KiB4, E_P | E_RW | E_A);
    *entry_in(root, g + 5 * KiB4, 1) &= ~E_RW; /* different permissions */
    *entry_in(root, g + 7 * KiB4, 1) &= ~E_A;  /* never accessed */
    /* Page 2: back over 1, 0 (gva 0x7ff000 is another table), on to 4. */
    ck_assert_int_eq(fault(g + 2 * KiB4, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, g, 5 * KiB4, p, R_ | X_));
    ck_assert_int_eq(fault(g + 6 * KiB4, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, g + 6 * KiB4, KiB4, p + 6 * KiB4, R_ | X_)); /* 5 differs, 7 not accessed */
    ck_assert_int_eq(fault(g + 5 * KiB4, 0), PVM_SHADOW_FIXED); /* between two records */
    EXPECT(INS(0, g + 5 * KiB4, KiB4, p + 5 * KiB4, R_ | X_));
    /* A write splits off its page: the run is dropped, neighbours lack D. */
    ck_assert_int_eq(fault(g + 3 * KiB4, W), PVM_SHADOW_FIXED);
    EXPECT(REM(0, g, 5 * KiB4), INS(0, g + 3 * KiB4, KiB4, p + 3 * KiB4, R_ | W_ | X_));
    /* Writable runs need D on every page; non-contiguous gpa stops a run. */
    for (int i = 0; i < 4; i++)
        map(0xa00000 + i * KiB4, 0x20000 + i * KiB4, KiB4, E_P | E_RW | E_A | E_D);
    *entry_in(root, 0xa00000 + 3 * KiB4, 1) += KiB4;
    ck_assert_int_eq(fault(0xa00000, W), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0xa00000, 3 * KiB4, 0x20000, R_ | W_ | X_));
    /* Runs stop at a region boundary (8M: READONLY starts). */
    for (int i = 0; i < 4; i++)
        map(0xc00000 + i * KiB4, 8 * MiB - 2 * KiB4 + i * KiB4, KiB4, E_P | E_A);
    ck_assert_int_eq(fault(0xc00000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0xc00000, 2 * KiB4, 8 * MiB - 2 * KiB4, R_ | X_));
    ck_assert_int_eq(fault(0xc03000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0xc02000, 2 * KiB4, 8 * MiB, R_ | X_));
}
END_TEST

START_TEST(t_mmio_and_region_flags)
{
    pvm_shadow_activate(sh, root, false);
    map(0x400000, MMIO_GPA, KiB4, E_P | E_RW);
    ck_assert_int_eq(fault(0x400123, W), PVM_SHADOW_MMIO);
    ck_assert_uint_eq(gpa_out, MMIO_GPA + 0x123);
    /* READONLY: reads map without WRITE, writes are MMIO. */
    map(0x401000, 8 * MiB, KiB4, E_P | E_RW | E_D);
    ck_assert_int_eq(fault(0x401000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x401000, KiB4, 8 * MiB, R_ | X_));
    ck_assert_int_eq(fault(0x401ff8, W), PVM_SHADOW_MMIO);
    ck_assert_uint_eq(gpa_out, 8 * MiB + 0xff8);
    /* NOEXEC: a fetch is a guest #PF with I, a read maps without EXEC. */
    map(0x402000, 9 * MiB, KiB4, E_P | E_US);
    ck_assert_int_eq(fault(0x402000, I), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, P | I);
    ck_assert_int_eq(fault(0x402000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x402000, KiB4, 9 * MiB, R_));
    pvm_shadow_activate(sh, root, true);
    ck_assert_int_eq(fault(0x402000, I), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, P | I | U);
    EXPECT_NONE();
}
END_TEST

/* §1.3: the user root sees only U=1 pages, the supervisor root all. */
START_TEST(t_user_and_supervisor_slots)
{
    map(0x400000, 0x5000, KiB4, E_P | E_RW);         /* supervisor */
    map(0x401000, 0x6000, KiB4, E_P | E_US);         /* user, read-only */
    unsigned us = pvm_shadow_activate(sh, root, true);
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, P | U);
    ck_assert_int_eq(fault(0x401000, W | U), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, P | W | U);
    ck_assert_int_eq(fault(0x401000, U), PVM_SHADOW_FIXED);
    EXPECT(INS(us, 0x401000, KiB4, 0x6000, R_ | X_));
    /* Supervisor slot: the hardware U bit (always set at ring 3) is ignored. */
    unsigned ss = pvm_shadow_activate(sh, root, false);
    ck_assert_uint_ne(us, ss);
    ck_assert_int_eq(fault(0x400000, W | U), PVM_SHADOW_FIXED);
    ck_assert_int_eq(fault(0x401000, U), PVM_SHADOW_FIXED);
    EXPECT(INS(ss, 0x400000, KiB4, 0x5000, R_ | W_ | X_), INS(ss, 0x401000, KiB4, 0x6000, R_ | X_));
    ck_assert_int_eq(fault(0x403000, 0), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, 0);
    EXPECT_NONE();
}
END_TEST

START_TEST(t_bad_pt)
{
    pvm_shadow_activate(sh, RAM_SIZE, false); /* root outside RAM */
    ck_assert_int_eq(fault(0x400000, W), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, W);
    pvm_shadow_activate(sh, root, false);
    map(0x400000, 0x5000, KiB4, E_P);
    *entry_in(root, 0x400000, 2) = (1ull << 50) | UPPER_FLAGS;
    ck_assert_int_eq(fault(0x400000, I), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, I);
    EXPECT_NONE();
}
END_TEST

/* ---- TLB semantics ---------------------------------------------------------- */

START_TEST(t_stale_until_invlpg)
{
    uint64_t *pte = map(0x400000, 0x5000, KiB4, E_P | E_RW);
    map(0x500000, 0x6000, KiB4, E_P);
    pvm_shadow_activate(sh, root, false);
    ck_assert_int_eq(fault(0x400000, W), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x400000, KiB4, 0x5000, R_ | W_ | X_));
    /* The guest write-protects and even unmaps the page without a flush: the
     * old translation stays, like a TLB entry; other faults do not touch it. */
    *pte &= ~E_RW;
    ck_assert_int_eq(fault(0x500000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x500000, KiB4, 0x6000, R_ | X_));
    *pte = 0;
    ck_assert_uint_eq(mapped(0, 0x400000), R_ | W_ | X_);
    /* INVLPG (PVM_HC_TLB_INVLPG) drops it. */
    pvm_shadow_invlpg(sh, 0x400abc);
    EXPECT(REM(0, 0x400000, KiB4));
    ck_assert_uint_eq(mapped(0, 0x400000), 0);
    ck_assert_int_eq(fault(0x400000, W), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, W);
    pvm_shadow_invlpg(sh, 0x400000); /* nothing left: no call */
    EXPECT_NONE();
    ck_assert_uint_eq(mapped(0, 0x500000), R_ | X_);
}
END_TEST

/* A fault that ends in #PF drops the stale entry of its own address. */
START_TEST(t_guest_pf_drops_stale)
{
    uint64_t *pte = map(0x400000, 0x5000, KiB4, E_P | E_RW);
    pvm_shadow_activate(sh, root, false);
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x400000, KiB4, 0x5000, R_ | X_));
    *pte &= ~E_RW;
    ck_assert_int_eq(fault(0x400008, W), PVM_SHADOW_GUEST_PF);
    ck_assert_uint_eq(pfec, P | W);
    EXPECT(REM(0, 0x400000, KiB4));
}
END_TEST

START_TEST(t_invlpg_large_all_slots)
{
    map(0x600000, 0x200000, MiB2, E_P | E_RW | E_US | E_D);
    pvm_shadow_activate(sh, root, false);
    ck_assert_int_eq(fault(0x600000, 0), PVM_SHADOW_FIXED);
    pvm_shadow_activate(sh, root, true);
    ck_assert_int_eq(fault(0x7ff000, U), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x600000, MiB2, 0x200000, R_ | W_ | X_), INS(1, 0x600000, MiB2, 0x200000, R_ | W_ | X_));
    pvm_shadow_invlpg(sh, 0x7ff123);
    EXPECT(REM(0, 0x600000, MiB2), REM(1, 0x600000, MiB2));
}
END_TEST

START_TEST(t_flush_all_and_root)
{
    /* Same gva in two roots, both privilege levels of the first. */
    map(0x400000, 0x5000, KiB4, E_P | E_RW | E_US | E_D);
    map(0x402000, 0x7000, KiB4, E_P | E_RW | E_US | E_D);
    *entry_in(root2, 0x400000, 1) = 0x6000 | E_P | E_US | E_D;
    unsigned a = pvm_shadow_activate(sh, root, false);
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_FIXED);
    ck_assert_int_eq(fault(0x402000, 0), PVM_SHADOW_FIXED);
    unsigned b = pvm_shadow_activate(sh, root, true);
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_FIXED);
    unsigned c = pvm_shadow_activate(sh, root2, true);
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(a, 0x400000, KiB4, 0x5000, R_ | W_ | X_), INS(a, 0x402000, KiB4, 0x7000, R_ | W_ | X_),
           INS(b, 0x400000, KiB4, 0x5000, R_ | W_ | X_), INS(c, 0x400000, KiB4, 0x6000, R_ | X_));
    /* LOAD_PGTBL with the flush flag / MOV CR3 of root: both of its slots. */
    pvm_shadow_flush_root(sh, root | 0x18);
    EXPECT(REM(a, 0x400000, KiB4), REM(a, 0x402000, KiB4), REM(b, 0x400000, KiB4));
    ck_assert_uint_eq(mapped(c, 0x400000), R_ | X_);
    pvm_shadow_flush_all(sh);
    EXPECT(REM(c, 0x400000, KiB4));
    pvm_shadow_flush_all(sh);
    EXPECT_NONE();
}
END_TEST

START_TEST(t_flush_coalesces)
{
    pvm_shadow_activate(sh, root, false);
    for (int i = 0; i < 4; i++)
        map(0x400000 + i * KiB4, 0x5000 + i * KiB4, KiB4, E_P | E_RW); /* A clear: no runs */
    map(0x500000, 0x9000, KiB4, E_P);
    ck_assert_int_eq(fault(0x401000, 0), PVM_SHADOW_FIXED);
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_FIXED);
    ck_assert_int_eq(fault(0x402000, 0), PVM_SHADOW_FIXED);
    ck_assert_int_eq(fault(0x500000, 0), PVM_SHADOW_FIXED);
    ck_assert_int_eq(rec.n, 4);
    rec.n = 0;
    pvm_shadow_flush_all(sh);
    EXPECT(REM(0, 0x400000, 3 * KiB4), REM(0, 0x500000, KiB4));
}
END_TEST

START_TEST(t_flush_gpa)
{
    map(0x400000, 0x5000, KiB4, E_P | E_D | E_RW);
    map(0x401000, 0x7000, KiB4, E_P | E_D | E_RW);
    map(0x600000, 0x200000, MiB2, E_P);
    unsigned a = pvm_shadow_activate(sh, root, false);
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_FIXED);
    ck_assert_int_eq(fault(0x401000, 0), PVM_SHADOW_FIXED);
    ck_assert_int_eq(fault(0x600000, 0), PVM_SHADOW_FIXED);
    unsigned b = pvm_shadow_activate(sh, root, true);
    (void)b;
    rec.n = 0;
    pvm_shadow_flush_gpa(sh, 0x7fff, 2); /* overlaps the 0x7000 page only */
    EXPECT(REM(a, 0x401000, KiB4));
    pvm_shadow_flush_gpa(sh, 0x300000, KiB4); /* inside the 2 MiB page */
    EXPECT(REM(a, 0x600000, MiB2));
    pvm_shadow_flush_gpa(sh, 0x6000, KiB4); /* touches nothing */
    pvm_shadow_flush_gpa(sh, 0, 0);
    EXPECT_NONE();
    pvm_shadow_flush_gpa(sh, 0x5fff, ~0ull); /* to the end of the gpa space */
    EXPECT(REM(a, 0x400000, KiB4));
}
END_TEST

/* ---- bounds and provider failures ------------------------------------------- */

START_TEST(t_overflow_resets_slot)
{
    pvm_shadow_destroy(sh);
    sh = pvm_shadow_create(&ops, NULL, 2, 3);
    ck_assert_ptr_nonnull(sh);
    for (int i = 0; i < 4; i++)
        map(0x400000 + 2 * i * KiB4, 0x5000 + i * KiB4, KiB4, E_P);
    pvm_shadow_activate(sh, root, false);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(fault(0x400000 + 2 * i * KiB4, 0), PVM_SHADOW_FIXED);
    rec.n = 0;
    ck_assert_int_eq(fault(0x406000, 0), PVM_SHADOW_FIXED);
    EXPECT(RST(0), INS(0, 0x406000, KiB4, 0x8000, R_ | X_));
    pvm_shadow_flush_all(sh);
    EXPECT(REM(0, 0x406000, KiB4));
}
END_TEST

/* Mapped space past the provider's budget resets the slot first; removed mappings give theirs back. */
static uint64_t budget, install_max;
static uint64_t f_budget(void *o)
{
    (void)o;
    return budget;
}

static uint64_t f_install_max(void *o)
{
    (void)o;
    return install_max;
}

/* The shadow again, over the recording ops plus map_budget and install_max. */
static void with_limits(uint64_t budget_bytes, uint64_t install_max_bytes)
{
    static const struct pvm_shadow_ops lops = {
        .install = f_install, .remove = f_remove, .reset_slot = f_reset, .ram_extent = f_extent,
        .map_budget = f_budget, .install_max = f_install_max,
    };
    budget = budget_bytes;
    install_max = install_max_bytes;
    pvm_shadow_destroy(sh);
    sh = pvm_shadow_create(&lops, NULL, 0, 0);
    ck_assert_ptr_nonnull(sh);
}

START_TEST(t_budget_resets_slot)
{
    with_limits(2 * MiB2, 0);
    /* Three aliases of the same 2 MiB of RAM: a guest's page tables may hold any number. */
    for (int i = 0; i < 3; i++)
        map(0x600000 + (uint64_t)i * MiB2, 0x200000, MiB2, E_P);
    pvm_shadow_activate(sh, root, false);
    rec.n = 0;
    ck_assert_int_eq(fault(0x600000, 0), PVM_SHADOW_FIXED);
    ck_assert_int_eq(fault(0x800000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x600000, MiB2, 0x200000, R_ | X_), INS(0, 0x800000, MiB2, 0x200000, R_ | X_));
    ck_assert_int_eq(fault(0xa00000, 0), PVM_SHADOW_FIXED);
    EXPECT(RST(0), INS(0, 0xa00000, MiB2, 0x200000, R_ | X_));
    /* 2 MiB + 4 KiB fits beside it ... */
    map(0xe00000, 0x100000, KiB4, E_P);
    ck_assert_int_eq(fault(0xe00000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0xe00000, KiB4, 0x100000, R_ | X_));
    /* ... and once the 2 MiB are gone (INVLPG), another 2 MiB fits without a reset. */
    pvm_shadow_invlpg(sh, 0xa00000);
    EXPECT(REM(0, 0xa00000, MiB2));
    ck_assert_int_eq(fault(0x600000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x600000, MiB2, 0x200000, R_ | X_));
}
END_TEST

/* A budget under one large page (a provider's own small limit): the faulting 4 KiB page alone. */
START_TEST(t_budget_below_large_page)
{
    with_limits(2 * KiB4, 0);
    map(0x600000, 0x200000, MiB2, E_P);
    pvm_shadow_activate(sh, root, false);
    rec.n = 0;
    ck_assert_int_eq(fault(0x623456, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x623000, KiB4, 0x223000, R_ | X_));
    ck_assert_int_eq(fault(0x600000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x600000, KiB4, 0x200000, R_ | X_));
    /* A third page goes over the budget: the slot is reset first. */
    ck_assert_int_eq(fault(0x7ff000, 0), PVM_SHADOW_FIXED);
    EXPECT(RST(0), INS(0, 0x7ff000, KiB4, 0x3ff000, R_ | X_));
}
END_TEST

/* A provider's install_max: a large page is installed as the aligned piece around each fault. */
START_TEST(t_install_max_pieces)
{
    with_limits(UINT64_MAX, 0x10000);
    map(0x600000, 0x200000, MiB2, E_P);
    pvm_shadow_activate(sh, root, false);
    rec.n = 0;
    ck_assert_int_eq(fault(0x623456, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x620000, 0x10000, 0x220000, R_ | X_));
    ck_assert_int_eq(fault(0x7ff000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x7f0000, 0x10000, 0x3f0000, R_ | X_));
    /* Not a power of two: no limit. */
    install_max = 0x3000;
    ck_assert_int_eq(fault(0x700000, 0), PVM_SHADOW_FIXED);
    EXPECT(REM(0, 0x620000, 0x10000), REM(0, 0x7f0000, 0x10000), INS(0, 0x600000, MiB2, 0x200000, R_ | X_));
}
END_TEST

START_TEST(t_provider_failures)
{
    map(0x400000, 0x5000, KiB4, E_P);
    map(0x402000, 0x6000, KiB4, E_P);
    pvm_shadow_activate(sh, root, false);
    rec.fail_install = 1;
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_ERROR);
    rec.fail_install = 0;
    EXPECT(INS(0, 0x400000, KiB4, 0x5000, R_ | X_));
    pvm_shadow_flush_all(sh); /* nothing was recorded */
    EXPECT_NONE();
    ck_assert_int_eq(fault(0x400000, 0), PVM_SHADOW_FIXED);
    ck_assert_int_eq(fault(0x402000, 0), PVM_SHADOW_FIXED);
    rec.n = 0;
    /* A failed remove may leave the mapping: the slot is reset. */
    rec.fail_remove = 1;
    pvm_shadow_invlpg(sh, 0x400000);
    EXPECT(REM(0, 0x400000, KiB4), RST(0));
    rec.fail_remove = 0;
    pvm_shadow_flush_all(sh);
    EXPECT_NONE();
    ck_assert_ptr_null(pvm_shadow_create(&(struct pvm_shadow_ops){ 0 }, NULL, 0, 0));
    pvm_shadow_destroy(NULL);
}
END_TEST

/* ---- randomized: interval-set bookkeeping under random faults and flushes -- */

static uint64_t rs;

static uint64_t rnd(void)
{
    uint64_t z = (rs += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define WIN 0x400000ull /* two 2 MiB page-directory entries from here */

static uint64_t random_pte(unsigned i)
{
    uint64_t gpa = rnd() % 4 ? 0x100000 + i * KiB4 : (rnd() % (10 * MiB / KiB4)) * KiB4;
    uint64_t e = gpa;
    e |= rnd() % 10 < 8 ? E_P : 0;
    e |= rnd() % 10 < 6 ? E_RW : 0;
    e |= rnd() % 10 < 7 ? E_US : 0;
    e |= rnd() % 10 < 2 ? E_NX : 0;
    e |= rnd() % 10 < 6 ? E_A : 0;
    e |= rnd() % 10 < 3 ? E_D : 0;
    return e;
}

static void random_tree(uint64_t r)
{
    for (int d = 0; d < 2; d++) {
        uint64_t gva = WIN + d * MiB2;
        if (rnd() % 3 == 0) {
            *entry_in(r, gva, 2) = (rnd() % 4) * MiB2 | E_P | PVM_PTE_PS | (rnd() & (E_RW | E_US | E_A | E_D));
            continue;
        }
        for (unsigned i = 0; i < 512; i++)
            *entry_in(r, gva + i * KiB4, 1) = random_pte(i);
    }
}

/* The provider's mapping at @gva in @slot, or NULL. */
static const struct iv *iv_at(unsigned slot, uint64_t gva)
{
    for (int i = 0; i < rec.niv[slot]; i++)
        if (gva - rec.iv[slot][i].gva < rec.iv[slot][i].len)
            return &rec.iv[slot][i];
    return NULL;
}

START_TEST(t_random_ops)
{
    pvm_shadow_destroy(sh);
    sh = pvm_shadow_create(&ops, NULL, 3, 40); /* 3 slots for 4 (root, mode) pairs */
    ck_assert_ptr_nonnull(sh);
    rs = 0x5eedull + (uint64_t)_i;
    random_tree(root);
    random_tree(root2);
    uint64_t cur = root;
    bool user = false;
    unsigned slot = pvm_shadow_activate(sh, cur, user);
    unsigned long fixed = 0;
    for (int step = 0; step < 4000; step++) {
        unsigned k = rnd() % 100;
        uint64_t gva = WIN + rnd() % (2 * MiB2);
        if (k < 55) {
            const uint32_t acc[] = { 0, W, I };
            uint32_t a = acc[rnd() % 3];
            enum pvm_shadow_fault_result fr = fault(gva, a);
            if (fr != PVM_SHADOW_FIXED)
                continue;
            fixed++;
            const struct iv *v = iv_at(slot, gva);
            ck_assert_ptr_nonnull(v);
            ck_assert(v->prot & R_);
            ck_assert(!(a & W) || (v->prot & W_));
            ck_assert(!(a & I) || (v->prot & X_));
            struct pvm_walk_result wr;
            ck_assert_int_eq(pvm_mmu_walk(&env, cur, gva, user ? U : 0, false, &wr), PVM_WALK_OK);
            ck_assert_uint_eq(v->gpa + (gva - v->gva), wr.gpa);
        } else if (k < 65) {
            uint64_t r = rnd() % 2 ? root : root2;
            uint64_t *e = entry_in(r, gva, (*entry_in(r, gva, 2) & PVM_PTE_PS) ? 2 : 1);
            if (*e & PVM_PTE_PS)
                *e ^= rnd() & (E_RW | E_US | E_NX);
            else
                *e = random_pte((gva >> 12) & 511);
        } else if (k < 75) {
            pvm_shadow_invlpg(sh, gva);
            for (unsigned sl = 0; sl < 3; sl++)
                ck_assert_ptr_null(iv_at(sl, gva));
        } else if (k < 80) {
            uint64_t g = rnd() % (10 * MiB), len = 1 + rnd() % MiB;
            pvm_shadow_flush_gpa(sh, g, len);
            for (unsigned sl = 0; sl < 3; sl++)
                for (int i = 0; i < rec.niv[sl]; i++)
                    ck_assert(!ov(rec.iv[sl][i].gpa, rec.iv[sl][i].len, g, len));
        } else if (k < 83) {
            pvm_shadow_flush_root(sh, cur);
            ck_assert_int_eq(rec.niv[slot], 0);
        } else if (k < 85) {
            pvm_shadow_flush_all(sh);
            for (unsigned sl = 0; sl < 3; sl++)
                ck_assert_int_eq(rec.niv[sl], 0);
        } else {
            cur = rnd() % 2 ? root : root2;
            user = rnd() % 2;
            slot = pvm_shadow_activate(sh, cur, user);
        }
        rec.n = 0;
    }
    ck_assert_uint_gt(fixed, 200);
}
END_TEST

/* The provider's window (native: [0x10000, ...)): large pages and runs are clipped to it. */
START_TEST(t_window)
{
    pvm_shadow_set_window(sh, 0x10000, 0x7f0000000000ull);
    pvm_shadow_activate(sh, root, false);
    map(0, 0x200000, MiB2, E_P | E_RW | E_US);
    ck_assert_int_eq(fault(0x10000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x10000, MiB2 - 0x10000, 0x210000, R_ | X_));
    ck_assert_int_eq(fault(0x1ff000, W), PVM_SHADOW_FIXED);
    EXPECT(REM(0, 0x10000, MiB2 - 0x10000), INS(0, 0x10000, MiB2 - 0x10000, 0x210000, R_ | W_ | X_));
    pvm_shadow_flush_all(sh);
    rec.n = 0;
    /* A fault outside the window maps only its own page (the provider keeps such faults away). */
    ck_assert_int_eq(fault(0x1000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x1000, KiB4, 0x201000, R_ | W_ | X_));
    pvm_shadow_flush_all(sh);
    rec.n = 0;
    /* A 4 KiB run does not extend below lo (pages 0x8000..0x13000 all accessed). */
    *entry_in(root, 0, 2) = 0;
    for (uint64_t g = 0x8000; g < 0x14000; g += KiB4)
        map(g, 0x100000 + g, KiB4, E_P | E_A);
    ck_assert_int_eq(fault(0x11000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x10000, 4 * KiB4, 0x110000, R_ | X_));
    for (int i = 0; i < rec.niv[0]; i++)
        ck_assert_uint_ge(rec.iv[0][i].gva, 0x10000);
    /* ... nor to or above hi; a large page is clipped at hi too. */
    pvm_shadow_set_window(sh, 0x10000, 0x12000);
    pvm_shadow_flush_all(sh);
    rec.n = 0;
    ck_assert_int_eq(fault(0x10000, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x10000, 2 * KiB4, 0x110000, R_ | X_));
    pvm_shadow_set_window(sh, 0x10000, 0x700000);
    map(0x600000, 0x200000, MiB2, E_P | E_RW | E_D);
    ck_assert_int_eq(fault(0x6abcde, 0), PVM_SHADOW_FIXED);
    EXPECT(INS(0, 0x600000, MiB, 0x200000, R_ | W_ | X_));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("shadow");
    TCase *tc = tcase_create("shadow");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, t_slots_lru);
    tcase_add_test(tc, t_find_has_no_effect);
    tcase_add_test(tc, t_no_active_slot);
    tcase_add_test(tc, t_fault_4k_then_write);
    tcase_add_test(tc, t_fault_large);
    tcase_add_test(tc, t_large_page_at_zero);
    tcase_add_test(tc, t_runs);
    tcase_add_test(tc, t_mmio_and_region_flags);
    tcase_add_test(tc, t_user_and_supervisor_slots);
    tcase_add_test(tc, t_bad_pt);
    tcase_add_test(tc, t_stale_until_invlpg);
    tcase_add_test(tc, t_guest_pf_drops_stale);
    tcase_add_test(tc, t_invlpg_large_all_slots);
    tcase_add_test(tc, t_flush_all_and_root);
    tcase_add_test(tc, t_flush_coalesces);
    tcase_add_test(tc, t_flush_gpa);
    tcase_add_test(tc, t_overflow_resets_slot);
    tcase_add_test(tc, t_budget_resets_slot);
    tcase_add_test(tc, t_budget_below_large_page);
    tcase_add_test(tc, t_install_max_pieces);
    tcase_add_test(tc, t_provider_failures);
    tcase_add_test(tc, t_window);
    tcase_add_loop_test(tc, t_random_ops, 0, 20);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
