/*
 * lib/hv/run.c - the run loop of the hypervisor core: deliver what is
 * pending, pick the address-space slot for (CR3, mode), let the cpu provider
 * run guest code until a trap, hand the trap to the machine model and the
 * shadow MMU, and return what the application must see.
 */
#include <errno.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hv.h"

bool pvm_hv_irqs_pending(const struct pvm_cpu *c)
{
    return c->irq_pending[0] | c->irq_pending[1] | c->irq_pending[2] | c->irq_pending[3];
}

/*
 * Anything the model must deliver first?  Interrupts held back by IF = 0
 * (IP is set: pvm_m_check_events ran) are not.
 */
bool pvm_hv_events_pending(struct pvm_hv_vcpu *hv)
{
    const struct pvm_cpu *c = &hv->cpu;
    return c->exc_pending || c->nmi_pending || (pvm_hv_irqs_pending(c) && pvm_m_irq_enabled(c, &hv->mem));
}

/* Move injected events into the model's pending state (vCPU thread only). */
static void drain_inbox(struct pvm_hv_vcpu *hv)
{
    if (!__atomic_exchange_n(&hv->attention, 0, __ATOMIC_SEQ_CST))
        return;
    pthread_mutex_lock(&hv->inbox_lock);
    unsigned keep = 0;
    for (unsigned i = 0; i < hv->nr_inbox; i++)
        if (pvm_m_queue_event(&hv->cpu, &hv->inbox[i]) == PVM_EBUSY)
            hv->inbox[keep++] = hv->inbox[i]; /* an exception is still pending: keep it */
    hv->nr_inbox = keep;
    if (keep)
        __atomic_store_n(&hv->attention, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&hv->inbox_lock);
}

/* Wait while halted until an event or a kick arrives. */
static void halt_wait(struct pvm_hv_vcpu *hv)
{
    uint32_t seen = __atomic_load_n(&hv->wake, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&hv->attention, __ATOMIC_SEQ_CST) || __atomic_load_n(&hv->kick_pending, __ATOMIC_SEQ_CST))
        return;
    syscall(SYS_futex, &hv->wake, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}

/*
 * After halt_wait: no event thread may pre-wake a stub from now on, and one
 * that is doing so (halt_slot -2, vcpu.c wake_vcpu) finishes first: a stub
 * may be replaced before the next run (provider.discard).
 */
static void halt_end(struct pvm_hv_vcpu *hv)
{
    for (;;) {
        int v = __atomic_load_n(&hv->halt_slot, __ATOMIC_SEQ_CST);
        if (v == -2) {
            __builtin_ia32_pause();
            continue;
        }
        if (__atomic_compare_exchange_n(&hv->halt_slot, &v, -1, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return;
    }
}

static int fatal(struct pvm_hv_vcpu *hv, struct pvm_exit *exit, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fatal(struct pvm_hv_vcpu *hv, struct pvm_exit *exit, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pvm_m_internal_exit(&hv->fatal, code, fmt, ap);
    va_end(ap);
    hv->dead = true;
    *exit = hv->fatal;
    pvm__log(PVM_LOG_ERROR, "vCPU %u: %s", hv->v->id, hv->fatal.u.internal.msg);
    return 0;
}

static void regs_to_provider(const struct pvm_cpu *c, struct pvm_hv_regs *r)
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

static void regs_from_provider(struct pvm_hv_vcpu *hv, const struct pvm_hv_regs *r)
{
    struct pvm_cpu *c = &hv->cpu;
    memcpy(c->gpr, r->gpr, sizeof(c->gpr));
    c->rip = r->rip;
    c->fs_base = r->fs_base;
    c->gs_base = r->gs_base;
    /*
     * A far transfer to another DPL-3 selector succeeds in hardware (0x23 is
     * 32-bit user code): the model must see it, §10.18 (smod on any CS but
     * __USER_CS triple-faults at this exit; umod may run 32-bit code).
     */
    c->cs = r->cs;
    c->ss = r->ss;
    /* §1.2: the guest-visible IF is virtual: re-read it from the PVCS after every exit in smod. */
    uint64_t fl = r->rflags & ~PVM_RFLAGS_IF;
    if (c->mode == PVM_MODE_USER || pvm_m_irq_enabled(c, &hv->mem))
        fl |= PVM_RFLAGS_IF;
    c->rflags = fl;
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
static void pf_note(struct pvm_hv_vcpu *hv, uint64_t cr2, uint32_t access)
{
    const struct pvm_cpu *c = &hv->cpu;
    if (!hv->prefetch_on)
        return;
    hv->pf.pending = true;
    hv->pf.mode = c->mode;
    hv->pf.access = access & (PVM_PFEC_W | PVM_PFEC_I);
    hv->pf.cr2 = cr2;
    hv->pf.cr3 = c->cr3;
    hv->pf.rip = c->rip;
    hv->pf.rflags = c->rflags;
    hv->pf.fs_base = c->fs_base;
    hv->pf.gs_base = c->gs_base;
    memcpy(hv->pf.gpr, c->gpr, sizeof(hv->pf.gpr));
}

/* Before resuming in the active slot (pvm_shadow_activate done). */
static void pf_prefetch(struct pvm_hv_vcpu *hv)
{
    const struct pvm_cpu *c = &hv->cpu;
    if (!hv->pf.pending || c->mode != hv->pf.mode)
        return;
    if (c->rip != hv->pf.rip || c->cr3 != hv->pf.cr3 || c->rflags != hv->pf.rflags ||
        c->fs_base != hv->pf.fs_base || c->gs_base != hv->pf.gs_base ||
        memcmp(c->gpr, hv->pf.gpr, sizeof(c->gpr))) {
        /* Back in user mode somewhere else: that fault is not being retried now. */
        if (c->mode == PVM_MODE_USER)
            hv->pf.pending = false;
        return;
    }
    hv->pf.pending = false;
    if (c->halted || pvm_hv_events_pending(hv) || pvm_hv_irqs_pending(c) ||
        __atomic_load_n(&hv->attention, __ATOMIC_SEQ_CST) || __atomic_load_n(&hv->kick_pending, __ATOMIC_SEQ_CST))
        return;
    pvm_hv_refresh_env(hv);
    if (pvm_shadow_prefetch(hv->shadow, &hv->env, hv->pf.cr2, hv->pf.access))
        hv->prefetches++;
}

/*
 * Before resuming (or ahead, pvm_hv_warm_vcpu): when nothing will be delivered first, the guest's next
 * access is the fetch at RIP.  If the active slot has no mapping there (a new
 * vCPU, a new address space, after a flush) that fetch would fault in
 * hardware just to install it: install it now (pvm_shadow_prefetch: as the
 * fetch's own walk would, A bits only).  A fresh VM's first run saves one trap
 * round trip this way.
 */
void pvm_hv_fetch_prefetch(struct pvm_hv_vcpu *hv)
{
    const struct pvm_cpu *c = &hv->cpu;
    uint64_t start, len;
    unsigned prot;
    if (!hv->prefetch_on || c->rip < hv->p->window_lo || c->rip >= hv->p->window_hi ||
        pvm_shadow_lookup(hv->shadow, c->rip, &start, &len, &prot))
        return;
    if (c->halted || pvm_hv_events_pending(hv) || __atomic_load_n(&hv->attention, __ATOMIC_SEQ_CST) ||
        __atomic_load_n(&hv->kick_pending, __ATOMIC_SEQ_CST))
        return;
    pvm_hv_refresh_env(hv);
    if (pvm_shadow_prefetch(hv->shadow, &hv->env, c->rip, PVM_PFEC_I))
        hv->fetch_prefetches++;
    /*
     * The stack is the next access of most first instructions (a call's or a
     * prologue's push): its page too, as a write, where the guest's tables
     * already hold it dirty (pvm_shadow_prefetch sets no D bit ahead).  Only
     * with the fetch's: a fresh address space, so at most one walk more.
     */
    uint64_t sp = c->gpr[PVM_RSP] - 8;
    if (sp >= hv->p->window_lo && sp < hv->p->window_hi && !pvm_shadow_lookup(hv->shadow, sp, &start, &len, &prot) &&
        pvm_shadow_prefetch(hv->shadow, &hv->env, sp, PVM_PFEC_W))
        hv->fetch_prefetches++;
}

static enum pvm_m_result handle_fault(struct pvm_hv_vcpu *hv, const struct pvm_hv_trap *t, bool *provider_error,
                                      bool *retry)
{
    struct pvm_cpu *c = &hv->cpu;
    if (t->vector == PVM_VEC_INT80)
        return pvm_m_int80(c, &hv->mem);
    if (t->vector == PVM_VEC_PF) {
        uint32_t access = (t->error_code & (PVM_PFEC_W | PVM_PFEC_I)) | (c->mode == PVM_MODE_USER ? PVM_PFEC_U : 0);
        uint32_t pfec = 0;
        uint64_t gpa = 0;
        pvm_hv_refresh_env(hv);
        if (t->cr2 < hv->p->window_lo || t->cr2 >= hv->p->window_hi) {
            /* Outside what the provider can map: to the guest it is an unmapped address. */
            return pvm_m_exception(c, &hv->mem, PVM_VEC_PF, true, access, t->cr2);
        }
        if (hv->pf.mode == c->mode)
            hv->pf.pending = false; /* a retry that faulted after all (or another fault) */
        switch (pvm_shadow_fault(hv->shadow, &hv->env, t->cr2, access, &pfec, &gpa)) {
        case PVM_SHADOW_FIXED:
            *retry = true; /* the instruction did not run: not a completed single step */
            return PVM_M_RESUME;
        case PVM_SHADOW_GUEST_PF:
            pf_note(hv, t->cr2, access);
            return pvm_m_exception(c, &hv->mem, PVM_VEC_PF, true, pfec, t->cr2);
        case PVM_SHADOW_MMIO:
            return pvm_m_mmio(c, &hv->mem, gpa, (access & PVM_PFEC_W) != 0);
        default:
            *provider_error = true;
            return PVM_M_SHUTDOWN;
        }
    }
    unsigned v = t->vector;
    bool has_err = v == PVM_VEC_DF || (v >= PVM_VEC_TS && v <= PVM_VEC_GP) || v == PVM_VEC_AC || v == 21;
    return pvm_m_exception(c, &hv->mem, v, has_err, has_err ? t->error_code : 0, 0);
}

static enum pvm_m_result handle_trap(struct pvm_hv_vcpu *hv, const struct pvm_hv_trap *t, bool *provider_error,
                                     bool *retry)
{
    switch (t->kind) {
    case PVM_HV_TRAP_SYSCALL:
        return pvm_m_syscall(&hv->cpu, &hv->mem);
    case PVM_HV_TRAP_FAULT:
        return handle_fault(hv, t, provider_error, retry);
    case PVM_HV_TRAP_KICK:
    default:
        *retry = true;
        return PVM_M_RESUME;
    }
}

/*
 * Events the provider delivered itself (pvm_hv_trap.events): the model's
 * side of them, as its own delivery would have left it, before the
 * registers are read back (their IF depends on the mode).  True if the mode
 * changed: the trap came from the other slot.
 */
static bool apply_provider_events(struct pvm_hv_vcpu *hv, const struct pvm_hv_trap *t)
{
    struct pvm_cpu *c = &hv->cpu;
    c->msr_supervisor_rsp = t->supervisor_rsp; /* §6.2: ERETU saves RSP there */
    if (t->nmi_unmasked)
        c->nmi_masked = false;                 /* §10.31: ERETU and ERETS */
    if (!(t->switches & 1))
        return false;
    /* §1.3: every switch toggles the mode and swaps CR3 with SWITCH_CR3 (§10.25: no flush). */
    uint64_t cr3 = c->cr3;
    c->mode = c->mode == PVM_MODE_USER ? PVM_MODE_SUPERVISOR : PVM_MODE_USER;
    c->cr3 = c->msr_switch_cr3;
    c->msr_switch_cr3 = cr3;
    return true;
}

/* A PVM_EXIT_DEBUG for @vector at the current RIP (pvm_vcpu_set_guest_debug). */
static void debug_exit(struct pvm_cpu *c, unsigned vector)
{
    memset(&c->exit, 0, sizeof(c->exit));
    c->exit.reason = PVM_EXIT_DEBUG;
    c->exit.u.debug.vector = vector;
    c->exit.u.debug.rip = c->rip;
}

/*
 * Stops between address spaces (docs/design.md "Stops between address
 * spaces").  A provider whose trap reports the guest can forge (native: the
 * stub's control page) may still be running the guest in the slot that
 * "reported".  Guest code in a user address space must never run beside
 * other guest code of its vCPU: its kernel may unmap a page there, flush and
 * reuse it, and the user's stale mapping would reach it.  So before guest
 * code runs in @slot, every other user slot that ran since it was confirmed
 * is confirmed stopped, with one exception: the slot whose event this run
 * delivers to its kernel (@slot supervisor, ran_slot that user slot).  Its
 * kernel cannot reuse a page the user maps without a flush first, and a
 * flush is a trap: the next resume confirms it then; an ERETU straight back
 * (the common user syscall) costs nothing.  A user slot resumed in
 * supervisor mode (the shadow gave its root to the kernel) is confirmed
 * first too: its forged report must not receive the kernel's mappings.  And
 * every other slot's queued unmaps are applied, verified, first (below).
 */
_Static_assert(PVM_SHADOW_MAX_ROOTS <= 32, "one bit per slot in pvm_hv_vcpu.unconfirmed");

static bool confirm_slot(struct pvm_hv_vcpu *hv, unsigned s, char *err, size_t errlen)
{
    if (hv->p->stopped(hv, s, err, errlen) < 0)
        return false;
    hv->unconfirmed &= ~(1u << s);
    return true;
}

static bool others_stopped(struct pvm_hv_vcpu *hv, unsigned slot, bool user, char *err, size_t errlen)
{
    if (!hv->p->stopped)
        return true;
    uint32_t m = hv->unconfirmed & hv->slot_user;
    if (user)
        m &= ~(1u << slot);
    else if (hv->ran_slot >= 0 && (unsigned)hv->ran_slot != slot)
        m &= ~(1u << hv->ran_slot);   /* the event being delivered: its free leg */
    for (unsigned s = 0; m; s++, m >>= 1)
        if ((m & 1) && !confirm_slot(hv, s, err, errlen))
            return false;
    /*
     * A confirm proves a sleeper, not whose: guest code can sleep on its
     * stub's word itself and, woken by a resume, skip the unmaps queued with
     * it.  So another slot's dropped mappings are applied (verified) before
     * guest code runs here: its kernel cannot reuse a page before it runs.
     * The woken slot is unconfirmed again.
     */
    if (hv->p->sync)
        for (unsigned s = 0; s < PVM_SHADOW_MAX_ROOTS; s++) {
            if (s == slot)
                continue;
            int r = hv->p->sync(hv, s, err, errlen);
            if (r < 0)
                return false;
            if (r > 0)
                hv->unconfirmed |= 1u << s;
        }
    return true;
}

/* Run guest code once: the provider's part of one loop turn. */
static enum pvm_m_result run_guest(struct pvm_hv_vcpu *hv, struct pvm_exit *exit, int *fatal_rc)
{
    const struct pvm_cpu_provider *p = hv->p;
    struct pvm_cpu *c = &hv->cpu;
    pvm_vm *vm = hv->v->vm;
    char err[160];

    /* Memory the application unmapped must leave every shadow (TLB) at once. */
    uint64_t gen = __atomic_load_n(&vm->regions_gen, __ATOMIC_ACQUIRE);
    if (gen != hv->regions_gen) {
        hv->regions_gen = gen;
        int d = p->discard ? p->discard(hv) : 0;
        if (d < 0) {
            *fatal_rc = fatal(hv, exit, d, "%s: vCPU %u: discarding its address spaces failed", p->name, hv->v->id);
            return PVM_M_EXIT;
        }
        if (d > 0)
            hv->unconfirmed = 0;   /* the stubs that ran are gone */
        pvm_shadow_flush_all(hv->shadow);
    }
    unsigned slot = pvm_shadow_activate(hv->shadow, c->cr3, c->mode == PVM_MODE_USER);
    int rc = p->activate(hv, slot, err, sizeof(err));
    if (rc < 0) {
        *fatal_rc = fatal(hv, exit, rc, "%s: starting guest code: %s", p->name, err);
        return PVM_M_EXIT;
    }
    struct pvm_hv_regs regs;
    struct pvm_hv_trap trap;
    regs_to_provider(c, &regs);
    trap.events = 0;
    trap.ran_slots = 0;
    /* pvm_vcpu_set_guest_debug single-step: TF for the provider's run only, the guest keeps its own. */
    const uint64_t guest_tf = c->rflags & PVM_RFLAGS_TF;
    if (hv->dbg.step)
        regs.rflags |= PVM_RFLAGS_TF;
    __atomic_store_n(&hv->running_slot, (int)slot, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&hv->kick_pending, __ATOMIC_SEQ_CST) || __atomic_load_n(&hv->attention, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&hv->running_slot, -1, __ATOMIC_SEQ_CST);
        return PVM_M_RESUME;
    }
    /* A provider may write the PVCS itself (the native fast path): after a snapshot it counts as written. */
    if (pvm__dirty_on(vm) && c->msr_vcpu_struct &&
        !pvm__dirty_mark_gpa(vm, c->msr_vcpu_struct & ~PVM_PAGE_MASK, PVM_PAGE_SIZE)) {
        __atomic_store_n(&hv->running_slot, -1, __ATOMIC_SEQ_CST);
        *fatal_rc = fatal(hv, exit, PVM_ENOMEM, "vCPU %u: %s", hv->v->id, pvm_last_error());
        return PVM_M_EXIT;
    }
    /* Guest code must not see a snapshot page the VM has made its own since (cow.c). */
    if (vm->cow)
        pvm_hv_cow_flush(hv);
    pf_prefetch(hv);
    pvm_hv_fetch_prefetch(hv);
    const bool user = c->mode == PVM_MODE_USER;
    if (!others_stopped(hv, slot, user, err, sizeof(err))) {
        __atomic_store_n(&hv->running_slot, -1, __ATOMIC_SEQ_CST);
        *fatal_rc = fatal(hv, exit, PVM_EINTERNAL, "%s: vCPU %u: %s", p->name, hv->v->id, err);
        return PVM_M_EXIT;
    }
    if (p->prepare)
        p->prepare(hv, slot);
    pvm__mem_leave(vm); /* guest code runs: pvm_vm_free_memory() may proceed */
    rc = p->run(hv, slot, &regs, &trap);
    pvm__mem_enter(vm);
    __atomic_store_n(&hv->running_slot, -1, __ATOMIC_SEQ_CST);
    hv->ran_slot = (int)slot;
    hv->unconfirmed |= 1u << slot;
    if (user)
        hv->slot_user |= 1u << slot;
    else
        hv->slot_user &= ~(1u << slot);
    hv->unconfirmed |= trap.ran_slots;
    hv->slot_user &= ~trap.ran_slots;
    if (rc < 0) {
        *fatal_rc = fatal(hv, exit, rc, "%s: run failed: %s", p->name, pvm_last_error());
        return PVM_M_EXIT;
    }
    if (trap.kind == PVM_HV_TRAP_DIED) {
        *fatal_rc = fatal(hv, exit, PVM_EINTERNAL, "%s: vCPU %u: %s", p->name, hv->v->id, trap.msg);
        return PVM_M_EXIT;
    }
    if (trap.events && apply_provider_events(hv, &trap))
        hv->ran_slot = (int)(slot = pvm_shadow_activate(hv->shadow, c->cr3, c->mode == PVM_MODE_USER));
    regs_from_provider(hv, &regs);
    if (hv->dbg.step) {
        c->rflags = (c->rflags & ~PVM_RFLAGS_TF) | guest_tf;
        /* The step's own #DB (a trap: RIP is past the instruction) is the debugger's, never the guest's. */
        if (trap.kind == PVM_HV_TRAP_FAULT && trap.vector == PVM_VEC_DB) {
            debug_exit(c, PVM_VEC_DB);
            return PVM_M_EXIT;
        }
    }
    if (p->finish && p->finish(hv, slot, &trap) == PVM_M_SHUTDOWN)
        return PVM_M_SHUTDOWN;
    bool provider_error = false, retry = false;
    enum pvm_m_result r = handle_trap(hv, &trap, &provider_error, &retry);
    if (provider_error) {
        *fatal_rc = fatal(hv, exit, PVM_EINTERNAL, "shadow MMU could not install a mapping for 0x%llx",
                          (unsigned long long)trap.cr2);
        return PVM_M_EXIT;
    }
    /* An exit to the application completes its instruction on the next run (step_done there). */
    if (hv->dbg.step && !retry && (r == PVM_M_RESUME || r == PVM_M_HALT))
        hv->dbg.step_done = true;
    return r;
}

/*
 * Before the application sees guest state (an exit, a host call): the guest
 * must really be stopped (pvm_cpu_provider.stopped).  False: the vCPU is lost
 * and *exit says why.
 */
static bool guest_stopped(struct pvm_hv_vcpu *hv, struct pvm_exit *exit)
{
    char err[160];
    if (!hv->p->stopped)
        return true;
    /* Every slot that ran since its last confirm: a forged report elsewhere must not outlive the exit either. */
    for (unsigned s = 0, m = hv->unconfirmed; m; s++, m >>= 1)
        if ((m & 1) && !confirm_slot(hv, s, err, sizeof(err))) {
            fatal(hv, exit, PVM_EINTERNAL, "%s: vCPU %u: %s", hv->p->name, hv->v->id, err);
            return false;
        }
    hv->ran_slot = -1; /* confirmed: nothing ran since */
    return true;
}

static int run_loop(pvm_vcpu *v, struct pvm_exit *exit)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    struct pvm_cpu *c = &hv->cpu;

    if (hv->dead) {
        *exit = hv->fatal;
        return 0;
    }
    if (c->pending_exit != PVM_EXIT_NONE) {
        pvm_m_complete(c, exit);
        if (hv->dbg.step)
            hv->dbg.step_done = true; /* the stepped instruction ended in that exit */
    }

    for (;;) {
        enum pvm_m_result r;
        if (__atomic_exchange_n(&hv->kick_pending, 0, __ATOMIC_SEQ_CST)) {
            memset(exit, 0, sizeof(*exit));
            exit->reason = PVM_EXIT_KICKED;
            return 0;
        }
        if (hv->dbg.step_done) {
            hv->dbg.step_done = false;
            debug_exit(c, PVM_VEC_DB);
            *exit = c->exit;
            return 0;
        }
        drain_inbox(hv);
        r = pvm_m_check_events(c, &hv->mem);
        if (r == PVM_M_RESUME && c->halted) {
            if (!pvm_m_irq_enabled(c, &hv->mem) && !c->nmi_pending && !c->exc_pending &&
                !__atomic_load_n(&hv->attention, __ATOMIC_SEQ_CST)) {
                /* Only an NMI could wake it: hand the decision to the application. */
                c->halted = false;
                memset(exit, 0, sizeof(*exit));
                exit->reason = PVM_EXIT_HALT;
                return 0;
            }
            pvm__mem_leave(v->vm);
            __atomic_store_n(&hv->halt_slot, hv->ran_slot, __ATOMIC_SEQ_CST);
            halt_wait(hv);
            halt_end(hv);
            pvm__mem_enter(v->vm);
            continue;
        }
        if (r == PVM_M_RESUME) {
            int rc = 0;
            r = run_guest(hv, exit, &rc);
            if (r == PVM_M_EXIT && hv->dead)
                return rc;
        }
        switch (r) {
        case PVM_M_RESUME:
        case PVM_M_HALT:
            continue;
        case PVM_M_SHUTDOWN:
            hv->fatal = c->exit;
            hv->dead = true;
            *exit = c->exit;
            return 0;
        case PVM_M_EXIT: {
            pvm_vm *vm = v->vm;
            if (!guest_stopped(hv, exit))
                return 0;
            if (c->exit.reason == PVM_EXIT_HYPERCALL && vm->hostcall &&
                c->exit.u.hypercall.nr >= PVM_HOSTCALL_BASE &&
                c->exit.u.hypercall.nr - PVM_HOSTCALL_BASE <= UINT32_MAX) {
                uint64_t ret = c->exit.u.hypercall.nr;
                if (vm->hostcall(vm->hostcall_opaque, v, (uint32_t)(c->exit.u.hypercall.nr - PVM_HOSTCALL_BASE),
                                 c->exit.u.hypercall.args, &ret) == 0) {
                    c->exit.u.hypercall.ret = ret;
                    pvm_m_complete(c, &c->exit);
                    if (hv->dbg.step)
                        hv->dbg.step_done = true;
                    continue;
                }
            }
            *exit = c->exit;
            return 0;
        }
        }
    }
}

/* The run loop dereferences guest RAM only between provider runs: announce it (pvm_vm.mem_users). */
int pvm_hv_run(pvm_vcpu *v, struct pvm_exit *exit)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    pvm__mem_enter(v->vm);
    hv->ran_slot = -1;
    int rc = run_loop(v, exit);
    /* Every exit, not only the model's: HALT and KICKED show registers too. */
    if (rc == 0 && !hv->dead)
        guest_stopped(hv, exit);
    pvm__mem_leave(v->vm);
    return rc;
}

int pvm_hv_set_guest_debug(pvm_vcpu *v, const struct pvm_guest_debug *dbg)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    hv->dbg.step = (dbg->flags & PVM_GUEST_DEBUG_SINGLESTEP) != 0;
    hv->dbg.step_done = false;
    hv->dbg.catch_mask[PVM_MODE_SUPERVISOR] = dbg->catch_smod;
    hv->dbg.catch_mask[PVM_MODE_USER] = dbg->catch_umod;
    return 0;
}
