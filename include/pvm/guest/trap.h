/*
 * pvm/guest/trap.h - PVM events as C handler calls, and the IF/IP protocol.
 *
 * The SDK's entry stubs (EVENT_ENTRY +0 user events, +256 supervisor
 * exceptions, +512 supervisor interrupts, and the LSTAR syscall entry) save
 * every register into a struct pvm_frame and call the handler registered for
 * the vector.  Whatever the handler leaves in the frame is restored: ERETU
 * for events that came from user mode, ERETS for supervisor ones.
 *
 * Handlers run with interrupts disabled (the hypervisor clears IF on every
 * event entry, §5.6) on the supervisor stack.
 */
#ifndef PVM_GUEST_TRAP_H
#define PVM_GUEST_TRAP_H

#include <stdbool.h>
#include <stdint.h>

#include "pvm/abi.h"
#include "pvm/guest/hypercall.h"

/** Where a frame came from (struct pvm_frame.kind). */
enum pvm_frame_kind {
    PVM_FRAME_USER = 1,      /**< umod event (exception, interrupt, NMI): entry +0 */
    PVM_FRAME_SYSCALL = 2,   /**< umod SYSCALL: LSTAR entry */
    PVM_FRAME_SUPER_EXC = 3, /**< smod vector < 32: entry +256, frame on the stack */
    PVM_FRAME_SUPER_IRQ = 4, /**< smod vector >= 32: entry +512, state in the PVCS */
};

/** Saved registers of the interrupted context; 192 bytes. */
struct pvm_frame {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t vector;     /**< 0..255 (undefined for PVM_FRAME_SYSCALL) */
    uint64_t error_code; /**< 0 when the vector has none */
    uint64_t cr2;        /**< PVCS.cr2 at entry (meaningful for #PF) */
    uint64_t rip, rflags, rsp;
    uint64_t cs, ss;     /**< user: hardware selectors; supervisor: from STAR */
    uint64_t kind;       /**< enum pvm_frame_kind */
};
_Static_assert(sizeof(struct pvm_frame) == 192, "frame size is used by entry.S");

/** True if the frame was taken from user mode. */
static inline bool pvm_frame_is_user(const struct pvm_frame *f)
{
    return f->kind == PVM_FRAME_USER || f->kind == PVM_FRAME_SYSCALL;
}

typedef void (*pvm_trap_fn)(struct pvm_frame *f);

/**
 * Handle @vector (0..255) with @fn (NULL restores the default: exceptions
 * panic, interrupts are ignored).  Shared by all vCPUs.
 */
void pvm_set_trap_handler(unsigned vector, pvm_trap_fn fn);
/**
 * Handle user-mode SYSCALLs: RAX = number, arguments in RDI, RSI, RDX (the
 * SDK's convention); the handler writes the result to f->rax.  Without a
 * handler user SYSCALLs return -38 (ENOSYS).
 */
void pvm_set_syscall_handler(pvm_trap_fn fn);
/** Name of exception @vector ("#PF" ...), or "interrupt". */
const char *pvm_vector_name(unsigned vector);

/* ---- per-vCPU state ---------------------------------------------------- */

/** This vCPU's PVCS (the hypervisor shares it, §3). */
static inline struct pvm_vcpu_struct *pvm_pvcs(void)
{
    struct pvm_vcpu_struct *p;
    /* GS base = per-vCPU area whose first member is the PVCS (see boot.c). */
    __asm__ volatile("movq %%gs:128, %0" : "=r"(p));
    return p;
}

/** This vCPU's id (RSI at boot). */
static inline unsigned pvm_cpu_id(void)
{
    unsigned id;
    __asm__ volatile("movl %%gs:144, %0" : "=r"(id));
    return id;
}

/* ---- interrupts: the IF/IP protocol of §5.7 ----------------------------- */

/** Enable interrupts; if one is pending (IP), let the hypervisor deliver it now. */
static inline void pvm_irq_enable(void)
{
    struct pvm_vcpu_struct *p = pvm_pvcs();
    /* One read-modify-write instruction: an exit can come between any two. */
    __asm__ volatile("orq %1, %0" : "+m"(p->event_flags) : "i"(PVM_EVENT_FLAGS_IF) : "memory");
    if (*(volatile uint64_t *)&p->event_flags & PVM_EVENT_FLAGS_IP)
        pvm_hypercall0(PVM_HC_IRQ_WIN);
}

static inline void pvm_irq_disable(void)
{
    struct pvm_vcpu_struct *p = pvm_pvcs();
    __asm__ volatile("andq %1, %0" : "+m"(p->event_flags) : "i"(~PVM_EVENT_FLAGS_IF) : "memory");
}

static inline bool pvm_irq_enabled(void)
{
    return (*(volatile uint64_t *)&pvm_pvcs()->event_flags & PVM_EVENT_FLAGS_IF) != 0;
}

/** Disable interrupts and return whether they were enabled. */
static inline bool pvm_irq_save(void)
{
    bool was = pvm_irq_enabled();
    pvm_irq_disable();
    return was;
}

static inline void pvm_irq_restore(bool enabled)
{
    if (enabled)
        pvm_irq_enable();
}

/**
 * Enable interrupts and wait for one (PVM_HC_IRQ_HALT, the atomic "sti; hlt"
 * of §5.9).  Returns after the interrupt's handler ran, with interrupts on.
 */
static inline void pvm_irq_halt(void)
{
    pvm_hypercall0(PVM_HC_IRQ_HALT);
}

#endif /* PVM_GUEST_TRAP_H */
