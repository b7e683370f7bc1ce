/*
 * lib/machine/mmu_walk.c - the guest page walk (x86-64 4-level paging) and
 * the PVM allowed-linear-address rule (§8.2).
 *
 * Decisions recorded here (see also mmu.h):
 * - §10.13: address 0 is not allowed (the RFC's `(s64)va > 0`).
 * - A gva outside the allowed range, or non-canonical, faults like a
 *   not-present entry (§5.12: "fails the guest page walk").  Hardware would
 *   raise #GP for a non-canonical address before any walk; callers that
 *   emulate an instruction check pvm_mmu_canonical() themselves.
 * - A page-table page outside RAM gives PVM_WALK_BAD_PT with a not-present
 *   error code, so the caller can deliver it as an ordinary #PF.
 * - A/D bits are written only when the whole walk succeeds, as KVM's
 *   software walker does (FNAME(walk_addr_generic) checks permissions before
 *   updating them); a faulting walk leaves guest memory untouched.
 */
#include "machine/mmu.h"

/* Low reserved bits of large-page entries (bit 12 is PAT). */
#define RSVD_1G 0x3fffe000ull /* bits 29:13 */
#define RSVD_2M 0x001fe000ull /* bits 20:13 */

/* Give up updating A/D after this many lost races with another writer. */
#define AD_RETRIES 4

bool pvm_mmu_la_allowed(uint64_t la_range, uint64_t gva)
{
    if ((int64_t)gva > 0)
        return true;
    uint64_t lo = (0x1fffe00ull | PVM_LA_RANGE_PML4_START(la_range)) << 39;
    uint64_t hi = (0x1fffe00ull | PVM_LA_RANGE_PML4_END(la_range)) << 39;
    if (gva >= lo && gva < hi)
        return true;
    lo = (0xfe00ull | PVM_LA_RANGE_PML5_START(la_range)) << 48;
    hi = (0xfe00ull | PVM_LA_RANGE_PML5_END(la_range)) << 48;
    return gva >= lo && gva < hi;
}

enum pvm_walk_status pvm_mmu_walk(const struct pvm_walk_env *env, uint64_t root, uint64_t gva,
                                  uint32_t access, bool set_ad, struct pvm_walk_result *res)
{
    const bool write = access & PVM_PFEC_W;
    const bool user = access & PVM_PFEC_U;
    const bool fetch = access & PVM_PFEC_I;
    /* Error-code access bits; I only with NXE (no SMEP in PVM Gen A, §1.4). */
    const uint32_t acc = (access & (PVM_PFEC_W | PVM_PFEC_U)) | (fetch && env->nxe ? PVM_PFEC_I : 0);
    const uint64_t rsvd = (PVM_PTE_ADDR & ~env->maxphyaddr_mask) | (env->nxe ? 0 : PVM_PTE_NX);

    res->pfec = acc;
    if (!pvm_mmu_canonical(gva) || !pvm_mmu_la_allowed(env->la_range, gva))
        return PVM_WALK_FAULT;

    for (int attempt = 0;; attempt++) {
        uint64_t *ptr[4], val[4], pgpa[4];
        uint64_t table = root & PVM_PTE_ADDR; /* ignores PCID and bit 63 */
        uint64_t all = PVM_PTE_W | PVM_PTE_U, any = 0, e = 0, egpa = 0;
        int level = 4, n = 0;

        for (;; level--) {
            egpa = table + (((gva >> (3 + 9 * level)) & 511) << 3);
            uint64_t *p = env->pte_ptr(env->opaque, egpa);
            if (!p)
                return PVM_WALK_BAD_PT;
            /* Another vCPU may write the entry concurrently. */
            e = __atomic_load_n(p, __ATOMIC_RELAXED);
            if (!(e & PVM_PTE_P))
                return PVM_WALK_FAULT;
            bool leaf = level == 1;
            uint64_t r = rsvd;
            if (level == 4)
                r |= PVM_PTE_PS;
            else if (level > 1 && (e & PVM_PTE_PS)) {
                r |= level == 3 ? RSVD_1G : RSVD_2M;
                leaf = true;
            }
            if (e & r) {
                res->pfec = acc | PVM_PFEC_P | PVM_PFEC_RSVD;
                return PVM_WALK_FAULT;
            }
            ptr[n] = p;
            pgpa[n] = egpa;
            val[n++] = e;
            all &= e;
            any |= e;
            if (leaf)
                break;
            table = e & PVM_PTE_ADDR;
        }

        /* CR0.WP=1 underneath (§1.1); SMEP/SMAP off (§1.4). */
        const bool w = all & PVM_PTE_W, u = all & PVM_PTE_U, x = !(any & PVM_PTE_NX);
        if ((write && !w) || (user && !u) || (fetch && !x)) {
            res->pfec = acc | PVM_PFEC_P;
            return PVM_WALK_FAULT;
        }

        if (set_ad) {
            bool lost = false;
            for (int i = 0; i < n && !lost; i++) {
                uint64_t want = val[i] | PVM_PTE_A | (i == n - 1 && write ? PVM_PTE_D : 0);
                if (want == val[i])
                    continue;
                /* Locked update like hardware; never touch a changed entry. */
                uint64_t seen = val[i];
                if (env->pte_write && !env->pte_write(env->opaque, pgpa[i]))
                    return PVM_WALK_BAD_PT;
                if (__atomic_compare_exchange_n(ptr[i], &seen, want, false, __ATOMIC_SEQ_CST,
                                                __ATOMIC_RELAXED))
                    val[i] = want;
                else
                    lost = true;
            }
            /* Re-walk on a race; after AD_RETRIES report what is there (D may be
             * clear, so the shadow installs read-only and the next write retries). */
            if (lost && attempt < AD_RETRIES)
                continue;
        }

        const uint64_t size = 1ull << (3 + 9 * level);
        res->page_size = size;
        res->page_gva = gva & ~(size - 1);
        res->page_gpa = e & PVM_PTE_ADDR & ~(size - 1);
        res->gpa = res->page_gpa | (gva & (size - 1));
        res->writable = w;
        res->user = u;
        res->executable = x;
        res->dirty = val[n - 1] & PVM_PTE_D;
        res->leaf_pte_gpa = egpa;
        res->leaf_pte = val[n - 1];
        res->pfec = 0;
        return PVM_WALK_OK;
    }
}
