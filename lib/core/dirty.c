/*
 * lib/core/dirty.c - write tracking since a snapshot: which pages of the
 * VM's memfd arena were written, so that a restore copies back only those
 * (docs/design.md "Snapshots").
 *
 * Every writer of guest RAM marks what it writes: the shadow MMU before it
 * makes a page writable for the guest (lib/hv/, track_write), the machine
 * model and the page walker when they write guest memory, and the library's
 * host-side doors (pvm_vcpu_write_guest, pvm_vm_gpa_to_host).
 */
#include <stdlib.h>
#include <string.h>

#include "snapshot.h"

static bool mark_page(struct pvm_dirty *d, uint64_t page)
{
    if (page >= d->npages)
        return false; /* beyond the snapshot's RAM: a restore refuses that layout anyway */
    uint64_t bit = 1ull << (page % 64), *w = &d->bits[page / 64];
    if (__atomic_load_n(w, __ATOMIC_RELAXED) & bit)
        return true;
    if (!(__atomic_fetch_or(w, bit, __ATOMIC_ACQ_REL) & bit)) {
        uint64_t i = __atomic_fetch_add(&d->nlist, 1, __ATOMIC_ACQ_REL);
        d->list[i] = (uint32_t)page; /* at most npages entries: each page once */
    }
    return true;
}

bool pvm__dirty_mark(pvm_vm *vm, uint64_t off, uint64_t len)
{
    if (!pvm__dirty_on(vm) || !len)
        return true;
    for (uint64_t p = off / PVM_PAGE_SIZE; p <= (off + len - 1) / PVM_PAGE_SIZE; p++) {
        /* Own before recorded: a restore copies only into the VM's own pages. */
        if (pvm__cow_own(vm, p) < 0)
            return false;
        if (!mark_page(&vm->dirty, p))
            break;
    }
    return true;
}

bool pvm__dirty_mark_gpa(pvm_vm *vm, uint64_t gpa, uint64_t len)
{
    struct pvm_region r;
    if (!pvm__dirty_on(vm) || !len || !pvm__gpa_lookup(vm, gpa, len, &r) || r.memfd_off == PVM_NO_MEMFD)
        return true;
    return pvm__dirty_mark(vm, r.memfd_off + (gpa - r.gpa), len);
}

int pvm__dirty_page(pvm_vm *vm, uint64_t gpa, bool write)
{
    struct pvm_region r;
    if (!pvm__gpa_lookup(vm, gpa, 1, &r) || r.memfd_off == PVM_NO_MEMFD)
        return 0;
    uint64_t page = (r.memfd_off + (gpa - r.gpa)) / PVM_PAGE_SIZE;
    struct pvm_dirty *d = &vm->dirty;
    if (page >= d->npages)
        return 1; /* memory allocated after the snapshot: not tracked (a restore refuses it) */
    if (write) {
        if (pvm__cow_own(vm, page) < 0)
            return -1;
        return mark_page(d, page);
    }
    return (__atomic_load_n(&d->bits[page / 64], __ATOMIC_RELAXED) & (1ull << (page % 64))) != 0;
}

void pvm__dirty_pt(pvm_vm *vm, uint64_t gpa)
{
    struct pvm_region r;
    if (!pvm__dirty_on(vm) || !pvm__gpa_lookup(vm, gpa, 1, &r) || r.memfd_off == PVM_NO_MEMFD)
        return;
    uint64_t page = (r.memfd_off + (gpa - r.gpa)) / PVM_PAGE_SIZE;
    if (page < vm->dirty.npages) {
        uint64_t bit = 1ull << (page % 64);
        if (!(__atomic_load_n(&vm->dirty.pt[page / 64], __ATOMIC_RELAXED) & bit))
            __atomic_fetch_or(&vm->dirty.pt[page / 64], bit, __ATOMIC_RELAXED);
    }
}

int pvm__dirty_start(pvm_vm *vm, struct pvm_snapshot *base, uint64_t npages)
{
    struct pvm_dirty *d = &vm->dirty;
    if (npages > UINT32_MAX)
        return pvm__error(PVM_ERANGE, "snapshot: %llu pages of guest RAM are more than write tracking covers",
                          (unsigned long long)npages);
    if (npages != d->npages || !d->bits) {
        size_t words = (size_t)(npages + 63) / 64 + 1;
        uint64_t *bits = calloc(words, sizeof(*bits)), *pt = calloc(words, sizeof(*pt));
        uint32_t *list = malloc((size_t)(npages ? npages : 1) * sizeof(*list));
        if (!bits || !pt || !list) {
            free(bits);
            free(pt);
            free(list);
            return pvm__error(PVM_ENOMEM, "snapshot: out of memory for the write-tracking bitmap");
        }
        free(d->bits);
        free(d->pt);
        free(d->list);
        d->bits = bits;
        d->pt = pt;
        d->list = list;
        d->npages = npages;
    } else {
        memset(d->bits, 0, ((size_t)(npages + 63) / 64) * sizeof(*d->bits));
        memset(d->pt, 0, ((size_t)(npages + 63) / 64) * sizeof(*d->pt));
    }
    d->nlist = 0;
    pvm__snap_ref(base);
    if (d->base)
        pvm__snap_unref(d->base);
    d->base = base;
    __atomic_store_n(&d->on, 1, __ATOMIC_RELEASE);
    return 0;
}

void pvm__dirty_fini(pvm_vm *vm)
{
    struct pvm_dirty *d = &vm->dirty;
    free(d->bits);
    free(d->pt);
    free(d->list);
    if (d->base)
        pvm__snap_unref(d->base);
    memset(d, 0, sizeof(*d));
}
