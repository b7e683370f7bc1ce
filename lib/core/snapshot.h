/*
 * lib/core/snapshot.h - the snapshot object shared by snapshot.c (take,
 * restore, create from) and snapfile.c (the file format).
 */
#ifndef PVM_CORE_SNAPSHOT_H
#define PVM_CORE_SNAPSHOT_H

#include "core.h"

/* Bounds every snapshot (and so every file) must keep. */
#define PVM_SNAP_MAX_MEMORY (1ull << 46)  /* as max_memory */
/* Guest RAM a snapshot holds: 1 TiB keeps the per-page bitmaps a file can make us allocate at 32 MiB. */
#define PVM_SNAP_MAX_RAM (1ull << 40)
#define PVM_SNAP_MAX_ALLOCS 4096u
#define PVM_SNAP_MAX_REGIONS 4096u
#define PVM_SNAP_MAX_STATE (1u << 20)     /* one vCPU's backend state */
#define PVM_SNAP_FORMAT_MAX 32            /* backend state format name, with its NUL */

struct pvm_snap_alloc {
    uint64_t off, size;
};

struct pvm_snap_region {
    uint64_t gpa, size, memfd_off;
    uint32_t flags, pad;
};

struct pvm_snap_vcpu {
    uint32_t id;
    uint32_t len;
    uint8_t *state;                 /* backend blob (snap_save_vcpu) */
};

struct pvm_snapshot {
    int refs;                       /* atomic: the application's + one per VM tracking against it */
    char format[PVM_SNAP_FORMAT_MAX];
    uint32_t backend;               /* enum pvm_backend of the VM it was taken from */
    uint32_t max_vcpus;
    uint64_t max_memory;

    uint64_t ram_size;              /* bytes of the memfd arena */
    int fd;                         /* memfd holding ram (zero pages are holes), sealed once filled; -1 none */
    uint8_t *ram;                   /* its mapping: read-only once sealed */
    uint64_t *nonzero;              /* bitmap: pages with data (sparse copies and files) */
    uint64_t nr_nonzero;

    uint32_t nr_allocs, nr_regions, nr_vcpus;
    struct pvm_snap_alloc *allocs;  /* sorted by off, disjoint, inside ram_size */
    struct pvm_snap_region *regions;/* sorted by gpa, disjoint, each inside one alloc */
    struct pvm_snap_vcpu *vcpus;    /* sorted by id */

    /* VMs started ahead of time (pvm_snapshot_prestart), handed out by create; the app's reference owns them. */
    pthread_mutex_t pool_lock;
    pvm_vm **pool;
    unsigned npool, pool_cap;
};
#define PVM_SNAP_MAX_POOL 4096u

/* An empty snapshot with one reference, or NULL. */
struct pvm_snapshot *pvm__snap_new(void);
/* RAM of @ram_size bytes (zero-filled, unpopulated, writable) and its bitmap. */
int pvm__snap_alloc_ram(struct pvm_snapshot *s, uint64_t ram_size);
/*
 * Make the RAM immutable: map it read-only and seal the memfd against
 * writes, so that guests may map it (VMs sharing it, cow.c).  0 or PVM_E*.
 */
int pvm__snap_seal(struct pvm_snapshot *s);
void pvm__snap_ref(struct pvm_snapshot *s);
void pvm__snap_unref(struct pvm_snapshot *s);
/* Check the layout fields (untrusted input): 0 or PVM_EBADSNAP with the reason. */
int pvm__snap_check(const struct pvm_snapshot *s, const char *fn);

static inline bool pvm__snap_page_nonzero(const struct pvm_snapshot *s, uint64_t page)
{
    return s->nonzero[page / 64] & (1ull << (page % 64));
}

#endif /* PVM_CORE_SNAPSHOT_H */
