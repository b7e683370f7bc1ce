/*
 * tests/test_mmu_random.c - pvm_mmu_walk against a separately written
 * recursive reference walk, over thousands of random page-table trees.
 *
 * The seed is fixed (printed); set PVM_TEST_SEED to explore others.  Guest
 * RAM is an exact-size heap buffer, so under ASan any read the walker makes
 * beyond what pte_ptr hands out is caught.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "machine/mmu.h"
#include "testutil.h"

#define TREES      3000
#define WALKS      64
#define NPAGES     16
#define RAM_BASE   0x100000ull /* RAM is [RAM_BASE, RAM_BASE + RAM_BYTES) */
#define RAM_BYTES  (NPAGES * 4096ull)

/* ---- PRNG (splitmix64) -------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool chance(unsigned percent)
{
    return rnd() % 100 < percent;
}

/* ---- the walker's environment --------------------------------------------- */

static uint8_t *ram;

static uint64_t *pte_ptr(void *opaque, uint64_t gpa)
{
    (void)opaque;
    if (gpa < RAM_BASE || gpa - RAM_BASE >= RAM_BYTES || RAM_BYTES - (gpa - RAM_BASE) < 8)
        return NULL;
    return (uint64_t *)(ram + (gpa - RAM_BASE));
}

/* ---- reference walk (recursive, bit-by-bit; shares no code with the walker) -- */

enum { R_OK, R_NOT_PRESENT, R_RSVD, R_BAD, R_PROT };

struct ref {
    uint8_t *mem; /* its own copy of RAM */
    int maxphy;   /* MAXPHYADDR in bits */
    bool nxe;
    uint64_t gva;
    bool write, user, fetch;
    /* collected on the way down */
    uint64_t path[4];
    int depth;
    bool w, u, x;
    uint64_t leaf, leaf_gpa, size, page_gpa;
};

static bool bit(uint64_t v, int b)
{
    return (v >> b) & 1;
}

static bool ref_load(const struct ref *r, uint64_t gpa, uint64_t *e)
{
    if (gpa < RAM_BASE || gpa + 8 > RAM_BASE + RAM_BYTES)
        return false;
    memcpy(e, r->mem + (gpa - RAM_BASE), 8);
    return true;
}

static bool ref_reserved(const struct ref *r, int level, uint64_t e)
{
    for (int b = r->maxphy; b <= 51; b++)
        if (bit(e, b))
            return true;
    if (bit(e, 63) && !r->nxe)
        return true;
    if (level == 4 && bit(e, 7))
        return true;
    if ((level == 3 || level == 2) && bit(e, 7)) {
        int top = level == 3 ? 29 : 20;
        for (int b = 13; b <= top; b++)
            if (bit(e, b))
                return true;
    }
    return false;
}

static int ref_level(struct ref *r, int level, uint64_t table)
{
    uint64_t index = (r->gva >> (12 + 9 * (level - 1))) % 512;
    uint64_t gpa = table + 8 * index, e;
    if (!ref_load(r, gpa, &e))
        return R_BAD;
    if (!bit(e, 0))
        return R_NOT_PRESENT;
    if (ref_reserved(r, level, e))
        return R_RSVD;
    r->path[r->depth++] = gpa;
    r->w = r->w && bit(e, 1);
    r->u = r->u && bit(e, 2);
    r->x = r->x && !bit(e, 63);
    if (level == 1 || (level <= 3 && bit(e, 7))) {
        r->size = 4096ull << (9 * (level - 1));
        r->leaf = e;
        r->leaf_gpa = gpa;
        r->page_gpa = (e % (1ull << 52)) / r->size * r->size;
        if ((r->write && !r->w) || (r->user && !r->u) || (r->fetch && !r->x))
            return R_PROT;
        return R_OK;
    }
    return ref_level(r, level - 1, (e % (1ull << 52)) / 4096 * 4096);
}

/* §8.2 on a canonical address, by PML4 index (the 5-level range lies wholly
 * in non-canonical space for 4-level paging, so it never matters here). */
static bool ref_allowed(uint64_t la_range, uint64_t gva)
{
    uint64_t top = gva >> 47;
    if (top != 0 && top != 0x1ffff)
        return false;
    if (top == 0)
        return gva != 0;
    unsigned idx = (gva >> 39) & 0x1ff;
    return idx >= (la_range & 0x1ff) && idx < ((la_range >> 16) & 0x1ff);
}

static enum pvm_walk_status ref_walk(struct ref *r, uint64_t la_range, uint64_t cr3, bool set_ad,
                                     struct pvm_walk_result *out)
{
    uint32_t pfec = 0;
    if (r->write)
        pfec += 2;
    if (r->user)
        pfec += 4;
    if (r->fetch && r->nxe)
        pfec += 16;
    memset(out, 0, sizeof(*out));
    out->pfec = pfec;
    if (!ref_allowed(la_range, r->gva))
        return PVM_WALK_FAULT;
    r->depth = 0;
    r->w = r->u = r->x = true;
    switch (ref_level(r, 4, (cr3 % (1ull << 52)) / 4096 * 4096)) {
    case R_BAD:
        return PVM_WALK_BAD_PT;
    case R_NOT_PRESENT:
        return PVM_WALK_FAULT;
    case R_RSVD:
        out->pfec = pfec + 1 + 8;
        return PVM_WALK_FAULT;
    case R_PROT:
        out->pfec = pfec + 1;
        return PVM_WALK_FAULT;
    }
    if (set_ad) {
        for (int i = 0; i < r->depth; i++) {
            uint64_t e = 0;
            ref_load(r, r->path[i], &e);
            e |= 1ull << 5;
            if (i == r->depth - 1 && r->write)
                e |= 1ull << 6;
            memcpy(r->mem + (r->path[i] - RAM_BASE), &e, 8);
            if (i == r->depth - 1)
                r->leaf = e;
        }
    }
    out->pfec = 0;
    out->page_size = r->size;
    out->page_gpa = r->page_gpa;
    out->page_gva = r->gva / r->size * r->size;
    out->gpa = r->page_gpa + r->gva % r->size;
    out->writable = r->w;
    out->user = r->u;
    out->executable = r->x;
    out->dirty = bit(r->leaf, 6);
    out->leaf_pte_gpa = r->leaf_gpa;
    out->leaf_pte = r->leaf;
    return PVM_WALK_OK;
}

/* ---- random trees, addresses and accesses ---------------------------------- */

static const int maxphys[] = { 36, 39, 46, 52 };

static uint64_t random_entry(void)
{
    uint64_t e = 0;
    if (chance(92))
        e |= 1; /* P */
    unsigned k = rnd() % 100;
    if (k < 85)
        e |= RAM_BASE + (rnd() % NPAGES) * 4096; /* another table page */
    else if (k < 91)
        e |= RAM_BASE + RAM_BYTES + (rnd() % 4) * 4096; /* just past RAM */
    else if (k < 94)
        e |= RAM_BASE - 4096;
    else
        e |= rnd() & 0x000ffffffffff000ull; /* anywhere */
    if (chance(75))
        e |= 1ull << 1; /* RW */
    if (chance(75))
        e |= 1ull << 2; /* US */
    e |= rnd() & (0x3ull << 3); /* PWT, PCD */
    if (chance(40))
        e |= 1ull << 5; /* A */
    if (chance(40))
        e |= 1ull << 6; /* D */
    if (chance(15))
        e |= 1ull << 7; /* PS / PAT */
    if (chance(10))
        e |= 1ull << 63; /* NX */
    if ((e & (1ull << 7)) && chance(60)) /* a well-aligned large page */
        e = (e & ~0x000ffffffffff000ull) | (rnd() & (chance(50) ? 0x000fffffc0000000ull : 0x000fffffffe00000ull));
    if (chance(3))
        e |= 1ull << (13 + rnd() % 17); /* large-page reserved range */
    if (chance(3))
        e |= 1ull << (36 + rnd() % 16); /* maybe above MAXPHYADDR */
    if (chance(5))
        e |= rnd() & 0x7ff0000000000e00ull; /* ignored / available bits */
    return e;
}

static uint64_t random_gva(uint64_t la_range)
{
    uint64_t idx[4];
    for (int i = 0; i < 4; i++)
        idx[i] = rnd() % 512;
    unsigned k = rnd() % 100;
    unsigned s = la_range & 0x1ff, e = (la_range >> 16) & 0x1ff;
    if (k < 30)
        idx[0] = rnd() % 4;
    else if (k < 60 && e > s)
        idx[0] = s + rnd() % (e - s);
    else if (k < 70)
        idx[0] = (rnd() & 1) ? s : e; /* range edges */
    else if (k < 75)
        idx[0] = (rnd() & 1) ? s - 1 : e - 1;
    uint64_t gva = idx[0] << 39 | idx[1] << 30 | idx[2] << 21 | idx[3] << 12 | (rnd() & 0xfff);
    gva = (uint64_t)((int64_t)(gva << 16) >> 16); /* canonical */
    k = rnd() % 100;
    if (k < 3)
        gva ^= 1ull << (48 + rnd() % 16); /* non-canonical */
    else if (k < 5)
        gva = rnd() % 3; /* 0, 1, 2 */
    return gva;
}

static uint64_t random_la_range(void)
{
    unsigned s = 256 + rnd() % 255, e = 256 + rnd() % 255;
    if (chance(85) && s > e) {
        unsigned t = s;
        s = e;
        e = t;
    }
    return PVM_LA_RANGE_MAKE(s, e, 0x1ff, 0x1ff);
}

static const uint32_t accesses[] = { 0, PVM_PFEC_W, PVM_PFEC_U, PVM_PFEC_W | PVM_PFEC_U, PVM_PFEC_I,
                                     PVM_PFEC_I | PVM_PFEC_U };

static void dump_path(const struct ref *r)
{
    for (int i = 0; i < r->depth; i++) {
        uint64_t e = 0;
        ref_load(r, r->path[i], &e);
        fprintf(stderr, "  entry @%#" PRIx64 " = %#" PRIx64 "\n", r->path[i], e);
    }
}

START_TEST(t_random_trees)
{
    uint64_t seed = 0x5eed0f9a9e7ab1e5ull;
    const char *env_seed = getenv("PVM_TEST_SEED");
    if (env_seed)
        seed = strtoull(env_seed, NULL, 0);
    printf("test_mmu_random: seed %#" PRIx64 " (set PVM_TEST_SEED to change)\n", seed);
    fflush(stdout);
    rng_state = seed;

    ram = malloc(RAM_BYTES);
    uint8_t *mem2 = malloc(RAM_BYTES);
    ck_assert(ram && mem2);
    unsigned long stats[8] = { 0 }, sizes[3] = { 0 };

    for (int t = 0; t < TREES; t++) {
        for (size_t i = 0; i < RAM_BYTES / 8; i++)
            ((uint64_t *)ram)[i] = random_entry();
        memcpy(mem2, ram, RAM_BYTES);
        struct pvm_walk_env env = {
            .pte_ptr = pte_ptr,
            .la_range = random_la_range(),
            .nxe = chance(70),
        };
        int maxphy = maxphys[rnd() % 4];
        env.maxphyaddr_mask = ((1ull << maxphy) - 1) & ~0xfffull;
        uint64_t cr3 = RAM_BASE + (rnd() % NPAGES) * 4096;
        if (chance(30))
            cr3 |= (rnd() & 0xfff) | (rnd() & (1ull << 63));
        if (chance(2))
            cr3 = RAM_BASE + RAM_BYTES;

        for (int w = 0; w < WALKS; w++) {
            struct ref r = { .mem = mem2, .maxphy = maxphy, .nxe = env.nxe };
            uint32_t access = accesses[rnd() % 6];
            bool set_ad = chance(80);
            r.gva = random_gva(env.la_range);
            r.write = access & PVM_PFEC_W;
            r.user = access & PVM_PFEC_U;
            r.fetch = access & PVM_PFEC_I;

            struct pvm_walk_result got, want;
            memset(&got, 0, sizeof(got));
            enum pvm_walk_status gs = pvm_mmu_walk(&env, cr3, r.gva, access, set_ad, &got);
            enum pvm_walk_status ws = ref_walk(&r, env.la_range, cr3, set_ad, &want);
            bool same = gs == ws && got.pfec == want.pfec && memcmp(ram, mem2, RAM_BYTES) == 0;
            if (same && gs == PVM_WALK_OK)
                same = got.gpa == want.gpa && got.page_gva == want.page_gva &&
                       got.page_gpa == want.page_gpa && got.page_size == want.page_size &&
                       got.writable == want.writable && got.user == want.user &&
                       got.executable == want.executable && got.dirty == want.dirty &&
                       got.leaf_pte_gpa == want.leaf_pte_gpa && got.leaf_pte == want.leaf_pte;
            if (!same) {
                fprintf(stderr,
                        "tree %d walk %d: gva %#" PRIx64 " access %#x set_ad %d cr3 %#" PRIx64
                        " nxe %d maxphy %d la %#" PRIx64 "\n"
                        "  got  status %d pfec %#x gpa %#" PRIx64 " size %#" PRIx64 " w%d u%d x%d d%d\n"
                        "  want status %d pfec %#x gpa %#" PRIx64 " size %#" PRIx64 " w%d u%d x%d d%d\n",
                        t, w, r.gva, access, set_ad, cr3, env.nxe, maxphy, env.la_range, gs, got.pfec,
                        got.gpa, got.page_size, got.writable, got.user, got.executable, got.dirty, ws,
                        want.pfec, want.gpa, want.page_size, want.writable, want.user, want.executable,
                        want.dirty);
                dump_path(&r);
                ck_abort_msg("walker and reference disagree (seed %#" PRIx64 ")", seed);
            }
            stats[gs == PVM_WALK_OK ? 0 : gs == PVM_WALK_BAD_PT ? 1 : (got.pfec & PVM_PFEC_RSVD) ? 2 : (got.pfec & PVM_PFEC_P) ? 3 : 4]++;
            if (gs == PVM_WALK_OK)
                sizes[got.page_size == 4096 ? 0 : got.page_size == (1u << 21) ? 1 : 2]++;
        }
    }
    printf("test_mmu_random: %d trees x %d walks: ok %lu (4K %lu, 2M %lu, 1G %lu), bad_pt %lu, "
           "rsvd %lu, protection %lu, not-present/not-allowed %lu\n",
           TREES, WALKS, stats[0], sizes[0], sizes[1], sizes[2], stats[1], stats[2], stats[3], stats[4]);
    fflush(stdout);
    /* Every outcome must be exercised in quantity. */
    for (int i = 0; i < 5; i++)
        ck_assert_uint_gt(stats[i], 500);
    for (int i = 0; i < 3; i++)
        ck_assert_uint_gt(sizes[i], 200);
    free(ram);
    free(mem2);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("mmu_random");
    TCase *tc = tcase_create("random");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, t_random_trees);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
