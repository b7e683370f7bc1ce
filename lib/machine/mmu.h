/*
 * lib/machine/mmu.h - guest page walk and the shadow MMU (backend neutral).
 *
 * PVM is "pagetable-based": the hypervisor walks the guest's own 4-level page
 * tables and installs shadow mappings in the address space the hardware (for
 * the native provider: a stub process) actually uses.  This header is the one
 * interface between the rules (walker, allowed range, TLB semantics) and the
 * providers that carry the mappings out (install / remove / switch root).
 *
 * No OS calls: guest-physical memory is reached through a callback.
 */
#ifndef PVM_MMU_H
#define PVM_MMU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pvm/abi.h"

/* Access kinds, as #PF error-code bits: PVM_PFEC_W, PVM_PFEC_U, PVM_PFEC_I. */

/* Page-table entry bits: PVM_PTE_* in pvm/abi.h. */

/* Environment of one walk. */
struct pvm_walk_env {
    void *opaque;
    /*
     * Host pointer to the 8-byte page-table entry at guest-physical @gpa, or
     * NULL if @gpa is not RAM.  Must stay valid while the walk runs.
     */
    uint64_t *(*pte_ptr)(void *opaque, uint64_t gpa);
    /*
     * (pte_ptr is called with 8-byte aligned @gpa.  The shadow cache assumes
     * the 512 entries of one 4 KiB page-table page are contiguous in host
     * memory, which holds because RAM regions are 4 KiB aligned.)
     */
    uint64_t la_range; /* MSR_PVM_LINEAR_ADDRESS_RANGE */
    bool nxe;          /* EFER.NXE: NX bit honoured, else reserved */
    uint64_t maxphyaddr_mask; /* e.g. 0x000ffffffffff000 for 52 bits */
    /*
     * (Optional, snapshots) Called before the walk sets an A or D bit in the
     * entry at guest-physical @gpa (a write to guest RAM by the library,
     * which may then lose a race and not happen); false: the page cannot be
     * written, and the walk ends as BAD_PT.
     */
    bool (*pte_write)(void *opaque, uint64_t gpa);
};

/* Outcome of a walk. */
enum pvm_walk_status {
    PVM_WALK_OK = 0,      /* translated; see result */
    PVM_WALK_FAULT = 1,   /* guest #PF: result.pfec holds the error code */
    PVM_WALK_BAD_PT = 2,  /* a page-table page is not RAM (delivered as #PF, pfec per decision) */
};

struct pvm_walk_result {
    uint64_t gpa;         /* translated address of the byte at gva */
    uint64_t page_gva;    /* gva of the start of the guest page */
    uint64_t page_gpa;    /* gpa of the start of the guest page */
    uint64_t page_size;   /* 4 KiB, 2 MiB or 1 GiB */
    bool writable;        /* effective R/W over all levels */
    bool user;            /* effective U/S over all levels */
    bool executable;      /* no NX at any level (or NXE clear) */
    bool dirty;           /* leaf D bit after the walk */
    uint32_t pfec;        /* #PF error code when status != OK */
    /* Additions (used by the shadow cache to extend 4 KiB runs). */
    uint64_t leaf_pte_gpa; /* gpa of the leaf entry (valid when OK) */
    uint64_t leaf_pte;     /* leaf entry value after A/D updates (valid when OK) */
};

/* gva is canonical for 4-level paging (bits 63:47 equal). */
static inline bool pvm_mmu_canonical(uint64_t gva)
{
    return (uint64_t)((int64_t)(gva << 16) >> 16) == gva;
}

/*
 * The PVM allowed-linear-address rule (§8.2) for MSR value @la_range: the
 * lower half except address 0 (§10.13: follow the RFC's `va > 0`), plus the
 * 4-level range [(0x1fffe00|START)<<39, (0x1fffe00|END)<<39) and the 5-level
 * range [(0xfe00|START5)<<48, (0xfe00|END5)<<48), all mod 2^64.  An inverted
 * range (START >= END) is empty.  Canonicality is not checked here.
 */
bool pvm_mmu_la_allowed(uint64_t la_range, uint64_t gva);

/*
 * Walk the guest page tables rooted at guest-physical @root (CR3 bits
 * 51:12) for @gva with @access (PVM_PFEC_W/U/I).  @set_ad: update A (and D
 * for writes) like hardware.  Checks present, R/W, U/S, NX, reserved bits and
 * the allowed-range rule (§8.2).  Never reads outside what pte_ptr returns.
 *
 * Decisions (see mmu_walk.c): a non-canonical or not-allowed @gva, and a
 * page-table page outside RAM (BAD_PT), fault like a not-present entry
 * (pfec = W/U/I access bits, P = 0).  I is reported for fetches only when
 * env->nxe.  A/D bits are written only when the whole walk succeeds (as
 * KVM's software walker does); a faulting walk leaves guest memory untouched.
 */
enum pvm_walk_status pvm_mmu_walk(const struct pvm_walk_env *env, uint64_t root, uint64_t gva,
                                  uint32_t access, bool set_ad, struct pvm_walk_result *res);

/* ---- shadow cache -------------------------------------------------------- */

#define PVM_PROT_READ  1u
#define PVM_PROT_WRITE 2u
#define PVM_PROT_EXEC  4u

/* What the shadow MMU asks of a provider (one address space per root slot). */
struct pvm_shadow_ops {
    /* Map [gva, gva+len) to guest-physical [gpa, gpa+len) with PVM_PROT_*. */
    int (*install)(void *opaque, unsigned slot, uint64_t gva, uint64_t len, uint64_t gpa, unsigned prot);
    /* Remove whatever is mapped in [gva, gva+len). */
    int (*remove)(void *opaque, unsigned slot, uint64_t gva, uint64_t len);
    /* The root in @slot is being evicted or reset: drop its whole address space. */
    void (*reset_slot)(void *opaque, unsigned slot);
    /*
     * Guest RAM backing @gpa: the number of bytes from @gpa that lie in one
     * region and are contiguous in the backing (0 = not RAM, i.e. MMIO), and
     * that region's PVM_MEM_* flags in *flags.  A write to a READONLY region
     * is reported as MMIO; a fetch from a NOEXEC region is a guest #PF (I).
     */
    uint64_t (*ram_extent)(void *opaque, uint64_t gpa, uint32_t *flags);
    /*
     * Optional: the most bytes of guest-virtual space one slot may have
     * mapped at a time.  A provider's host page tables grow with the mapped
     * space a guest touches (8 bytes per 4 KiB page), and a guest's own page
     * tables can alias its RAM without limit: past the budget the slot is
     * reset before the next install, as when its record set is full.
     */
    uint64_t (*map_budget)(void *opaque);
    /*
     * Optional: the most bytes one install may map (a power of two, >= 4 KiB;
     * 0: no limit).  A large page or a run longer than that is mapped as the
     * aligned piece of that size around the faulting page: for a provider
     * whose mappings cost per page up front (kmod pins, and so allocates,
     * every page it maps), where native maps lazily.
     */
    uint64_t (*install_max)(void *opaque);
    /*
     * (Optional, snapshots: write tracking) Asked before a writable mapping
     * of the page at @gpa is installed; @write: the fault is a write.
     * PVM_SHADOW_TRACK_OFF: no tracking, map as usual.  Otherwise only that
     * one page is mapped, and writable only if the answer is
     * PVM_SHADOW_TRACK_WRITABLE (the provider recorded the page as written,
     * now or earlier); PVM_SHADOW_TRACK_READONLY maps it read-only, so the
     * first write faults again.
     */
    int (*track_write)(void *opaque, uint64_t gpa, bool write);
};
#define PVM_SHADOW_TRACK_OFF 0
#define PVM_SHADOW_TRACK_WRITABLE 1
#define PVM_SHADOW_TRACK_READONLY 2
#define PVM_SHADOW_TRACK_ERROR 3     /* the page cannot be made writable: the fault ends in ERROR */

#define PVM_SHADOW_MAX_ROOTS 4           /* default for max_roots = 0 */
#define PVM_SHADOW_DEFAULT_MAPPINGS 4096 /* default for max_mappings = 0 */

struct pvm_shadow; /* opaque: per-vCPU cache of shadowed roots */

/*
 * (Addition) Threading: a pvm_shadow belongs to one vCPU; calls must not run
 * concurrently.  The callbacks run on the calling thread.  Dropping more than
 * asked is always legal under TLB semantics, so: a slot whose mapping set is
 * full is reset (ops->reset_slot) before the next install, and a failed
 * ops->remove also resets its slot.  Flushes remove gva-adjacent mappings of
 * a slot with one ops->remove call; a page inside a large mapping or run
 * drops the whole mapping.  A fault ending in a guest #PF drops the mapping
 * at that gva, as hardware drops the TLB entry of a faulting address.
 */

/*
 * Create a shadow cache with up to @max_roots address spaces and at most
 * @max_mappings installed mappings per root (0 = default).  Returns NULL on
 * allocation failure or if an op is missing.  All memory is allocated here;
 * faults never allocate.  @ops and @opaque must outlive the cache.
 * pvm_shadow_destroy() accepts NULL and calls no op.
 */
struct pvm_shadow *pvm_shadow_create(const struct pvm_shadow_ops *ops, void *opaque,
                                     unsigned max_roots, size_t max_mappings);
void pvm_shadow_destroy(struct pvm_shadow *s);

/*
 * (Addition) The provider's usable gva window [@lo, @hi) (@hi = 0: up to
 * 2^64; default: everything).  Large pages and 4 KiB runs are clipped to it
 * (as a large page over 0 is clipped to leave out page 0); a fault whose own
 * page lies outside it installs just that page, as before, which the
 * provider may refuse (ERROR): providers keep such faults away themselves.
 */
void pvm_shadow_set_window(struct pvm_shadow *s, uint64_t lo, uint64_t hi);

/*
 * Select the address space for (root, user): returns the slot number the
 * provider must run in, evicting the least recently used root if needed.
 * @root is the raw CR3 value (only bits 51:12 identify the root).
 */
unsigned pvm_shadow_activate(struct pvm_shadow *s, uint64_t root, bool user);
/*
 * (Addition) The slot holding (root, user), or -1: no side effect (no
 * eviction, no LRU tick, the active slot stays).  For a provider that may
 * switch to that address space itself during a run.
 */
int pvm_shadow_find(const struct pvm_shadow *s, uint64_t root, bool user);

/* Result of pvm_shadow_fault(). */
enum pvm_shadow_fault_result {
    PVM_SHADOW_FIXED = 0,     /* mapping installed: retry the access */
    PVM_SHADOW_GUEST_PF = 1,  /* deliver #PF(pfec) with CR2 = gva to the guest */
    PVM_SHADOW_MMIO = 2,      /* the translation points at non-RAM gpa (*gpa_out) */
    PVM_SHADOW_ERROR = 3,     /* provider failure */
};

/*
 * Handle a hardware fault at @gva with @access in the active slot: walk the
 * guest tables (user walk when the slot is a user root) and, if allowed,
 * install a mapping (a whole large page or a contiguous run where the guest
 * mapping and the backing allow) and return FIXED.  Writable mappings are
 * installed only when the D bit is set (write access sets it), so guest
 * dirty tracking stays exact.
 *
 * (Addition) Only PVM_PFEC_W and PVM_PFEC_I of @access are used: U comes
 * from the slot, since everything runs at ring 3 underneath (§5.12).  A
 * 4 KiB run extends only over entries of the same page table that already
 * have A set (and D, for a writable run), so no A/D bit is left stale.  A
 * large page over address 0 is installed without page 0 (§10.13).  *pfec is
 * written for GUEST_PF, *gpa_out for MMIO; ERROR also when no slot is active.
 */
enum pvm_shadow_fault_result pvm_shadow_fault(struct pvm_shadow *s, const struct pvm_walk_env *env,
                                              uint64_t gva, uint32_t access, uint32_t *pfec,
                                              uint64_t *gpa_out);

/*
 * (Addition) Prefetch: do what pvm_shadow_fault(@gva, @access) would do if it
 * would end FIXED without setting any D bit (a write needs the leaf's D set
 * already), else change nothing.  Returns true if a mapping was installed.
 * Used after a guest #PF, when the guest returns to the faulting instruction
 * (docs/design.md "Fast path"): only A bits may be set ahead of the access.
 */
bool pvm_shadow_prefetch(struct pvm_shadow *s, const struct pvm_walk_env *env, uint64_t gva, uint32_t access);

/*
 * TLB semantics: drop mappings (via ops->remove).  flush_all: every slot;
 * flush_root: the slots of that root (user and supervisor, CR3 bits 51:12);
 * invlpg: the mapping containing @gva in every slot.
 */
void pvm_shadow_flush_all(struct pvm_shadow *s);
void pvm_shadow_flush_root(struct pvm_shadow *s, uint64_t root);
void pvm_shadow_invlpg(struct pvm_shadow *s, uint64_t gva);
/*
 * (Addition, snapshots) Drop every writable mapping of every slot, so that
 * the next write to any page faults (write tracking starts or restarts).
 */
void pvm_shadow_drop_writable(struct pvm_shadow *s);
/* Drop every mapping of guest-physical [gpa, gpa+len) (memory unmapped by the VMM). */
void pvm_shadow_flush_gpa(struct pvm_shadow *s, uint64_t gpa, uint64_t len);

/*
 * (Addition) The installed mapping of the active slot that contains @gva:
 * true with its [*start, *start + *len) and PVM_PROT_* in *prot, false if
 * none (or no slot is active).  Installed mappings are TLB entries, so a
 * provider may use them for accesses it makes on the guest's behalf.
 */
bool pvm_shadow_lookup(const struct pvm_shadow *s, uint64_t gva, uint64_t *start, uint64_t *len,
                       unsigned *prot);

#endif /* PVM_MMU_H */
