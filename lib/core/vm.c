/* lib/core/vm.c - VM objects: options, backend choice, lifetime. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend.h"

#define PVM_DEFAULT_MAX_VCPUS 64u
#define PVM_DEFAULT_MAX_MEMORY (64ull << 30)

static int check_options(const struct pvm_vm_options *in, struct pvm_vm_options *o)
{
    if (in->version != PVM_VM_OPTIONS_VERSION)
        return pvm__error(PVM_EVERSION, "pvm_vm_create: options version %u is not supported "
                          "(this library knows version %u; use PVM_VM_OPTIONS_INIT)",
                          in->version, PVM_VM_OPTIONS_VERSION);
    *o = *in;
    if ((unsigned)o->backend > PVM_BACKEND_KMOD)
        return pvm__error(PVM_EINVAL, "pvm_vm_create: unknown backend %d", (int)o->backend);
    if (o->max_vcpus == 0)
        o->max_vcpus = PVM_DEFAULT_MAX_VCPUS;
    if (o->max_vcpus > PVM_MAX_VCPUS)
        return pvm__error(PVM_EINVAL, "pvm_vm_create: max_vcpus %u exceeds PVM_MAX_VCPUS (%u)",
                          o->max_vcpus, PVM_MAX_VCPUS);
    if (o->max_memory == 0)
        o->max_memory = PVM_DEFAULT_MAX_MEMORY;
    if ((o->max_memory & PVM_PAGE_MASK) || o->max_memory > (1ull << 46))
        return pvm__error(PVM_EINVAL, "pvm_vm_create: max_memory 0x%llx must be a multiple of 4096 "
                          "and at most 64 TiB", (unsigned long long)o->max_memory);
    if (o->kick_signal == 0)
        o->kick_signal = SIGUSR2;
    /* Not uncatchable, and not one of the signals that report guest faults and syscalls. */
    static const int reserved[] = { SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGFPE, SIGSYS };
    bool bad = o->kick_signal < 1 || o->kick_signal >= NSIG;
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
        bad |= o->kick_signal == reserved[i];
    if (bad)
        return pvm__error(PVM_EINVAL, "pvm_vm_create: kick_signal %d cannot be used (not catchable, or "
                          "reserved for guest faults and syscalls)", o->kick_signal);
    return 0;
}

int pvm_vm_create(pvm_vm **out, const struct pvm_vm_options *opts)
{
    return pvm__vm_create(out, opts, -1);
}

int pvm__vm_create(pvm_vm **out, const struct pvm_vm_options *opts, int snap_fd)
{
    pvm__clear_error();
    if (!out)
        return pvm__error(PVM_EINVAL, "pvm_vm_create: NULL out pointer");
    *out = NULL;
    struct pvm_vm_options defaults = PVM_VM_OPTIONS_INIT, o;
    int rc = check_options(opts ? opts : &defaults, &o);
    if (rc < 0)
        return rc;
    const struct pvm_backend_ops *ops;
    if ((rc = pvm__backend_select(o.backend, &ops)) < 0)
        return rc;

    pvm_vm *vm = calloc(1, sizeof(*vm));
    if (!vm)
        return pvm__error(PVM_ENOMEM, "pvm_vm_create: out of memory");
    vm->ops = ops;
    vm->opts = o;
    vm->opts.backend = ops->id;
    vm->memfd = -1;
    pthread_mutex_init(&vm->lock, NULL);
    pthread_rwlock_init(&vm->regions_lock, NULL);
    /* Writer-preferring: pvm_vm_free_memory() must not starve behind busy vCPUs. */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&vm->mem_users, &ra);
    pthread_rwlockattr_destroy(&ra);
    vm->vcpus = calloc(o.max_vcpus, sizeof(*vm->vcpus));
    if (!vm->vcpus) {
        rc = pvm__error(PVM_ENOMEM, "pvm_vm_create: out of memory");
        goto fail;
    }
    vm->memfd = memfd_create("pvm-guest-ram", MFD_CLOEXEC);
    if (vm->memfd < 0) {
        rc = pvm__error(PVM_ENOMEM, "pvm_vm_create: memfd_create: %s", strerror(errno));
        goto fail;
    }
    /*
     * The memfd starts empty and grows with each allocation: a guest that reaches
     * the memfd through its stub (docs/design.md, "Known limits") finds nothing
     * beyond what was allocated, and cannot make the host allocate more.
     */
    vm->create_snap_fd = snap_fd;
    rc = ops->vm_init(vm);
    vm->create_snap_fd = -1;
    if (rc < 0)
        goto fail;
    *out = vm;
    return 0;
fail:
    pvm__memory_fini(vm);
    free(vm->vcpus);
    pthread_rwlock_destroy(&vm->regions_lock);
    pthread_rwlock_destroy(&vm->mem_users);
    pthread_mutex_destroy(&vm->lock);
    free(vm);
    return rc;
}

void pvm_vm_destroy(pvm_vm *vm)
{
    if (!vm)
        return;
    for (uint32_t i = 0; i < vm->opts.max_vcpus; i++)
        pvm_vcpu_destroy(vm->vcpus[i]);
    vm->ops->vm_fini(vm);
    if (vm->loader_free)
        vm->loader_free(vm->loader);
    pvm__memory_fini(vm);
    pvm__dirty_fini(vm);
    pvm__cow_fini(vm);
    free(vm->vcpus);
    pthread_rwlock_destroy(&vm->regions_lock);
    pthread_rwlock_destroy(&vm->mem_users);
    pthread_mutex_destroy(&vm->lock);
    free(vm);
}

enum pvm_backend pvm_vm_backend(const pvm_vm *vm)
{
    return vm ? vm->ops->id : PVM_BACKEND_AUTO;
}

uint64_t pvm_vm_linear_address_range(const pvm_vm *vm)
{
    if (vm && vm->ops->linear_range)
        return vm->ops->linear_range(vm);
    /* §10.30: any 32 PGD slots in 256..509 are conformant; the RFC host's shape. */
    return PVM_LA_RANGE_MAKE(0x1b2, 0x1d2, 0x1ff, 0x1ff);
}

void pvm_vm_lower_half(const pvm_vm *vm, pvm_gva_t *lo, pvm_gva_t *hi)
{
    uint64_t l = 1, h = 1ull << 47; /* §10.13: address 0 is not allowed */
    if (vm && vm->ops->lower_half)
        vm->ops->lower_half(vm, &l, &h);
    if (lo)
        *lo = l;
    if (hi)
        *hi = h;
}

int pvm_vm_set_hostcall_handler(pvm_vm *vm, pvm_hostcall_fn fn, void *opaque)
{
    pvm__clear_error();
    if (!vm)
        return pvm__error(PVM_EINVAL, "pvm_vm_set_hostcall_handler: NULL vm");
    pthread_mutex_lock(&vm->lock);
    vm->hostcall = fn;
    vm->hostcall_opaque = opaque;
    pthread_mutex_unlock(&vm->lock);
    return 0;
}
