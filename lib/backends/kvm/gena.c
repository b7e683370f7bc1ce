/*
 * lib/backends/kvm/gena.c - the kvm backend's Gen A kvm-pvm mode: the host
 * kernel's kvm-pvm module is the PVM hypervisor (gena.h), the library only
 * issues the ioctls whose contents gena_abi.c computes.
 *
 * One KVM VM per library VM (shared memslots: KVM's shadow MMU must see every
 * vCPU's page-table writes), one KVM vCPU per library vCPU, no in-kernel
 * irqchip (KVM_INTERRUPT is the userspace-irqchip path, §9.5).  Events the
 * application injects wait in a small queue per vCPU; before each KVM_RUN the
 * gating rule (kvm_gena_plan) turns them into KVM_SET_VCPU_EVENTS, KVM_NMI,
 * KVM_INTERRUPT or an interrupt-window request.  Kicks and injections from
 * other threads end KVM_RUN like the standard mode's (immediate_exit plus
 * the kick signal, kvm_kick_run).
 *
 * Untested on a real host: none was reachable (docs/design.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/backend.h"
#include "gena.h"
#include "hv/hv.h"
#include "machine/machine.h"
#include "kvm.h"

extern const struct pvm_backend_ops pvm_kvm_gena_backend;

#define GENA_MIN_MEMSLOTS 32 /* KVM_CAP_NR_MEMSLOTS is at least this where it is not reported */

/* ---- probe --------------------------------------------------------------------------- */

static int gena_probe(void)
{
    const struct kvm_host *h = kvm_host();
    if (!h->fd_ok) /* the standard mode's reason: the registry joins it only once */
        return pvm__error(PVM_ENODEV, "%s", h->why);
    if (!h->gen_a)
        return pvm__error(PVM_ENODEV, "kvm: not a Gen A kvm-pvm host (KVM_GET_SUPPORTED_CPUID has no leaf "
                          "0x40000002 with EBX 0x4d5650, or KVM_GET_MSR_INDEX_LIST lacks some of the PVM MSRs "
                          "0x4b564df0-0x4b564df7)");
    if (!h->immediate_exit)
        return pvm__error(PVM_ENODEV, "kvm: Gen A kvm-pvm host without KVM_CAP_IMMEDIATE_EXIT (kicks need it)");
    if (h->mmap_size < (int)sizeof(struct kvm_run))
        return pvm__error(PVM_ENODEV, "kvm: Gen A kvm-pvm host with a bad vCPU mmap size %d", h->mmap_size);
    return 0;
}

/*
 * auto never picks this mode: it was never run on a real host, and host
 * calls (the SDK console and exit) have no route to the library there
 * (kvm-pvm answers them with -KVM_ENOSYS, §7.3).
 */
static int gena_prefer(void)
{
    int rc = gena_probe();
    if (rc < 0)
        return rc;
    return pvm__error(PVM_ENODEV, "kvm: a Gen A kvm-pvm host, but that mode is untested on a real host and "
                      "host calls do not reach the library there; auto keeps native (choose kvm explicitly)");
}

/* ---- the VM ---------------------------------------------------------------------------- */

struct gena_slot {
    uint64_t gpa, size;
    bool used;
};

struct gena_vm {
    int fd;
    uint64_t la_range;            /* the host's default MSR_PVM_LINEAR_ADDRESS_RANGE (§8.2) */
    bool ro_mem;                  /* KVM_CAP_READONLY_MEM */
    uint32_t max_slots;           /* KVM_CAP_NR_MEMSLOTS */
    pthread_mutex_t lock;         /* slots */
    struct gena_slot *slots;      /* indexed by KVM slot id */
    uint32_t nr_slots;
};

static struct gena_vm *gv_of(const pvm_vm *vm)
{
    return vm->bdata;
}

/*
 * §10.30: the default range is where the host module reserved its guest
 * area, one value per host.  It is read once from a throwaway VM, because the
 * loader needs it before any vCPU exists.
 */
static int host_linear_range(uint64_t *out)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static uint64_t cached;
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (!cached) {
        const char *what = "opening /dev/kvm";
        int kfd = -1, vfd = -1, cfd = -1;
        struct {
            struct kvm_msrs h;
            struct kvm_msr_entry e[1];
        } m = { .h.nmsrs = 1, .e[0].index = MSR_PVM_LINEAR_ADDRESS_RANGE };
        if ((kfd = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0)
            goto fail;
        what = "KVM_CREATE_VM";
        if ((vfd = ioctl(kfd, KVM_CREATE_VM, 0)) < 0)
            goto fail;
        what = "KVM_CREATE_VCPU";
        if ((cfd = ioctl(vfd, KVM_CREATE_VCPU, 0)) < 0)
            goto fail;
        what = "KVM_GET_MSRS(MSR_PVM_LINEAR_ADDRESS_RANGE)";
        int got = ioctl(cfd, KVM_GET_MSRS, &m);
        if (got != 1) {
            if (got >= 0)
                errno = ENOENT; /* KVM read no MSR: it does not know this one */
            goto fail;
        }
        if ((m.e[0].data & PVM_LA_RANGE_FILLER_MASK) != PVM_LA_RANGE_FILLER_MASK) {
            rc = pvm__error(PVM_ENODEV, "kvm: the host's MSR_PVM_LINEAR_ADDRESS_RANGE 0x%llx is no range (§8.2)",
                            (unsigned long long)m.e[0].data);
        } else {
            cached = m.e[0].data;
        }
        goto out;
    fail:
        rc = pvm__error(PVM_ENODEV, "kvm: reading the host's default linear-address range: %s failed: %s", what,
                        strerror(errno));
    out:
        if (cfd >= 0)
            close(cfd);
        if (vfd >= 0)
            close(vfd);
        if (kfd >= 0)
            close(kfd);
    }
    *out = cached;
    pthread_mutex_unlock(&lock);
    return rc;
}

static void gena_vm_fini(pvm_vm *vm)
{
    struct gena_vm *gv = gv_of(vm);
    if (!gv)
        return;
    if (gv->fd >= 0)
        close(gv->fd);
    pthread_mutex_destroy(&gv->lock);
    free(gv->slots);
    free(gv);
    vm->bdata = NULL;
}

static int gena_vm_init(pvm_vm *vm)
{
    const char *what = "opening /dev/kvm";
    int rc = gena_probe();
    if (rc < 0)
        return rc;
    struct gena_vm *gv = calloc(1, sizeof(*gv));
    if (!gv)
        return pvm__error(PVM_ENOMEM, "pvm_vm_create: out of memory");
    gv->fd = -1;
    pthread_mutex_init(&gv->lock, NULL);
    vm->bdata = gv;
    if ((rc = host_linear_range(&gv->la_range)) < 0)
        goto fail;
    int kfd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kfd < 0)
        goto fail_errno;
    gv->fd = ioctl(kfd, KVM_CREATE_VM, 0); /* §9.1: no PVM VM type, plain type 0 */
    close(kfd);
    what = "KVM_CREATE_VM";
    if (gv->fd < 0)
        goto fail_errno;
    /* Exceptions go in as pending with #PF's CR2 as payload (kvm_gena_exception_events). */
    struct kvm_enable_cap cap = { .cap = KVM_CAP_EXCEPTION_PAYLOAD, .args[0] = 1 };
    what = "KVM_ENABLE_CAP(KVM_CAP_EXCEPTION_PAYLOAD)";
    if (ioctl(gv->fd, KVM_ENABLE_CAP, &cap) < 0)
        goto fail_errno;
    gv->ro_mem = ioctl(gv->fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) > 0;
    int n = ioctl(gv->fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);
    gv->max_slots = n > 0 ? (uint32_t)n : GENA_MIN_MEMSLOTS;
    return 0;

fail_errno:
    rc = pvm__error(PVM_ENODEV, "kvm: %s failed: %s", what, strerror(errno));
fail:
    gena_vm_fini(vm);
    return rc;
}

static uint64_t gena_linear_range(const pvm_vm *vm)
{
    return gv_of(vm)->la_range;
}

/* Under the regions write lock (core/memory.c); slot ids are this VM's. */
static int gena_region_add(pvm_vm *vm, const struct pvm_region *r)
{
    struct gena_vm *gv = gv_of(vm);
    int rc = 0;
    pthread_mutex_lock(&gv->lock);
    uint32_t slot = 0;
    while (slot < gv->nr_slots && gv->slots[slot].used)
        slot++;
    if (slot >= gv->max_slots) {
        rc = pvm__error(PVM_ENOMEM, "pvm_vm_map_memory: all %u KVM memslots are in use", gv->max_slots);
        goto out;
    }
    if (slot == gv->nr_slots) {
        struct gena_slot *ns = realloc(gv->slots, (gv->nr_slots + 1) * sizeof(*ns));
        if (!ns) {
            rc = pvm__error(PVM_ENOMEM, "pvm_vm_map_memory: out of memory");
            goto out;
        }
        gv->slots = ns;
        gv->slots[gv->nr_slots++] = (struct gena_slot){ 0 };
    }
    struct kvm_userspace_memory_region m;
    const char *why;
    if ((rc = kvm_gena_memslot(r, slot, gv->ro_mem, &m, &why)) < 0) {
        rc = pvm__error(rc, "pvm_vm_map_memory: kvm (Gen A): %s", why);
        goto out;
    }
    if (ioctl(gv->fd, KVM_SET_USER_MEMORY_REGION, &m) < 0) {
        rc = pvm__error(errno == ENOMEM ? PVM_ENOMEM : PVM_EINVAL, "pvm_vm_map_memory: KVM_SET_USER_MEMORY_REGION "
                        "(slot %u, gpa 0x%llx, size 0x%llx) failed: %s", slot, (unsigned long long)r->gpa,
                        (unsigned long long)r->size, strerror(errno));
        goto out;
    }
    gv->slots[slot] = (struct gena_slot){ .gpa = r->gpa, .size = r->size, .used = true };
out:
    pthread_mutex_unlock(&gv->lock);
    return rc;
}

static void gena_region_del(pvm_vm *vm, const struct pvm_region *r)
{
    struct gena_vm *gv = gv_of(vm);
    pthread_mutex_lock(&gv->lock);
    for (uint32_t i = 0; i < gv->nr_slots; i++) {
        if (!gv->slots[i].used || gv->slots[i].gpa != r->gpa || gv->slots[i].size != r->size)
            continue;
        /* Size 0 deletes the slot; KVM zaps its shadow pages before it returns. */
        struct kvm_userspace_memory_region m = { .slot = i, .guest_phys_addr = r->gpa };
        if (ioctl(gv->fd, KVM_SET_USER_MEMORY_REGION, &m) < 0)
            pvm__log(PVM_LOG_ERROR, "kvm: deleting memslot %u (gpa 0x%llx) failed: %s", i,
                     (unsigned long long)r->gpa, strerror(errno));
        else
            gv->slots[i].used = false;
        break;
    }
    pthread_mutex_unlock(&gv->lock);
}

/* ---- a vCPU --------------------------------------------------------------------------- */

struct gena_cpu {
    int fd;
    struct kvm_run *run;
    size_t run_size;
    int kick_signal;
    int tid;                  /* atomic: the thread inside KVM_RUN, or 0 */
    int kick_pending;         /* atomic: pvm_vcpu_kick() not yet reported */
    int attention;            /* atomic: the queue changed */
    uint32_t wake;            /* futex word for halt waits */

    pthread_mutex_t lock;     /* the queue */
    uint64_t irq[4];          /* pending interrupt vectors */
    bool nmi;                 /* NMIs collapse into one */
    bool exc_pending;
    struct pvm_event exc;

    /* vCPU thread only. */
    bool has_run;             /* KVM_RUN was called (mode changes by KVM_SET_SREGS end, §9.4) */
    bool ready_fresh;         /* run->ready_for_interrupt_injection/if_flag describe the vCPU now */
    bool halted;              /* HLT exit seen, no event since */
    bool dead;                /* SHUTDOWN or INTERNAL_ERROR reached */
    struct pvm_exit fatal;
    struct kvm_gena_pending pend;
    uint64_t exits;           /* statistics */
};

static struct gena_cpu *gc_of(const pvm_vcpu *v)
{
    return v->bdata;
}

static void gena_vcpu_fini(pvm_vcpu *v)
{
    struct gena_cpu *gc = gc_of(v);
    if (!gc)
        return;
    pvm__log(PVM_LOG_DEBUG, "vCPU %u: %llu KVM_RUN calls", v->id, (unsigned long long)gc->exits);
    if (gc->run)
        munmap(gc->run, gc->run_size);
    if (gc->fd >= 0)
        close(gc->fd); /* KVM keeps the vCPU until the VM goes: its id stays taken */
    pthread_mutex_destroy(&gc->lock);
    free(gc);
    v->bdata = NULL;
}

/*
 * Program a new vCPU: CPUID, then 64-bit smod sregs, the boot MSRs,
 * registers (gena.h).  0 or pvm__error().
 */
static int boot_state(struct gena_cpu *gc)
{
    const struct kvm_host *h = kvm_host();
    const char *what = "KVM_SET_CPUID2";
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + KVM_GENA_MAX_CPUID * sizeof(c->entries[0]));
    if (!c)
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory");
    int n = kvm_gena_cpuid(h->cpuid, NULL, 0, c->entries, KVM_GENA_MAX_CPUID);
    if (n < 0) {
        free(c);
        return pvm__error(PVM_ENODEV, "pvm_vcpu_create: kvm (Gen A): the host's CPUID table exceeds %d entries",
                          KVM_GENA_MAX_CPUID);
    }
    c->nent = (uint32_t)n;
    int rc = ioctl(gc->fd, KVM_SET_CPUID2, c); /* before SET_SREGS: KVM checks CR4 against it */
    free(c);
    if (rc < 0)
        goto fail_errno;

    struct kvm_sregs cur, s;
    what = "KVM_GET_SREGS";
    if (ioctl(gc->fd, KVM_GET_SREGS, &cur) < 0)
        goto fail_errno;
    kvm_gena_boot_sregs(&cur, &s);
    what = "KVM_SET_SREGS (64-bit smod)";
    if (ioctl(gc->fd, KVM_SET_SREGS, &s) < 0)
        goto fail_errno;

    struct {
        struct kvm_msrs h;
        struct kvm_msr_entry e[KVM_GENA_BOOT_MSRS];
    } m;
    memset(&m, 0, sizeof(m));
    m.h.nmsrs = (uint32_t)kvm_gena_boot_msrs(m.e);
    what = "KVM_SET_MSRS (boot MSRs)";
    int done = ioctl(gc->fd, KVM_SET_MSRS, &m);
    if (done < 0)
        goto fail_errno;
    if ((uint32_t)done > m.h.nmsrs)
        return pvm__error(PVM_ENODEV, "pvm_vcpu_create: kvm (Gen A): KVM_SET_MSRS set %d of %u MSRs", done,
                          m.h.nmsrs);
    if ((uint32_t)done < m.h.nmsrs) /* KVM stops at the first MSR it refuses */
        return pvm__error(PVM_ENODEV, "pvm_vcpu_create: kvm (Gen A): KVM_SET_MSRS refused MSR 0x%x = 0x%llx",
                          m.e[done].index, (unsigned long long)m.e[done].data);

    struct kvm_regs r;
    kvm_gena_boot_regs(&r);
    what = "KVM_SET_REGS";
    if (ioctl(gc->fd, KVM_SET_REGS, &r) < 0)
        goto fail_errno;
    return 0;

fail_errno:
    return pvm__error(PVM_ENODEV, "pvm_vcpu_create: kvm (Gen A): %s failed: %s", what, strerror(errno));
}

static int gena_vcpu_init(pvm_vcpu *v)
{
    struct gena_vm *gv = gv_of(v->vm);
    const struct kvm_host *h = kvm_host();
    struct gena_cpu *gc = calloc(1, sizeof(*gc));
    if (!gc)
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory");
    gc->fd = -1;
    gc->kick_signal = v->vm->opts.kick_signal;
    gc->run_size = (size_t)h->mmap_size;
    pthread_mutex_init(&gc->lock, NULL);
    v->bdata = gc;
    int rc;
    const char *what = "KVM_CREATE_VCPU";
    if ((gc->fd = ioctl(gv->fd, KVM_CREATE_VCPU, (unsigned long)v->id)) < 0) {
        if (errno == EEXIST) {
            rc = pvm__error(PVM_EEXIST, "pvm_vcpu_create: kvm (Gen A): vCPU id %u was created before in this VM; "
                            "KVM cannot destroy a vCPU, so an id can be used once per VM", v->id);
            goto fail;
        }
        goto fail_errno;
    }
    what = "mapping kvm_run";
    gc->run = mmap(NULL, gc->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, gc->fd, 0);
    if (gc->run == MAP_FAILED) {
        gc->run = NULL;
        goto fail_errno;
    }
    if ((rc = boot_state(gc)) < 0 || (rc = pvm_hv_install_kick_handler(gc->kick_signal)) < 0)
        goto fail;
    return 0;

fail_errno:
    rc = pvm__error(PVM_ENODEV, "pvm_vcpu_create: kvm (Gen A): %s failed: %s", what, strerror(errno));
fail:
    gena_vcpu_fini(v); /* the core frees only the vCPU object */
    return rc;
}

/* ---- state accessors ----------------------------------------------------------------- */

static int ioctl_failed(const char *fn, const char *what)
{
    return pvm__error(PVM_EIO, "%s: kvm (Gen A): %s failed: %s", fn, what, strerror(errno));
}

static int get_msr(struct gena_cpu *gc, uint32_t index, uint64_t *value)
{
    struct {
        struct kvm_msrs h;
        struct kvm_msr_entry e[1];
    } m = { .h.nmsrs = 1, .e[0].index = index };
    if (ioctl(gc->fd, KVM_GET_MSRS, &m) != 1)
        return -1;
    *value = m.e[0].data;
    return 0;
}

static int gena_get_regs(pvm_vcpu *v, struct pvm_regs *r)
{
    struct kvm_regs k;
    if (ioctl(gc_of(v)->fd, KVM_GET_REGS, &k) < 0)
        return ioctl_failed("pvm_vcpu_get_regs", "KVM_GET_REGS");
    kvm_gena_regs_from_kvm(&k, r);
    return 0;
}

static int gena_set_regs(pvm_vcpu *v, const struct pvm_regs *r)
{
    struct gena_cpu *gc = gc_of(v);
    struct kvm_regs k;
    kvm_gena_regs_to_kvm(r, &k);
    gc->ready_fresh = false; /* IF may have changed: the last exit's readiness is stale */
    if (ioctl(gc->fd, KVM_SET_REGS, &k) < 0)
        return ioctl_failed("pvm_vcpu_set_regs", "KVM_SET_REGS");
    return 0;
}

static int gena_get_sregs(pvm_vcpu *v, struct pvm_sregs *s)
{
    struct kvm_sregs k;
    if (ioctl(gc_of(v)->fd, KVM_GET_SREGS, &k) < 0)
        return ioctl_failed("pvm_vcpu_get_sregs", "KVM_GET_SREGS");
    kvm_gena_sregs_from_kvm(&k, s);
    return 0;
}

static int gena_set_sregs(pvm_vcpu *v, const struct pvm_sregs *s)
{
    struct gena_cpu *gc = gc_of(v);
    struct kvm_sregs cur, k;
    uint64_t star;
    const char *why;
    if (ioctl(gc->fd, KVM_GET_SREGS, &cur) < 0)
        return ioctl_failed("pvm_vcpu_set_sregs", "KVM_GET_SREGS");
    if (get_msr(gc, PVM_MSR_STAR, &star) < 0)
        return ioctl_failed("pvm_vcpu_set_sregs", "KVM_GET_MSRS(STAR)");
    int rc = kvm_gena_sregs_to_kvm(s, &cur, star, gc->has_run, &k, &why);
    if (rc < 0)
        return pvm__error(rc, "pvm_vcpu_set_sregs: kvm (Gen A): %s", why);
    gc->ready_fresh = false;
    if (ioctl(gc->fd, KVM_SET_SREGS, &k) < 0)
        return ioctl_failed("pvm_vcpu_set_sregs", "KVM_SET_SREGS");
    /* kvm-pvm rewrites STAR from an smod CS once the vCPU has run; set_sregs never changes STAR. */
    if (kvm_set_msr(gc->fd, PVM_MSR_STAR, star) < 0)
        return ioctl_failed("pvm_vcpu_set_sregs", "restoring MSR_STAR with KVM_SET_MSRS");
    return 0;
}

static int gena_get_msr(pvm_vcpu *v, uint32_t index, uint64_t *value)
{
    if (!kvm_gena_msr_known(index))
        return pvm__error(PVM_ENOENT, "pvm_vcpu_get_msr: MSR 0x%x is not supported", index);
    if (get_msr(gc_of(v), index, value) < 0)
        return pvm__error(PVM_ENOENT, "pvm_vcpu_get_msr: KVM_GET_MSRS of MSR 0x%x failed", index);
    return 0;
}

static int gena_set_msr(pvm_vcpu *v, uint32_t index, uint64_t value)
{
    struct gena_cpu *gc = gc_of(v);
    bool la57 = false;
    if (index == MSR_PVM_EVENT_ENTRY) {
        struct kvm_sregs k;
        if (ioctl(gc->fd, KVM_GET_SREGS, &k) < 0)
            return ioctl_failed("pvm_vcpu_set_msr", "KVM_GET_SREGS");
        la57 = (k.cr4 >> 12) & 1;
    }
    int rc = kvm_gena_msr_check(index, value, la57);
    if (rc == PVM_ENOENT)
        return pvm__error(rc, "pvm_vcpu_set_msr: MSR 0x%x is not supported", index);
    if (rc < 0)
        return pvm__error(rc, "pvm_vcpu_set_msr: MSR 0x%x cannot hold 0x%llx", index, (unsigned long long)value);
    gc->ready_fresh = false; /* e.g. MSR_PVM_VCPU_STRUCT decides the smod IF (§10.22) */
    if (kvm_set_msr(gc->fd, index, value) < 0)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_msr: KVM_SET_MSRS refused MSR 0x%x = 0x%llx", index,
                          (unsigned long long)value);
    return 0;
}

static int gena_set_cpuid(pvm_vcpu *v, const struct pvm_cpuid_entry *e, size_t n)
{
    struct gena_cpu *gc = gc_of(v);
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + KVM_GENA_MAX_CPUID * sizeof(c->entries[0]));
    if (!c)
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_set_cpuid: out of memory");
    int rc = 0;
    int k = kvm_gena_cpuid(kvm_host()->cpuid, e, n, c->entries, KVM_GENA_MAX_CPUID);
    if (k < 0) {
        rc = pvm__error(PVM_EINVAL, "pvm_vcpu_set_cpuid: with the host's leaves the table exceeds %d entries",
                        KVM_GENA_MAX_CPUID);
    } else {
        c->nent = (uint32_t)k;
        if (ioctl(gc->fd, KVM_SET_CPUID2, c) < 0)
            rc = gc->has_run ? pvm__error(PVM_ESTATE, "pvm_vcpu_set_cpuid: KVM takes a changed CPUID table only "
                                          "before the first run (KVM_SET_CPUID2: %s)", strerror(errno))
                             : pvm__error(PVM_EINVAL, "pvm_vcpu_set_cpuid: KVM_SET_CPUID2 failed: %s",
                                          strerror(errno));
    }
    free(c);
    return rc;
}

static int gena_translate(pvm_vcpu *v, uint64_t gva, uint64_t *gpa)
{
    struct kvm_translation t = { .linear_address = gva };
    if (ioctl(gc_of(v)->fd, KVM_TRANSLATE, &t) < 0)
        return PVM_EFAULT;
    return kvm_gena_translation(&t, gpa) < 0 ? PVM_EFAULT : 0;
}

/* ---- asynchronous side: inject and kick ------------------------------------------------- */

static void wake(struct gena_cpu *gc)
{
    __atomic_store_n(&gc->attention, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&gc->wake, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &gc->wake, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    kvm_kick_run(gc->run, &gc->tid, gc->kick_signal);
}

static int gena_kick(pvm_vcpu *v)
{
    struct gena_cpu *gc = gc_of(v);
    __atomic_store_n(&gc->kick_pending, 1, __ATOMIC_SEQ_CST);
    wake(gc);
    return 0;
}

static int gena_inject(pvm_vcpu *v, const struct pvm_event *ev)
{
    struct gena_cpu *gc = gc_of(v);
    int rc = 0;
    pthread_mutex_lock(&gc->lock);
    switch (ev->type) {
    case PVM_EVENT_EXCEPTION:
        if (gc->exc_pending)
            rc = pvm__error(PVM_EBUSY, "pvm_vcpu_inject: an exception is already queued for vCPU %u", v->id);
        else {
            gc->exc = *ev;
            gc->exc_pending = true;
        }
        break;
    case PVM_EVENT_INTERRUPT:
        gc->irq[ev->vector / 64] |= 1ull << (ev->vector % 64); /* the core checked 32..255 */
        break;
    default:
        gc->nmi = true;
        break;
    }
    pthread_mutex_unlock(&gc->lock);
    if (rc == 0)
        wake(gc); /* the run loop programs it before its next KVM_RUN */
    return rc;
}

/* ---- running ---------------------------------------------------------------------------- */

static int fatal(pvm_vcpu *v, struct pvm_exit *exit, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fatal(pvm_vcpu *v, struct pvm_exit *exit, const char *fmt, ...)
{
    struct gena_cpu *gc = gc_of(v);
    va_list ap;
    va_start(ap, fmt);
    pvm_m_internal_exit(&gc->fatal, PVM_EINTERNAL, fmt, ap);
    va_end(ap);
    gc->dead = true;
    *exit = gc->fatal;
    pvm__log(PVM_LOG_ERROR, "vCPU %u: %s", v->id, gc->fatal.u.internal.msg);
    return 0;
}

/* Wait while halted until an injection or a kick. */
static void halt_wait(struct gena_cpu *gc)
{
    uint32_t seen = __atomic_load_n(&gc->wake, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&gc->attention, __ATOMIC_SEQ_CST) || __atomic_load_n(&gc->kick_pending, __ATOMIC_SEQ_CST))
        return;
    syscall(SYS_futex, &gc->wake, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}

/* Carry out @p (kvm_gena_plan) under gc->lock.  0, or -1 with *what naming the failed ioctl. */
static int program(struct gena_cpu *gc, const struct kvm_gena_plan *p, const char **what)
{
    if (p->set_exception) {
        struct kvm_vcpu_events cur, ev;
        *what = "KVM_GET_VCPU_EVENTS";
        if (ioctl(gc->fd, KVM_GET_VCPU_EVENTS, &cur) < 0)
            return -1;
        /* If KVM still holds an exception of its own, ours waits a round. */
        if (kvm_gena_exception_events(&cur, &gc->exc, &ev) == 0) {
            *what = "KVM_SET_VCPU_EVENTS (exception)";
            if (ioctl(gc->fd, KVM_SET_VCPU_EVENTS, &ev) < 0)
                return -1;
            gc->exc_pending = false;
        }
    }
    if (p->nmi) {
        *what = "KVM_NMI";
        if (ioctl(gc->fd, KVM_NMI) < 0)
            return -1;
        gc->nmi = false;
    }
    if (p->irq >= 0) {
        struct kvm_interrupt ki = { .irq = (uint32_t)p->irq };
        *what = "KVM_INTERRUPT";
        if (ioctl(gc->fd, KVM_INTERRUPT, &ki) < 0)
            return -1;
        gc->irq[p->irq / 64] &= ~(1ull << (p->irq % 64));
    }
    gc->run->request_interrupt_window = p->request_window;
    return 0;
}

/* After a KVM_RUN that may not have entered the guest: queue again what KVM did not deliver. */
static void take_back(pvm_vcpu *v)
{
    struct gena_cpu *gc = gc_of(v);
    struct kvm_vcpu_events ev;
    struct pvm_event exc;
    int irq = -1;
    if (ioctl(gc->fd, KVM_GET_VCPU_EVENTS, &ev) < 0) {
        pvm__log(PVM_LOG_WARN, "vCPU %u: KVM_GET_VCPU_EVENTS failed: %s", v->id, strerror(errno));
        return;
    }
    pthread_mutex_lock(&gc->lock);
    unsigned took = kvm_gena_take_back(&ev, !gc->exc_pending, &exc, &irq);
    if (took && ioctl(gc->fd, KVM_SET_VCPU_EVENTS, &ev) < 0) {
        pvm__log(PVM_LOG_WARN, "vCPU %u: KVM_SET_VCPU_EVENTS failed: %s", v->id, strerror(errno));
        took = 0; /* KVM keeps them: do not queue them twice */
    }
    if (took & KVM_GENA_TOOK_EXC) {
        gc->exc = exc;
        gc->exc_pending = true;
    }
    if (took & KVM_GENA_TOOK_IRQ)
        gc->irq[irq / 64] |= 1ull << (irq % 64);
    pthread_mutex_unlock(&gc->lock);
}

static int gena_run(pvm_vcpu *v, struct pvm_exit *exit)
{
    struct gena_cpu *gc = gc_of(v);
    struct kvm_run *run = gc->run;
    if (gc->dead) {
        *exit = gc->fatal;
        return 0;
    }
    /* The application's answer to the last IN / MMIO read. */
    kvm_gena_complete(run, gc->run_size, &gc->pend, exit);
    gc->pend.kind = KVM_GENA_PEND_NONE;

    for (;;) {
        /*
         * Before looking at kicks and the queue: a kick or injection that
         * comes later sets immediate_exit again and ends the KVM_RUN below;
         * one that came earlier is seen here, and its immediate_exit would
         * only throw away what this turn programs.
         */
        __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
        if (__atomic_exchange_n(&gc->kick_pending, 0, __ATOMIC_SEQ_CST)) {
            memset(exit, 0, sizeof(*exit));
            exit->reason = PVM_EXIT_KICKED;
            return 0;
        }
        __atomic_store_n(&gc->attention, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_lock(&gc->lock);
        enum kvm_gena_halt h = kvm_gena_halt(gc->halted, run->if_flag, kvm_gena_highest_irq(gc->irq) >= 0, gc->nmi,
                                             gc->exc_pending);
        if (h != KVM_GENA_RUN) {
            pthread_mutex_unlock(&gc->lock);
            if (h == KVM_GENA_EXIT_HALT) {
                gc->halted = false; /* the next run resumes after the HLT, as on the other backends */
                memset(exit, 0, sizeof(*exit));
                exit->reason = PVM_EXIT_HALT;
                return 0;
            }
            halt_wait(gc);
            continue;
        }
        gc->halted = false;
        struct kvm_gena_plan plan;
        kvm_gena_plan(gc->irq, gc->nmi, gc->exc_pending, gc->ready_fresh && run->ready_for_interrupt_injection,
                      run->if_flag, &plan);
        const char *what;
        int rc = program(gc, &plan, &what);
        pthread_mutex_unlock(&gc->lock);
        if (rc < 0)
            return fatal(v, exit, "kvm (Gen A): %s failed: %s", what, strerror(errno));

        __atomic_store_n(&gc->tid, (int)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
        rc = ioctl(gc->fd, KVM_RUN, 0);
        int err = errno;
        __atomic_store_n(&gc->tid, 0, __ATOMIC_SEQ_CST);
        gc->has_run = true;
        gc->ready_fresh = true;
        gc->exits++;
        if (rc < 0) {
            if (err != EINTR && err != EAGAIN)
                return fatal(v, exit, "kvm (Gen A): KVM_RUN failed: %s", strerror(err));
            take_back(v);
            continue; /* a kick is reported at the top; an injection gets programmed */
        }
        switch (kvm_gena_exit(run, gc->run_size, exit, &gc->pend)) {
        case KVM_GENA_TO_APP:
            if (exit->reason == PVM_EXIT_SHUTDOWN) {
                struct kvm_regs k;
                if (ioctl(gc->fd, KVM_GET_REGS, &k) == 0)
                    exit->u.shutdown.rip = k.rip;
                gc->dead = true;
                gc->fatal = *exit;
            } else if (exit->reason == PVM_EXIT_INTERNAL_ERROR) {
                gc->dead = true;
                gc->fatal = *exit;
                pvm__log(PVM_LOG_ERROR, "vCPU %u: %s", v->id, exit->u.internal.msg);
            }
            return 0;
        case KVM_GENA_HALTED:
            gc->halted = true;
            continue;
        case KVM_GENA_INTERRUPTED:
            take_back(v);
            continue;
        case KVM_GENA_AGAIN:
        default:
            continue;
        }
    }
}

const struct pvm_backend_ops pvm_kvm_gena_backend = {
    .name = "kvm",
    .id = PVM_BACKEND_KVM,
    .caps = PVM_CAP_ANY_HOST_MEMORY, /* a memslot takes any address of this process */
    .probe = gena_probe,
    .prefer = gena_prefer,
    .vm_init = gena_vm_init,
    .vm_fini = gena_vm_fini,
    .vcpu_init = gena_vcpu_init,
    .vcpu_fini = gena_vcpu_fini,
    .run = gena_run,
    .get_regs = gena_get_regs,
    .set_regs = gena_set_regs,
    .get_sregs = gena_get_sregs,
    .set_sregs = gena_set_sregs,
    .get_msr = gena_get_msr,
    .set_msr = gena_set_msr,
    .inject = gena_inject,
    .kick = gena_kick,
    .region_add = gena_region_add,
    .region_del = gena_region_del,
    .set_cpuid = gena_set_cpuid,
    .translate = gena_translate,
    .linear_range = gena_linear_range,
};
