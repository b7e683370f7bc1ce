/*
 * lib/machine/machine.h - the PVM Gen A machine model (host side).
 *
 * Pure functions over a vCPU state (struct pvm_cpu) and a guest-memory
 * accessor (struct pvm_mem).  No OS calls, no globals: every ABI rule here is
 * unit-testable byte by byte.  Section numbers (§) refer to
 * shared/docs/pvm-abi.md; the RFC kvm-pvm code is the authority where it and
 * the spec differ, and each §10 decision is recorded beside its rule.
 *
 * A software backend ("cpu provider") runs guest code until it traps and then
 * calls one of the pvm_m_* entry points; the result says whether to resume
 * the guest with the (updated) state, exit to the application, halt, or shut
 * down.  The provider resumes in the address space of (cpu->cr3, cpu->mode).
 */
#ifndef PVM_MACHINE_H
#define PVM_MACHINE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pvm/abi.h"
#include "pvm/pvm.h"

/* GPR indices: x86 encoding order. */
enum {
    PVM_RAX = 0, PVM_RCX, PVM_RDX, PVM_RBX, PVM_RSP, PVM_RBP, PVM_RSI, PVM_RDI,
    PVM_R8, PVM_R9, PVM_R10, PVM_R11, PVM_R12, PVM_R13, PVM_R14, PVM_R15,
    PVM_NR_GPRS
};

#define PVM_RFLAGS_IF   (1ull << 9)
#define PVM_RFLAGS_TF   (1ull << 8)
#define PVM_RFLAGS_FIXED 0x2ull
/* §1.1: RFLAGS bits a guest can hold (SWITCH_ENTER_EFLAGS_ALLOWED). */
#define PVM_RFLAGS_ALLOWED 0x254fd7ull /* CF PF AF ZF SF TF IF DF OF NT RF AC ID + bit1 (no IOPL, §10.8) */

#define PVM_MAX_CPUID_ENTRIES 256

/* Flush requests the model makes of the shadow MMU (through pvm_mem). */
enum pvm_flush_kind {
    PVM_FLUSH_ALL = 0,      /* every root of this vCPU */
    PVM_FLUSH_CURRENT = 1,  /* CR3 and SWITCH_CR3 roots */
    PVM_FLUSH_ONE = 2,      /* one linear address, all roots */
};

/* Guest-memory accessor the model works through. */
struct pvm_mem {
    void *opaque;
    /* Host pointer for guest-physical [gpa, gpa+len) inside one RAM region, or NULL. */
    void *(*phys)(void *opaque, uint64_t gpa, size_t len, bool write);
    /*
     * Supervisor-privilege access to guest-virtual memory through the current
     * root (cpu->cr3); sets A (and D for writes).  0 on success, -1 if any
     * byte is not reachable.
     */
    int (*read_virt)(void *opaque, uint64_t gva, void *buf, size_t len);
    int (*write_virt)(void *opaque, uint64_t gva, const void *buf, size_t len);
    /* TLB maintenance (may be NULL in tests). */
    void (*flush)(void *opaque, enum pvm_flush_kind kind, uint64_t gva);
    /*
     * (Optional) Called after each event is delivered: @vector (or
     * PVM_M_VEC_SYSCALL), the mode and RIP it interrupted, and the entry RIP
     * it went to.  For traces; must not change the vCPU.
     */
    void (*trace)(void *opaque, unsigned vector, uint32_t error_code, uint8_t from_mode, uint64_t from_rip,
                  uint64_t entry);
    /*
     * (Optional) A debugger's catch: asked before exception @vector (< 32)
     * that guest code raised in @mode is delivered.  True: nothing is
     * delivered and the entry point returns PVM_M_EXIT with a PVM_EXIT_DEBUG
     * exit (the state as at the fault).  Injected exceptions are not asked.
     */
    bool (*catch_exc)(void *opaque, unsigned vector, uint32_t mode);
};

/* What the provider must do after a pvm_m_* call. */
enum pvm_m_result {
    PVM_M_RESUME = 0,   /* continue running the guest with *cpu */
    PVM_M_EXIT = 1,     /* return cpu->exit to the application */
    PVM_M_HALT = 2,     /* HLT / IRQ_HALT: wait for an event, then pvm_m_check_events */
    PVM_M_SHUTDOWN = 3, /* triple fault: cpu->exit is a SHUTDOWN exit with the reason */
};

/* The complete software vCPU. */
struct pvm_cpu {
    uint64_t gpr[PVM_NR_GPRS];
    uint64_t rip;
    uint64_t rflags;        /* guest view; IF mirrors PVCS.event_flags.IF in smod */
    uint16_t cs, ss;        /* hardware selectors (0x33/0x2b in smod) */
    uint16_t ds, es, fs, gs;
    uint64_t fs_base, gs_base;
    uint64_t cr0, cr2, cr3, cr4, efer;
    uint32_t mode;          /* enum pvm_mode */
    bool nmi_masked;
    bool halted;

    /* PVM MSRs (§2); retu/rets hold the value + 2 as the RFC stores them. */
    uint64_t msr_linear_range;
    uint64_t msr_linear_range_default; /* the "host default" writes must stay inside */
    uint64_t msr_vcpu_struct;
    uint64_t msr_supervisor_rsp;
    uint64_t msr_redzone;
    uint64_t msr_event_entry;
    uint64_t msr_retu_rip_plus2;
    uint64_t msr_rets_rip_plus2;
    uint64_t msr_switch_cr3;

    /* Standard MSRs. */
    uint64_t msr_star, msr_lstar, msr_cstar, msr_sfmask;
    uint64_t msr_kernel_gs_base, msr_tsc_aux;
    uint64_t msr_sysenter_cs, msr_sysenter_esp, msr_sysenter_eip;
    uint64_t tls[3];        /* PVM_HC_LOAD_TLS slots */

    /* Pending events (§5.7, §5.8). */
    uint64_t irq_pending[4];   /* bitmap of vectors 32..255 */
    bool nmi_pending;
    bool exc_pending;
    uint8_t exc_vector;
    bool exc_has_error;
    uint32_t exc_error;
    uint64_t exc_cr2;

    /* Incomplete exit: data the application returns on the next run. */
    uint32_t pending_exit;     /* enum pvm_exit_reason, or PVM_EXIT_NONE */
    uint8_t pending_io_size;   /* IN: bytes to write into RAX */
    uint8_t pending_mmio_reg;  /* MMIO read: destination GPR */
    uint8_t pending_mmio_size;
    /* Added by the machine model: completion details for pvm_m_complete(). */
    uint8_t pending_insn_len;  /* IO/MMIO: RIP advance applied on completion */
    uint64_t pending_rip;      /* IO/MMIO: RIP of the instruction; completion only if RIP is still it */
    uint8_t pending_mmio_ext;  /* PVM_M_MMIO_* : how a read lands in the register */
    uint8_t pending_mmio_dst_size; /* destination register width in bytes */
    bool pending_mmio_high8;   /* destination is AH/CH/DH/BH */
    struct pvm_exit exit;      /* filled when a call returns PVM_M_EXIT/SHUTDOWN */

    /* The VMM's CPUID table (§6.1, §9.2).  This field and all after it survive
     * pvm_m_reset() (KVM keeps CPUID and the vCPU id across INIT). */
    uint32_t nr_cpuid;
    struct pvm_cpuid_entry cpuid[PVM_MAX_CPUID_ENTRIES];

    uint32_t vcpu_id;
};

/* pending_mmio_ext values. */
#define PVM_M_MMIO_NONE 0   /* a write: nothing to store */
#define PVM_M_MMIO_MOV  1   /* plain MOV: 8/16-bit keep the rest, 32-bit zero-extends */
#define PVM_M_MMIO_ZX   2   /* MOVZX */
#define PVM_M_MMIO_SX   3   /* MOVSX / MOVSXD */

/*
 * Reset to the libpvm boot state: §9.3 values, but already in 64-bit smod.
 * @cpu must be zero-filled before its first reset: MSR_PVM_SUPERVISOR_REDZONE
 * keeps its value across resets (§10.11), as do the CPUID table and vcpu_id.
 */
void pvm_m_reset(struct pvm_cpu *cpu, uint64_t default_linear_range);

/* Install the VMM CPUID table (§9.2); the PVM leaves are added if missing. */
int pvm_m_set_cpuid(struct pvm_cpu *cpu, const struct pvm_cpuid_entry *e, size_t n);
/* Look up a leaf as the synthetic CPUID would (§6.1). */
void pvm_m_cpuid(const struct pvm_cpu *cpu, uint32_t leaf, uint32_t subleaf, uint32_t out[4]);
/*
 * (Addition) The table pvm_m_cpuid() answers from, flattened into @out: the
 * VMM table, then each default leaf whose function it lacks.  The first entry
 * matching (function, and index if PVM_CPUID_FLAG_SIGNIFICANT_INDEX) gives
 * pvm_m_cpuid()'s answer; no match means zeros.  Returns the entry count, or
 * 0 if @max (at least PVM_MAX_CPUID_ENTRIES + 8 is enough) is too small.
 */
size_t pvm_m_cpuid_effective(const struct pvm_cpu *cpu, struct pvm_cpuid_entry *out, size_t max);

/*
 * The one delivery function (§5.1): dispatch @vector to a user event,
 * supervisor exception or supervisor interrupt.  @vector PVM_M_VEC_SYSCALL
 * is the umod SYSCALL event.  No masking checks (callers did them).
 */
#define PVM_M_VEC_SYSCALL 0x100
/* Fill *e as a PVM_EXIT_INTERNAL_ERROR with @code and the formatted message (for every backend). */
void pvm_m_internal_exit(struct pvm_exit *e, int code, const char *fmt, va_list ap);

enum pvm_m_result pvm_m_deliver(struct pvm_cpu *cpu, const struct pvm_mem *mem, unsigned vector,
                                bool has_error_code, uint32_t error_code);

/*
 * A SYSCALL instruction trapped.  cpu->rip is the address after it and RCX/R11
 * hold what the hardware wrote (return RIP, RFLAGS image).  umod: user syscall
 * event; smod: ERETU, ERETS, or a hypercall (§6.2-§7).  A host call returns
 * PVM_M_EXIT with a HYPERCALL exit.
 */
enum pvm_m_result pvm_m_syscall(struct pvm_cpu *cpu, const struct pvm_mem *mem);

/*
 * A hardware exception while the guest ran (after the shadow MMU filtered its
 * own faults): #GP in smod is emulated (§6.1 synthetic CPUID, privileged
 * instructions, IN/OUT -> IO exit); everything else is reflected per §5.12.
 * For #PF, @cr2 is the faulting address and @error_code the guest error code.
 */
enum pvm_m_result pvm_m_exception(struct pvm_cpu *cpu, const struct pvm_mem *mem, unsigned vector,
                                  bool has_error_code, uint32_t error_code, uint64_t cr2);

/*
 * The guest accessed guest-physical @gpa that is not RAM (or wrote a
 * read-only region) with the instruction at cpu->rip: decode it (MOV forms to
 * and from memory, MOVZX/MOVSX reads, MOV imm stores) and fill an MMIO exit;
 * RIP is advanced and a read's destination register written when the exit
 * is completed (pvm_m_complete).  Undecodable instructions: INTERNAL_ERROR
 * exit with the instruction bytes in the message.
 */
enum pvm_m_result pvm_m_mmio(struct pvm_cpu *cpu, const struct pvm_mem *mem, uint64_t gpa, bool is_write);

/* INT 0x80 from the guest (§5.1): vector 0x80 event. */
enum pvm_m_result pvm_m_int80(struct pvm_cpu *cpu, const struct pvm_mem *mem);

/* Queue an injected event (§5.7).  0, or -PVM_EINVAL/-PVM_EBUSY style codes. */
int pvm_m_queue_event(struct pvm_cpu *cpu, const struct pvm_event *ev);
/* Is an event deliverable now (exception, NMI unmasked, IRQ with IF/umod)? */
bool pvm_m_event_ready(const struct pvm_cpu *cpu, const struct pvm_mem *mem);
/*
 * Deliver what can be delivered now (exception first, then NMI, then the
 * highest pending IRQ); if an IRQ is pending but IF=0 in smod, set PVCS IP.
 * Clears cpu->halted when something was delivered.
 * Returns PVM_M_RESUME (even if still halted: see cpu->halted) or SHUTDOWN.
 */
enum pvm_m_result pvm_m_check_events(struct pvm_cpu *cpu, const struct pvm_mem *mem);

/*
 * MSR access (§2).  Returns 0 on success, -1 if the access is refused (#GP
 * for guest accesses), -2 if a triple fault was requested (cpu->exit filled).
 * @host: host-initiated access (write checks skipped as in the RFC).
 */
int pvm_m_rdmsr(struct pvm_cpu *cpu, const struct pvm_mem *mem, uint32_t index, uint64_t *value, bool host);
int pvm_m_wrmsr(struct pvm_cpu *cpu, const struct pvm_mem *mem, uint32_t index, uint64_t value, bool host);

/* Complete an exit with the application's answer (hypercall RAX, IN data, MMIO read). */
void pvm_m_complete(struct pvm_cpu *cpu, const struct pvm_exit *exit);

/* RFLAGS setter used by every hypervisor write in smod (§5.7: IF -> PVCS, 0->1 clears IP). */
void pvm_m_set_rflags(struct pvm_cpu *cpu, const struct pvm_mem *mem, uint64_t rflags);
/* Guest-visible IF: PVCS bit 9 in smod (0 without a PVCS), 1 in umod (§1.2). */
bool pvm_m_irq_enabled(const struct pvm_cpu *cpu, const struct pvm_mem *mem);
/*
 * The PVCS in host memory as the model writes it (its whole page writable
 * guest RAM, §3), or NULL: for a provider that delivers events itself.
 */
struct pvm_vcpu_struct *pvm_m_pvcs(const struct pvm_cpu *cpu, const struct pvm_mem *mem);
/* 5-level paging (CR4.LA57): canonical addresses have 57 bits. */
bool pvm_m_la57(const struct pvm_cpu *cpu);

/* Is @gva an allowed linear address under @range (§8.2; decision on 0 inside)? */
bool pvm_m_la_allowed(uint64_t range, uint64_t gva);

/* Fill cpu->exit as a SHUTDOWN with a printf-style reason; returns PVM_M_SHUTDOWN. */
enum pvm_m_result pvm_m_shutdown(struct pvm_cpu *cpu, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif /* PVM_MACHINE_H */
