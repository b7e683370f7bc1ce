/*
 * lib/machine/exception.c - hardware exceptions reported by a cpu provider:
 * which ones reach the guest and how (§5.12).
 */
#include "model.h"

enum pvm_m_result pvm_m_exception(struct pvm_cpu *cpu, const struct pvm_mem *mem, unsigned vector,
                                  bool has_error_code, uint32_t error_code, uint64_t cr2)
{
    enum pvm_m_result r = pvm_m__trap_begin(cpu, mem);
    if (r != PVM_M_RESUME)
        return r;

    switch (vector) {
    case PVM_VEC_GP:
        /* §6.1 synthetic CPUID and privileged instructions (smod); §10.17. */
        r = pvm_m__emulate_gp(cpu, mem, has_error_code, error_code);
        break;
    case PVM_VEC_PF:
        /* §5.1: the exception payload (CR2) is applied before dispatch. */
        cpu->cr2 = cr2;
        r = pvm_m_deliver(cpu, mem, vector, true, error_code);
        break;
    case PVM_VEC_DE: case PVM_VEC_DB: case PVM_VEC_BP: case PVM_VEC_BR:
    case PVM_VEC_UD: case PVM_VEC_NM: case PVM_VEC_MF: case PVM_VEC_XM:
    /* §10.31 decision: INT 4 raises #OF (its gate is DPL 3), reflected like hardware #OF. */
    case PVM_VEC_OF:
        r = pvm_m_deliver(cpu, mem, vector, false, 0);
        break;
    case PVM_VEC_TS: case PVM_VEC_NP: case PVM_VEC_SS: case PVM_VEC_AC:
        r = pvm_m_deliver(cpu, mem, vector, true, error_code);
        break;
    case PVM_VEC_NMI: case PVM_VEC_MC:
        return PVM_M_RESUME; /* host events, never reflected (§5.12) */
    case PVM_VEC_DF:
        /* §1.4: #DF is promoted to a triple fault. */
        return pvm_m_shutdown(cpu, "double fault (#DF) at RIP %#llx", (unsigned long long)cpu->rip);
    case PVM_VEC_INT80:
        return pvm_m_int80(cpu, mem);
    default:
        if (vector >= 32 && vector <= 255)
            return PVM_M_RESUME; /* host interrupts are invisible to the guest */
        return pvm_m__internal_error(cpu, PVM_EINTERNAL,
                                     "machine: unexpected exception vector %u (error %#x) at RIP %#llx",
                                     vector, error_code, (unsigned long long)cpu->rip);
    }
    return pvm_m__trap_end(cpu, mem, r);
}
