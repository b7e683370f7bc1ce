/*
 * lib/backends/native/native.c - the "native" backend: the hypervisor core
 * (lib/hv/) over the stub provider.
 *
 * Guest code runs natively at host ring 3 in stub processes (stub.h), one per
 * address-space slot (one shadow root, mmu.h).  This file is the provider:
 * it starts stubs, carries mappings and the FPU state between them, runs a
 * register file in one, turns the host's ways of reporting a trap into the
 * provider contract's terms, and drives the smod fast path (stub/fast.c):
 * events the stub answers itself, without a report.
 */
#include <cpuid.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hv/hv.h"
#include "native.h"
#include "stub.h"
#include "stub/stub_abi.h"

extern const struct pvm_backend_ops pvm_native_backend;

struct native_cpu {
    struct nstub *stubs[PVM_SHADOW_MAX_ROOTS];
    int fpu_slot;                /* slot whose stub holds the live FPU state, -1 none */
    void *fpu_buf;
    size_t fpu_size;

    /* The smod fast path (stub/fast.c). */
    bool fast_on;                /* PVM_NATIVE_FASTPATH != "0" at creation */
    bool fast;                   /* on for the current run */
    bool trust_exits;            /* PVM_NATIVE_TRUST_EXITS=1 at creation: no stop check (cooperative guests) */
    bool trust_maps;             /* PVM_NATIVE_TRUST_MAPS=1 at creation: no mmap approval (cooperative guests) */
    int irq_slot;                /* under hv->inbox_lock: stub taking posted interrupts, or -1 */
    uint64_t fast_events;        /* handled in the stubs (statistics) */
    uint64_t fast_irqs;          /* of which interrupts delivered in the stubs */
    uint32_t cpuid_pub[PVM_SHADOW_MAX_ROOTS]; /* hv->cpuid_gen each stub's table has */
    bool fpu_pending;            /* fpu_buf holds an image (a restore) for the next activated stub */

    /* The user/kernel hand-off (stub/link.c, link_arm). */
    volatile struct nstub_link *link;  /* this vCPU's link area (mapped), or NULL: none */
    uint64_t link_off;           /* its offset in the VM's link memfd */
    uint32_t link_gen;           /* the last arm's generation */
    int linked;                  /* atomic: the kernel slot armed for this run, or -1 */
    int taken;                   /* the kernel slot taken back without adoption this run (native_finish), or -1 */
    uint64_t link_trips;         /* user SYSCALLs answered by the kernel stub (statistics) */
    uint64_t link_adopts;        /* ... of which the library took over (statistics) */
};

/* The VM's side (vm->bdata): its first stub until a vCPU takes it, and the link memfd. */
struct native_vm {
    struct nstub *early;
    int link_fd;                 /* one NSTUB_LINK_SIZE area per vCPU id, or -1 */
};

/* The XSAVE image size this host's stubs use (from the first stub; 0 before one exists). */
static size_t host_fpu_size;

static struct native_cpu *nc_of(const struct pvm_hv_vcpu *hv)
{
    return hv->pdata;
}

/* ---- probe ------------------------------------------------------------------ */

/* What this host offers does not change while we run: probed once (every auto create asks). */
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static int probe_rc;
static char probe_why[160];

static void native_probe_once(void)
{
    /* Stubs trap guest syscalls with SECCOMP_RET_TRAP: the kernel must offer it. */
    char buf[256] = "";
    FILE *f = fopen("/proc/sys/kernel/seccomp/actions_avail", "re");
    if (f) {
        if (!fgets(buf, sizeof(buf), f))
            buf[0] = '\0';
        fclose(f);
    }
    if (!f || !strstr(buf, "trap")) {
        probe_rc = PVM_ENODEV;
        snprintf(probe_why, sizeof(probe_why), "native: the kernel offers no seccomp filters with the trap "
                 "action (/proc/sys/kernel/seccomp/actions_avail)");
        return;
    }
    /*
     * The stub reads the guest's FS/GS bases with RDFSBASE/RDGSBASE at every
     * trap.  Some hosts enable them for user mode without advertising them
     * (HWCAP2), so the CPU's own CPUID bit counts too.
     */
    unsigned a, b, c, d;
    if (!(getauxval(AT_HWCAP2) & (1ul << 1)) && !(__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & 1))) {
        probe_rc = PVM_ENODEV;
        snprintf(probe_why, sizeof(probe_why), "native: this CPU has no FSGSBASE instructions (RDFSBASE), which "
                 "the stub processes need");
    }
}

static int native_probe(void)
{
    pthread_once(&probe_once, native_probe_once);
    return probe_rc < 0 ? pvm__error(probe_rc, "%s", probe_why) : 0;
}

/* ---- vCPU lifetime ----------------------------------------------------- */

/* A switch in the environment, read when a VM or vCPU is created: on only if exactly "1". */
static bool env_is_1(const char *name)
{
    const char *v = getenv(name);
    return v && !strcmp(v, "1");
}

static int native_vcpu_init(struct pvm_hv_vcpu *hv)
{
    struct native_cpu *nc = calloc(1, sizeof(*nc));
    if (!nc)
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory");
    hv->pdata = nc;
    nc->fpu_slot = -1;
    nc->irq_slot = -1;
    const char *fp = getenv("PVM_NATIVE_FASTPATH");
    /* Events the stub answers itself never reach the library: a trace must see them all. */
    nc->fast_on = !(fp && !strcmp(fp, "0")) && !pvm__log_on(PVM_LOG_TRACE);
    hv->prefetch_on = nc->fast_on;
    nc->trust_exits = env_is_1("PVM_NATIVE_TRUST_EXITS");
    nc->trust_maps = env_is_1("PVM_NATIVE_TRUST_MAPS");
    nc->linked = nc->taken = -1;
    const struct native_vm *nv = hv->v->vm->bdata;
    const char *lk = getenv("PVM_NATIVE_LINK");
    if (nc->fast_on && nv && nv->link_fd >= 0 && !(lk && !strcmp(lk, "0"))) {
        nc->link_off = (uint64_t)hv->v->id * NSTUB_LINK_SIZE;
        void *m = mmap(NULL, NSTUB_LINK_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, nv->link_fd, (off_t)nc->link_off);
        nc->link = m == MAP_FAILED ? NULL : m;
    }
    return 0;
}

static void native_vcpu_fini(struct pvm_hv_vcpu *hv)
{
    struct native_cpu *nc = nc_of(hv);
    if (!nc)
        return;
    uint64_t approved = 0;
    for (unsigned i = 0; i < PVM_SHADOW_MAX_ROOTS; i++)
        approved += nstub_approved(nc->stubs[i]);
    pvm__log(PVM_LOG_DEBUG,
             "vCPU %u: %llu events handled by the stub fast path (%llu interrupts), %llu #PF and %llu fetch prefetches, "
             "%llu mappings approved",
             hv->v->id, (unsigned long long)nc->fast_events, (unsigned long long)nc->fast_irqs,
             (unsigned long long)hv->prefetches, (unsigned long long)hv->fetch_prefetches,
             (unsigned long long)approved);
    if (nc->link_trips)
        pvm__log(PVM_LOG_DEBUG, "vCPU %u: %llu user SYSCALLs handed from stub to stub (%llu taken over by the library)",
                 hv->v->id, (unsigned long long)nc->link_trips, (unsigned long long)nc->link_adopts);
    for (unsigned i = 0; i < PVM_SHADOW_MAX_ROOTS; i++)
        nstub_destroy(nc->stubs[i]);
    if (nc->link)
        munmap((void *)nc->link, NSTUB_LINK_SIZE);
    free(nc->fpu_buf);
    free(nc);
    hv->pdata = NULL;
}

/* ---- address-space slots: one stub each ----------------------------------- */

/*
 * A VM's first stub is started when the VM is created (nstub_prestart: a
 * pooled stub gets the RAM memfd at once), so that it boots while the
 * application fills memory and sets up its vCPUs; the first stub any vCPU
 * needs is that one.  vm->bdata holds it until then.
 */
static int native_vm_init(pvm_vm *vm)
{
    struct native_vm *nv = calloc(1, sizeof(*nv));
    if (!nv)
        return pvm__error(PVM_ENOMEM, "pvm_vm_create: out of memory");
    /* Sparse: a vCPU's area takes memory once its stubs hand off (a page, and the FPU image's). */
    uint32_t n = vm->opts.max_vcpus ? vm->opts.max_vcpus : PVM_MAX_VCPUS;
    nv->link_fd = memfd_create("pvm-link", MFD_CLOEXEC);
    if (nv->link_fd >= 0 && ftruncate(nv->link_fd, (off_t)(n * NSTUB_LINK_SIZE)) < 0) {
        close(nv->link_fd);
        nv->link_fd = -1;
    }
    struct nstub_config cfg = { .memfd = vm->memfd, .kick_signal = vm->opts.kick_signal,
                                .trust_maps = env_is_1("PVM_NATIVE_TRUST_MAPS"),
                                .snap_memfd = vm->create_snap_fd > 0 ? vm->create_snap_fd : 0,
                                .link_memfd = nv->link_fd > 0 ? nv->link_fd : 0 };
    nv->early = nstub_prestart(&cfg);
    vm->bdata = nv;
    return 0;
}

static void native_vm_fini(pvm_vm *vm)
{
    struct native_vm *nv = vm->bdata;
    if (!nv)
        return;
    nstub_destroy(nv->early);   /* never needed */
    if (nv->link_fd >= 0)
        close(nv->link_fd);
    free(nv);
    vm->bdata = NULL;
}

static int ensure_stub(struct pvm_hv_vcpu *hv, unsigned slot, char *err, size_t errlen)
{
    struct native_cpu *nc = nc_of(hv);
    if (nc->stubs[slot])
        return 0;
    int snap = pvm__cow_fd(hv->v->vm);
    struct native_vm *nv = hv->v->vm->bdata;
    /* Any vCPU's first stub may be the early one; a VM from a snapshot needs one that maps it too. */
    struct nstub *early = __atomic_exchange_n(&nv->early, NULL, __ATOMIC_SEQ_CST);
    if (early && (snap > 0) == nstub_maps_snapshot(early) && !nc->trust_maps && nstub_adopt(early, err, errlen) == 0) {
        nc->stubs[slot] = early;
    } else {
        if (early)
            pvm__log(PVM_LOG_DEBUG, "vCPU %u: early stub not used (%s)", hv->v->id,
                     (snap > 0) != nstub_maps_snapshot(early) || nc->trust_maps ? "the VM needs another kind" : err);
        nstub_destroy(early);
        struct nstub_config cfg = { .memfd = hv->v->vm->memfd, .kick_signal = hv->v->vm->opts.kick_signal,
                                    .trust_maps = nc->trust_maps, .snap_memfd = snap > 0 ? snap : 0,
                                    .link_memfd = nv->link_fd > 0 ? nv->link_fd : 0 };
        int rc = nstub_create(&nc->stubs[slot], &cfg, err, errlen);
        if (rc < 0)
            return rc;
    }
    __atomic_store_n(&host_fpu_size, nstub_fpu_size(nc->stubs[slot]), __ATOMIC_RELAXED);
    return 0;
}

/* Switch the running address space to @slot, carrying the FPU state along. */
static int native_activate(struct pvm_hv_vcpu *hv, unsigned slot, char *err, size_t errlen)
{
    struct native_cpu *nc = nc_of(hv);
    int rc = ensure_stub(hv, slot, err, errlen);
    if (rc < 0)
        return rc;
    if (nc->fpu_slot != (int)slot) {
        struct nstub *from = nc->fpu_slot >= 0 ? nc->stubs[nc->fpu_slot] : NULL;
        if (from && !nc->fpu_buf) {
            nc->fpu_size = nstub_fpu_size(from);
            if (!(nc->fpu_buf = malloc(nc->fpu_size ? nc->fpu_size : 1))) {
                snprintf(err, errlen, "out of memory for the FPU state");
                return PVM_ENOMEM;
            }
        }
        if (from && nstub_get_fpu(from, nc->fpu_buf, nc->fpu_size) == 0)
            nstub_set_fpu(nc->stubs[slot], nc->fpu_buf, nc->fpu_size);
        nc->fpu_slot = (int)slot;
    }
    if (nc->fpu_pending) {
        /* A restored image: the kernel checks the rest at sigreturn. */
        if (nc->fpu_size != nstub_fpu_size(nc->stubs[slot])) {
            snprintf(err, errlen, "the snapshot's FPU image has %zu bytes, this host's %zu", nc->fpu_size,
                     nstub_fpu_size(nc->stubs[slot]));
            return PVM_ENOTSUP;
        }
        if (nstub_set_fpu(nc->stubs[slot], nc->fpu_buf, nc->fpu_size) < 0) {
            snprintf(err, errlen, "loading the snapshot's FPU image failed");
            return PVM_EINTERNAL;
        }
        nc->fpu_pending = false;
    }
    return 0;
}

/* ---- FPU state for snapshots ------------------------------------------------ */

static int native_get_fpu(struct pvm_hv_vcpu *hv, void *buf, size_t *len)
{
    struct native_cpu *nc = nc_of(hv);
    if (nc->fpu_pending) {
        if (*len < nc->fpu_size)
            return PVM_ERANGE;
        memcpy(buf, nc->fpu_buf, nc->fpu_size);
        *len = nc->fpu_size;
        return 0;
    }
    if (nc->fpu_slot < 0) {
        *len = 0; /* never ran: the reset state */
        return 0;
    }
    struct nstub *st = nc->stubs[nc->fpu_slot];
    size_t n = nstub_fpu_size(st);
    if (*len < n)
        return PVM_ERANGE;
    int rc = nstub_get_fpu(st, buf, n);
    *len = n;
    return rc;
}

static int native_set_fpu(struct pvm_hv_vcpu *hv, const void *buf, size_t len);

/*
 * The application removed guest memory: no stub is woken with the unmaps,
 * each is replaced (a forged sleeper would skip them: docs/design.md
 * "Known limits"), the guest's FPU image kept as a restore keeps it.
 */
static int native_discard(struct pvm_hv_vcpu *hv)
{
    struct native_cpu *nc = nc_of(hv);
    if (nc->trust_exits)
        return 0;   /* cooperative guests: the unmaps as before */
    if (!nc->fpu_pending && nc->fpu_slot >= 0) {
        size_t len = nstub_fpu_size(nc->stubs[nc->fpu_slot]);
        void *img = malloc(len ? len : 1);
        if (!img)
            return PVM_ENOMEM;
        int rc = native_get_fpu(hv, img, &len);
        if (rc == 0)
            rc = native_set_fpu(hv, img, len);
        free(img);
        if (rc < 0)
            return rc;
    }
    for (unsigned i = 0; i < PVM_SHADOW_MAX_ROOTS; i++) {
        nstub_destroy(nc->stubs[i]);
        nc->stubs[i] = NULL;
        nc->cpuid_pub[i] = 0;
    }
    nc->fpu_slot = -1;
    return 1;
}

static int native_check_fpu(struct pvm_hv_vcpu *hv, size_t len)
{
    (void)hv;
    size_t host = __atomic_load_n(&host_fpu_size, __ATOMIC_RELAXED);
    if (host && len != host)
        return pvm__error(PVM_ENOTSUP, "its FPU image has %zu bytes, this host's stubs use %zu (a snapshot "
                          "from another CPU or kernel)", len, host);
    if (len > NSTUB_ALTSTACK_SIZE)
        return pvm__error(PVM_ENOTSUP, "its FPU image of %zu bytes is larger than any stub's", len);
    return 0;
}

static int native_set_fpu(struct pvm_hv_vcpu *hv, const void *buf, size_t len)
{
    struct native_cpu *nc = nc_of(hv);
    if (!nc->fpu_buf || nc->fpu_size < len) {
        void *nb = realloc(nc->fpu_buf, len);
        if (!nb)
            return PVM_ENOMEM;
        nc->fpu_buf = nb;
    }
    memcpy(nc->fpu_buf, buf, len);
    nc->fpu_size = len;
    nc->fpu_pending = true;
    nc->fpu_slot = -1; /* no stub holds the live image now */
    return 0;
}

static int native_map(struct pvm_hv_vcpu *hv, unsigned slot, uint64_t gva, uint64_t len, uint64_t gpa,
                      const struct pvm_region *r, unsigned prot)
{
    char err[128];
    if (ensure_stub(hv, slot, err, sizeof(err)) < 0)
        return -1;
    int p = ((prot & PVM_PROT_READ) ? PROT_READ : 0) | ((prot & PVM_PROT_WRITE) ? PROT_WRITE : 0) |
            ((prot & PVM_PROT_EXEC) ? PROT_EXEC : 0);
    unsigned fd = (prot & PVM_HV_PROT_SNAPSHOT) ? NSTUB_FD_SNAP : NSTUB_FD_RAM;
    return nstub_map_fd(nc_of(hv)->stubs[slot], fd, gva, len, r->memfd_off + (gpa - r->gpa), p);
}

static int native_unmap(struct pvm_hv_vcpu *hv, unsigned slot, uint64_t gva, uint64_t len)
{
    struct nstub *st = nc_of(hv)->stubs[slot];
    return st ? nstub_unmap(st, gva, len) : 0;
}

static void native_reset(struct pvm_hv_vcpu *hv, unsigned slot)
{
    struct nstub *st = nc_of(hv)->stubs[slot];
    if (st)
        nstub_unmap_all(st);
}

/* ---- running --------------------------------------------------------------- */

static void native_kick(struct pvm_hv_vcpu *hv, unsigned slot)
{
    struct native_cpu *nc = nc_of(hv);
    if (nc->stubs[slot])
        nstub_kick(nc->stubs[slot]);
    /* The guest may be in its kernel's stub (the hand-off): that one too. */
    int k = __atomic_load_n(&nc->linked, __ATOMIC_SEQ_CST);
    if (k >= 0 && (unsigned)k != slot && nc->stubs[k])
        nstub_kick(nc->stubs[k]);
}

/* A halted vCPU's event: its stub, asleep since the halt, wakes while the vCPU thread does (one wake-up, not two in a row). */
static void native_halt_wake(struct pvm_hv_vcpu *hv, unsigned slot)
{
    nstub_prewake(nc_of(hv)->stubs[slot]);
}

/*
 * Interrupts and the stub (stub/fast.c irq_check): while the stub of @slot
 * runs with the fast path on, the model's pending interrupts and every new
 * injection live in its control page, and each one is delivered exactly once:
 * by the stub (it clears the bit) or, after nstub_run, by the model (the
 * bits taken back).  inbox_lock orders injectors against the hand-over.
 */
static void irq_hand_over(struct pvm_hv_vcpu *hv, unsigned slot)
{
    struct native_cpu *nc = nc_of(hv);
    struct pvm_cpu *c = &hv->cpu;
    pthread_mutex_lock(&hv->inbox_lock);
    nc->irq_slot = (int)slot;
    for (unsigned v = 32; v < 256; v++)
        if (c->irq_pending[v / 64] & (1ull << (v % 64)))
            nstub_post_irq(nc->stubs[slot], v);
    memset(c->irq_pending, 0, sizeof(c->irq_pending));
    pthread_mutex_unlock(&hv->inbox_lock);
}

static void irq_take_back(struct pvm_hv_vcpu *hv, unsigned slot)
{
    struct native_cpu *nc = nc_of(hv);
    pthread_mutex_lock(&hv->inbox_lock);
    nc->irq_slot = -1;
    nstub_take_irqs(nc->stubs[slot], hv->cpu.irq_pending);
    pthread_mutex_unlock(&hv->inbox_lock);
}

/* An interrupt for a vCPU running with the fast path on goes to its stub (§5.5). */
static bool native_post_irq(struct pvm_hv_vcpu *hv, unsigned vector)
{
    struct native_cpu *nc = nc_of(hv);
    if (nc->irq_slot < 0)
        return false;
    struct nstub *st = nc->stubs[nc->irq_slot];
    nstub_post_irq(st, vector);
    nstub_poke(st);
    return true;
}

/* The stub's register file is the provider contract's, field for field. */
#define SAME_FIELD(f) _Static_assert(offsetof(struct nstub_regs, f) == offsetof(struct pvm_hv_regs, f), #f)
SAME_FIELD(gpr);
SAME_FIELD(rip);
SAME_FIELD(rflags);
SAME_FIELD(fs_base);
SAME_FIELD(gs_base);
SAME_FIELD(cs);
SAME_FIELD(ss);
_Static_assert(sizeof(struct nstub_regs) == sizeof(struct pvm_hv_regs), "register files");

/*
 * After the user stub's run: end the hand-off.  The kernel stub either waits
 * again (its fast-path result, SUPERVISOR_RSP, waits for native_finish) or
 * took a SYSCALL it has not handed back: then the vCPU is in the guest
 * kernel, and the kernel stub's next report is this run's trap (*r, *t),
 * with the SYSCALL event for the core to apply (one mode switch).
 * True if so.
 */
static bool link_take(struct pvm_hv_vcpu *hv, unsigned slot, int k, struct nstub_regs *r, struct nstub_trap *t,
                      struct pvm_hv_trap *trap)
{
    struct native_cpu *nc = nc_of(hv);
    struct nstub_link_cfg cfg = { .link = nc->link, .gen = nc->link_gen };
    uint64_t trips = 0;
    int a = nstub_link_take(nc->stubs[slot], nc->stubs[k], &cfg, &trips);
    nc->link_trips += trips;
    trap->ran_slots |= 1u << k;   /* it may have run guest code: confirmed at the exit */
    if (a <= 0) {
        __atomic_store_n(&nc->linked, -1, __ATOMIC_SEQ_CST);
        nc->taken = k;
        if (a < 0) {
            t->kind = NSTUB_TRAP_DIED;
            snprintf(t->msg, sizeof(t->msg), "%s", nstub_dead_msg(nc->stubs[k]));
        }
        return false;
    }
    nc->link_trips++;
    nc->link_adopts++;
    /* Kicks still reach the kernel stub (native_kick) until its report is in. */
    nstub_link_adopt(nc->stubs[k], r, t);
    __atomic_store_n(&nc->linked, -1, __ATOMIC_SEQ_CST);
    nc->fpu_slot = k;   /* the kernel stub holds the guest's FPU state now */
    trap->events = 1 + 2 * (uint32_t)(trips < 0x7fffffff ? trips : 0x7fffffff);
    trap->switches = trap->events;
    trap->supervisor_rsp = hv->cpu.msr_supervisor_rsp;   /* the kernel stub's own, in native_finish */
    return true;
}

static int native_run(struct pvm_hv_vcpu *hv, unsigned slot, struct pvm_hv_regs *regs, struct pvm_hv_trap *trap)
{
    struct native_cpu *nc = nc_of(hv);
    struct nstub_regs r;
    struct nstub_trap t;
    memcpy(&r, regs, sizeof(r));
    int rc = nstub_run(nc->stubs[slot], &r, &t);
    if (nc->fast) /* before anything looks at the model: its pending interrupts are exact again */
        irq_take_back(hv, slot);
    memset(trap, 0, sizeof(*trap));
    int k = __atomic_load_n(&nc->linked, __ATOMIC_SEQ_CST);
    if (k >= 0 && link_take(hv, slot, k, &r, &t, trap))
        rc = 0;
    if (rc < 0)
        return rc;
    memcpy(regs, &r, sizeof(r));
    trap->vector = t.vector;
    trap->error_code = t.error_code;
    trap->cr2 = t.cr2;
    switch (t.kind) {
    case NSTUB_TRAP_SYSCALL: trap->kind = PVM_HV_TRAP_SYSCALL; break;
    case NSTUB_TRAP_FAULT: trap->kind = PVM_HV_TRAP_FAULT; break;
    case NSTUB_TRAP_KICK: trap->kind = PVM_HV_TRAP_KICK; break;
    default:
        trap->kind = PVM_HV_TRAP_DIED;
        _Static_assert(sizeof(trap->msg) == sizeof(t.msg), "trap messages");
        memcpy(trap->msg, t.msg, sizeof(trap->msg));
        break;
    }
    return 0;
}

/* ---- the host's ways of reporting a trap ------------------------------------ */

/* Is there an INT 0x80 instruction (cd 80) at @gva? */
static bool int80_at(struct pvm_hv_vcpu *hv, uint64_t gva)
{
    uint8_t insn[2];
    if (pvm_hv_read_virt(hv, gva, insn, 2) < 0)
        return false;
    return insn[0] == 0xcd && insn[1] == 0x80;
}

/*
 * INT 0x80 reaches the stub in one of two ways, depending on the host kernel:
 * as a seccomp trap of the i386 syscall path (RIP after the instruction), or,
 * where the host has no IDT gate for it (ia32 emulation off, some guest
 * kernels), as #GP with the IDT error code of vector 0x80 (RIP at it).
 */
#define INT80_GP_ERROR ((0x80u << 3) | 2)

/*
 * Linux >= 6.18 runs syscall 336 (uprobe) without asking seccomp: outside a
 * uprobe trampoline it just returns -ENXIO.  An ERETU/ERETS SYSCALL executed
 * while the guest's RAX happens to be 336 therefore never traps, and the
 * instruction after the site runs instead (the SDK puts a ud2 there).  The
 * fault it raises carries the unmistakable signature RIP == RCX == site + 2,
 * RAX == -ENXIO in smod: recover the SYSCALL the hardware really executed.
 */
#define HOST_UNFILTERED_SYSCALL 336
static bool lost_eret(const struct pvm_cpu *c)
{
    return c->mode == PVM_MODE_SUPERVISOR && c->gpr[PVM_RAX] == (uint64_t)-6 && c->gpr[PVM_RCX] == c->rip &&
           (c->rip == c->msr_retu_rip_plus2 || c->rip == c->msr_rets_rip_plus2);
}

static void normalize_trap(struct pvm_hv_vcpu *hv, struct pvm_hv_trap *t)
{
    struct pvm_cpu *c = &hv->cpu;
    if (t->kind == PVM_HV_TRAP_SYSCALL && int80_at(hv, c->rip - 2)) {
        /* Both arrive as a seccomp trap. */
        t->kind = PVM_HV_TRAP_FAULT;
        t->vector = PVM_VEC_INT80;
    } else if (t->kind == PVM_HV_TRAP_FAULT && lost_eret(c)) {
        c->gpr[PVM_RAX] = HOST_UNFILTERED_SYSCALL;
        t->kind = PVM_HV_TRAP_SYSCALL;
    } else if (t->kind == PVM_HV_TRAP_FAULT && t->vector == PVM_VEC_GP && t->error_code == INT80_GP_ERROR &&
               int80_at(hv, c->rip)) {
        c->rip += 2;
        t->vector = PVM_VEC_INT80;
    }
}

/* ---- the smod fast path (docs/design.md "Fast path") ----------------------- */

/* Add the installed mapping containing @gva (if any, and not yet covered) as a window. */
static void add_window(struct pvm_hv_vcpu *hv, struct nstub_fast_cfg *f, uint64_t gva)
{
    uint64_t start, len;
    unsigned prot;
    for (unsigned i = 0; i < f->nr_windows; i++)
        if (gva - f->win[i].start < f->win[i].len)
            return;
    if (f->nr_windows >= NSTUB_FAST_WINDOWS || !pvm_shadow_lookup(hv->shadow, gva, &start, &len, &prot))
        return;
    f->win[f->nr_windows].start = start;
    f->win[f->nr_windows].len = len;
    f->win[f->nr_windows].prot = ((prot & PVM_PROT_READ) ? PROT_READ : 0) | ((prot & PVM_PROT_WRITE) ? PROT_WRITE : 0);
    f->nr_windows++;
}

static bool fast_cfg(struct pvm_hv_vcpu *hv, unsigned slot, bool on, uint64_t rsp);

/*
 * What the stub of @slot may handle itself during the next run: only smod,
 * with the PVCS mapped into the stub and nothing pending, so that the model's
 * event check after each event has nothing to do (stub/fast.c); nothing
 * while guest debugging is on (the core must see every #BP, #DB and step).
 */
static bool setup_fast(struct pvm_hv_vcpu *hv, unsigned slot)
{
    const struct pvm_cpu *c = &hv->cpu;
    bool on = c->mode == PVM_MODE_SUPERVISOR && c->cs == PVM_USER_CS && c->ss == PVM_USER_DS;
    return fast_cfg(hv, slot, on, c->gpr[PVM_RSP]);
}

/*
 * The fast-path block of the stub of @slot for smod at @rsp (@on: else
 * disabled): the current state, or the guest kernel's entry state for the
 * hand-off (link_arm).  False if it stays off.
 */
static bool fast_cfg(struct pvm_hv_vcpu *hv, unsigned slot, bool on, uint64_t rsp)
{
    struct native_cpu *nc = nc_of(hv);
    struct pvm_cpu *c = &hv->cpu;
    struct nstub *st = nc->stubs[slot];
    struct nstub_fast_cfg f = { .enabled = false };
    struct pvm_region r;

    if (!on || !nc->fast_on || pvm_hv_debug_on(hv) || pvm_hv_events_pending(hv) || !c->msr_vcpu_struct ||
        !pvm__gpa_lookup(hv->v->vm, c->msr_vcpu_struct, 4096, &r) || r.memfd_off == PVM_NO_MEMFD ||
        (r.flags & PVM_MEM_READONLY) || nstub_map_pvcs(st, r.memfd_off + (c->msr_vcpu_struct - r.gpa)) < 0) {
        nstub_set_fast(st, &f);
        return false;
    }
    if (nc->cpuid_pub[slot] != hv->cpuid_gen) {
        struct pvm_cpuid_entry t[PVM_MAX_CPUID_ENTRIES + 8];
        size_t n = pvm_m_cpuid_effective(c, t, sizeof(t) / sizeof(t[0]));
        if (n && nstub_set_cpuid(st, t, n) == 0)
            nc->cpuid_pub[slot] = hv->cpuid_gen;
    }
    uint32_t feat[4];
    pvm_m_cpuid(c, PVM_KVM_CPUID_FEATURES, 0, feat);
    f.enabled = true;
    /* §6.1: with the INVLPG address guest-allowed a flush is due: leave it to the model. */
    f.cpuid = nc->cpuid_pub[slot] == hv->cpuid_gen && !pvm_m_la_allowed(c->msr_linear_range,
                                                                          PVM_SYNTHETIC_CPUID_ADDRESS);
    f.nmi_masked = c->nmi_masked;
    f.retu_plus2 = c->msr_retu_rip_plus2;
    f.rets_plus2 = c->msr_rets_rip_plus2;
    f.event_entry = c->msr_event_entry;
    f.redzone = c->msr_redzone;
    f.sup_rsp = c->msr_supervisor_rsp;
    f.sup_cs = (uint16_t)((c->msr_star >> 32) & 0xfffc);
    f.kvm_features = feat[0];
    /* Windows: the stack around RSP and where a §5.4 frame would go. */
    uint64_t frame = ((rsp - c->msr_redzone) & ~0xfull) - PVM_FRAME_SIZE;
    const uint64_t probes[] = { rsp, rsp + PVM_FRAME_SIZE - 1, frame, frame + PVM_FRAME_SIZE - 1,
                                rsp - 4096, rsp - 8192, rsp + 4096 };
    for (unsigned i = 0; i < sizeof(probes) / sizeof(probes[0]); i++)
        add_window(hv, &f, probes[i]);
    nstub_set_fast(st, &f);
    return true;
}

/*
 * The PVM MSRs a fast WRMSR changed (stub/fast.c msr_insn), applied as the
 * guest's own WRMSRs (§2 checks included: the control page is guest-writable).
 * A genuine write always passes; a forged one fails (ignored) or, for a
 * non-canonical EVENT_ENTRY, requests the §10.12 triple fault: PVM_M_SHUTDOWN.
 */
static enum pvm_m_result apply_fast_msrs(struct pvm_hv_vcpu *hv, const struct nstub_fast_result *fr)
{
    static const uint32_t idx[] = { MSR_PVM_SUPERVISOR_RSP, MSR_PVM_SUPERVISOR_REDZONE, MSR_PVM_EVENT_ENTRY,
                                    MSR_PVM_RETU_RIP, MSR_PVM_RETS_RIP };
    const uint64_t val[] = { fr->sup_rsp, fr->redzone, fr->event_entry, fr->retu_plus2 - 2, fr->rets_plus2 - 2 };
    for (unsigned i = 0; i < sizeof(idx) / sizeof(idx[0]); i++)
        if ((fr->msr_changed & (1u << (idx[i] - MSR_PVM_LINEAR_ADDRESS_RANGE))) &&
            pvm_m_wrmsr(&hv->cpu, &hv->mem, idx[i], val[i], false) == -2)
            return PVM_M_SHUTDOWN;
    return PVM_M_RESUME;
}

/*
 * A report in the control page may be forged by the guest: before the
 * application sees an exit or a host call runs, the stub must be asleep in
 * its wait (docs/design.md "Exits mean stopped"; the cost is in
 * docs/benchmarks.md).
 */
#define STOP_TIMEOUT_MS 1000 /* generous: a genuine stub parks in microseconds, but a loaded machine may not run it for a while */
static int native_stopped(struct pvm_hv_vcpu *hv, unsigned slot, char *err, size_t errlen)
{
    struct native_cpu *nc = nc_of(hv);
    if (nc->trust_exits)
        return 0;
    return nstub_confirm_stopped(nc->stubs[slot], STOP_TIMEOUT_MS, err, errlen);
}

/* Unmaps count once the stub asked for them (stub.c approve_cmds): apply a stopped slot's now. */
static int native_sync(struct pvm_hv_vcpu *hv, unsigned slot, char *err, size_t errlen)
{
    struct native_cpu *nc = nc_of(hv);
    return nc->trust_exits ? 0 : nstub_sync_unmaps(nc->stubs[slot], err, errlen);
}

/*
 * The user/kernel hand-off (stub/link.c, docs/design.md "The user stub and
 * the kernel stub hand off"): before user code runs in @slot, let the
 * kernel's stub take its SYSCALLs and answer their ERETUs itself, where the
 * model would do nothing between the two but deliver them: 64-bit user
 * code, nothing pending or held back, NMIs unmasked, no debugging or trace
 * (fast_on), 4-level paging (§10.7's canonical form), a canonical entry
 * state, and the kernel's address space resident (pvm_shadow_find: no
 * eviction) with its stub waiting and nothing queued for it.
 */
static void link_arm(struct pvm_hv_vcpu *hv, unsigned slot)
{
    struct native_cpu *nc = nc_of(hv);
    const struct pvm_cpu *c = &hv->cpu;
    if (!nc->link || c->mode != PVM_MODE_USER || c->cs != PVM_USER_CS || c->ss != PVM_USER_DS || c->halted ||
        c->nmi_masked || pvm_hv_irqs_pending(c) || pvm_m_la57(c) || !pvm_hv_canonical48(c->msr_lstar) ||
        !pvm_hv_canonical48(c->msr_kernel_gs_base))
        return;
    int k = pvm_shadow_find(hv->shadow, c->msr_switch_cr3, false);
    if (k < 0 || (unsigned)k == slot || !nc->stubs[k])
        return;
    struct nstub *u = nc->stubs[slot], *ks = nc->stubs[k];
    if (nstub_map_link(u, nc->link_off) < 0 || nstub_map_link(ks, nc->link_off) < 0 ||
        !fast_cfg(hv, (unsigned)k, true, c->msr_supervisor_rsp))
        return;
    struct nstub_link_cfg cfg = { .link = nc->link, .gen = ++nc->link_gen, .lstar = c->msr_lstar,
                                  .kernel_gs_base = c->msr_kernel_gs_base };
    if (nstub_link_arm(u, ks, &cfg) == 0)
        __atomic_store_n(&nc->linked, k, __ATOMIC_SEQ_CST);
}

static void native_prepare(struct pvm_hv_vcpu *hv, unsigned slot)
{
    struct native_cpu *nc = nc_of(hv);
    nc->fast = setup_fast(hv, slot);
    if (nc->fast)
        irq_hand_over(hv, slot);
    else
        link_arm(hv, slot);
}

/* What the fast path of @slot's stub did: statistics and the model's side (NMI mask, PVM MSRs). */
static enum pvm_m_result fast_result(struct pvm_hv_vcpu *hv, unsigned slot)
{
    struct native_cpu *nc = nc_of(hv);
    struct nstub_fast_result fr;
    nstub_fast_result(nc->stubs[slot], &fr);
    nc->fast_events += fr.events;
    nc->fast_irqs += fr.irqs;
    if (fr.nmi_unmasked) /* §5.8: a fast ERETS released the NMI mask */
        hv->cpu.nmi_masked = false;
    if (fr.msr_changed && apply_fast_msrs(hv, &fr) == PVM_M_SHUTDOWN)
        return PVM_M_SHUTDOWN;
    return PVM_M_RESUME;
}

static enum pvm_m_result native_finish(struct pvm_hv_vcpu *hv, unsigned slot, struct pvm_hv_trap *trap)
{
    struct native_cpu *nc = nc_of(hv);
    /* A kernel stub that answered user SYSCALLs and waits again: its ERETUs' SUPERVISOR_RSP, its fast WRMSRs. */
    int k = nc->taken;
    nc->taken = -1;
    if (k >= 0 && (unsigned)k != slot && fast_result(hv, (unsigned)k) == PVM_M_SHUTDOWN)
        return PVM_M_SHUTDOWN;
    if (fast_result(hv, slot) == PVM_M_SHUTDOWN)
        return PVM_M_SHUTDOWN;
    normalize_trap(hv, trap);
    return PVM_M_RESUME;
}

/* ---- statistics (native.h) --------------------------------------------------- */

static struct native_cpu *native_of(const pvm_vcpu *v)
{
    if (!v || v->vm->ops != &pvm_native_backend || !v->bdata)
        return NULL;
    return nc_of(pvm_hv_of(v));
}

bool pvm__native_fastpath(const pvm_vcpu *v)
{
    const struct native_cpu *nc = native_of(v);
    return nc && nc->fast_on;
}

/* A counter of the vCPU's native_cpu (nc) or core (hv), 0 for other backends. */
#define NATIVE_COUNTER(fn, expr)                                   \
    uint64_t fn(const pvm_vcpu *v)                                 \
    {                                                              \
        const struct native_cpu *nc = native_of(v);                \
        const struct pvm_hv_vcpu *hv = nc ? pvm_hv_of(v) : NULL;   \
        (void)hv;                                                  \
        return nc ? (expr) : 0;                                    \
    }
NATIVE_COUNTER(pvm__native_fast_events, nc->fast_events)
NATIVE_COUNTER(pvm__native_fast_irqs, nc->fast_irqs)
NATIVE_COUNTER(pvm__native_prefetches, hv->prefetches)
NATIVE_COUNTER(pvm__native_fetch_prefetches, hv->fetch_prefetches)
NATIVE_COUNTER(pvm__native_link_trips, nc->link_trips)
NATIVE_COUNTER(pvm__native_link_adopts, nc->link_adopts)

int pvm__native_stub_pid(const pvm_vcpu *v, unsigned slot)
{
    const struct native_cpu *nc = native_of(v);
    return nc && slot < PVM_SHADOW_MAX_ROOTS ? nstub_pid(nc->stubs[slot]) : -1;
}

static const struct pvm_cpu_provider native_cpu = {
    .name = "native",
    .window_lo = NSTUB_GUEST_LO,
    .window_hi = NSTUB_GUEST_HI,
    /* A host process has no upper half: the 4- and 5-level ranges are empty (§10.30). */
    .linear_range = PVM_LA_RANGE_MAKE(0x1ff, 0x1ff, 0x1ff, 0x1ff),
    .vm_init = native_vm_init,
    .vm_fini = native_vm_fini,
    .vcpu_init = native_vcpu_init,
    .vcpu_fini = native_vcpu_fini,
    .activate = native_activate,
    .map = native_map,
    .unmap = native_unmap,
    .reset = native_reset,
    .run = native_run,
    .kick = native_kick,
    .stopped = native_stopped,
    .halt_wake = native_halt_wake,
    .sync = native_sync,
    .discard = native_discard,
    .prepare = native_prepare,
    .finish = native_finish,
    .post_irq = native_post_irq,
    .get_fpu = native_get_fpu,
    .set_fpu = native_set_fpu,
    .check_fpu = native_check_fpu,
};

const struct pvm_backend_ops pvm_native_backend = {
    .name = "native",
    .id = PVM_BACKEND_NATIVE,
    .caps = PVM_CAP_SHARED_SNAPSHOT,
    .probe = native_probe,
    PVM_HV_BACKEND_OPS(&native_cpu),
};
