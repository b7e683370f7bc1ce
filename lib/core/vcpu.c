/*
 * lib/core/vcpu.c - vCPU objects and the checked doors into the backend ops.
 * Argument checks live here once; backends receive only valid arguments.
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h"

int pvm_vcpu_create(pvm_vcpu **out, pvm_vm *vm, const struct pvm_vcpu_options *opts)
{
    pvm__clear_error();
    if (!out || !vm)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_create: NULL argument");
    *out = NULL;
    struct pvm_vcpu_options o = PVM_VCPU_OPTIONS_INIT;
    if (opts) {
        if (opts->version != PVM_VCPU_OPTIONS_VERSION)
            return pvm__error(PVM_EVERSION, "pvm_vcpu_create: options version %u is not supported "
                              "(expected %u)", opts->version, PVM_VCPU_OPTIONS_VERSION);
        o = *opts;
    }
    if (o.id >= vm->opts.max_vcpus)
        return pvm__error(PVM_ERANGE, "pvm_vcpu_create: id %u >= max_vcpus %u", o.id, vm->opts.max_vcpus);
    pvm_vcpu *v = calloc(1, sizeof(*v));
    if (!v)
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory");
    v->vm = vm;
    v->id = o.id;
    pthread_mutex_lock(&vm->lock);
    int rc = 0;
    if (vm->vcpus[o.id])
        rc = pvm__error(PVM_EEXIST, "pvm_vcpu_create: vCPU id %u already exists", o.id);
    else
        vm->vcpus[o.id] = v; /* reserve the id; backend init runs unlocked */
    v->ready = false;
    pthread_mutex_unlock(&vm->lock);
    if (rc == 0 && (rc = vm->ops->vcpu_init(v)) < 0) {
        pthread_mutex_lock(&vm->lock);
        vm->vcpus[o.id] = NULL;
        pthread_mutex_unlock(&vm->lock);
    } else if (rc == 0) {
        pthread_mutex_lock(&vm->lock);
        v->ready = true; /* VM-wide walks may use it from now on */
        pthread_mutex_unlock(&vm->lock);
    }
    if (rc < 0) {
        free(v);
        return rc;
    }
    *out = v;
    return 0;
}

void pvm_vcpu_destroy(pvm_vcpu *v)
{
    if (!v)
        return;
    pvm_vm *vm = v->vm;
    /* Unlist it first: VM-wide walks (e.g. region_del kicking vCPUs) hold vm->lock. */
    pthread_mutex_lock(&vm->lock);
    vm->vcpus[v->id] = NULL;
    pthread_mutex_unlock(&vm->lock);
    vm->ops->vcpu_fini(v);
    free(v);
}

pvm_vcpu *pvm_vm_vcpu(pvm_vm *vm, uint32_t id)
{
    if (!vm || id >= vm->opts.max_vcpus)
        return NULL;
    pthread_mutex_lock(&vm->lock);
    pvm_vcpu *v = vm->vcpus[id] && vm->vcpus[id]->ready ? vm->vcpus[id] : NULL;
    pthread_mutex_unlock(&vm->lock);
    return v;
}

uint32_t pvm_vcpu_id(const pvm_vcpu *v)
{
    return v ? v->id : 0;
}

pvm_vm *pvm_vcpu_vm(const pvm_vcpu *v)
{
    return v ? v->vm : NULL;
}

/* State accessors may not race with a running vCPU. */
#define STATE_CALL(fn, v, arg, ...)                                                       \
    do {                                                                                  \
        pvm__clear_error();                                                               \
        if (!(v) || !(arg))                                                               \
            return pvm__error(PVM_EINVAL, #fn ": NULL argument");                          \
        if (__atomic_load_n(&(v)->running, __ATOMIC_ACQUIRE))                             \
            return pvm__error(PVM_EBUSY, #fn ": vCPU %u is running", (v)->id);            \
        return (v)->vm->ops->__VA_ARGS__;                                                 \
    } while (0)

int pvm_vcpu_get_regs(pvm_vcpu *v, struct pvm_regs *r) { STATE_CALL(pvm_vcpu_get_regs, v, r, get_regs(v, r)); }
int pvm_vcpu_set_regs(pvm_vcpu *v, const struct pvm_regs *r) { STATE_CALL(pvm_vcpu_set_regs, v, r, set_regs(v, r)); }
int pvm_vcpu_get_sregs(pvm_vcpu *v, struct pvm_sregs *s) { STATE_CALL(pvm_vcpu_get_sregs, v, s, get_sregs(v, s)); }
int pvm_vcpu_set_sregs(pvm_vcpu *v, const struct pvm_sregs *s) { STATE_CALL(pvm_vcpu_set_sregs, v, s, set_sregs(v, s)); }
int pvm_vcpu_get_msr(pvm_vcpu *v, uint32_t i, uint64_t *val) { STATE_CALL(pvm_vcpu_get_msr, v, val, get_msr(v, i, val)); }

int pvm_vcpu_pending_exit(pvm_vcpu *v, struct pvm_exit *exit)
{
    pvm__clear_error();
    if (!v || !exit)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_pending_exit: NULL argument");
    if (__atomic_load_n(&v->running, __ATOMIC_ACQUIRE))
        return pvm__error(PVM_EBUSY, "pvm_vcpu_pending_exit: vCPU %u is running", v->id);
    if (!v->vm->ops->pending_exit)
        return pvm__error(PVM_ENOTSUP, "pvm_vcpu_pending_exit: not supported by the %s backend", v->vm->ops->name);
    return v->vm->ops->pending_exit(v, exit);
}

int pvm_vcpu_set_msr(pvm_vcpu *v, uint32_t index, uint64_t value)
{
    pvm__clear_error();
    if (!v)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_msr: NULL vcpu");
    if (__atomic_load_n(&v->running, __ATOMIC_ACQUIRE))
        return pvm__error(PVM_EBUSY, "pvm_vcpu_set_msr: vCPU %u is running", v->id);
    return v->vm->ops->set_msr(v, index, value);
}

int pvm_vcpu_set_cpuid(pvm_vcpu *v, const struct pvm_cpuid_entry *e, size_t n)
{
    pvm__clear_error();
    if (!v || (!e && n))
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_cpuid: NULL argument");
    if (n > 256)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_cpuid: %zu entries (at most 256)", n);
    if (__atomic_load_n(&v->running, __ATOMIC_ACQUIRE))
        return pvm__error(PVM_EBUSY, "pvm_vcpu_set_cpuid: vCPU %u is running", v->id);
    if (!v->vm->ops->set_cpuid)
        return pvm__error(PVM_ENOTSUP, "pvm_vcpu_set_cpuid: not supported by the %s backend",
                          v->vm->ops->name);
    return v->vm->ops->set_cpuid(v, e, n);
}

int pvm_vcpu_set_guest_debug(pvm_vcpu *v, const struct pvm_guest_debug *dbg)
{
    pvm__clear_error();
    struct pvm_guest_debug d = PVM_GUEST_DEBUG_INIT;
    if (!v)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_guest_debug: NULL vcpu");
    if (dbg) {
        if (dbg->version != PVM_GUEST_DEBUG_VERSION)
            return pvm__error(PVM_EVERSION, "pvm_vcpu_set_guest_debug: version %u is not supported (expected %u)",
                              dbg->version, PVM_GUEST_DEBUG_VERSION);
        if (dbg->flags & ~PVM_GUEST_DEBUG_SINGLESTEP)
            return pvm__error(PVM_EINVAL, "pvm_vcpu_set_guest_debug: unknown flags 0x%x", dbg->flags);
        if ((dbg->catch_smod | dbg->catch_umod) & (1u << PVM_VEC_NMI))
            return pvm__error(PVM_EINVAL, "pvm_vcpu_set_guest_debug: vector 2 (NMI) is not an exception");
        d = *dbg;
    }
    if (__atomic_load_n(&v->running, __ATOMIC_ACQUIRE))
        return pvm__error(PVM_EBUSY, "pvm_vcpu_set_guest_debug: vCPU %u is running", v->id);
    if (!v->vm->ops->set_guest_debug)
        return pvm__error(PVM_ENOTSUP, "pvm_vcpu_set_guest_debug: not supported by the %s backend",
                          v->vm->ops->name);
    return v->vm->ops->set_guest_debug(v, &d);
}

int pvm_vcpu_run(pvm_vcpu *v, struct pvm_exit *exit)
{
    pvm__clear_error();
    if (!v || !exit)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_run: NULL argument");
    int expected = 0;
    if (!__atomic_compare_exchange_n(&v->running, &expected, 1, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return pvm__error(PVM_EBUSY, "pvm_vcpu_run: vCPU %u is already running on another thread", v->id);
    int rc = v->vm->ops->run(v, exit);
    __atomic_store_n(&v->running, 0, __ATOMIC_RELEASE);
    return rc;
}

int pvm_vcpu_kick(pvm_vcpu *v)
{
    /* Async-signal-safe: no locks, no formatting; the detail message is a constant copy. */
    if (!v) {
        pvm__set_error_const("pvm_vcpu_kick: NULL vCPU");
        return PVM_EINVAL;
    }
    pvm__clear_error();
    return v->vm->ops->kick(v);
}

int pvm_vcpu_inject(pvm_vcpu *v, const struct pvm_event *ev)
{
    pvm__clear_error();
    if (!v || !ev)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_inject: NULL argument");
    switch (ev->type) {
    case PVM_EVENT_EXCEPTION:
        if (ev->vector >= 32 || ev->vector == PVM_VEC_NMI)
            return pvm__error(PVM_EINVAL, "pvm_vcpu_inject: exception vector %u is not 0..31 "
                              "(NMI is PVM_EVENT_NMI)", ev->vector);
        break;
    case PVM_EVENT_INTERRUPT:
        if (ev->vector < 32)
            return pvm__error(PVM_EINVAL, "pvm_vcpu_inject: interrupt vector %u is not 32..255", ev->vector);
        if (ev->has_error_code)
            return pvm__error(PVM_EINVAL, "pvm_vcpu_inject: interrupts carry no error code");
        break;
    case PVM_EVENT_NMI:
        if (ev->has_error_code)
            return pvm__error(PVM_EINVAL, "pvm_vcpu_inject: NMIs carry no error code");
        break;
    default:
        return pvm__error(PVM_EINVAL, "pvm_vcpu_inject: unknown event type %u", ev->type);
    }
    return v->vm->ops->inject(v, ev);
}

static int guest_access(pvm_vcpu *v, uint64_t gva, void *buf, size_t len, bool write, const char *fn)
{
    pvm__clear_error();
    if (!v || (!buf && len))
        return pvm__error(PVM_EINVAL, "%s: NULL argument", fn);
    if (!v->vm->ops->translate)
        return pvm__error(PVM_ENOTSUP, "%s: not supported by the %s backend", fn, v->vm->ops->name);
    /* Two passes: translate every page first, so a fault copies nothing at all. */
    int rc = 0;
    pvm__mem_enter(v->vm);
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        uint8_t *b = buf;
        for (size_t done = 0; done < len;) {
            uint64_t a = gva + done, gpa;
            size_t chunk = PVM_PAGE_SIZE - (a & PVM_PAGE_MASK);
            if (chunk > len - done)
                chunk = len - done;
            if (v->vm->ops->translate(v, a, &gpa) < 0) {
                rc = pvm__error(PVM_EFAULT, "%s: gva 0x%llx is not mapped", fn, (unsigned long long)a);
                break;
            }
            void *h = pvm__gpa_lookup(v->vm, gpa, chunk, NULL);
            if (!h) {
                rc = pvm__error(PVM_EFAULT, "%s: gva 0x%llx -> gpa 0x%llx is not guest RAM", fn,
                                (unsigned long long)a, (unsigned long long)gpa);
                break;
            }
            if (pass == 1 && write) {
                if (!pvm__dirty_mark_gpa(v->vm, gpa, chunk)) {
                    rc = pvm__error(PVM_ENOMEM, "%s: %s", fn, pvm_last_error());
                    break;
                }
                memcpy(h, b + done, chunk);
            }
            else if (pass == 1)
                memcpy(b + done, h, chunk);
            done += chunk;
        }
    }
    pvm__mem_leave(v->vm);
    return rc;
}

int pvm_vcpu_read_guest(pvm_vcpu *v, pvm_gva_t gva, void *buf, size_t len)
{
    return guest_access(v, gva, buf, len, false, "pvm_vcpu_read_guest");
}

int pvm_vcpu_write_guest(pvm_vcpu *v, pvm_gva_t gva, const void *buf, size_t len)
{
    return guest_access(v, gva, (void *)buf, len, true, "pvm_vcpu_write_guest");
}

int pvm_vcpu_translate(pvm_vcpu *v, pvm_gva_t gva, pvm_gpa_t *gpa)
{
    pvm__clear_error();
    if (!v || !gpa)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_translate: NULL argument");
    if (!v->vm->ops->translate)
        return pvm__error(PVM_ENOTSUP, "pvm_vcpu_translate: not supported by the %s backend",
                          v->vm->ops->name);
    int rc = v->vm->ops->translate(v, gva, gpa);
    if (rc < 0)
        return pvm__error(PVM_EFAULT, "pvm_vcpu_translate: gva 0x%llx is not mapped", (unsigned long long)gva);
    return 0;
}
