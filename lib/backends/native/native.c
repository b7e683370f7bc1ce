/*
 * lib/backends/native/native.c - the "native" backend: the library is the
 * hypervisor.
 *
 * Guest code runs natively at host ring 3 in stub processes (stub.h), one per
 * active shadow root (mmu.h); every trap comes back here and goes to the
 * machine model (machine.h).  This file is only the glue: the run loop, the
 * accessor the model uses, and the asynchronous paths (inject, kick).
 */
#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/backend.h"
#include "machine/machine.h"
#include "machine/mmu.h"
#include "native.h"
#include "stub.h"
#include "stub/stub_abi.h"

#define INBOX_MAX 64
#define NATIVE_LA_RANGE PVM_LA_RANGE_MAKE(0x1ff, 0x1ff, 0x1ff, 0x1ff)

extern const struct pvm_backend_ops pvm_native_backend;

struct native_vcpu {
    pvm_vcpu *v;
    struct pvm_cpu cpu;
    struct pvm_mem mem;
    struct pvm_walk_env env;
    struct pvm_shadow *shadow;
    struct nstub *stubs[PVM_SHADOW_MAX_ROOTS];
    int fpu_slot;                /* slot whose stub holds the live FPU state, -1 none */
    void *fpu_buf;
    size_t fpu_size;
    uint64_t regions_gen;

    /* Asynchronous side: inject() and kick() from other threads. */
    pthread_mutex_t inbox_lock;
    struct pvm_event inbox[INBOX_MAX];
    unsigned nr_inbox;
    int kick_pending;            /* atomic */
    int attention;               /* atomic: inbox non-empty or kick */
    int running_slot;            /* atomic: stub slot running guest code, or -1 */
    int irq_slot;                /* under inbox_lock: stub taking posted interrupts (fast path), or -1 */
    uint32_t wake;               /* futex word for halt waits */

    bool dead;                   /* SHUTDOWN or INTERNAL_ERROR reached */
    struct pvm_exit fatal;

    /* The smod fast path (stub/fast.c). */
    bool fast_on;                /* PVM_NATIVE_FASTPATH != "0" at creation */
    uint64_t fast_events;        /* handled in the stubs (statistics) */
    uint64_t fast_irqs;          /* of which interrupts delivered in the stubs */
    uint32_t cpuid_gen;          /* bumped when the CPUID table changes ... */
    uint32_t cpuid_pub[PVM_SHADOW_MAX_ROOTS]; /* ... and what each stub has */

    /* The last guest #PF, for the prefetch when the guest retries it (pf_prefetch). */
    struct {
        bool pending;
        uint8_t mode;
        uint32_t access;         /* PVM_PFEC_W/I */
        uint64_t cr2, cr3, rip, rflags, fs_base, gs_base;
        uint64_t gpr[16];
    } pf;
    uint64_t prefetches;         /* shadow mappings installed by pf_prefetch (statistics) */
};

static struct native_vcpu *nv_of(pvm_vcpu *v)
{
    return v->bdata;
}

/* ---- probe and VM ---------------------------------------------------------- */

static int native_probe(void)
{
    /* Stubs trap guest syscalls with SECCOMP_RET_TRAP: the kernel must offer it. */
    char buf[256] = "";
    FILE *f = fopen("/proc/sys/kernel/seccomp/actions_avail", "re");
    if (f) {
        if (!fgets(buf, sizeof(buf), f))
            buf[0] = '\0';
        fclose(f);
    }
    if (!f || !strstr(buf, "trap"))
        return pvm__error(PVM_ENODEV, "native: the kernel offers no seccomp filters with the trap action "
                          "(/proc/sys/kernel/seccomp/actions_avail)");
    return 0;
}

static int native_vm_init(pvm_vm *vm)
{
    return 0;
}

static void native_vm_fini(pvm_vm *vm)
{
}

static void wake_vcpu(struct native_vcpu *nv);

/* Unmapped memory must leave every shadow before the guest runs on: interrupt the vCPUs. */
static void native_region_del(pvm_vm *vm, const struct pvm_region *r)
{
    /* Under vm->lock: a vCPU being created or destroyed is not listed as ready. */
    pthread_mutex_lock(&vm->lock);
    for (uint32_t i = 0; i < vm->opts.max_vcpus; i++)
        if (vm->vcpus[i] && vm->vcpus[i]->ready)
            wake_vcpu(vm->vcpus[i]->bdata);
    pthread_mutex_unlock(&vm->lock);
}

static uint64_t native_linear_range(const pvm_vm *vm)
{
    /* A host process has no upper half: the 4- and 5-level ranges are empty (§10.30). */
    return NATIVE_LA_RANGE;
}

static void native_lower_half(const pvm_vm *vm, uint64_t *lo, uint64_t *hi)
{
    *lo = NSTUB_GUEST_LO;
    *hi = NSTUB_GUEST_HI;
}

/* ---- guest memory accessors ---------------------------------------------- */

static uint64_t *pte_ptr(void *opaque, uint64_t gpa)
{
    struct native_vcpu *nv = opaque;
    if (gpa & 7)
        return NULL;
    return pvm__gpa_lookup(nv->v->vm, gpa, 8, NULL);
}

static void *mem_phys(void *opaque, uint64_t gpa, size_t len, bool write)
{
    struct native_vcpu *nv = opaque;
    struct pvm_region r;
    void *p = pvm__gpa_lookup(nv->v->vm, gpa, len, &r);
    if (p && write && (r.flags & PVM_MEM_READONLY))
        return NULL;
    return p;
}

static void refresh_env(struct native_vcpu *nv)
{
    nv->env.la_range = nv->cpu.msr_linear_range;
    nv->env.nxe = (nv->cpu.efer >> 11) & 1;
}

/* Copy between guest-virtual memory and @buf with supervisor privilege. */
static int virt_access(struct native_vcpu *nv, uint64_t gva, void *buf, size_t len, bool write)
{
    refresh_env(nv);
    uint8_t *b = buf;
    while (len) {
        struct pvm_walk_result res;
        size_t chunk = PVM_PAGE_SIZE - (gva & PVM_PAGE_MASK);
        if (chunk > len)
            chunk = len;
        if (pvm_mmu_walk(&nv->env, nv->cpu.cr3, gva, write ? PVM_PFEC_W : 0, true, &res) != PVM_WALK_OK)
            return -1;
        void *h = mem_phys(nv, res.gpa, chunk, write);
        if (!h)
            return -1;
        if (write)
            memcpy(h, b, chunk);
        else
            memcpy(b, h, chunk);
        gva += chunk;
        b += chunk;
        len -= chunk;
    }
    return 0;
}

static int mem_read_virt(void *opaque, uint64_t gva, void *buf, size_t len)
{
    return virt_access(opaque, gva, buf, len, false);
}

static int mem_write_virt(void *opaque, uint64_t gva, const void *buf, size_t len)
{
    return virt_access(opaque, gva, (void *)buf, len, true);
}

static void mem_flush(void *opaque, enum pvm_flush_kind kind, uint64_t gva)
{
    struct native_vcpu *nv = opaque;
    switch (kind) {
    case PVM_FLUSH_ALL:
        pvm_shadow_flush_all(nv->shadow);
        break;
    case PVM_FLUSH_CURRENT:
        pvm_shadow_flush_root(nv->shadow, nv->cpu.cr3);
        pvm_shadow_flush_root(nv->shadow, nv->cpu.msr_switch_cr3);
        break;
    case PVM_FLUSH_ONE:
        pvm_shadow_invlpg(nv->shadow, gva);
        break;
    }
}

/* ---- shadow MMU provider: one stub per slot ------------------------------- */

static int ensure_stub(struct native_vcpu *nv, unsigned slot, char *err, size_t errlen)
{
    if (nv->stubs[slot])
        return 0;
    struct nstub_config cfg = { .memfd = nv->v->vm->memfd, .kick_signal = nv->v->vm->opts.kick_signal };
    return nstub_create(&nv->stubs[slot], &cfg, err, errlen);
}

static int sh_install(void *opaque, unsigned slot, uint64_t gva, uint64_t len, uint64_t gpa, unsigned prot)
{
    struct native_vcpu *nv = opaque;
    struct pvm_region r;
    char err[128];
    if (!pvm__gpa_lookup(nv->v->vm, gpa, len, &r) || r.memfd_off == PVM_NO_MEMFD)
        return -1;
    if (gva < NSTUB_GUEST_LO || gva + len > NSTUB_GUEST_HI || gva + len < gva)
        return -1;
    if (ensure_stub(nv, slot, err, sizeof(err)) < 0)
        return -1;
    int p = ((prot & PVM_PROT_READ) ? PROT_READ : 0) | ((prot & PVM_PROT_WRITE) ? PROT_WRITE : 0) |
            ((prot & PVM_PROT_EXEC) ? PROT_EXEC : 0);
    return nstub_map(nv->stubs[slot], gva, len, r.memfd_off + (gpa - r.gpa), p);
}

static int sh_remove(void *opaque, unsigned slot, uint64_t gva, uint64_t len)
{
    struct native_vcpu *nv = opaque;
    return nv->stubs[slot] ? nstub_unmap(nv->stubs[slot], gva, len) : 0;
}

static void sh_reset_slot(void *opaque, unsigned slot)
{
    struct native_vcpu *nv = opaque;
    if (nv->stubs[slot])
        nstub_unmap_all(nv->stubs[slot]);
}

static uint64_t sh_ram_extent(void *opaque, uint64_t gpa, uint32_t *flags)
{
    struct native_vcpu *nv = opaque;
    struct pvm_region r;
    if (!pvm__gpa_lookup(nv->v->vm, gpa, 1, &r) || r.memfd_off == PVM_NO_MEMFD)
        return 0;
    *flags = r.flags;
    return r.size - (gpa - r.gpa);
}

static const struct pvm_shadow_ops shadow_ops = {
    .install = sh_install,
    .remove = sh_remove,
    .reset_slot = sh_reset_slot,
    .ram_extent = sh_ram_extent,
};

/* ---- vCPU lifetime ----------------------------------------------------- */

static void native_vcpu_fini(pvm_vcpu *v)
{
    struct native_vcpu *nv = nv_of(v);
    if (!nv)
        return;
    pvm__log(PVM_LOG_DEBUG, "vCPU %u: %llu events handled by the stub fast path (%llu interrupts), %llu #PF prefetches",
             v->id, (unsigned long long)nv->fast_events, (unsigned long long)nv->fast_irqs,
             (unsigned long long)nv->prefetches);
    for (unsigned i = 0; i < PVM_SHADOW_MAX_ROOTS; i++)
        nstub_destroy(nv->stubs[i]);
    pvm_shadow_destroy(nv->shadow);
    pthread_mutex_destroy(&nv->inbox_lock);
    free(nv->fpu_buf);
    free(nv);
    v->bdata = NULL;
}

static int native_vcpu_init(pvm_vcpu *v)
{
    struct native_vcpu *nv = calloc(1, sizeof(*nv));
    if (!nv)
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory");
    v->bdata = nv;
    nv->v = v;
    nv->fpu_slot = -1;
    nv->running_slot = -1;
    nv->irq_slot = -1;
    const char *fp = getenv("PVM_NATIVE_FASTPATH");
    nv->fast_on = !(fp && !strcmp(fp, "0"));
    nv->cpuid_gen = 1;
    pthread_mutex_init(&nv->inbox_lock, NULL);
    pvm_m_reset(&nv->cpu, NATIVE_LA_RANGE);
    nv->cpu.vcpu_id = v->id;
    nv->mem = (struct pvm_mem){ .opaque = nv, .phys = mem_phys, .read_virt = mem_read_virt,
                                .write_virt = mem_write_virt, .flush = mem_flush };
    nv->env = (struct pvm_walk_env){ .opaque = nv, .pte_ptr = pte_ptr, .maxphyaddr_mask = PVM_PTE_ADDR };
    nv->regions_gen = __atomic_load_n(&v->vm->regions_gen, __ATOMIC_ACQUIRE);
    nv->shadow = pvm_shadow_create(&shadow_ops, nv, PVM_SHADOW_MAX_ROOTS, 0);
    if (!nv->shadow) {
        native_vcpu_fini(v);
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory for the shadow MMU");
    }
    pvm_shadow_set_window(nv->shadow, NSTUB_GUEST_LO, NSTUB_GUEST_HI);
    return 0;
}

/* ---- asynchronous events ---------------------------------------------------- */

static void wake_vcpu(struct native_vcpu *nv)
{
    __atomic_store_n(&nv->attention, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&nv->wake, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &nv->wake, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    int slot = __atomic_load_n(&nv->running_slot, __ATOMIC_SEQ_CST);
    if (slot >= 0 && nv->stubs[slot])
        nstub_kick(nv->stubs[slot]);
}

static int native_kick(pvm_vcpu *v)
{
    struct native_vcpu *nv = nv_of(v);
    __atomic_store_n(&nv->kick_pending, 1, __ATOMIC_SEQ_CST);
    wake_vcpu(nv);
    return 0;
}

static int native_inject(pvm_vcpu *v, const struct pvm_event *ev)
{
    struct native_vcpu *nv = nv_of(v);
    int rc = 0;
    pthread_mutex_lock(&nv->inbox_lock);
    /*
     * An interrupt for a vCPU running with the fast path on goes to its stub,
     * which delivers it itself (stub/fast.c, §5.5); what it has not delivered
     * comes back into the model when nstub_run returns (irq_take_back).
     */
    if (ev->type == PVM_EVENT_INTERRUPT && ev->vector >= 32 && nv->irq_slot >= 0) {
        struct nstub *st = nv->stubs[nv->irq_slot];
        nstub_post_irq(st, ev->vector);
        pthread_mutex_unlock(&nv->inbox_lock);
        nstub_poke(st);
        return 0;
    }
    if (ev->type == PVM_EVENT_EXCEPTION) {
        for (unsigned i = 0; i < nv->nr_inbox; i++)
            if (nv->inbox[i].type == PVM_EVENT_EXCEPTION)
                rc = pvm__error(PVM_EBUSY, "pvm_vcpu_inject: an exception is already queued for vCPU %u",
                                v->id);
    }
    if (rc == 0 && nv->nr_inbox == INBOX_MAX)
        rc = pvm__error(PVM_EAGAIN, "pvm_vcpu_inject: %d events already queued for vCPU %u", INBOX_MAX,
                        v->id);
    if (rc == 0)
        nv->inbox[nv->nr_inbox++] = *ev;
    pthread_mutex_unlock(&nv->inbox_lock);
    if (rc == 0)
        wake_vcpu(nv);
    return rc;
}

/* Move injected events into the model's pending state (vCPU thread only). */
static void drain_inbox(struct native_vcpu *nv)
{
    if (!__atomic_exchange_n(&nv->attention, 0, __ATOMIC_SEQ_CST))
        return;
    pthread_mutex_lock(&nv->inbox_lock);
    unsigned keep = 0;
    for (unsigned i = 0; i < nv->nr_inbox; i++)
        if (pvm_m_queue_event(&nv->cpu, &nv->inbox[i]) == PVM_EBUSY)
            nv->inbox[keep++] = nv->inbox[i]; /* an exception is still pending: keep it */
    nv->nr_inbox = keep;
    if (keep)
        __atomic_store_n(&nv->attention, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&nv->inbox_lock);
}

/* ---- the run loop ------------------------------------------------------- */

static int fatal(struct native_vcpu *nv, struct pvm_exit *exit, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fatal(struct native_vcpu *nv, struct pvm_exit *exit, int code, const char *fmt, ...)
{
    va_list ap;
    memset(&nv->fatal, 0, sizeof(nv->fatal));
    nv->fatal.reason = PVM_EXIT_INTERNAL_ERROR;
    nv->fatal.u.internal.code = code;
    va_start(ap, fmt);
    vsnprintf(nv->fatal.u.internal.msg, sizeof(nv->fatal.u.internal.msg), fmt, ap);
    va_end(ap);
    nv->dead = true;
    *exit = nv->fatal;
    pvm__log(PVM_LOG_ERROR, "vCPU %u: %s", nv->v->id, nv->fatal.u.internal.msg);
    return 0;
}

static void regs_to_stub(const struct pvm_cpu *c, struct nstub_regs *r)
{
    memcpy(r->gpr, c->gpr, sizeof(r->gpr));
    r->rip = c->rip;
    /* Underlying RFLAGS: IF always 1, only the allowed bits (§1.1). */
    r->rflags = (c->rflags & PVM_RFLAGS_ALLOWED) | PVM_RFLAGS_IF | PVM_RFLAGS_FIXED;
    r->fs_base = c->fs_base;
    r->gs_base = c->gs_base;
    r->cs = c->cs;
    r->ss = c->ss;
}

static void regs_from_stub(struct native_vcpu *nv, const struct nstub_regs *r)
{
    struct pvm_cpu *c = &nv->cpu;
    memcpy(c->gpr, r->gpr, sizeof(c->gpr));
    c->rip = r->rip;
    c->fs_base = r->fs_base;
    c->gs_base = r->gs_base;
    /* The guest cannot change hardware CS/SS without trapping (no far transfers succeed in a stub). */
    /* §1.2: the guest-visible IF is virtual: re-read it from the PVCS after every exit in smod. */
    uint64_t fl = r->rflags & ~PVM_RFLAGS_IF;
    if (c->mode == PVM_MODE_USER || pvm_m_irq_enabled(c, &nv->mem))
        fl |= PVM_RFLAGS_IF;
    c->rflags = fl;
}

/* Is there an INT 0x80 instruction (cd 80) at @gva? */
static bool int80_at(struct native_vcpu *nv, uint64_t gva)
{
    uint8_t insn[2];
    if (mem_read_virt(nv, gva, insn, 2) < 0)
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
static bool trapped_on_int80(struct native_vcpu *nv)
{
    return int80_at(nv, nv->cpu.rip - 2);
}

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

/* Wait while halted until an event or a kick arrives. */
static void halt_wait(struct native_vcpu *nv)
{
    uint32_t seen = __atomic_load_n(&nv->wake, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&nv->attention, __ATOMIC_SEQ_CST) || __atomic_load_n(&nv->kick_pending, __ATOMIC_SEQ_CST))
        return;
    syscall(SYS_futex, &nv->wake, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}

/*
 * Prefetch after a guest #PF (docs/design.md "Fast path"): the guest's fault
 * handler maps the page and returns (ERETU, §6.3; or ERETS) to the faulting
 * instruction, whose retry would fault once more in hardware just to install
 * the shadow mapping.  pf_note() remembers the faulting state; pf_prefetch()
 * runs before each resume and, when the guest is about to run exactly that
 * state again (mode, CR3, RIP, RFLAGS, GPRs, FS/GS bases: the same access to
 * CR2) with nothing to deliver first, installs the mapping the retry would
 * (pvm_shadow_prefetch: A bits may be set ahead of the access, as a
 * speculative walk may set them, D bits never).
 */
static void pf_note(struct native_vcpu *nv, uint64_t cr2, uint32_t access)
{
    const struct pvm_cpu *c = &nv->cpu;
    if (!nv->fast_on)
        return;
    nv->pf.pending = true;
    nv->pf.mode = c->mode;
    nv->pf.access = access & (PVM_PFEC_W | PVM_PFEC_I);
    nv->pf.cr2 = cr2;
    nv->pf.cr3 = c->cr3;
    nv->pf.rip = c->rip;
    nv->pf.rflags = c->rflags;
    nv->pf.fs_base = c->fs_base;
    nv->pf.gs_base = c->gs_base;
    memcpy(nv->pf.gpr, c->gpr, sizeof(nv->pf.gpr));
}

static bool irqs_pending(const struct pvm_cpu *c);
static bool events_pending(struct native_vcpu *nv);

/* Before resuming in the active slot (pvm_shadow_activate done). */
static void pf_prefetch(struct native_vcpu *nv)
{
    const struct pvm_cpu *c = &nv->cpu;
    if (!nv->pf.pending || c->mode != nv->pf.mode)
        return;
    if (c->rip != nv->pf.rip || c->cr3 != nv->pf.cr3 || c->rflags != nv->pf.rflags ||
        c->fs_base != nv->pf.fs_base || c->gs_base != nv->pf.gs_base ||
        memcmp(c->gpr, nv->pf.gpr, sizeof(c->gpr))) {
        /* Back in user mode somewhere else: that fault is not being retried now. */
        if (c->mode == PVM_MODE_USER)
            nv->pf.pending = false;
        return;
    }
    nv->pf.pending = false;
    if (c->halted || events_pending(nv) || irqs_pending(c) || __atomic_load_n(&nv->attention, __ATOMIC_SEQ_CST) ||
        __atomic_load_n(&nv->kick_pending, __ATOMIC_SEQ_CST))
        return;
    refresh_env(nv);
    if (pvm_shadow_prefetch(nv->shadow, &nv->env, nv->pf.cr2, nv->pf.access))
        nv->prefetches++;
}

static enum pvm_m_result handle_trap(struct native_vcpu *nv, const struct nstub_trap *t, struct pvm_exit *exit,
                                     bool *provider_error)
{
    struct pvm_cpu *c = &nv->cpu;
    switch (t->kind) {
    case NSTUB_TRAP_SYSCALL:
        if (trapped_on_int80(nv))
            return pvm_m_int80(c, &nv->mem);
        return pvm_m_syscall(c, &nv->mem);
    case NSTUB_TRAP_FAULT:
        if (lost_eret(c)) {
            c->gpr[PVM_RAX] = HOST_UNFILTERED_SYSCALL;
            return pvm_m_syscall(c, &nv->mem);
        }
        if (t->vector == PVM_VEC_PF) {
            uint32_t access = (t->error_code & (PVM_PFEC_W | PVM_PFEC_I)) |
                              (c->mode == PVM_MODE_USER ? PVM_PFEC_U : 0);
            uint32_t pfec = 0;
            uint64_t gpa = 0;
            refresh_env(nv);
            if (t->cr2 < NSTUB_GUEST_LO || t->cr2 >= NSTUB_GUEST_HI) {
                /* Outside what a stub can map: to the guest it is an unmapped address. */
                return pvm_m_exception(c, &nv->mem, PVM_VEC_PF, true, access, t->cr2);
            }
            if (nv->pf.mode == c->mode)
                nv->pf.pending = false;   /* a retry that faulted after all (or another fault) */
            switch (pvm_shadow_fault(nv->shadow, &nv->env, t->cr2, access, &pfec, &gpa)) {
            case PVM_SHADOW_FIXED:
                return PVM_M_RESUME;
            case PVM_SHADOW_GUEST_PF:
                pf_note(nv, t->cr2, access);
                return pvm_m_exception(c, &nv->mem, PVM_VEC_PF, true, pfec, t->cr2);
            case PVM_SHADOW_MMIO:
                return pvm_m_mmio(c, &nv->mem, gpa, (access & PVM_PFEC_W) != 0);
            default:
                *provider_error = true;
                return PVM_M_SHUTDOWN;
            }
        }
        if (t->vector == PVM_VEC_GP && t->error_code == INT80_GP_ERROR && int80_at(nv, c->rip)) {
            c->rip += 2;
            return pvm_m_int80(c, &nv->mem);
        }
        {
            unsigned v = t->vector;
            bool has_err = v == PVM_VEC_DF || (v >= PVM_VEC_TS && v <= PVM_VEC_GP) || v == PVM_VEC_AC ||
                           v == 21;
            return pvm_m_exception(c, &nv->mem, v, has_err, has_err ? t->error_code : 0, 0);
        }
    case NSTUB_TRAP_KICK:
    default:
        return PVM_M_RESUME;
    }
}

/* Switch the running address space to @slot, carrying the FPU state along. */
static int activate_slot(struct native_vcpu *nv, unsigned slot, char *err, size_t errlen)
{
    int rc = ensure_stub(nv, slot, err, errlen);
    if (rc < 0)
        return rc;
    if (nv->fpu_slot != (int)slot) {
        struct nstub *from = nv->fpu_slot >= 0 ? nv->stubs[nv->fpu_slot] : NULL;
        if (from && !nv->fpu_buf) {
            nv->fpu_size = nstub_fpu_size(from);
            if (!(nv->fpu_buf = malloc(nv->fpu_size ? nv->fpu_size : 1))) {
                snprintf(err, errlen, "out of memory for the FPU state");
                return PVM_ENOMEM;
            }
        }
        if (from && nstub_get_fpu(from, nv->fpu_buf, nv->fpu_size) == 0)
            nstub_set_fpu(nv->stubs[slot], nv->fpu_buf, nv->fpu_size);
        nv->fpu_slot = (int)slot;
    }
    return 0;
}

/* ---- the smod fast path (docs/design.md "Fast path") ----------------------- */

/* Add the installed mapping containing @gva (if any, and not yet covered) as a window. */
static void add_window(struct native_vcpu *nv, struct nstub_fast_cfg *f, uint64_t gva)
{
    uint64_t start, len;
    unsigned prot;
    for (unsigned i = 0; i < f->nr_windows; i++)
        if (gva - f->win[i].start < f->win[i].len)
            return;
    if (f->nr_windows >= NSTUB_FAST_WINDOWS || !pvm_shadow_lookup(nv->shadow, gva, &start, &len, &prot))
        return;
    f->win[f->nr_windows].start = start;
    f->win[f->nr_windows].len = len;
    f->win[f->nr_windows].prot = ((prot & PVM_PROT_READ) ? PROT_READ : 0) | ((prot & PVM_PROT_WRITE) ? PROT_WRITE : 0);
    f->nr_windows++;
}

static bool irqs_pending(const struct pvm_cpu *c)
{
    return c->irq_pending[0] | c->irq_pending[1] | c->irq_pending[2] | c->irq_pending[3];
}

/*
 * Anything the model must deliver first?  Interrupts held back by IF = 0
 * (IP is set: pvm_m_check_events ran) are not: they go to the stub, which
 * delivers them at the IRQ_WIN / ERETS that opens the window (irq_hand_over).
 */
static bool events_pending(struct native_vcpu *nv)
{
    const struct pvm_cpu *c = &nv->cpu;
    return c->exc_pending || c->nmi_pending || (irqs_pending(c) && pvm_m_irq_enabled(c, &nv->mem));
}

/*
 * Interrupts and the stub (stub/fast.c irq_check): while the stub of @slot
 * runs with the fast path on, the model's pending interrupts and every new
 * injection live in its control page, and each one is delivered exactly once:
 * by the stub (it clears the bit) or, after nstub_run, by the model (the
 * bits taken back).  inbox_lock orders injectors against the hand-over.
 */
static void irq_hand_over(struct native_vcpu *nv, unsigned slot)
{
    struct pvm_cpu *c = &nv->cpu;
    pthread_mutex_lock(&nv->inbox_lock);
    nv->irq_slot = (int)slot;
    for (unsigned v = 32; v < 256; v++)
        if (c->irq_pending[v / 64] & (1ull << (v % 64)))
            nstub_post_irq(nv->stubs[slot], v);
    memset(c->irq_pending, 0, sizeof(c->irq_pending));
    pthread_mutex_unlock(&nv->inbox_lock);
}

static void irq_take_back(struct native_vcpu *nv, unsigned slot)
{
    pthread_mutex_lock(&nv->inbox_lock);
    nv->irq_slot = -1;
    nstub_take_irqs(nv->stubs[slot], nv->cpu.irq_pending);
    pthread_mutex_unlock(&nv->inbox_lock);
}

/*
 * What the stub of @slot may handle itself during the next run: only smod,
 * with the PVCS mapped into the stub and nothing pending, so that the model's
 * event check after each event has nothing to do (stub/fast.c).
 */
static bool setup_fast(struct native_vcpu *nv, unsigned slot)
{
    struct pvm_cpu *c = &nv->cpu;
    struct nstub *st = nv->stubs[slot];
    struct nstub_fast_cfg f = { .enabled = false };
    struct pvm_region r;

    if (!nv->fast_on || c->mode != PVM_MODE_SUPERVISOR || c->cs != PVM_USER_CS || c->ss != PVM_USER_DS ||
        events_pending(nv) || !c->msr_vcpu_struct ||
        !pvm__gpa_lookup(nv->v->vm, c->msr_vcpu_struct, 4096, &r) || r.memfd_off == PVM_NO_MEMFD ||
        (r.flags & PVM_MEM_READONLY) || nstub_map_pvcs(st, r.memfd_off + (c->msr_vcpu_struct - r.gpa)) < 0) {
        nstub_set_fast(st, &f);
        return false;
    }
    if (nv->cpuid_pub[slot] != nv->cpuid_gen) {
        struct pvm_cpuid_entry t[PVM_MAX_CPUID_ENTRIES + 8];
        size_t n = pvm_m_cpuid_effective(c, t, sizeof(t) / sizeof(t[0]));
        if (n && nstub_set_cpuid(st, t, n) == 0)
            nv->cpuid_pub[slot] = nv->cpuid_gen;
    }
    uint32_t feat[4];
    pvm_m_cpuid(c, PVM_KVM_CPUID_FEATURES, 0, feat);
    f.enabled = true;
    /* §6.1: with the INVLPG address guest-allowed a flush is due: leave it to the model. */
    f.cpuid = nv->cpuid_pub[slot] == nv->cpuid_gen && !pvm_m_la_allowed(c->msr_linear_range,
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
    uint64_t rsp = c->gpr[PVM_RSP], frame = ((rsp - c->msr_redzone) & ~0xfull) - PVM_FRAME_SIZE;
    const uint64_t probes[] = { rsp, rsp + PVM_FRAME_SIZE - 1, frame, frame + PVM_FRAME_SIZE - 1,
                                rsp - 4096, rsp - 8192, rsp + 4096 };
    for (unsigned i = 0; i < sizeof(probes) / sizeof(probes[0]); i++)
        add_window(nv, &f, probes[i]);
    nstub_set_fast(st, &f);
    return true;
}

/*
 * The PVM MSRs a fast WRMSR changed (stub/fast.c msr_insn), applied as the
 * guest's own WRMSRs (§2 checks included: the control page is guest-writable).
 * A genuine write always passes; a forged one fails (ignored) or, for a
 * non-canonical EVENT_ENTRY, requests the §10.12 triple fault: PVM_M_SHUTDOWN.
 */
static enum pvm_m_result apply_fast_msrs(struct native_vcpu *nv, const struct nstub_fast_result *fr)
{
    static const uint32_t idx[] = { MSR_PVM_SUPERVISOR_RSP, MSR_PVM_SUPERVISOR_REDZONE, MSR_PVM_EVENT_ENTRY,
                                    MSR_PVM_RETU_RIP, MSR_PVM_RETS_RIP };
    const uint64_t val[] = { fr->sup_rsp, fr->redzone, fr->event_entry, fr->retu_plus2 - 2, fr->rets_plus2 - 2 };
    for (unsigned i = 0; i < sizeof(idx) / sizeof(idx[0]); i++)
        if ((fr->msr_changed & (1u << (idx[i] - MSR_PVM_LINEAR_ADDRESS_RANGE))) &&
            pvm_m_wrmsr(&nv->cpu, &nv->mem, idx[i], val[i], false) == -2)
            return PVM_M_SHUTDOWN;
    return PVM_M_RESUME;
}

bool pvm__native_fastpath(const pvm_vcpu *v)
{
    return v && v->vm->ops == &pvm_native_backend && v->bdata && nv_of((pvm_vcpu *)v)->fast_on;
}

uint64_t pvm__native_fast_events(const pvm_vcpu *v)
{
    if (!v || v->vm->ops != &pvm_native_backend || !v->bdata)
        return 0;
    return nv_of((pvm_vcpu *)v)->fast_events;
}

uint64_t pvm__native_fast_irqs(const pvm_vcpu *v)
{
    if (!v || v->vm->ops != &pvm_native_backend || !v->bdata)
        return 0;
    return nv_of((pvm_vcpu *)v)->fast_irqs;
}

uint64_t pvm__native_prefetches(const pvm_vcpu *v)
{
    if (!v || v->vm->ops != &pvm_native_backend || !v->bdata)
        return 0;
    return nv_of((pvm_vcpu *)v)->prefetches;
}

static int run_loop(pvm_vcpu *v, struct pvm_exit *exit);

/* The run loop dereferences guest RAM only between stub runs: announce it (pvm_vm.mem_users). */
static int native_run(pvm_vcpu *v, struct pvm_exit *exit)
{
    pvm__mem_enter(v->vm);
    int rc = run_loop(v, exit);
    pvm__mem_leave(v->vm);
    return rc;
}

static int run_loop(pvm_vcpu *v, struct pvm_exit *exit)
{
    struct native_vcpu *nv = nv_of(v);
    struct pvm_cpu *c = &nv->cpu;
    char err[160];

    if (nv->dead) {
        *exit = nv->fatal;
        return 0;
    }
    if (c->pending_exit != PVM_EXIT_NONE)
        pvm_m_complete(c, exit);

    for (;;) {
        enum pvm_m_result r;
        if (__atomic_exchange_n(&nv->kick_pending, 0, __ATOMIC_SEQ_CST)) {
            memset(exit, 0, sizeof(*exit));
            exit->reason = PVM_EXIT_KICKED;
            return 0;
        }
        drain_inbox(nv);
        r = pvm_m_check_events(c, &nv->mem);
        if (r == PVM_M_RESUME && c->halted) {
            if (!pvm_m_irq_enabled(c, &nv->mem) && !c->nmi_pending && !c->exc_pending &&
                !__atomic_load_n(&nv->attention, __ATOMIC_SEQ_CST)) {
                /* Only an NMI could wake it: hand the decision to the application. */
                c->halted = false;
                memset(exit, 0, sizeof(*exit));
                exit->reason = PVM_EXIT_HALT;
                return 0;
            }
            pvm__mem_leave(v->vm);
            halt_wait(nv);
            pvm__mem_enter(v->vm);
            continue;
        }
        if (r == PVM_M_RESUME) {
            /* Memory the application unmapped must leave every shadow (TLB) at once. */
            uint64_t gen = __atomic_load_n(&v->vm->regions_gen, __ATOMIC_ACQUIRE);
            if (gen != nv->regions_gen) {
                nv->regions_gen = gen;
                pvm_shadow_flush_all(nv->shadow);
            }
            unsigned slot = pvm_shadow_activate(nv->shadow, c->cr3, c->mode == PVM_MODE_USER);
            int rc = activate_slot(nv, slot, err, sizeof(err));
            if (rc < 0)
                return fatal(nv, exit, rc, "starting a stub process: %s", err);
            struct nstub_regs regs;
            struct nstub_trap trap;
            regs_to_stub(c, &regs);
            __atomic_store_n(&nv->running_slot, (int)slot, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&nv->kick_pending, __ATOMIC_SEQ_CST) ||
                __atomic_load_n(&nv->attention, __ATOMIC_SEQ_CST)) {
                __atomic_store_n(&nv->running_slot, -1, __ATOMIC_SEQ_CST);
                continue;
            }
            pf_prefetch(nv);
            bool fast = setup_fast(nv, slot);
            if (fast)
                irq_hand_over(nv, slot);
            pvm__mem_leave(v->vm); /* guest code runs: pvm_vm_free_memory() may proceed */
            rc = nstub_run(nv->stubs[slot], &regs, &trap);
            pvm__mem_enter(v->vm);
            __atomic_store_n(&nv->running_slot, -1, __ATOMIC_SEQ_CST);
            if (fast) /* before anything looks at the model: its pending interrupts are exact again */
                irq_take_back(nv, slot);
            if (rc < 0)
                return fatal(nv, exit, rc, "stub run failed: %s", pvm_last_error());
            struct nstub_fast_result fr;
            nstub_fast_result(nv->stubs[slot], &fr);
            nv->fast_events += fr.events;
            nv->fast_irqs += fr.irqs;
            if (fr.nmi_unmasked) /* §5.8: a fast ERETS released the NMI mask */
                c->nmi_masked = false;
            if (trap.kind == NSTUB_TRAP_DIED)
                return fatal(nv, exit, PVM_EINTERNAL, "stub process for vCPU %u: %s", v->id, trap.msg);
            regs_from_stub(nv, &regs);
            bool provider_error = false;
            if (fr.msr_changed && apply_fast_msrs(nv, &fr) == PVM_M_SHUTDOWN)
                r = PVM_M_SHUTDOWN;
            else
                r = handle_trap(nv, &trap, exit, &provider_error);
            if (provider_error)
                return fatal(nv, exit, PVM_EINTERNAL, "shadow MMU could not install a mapping for 0x%llx",
                             (unsigned long long)trap.cr2);
        }
        switch (r) {
        case PVM_M_RESUME:
        case PVM_M_HALT:
            continue;
        case PVM_M_SHUTDOWN:
            nv->fatal = c->exit;
            nv->dead = true;
            *exit = c->exit;
            return 0;
        case PVM_M_EXIT: {
            pvm_vm *vm = v->vm;
            if (c->exit.reason == PVM_EXIT_HYPERCALL && vm->hostcall &&
                c->exit.u.hypercall.nr >= PVM_HOSTCALL_BASE &&
                c->exit.u.hypercall.nr - PVM_HOSTCALL_BASE <= UINT32_MAX) {
                uint64_t ret = c->exit.u.hypercall.nr;
                if (vm->hostcall(vm->hostcall_opaque, v, (uint32_t)(c->exit.u.hypercall.nr - PVM_HOSTCALL_BASE),
                                 c->exit.u.hypercall.args, &ret) == 0) {
                    c->exit.u.hypercall.ret = ret;
                    pvm_m_complete(c, &c->exit);
                    continue;
                }
            }
            *exit = c->exit;
            return 0;
        }
        }
    }
}

/* ---- state accessors ------------------------------------------------------ */

static int native_get_regs(pvm_vcpu *v, struct pvm_regs *r)
{
    const struct pvm_cpu *c = &nv_of(v)->cpu;
    r->rax = c->gpr[PVM_RAX]; r->rbx = c->gpr[PVM_RBX]; r->rcx = c->gpr[PVM_RCX];
    r->rdx = c->gpr[PVM_RDX]; r->rsi = c->gpr[PVM_RSI]; r->rdi = c->gpr[PVM_RDI];
    r->rsp = c->gpr[PVM_RSP]; r->rbp = c->gpr[PVM_RBP];
    r->r8 = c->gpr[PVM_R8]; r->r9 = c->gpr[PVM_R9]; r->r10 = c->gpr[PVM_R10]; r->r11 = c->gpr[PVM_R11];
    r->r12 = c->gpr[PVM_R12]; r->r13 = c->gpr[PVM_R13]; r->r14 = c->gpr[PVM_R14]; r->r15 = c->gpr[PVM_R15];
    r->rip = c->rip;
    r->rflags = c->rflags;
    return 0;
}

static int native_set_regs(pvm_vcpu *v, const struct pvm_regs *r)
{
    struct native_vcpu *nv = nv_of(v);
    struct pvm_cpu *c = &nv->cpu;
    c->gpr[PVM_RAX] = r->rax; c->gpr[PVM_RBX] = r->rbx; c->gpr[PVM_RCX] = r->rcx;
    c->gpr[PVM_RDX] = r->rdx; c->gpr[PVM_RSI] = r->rsi; c->gpr[PVM_RDI] = r->rdi;
    c->gpr[PVM_RSP] = r->rsp; c->gpr[PVM_RBP] = r->rbp;
    c->gpr[PVM_R8] = r->r8; c->gpr[PVM_R9] = r->r9; c->gpr[PVM_R10] = r->r10; c->gpr[PVM_R11] = r->r11;
    c->gpr[PVM_R12] = r->r12; c->gpr[PVM_R13] = r->r13; c->gpr[PVM_R14] = r->r14; c->gpr[PVM_R15] = r->r15;
    c->rip = r->rip;
    /* §5.7: a hypervisor RFLAGS write in smod is mirrored into PVCS.IF. */
    pvm_m_set_rflags(c, &nv->mem, r->rflags);
    return 0;
}

static int native_get_sregs(pvm_vcpu *v, struct pvm_sregs *s)
{
    const struct pvm_cpu *c = &nv_of(v)->cpu;
    memset(s, 0, sizeof(*s));
    s->mode = c->mode;
    if (c->mode == PVM_MODE_SUPERVISOR) {
        /* §1.2: guest-visible smod CS/SS are emulated from STAR. */
        s->cs = (uint16_t)((c->msr_star >> 32) & ~3ull);
        s->ss = (uint16_t)(s->cs + 8);
    } else {
        /* §1.2 decision: report the real selectors, not the RFC's GDT index. */
        s->cs = c->cs;
        s->ss = c->ss;
    }
    s->ds = c->ds; s->es = c->es; s->fs = c->fs; s->gs = c->gs;
    s->fs_base = c->fs_base;
    s->gs_base = c->gs_base;
    s->cr0 = c->cr0; s->cr2 = c->cr2; s->cr3 = c->cr3; s->cr4 = c->cr4; s->efer = c->efer;
    return 0;
}

static int native_set_sregs(pvm_vcpu *v, const struct pvm_sregs *s)
{
    struct pvm_cpu *c = &nv_of(v)->cpu;
    if (s->mode != PVM_MODE_SUPERVISOR && s->mode != PVM_MODE_USER)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_sregs: mode %u is neither smod nor umod", s->mode);
    if (s->mode == PVM_MODE_USER && s->cs != PVM_USER_CS && s->cs != PVM_USER32_CS)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_sregs: umod CS must be 0x33 or 0x23, not 0x%x", s->cs);
    c->mode = s->mode;
    c->cs = s->mode == PVM_MODE_USER ? s->cs : PVM_USER_CS;
    c->ss = PVM_USER_DS;
    c->ds = s->ds; c->es = s->es; c->fs = s->fs; c->gs = s->gs;
    c->fs_base = s->fs_base;
    c->gs_base = s->gs_base;
    c->cr0 = s->cr0; c->cr2 = s->cr2; c->cr3 = s->cr3; c->cr4 = s->cr4; c->efer = s->efer;
    return 0;
}

static int native_get_msr(pvm_vcpu *v, uint32_t index, uint64_t *value)
{
    struct native_vcpu *nv = nv_of(v);
    if (pvm_m_rdmsr(&nv->cpu, &nv->mem, index, value, true) < 0)
        return pvm__error(PVM_ENOENT, "pvm_vcpu_get_msr: MSR 0x%x is not supported", index);
    return 0;
}

static int native_set_msr(pvm_vcpu *v, uint32_t index, uint64_t value)
{
    struct native_vcpu *nv = nv_of(v);
    if (pvm_m_wrmsr(&nv->cpu, &nv->mem, index, value, true) < 0)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_set_msr: MSR 0x%x is not supported or rejects 0x%llx",
                          index, (unsigned long long)value);
    return 0;
}

static int native_set_cpuid(pvm_vcpu *v, const struct pvm_cpuid_entry *e, size_t n)
{
    int rc = pvm_m_set_cpuid(&nv_of(v)->cpu, e, n);
    if (rc < 0)
        return pvm__error(rc, "pvm_vcpu_set_cpuid: table rejected");
    nv_of(v)->cpuid_gen++; /* the stubs' copies are stale (setup_fast) */
    return 0;
}

static int native_translate(pvm_vcpu *v, uint64_t gva, uint64_t *gpa)
{
    struct native_vcpu *nv = nv_of(v);
    struct pvm_walk_result res;
    refresh_env(nv);
    if (pvm_mmu_walk(&nv->env, nv->cpu.cr3, gva, 0, false, &res) != PVM_WALK_OK)
        return PVM_EFAULT;
    *gpa = res.gpa;
    return 0;
}

const struct pvm_backend_ops pvm_native_backend = {
    .name = "native",
    .id = PVM_BACKEND_NATIVE,
    .caps = 0,
    .probe = native_probe,
    .vm_init = native_vm_init,
    .vm_fini = native_vm_fini,
    .vcpu_init = native_vcpu_init,
    .vcpu_fini = native_vcpu_fini,
    .run = native_run,
    .get_regs = native_get_regs,
    .set_regs = native_set_regs,
    .get_sregs = native_get_sregs,
    .set_sregs = native_set_sregs,
    .get_msr = native_get_msr,
    .set_msr = native_set_msr,
    .inject = native_inject,
    .kick = native_kick,
    .region_del = native_region_del,
    .set_cpuid = native_set_cpuid,
    .translate = native_translate,
    .linear_range = native_linear_range,
    .lower_half = native_lower_half,
};
