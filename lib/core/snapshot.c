/*
 * lib/core/snapshot.c - VM snapshots: take one, restore a VM to it, create
 * VMs from it (docs/design.md "Snapshots").
 *
 * A snapshot holds the VM's memfd arena (a private anonymous copy in which
 * zero pages stay unpopulated), its allocation and region layout, and each
 * vCPU's complete state as a backend blob.  After a snapshot or restore the
 * VM tracks the pages written (dirty.c), so that restoring the same
 * snapshot again copies back only those.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend.h"
#include "snapshot.h"

/* ---- the object ------------------------------------------------------------- */

struct pvm_snapshot *pvm__snap_new(void)
{
    struct pvm_snapshot *s = calloc(1, sizeof(*s));
    if (s) {
        s->refs = 1;
        s->fd = -1;
        pthread_mutex_init(&s->pool_lock, NULL);
    }
    return s;
}

int pvm__snap_alloc_ram(struct pvm_snapshot *s, uint64_t ram_size)
{
    s->ram_size = ram_size;
    if (!ram_size)
        return 0;
    s->fd = memfd_create("pvm-snapshot", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (s->fd < 0 || ftruncate(s->fd, (off_t)ram_size) < 0)
        return PVM_ENOMEM;
    s->ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (s->ram == MAP_FAILED) {
        s->ram = NULL;
        return PVM_ENOMEM;
    }
    s->nonzero = calloc((size_t)(ram_size / PVM_PAGE_SIZE + 63) / 64, sizeof(uint64_t));
    return s->nonzero ? 0 : PVM_ENOMEM;
}

int pvm__snap_seal(struct pvm_snapshot *s)
{
    if (s->fd < 0)
        return 0;
    /* F_SEAL_WRITE needs every shared mapping that could become writable gone first. */
    munmap(s->ram, s->ram_size);
    s->ram = NULL;
    if (fcntl(s->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
        return PVM_EIO;
    s->ram = mmap(NULL, s->ram_size, PROT_READ, MAP_SHARED, s->fd, 0);
    if (s->ram == MAP_FAILED) {
        s->ram = NULL;
        return PVM_ENOMEM;
    }
    return 0;
}

void pvm__snap_ref(struct pvm_snapshot *s)
{
    __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
}

void pvm__snap_unref(struct pvm_snapshot *s)
{
    if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (s->ram)
        munmap(s->ram, s->ram_size);
    if (s->fd >= 0)
        close(s->fd);
    free(s->nonzero);
    for (uint32_t i = 0; i < s->nr_vcpus; i++)
        free(s->vcpus[i].state);
    free(s->vcpus);
    free(s->allocs);
    free(s->regions);
    free(s->pool);
    pthread_mutex_destroy(&s->pool_lock);
    free(s);
}

void pvm_snapshot_free(pvm_snapshot *snap)
{
    if (!snap)
        return;
    /* Started VMs nobody took hold references too: they go with the application's. */
    pthread_mutex_lock(&snap->pool_lock);
    pvm_vm **pool = snap->pool;
    unsigned n = snap->npool;
    snap->pool = NULL;
    snap->npool = snap->pool_cap = 0;
    pthread_mutex_unlock(&snap->pool_lock);
    for (unsigned i = 0; i < n; i++)
        pvm_vm_destroy(pool[i]);
    free(pool);
    pvm__snap_unref(snap);
}

int pvm__snap_check(const struct pvm_snapshot *s, const char *fn)
{
#define BAD(...) return pvm__error(PVM_EBADSNAP, __VA_ARGS__)
    if (!memchr(s->format, 0, sizeof(s->format)) || !s->format[0])
        BAD("%s: the backend state format name is not a string", fn);
    if (s->backend > PVM_BACKEND_KMOD)
        BAD("%s: unknown backend %u", fn, s->backend);
    if (s->max_vcpus == 0 || s->max_vcpus > PVM_MAX_VCPUS)
        BAD("%s: max_vcpus %u is not 1..%u", fn, s->max_vcpus, PVM_MAX_VCPUS);
    if ((s->ram_size & PVM_PAGE_MASK) || s->ram_size > PVM_SNAP_MAX_RAM || (s->max_memory & PVM_PAGE_MASK) ||
        s->max_memory > PVM_SNAP_MAX_MEMORY || s->max_memory < s->ram_size)
        BAD("%s: RAM size 0x%llx or max_memory 0x%llx is not page aligned, too large, or inconsistent", fn,
            (unsigned long long)s->ram_size, (unsigned long long)s->max_memory);
    if (s->nr_allocs > PVM_SNAP_MAX_ALLOCS || s->nr_regions > PVM_SNAP_MAX_REGIONS || s->nr_vcpus > s->max_vcpus)
        BAD("%s: %u allocations, %u regions or %u vCPUs is too many", fn, s->nr_allocs, s->nr_regions, s->nr_vcpus);
    uint64_t end = 0;
    for (uint32_t i = 0; i < s->nr_allocs; i++) {
        const struct pvm_snap_alloc *a = &s->allocs[i];
        if (((a->off | a->size) & PVM_PAGE_MASK) || !a->size || a->off < end || a->size > s->ram_size ||
            a->off > s->ram_size - a->size)
            BAD("%s: allocation %u (offset 0x%llx size 0x%llx) is unaligned, overlaps or lies outside RAM", fn, i,
                (unsigned long long)a->off, (unsigned long long)a->size);
        end = a->off + a->size;
    }
    uint64_t gend = 0;
    for (uint32_t i = 0; i < s->nr_regions; i++) {
        const struct pvm_snap_region *r = &s->regions[i];
        bool inside = false;
        for (uint32_t j = 0; j < s->nr_allocs && !inside; j++)
            inside = r->memfd_off >= s->allocs[j].off && r->memfd_off - s->allocs[j].off < s->allocs[j].size &&
                     r->size <= s->allocs[j].size - (r->memfd_off - s->allocs[j].off);
        if (((r->gpa | r->size | r->memfd_off) & PVM_PAGE_MASK) || !r->size || r->gpa < gend ||
            r->size > (1ull << 52) || r->gpa > (1ull << 52) - r->size || (r->flags & ~(PVM_MEM_READONLY | PVM_MEM_NOEXEC)) ||
            !inside)
            BAD("%s: region %u (gpa 0x%llx size 0x%llx) is unaligned, overlaps, has unknown flags or lies outside "
                "its allocation", fn, i, (unsigned long long)r->gpa, (unsigned long long)r->size);
        gend = r->gpa + r->size;
    }
    for (uint32_t i = 0; i < s->nr_vcpus; i++) {
        const struct pvm_snap_vcpu *v = &s->vcpus[i];
        if (v->id >= s->max_vcpus || (i && v->id <= s->vcpus[i - 1].id) || v->len > PVM_SNAP_MAX_STATE)
            BAD("%s: vCPU %u (id %u, %u bytes of state) is out of range or out of order", fn, i, v->id, v->len);
    }
    return 0;
#undef BAD
}

/* ---- helpers ------------------------------------------------------------------ */

static bool vcpu_running(pvm_vm *vm)
{
    for (uint32_t i = 0; i < vm->opts.max_vcpus; i++)
        if (vm->vcpus[i] && __atomic_load_n(&vm->vcpus[i]->running, __ATOMIC_ACQUIRE))
            return true;
    return false;
}

/* Host address of arena offset @off (a page), or NULL if no allocation holds it.  Caller holds vm->lock. */
static uint8_t *arena_host(pvm_vm *vm, uint64_t off)
{
    for (size_t i = 0; i < vm->nr_allocs; i++)
        if (off - vm->allocs[i].off < vm->allocs[i].size)
            return (uint8_t *)vm->allocs[i].host + (off - vm->allocs[i].off);
    return NULL;
}

static bool page_is_zero(const uint8_t *p)
{
    static const uint8_t zero[PVM_PAGE_SIZE];
    return memcmp(p, zero, PVM_PAGE_SIZE) == 0;
}

static int cmp_alloc(const void *a, const void *b)
{
    const struct pvm_snap_alloc *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static void copy_page(struct pvm_snapshot *s, const uint8_t *src, uint64_t p)
{
    if (page_is_zero(src))
        return;
    memcpy(s->ram + p, src, PVM_PAGE_SIZE);
    s->nonzero[p / PVM_PAGE_SIZE / 64] |= 1ull << (p / PVM_PAGE_SIZE % 64);
    s->nr_nonzero++;
}

/* Copy the data of arena [off, off+size) into s->ram, skipping the memfd's holes and zero pages. */
static void copy_ram(pvm_vm *vm, struct pvm_snapshot *s, const uint8_t *host, uint64_t off, uint64_t size)
{
    uint64_t pos = off, end = off + size;
    if (vm->cow) {
        /* Pages still shared live in the snapshot's memfd, not in ours: look at each through the view. */
        for (uint64_t p = off; p < end; p += PVM_PAGE_SIZE) {
            uint64_t pg = p / PVM_PAGE_SIZE;
            if (!pvm__cow_shared(vm, pg) || pvm__snap_page_nonzero(vm->cow, pg))
                copy_page(s, host + (p - off), p);
        }
        return;
    }
    while (pos < end) {
        off_t d = lseek(vm->memfd, (off_t)pos, SEEK_DATA);
        if (d < 0 || (uint64_t)d >= end)
            break;
        off_t h = lseek(vm->memfd, d, SEEK_HOLE);
        uint64_t hend = h < 0 || (uint64_t)h > end ? end : (uint64_t)h;
        for (uint64_t p = (uint64_t)d & ~PVM_PAGE_MASK; p < hend; p += PVM_PAGE_SIZE)
            copy_page(s, host + (p - off), p);
        pos = hend;
    }
}

/* ---- pvm_vm_snapshot ------------------------------------------------------------ */

static int take(pvm_vm *vm, struct pvm_snapshot *s)
{
    int rc;
    snprintf(s->format, sizeof(s->format), "%s", vm->ops->snap_format);
    s->backend = vm->ops->id;
    s->max_vcpus = vm->opts.max_vcpus;
    s->max_memory = vm->opts.max_memory;
    if (vm->arena_used > PVM_SNAP_MAX_RAM || vm->nr_allocs > PVM_SNAP_MAX_ALLOCS ||
        vm->nr_regions > PVM_SNAP_MAX_REGIONS)
        return pvm__error(PVM_ERANGE, "pvm_vm_snapshot: more than 1 TiB of guest RAM, or too many allocations "
                          "or regions");
    if ((rc = pvm__snap_alloc_ram(s, vm->arena_used)) < 0)
        return pvm__error(rc, "pvm_vm_snapshot: out of memory for 0x%llx bytes of guest RAM",
                          (unsigned long long)vm->arena_used);
    s->allocs = calloc(vm->nr_allocs + 1, sizeof(*s->allocs));
    s->regions = calloc(vm->nr_regions + 1, sizeof(*s->regions));
    s->vcpus = calloc(vm->opts.max_vcpus, sizeof(*s->vcpus));
    if (!s->allocs || !s->regions || !s->vcpus)
        return pvm__error(PVM_ENOMEM, "pvm_vm_snapshot: out of memory");
    for (size_t i = 0; i < vm->nr_allocs; i++) {
        s->allocs[i] = (struct pvm_snap_alloc){ vm->allocs[i].off, vm->allocs[i].size };
        copy_ram(vm, s, vm->allocs[i].host, vm->allocs[i].off, vm->allocs[i].size);
    }
    s->nr_allocs = (uint32_t)vm->nr_allocs;
    qsort(s->allocs, s->nr_allocs, sizeof(*s->allocs), cmp_alloc);

    pthread_rwlock_rdlock(&vm->regions_lock);
    for (size_t i = 0; i < vm->nr_regions && rc == 0; i++) {
        const struct pvm_region *r = &vm->regions[i];
        if (r->memfd_off == PVM_NO_MEMFD)
            rc = pvm__error(PVM_ENOTSUP, "pvm_vm_snapshot: the region at gpa 0x%llx is not memory from "
                            "pvm_vm_alloc_memory()", (unsigned long long)r->gpa);
        s->regions[i] = (struct pvm_snap_region){ r->gpa, r->size, r->memfd_off, r->flags, 0 };
    }
    s->nr_regions = (uint32_t)vm->nr_regions;
    pthread_rwlock_unlock(&vm->regions_lock);
    if (rc < 0)
        return rc;

    for (uint32_t i = 0; i < vm->opts.max_vcpus; i++) {
        pvm_vcpu *v = vm->vcpus[i];
        if (!v || !v->ready)
            continue;
        void *blob = NULL;
        size_t len = 0;
        if ((rc = vm->ops->snap_save_vcpu(v, &blob, &len)) < 0)
            return rc;
        if (len > PVM_SNAP_MAX_STATE) {
            free(blob);
            return pvm__error(PVM_EINTERNAL, "pvm_vm_snapshot: vCPU %u state of %zu bytes", i, len);
        }
        s->vcpus[s->nr_vcpus++] = (struct pvm_snap_vcpu){ .id = i, .len = (uint32_t)len, .state = blob };
    }
    if ((rc = pvm__snap_check(s, "pvm_vm_snapshot")) < 0)
        return rc;
    if ((rc = pvm__snap_seal(s)) < 0)
        return pvm__error(rc, "pvm_vm_snapshot: sealing the snapshot's memfd: %s", strerror(errno));
    return 0;
}

int pvm_vm_snapshot(pvm_vm *vm, pvm_snapshot **out)
{
    pvm__clear_error();
    if (!vm || !out)
        return pvm__error(PVM_EINVAL, "pvm_vm_snapshot: NULL argument");
    *out = NULL;
    if (!vm->ops->snap_save_vcpu || !vm->ops->snap_load_vcpu || !vm->ops->snap_flush)
        return pvm__error(PVM_ENOTSUP, "pvm_vm_snapshot: the %s backend cannot take snapshots", vm->ops->name);
    struct pvm_snapshot *s = pvm__snap_new();
    if (!s)
        return pvm__error(PVM_ENOMEM, "pvm_vm_snapshot: out of memory");
    pthread_mutex_lock(&vm->lock);
    int rc = vcpu_running(vm) ? pvm__error(PVM_EBUSY, "pvm_vm_snapshot: a vCPU is inside pvm_vcpu_run()")
                              : take(vm, s);
    if (rc == 0 && (rc = pvm__dirty_start(vm, s, s->ram_size / PVM_PAGE_SIZE)) == 0)
        vm->ops->snap_flush(vm, true); /* every page must fault on its first write from now on */
    pthread_mutex_unlock(&vm->lock);
    if (rc < 0) {
        pvm__snap_unref(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* ---- pvm_vm_restore --------------------------------------------------------------- */

/* Does @vm have exactly the layout and vCPUs of @s?  Caller holds vm->lock. */
static int same_layout(pvm_vm *vm, const struct pvm_snapshot *s)
{
    if (strcmp(s->format, vm->ops->snap_format))
        return pvm__error(PVM_ENOTSUP, "pvm_vm_restore: the snapshot holds vCPU state of format '%s'; the %s "
                          "backend uses '%s'", s->format, vm->ops->name, vm->ops->snap_format);
    if (vm->arena_used != s->ram_size || vm->nr_allocs != s->nr_allocs)
        return pvm__error(PVM_ESTATE, "pvm_vm_restore: the VM's memory (0x%llx bytes in %zu allocations) is not "
                          "the snapshot's (0x%llx bytes in %u)", (unsigned long long)vm->arena_used, vm->nr_allocs,
                          (unsigned long long)s->ram_size, s->nr_allocs);
    for (size_t i = 0; i < vm->nr_allocs; i++) {
        bool found = false;
        for (uint32_t j = 0; j < s->nr_allocs && !found; j++)
            found = s->allocs[j].off == vm->allocs[i].off && s->allocs[j].size == vm->allocs[i].size;
        if (!found)
            return pvm__error(PVM_ESTATE, "pvm_vm_restore: the VM's allocation at offset 0x%llx is not the "
                              "snapshot's", (unsigned long long)vm->allocs[i].off);
    }
    int rc = 0;
    pthread_rwlock_rdlock(&vm->regions_lock);
    if (vm->nr_regions != s->nr_regions)
        rc = pvm__error(PVM_ESTATE, "pvm_vm_restore: the VM has %zu memory regions, the snapshot %u",
                        vm->nr_regions, s->nr_regions);
    for (size_t i = 0; i < vm->nr_regions && rc == 0; i++) {
        const struct pvm_region *r = &vm->regions[i];
        const struct pvm_snap_region *q = &s->regions[i];
        if (r->gpa != q->gpa || r->size != q->size || r->memfd_off != q->memfd_off || r->flags != q->flags)
            rc = pvm__error(PVM_ESTATE, "pvm_vm_restore: the VM's region at gpa 0x%llx is not the snapshot's",
                            (unsigned long long)r->gpa);
    }
    pthread_rwlock_unlock(&vm->regions_lock);
    if (rc < 0)
        return rc;
    uint32_t n = 0;
    for (uint32_t i = 0; i < vm->opts.max_vcpus; i++)
        if (vm->vcpus[i] && vm->vcpus[i]->ready)
            n++;
    if (n != s->nr_vcpus)
        return pvm__error(PVM_ESTATE, "pvm_vm_restore: the VM has %u vCPUs, the snapshot %u", n, s->nr_vcpus);
    for (uint32_t i = 0; i < s->nr_vcpus; i++) {
        uint32_t id = s->vcpus[i].id;
        if (id >= vm->opts.max_vcpus || !vm->vcpus[id] || !vm->vcpus[id]->ready)
            return pvm__error(PVM_ESTATE, "pvm_vm_restore: the snapshot has vCPU %u, the VM does not", id);
        if ((rc = vm->ops->snap_load_vcpu(vm->vcpus[id], s->vcpus[i].state, s->vcpus[i].len, false)) < 0)
            return rc;
    }
    return 0;
}

/*
 * Do the page-table page @now and its snapshot copy @old (NULL: zeros)
 * differ in more than A and D bits?  Only then can a shadow mapping built
 * from @now be wrong for @old: one that needed D is writable and dropped
 * anyway, and a cached translation whose A bit reads clear again is what a
 * TLB may hold after software clears A without a flush (SDM 4.10.4.3).
 */
static bool pt_changed(const uint8_t *now, const uint8_t *old)
{
    const uint64_t ad = PVM_PTE_A | PVM_PTE_D;
    for (size_t i = 0; i < PVM_PAGE_SIZE; i += 8) {
        uint64_t a, b = 0;
        memcpy(&a, now + i, 8);
        if (old)
            memcpy(&b, old + i, 8);
        if ((a ^ b) & ~ad)
            return true;
    }
    return false;
}

/* Copy back the pages written since the snapshot; true if the shadows' page tables changed. */
static bool restore_dirty(pvm_vm *vm, const struct pvm_snapshot *s)
{
    struct pvm_dirty *d = &vm->dirty;
    bool pt = false;
    uint64_t n = __atomic_load_n(&d->nlist, __ATOMIC_ACQUIRE);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t page = d->list[i], off = page * PVM_PAGE_SIZE;
        uint8_t *h = arena_host(vm, off);
        bool nz = pvm__snap_page_nonzero(s, page);
        if (h && !pt && ((d->pt[page / 64] >> (page % 64)) & 1))
            pt = pt_changed(h, nz ? s->ram + off : NULL);
        if (h) {
            if (nz)
                memcpy(h, s->ram + off, PVM_PAGE_SIZE);
            else
                memset(h, 0, PVM_PAGE_SIZE);
        }
        d->bits[page / 64] &= ~(1ull << (page % 64));
    }
    d->nlist = 0;
    return pt;
}

/* Copy all of @s's RAM: the VM's arena becomes the snapshot's, byte for byte. */
static void restore_all(pvm_vm *vm, const struct pvm_snapshot *s)
{
    if (vm->cow) {
        /* @s is the shared snapshot (same_layout): only the pages made own differ. */
        for (uint64_t page = 0; page < vm->cow_npages; page++) {
            if (pvm__cow_shared(vm, page))
                continue;
            uint8_t *h = arena_host(vm, page * PVM_PAGE_SIZE);
            if (h && pvm__snap_page_nonzero(s, page))
                memcpy(h, s->ram + page * PVM_PAGE_SIZE, PVM_PAGE_SIZE);
            else if (h)
                memset(h, 0, PVM_PAGE_SIZE);
        }
        return;
    }
    for (size_t i = 0; i < vm->nr_allocs; i++) {
        const struct pvm_alloc *a = &vm->allocs[i];
        /* Zero pages become holes again: memory is given back, not written. */
        fallocate(vm->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)a->off, (off_t)a->size);
        for (uint64_t off = a->off; off < a->off + a->size; off += PVM_PAGE_SIZE)
            if (pvm__snap_page_nonzero(s, off / PVM_PAGE_SIZE))
                memcpy((uint8_t *)a->host + (off - a->off), s->ram + off, PVM_PAGE_SIZE);
    }
}

int pvm_vm_restore(pvm_vm *vm, const pvm_snapshot *snap)
{
    pvm__clear_error();
    if (!vm || !snap)
        return pvm__error(PVM_EINVAL, "pvm_vm_restore: NULL argument");
    if (!vm->ops->snap_load_vcpu)
        return pvm__error(PVM_ENOTSUP, "pvm_vm_restore: the %s backend cannot restore snapshots", vm->ops->name);
    struct pvm_snapshot *s = (struct pvm_snapshot *)snap;
    pthread_mutex_lock(&vm->lock);
    int rc = vcpu_running(vm) ? pvm__error(PVM_EBUSY, "pvm_vm_restore: a vCPU is inside pvm_vcpu_run()")
                              : same_layout(vm, s);
    bool full = true;
    if (rc == 0 && vm->cow && s != vm->cow && vm->dirty.base != s)
        rc = pvm__error(PVM_ENOTSUP, "pvm_vm_restore: this VM shares the pages of the snapshot it was created "
                        "from; it restores only that one or the one it last took");
    if (rc == 0 && vm->dirty.base == s && pvm__dirty_on(vm)) {
        full = restore_dirty(vm, s);
    } else if (rc == 0 && (rc = pvm__dirty_start(vm, s, s->ram_size / PVM_PAGE_SIZE)) == 0) {
        restore_all(vm, s);
    }
    for (uint32_t i = 0; i < s->nr_vcpus && rc == 0; i++)
        rc = vm->ops->snap_load_vcpu(vm->vcpus[s->vcpus[i].id], s->vcpus[i].state, s->vcpus[i].len, true);
    if (rc == 0) {
        vm->ops->snap_flush(vm, full);
        if (full)
            memset(vm->dirty.pt, 0, (size_t)((vm->dirty.npages + 63) / 64) * sizeof(uint64_t));
    }
    pthread_mutex_unlock(&vm->lock);
    return rc;
}

/* ---- pvm_vm_create_from_snapshot ----------------------------------------------------- */

/*
 * Give a fresh @vm the snapshot's arena: same offsets.  Shared (cow.c) on a
 * backend that can and with one vCPU: nothing is copied, the view maps the
 * snapshot's memfd.  Else only the non-zero pages are written.
 */
static int build_arena(pvm_vm *vm, struct pvm_snapshot *s)
{
    if (s->ram_size > vm->opts.max_memory)
        return pvm__error(PVM_ERANGE, "pvm_vm_create_from_snapshot: the snapshot's 0x%llx bytes of RAM exceed "
                          "max_memory", (unsigned long long)s->ram_size);
    if (s->ram_size && ftruncate(vm->memfd, (off_t)s->ram_size) < 0)
        return pvm__error(PVM_ENOMEM, "pvm_vm_create_from_snapshot: growing the memfd: %s", strerror(errno));
    vm->allocs = calloc(s->nr_allocs + 1, sizeof(*vm->allocs));
    if (!vm->allocs)
        return pvm__error(PVM_ENOMEM, "pvm_vm_create_from_snapshot: out of memory");
    vm->arena_used = s->ram_size;
    if ((vm->ops->caps & PVM_CAP_SHARED_SNAPSHOT) && vm->opts.max_vcpus == 1 && s->fd >= 0) {
        vm->cow_npages = s->ram_size / PVM_PAGE_SIZE;
        if (!(vm->cow_own = calloc((size_t)(vm->cow_npages + 63) / 64, sizeof(uint64_t))))
            return pvm__error(PVM_ENOMEM, "pvm_vm_create_from_snapshot: out of memory");
        pvm__snap_ref(s);
        vm->cow = s;
        for (uint32_t i = 0; i < s->nr_allocs; i++) {
            const struct pvm_snap_alloc *a = &s->allocs[i];
            void *h = mmap(NULL, a->size, PROT_READ, MAP_SHARED, s->fd, (off_t)a->off);
            if (h == MAP_FAILED)
                return pvm__error(PVM_ENOMEM, "pvm_vm_create_from_snapshot: mmap: %s", strerror(errno));
            vm->allocs[vm->nr_allocs++] = (struct pvm_alloc){ .host = h, .off = a->off, .size = a->size };
        }
        goto regions;
    }
    /* Runs of non-zero pages, one pwrite each: no page faults in this process. */
    uint64_t npages = s->ram_size / PVM_PAGE_SIZE;
    for (uint64_t p = 0; p < npages;) {
        if (!s->nonzero[p / 64] && !(p % 64)) {
            p += 64;
            continue;
        }
        if (!pvm__snap_page_nonzero(s, p)) {
            p++;
            continue;
        }
        uint64_t q = p + 1;
        while (q < npages && pvm__snap_page_nonzero(s, q))
            q++;
        uint64_t off = p * PVM_PAGE_SIZE, len = (q - p) * PVM_PAGE_SIZE;
        for (uint64_t done = 0; done < len;) {
            ssize_t w = pwrite(vm->memfd, s->ram + off + done, len - done, (off_t)(off + done));
            if (w <= 0)
                return pvm__error(PVM_ENOMEM, "pvm_vm_create_from_snapshot: writing guest RAM: %s",
                                  w < 0 ? strerror(errno) : "short write");
            done += (uint64_t)w;
        }
        p = q;
    }
    for (uint32_t i = 0; i < s->nr_allocs; i++) {
        const struct pvm_snap_alloc *a = &s->allocs[i];
        void *h = mmap(NULL, a->size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->memfd, (off_t)a->off);
        if (h == MAP_FAILED)
            return pvm__error(PVM_ENOMEM, "pvm_vm_create_from_snapshot: mmap: %s", strerror(errno));
        vm->allocs[vm->nr_allocs++] = (struct pvm_alloc){ .host = h, .off = a->off, .size = a->size };
    }
    /* Holes between allocations (memory freed before the snapshot) stay holes. */
regions:
    for (uint32_t i = 0; i < s->nr_regions; i++) {
        const struct pvm_snap_region *r = &s->regions[i];
        int rc = pvm_vm_map_memory(vm, r->gpa, arena_host(vm, r->memfd_off), r->size, r->flags);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int create_from(pvm_vm **out, struct pvm_snapshot *s, const struct pvm_vm_options *opts);

int pvm_vm_create_from_snapshot(pvm_vm **out, const pvm_snapshot *snap, const struct pvm_vm_options *opts)
{
    pvm__clear_error();
    if (!out || !snap)
        return pvm__error(PVM_EINVAL, "pvm_vm_create_from_snapshot: NULL argument");
    *out = NULL;
    struct pvm_snapshot *s = (struct pvm_snapshot *)snap;
    if (!opts) {
        pvm_vm *vm = NULL;
        pthread_mutex_lock(&s->pool_lock);
        if (s->npool)
            vm = s->pool[--s->npool];
        pthread_mutex_unlock(&s->pool_lock);
        if (vm) {
            *out = vm;
            return 0;
        }
    }
    return create_from(out, s, opts);
}

/* Park @vm in @s's pool: 0, or PVM_ERANGE/PVM_ENOMEM (the caller keeps @vm). */
static int pool_push(struct pvm_snapshot *s, pvm_vm *vm)
{
    int rc = 0;
    pthread_mutex_lock(&s->pool_lock);
    if (s->npool >= PVM_SNAP_MAX_POOL) {
        rc = PVM_ERANGE;
    } else if (s->npool == s->pool_cap) {
        unsigned cap = s->pool_cap ? s->pool_cap * 2 : 16;
        pvm_vm **np = realloc(s->pool, cap * sizeof(*np));
        if (np) {
            s->pool = np;
            s->pool_cap = cap;
        } else {
            rc = PVM_ENOMEM;
        }
    }
    if (rc == 0)
        s->pool[s->npool++] = vm;
    pthread_mutex_unlock(&s->pool_lock);
    return rc;
}

int pvm_snapshot_prestart(pvm_snapshot *snap, unsigned n)
{
    pvm__clear_error();
    if (!snap)
        return pvm__error(PVM_EINVAL, "pvm_snapshot_prestart: NULL snapshot");
    for (unsigned i = 0; i < n; i++) {
        pvm_vm *vm;
        int rc = create_from(&vm, snap, NULL);
        if (rc < 0)
            return rc;
        for (uint32_t j = 0; j < snap->nr_vcpus && rc == 0; j++)
            rc = vm->ops->warm_vcpu ? vm->ops->warm_vcpu(vm->vcpus[snap->vcpus[j].id])
                                    : pvm__error(PVM_ENOTSUP, "pvm_snapshot_prestart: the %s backend cannot "
                                                 "start vCPUs ahead of time", vm->ops->name);
        if (rc == 0 && (rc = pool_push(snap, vm)) < 0)
            rc = pvm__error(rc, "pvm_snapshot_prestart: %s", rc == PVM_ERANGE ? "4096 VMs are waiting already"
                                                                               : "out of memory");
        if (rc < 0) {
            pvm_vm_destroy(vm);
            return rc;
        }
    }
    return 0;
}

static int create_from(pvm_vm **out, struct pvm_snapshot *s, const struct pvm_vm_options *opts)
{
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    if (opts) {
        o = *opts;
    } else {
        o.backend = (enum pvm_backend)s->backend;
        o.max_vcpus = s->max_vcpus;
        o.max_memory = s->max_memory;
    }
    pvm_vm *vm;
    /* build_arena's condition for sharing, but for the backend's caps (not chosen yet). */
    int rc = pvm__vm_create(&vm, &o, o.max_vcpus == 1 && s->fd >= 0 ? s->fd : -1);
    if (rc < 0)
        return rc;
    if (!vm->ops->snap_load_vcpu || !vm->ops->snap_format) {
        rc = pvm__error(PVM_ENOTSUP, "pvm_vm_create_from_snapshot: the %s backend cannot restore snapshots",
                        vm->ops->name);
    } else if (strcmp(s->format, vm->ops->snap_format)) {
        rc = pvm__error(PVM_ENOTSUP, "pvm_vm_create_from_snapshot: the snapshot holds vCPU state of format "
                        "'%s'; the %s backend uses '%s'", s->format, vm->ops->name, vm->ops->snap_format);
    } else if (s->max_vcpus > vm->opts.max_vcpus && s->nr_vcpus && s->vcpus[s->nr_vcpus - 1].id >= vm->opts.max_vcpus) {
        rc = pvm__error(PVM_ERANGE, "pvm_vm_create_from_snapshot: the snapshot has vCPU id %u, max_vcpus is %u",
                        s->vcpus[s->nr_vcpus - 1].id, vm->opts.max_vcpus);
    } else {
        rc = build_arena(vm, s);
    }
    pvm_vcpu *v;
    for (uint32_t i = 0; i < s->nr_vcpus && rc == 0; i++) {
        struct pvm_vcpu_options vo = PVM_VCPU_OPTIONS_INIT;
        vo.id = s->vcpus[i].id;
        if ((rc = pvm_vcpu_create(&v, vm, &vo)) == 0)
            rc = vm->ops->snap_load_vcpu(v, s->vcpus[i].state, s->vcpus[i].len, false);
    }
    for (uint32_t i = 0; i < s->nr_vcpus && rc == 0; i++)
        rc = vm->ops->snap_load_vcpu(vm->vcpus[s->vcpus[i].id], s->vcpus[i].state, s->vcpus[i].len, true);
    if (rc == 0)
        rc = pvm__dirty_start(vm, s, s->ram_size / PVM_PAGE_SIZE);
    if (rc < 0) {
        pvm_vm_destroy(vm);
        return rc;
    }
    *out = vm;
    return 0;
}
