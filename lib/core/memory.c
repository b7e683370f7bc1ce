/*
 * lib/core/memory.c - guest memory: the VM's memfd arena and the
 * guest-physical region table.
 *
 * All memory from pvm_vm_alloc_memory() lives in one memfd per VM (grown by
 * each allocation, never beyond max_memory), so any backend, including ones that run guest code in
 * another process, can map it by offset.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend.h"

int pvm_vm_alloc_memory(pvm_vm *vm, size_t size, void **host_out)
{
    pvm__clear_error();
    if (!vm || !host_out)
        return pvm__error(PVM_EINVAL, "pvm_vm_alloc_memory: NULL argument");
    if (size == 0 || (size & PVM_PAGE_MASK))
        return pvm__error(PVM_EINVAL, "pvm_vm_alloc_memory: size 0x%zx is not a non-zero multiple of 4096",
                          size);
    pthread_mutex_lock(&vm->lock);
    int rc = 0;
    if (size > vm->opts.max_memory - vm->arena_used) {
        rc = pvm__error(PVM_ENOMEM, "pvm_vm_alloc_memory: 0x%zx bytes would exceed max_memory 0x%llx "
                        "(0x%llx in use)", size, (unsigned long long)vm->opts.max_memory,
                        (unsigned long long)vm->arena_used);
        goto out;
    }
    struct pvm_alloc *na = realloc(vm->allocs, (vm->nr_allocs + 1) * sizeof(*na));
    if (!na) {
        rc = pvm__error(PVM_ENOMEM, "pvm_vm_alloc_memory: out of memory");
        goto out;
    }
    vm->allocs = na;
    if (ftruncate(vm->memfd, (off_t)(vm->arena_used + size)) < 0) {
        rc = pvm__error(PVM_ENOMEM, "pvm_vm_alloc_memory: growing the guest-RAM memfd by 0x%zx bytes: %s",
                        size, strerror(errno));
        goto out;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->memfd, (off_t)vm->arena_used);
    if (p == MAP_FAILED) {
        rc = pvm__error(PVM_ENOMEM, "pvm_vm_alloc_memory: mmap of 0x%zx bytes: %s", size, strerror(errno));
        goto out;
    }
    na[vm->nr_allocs++] = (struct pvm_alloc){ .host = p, .off = vm->arena_used, .size = size };
    vm->arena_used += size;
    *host_out = p;
out:
    pthread_mutex_unlock(&vm->lock);
    return rc;
}

/* Is any part of [host, host+size) mapped into the guest?  Caller holds regions_lock. */
static bool host_range_mapped(pvm_vm *vm, const uint8_t *host, uint64_t size)
{
    for (size_t i = 0; i < vm->nr_regions; i++)
        if (pvm__overlaps((uintptr_t)vm->regions[i].host, vm->regions[i].size, (uintptr_t)host, size))
            return true;
    return false;
}

/* Depth of pvm__mem_enter() on this thread (a vCPU thread inside its run loop). */
static _Thread_local unsigned mem_depth;

void pvm__mem_enter(pvm_vm *vm)
{
    if (mem_depth++ == 0)
        pthread_rwlock_rdlock(&vm->mem_users);
}

void pvm__mem_leave(pvm_vm *vm)
{
    if (--mem_depth == 0)
        pthread_rwlock_unlock(&vm->mem_users);
}

int pvm_vm_free_memory(pvm_vm *vm, void *host)
{
    pvm__clear_error();
    if (!vm || !host)
        return pvm__error(PVM_EINVAL, "pvm_vm_free_memory: NULL argument");
    if (mem_depth)
        return pvm__error(PVM_EBUSY, "pvm_vm_free_memory: called from inside pvm_vcpu_run "
                          "(a host-call handler); free guest memory after the run returns");
    /* Wait until no vCPU thread is using a host pointer into guest RAM. */
    pthread_rwlock_wrlock(&vm->mem_users);
    pthread_mutex_lock(&vm->lock);
    pthread_rwlock_rdlock(&vm->regions_lock);
    int rc = PVM_EINVAL;
    size_t i;
    for (i = 0; i < vm->nr_allocs; i++)
        if (vm->allocs[i].host == host)
            break;
    if (i == vm->nr_allocs) {
        rc = pvm__error(PVM_EINVAL, "pvm_vm_free_memory: %p is not the start of an allocation", host);
    } else if (host_range_mapped(vm, host, vm->allocs[i].size)) {
        rc = pvm__error(PVM_EBUSY, "pvm_vm_free_memory: %p is still mapped into the guest", host);
    } else {
        struct pvm_alloc a = vm->allocs[i];
        munmap(a.host, a.size);
        /* Give the pages back; the offset range is not reused (bump allocator). */
        fallocate(vm->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)a.off, (off_t)a.size);
        vm->allocs[i] = vm->allocs[--vm->nr_allocs];
        rc = 0;
    }
    pthread_rwlock_unlock(&vm->regions_lock);
    pthread_mutex_unlock(&vm->lock);
    pthread_rwlock_unlock(&vm->mem_users);
    return rc;
}

uint64_t pvm__arena_offset(pvm_vm *vm, const void *host, uint64_t len)
{
    uint64_t off = PVM_NO_MEMFD;
    uintptr_t h = (uintptr_t)host;
    pthread_mutex_lock(&vm->lock);
    for (size_t i = 0; i < vm->nr_allocs; i++) {
        uintptr_t b = (uintptr_t)vm->allocs[i].host;
        if (h >= b && h - b < vm->allocs[i].size && len <= vm->allocs[i].size - (h - b)) {
            off = vm->allocs[i].off + (h - b);
            break;
        }
    }
    pthread_mutex_unlock(&vm->lock);
    return off;
}

int pvm_vm_map_memory(pvm_vm *vm, pvm_gpa_t gpa, void *host, size_t size, uint32_t flags)
{
    pvm__clear_error();
    if (!vm || !host)
        return pvm__error(PVM_EINVAL, "pvm_vm_map_memory: NULL argument");
    if (size == 0 || ((gpa | (uintptr_t)host | size) & PVM_PAGE_MASK))
        return pvm__error(PVM_EINVAL, "pvm_vm_map_memory: gpa 0x%llx, host %p and size 0x%zx must be "
                          "4 KiB aligned and size non-zero", (unsigned long long)gpa, host, size);
    if (flags & ~(PVM_MEM_READONLY | PVM_MEM_NOEXEC))
        return pvm__error(PVM_EINVAL, "pvm_vm_map_memory: unknown flags 0x%x", flags);
    if (gpa + size < gpa || gpa + size > (1ull << 52))
        return pvm__error(PVM_ERANGE, "pvm_vm_map_memory: gpa 0x%llx + size 0x%zx exceeds the 52-bit "
                          "physical address space", (unsigned long long)gpa, size);
    uint64_t off = pvm__arena_offset(vm, host, size);
    if (off == PVM_NO_MEMFD && !(vm->ops->caps & PVM_CAP_ANY_HOST_MEMORY))
        return pvm__error(PVM_ENOTSUP, "pvm_vm_map_memory: the %s backend runs guest code outside this "
                          "process and can map only memory from pvm_vm_alloc_memory(); %p is not",
                          vm->ops->name, host);

    struct pvm_region r = { .gpa = gpa, .size = size, .host = host, .flags = flags, .memfd_off = off };
    pthread_rwlock_wrlock(&vm->regions_lock);
    int rc = 0;
    size_t pos = 0;
    for (size_t i = 0; i < vm->nr_regions; i++) {
        const struct pvm_region *o = &vm->regions[i];
        if (pvm__overlaps(gpa, size, o->gpa, o->size)) {
            rc = pvm__error(PVM_EEXIST, "pvm_vm_map_memory: gpa 0x%llx size 0x%zx overlaps the region at "
                            "gpa 0x%llx size 0x%llx", (unsigned long long)gpa, size,
                            (unsigned long long)o->gpa, (unsigned long long)o->size);
            goto out;
        }
        if (o->gpa < gpa)
            pos = i + 1;
    }
    struct pvm_region *nr = realloc(vm->regions, (vm->nr_regions + 1) * sizeof(*nr));
    if (!nr) {
        rc = pvm__error(PVM_ENOMEM, "pvm_vm_map_memory: out of memory");
        goto out;
    }
    vm->regions = nr;
    if (vm->ops->region_add && (rc = vm->ops->region_add(vm, &r)) < 0)
        goto out;
    memmove(&nr[pos + 1], &nr[pos], (vm->nr_regions - pos) * sizeof(*nr));
    nr[pos] = r;
    vm->nr_regions++;
    __atomic_add_fetch(&vm->ram_bytes, size, __ATOMIC_RELAXED);
out:
    pthread_rwlock_unlock(&vm->regions_lock);
    return rc;
}

int pvm_vm_unmap_memory(pvm_vm *vm, pvm_gpa_t gpa, size_t size)
{
    pvm__clear_error();
    if (!vm)
        return pvm__error(PVM_EINVAL, "pvm_vm_unmap_memory: NULL vm");
    struct pvm_region removed;
    pthread_rwlock_wrlock(&vm->regions_lock);
    int rc = PVM_ENOENT;
    for (size_t i = 0; i < vm->nr_regions; i++) {
        if (vm->regions[i].gpa == gpa && vm->regions[i].size == size) {
            struct pvm_region r = vm->regions[i];
            memmove(&vm->regions[i], &vm->regions[i + 1], (vm->nr_regions - i - 1) * sizeof(r));
            vm->nr_regions--;
            __atomic_sub_fetch(&vm->ram_bytes, r.size, __ATOMIC_RELAXED);
            __atomic_add_fetch(&vm->regions_gen, 1, __ATOMIC_RELEASE);
            removed = r;
            rc = 0;
            break;
        }
    }
    pthread_rwlock_unlock(&vm->regions_lock);
    /* Outside regions_lock: the backend walks the vCPUs under vm->lock (lock order). */
    if (rc == 0 && vm->ops->region_del)
        vm->ops->region_del(vm, &removed);
    if (rc)
        return pvm__error(rc, "pvm_vm_unmap_memory: no region starts at gpa 0x%llx with size 0x%zx",
                          (unsigned long long)gpa, size);
    return 0;
}

void *pvm__gpa_lookup(pvm_vm *vm, uint64_t gpa, uint64_t len, struct pvm_region *region_out)
{
    void *p = NULL;
    pthread_rwlock_rdlock(&vm->regions_lock);
    /* Binary search: regions are sorted and disjoint. */
    size_t lo = 0, hi = vm->nr_regions;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const struct pvm_region *r = &vm->regions[mid];
        if (gpa < r->gpa) {
            hi = mid;
        } else if (gpa - r->gpa >= r->size) {
            lo = mid + 1;
        } else {
            if (len <= r->size - (gpa - r->gpa)) {
                p = r->host + (gpa - r->gpa);
                if (region_out)
                    *region_out = *r;
            }
            break;
        }
    }
    pthread_rwlock_unlock(&vm->regions_lock);
    return p;
}

void *pvm_vm_gpa_to_host(pvm_vm *vm, pvm_gpa_t gpa, size_t size)
{
    pvm__clear_error();
    if (!vm) {
        pvm__error(PVM_EINVAL, "pvm_vm_gpa_to_host: NULL vm");
        return NULL;
    }
    void *p = pvm__gpa_lookup(vm, gpa, size ? size : 1, NULL);
    /* The caller may write through it: after a snapshot the range counts as written. */
    if (p && !pvm__dirty_mark_gpa(vm, gpa, size ? size : 1))
        return NULL;
    if (!p)
        pvm__error(PVM_EFAULT, "pvm_vm_gpa_to_host: gpa 0x%llx size 0x%zx is not inside one memory region",
                   (unsigned long long)gpa, size);
    return p;
}

void pvm__memory_fini(pvm_vm *vm)
{
    for (size_t i = 0; i < vm->nr_regions; i++)
        if (vm->ops->region_del)
            vm->ops->region_del(vm, &vm->regions[i]);
    free(vm->regions);
    for (size_t i = 0; i < vm->nr_allocs; i++)
        munmap(vm->allocs[i].host, vm->allocs[i].size);
    free(vm->allocs);
    if (vm->memfd >= 0)
        close(vm->memfd);
}
