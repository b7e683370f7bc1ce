/*
 * lib/backends/native/stub.h - stub processes: one host address space that
 * runs guest code natively at ring 3 and reports every trap.
 *
 * A stub is a tiny static, freestanding executable (stub/ in this folder),
 * embedded in libpvm, forked by a zygote process that was started with
 * execveat() from a memfd (spawn.c, docs/design.md "Stub creation").  It owns only
 * its own pages in [NSTUB_REGION_START, NSTUB_REGION_END) (code, stack,
 * signal stack, the shared control page); everything else in its address
 * space is unmapped (vDSO and vvar included) and is filled only with guest
 * RAM pages (MAP_SHARED|MAP_FIXED of the VM's memfd) that the shadow MMU
 * installs.  A seccomp filter (hand-written BPF) sends every syscall to
 * SIGSYS except the few the stub needs, and those only from the stub's own
 * code.  Every trap (SIGSYS, SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGFPE, the
 * kick signal) is caught on the stub's signal stack, the register file is
 * written to the control page, the library is woken, and the stub resumes
 * with whatever registers the library wrote back (sigreturn).  FPU/SSE/AVX
 * state stays in the stub's signal frame and is preserved across traps.
 *
 * Nothing the stub writes into the control page is trusted by the library:
 * a guest can scribble on every stub page and only harm itself.
 *
 * Lifetime: a stub lives until nstub_destroy() or until the library process
 * dies, whichever thread created it: the library holds the only write end of
 * the stub's death pipe, which the stub polls while it waits for the library
 * and on every SIGPROF of an ITIMER_PROF armed before the seccomp filter
 * (every 0.5 s of CPU time, so a guest that spins is checked too), and the
 * kernel SIGKILLs the stub when that pipe loses its writer (nstub_backstop),
 * whatever a hostile guest does to the stub's own checks.  SIGPROF is handled
 * inside the stub and is invisible to the guest; if SIGPROF is the kick
 * signal, each tick is a spurious kick that nstub_run() resumes without
 * reporting.
 *
 * Mappings: every mmap of guest RAM waits for the library's approval
 * (docs/design.md "Mapping approval"); the library lets through exactly the
 * commands it queued, so guest code that calls the stub's SYSCALL itself can
 * map nothing.  The library keeps two fds per stub: a pidfd and the approval
 * listener.
 */
#ifndef PVM_NATIVE_STUB_H
#define PVM_NATIVE_STUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pvm_cpuid_entry;

/* Host-virtual region the stub keeps for itself; guests get [NSTUB_GUEST_LO, NSTUB_GUEST_HI). */
#define NSTUB_REGION_START 0x7f0000000000ull
#define NSTUB_REGION_END   0x800000000000ull
#define NSTUB_GUEST_LO     0x10000ull           /* below: vm.mmap_min_addr */
#define NSTUB_GUEST_HI     NSTUB_REGION_START

struct nstub;

struct nstub_config {
    int memfd;          /* the VM's guest-RAM memfd (mapped by offset) */
    int kick_signal;    /* signal used by nstub_kick() */
    /*
     * false (the default): every mmap of guest RAM waits for the library,
     * which lets through only the mappings it queued (nstub_map), so guest
     * code that calls the stub's SYSCALL itself can map nothing.  true: the
     * filter's static checks only (cooperative guests; benchmarks).
     */
    bool trust_maps;
    /*
     * > 0: a snapshot memfd sealed with F_SEAL_WRITE (checked), which
     * nstub_map_fd(NSTUB_FD_SNAP) maps read-only by offset; 0: none.
     */
    int snap_memfd;
    /*
     * > 0: the VM's link memfd (NSTUB_FD_LINK: per vCPU a NSTUB_LINK_SIZE
     * area for the user/kernel hand-off, nstub_map_link); 0: none (no
     * hand-off, and no pooled stub).
     */
    int link_memfd;
};

/* Guest register file as the stub transfers it. */
struct nstub_regs {
    uint64_t gpr[16];   /* x86 encoding order: rax rcx rdx rbx rsp rbp rsi rdi r8..r15 */
    uint64_t rip, rflags;
    uint64_t fs_base, gs_base;
    uint16_t cs, ss;    /* hardware selectors (0x33/0x2b, or 0x23 for 32-bit user) */
};

enum nstub_trap_kind {
    NSTUB_TRAP_SYSCALL = 1, /* guest executed SYSCALL; rip is after it, rax = number */
    NSTUB_TRAP_FAULT = 2,   /* hardware exception: vector/error_code/cr2 */
    NSTUB_TRAP_KICK = 3,    /* interrupted by nstub_kick() */
    NSTUB_TRAP_DIED = 4,    /* the stub process died or misbehaved; msg says how */
};

struct nstub_trap {
    uint32_t kind;        /* enum nstub_trap_kind */
    uint32_t vector;      /* FAULT: x86 vector (trapno; SIGSYS-less #UD etc. mapped) */
    uint32_t error_code;  /* FAULT: hardware error code (err) */
    int signo, si_code;   /* raw signal info, for diagnostics */
    uint64_t cr2;         /* FAULT #PF: faulting address */
    char msg[128];        /* DIED: reason */
};

/*
 * Start a stub.  Returns 0, or a negative PVM_E* code with a reason in
 * err[errlen].  The stub holds only cfg->memfd, the control memfd, the
 * death pipe and cfg->snap_memfd if given (stub_abi.h); the library keeps a
 * pidfd and, unless cfg->trust_maps, the mapping-approval listener.
 */
int nstub_create(struct nstub **out, const struct nstub_config *cfg, char *err, size_t errlen);
/*
 * Early start (a VM's first stub): hand a pooled stub @cfg's memfd now and
 * return at once, so that it starts while the caller goes on; NULL if the
 * pool has none or @cfg needs what a pooled stub cannot take (trust_maps, a
 * snapshot memfd).  nstub_adopt() then waits for it (0, or a PVM_E* code with
 * a reason: the stub is then dead, nstub_destroy() it); nstub_destroy()
 * frees one never adopted.
 */
struct nstub *nstub_prestart(const struct nstub_config *cfg);
int nstub_adopt(struct nstub *s, char *err, size_t errlen);
/* Was @s given a snapshot memfd (nstub_config.snap_memfd)? */
bool nstub_maps_snapshot(const struct nstub *s);
/* How many stubs were served by a pre-started stub (the pool; statistics, tests). */
uint64_t nstub_pool_hits(void);
/* Kill and reap the stub; frees everything.  NULL ignored. */
void nstub_destroy(struct nstub *s);

/*
 * Queue mapping changes; applied before the guest runs again (nstub_run) or
 * by nstub_sync().  @off is the offset in cfg->memfd; @prot is PROT_* bits.
 * Addresses must lie in [NSTUB_GUEST_LO, NSTUB_GUEST_HI), page aligned.
 */
int nstub_map(struct nstub *s, uint64_t gva, uint64_t len, uint64_t off, int prot);
/* The same from @fd: NSTUB_FD_RAM (cfg->memfd) or NSTUB_FD_SNAP (cfg->snap_memfd; no PROT_WRITE). */
int nstub_map_fd(struct nstub *s, unsigned fd, uint64_t gva, uint64_t len, uint64_t off, int prot);
int nstub_unmap(struct nstub *s, uint64_t gva, uint64_t len);
/* Remove every guest mapping. */
int nstub_unmap_all(struct nstub *s);
/* Apply queued mapping changes now (the stub must not be running guest code). */
int nstub_sync(struct nstub *s);
/*
 * If unmaps are queued: apply the queue now (nstub_sync), verified, and
 * return 1; 0 if none are queued; -1 with the reason in err if the stub is
 * dead or does not apply them (it is then dead).  Wakes the stub.
 */
int nstub_sync_unmaps(struct nstub *s, char *err, size_t errlen);

/*
 * Resume the guest with *regs until the next trap; *regs receives the
 * register file at the trap and *trap what happened.  Returns 0 (trap
 * filled, including NSTUB_TRAP_DIED) or a negative code for misuse.
 */
int nstub_run(struct nstub *s, struct nstub_regs *regs, struct nstub_trap *trap);

/*
 * Make sure the stub, stopped at a trap, really is: asleep in its untimed wait
 * for the library, where no guest code can run until the next nstub_run().  A
 * guest can forge a trap report and keep running; then this waits up to
 * @timeout_ms for it to stop, marks the stub dead (NSTUB_TRAP_DIED from then
 * on) and returns -1 with the reason in err.  Returns 0 when stopped.
 */
int nstub_confirm_stopped(struct nstub *s, unsigned timeout_ms, char *err, size_t errlen);

/* Interrupt nstub_run() promptly (NSTUB_TRAP_KICK).  Any thread, async-signal-safe. */
int nstub_kick(struct nstub *s);
/*
 * Wake a stub asleep in its wait without a request: it spins again for the
 * spin time (nstub_set_spin), so that a resume the library is about to
 * publish (a halted vCPU's injection) finds it awake.  Any thread; only
 * while @s exists.
 */
void nstub_prewake(struct nstub *s);

/*
 * The guest's FPU/SSE/AVX state (XSAVE image of the last trap's signal
 * frame), to move it between stubs when the active address space changes.
 * nstub_fpu_size() is the image size; get copies out, set replaces it for the
 * next resume.  Only while the stub is stopped at a trap.
 */
size_t nstub_fpu_size(const struct nstub *s);
int nstub_get_fpu(struct nstub *s, void *buf, size_t len);
int nstub_set_fpu(struct nstub *s, const void *buf, size_t len);

/*
 * How long each side busy-waits for the other before sleeping on the futex,
 * in ns (default 30000; 0 = always sleep).  Spinning is what makes a trap
 * round trip cheap when the stub and the vCPU thread are on different CPUs
 * (waking a sleeping CPU costs 20-85 us here, ARCHITECTURE.md).  Not
 * concurrent with nstub_run on @s.
 */
void nstub_set_spin(struct nstub *s, uint32_t spin_ns);

/*
 * The smod fast path (stub/fast.c, docs/design.md "Fast path"): events the
 * stub answers itself without a report.  nstub_set_fast() sets what the next
 * nstub_run() publishes (enabled = false: every event is reported);
 * nstub_fast_result() says what the fast path did during the last
 * nstub_run().  Not concurrent with nstub_run on @s.
 */
struct nstub_fast_cfg {
    bool enabled;         /* smod, PVCS mapped (nstub_map_pvcs), nothing pending */
    bool cpuid;           /* answer the synthetic CPUID from the table (nstub_set_cpuid) */
    bool nmi_masked;
    uint64_t retu_plus2, rets_plus2, event_entry, redzone, sup_rsp;
    uint16_t sup_cs;
    uint32_t kvm_features;
    unsigned nr_windows;  /* <= NSTUB_FAST_WINDOWS; installed mappings, prot PROT_READ/PROT_WRITE */
    struct { uint64_t start, len; unsigned prot; } win[8];
};
struct nstub_fast_result {
    uint64_t events;      /* handled in the stub (as the stub counted them: statistics only) */
    uint64_t irqs;        /* of which interrupts delivered in the stub (statistics only) */
    bool nmi_unmasked;    /* an ERETS cleared the NMI mask */
    /*
     * PVM MSRs found changed in the control page (a fast WRMSR, §2), bit
     * (index - MSR_PVM_LINEAR_ADDRESS_RANGE), with their raw values (RETU/RETS
     * +2).  Guest-writable: the caller applies them as guest WRMSRs.
     */
    unsigned msr_changed;
    uint64_t retu_plus2, rets_plus2, event_entry, redzone, sup_rsp;
};
void nstub_set_fast(struct nstub *s, const struct nstub_fast_cfg *cfg);
void nstub_fast_result(const struct nstub *s, struct nstub_fast_result *out);
/*
 * In-stub interrupt delivery (stub/fast.c, §5.5).  nstub_post_irq() puts
 * vector @vector (32..255) into the control page for the stub to deliver
 * during this or the next nstub_run(); nstub_poke() then signals the stub
 * (the kick signal without attention: answered inside the stub while the
 * fast path is on, else a spurious report that nstub_run() resumes).
 * nstub_take_irqs() removes what the stub did not deliver and ORs it into
 * out[4] (only vectors posted since the last take: the guest cannot forge
 * any).  Posting and taking must be serialized by the caller; taking only
 * while the stub is stopped.  Any thread for post/poke, async-signal-safe.
 */
int nstub_post_irq(struct nstub *s, unsigned vector);
void nstub_poke(struct nstub *s);
void nstub_take_irqs(struct nstub *s, uint64_t out[4]);
/* Map the PVCS page (memfd offset @off, page aligned) at the stub's fixed PVCS address; queued. */
int nstub_map_pvcs(struct nstub *s, uint64_t off);
/* Publish the effective CPUID table (n <= 264 entries); only while stopped. */
int nstub_set_cpuid(struct nstub *s, const struct pvm_cpuid_entry *e, size_t n);

/*
 * The user/kernel hand-off (stub/link.c, docs/design.md "The user stub and
 * the kernel stub hand off").  Both stubs map the vCPU's link area
 * (nstub_map_link, the same offset).  nstub_link_arm(): before @u's
 * nstub_run in user mode, let the waiting kernel stub @k take @u's SYSCALLs
 * (k must be stopped with nothing queued and its fast path set for the
 * entry state: nstub_set_fast); PVM_ESTATE if it cannot.  After that
 * nstub_run returns, nstub_link_take() ends it: 1 if @k took a SYSCALL and
 * has not handed it back (its next report is the vCPU's: nstub_link_adopt
 * waits for it as nstub_run would, the fast-path result included); 0 if
 * @k waits again (its fast-path result, e.g. SUPERVISOR_RSP, is in
 * nstub_fast_result); -1 if @k died.  *trips: completed round trips
 * (statistics).  Only the vCPU's thread; nstub_kick() reaches @k while armed.
 */
struct nstub_link;
struct nstub_link_cfg {
    volatile struct nstub_link *link;   /* the area in the library's mapping */
    uint32_t gen;                       /* a new number per arm */
    uint64_t lstar, kernel_gs_base;     /* the SYSCALL entry state (canonical) */
};
int nstub_link_arm(struct nstub *u, struct nstub *k, const struct nstub_link_cfg *cfg);
int nstub_link_take(struct nstub *u, struct nstub *k, const struct nstub_link_cfg *cfg, uint64_t *trips);
int nstub_link_adopt(struct nstub *k, struct nstub_regs *regs, struct nstub_trap *trap);
/* Map the vCPU's link area (offset @off in nstub_config.link_memfd) at the stub's fixed address; queued. */
int nstub_map_link(struct nstub *s, uint64_t off);
/* Why @s died (NSTUB_TRAP_DIED's message). */
const char *nstub_dead_msg(const struct nstub *s);

/* Guest-RAM mmaps the library approved for this stub so far (statistics). */
uint64_t nstub_approved(const struct nstub *s);
/* Host pid of the stub (diagnostics, tests). */
int nstub_pid(const struct nstub *s);

#endif /* PVM_NATIVE_STUB_H */
