/*
 * lib/hv/hv.h - the hypervisor core and the cpu-provider contract.
 *
 * Software backends share one hypervisor: the machine model (lib/machine/)
 * and the shadow MMU driven from here, with the asynchronous paths (inject,
 * kick, halt waits), host calls, the register and MSR accessors and the run
 * loop.  What differs between backends is only how guest code runs: a "cpu
 * provider" runs a register file in an address-space slot (one shadow root)
 * until the next trap.  A backend is then its ops table, made of this core's
 * functions (PVM_HV_BACKEND_OPS) and its provider:
 *
 *     native  - stub processes at host ring 3 (lib/backends/native/)
 *     kvm     - a /dev/kvm vCPU at CPL 3 with a one-instruction trampoline
 *     kmod    - the kmod/ world-switch module
 *
 * The core never names a provider.
 */
#ifndef PVM_HV_H
#define PVM_HV_H

#include <stdbool.h>
#include <stdint.h>

#include "core/backend.h"
#include "machine/machine.h"
#include "machine/mmu.h"

/* Guest register file as a provider runs it (hardware view: IF of the host, real selectors). */
struct pvm_hv_regs {
    uint64_t gpr[16];   /* x86 encoding order: rax rcx rdx rbx rsp rbp rsi rdi r8..r15 */
    uint64_t rip, rflags;
    uint64_t fs_base, gs_base;
    uint16_t cs, ss;    /* 0x33/0x2b, or 0x23 for 32-bit user code */
};

enum pvm_hv_trap_kind {
    PVM_HV_TRAP_SYSCALL = 1, /* a 64-bit SYSCALL: rip after it */
    PVM_HV_TRAP_FAULT = 2,   /* vector/error_code/cr2; vector 0x80 = INT 0x80, rip after it */
    PVM_HV_TRAP_KICK = 3,    /* interrupted by kick(): resume after a look at the inbox */
    PVM_HV_TRAP_DIED = 4,    /* the provider lost the vCPU; msg says how (fatal) */
};

struct pvm_hv_trap {
    uint32_t kind;        /* enum pvm_hv_trap_kind */
    uint32_t vector;
    uint32_t error_code;
    uint64_t cr2;
    /*
     * Events the provider delivered itself before this trap, where its
     * prepare() allowed them (kmod: PVM_KMOD_RUN_PVM), with the model's
     * effects on guest memory and the registers; the core applies the rest
     * to the model (per mode switch the mode and the CR3 swap; SUPERVISOR_RSP,
     * the NMI mask) and handles the trap in the slot it came from.  The core
     * zeroes events before run(); the rest counts only with events.
     */
    uint32_t events;
    uint32_t switches;        /* how many of them switched mode (user event, ERETU) */
    bool nmi_unmasked;        /* an ERETU or ERETS released the NMI mask */
    uint64_t supervisor_rsp;  /* MSR_PVM_SUPERVISOR_RSP after them */
    /*
     * Slots besides the one run() was given whose guest code may have run
     * during it (bit per slot; native: a kernel stub that answered user
     * SYSCALLs itself): the core confirms them stopped at the next exit.
     * They ran in supervisor mode.  Counts without events too.
     */
    uint32_t ran_slots;
    char msg[128];
};

struct pvm_hv_vcpu;

/*
 * A cpu provider.  Every op runs on the vCPU's thread unless it says
 * otherwise.  Slots are the shadow MMU's (mmu.h): 0..PVM_SHADOW_MAX_ROOTS-1,
 * each one address space holding only what map() put there.
 */
struct pvm_cpu_provider {
    const char *name;
    /* Guest-virtual addresses the provider can map: [window_lo, window_hi). */
    uint64_t window_lo, window_hi;
    /* Default MSR_PVM_LINEAR_ADDRESS_RANGE of a new vCPU. */
    uint64_t linear_range;

    /*
     * Optional: a VM was created (its memfd exists, no vCPU yet; 0 or
     * pvm__error()) / is going (every vCPU gone).  vm->bdata is the provider's.
     */
    int (*vm_init)(pvm_vm *vm);
    void (*vm_fini)(pvm_vm *vm);
    /* Required. */
    int (*vcpu_init)(struct pvm_hv_vcpu *hv);   /* sets hv->pdata; 0 or pvm__error() */
    void (*vcpu_fini)(struct pvm_hv_vcpu *hv);  /* also after a failed vcpu_init */
    /* Make @slot runnable (the one about to run); 0 or PVM_E* with a reason in err. */
    int (*activate)(struct pvm_hv_vcpu *hv, unsigned slot, char *err, size_t errlen);
    /*
     * Map [gva, gva+len) of @slot to guest RAM at @gpa (in region *r) with
     * PVM_PROT_*; with PVM_HV_PROT_SNAPSHOT (never with PVM_PROT_WRITE) from
     * the VM's shared snapshot memfd (pvm__cow_fd) at the same offsets.
     */
    int (*map)(struct pvm_hv_vcpu *hv, unsigned slot, uint64_t gva, uint64_t len, uint64_t gpa,
               const struct pvm_region *r, unsigned prot);
    int (*unmap)(struct pvm_hv_vcpu *hv, unsigned slot, uint64_t gva, uint64_t len);
    void (*reset)(struct pvm_hv_vcpu *hv, unsigned slot);      /* drop every mapping of @slot */
    /*
     * Run *regs in @slot until a trap: *regs gets the register file at the
     * trap, *trap what happened.  Called without guest RAM held (pvm__mem_leave).
     * Returns 0 (trap filled) or a negative code (misuse; fatal).
     */
    int (*run)(struct pvm_hv_vcpu *hv, unsigned slot, struct pvm_hv_regs *regs, struct pvm_hv_trap *trap);
    /* End run() on @slot promptly with PVM_HV_TRAP_KICK.  Any thread, async-signal-safe. */
    void (*kick)(struct pvm_hv_vcpu *hv, unsigned slot);
    /*
     * Optional: the vCPU waits halted and an event just woke its thread; the
     * guest resumes in @slot (where it halted) in a moment.  Start waking
     * what runs it now, so that its wake-up overlaps the thread's.  Any thread.
     */
    void (*halt_wake)(struct pvm_hv_vcpu *hv, unsigned slot);

    /*
     * Optional: make sure the guest that ran in @slot cannot run again until
     * the next run() there (a provider whose trap reports the guest could
     * forge).  The core asks before the application sees an exit or a host
     * call runs (every slot that ran since its last confirm), and before guest
     * code runs in another slot while a user slot is unconfirmed (run.c
     * others_stopped).  0, or <0 with a reason in err: the vCPU is then lost
     * (INTERNAL_ERROR).
     */
    int (*stopped)(struct pvm_hv_vcpu *hv, unsigned slot, char *err, size_t errlen);
    /*
     * Optional, with stopped(): apply the unmaps queued for @slot now, where
     * only the guest itself could skip them (a forged sleeper), verified; the
     * slot's guest is stopped.  The core calls it before guest code runs in
     * another slot.  1 applied, 0 none queued, <0 with a reason in err: the
     * vCPU is then lost.
     */
    int (*sync)(struct pvm_hv_vcpu *hv, unsigned slot, char *err, size_t errlen);
    /*
     * Optional: the application removed guest memory (regions_gen moved),
     * between runs.  Forget every slot's address space instead of waking
     * its guest with the unmaps (the guest's FPU state kept); the core then
     * flushes the shadow.  1 done (nothing ran since), 0 left to the flush,
     * <0 an error (the vCPU is lost).
     */
    int (*discard)(struct pvm_hv_vcpu *hv);

    /* Optional hooks (the native fast path). */
    /* Before run(), guest RAM held: what may the provider handle itself this run? */
    void (*prepare)(struct pvm_hv_vcpu *hv, unsigned slot);
    /*
     * After run() (the model holds the trap's registers): account for what
     * the provider handled itself and turn its trap into the contract's
     * terms.  Returns PVM_M_RESUME, or PVM_M_SHUTDOWN to stop the vCPU with
     * hv->cpu.exit.
     */
    enum pvm_m_result (*finish)(struct pvm_hv_vcpu *hv, unsigned slot, struct pvm_hv_trap *trap);
    /*
     * An interrupt injected while @hv may be running: true if the provider
     * took it (it then delivers it or hands it back before its run() returns).
     * Under hv->inbox_lock; any thread.
     */
    bool (*post_irq)(struct pvm_hv_vcpu *hv, unsigned vector);

    /*
     * Optional (snapshots; without them the core answers PVM_ENOTSUP): the
     * guest's FPU/SSE/AVX image, while the vCPU is stopped.  get_fpu: *len
     * is the buffer size in, the image size out (0: no state yet: the vCPU
     * never ran); PVM_ERANGE if the buffer is too small.  set_fpu: the image
     * for the next run (checked there against the host's: a mismatch loses
     * the vCPU with a reason); check_fpu: could this host take @len bytes
     * (0, or PVM_ENOTSUP with a reason)?
     */
    int (*get_fpu)(struct pvm_hv_vcpu *hv, void *buf, size_t *len);
    int (*set_fpu)(struct pvm_hv_vcpu *hv, const void *buf, size_t len);
    int (*check_fpu)(struct pvm_hv_vcpu *hv, size_t len);
};

/* Provider map flag: the pages come from the VM's shared snapshot (backend cap PVM_CAP_SHARED_SNAPSHOT). */
#define PVM_HV_PROT_SNAPSHOT 0x100u

#define PVM_HV_INBOX_MAX 64
/* Mapped guest-virtual space allowed per address space beyond twice the RAM (vcpu.c sh_map_budget). */
#define PVM_HV_MAP_SLACK (64ull << 20)

/* One vCPU of the core.  Providers read it; they write only what their ops say. */
struct pvm_hv_vcpu {
    pvm_vcpu *v;
    const struct pvm_cpu_provider *p;
    void *pdata;                 /* provider private */
    struct pvm_cpu cpu;          /* the machine model's state */
    struct pvm_mem mem;          /* its accessor of guest memory */
    struct pvm_walk_env env;
    struct pvm_shadow *shadow;
    uint64_t regions_gen;
    uint32_t cpuid_gen;          /* bumped when the CPUID table changes */

    /* Asynchronous side: inject() and kick() from other threads. */
    pthread_mutex_t inbox_lock;
    struct pvm_event inbox[PVM_HV_INBOX_MAX];
    unsigned nr_inbox;
    int kick_pending;            /* atomic */
    int attention;               /* atomic: inbox non-empty or kick */
    int running_slot;            /* atomic: slot running guest code, or -1 */
    int ran_slot;                /* slot of the last run() in this pvm_vcpu_run, or -1 */
    uint32_t unconfirmed;        /* slots that ran or woke since provider.stopped() last confirmed them (bit per slot) */
    uint32_t slot_user;          /* slots whose last run was in user mode */
    uint32_t wake;               /* futex word for halt waits */
    int halt_slot;               /* atomic: while halt_wait() sleeps, the slot the guest halted in; -2 being pre-woken; else -1 */

    bool dead;                   /* SHUTDOWN or INTERNAL_ERROR reached */
    struct pvm_exit fatal;

    /* The last guest #PF, for the prefetch when the guest retries it (run.c). */
    bool prefetch_on;            /* set by the provider's vcpu_init */
    uint64_t map_limit;          /* bytes one slot may have mapped, the provider's own limit (0: none); vcpu_init */
    uint64_t install_max;        /* most bytes one mapping may cover (a power of two; 0: no limit); vcpu_init */
    struct {
        bool pending;
        uint8_t mode;
        uint32_t access;         /* PVM_PFEC_W/I */
        uint64_t cr2, cr3, rip, rflags, fs_base, gs_base;
        uint64_t gpr[16];
    } pf;
    uint64_t prefetches;         /* shadow mappings installed ahead of a retry (statistics) */
    uint64_t fetch_prefetches;   /* ... and ahead of the fetch at RIP (run.c fetch_prefetch; statistics) */

    /*
     * pvm_vcpu_set_guest_debug (run.c).  Providers that handle guest events
     * themselves (the native fast path) must not while pvm_hv_debug_on().
     */
    struct {
        bool step;               /* TF for the guest's next instruction */
        bool step_done;          /* an instruction completed while stepping: exit at the loop top */
        uint32_t catch_mask[2];  /* by enum pvm_mode: vectors that exit instead of being delivered */
    } dbg;
};

/* Guest debugging on: every guest event must reach the core. */
static inline bool pvm_hv_debug_on(const struct pvm_hv_vcpu *hv)
{
    return hv->dbg.step || hv->dbg.catch_mask[0] || hv->dbg.catch_mask[1];
}

/* A 4-level canonical address (then also 5-level canonical). */
static inline bool pvm_hv_canonical48(uint64_t v)
{
    return (uint64_t)((int64_t)(v << 16) >> 16) == v;
}

static inline struct pvm_hv_vcpu *pvm_hv_of(const pvm_vcpu *v)
{
    return v->bdata;
}

/* ---- for providers (provider.c) ---------------------------------------------- */
/* Fill *t as PVM_HV_TRAP_DIED with the reason. */
void pvm_hv_trap_died(struct pvm_hv_trap *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A no-op handler for the kick signal @sig unless the application has one: 0 or PVM_EINTERNAL. */
int pvm_hv_install_kick_handler(int sig);
/* CLOCK_MONOTONIC in microseconds. */
double pvm_hv_now_us(void);
/* The median of t[0..n) (sorts it). */
double pvm_hv_median(double *t, size_t n);
/* What a guest event costs on the native backend here, estimated from a host getpid (auto's yardstick). */
double pvm_hv_native_event_us(void);

/* Copy guest-virtual memory with supervisor privilege (current CR3): 0 or -1. */
int pvm_hv_read_virt(struct pvm_hv_vcpu *hv, uint64_t gva, void *buf, size_t len);
/* Refresh the walk environment from the model (LA range, NXE) before a walk. */
void pvm_hv_refresh_env(struct pvm_hv_vcpu *hv);
/* Install the page of the fetch at RIP if it is the guest's next access and not mapped (run.c; slot active, RAM held). */
void pvm_hv_fetch_prefetch(struct pvm_hv_vcpu *hv);
/* Exceptions, NMIs or interrupts the model must deliver before guest code runs? */
bool pvm_hv_events_pending(struct pvm_hv_vcpu *hv);
bool pvm_hv_irqs_pending(const struct pvm_cpu *c);

/* ---- the core's backend ops (vcpu.c, run.c, state.c) ---------------------- */
int pvm_hv_vm_init(pvm_vm *vm);
void pvm_hv_vm_fini(pvm_vm *vm);
int pvm_hv_vcpu_init(pvm_vcpu *v);
void pvm_hv_vcpu_fini(pvm_vcpu *v);
int pvm_hv_run(pvm_vcpu *v, struct pvm_exit *exit);
int pvm_hv_get_regs(pvm_vcpu *v, struct pvm_regs *r);
int pvm_hv_set_regs(pvm_vcpu *v, const struct pvm_regs *r);
int pvm_hv_get_sregs(pvm_vcpu *v, struct pvm_sregs *s);
int pvm_hv_set_sregs(pvm_vcpu *v, const struct pvm_sregs *s);
int pvm_hv_get_msr(pvm_vcpu *v, uint32_t index, uint64_t *value);
int pvm_hv_set_msr(pvm_vcpu *v, uint32_t index, uint64_t value);
int pvm_hv_inject(pvm_vcpu *v, const struct pvm_event *ev);
int pvm_hv_kick(pvm_vcpu *v);
void pvm_hv_region_del(pvm_vm *vm, const struct pvm_region *r);
int pvm_hv_set_cpuid(pvm_vcpu *v, const struct pvm_cpuid_entry *e, size_t n);
int pvm_hv_translate(pvm_vcpu *v, uint64_t gva, uint64_t *gpa);
int pvm_hv_set_guest_debug(pvm_vcpu *v, const struct pvm_guest_debug *dbg);
uint64_t pvm_hv_linear_range(const pvm_vm *vm);
/* Snapshots (snapshot.c). */
#define PVM_HV_SNAP_FORMAT "pvm-hv/1"
int pvm_hv_snap_save_vcpu(pvm_vcpu *v, void **blob, size_t *len);
int pvm_hv_snap_load_vcpu(pvm_vcpu *v, const void *blob, size_t len, bool apply);
void pvm_hv_snap_flush(pvm_vm *vm, bool full);
int pvm_hv_pending_exit(pvm_vcpu *v, struct pvm_exit *e);
void pvm_hv_mem_changed(pvm_vm *vm);
int pvm_hv_warm_vcpu(pvm_vcpu *v);
/* Drop mappings of shared snapshot pages the VM copied since (vCPU thread, before guest code runs). */
void pvm_hv_cow_flush(struct pvm_hv_vcpu *hv);
void pvm_hv_lower_half(const pvm_vm *vm, uint64_t *lo, uint64_t *hi);

/* The ops of a backend that is this core over @provider (after .name, .id, .probe). */
#define PVM_HV_BACKEND_OPS(provider)                                                                   \
    .cpu = (provider), .vm_init = pvm_hv_vm_init, .vm_fini = pvm_hv_vm_fini,                           \
    .vcpu_init = pvm_hv_vcpu_init, .vcpu_fini = pvm_hv_vcpu_fini, .run = pvm_hv_run,                   \
    .get_regs = pvm_hv_get_regs, .set_regs = pvm_hv_set_regs, .get_sregs = pvm_hv_get_sregs,           \
    .set_sregs = pvm_hv_set_sregs, .get_msr = pvm_hv_get_msr, .set_msr = pvm_hv_set_msr,               \
    .inject = pvm_hv_inject, .kick = pvm_hv_kick, .region_del = pvm_hv_region_del,                     \
    .set_cpuid = pvm_hv_set_cpuid, .translate = pvm_hv_translate, .linear_range = pvm_hv_linear_range, \
    .lower_half = pvm_hv_lower_half, .set_guest_debug = pvm_hv_set_guest_debug,                         \
    .snap_format = PVM_HV_SNAP_FORMAT,                                                                 \
    .snap_save_vcpu = pvm_hv_snap_save_vcpu, .snap_load_vcpu = pvm_hv_snap_load_vcpu,                  \
    .snap_flush = pvm_hv_snap_flush, .pending_exit = pvm_hv_pending_exit, .mem_changed = pvm_hv_mem_changed,  \
    .warm_vcpu = pvm_hv_warm_vcpu

#endif /* PVM_HV_H */
