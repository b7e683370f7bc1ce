/*
 * lib/core/cow.c - VMs that share the pages of the snapshot they were
 * created from (docs/design.md "Snapshots").
 *
 * The snapshot's RAM is a memfd sealed against writes.  Such a VM's memfd
 * starts empty (holes); the library's view of each allocation maps the
 * snapshot's memfd read-only at the same offsets, and the stubs map pages
 * the VM has not written from it too (NSTUB_FD_SNAP).  The first write to
 * a page, from the guest or the library, goes through pvm__dirty_mark*
 * first, which copies the page into the VM's memfd and maps that page over
 * the view, writable; the vCPU then drops its shadow mappings of the
 * snapshot's page before guest code runs again.  Restores copy back into
 * the VM's own pages: a page once copied stays the VM's, so memory grows
 * with the pages ever written, not with guest RAM.
 *
 * Only VMs with one vCPU share: with one shadow MMU, dropping the stale
 * mappings before the next guest instruction keeps every access coherent.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend.h"
#include "snapshot.h"

int pvm__cow_fd(const pvm_vm *vm)
{
    return vm->cow ? vm->cow->fd : -1;
}

int pvm__cow_own(pvm_vm *vm, uint64_t page)
{
    if (!pvm__cow_shared(vm, page))
        return 0;
    int rc = 0;
    bool changed = false;
    pthread_mutex_lock(&vm->lock);
    if (pvm__cow_shared(vm, page)) {
        const uint64_t off = page * PVM_PAGE_SIZE;
        uint8_t *view = NULL;
        for (size_t i = 0; i < vm->nr_allocs && !view; i++)
            if (off - vm->allocs[i].off < vm->allocs[i].size)
                view = (uint8_t *)vm->allocs[i].host + (off - vm->allocs[i].off);
        if (!view) {
            rc = 0; /* freed: nothing maps it any more */
        } else if (pvm__snap_page_nonzero(vm->cow, page) &&
                   pwrite(vm->memfd, vm->cow->ram + off, PVM_PAGE_SIZE, (off_t)off) != (ssize_t)PVM_PAGE_SIZE) {
            rc = pvm__error(PVM_ENOMEM, "copying a shared snapshot page: %s", strerror(errno));
        } else if (mmap(view, PVM_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, vm->memfd, (off_t)off) ==
                   MAP_FAILED) {
            /* The view still shows the snapshot's page, unchanged: nothing half-done. */
            rc = pvm__error(PVM_ENOMEM, "mapping a copied snapshot page: %s", strerror(errno));
        } else {
            __atomic_fetch_or(&vm->cow_own[page / 64], 1ull << (page % 64), __ATOMIC_RELEASE);
            if (vm->cow_nflush < 64)
                vm->cow_flush[vm->cow_nflush] = page;
            vm->cow_nflush++;
            __atomic_store_n(&vm->cow_pending, 1, __ATOMIC_RELEASE);
            changed = true;
        }
    }
    pthread_mutex_unlock(&vm->lock);
    if (changed && vm->ops->mem_changed)
        vm->ops->mem_changed(vm);
    return rc;
}

size_t pvm__cow_take_flushes(pvm_vm *vm, uint64_t *pages, size_t max)
{
    if (!__atomic_load_n(&vm->cow_pending, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&vm->lock);
    size_t n = vm->cow_nflush;
    if (n > 64 || n > max)
        n = SIZE_MAX;
    else
        memcpy(pages, vm->cow_flush, n * sizeof(*pages));
    vm->cow_nflush = 0;
    __atomic_store_n(&vm->cow_pending, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&vm->lock);
    return n;
}

bool pvm__arena_gpa(pvm_vm *vm, uint64_t off, size_t *cursor, uint64_t *gpa)
{
    bool found = false;
    pthread_rwlock_rdlock(&vm->regions_lock);
    for (; *cursor < vm->nr_regions && !found; (*cursor)++) {
        const struct pvm_region *r = &vm->regions[*cursor];
        if (r->memfd_off != PVM_NO_MEMFD && off - r->memfd_off < r->size) {
            *gpa = r->gpa + (off - r->memfd_off);
            found = true;
        }
    }
    pthread_rwlock_unlock(&vm->regions_lock);
    return found;
}

void pvm__cow_fini(pvm_vm *vm)
{
    free(vm->cow_own);
    vm->cow_own = NULL;
    if (vm->cow)
        pvm__snap_unref(vm->cow);
    vm->cow = NULL;
}
