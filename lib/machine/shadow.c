/*
 * lib/machine/shadow.c - the per-vCPU shadow cache with TLB semantics.
 *
 * A slot is one address space of the provider, keyed by (CR3 bits 51:12,
 * user), so the smod root (CR3) and the umod root (MSR_PVM_SWITCH_CR3) keep
 * their mappings across the unflushed swap on every mode switch (§1.3,
 * §10.25: TLB "tagged by root").  Each slot records its installed mappings
 * as a sorted array of disjoint intervals: O(log n) lookup, no per-fault
 * allocation.
 *
 * Decisions:
 * - Like a TLB, mappings are never revalidated against the guest tables;
 *   only flushes (and faults, below) drop them.  Dropping more than asked is
 *   always legal, so: a flush of a page inside a large mapping or run drops
 *   the whole mapping; a slot whose interval set is full is reset wholesale
 *   (ops->reset_slot); a provider remove() failure also resets the slot.
 * - A fault that ends in a guest #PF drops the mapping containing the gva,
 *   as hardware invalidates the TLB entries for a faulting address.
 * - The walk's privilege comes from the slot (user slot = user walk), not
 *   from the hardware error code: in PVM everything runs at ring 3 (§5.12).
 * - 4 KiB runs extend only over neighbours with A already set (KVM's prefetch
 *   rule), so no A bit the guest would see set is left clear.
 * - §10.13 (address 0 not allowed) is a per-address walk rule, but mappings
 *   are per page: a large page over 0 is installed without page 0, so only a
 *   fault inside page 0 itself (at 1..4095) maps it; after that address 0 is
 *   reachable until flushed, as with kvm-pvm's shadow MMU.
 * - Likewise large pages and runs are clipped to the provider's window
 *   (pvm_shadow_set_window, e.g. native's [0x10000, 0x7f0000000000)).
 */
#include <stdlib.h>
#include <string.h>

#include "machine/mmu.h"
#include "pvm/pvm.h" /* PVM_MEM_* */

#define PAGE 4096ull

struct map {
    uint64_t gva, gpa;
    uint32_t npages; /* a 1 GiB page is 2^18 pages */
    uint32_t prot;
};

struct slot {
    uint64_t root; /* CR3 bits 51:12 */
    uint64_t lru;  /* tick of the last activation; 0 = never used */
    bool user;
    size_t n;
    uint64_t bytes;   /* sum of the mappings' lengths (the host page tables they may cost) */
    struct map *maps; /* sorted by gva, disjoint */
};

struct pvm_shadow {
    const struct pvm_shadow_ops *ops;
    void *opaque;
    unsigned nslots, active;
    size_t cap;
    uint64_t tick;
    uint64_t win_lo, win_last; /* provider's usable gva window, page aligned, last byte inclusive */
    struct map *pool;
    struct slot slot[];
};

static inline uint64_t mlen(const struct map *m)
{
    return (uint64_t)m->npages * PAGE;
}

/* Does [m) contain @gva?  (Overflow-free: no end address is formed.) */
static inline bool contains(const struct map *m, uint64_t gva)
{
    return gva - m->gva < mlen(m);
}

/* First record that ends after @gva (== n if none). */
static size_t lower_bound(const struct slot *sl, uint64_t gva)
{
    size_t lo = 0, hi = sl->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct map *m = &sl->maps[mid];
        if (m->gva > gva || contains(m, gva))
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a >= b ? a - b < blen : b - a < alen;
}

static void reset_slot(struct pvm_shadow *s, unsigned si)
{
    s->ops->reset_slot(s->opaque, si);
    s->slot[si].n = 0;
    s->slot[si].bytes = 0;
}

typedef bool (*drop_pred)(const struct map *m, uint64_t a, uint64_t len);

/*
 * Drop the records in [i, j) of slot @si that match @pred (all if NULL),
 * removing gva-contiguous ones with one ops->remove call.
 */
static void drop(struct pvm_shadow *s, unsigned si, size_t i, size_t j, drop_pred pred, uint64_t a,
                 uint64_t len)
{
    struct slot *sl = &s->slot[si];
    uint64_t rg = 0, rl = 0;
    bool failed = false;
    size_t w = i;
    for (size_t k = i; k < j; k++) {
        const struct map m = sl->maps[k];
        if (pred && !pred(&m, a, len)) {
            sl->maps[w++] = m;
            continue;
        }
        sl->bytes -= mlen(&m);
        if (rl && m.gva == rg + rl) {
            rl += mlen(&m);
            continue;
        }
        if (rl && s->ops->remove(s->opaque, si, rg, rl) < 0)
            failed = true;
        rg = m.gva;
        rl = mlen(&m);
    }
    if (rl && s->ops->remove(s->opaque, si, rg, rl) < 0)
        failed = true;
    memmove(&sl->maps[w], &sl->maps[j], (sl->n - j) * sizeof(struct map));
    sl->n -= j - w;
    if (failed) /* the provider may still hold a mapping: drop everything */
        reset_slot(s, si);
}

static void drop_containing(struct pvm_shadow *s, unsigned si, uint64_t gva)
{
    const struct slot *sl = &s->slot[si];
    size_t i = lower_bound(sl, gva);
    if (i < sl->n && contains(&sl->maps[i], gva))
        drop(s, si, i, i + 1, NULL, 0, 0);
}

/* Drop every record overlapping gva [a, a+len). */
static void drop_overlapping(struct pvm_shadow *s, unsigned si, uint64_t a, uint64_t len)
{
    const struct slot *sl = &s->slot[si];
    size_t i = lower_bound(sl, a), j = i;
    while (j < sl->n && overlaps(sl->maps[j].gva, mlen(&sl->maps[j]), a, len))
        j++;
    if (j > i)
        drop(s, si, i, j, NULL, 0, 0);
}

struct pvm_shadow *pvm_shadow_create(const struct pvm_shadow_ops *ops, void *opaque,
                                     unsigned max_roots, size_t max_mappings)
{
    if (!ops || !ops->install || !ops->remove || !ops->reset_slot || !ops->ram_extent)
        return NULL;
    unsigned nslots = max_roots ? max_roots : PVM_SHADOW_MAX_ROOTS;
    size_t cap = max_mappings ? max_mappings : PVM_SHADOW_DEFAULT_MAPPINGS;
    if (cap > SIZE_MAX / sizeof(struct map) / nslots)
        return NULL;
    struct pvm_shadow *s = calloc(1, sizeof(*s) + nslots * sizeof(struct slot));
    if (!s)
        return NULL;
    s->pool = malloc(nslots * cap * sizeof(struct map));
    if (!s->pool) {
        free(s);
        return NULL;
    }
    s->ops = ops;
    s->opaque = opaque;
    s->nslots = nslots;
    s->active = nslots; /* none until pvm_shadow_activate() */
    s->cap = cap;
    s->win_last = UINT64_MAX;
    for (unsigned i = 0; i < nslots; i++)
        s->slot[i].maps = s->pool + (size_t)i * cap;
    return s;
}

void pvm_shadow_set_window(struct pvm_shadow *s, uint64_t lo, uint64_t hi)
{
    s->win_lo = (lo + PAGE - 1) & ~(PAGE - 1);
    s->win_last = hi ? (hi & ~(PAGE - 1)) - 1 : UINT64_MAX;
}

/* Is the page at @gva (page aligned) inside the window? */
static inline bool in_window(const struct pvm_shadow *s, uint64_t gva)
{
    return gva >= s->win_lo && gva + (PAGE - 1) <= s->win_last;
}

void pvm_shadow_destroy(struct pvm_shadow *s)
{
    if (!s)
        return;
    free(s->pool);
    free(s);
}

unsigned pvm_shadow_activate(struct pvm_shadow *s, uint64_t root, bool user)
{
    root &= PVM_PTE_ADDR;
    s->tick++;
    unsigned victim = 0;
    for (unsigned i = 0; i < s->nslots; i++) {
        struct slot *sl = &s->slot[i];
        if (sl->lru && sl->root == root && sl->user == user) {
            sl->lru = s->tick;
            return s->active = i;
        }
        if (sl->lru < s->slot[victim].lru)
            victim = i;
    }
    struct slot *sl = &s->slot[victim];
    if (sl->lru)
        reset_slot(s, victim);
    sl->root = root;
    sl->user = user;
    sl->lru = s->tick;
    sl->n = 0;
    sl->bytes = 0;
    return s->active = victim;
}

int pvm_shadow_find(const struct pvm_shadow *s, uint64_t root, bool user)
{
    root &= PVM_PTE_ADDR;
    for (unsigned i = 0; i < s->nslots; i++)
        if (s->slot[i].lru && s->slot[i].root == root && s->slot[i].user == user)
            return (int)i;
    return -1;
}

/* PVM_PROT_* for a translation in a region with PVM_MEM_* @flags. */
static unsigned prot_of(bool writable, bool dirty, bool exec, uint32_t flags)
{
    unsigned prot = PVM_PROT_READ;
    /* Writable only once dirty, so the guest's D bit stays exact. */
    if (writable && dirty && !(flags & PVM_MEM_READONLY))
        prot |= PVM_PROT_WRITE;
    if (exec && !(flags & PVM_MEM_NOEXEC))
        prot |= PVM_PROT_EXEC;
    return prot;
}

/* May neighbour leaf @e join a run of @prot whose fault leaf is @leaf? */
static bool run_ok(const struct pvm_walk_env *env, uint64_t e, uint64_t leaf, uint64_t want_gpa,
                   unsigned prot)
{
    const uint64_t rsvd = (PVM_PTE_ADDR & ~env->maxphyaddr_mask) | (env->nxe ? 0 : PVM_PTE_NX);
    const uint64_t need = PVM_PTE_P | PVM_PTE_A | ((prot & PVM_PROT_WRITE) ? PVM_PTE_D : 0);
    return (e & need) == need && !(e & rsvd) && (e & PVM_PTE_ADDR) == want_gpa &&
           !((e ^ leaf) & (PVM_PTE_W | PVM_PTE_U | PVM_PTE_NX));
}

/*
 * Grow the 4 KiB mapping at *gva, *gpa (length PAGE) over neighbouring
 * entries of the same page table with the same resulting protection and
 * contiguous backing, without crossing another record or page 0.
 */
static void extend_run(struct pvm_shadow *s, const struct slot *sl, const struct pvm_walk_env *env,
                       const struct pvm_walk_result *r, unsigned prot, uint32_t flags, uint64_t ext,
                       uint64_t *gva, uint64_t *gpa, uint64_t *len)
{
    const uint64_t *pt = env->pte_ptr(env->opaque, r->leaf_pte_gpa & ~(PAGE - 1));
    if (!pt)
        return;
    const unsigned idx = (r->leaf_pte_gpa & (PAGE - 1)) >> 3;
    const uint64_t base = *gva - (uint64_t)idx * PAGE; /* gva of entry 0 */
    size_t i = lower_bound(sl, *gva);
    uint64_t lo = i > 0 ? sl->maps[i - 1].gva + mlen(&sl->maps[i - 1]) : 0;
    uint64_t hi_pages = i < sl->n ? (sl->maps[i].gva - *gva) / PAGE : 512; /* pages from *gva */
    if (ext / PAGE < hi_pages)
        hi_pages = ext / PAGE;

    unsigned last = idx, first = idx;
    while (last + 1 < 512 && last + 1 - idx < hi_pages && in_window(s, base + (uint64_t)(last + 1) * PAGE) &&
           run_ok(env, __atomic_load_n(&pt[last + 1], __ATOMIC_RELAXED), r->leaf_pte,
                  *gpa + (uint64_t)(last + 1 - idx) * PAGE, prot))
        last++;
    while (first > 0 && base + (first - 1) * PAGE >= lo && base + (first - 1) * PAGE != 0 &&
           in_window(s, base + (uint64_t)(first - 1) * PAGE) &&
           *gpa >= (uint64_t)(idx - first + 1) * PAGE &&
           run_ok(env, __atomic_load_n(&pt[first - 1], __ATOMIC_RELAXED), r->leaf_pte,
                  *gpa - (uint64_t)(idx - first + 1) * PAGE, prot))
        first--;
    if (first < idx) {
        /* The backward part must be in the same region, contiguous with us. */
        uint32_t f = 0;
        uint64_t g0 = *gpa - (uint64_t)(idx - first) * PAGE;
        if (s->ops->ram_extent(s->opaque, g0, &f) < (uint64_t)(idx - first + 1) * PAGE || f != flags)
            first = idx;
    }
    *gva -= (uint64_t)(idx - first) * PAGE;
    *gpa -= (uint64_t)(idx - first) * PAGE;
    *len = (uint64_t)(last - first + 1) * PAGE;
}

/*
 * Shrink the install [*mgva, *mgva + *len) around the faulting @gva: to the
 * @most-aligned piece that holds it where it is longer than @most (a power
 * of two), and to the faulting page alone where it is longer than @budget.
 */
static void fit_install(uint64_t gva, uint64_t most, uint64_t budget, uint64_t *mgva, uint64_t *mgpa,
                        uint64_t *len)
{
    uint64_t piece = *len > budget ? PAGE : *len > most ? most : 0;
    if (!piece)
        return;
    uint64_t lo = gva & ~(piece - 1), hi = lo + piece;
    if (lo < *mgva)
        lo = *mgva;
    if (hi > *mgva + *len)
        hi = *mgva + *len;
    *mgpa += lo - *mgva;
    *mgva = lo;
    *len = hi - lo;
}

enum pvm_shadow_fault_result pvm_shadow_fault(struct pvm_shadow *s, const struct pvm_walk_env *env,
                                              uint64_t gva, uint32_t access, uint32_t *pfec,
                                              uint64_t *gpa_out)
{
    if (s->active >= s->nslots)
        return PVM_SHADOW_ERROR;
    const unsigned si = s->active;
    struct slot *sl = &s->slot[si];
    const uint32_t acc = (access & (PVM_PFEC_W | PVM_PFEC_I)) | (sl->user ? PVM_PFEC_U : 0);
    struct pvm_walk_result r;

    if (pvm_mmu_walk(env, sl->root, gva, acc, true, &r) != PVM_WALK_OK) {
        drop_containing(s, si, gva);
        *pfec = r.pfec;
        return PVM_SHADOW_GUEST_PF;
    }

    uint32_t flags = 0;
    uint64_t gpa = r.gpa & ~(PAGE - 1);
    uint64_t ext = s->ops->ram_extent(s->opaque, gpa, &flags);
    if (ext < PAGE || ((flags & PVM_MEM_READONLY) && (acc & PVM_PFEC_W))) {
        *gpa_out = r.gpa;
        return PVM_SHADOW_MMIO;
    }
    if ((flags & PVM_MEM_NOEXEC) && (acc & PVM_PFEC_I)) {
        *pfec = PVM_PFEC_P | PVM_PFEC_I | (acc & PVM_PFEC_U);
        return PVM_SHADOW_GUEST_PF;
    }

    unsigned prot = prot_of(r.writable, r.dirty, r.executable, flags);
    uint64_t mgva = gva & ~(PAGE - 1), mgpa = gpa, len = PAGE;
    /*
     * Write tracking (snapshots): a page becomes writable only once the
     * provider recorded it as written, and then alone (no large page, no
     * run), so that no other page can be written behind the tracker's back.
     */
    int track = PVM_SHADOW_TRACK_OFF;
    if ((prot & PVM_PROT_WRITE) && s->ops->track_write)
        track = s->ops->track_write(s->opaque, gpa, (acc & PVM_PFEC_W) != 0);
    if (track == PVM_SHADOW_TRACK_ERROR)
        return PVM_SHADOW_ERROR;
    if (track == PVM_SHADOW_TRACK_READONLY)
        prot &= ~PVM_PROT_WRITE;
    if (r.page_size > PAGE && track == PVM_SHADOW_TRACK_OFF) {
        uint32_t f = 0;
        /* §10.13: a large page over 0 is mapped without page 0; a fault
         * inside page 0 itself maps only page 0 (the 4 KiB default). */
        if (s->ops->ram_extent(s->opaque, r.page_gpa, &f) >= r.page_size && f == flags &&
            (r.page_gva != 0 || gva >= PAGE)) {
            /* Clip to the provider's window (and page 0), if the fault page is inside it. */
            uint64_t lo = s->win_lo > PAGE ? s->win_lo : PAGE, last = r.page_gva + (r.page_size - 1);
            if (r.page_gva > lo)
                lo = r.page_gva;
            if (last > s->win_last)
                last = s->win_last;
            if (in_window(s, mgva) && (r.page_gva != 0 || mgva != 0)) {
                mgpa = r.page_gpa + (lo - r.page_gva);
                mgva = lo;
                len = last - lo + 1;
            }
        }
    }
    /*
     * Bounded like the record count: by what the provider may spend on page
     * tables (map_budget); a large page or run over the whole budget, or over
     * what one install may map (install_max), shrinks to a piece around the fault.
     */
    uint64_t budget = s->ops->map_budget ? s->ops->map_budget(s->opaque) : UINT64_MAX;
    uint64_t most = s->ops->install_max ? s->ops->install_max(s->opaque) : 0;
    if (most < PAGE || (most & (most - 1)))
        most = UINT64_MAX;
    fit_install(gva, most, budget, &mgva, &mgpa, &len);
    drop_overlapping(s, si, mgva, len);
    if (r.page_size == PAGE && track == PVM_SHADOW_TRACK_OFF)
        extend_run(s, sl, env, &r, prot, flags, ext, &mgva, &mgpa, &len);
    fit_install(gva, most, budget, &mgva, &mgpa, &len);
    if (sl->n >= s->cap || sl->bytes + len > budget)
        reset_slot(s, si);
    if (s->ops->install(s->opaque, si, mgva, len, mgpa, prot) < 0)
        return PVM_SHADOW_ERROR;
    sl->bytes += len;
    size_t i = lower_bound(sl, mgva);
    memmove(&sl->maps[i + 1], &sl->maps[i], (sl->n - i) * sizeof(struct map));
    sl->maps[i] = (struct map){ .gva = mgva, .gpa = mgpa, .npages = (uint32_t)(len / PAGE), .prot = prot };
    sl->n++;
    return PVM_SHADOW_FIXED;
}

bool pvm_shadow_prefetch(struct pvm_shadow *s, const struct pvm_walk_env *env, uint64_t gva, uint32_t access)
{
    if (s->active >= s->nslots)
        return false;
    const struct slot *sl = &s->slot[s->active];
    const uint32_t acc = (access & (PVM_PFEC_W | PVM_PFEC_I)) | (sl->user ? PVM_PFEC_U : 0);
    struct pvm_walk_result r;
    uint32_t flags = 0, pfec;
    uint64_t gpa;

    /* A side-effect-free walk first: a fault, MMIO or a D bit to set is left to the access itself. */
    if (pvm_mmu_walk(env, sl->root, gva, acc, false, &r) != PVM_WALK_OK || ((acc & PVM_PFEC_W) && !r.dirty))
        return false;
    if (s->ops->ram_extent(s->opaque, r.gpa & ~(PAGE - 1), &flags) < PAGE ||
        ((flags & PVM_MEM_READONLY) && (acc & PVM_PFEC_W)) || ((flags & PVM_MEM_NOEXEC) && (acc & PVM_PFEC_I)))
        return false;
    return pvm_shadow_fault(s, env, gva, access, &pfec, &gpa) == PVM_SHADOW_FIXED;
}

void pvm_shadow_flush_all(struct pvm_shadow *s)
{
    for (unsigned i = 0; i < s->nslots; i++)
        drop(s, i, 0, s->slot[i].n, NULL, 0, 0);
}

void pvm_shadow_flush_root(struct pvm_shadow *s, uint64_t root)
{
    root &= PVM_PTE_ADDR;
    for (unsigned i = 0; i < s->nslots; i++)
        if (s->slot[i].lru && s->slot[i].root == root)
            drop(s, i, 0, s->slot[i].n, NULL, 0, 0);
}

void pvm_shadow_invlpg(struct pvm_shadow *s, uint64_t gva)
{
    for (unsigned i = 0; i < s->nslots; i++)
        drop_containing(s, i, gva);
}

static bool writable(const struct map *m, uint64_t a, uint64_t len)
{
    (void)a;
    (void)len;
    return m->prot & PVM_PROT_WRITE;
}

void pvm_shadow_drop_writable(struct pvm_shadow *s)
{
    for (unsigned i = 0; i < s->nslots; i++)
        drop(s, i, 0, s->slot[i].n, writable, 0, 0);
}

static bool gpa_overlaps(const struct map *m, uint64_t gpa, uint64_t len)
{
    return overlaps(m->gpa, mlen(m), gpa, len);
}

void pvm_shadow_flush_gpa(struct pvm_shadow *s, uint64_t gpa, uint64_t len)
{
    if (!len)
        return;
    for (unsigned i = 0; i < s->nslots; i++)
        drop(s, i, 0, s->slot[i].n, gpa_overlaps, gpa, len);
}

bool pvm_shadow_lookup(const struct pvm_shadow *s, uint64_t gva, uint64_t *start, uint64_t *len,
                       unsigned *prot)
{
    if (s->active >= s->nslots)
        return false;
    const struct slot *sl = &s->slot[s->active];
    size_t i = lower_bound(sl, gva);
    if (i >= sl->n || !contains(&sl->maps[i], gva))
        return false;
    *start = sl->maps[i].gva;
    *len = mlen(&sl->maps[i]);
    *prot = sl->maps[i].prot;
    return true;
}
