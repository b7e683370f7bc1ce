/*
 * lib/core/core.h - library-internal objects shared by core and backends.
 */
#ifndef PVM_CORE_H
#define PVM_CORE_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pvm/abi.h"
#include "pvm/pvm.h"

#define PVM_PAGE_SIZE 4096ull
#define PVM_PAGE_MASK (PVM_PAGE_SIZE - 1)

struct pvm_backend_ops;

/* ---- errors and logging (error.c, log.c) ---------------------------------- */

/* Record a detail message for pvm_last_error() and return @code (negative). */
int pvm__error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int pvm__verror(int code, const char *fmt, va_list ap);
/* Reset the calling thread's detail message to "". */
void pvm__clear_error(void);
/* Set it to the constant @msg, async-signal-safely (for pvm_vcpu_kick). */
void pvm__set_error_const(const char *msg);
void pvm__log(enum pvm_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Would a message of @level go anywhere?  Cheap: one atomic load once $PVM_LOG is read. */
bool pvm__log_on(enum pvm_log_level level);

/* ---- memory (memory.c) ---------------------------------------------------- */

/* A chunk of the VM's memfd arena handed out by pvm_vm_alloc_memory(). */
struct pvm_alloc {
    void *host;
    uint64_t off;   /* offset in vm->memfd */
    uint64_t size;
};

/* A guest-physical region. */
struct pvm_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *host;
    uint32_t flags;    /* PVM_MEM_* */
    uint64_t memfd_off;/* offset of gpa in vm->memfd, or PVM_NO_MEMFD */
};
#define PVM_NO_MEMFD UINT64_MAX

/* ---- write tracking for snapshots (dirty.c) ------------------------------- */

/*
 * Pages of the memfd arena written since the VM's last snapshot or restore
 * (docs/design.md "Snapshots"): a bitmap for "already recorded" and a list
 * of the recorded pages, so that a restore costs O(pages written).  Marking
 * is lock-free (vCPU threads, host-call handlers); reading and clearing
 * happen only while no vCPU runs.  pt marks pages the shadow MMU read page
 * tables from since its last full flush: if one of them was written, a
 * restore must flush every shadow (the TLB of the guest's old tables).
 */
struct pvm_dirty {
    int on;                        /* atomic: tracking since a snapshot */
    uint64_t npages;               /* arena pages covered (the snapshot's RAM size) */
    uint64_t *bits, *pt;           /* npages bits each */
    uint32_t *list;                /* npages entries; nlist used */
    uint64_t nlist;                /* atomic */
    struct pvm_snapshot *base;     /* the snapshot the bits are relative to (a reference) */
};

/* ---- VM and vCPU ---------------------------------------------------------- */

struct pvm_vm {
    const struct pvm_backend_ops *ops;
    void *bdata;                   /* backend private */
    struct pvm_vm_options opts;

    int memfd;                     /* arena backing all pvm_vm_alloc_memory() chunks */
    int create_snap_fd;            /* while ops->vm_init runs: the sealed memfd a VM from a snapshot will share, else -1 */
    uint64_t arena_used;           /* bump pointer into memfd */
    pthread_mutex_t lock;          /* allocs, vcpus, hostcall handler */
    struct pvm_alloc *allocs;
    size_t nr_allocs;

    pthread_rwlock_t regions_lock;
    /*
     * Held for reading by a vCPU thread while it may dereference host pointers
     * into guest RAM (trap handling, host-call handlers); pvm_vm_free_memory()
     * takes it for writing before it unmaps an allocation.
     */
    pthread_rwlock_t mem_users;
    struct pvm_region *regions;    /* sorted by gpa, non-overlapping */
    size_t nr_regions;
    uint64_t ram_bytes;            /* sum of the regions' sizes (atomic: read without the lock) */
    uint64_t regions_gen;          /* bumped on every unmap */

    struct pvm_vcpu **vcpus;       /* indexed by id, max_vcpus entries */

    pvm_hostcall_fn hostcall;
    void *hostcall_opaque;

    struct pvm_dirty dirty;        /* write tracking since the last snapshot or restore */
    /*
     * A VM sharing the pages of the snapshot it was created from (cow.c):
     * pages with no bit in cow_own are still the snapshot's (its sealed
     * memfd, mapped read-only into the library's view and the stubs); a
     * page's first write copies it into vm->memfd.  cow_flush lists pages
     * copied since the vCPU last dropped its mappings of them (under lock).
     */
    struct pvm_snapshot *cow;
    uint64_t cow_npages;
    uint64_t *cow_own;
    uint64_t cow_flush[64];
    unsigned cow_nflush;           /* > 64: drop every mapping */
    int cow_pending;               /* atomic: cow_nflush != 0 */

    void *loader;                  /* loader private (boot layout), freed with the VM */
    void (*loader_free)(void *);
};

struct pvm_vcpu {
    pvm_vm *vm;
    uint32_t id;
    void *bdata;                   /* backend private */
    int running;                   /* atomic: inside pvm_vcpu_run */
    bool ready;                    /* backend init done; under vm->lock */
};

/*
 * Guest-physical lookup for backends.  Returns the host pointer of @gpa if
 * [gpa, gpa+len) lies in one region (and @write is allowed), else NULL.
 * *region_out (optional) receives a copy of the region.
 */
void *pvm__gpa_lookup(pvm_vm *vm, uint64_t gpa, uint64_t len, struct pvm_region *region_out);
/* memfd offset of host address @host if it lies in an arena allocation of @len bytes. */
uint64_t pvm__arena_offset(pvm_vm *vm, const void *host, uint64_t len);
void pvm__memory_fini(pvm_vm *vm);
/* Bracket a vCPU thread's use of guest-RAM host pointers (see pvm_vm.mem_users). */
void pvm__mem_enter(pvm_vm *vm);
void pvm__mem_leave(pvm_vm *vm);

/* Write tracking (dirty.c).  Cheap when off: one atomic load. */
static inline bool pvm__dirty_on(const pvm_vm *vm)
{
    return __atomic_load_n(&vm->dirty.on, __ATOMIC_ACQUIRE);
}
/*
 * About to write memfd-arena bytes [off, off+len): record them as written
 * and, in a VM sharing a snapshot's pages, make them the VM's own first.
 * false: they cannot be written (out of memory copying a page; the error
 * is in pvm_last_error()): the caller must not write.
 */
bool pvm__dirty_mark(pvm_vm *vm, uint64_t off, uint64_t len);
/* The same by guest-physical address (regions without a memfd offset are not tracked). */
bool pvm__dirty_mark_gpa(pvm_vm *vm, uint64_t gpa, uint64_t len);
/*
 * Is the arena page holding guest-physical @gpa recorded (and the VM's
 * own)?  Records it first if @write: 1 yes, 0 no, -1 it cannot be written.
 */
int pvm__dirty_page(pvm_vm *vm, uint64_t gpa, bool write);
/* The page at @gpa holds page tables the shadow MMU used. */
void pvm__dirty_pt(pvm_vm *vm, uint64_t gpa);
/* Start tracking relative to @base (a new reference is taken; the old one dropped). */
int pvm__dirty_start(pvm_vm *vm, struct pvm_snapshot *base, uint64_t npages);
void pvm__dirty_fini(pvm_vm *vm);

/* Sharing a snapshot's pages (cow.c). */
static inline bool pvm__cow_shared(const pvm_vm *vm, uint64_t page)
{
    return vm->cow && page < vm->cow_npages &&
           !(__atomic_load_n(&vm->cow_own[page / 64], __ATOMIC_ACQUIRE) & (1ull << (page % 64)));
}
/* Make arena page @page the VM's own (copy and switch the view); 0 or PVM_E* with the reason. */
int pvm__cow_own(pvm_vm *vm, uint64_t page);
/* The sealed snapshot memfd a backend maps shared pages from, or -1. */
int pvm__cow_fd(const pvm_vm *vm);
/*
 * pvm_vm_create() for a VM that will share the snapshot memfd @snap_fd (-1:
 * none), which the backend may want while it starts (vm->create_snap_fd).
 */
int pvm__vm_create(pvm_vm **out, const struct pvm_vm_options *opts, int snap_fd);
/*
 * For the VM's one vCPU, before guest code runs: the arena pages made own
 * since the last call (at most @max into @pages; returns how many, or
 * SIZE_MAX: drop every mapping).  Their snapshot mappings are stale.
 */
size_t pvm__cow_take_flushes(pvm_vm *vm, uint64_t *pages, size_t max);
/* Guest-physical address of arena offset @off in region order, from *@cursor on; false when none is left. */
bool pvm__arena_gpa(pvm_vm *vm, uint64_t off, size_t *cursor, uint64_t *gpa);
void pvm__cow_fini(pvm_vm *vm);

/* ---- utilities ------------------------------------------------------------ */

/* Is [a, a+alen) overlapping [b, b+blen)? (no overflow) */
static inline bool pvm__overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

#endif /* PVM_CORE_H */
