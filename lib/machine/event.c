/*
 * lib/machine/event.c - event delivery (§5.1-§5.6): user events, supervisor
 * exceptions through the 64-byte stack frame, supervisor interrupts through
 * the PVCS, and the common entry state.
 */
#include <string.h>

#include "model.h"

/* §5.6: identical register state on every event entry. */
static void enter_handler(struct pvm_cpu *cpu, const struct pvm_mem *mem, uint64_t entry)
{
    cpu->rip = entry;
    cpu->gpr[PVM_RCX] = entry;
    /* Guest RFLAGS 0x2 through the setter: a set PVCS IF is cleared (§5.4, §5.5). */
    pvm_m_set_rflags(cpu, mem, PVM_ENTRY_RFLAGS);
    cpu->gpr[PVM_R11] = PVM_ENTRY_R11;
}

/* §5.3: any event in umod, SYSCALL included. */
static enum pvm_m_result user_event(struct pvm_cpu *cpu, const struct pvm_mem *mem, unsigned vector,
                                    bool has_error_code, uint32_t error_code)
{
    bool syscall = vector == PVM_M_VEC_SYSCALL;
    struct pvm_vcpu_struct *p = pvm_m__pvcs(cpu, mem);

    /* §10.22 decision: without a PVCS a user event is a triple fault (RFC). */
    if (!p) {
        if (syscall)
            return pvm_m_shutdown(cpu, "user SYSCALL: PVCS not mapped (MSR_PVM_VCPU_STRUCT %#llx)",
                                  (unsigned long long)cpu->msr_vcpu_struct);
        return pvm_m_shutdown(cpu, "user event (vector %u): PVCS not mapped (MSR_PVM_VCPU_STRUCT %#llx)",
                              vector, (unsigned long long)cpu->msr_vcpu_struct);
    }

    p->user_cs = cpu->cs;
    p->user_ss = cpu->ss;
    /* §10.8 decision: PVCS.eflags is 32 bits; the upper RFLAGS bits are dropped. */
    p->eflags = (uint32_t)cpu->rflags;
    /* §10.6 decision: PKRU is written as 0 and never loaded (RFC; no PKU here). */
    p->pkru = 0;
    p->user_gsbase = cpu->gs_base;
    p->rip = cpu->rip;
    p->rsp = cpu->gpr[PVM_RSP];
    p->rcx = cpu->gpr[PVM_RCX];
    p->r11 = cpu->gpr[PVM_R11];
    /* §10.4 decision: event_errcode is left stale for events without one (RFC). */
    if (has_error_code)
        p->event_errcode = error_code;
    /* §10.5 decision: SYSCALL leaves event_vector, event_errcode and cr2 alone. */
    if (!syscall)
        p->event_vector = vector;
    if (vector == PVM_VEC_PF)
        p->cr2 = cpu->cr2;

    /* §1.3 umod -> smod.  §10.25 decision: a mode switch never flushes the TLB. */
    cpu->mode = PVM_MODE_SUPERVISOR;
    uint64_t cr3 = cpu->cr3;
    cpu->cr3 = cpu->msr_switch_cr3;
    cpu->msr_switch_cr3 = cr3;
    cpu->gs_base = cpu->msr_kernel_gs_base;
    cpu->gpr[PVM_RSP] = cpu->msr_supervisor_rsp; /* no red zone, no alignment */
    cpu->cs = PVM_USER_CS;
    cpu->ss = PVM_USER_DS;

    /*
     * §10.3 decision: clear IF on user events, like the KVM slow path (the
     * RFLAGS write after the switch turns IF 1 -> 0); done explicitly so it
     * holds whatever IF the PVCS had.
     */
    p->event_flags &= ~PVM_EVENT_FLAGS_IF;
    cpu->rflags &= ~PVM_RFLAGS_IF;
    enter_handler(cpu, mem, syscall ? cpu->msr_lstar : cpu->msr_event_entry + PVM_ENTRY_USER);
    return PVM_M_RESUME;
}

/* §5.4: smod, vector < 32: the 64-byte frame on the current stack. */
static enum pvm_m_result supervisor_exception(struct pvm_cpu *cpu, const struct pvm_mem *mem,
                                              unsigned vector, bool has_error_code,
                                              uint32_t error_code)
{
    uint16_t cs = pvm_m__sup_cs(cpu);
    struct pvm_supervisor_event f = {
        /* §10.4: the low half is 0 for exceptions without an error code. */
        .errcode = ((uint64_t)vector << 32) | (has_error_code ? error_code : 0),
        .rip = cpu->rip,
        .cs = cs,
        .rflags = cpu->rflags, /* guest view: virtual IF (synced by the caller) */
        .rsp = cpu->gpr[PVM_RSP],
        .ss = (uint64_t)cs + 8,
        .rcx = cpu->gpr[PVM_RCX],
        .r11 = cpu->gpr[PVM_R11],
    };
    uint64_t frame = ((cpu->gpr[PVM_RSP] - cpu->msr_redzone) & PVM_M_RSP_ALIGN_MASK) - PVM_FRAME_SIZE;

    /* §10.21 decision: the frame is written even in the middle of another entry (RFC). */
    if (!mem->write_virt || mem->write_virt(mem->opaque, frame, &f, sizeof(f)) != 0)
        return pvm_m_shutdown(cpu, "supervisor exception (vector %u): cannot write the 64-byte frame "
                              "at %#llx (RSP %#llx)", vector, (unsigned long long)frame,
                              (unsigned long long)cpu->gpr[PVM_RSP]);
    if (vector == PVM_VEC_PF) {
        struct pvm_vcpu_struct *p = pvm_m__pvcs(cpu, mem);
        /* §10.22: without a PVCS only #PF (the CR2 store) triple-faults. */
        if (!p)
            return pvm_m_shutdown(cpu, "supervisor #PF: PVCS not mapped for the CR2 store "
                                  "(MSR_PVM_VCPU_STRUCT %#llx)",
                                  (unsigned long long)cpu->msr_vcpu_struct);
        /* §10.21: a nested #PF overwrites PVCS.cr2. */
        p->cr2 = cpu->cr2;
    }
    cpu->gpr[PVM_RSP] = frame;
    enter_handler(cpu, mem, cpu->msr_event_entry + PVM_ENTRY_SUPERVISOR_EXCEPTION);
    return PVM_M_RESUME;
}

/* §5.5: smod, vector >= 32: state to the PVCS, nothing pushed. */
static enum pvm_m_result supervisor_interrupt(struct pvm_cpu *cpu, const struct pvm_mem *mem,
                                              unsigned vector, bool has_error_code,
                                              uint32_t error_code)
{
    struct pvm_vcpu_struct *p = pvm_m__pvcs(cpu, mem);

    if (!p)
        return pvm_m_shutdown(cpu, "supervisor interrupt (vector %u): PVCS not mapped "
                              "(MSR_PVM_VCPU_STRUCT %#llx)", vector,
                              (unsigned long long)cpu->msr_vcpu_struct);
    p->eflags = (uint32_t)cpu->rflags; /* §10.8, includes the virtual IF */
    p->rip = cpu->rip;
    p->rsp = cpu->gpr[PVM_RSP];
    p->rcx = cpu->gpr[PVM_RCX];
    p->r11 = cpu->gpr[PVM_R11];
    p->event_vector = vector;
    if (has_error_code) /* §10.4 */
        p->event_errcode = error_code;
    cpu->gpr[PVM_RSP] = (cpu->gpr[PVM_RSP] - cpu->msr_redzone) & PVM_M_RSP_ALIGN_MASK;
    enter_handler(cpu, mem, cpu->msr_event_entry + PVM_ENTRY_SUPERVISOR_INTERRUPT);
    return PVM_M_RESUME;
}

/* A debugger caught guest exception @vector: report it instead of delivering (mem->catch_exc). */
static enum pvm_m_result caught(struct pvm_cpu *cpu, unsigned vector, bool has_error_code, uint32_t error_code)
{
    memset(&cpu->exit, 0, sizeof(cpu->exit));
    cpu->exit.reason = PVM_EXIT_DEBUG;
    cpu->exit.u.debug.vector = vector;
    cpu->exit.u.debug.has_error_code = has_error_code;
    cpu->exit.u.debug.error_code = has_error_code ? error_code : 0;
    cpu->exit.u.debug.rip = cpu->rip;
    cpu->exit.u.debug.cr2 = vector == PVM_VEC_PF ? cpu->cr2 : 0;
    cpu->pending_exit = PVM_EXIT_NONE;
    return PVM_M_EXIT;
}

static enum pvm_m_result deliver(struct pvm_cpu *cpu, const struct pvm_mem *mem, unsigned vector,
                                 bool has_error_code, uint32_t error_code, bool may_catch)
{
    if (vector > 255 && vector != PVM_M_VEC_SYSCALL)
        return pvm_m__internal_error(cpu, PVM_EINVAL, "machine: deliver of bad vector %u", vector);
    if (may_catch && vector < 32 && mem->catch_exc && mem->catch_exc(mem->opaque, vector, cpu->mode))
        return caught(cpu, vector, has_error_code, error_code);
    /* §10.23 decision: libpvm has no non-PVM mode, so every injection is a PVM event. */
    pvm_m__sync_if(cpu, mem);
    uint8_t from_mode = cpu->mode;
    uint64_t from_rip = cpu->rip;
    enum pvm_m_result r;
    if (cpu->mode == PVM_MODE_USER)
        r = user_event(cpu, mem, vector, has_error_code, error_code);
    else if (cpu->mode != PVM_MODE_SUPERVISOR)
        return pvm_m__internal_error(cpu, PVM_EINTERNAL, "machine: invalid mode %u", cpu->mode);
    else if (vector == PVM_M_VEC_SYSCALL)
        return pvm_m__internal_error(cpu, PVM_EINTERNAL, "machine: SYSCALL event in smod");
    else if (vector < 32)
        r = supervisor_exception(cpu, mem, vector, has_error_code, error_code);
    else
        r = supervisor_interrupt(cpu, mem, vector, has_error_code, error_code);
    if (r == PVM_M_RESUME && mem->trace)
        mem->trace(mem->opaque, vector, has_error_code ? error_code : 0, from_mode, from_rip, cpu->rip);
    return r;
}

enum pvm_m_result pvm_m_deliver(struct pvm_cpu *cpu, const struct pvm_mem *mem, unsigned vector,
                                bool has_error_code, uint32_t error_code)
{
    return deliver(cpu, mem, vector, has_error_code, error_code, true);
}

enum pvm_m_result pvm_m__deliver_injected(struct pvm_cpu *cpu, const struct pvm_mem *mem, unsigned vector,
                                          bool has_error_code, uint32_t error_code)
{
    return deliver(cpu, mem, vector, has_error_code, error_code, false);
}

enum pvm_m_result pvm_m_int80(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    enum pvm_m_result r = pvm_m__trap_begin(cpu, mem);
    if (r != PVM_M_RESUME)
        return r;
    /* §10.20 decision: INT 0x80 in smod is a vector-0x80 interrupt at +512 (RFC). */
    return pvm_m__trap_end(cpu, mem, pvm_m_deliver(cpu, mem, PVM_VEC_INT80, false, 0));
}
