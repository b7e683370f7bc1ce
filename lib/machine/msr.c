/*
 * lib/machine/msr.c - the eight PVM MSRs and the standard MSRs with PVM
 * handling (§2).  0 = done, -1 = refused (#GP for a guest access, -EIO for
 * PVM_HC_WRMSR, PVM_EINVAL/ENOENT for the host), -2 = triple fault requested.
 */
#include "model.h"

#define MSR_OK 0
#define MSR_FAIL (-1)
#define MSR_TRIPLE (-2)

static bool range_filler_ok(uint64_t v)
{
    return (v & PVM_LA_RANGE_FILLER_MASK) == PVM_LA_RANGE_FILLER_MASK;
}

/* §2 / §8.2 write checks of MSR_PVM_LINEAR_ADDRESS_RANGE. */
static bool linear_range_ok(const struct pvm_cpu *cpu, uint64_t v, bool host)
{
    uint64_t d = cpu->msr_linear_range_default;

    if (!host && v == d)
        return true; /* the host default is always acceptable (it may be the empty range) */
    if (!range_filler_ok(v))
        return false;
    if (PVM_LA_RANGE_PML4_START(v) < PVM_LA_RANGE_PML4_START(d) ||
        PVM_LA_RANGE_PML4_END(v) > PVM_LA_RANGE_PML4_END(d) ||
        PVM_LA_RANGE_PML5_START(v) < PVM_LA_RANGE_PML5_START(d) ||
        PVM_LA_RANGE_PML5_END(v) > PVM_LA_RANGE_PML5_END(d))
        return false;
    if (host)
        return true;
    /*
     * §10.14 decision: a guest may not write an empty or inverted range; the
     * 5-level part may be the "no LA57" value 0x1ff/0x1ff (§8.2).
     */
    if (PVM_LA_RANGE_PML4_START(v) >= PVM_LA_RANGE_PML4_END(v))
        return false;
    if (PVM_LA_RANGE_PML5_START(v) >= PVM_LA_RANGE_PML5_END(v) &&
        !(PVM_LA_RANGE_PML5_START(v) == 0x1ff && PVM_LA_RANGE_PML5_END(v) == 0x1ff))
        return false;
    return true;
}

/*
 * §2 guest STAR check.  §10.1 decision: __USER_CS = __USER32_CS + 16 (code, not
 * spec).  §10.2 decision: only "kernel CS != 0" and the derived user CS are
 * checked (RFC), not the current CS/SS.
 */
static bool star_ok(uint64_t v)
{
    uint16_t kcs = (uint16_t)((v >> 32) & 0xfffc);
    uint16_t ucs32 = (uint16_t)(v >> 48);
    return kcs != 0 && (uint16_t)((ucs32 | 3) + 16) == PVM_USER_CS;
}

int pvm_m_rdmsr(struct pvm_cpu *cpu, const struct pvm_mem *mem, uint32_t index, uint64_t *value,
                bool host)
{
    (void)mem;
    (void)host;
    switch (index) {
    case MSR_PVM_LINEAR_ADDRESS_RANGE: *value = cpu->msr_linear_range; break;
    case MSR_PVM_VCPU_STRUCT:          *value = cpu->msr_vcpu_struct; break;
    case MSR_PVM_SUPERVISOR_RSP:       *value = cpu->msr_supervisor_rsp; break;
    case MSR_PVM_SUPERVISOR_REDZONE:   *value = cpu->msr_redzone; break;
    case MSR_PVM_EVENT_ENTRY:          *value = cpu->msr_event_entry; break;
    /* §2 / §10.11: stored +2, read back -2 (0xff..fe after reset). */
    case MSR_PVM_RETU_RIP:             *value = cpu->msr_retu_rip_plus2 - 2; break;
    case MSR_PVM_RETS_RIP:             *value = cpu->msr_rets_rip_plus2 - 2; break;
    case MSR_PVM_SWITCH_CR3:           *value = cpu->msr_switch_cr3; break;
    case PVM_MSR_EFER:                 *value = cpu->efer; break;
    case PVM_MSR_STAR:                 *value = cpu->msr_star; break;
    case PVM_MSR_LSTAR:                *value = cpu->msr_lstar; break;
    case PVM_MSR_CSTAR:                *value = cpu->msr_cstar; break;
    case PVM_MSR_SYSCALL_MASK:         *value = cpu->msr_sfmask; break;
    case PVM_MSR_FS_BASE:              *value = cpu->fs_base; break;
    case PVM_MSR_GS_BASE:              *value = cpu->gs_base; break; /* the current mode's */
    case PVM_MSR_KERNEL_GS_BASE:       *value = cpu->msr_kernel_gs_base; break;
    case PVM_MSR_TSC_AUX:              *value = cpu->msr_tsc_aux; break;
    /* SYSENTER_CS resets to 0, an invalid selector, so SYSENTER keeps faulting. */
    case PVM_MSR_IA32_SYSENTER_CS:     *value = cpu->msr_sysenter_cs; break;
    case PVM_MSR_IA32_SYSENTER_ESP:    *value = cpu->msr_sysenter_esp; break;
    case PVM_MSR_IA32_SYSENTER_EIP:    *value = cpu->msr_sysenter_eip; break;
    case PVM_MSR_IA32_DEBUGCTL:        *value = 0; break;
    case PVM_MSR_IA32_TSC:
#if defined(__x86_64__)
        /* §1.4 / §10.28: guest TSC = host TSC, offset 0, no scaling. */
        *value = __builtin_ia32_rdtsc();
        break;
#else
        return MSR_FAIL;
#endif
    default:
        return MSR_FAIL; /* includes the undefined PVM MSRs 0x4b564df8..0x4b564dff */
    }
    return MSR_OK;
}

int pvm_m_wrmsr(struct pvm_cpu *cpu, const struct pvm_mem *mem, uint32_t index, uint64_t value,
                bool host)
{
    switch (index) {
    case MSR_PVM_LINEAR_ADDRESS_RANGE:
        if (!linear_range_ok(cpu, value, host))
            return MSR_FAIL;
        cpu->msr_linear_range = value;
        return MSR_OK;
    case MSR_PVM_VCPU_STRUCT:
        if (value & 0xfff)
            return MSR_FAIL;
        /* Non-zero must be mappable guest memory (the gfn->pfn cache activation). */
        if (value && (!mem || !mem->phys || !mem->phys(mem->opaque, value, 4096, true)))
            return MSR_FAIL;
        cpu->msr_vcpu_struct = value;
        return MSR_OK;
    case MSR_PVM_SUPERVISOR_RSP:
        cpu->msr_supervisor_rsp = value;
        return MSR_OK;
    case MSR_PVM_SUPERVISOR_REDZONE:
        cpu->msr_redzone = value;
        return MSR_OK;
    case MSR_PVM_EVENT_ENTRY:
        if (!pvm_m__is_canonical(cpu, value) ||
            !pvm_m__is_canonical(cpu, value + PVM_ENTRY_SUPERVISOR_EXCEPTION) ||
            !pvm_m__is_canonical(cpu, value + PVM_ENTRY_SUPERVISOR_INTERRUPT)) {
            if (host)
                return MSR_FAIL; /* a host error, not a guest shutdown */
            /* §10.12 decision: the write fails and a triple fault is requested (RFC). */
            pvm_m_shutdown(cpu, "WRMSR MSR_PVM_EVENT_ENTRY %#llx: entry block not canonical",
                           (unsigned long long)value);
            return MSR_TRIPLE;
        }
        cpu->msr_event_entry = value;
        return MSR_OK;
    case MSR_PVM_RETU_RIP:
        cpu->msr_retu_rip_plus2 = value + 2;
        return MSR_OK;
    case MSR_PVM_RETS_RIP:
        cpu->msr_rets_rip_plus2 = value + 2;
        return MSR_OK;
    case MSR_PVM_SWITCH_CR3:
        cpu->msr_switch_cr3 = value; /* §10.25: no flush */
        return MSR_OK;
    case PVM_MSR_EFER: {
        /* libpvm has no non-PVM mode: SCE/LME/LMA stay set; only NXE may change. */
        const uint64_t must = PVM_EFER_SCE | PVM_EFER_LME | PVM_EFER_LMA;
        if ((value & must) != must || (value & ~(must | PVM_EFER_NXE)))
            return MSR_FAIL;
        bool nx_changed = (value ^ cpu->efer) & PVM_EFER_NXE;
        cpu->efer = value;
        if (nx_changed)
            pvm_m__flush(mem, PVM_FLUSH_ALL, 0); /* the walk's NX rule changed */
        return MSR_OK;
    }
    case PVM_MSR_STAR:
        if (!host && !star_ok(value))
            return MSR_FAIL;
        cpu->msr_star = value;
        return MSR_OK;
    case PVM_MSR_SYSCALL_MASK:
        cpu->msr_sfmask = value; /* stored, ignored: entry RFLAGS is fixed (§5.6) */
        return MSR_OK;
    case PVM_MSR_LSTAR:
    case PVM_MSR_CSTAR:
    case PVM_MSR_FS_BASE:
    case PVM_MSR_GS_BASE:
    case PVM_MSR_KERNEL_GS_BASE:
    case PVM_MSR_IA32_SYSENTER_ESP:
    case PVM_MSR_IA32_SYSENTER_EIP:
        /* KVM rejects non-canonical values for these, host writes included. */
        if (!pvm_m__is_canonical(cpu, value))
            return MSR_FAIL;
        switch (index) {
        case PVM_MSR_LSTAR:             cpu->msr_lstar = value; break;
        case PVM_MSR_CSTAR:             cpu->msr_cstar = value; break;
        case PVM_MSR_FS_BASE:           cpu->fs_base = value; break;
        case PVM_MSR_GS_BASE:           cpu->gs_base = value; break;
        case PVM_MSR_KERNEL_GS_BASE:    cpu->msr_kernel_gs_base = value; break;
        case PVM_MSR_IA32_SYSENTER_ESP: cpu->msr_sysenter_esp = value; break;
        default:                        cpu->msr_sysenter_eip = value; break;
        }
        return MSR_OK;
    case PVM_MSR_IA32_SYSENTER_CS:
        cpu->msr_sysenter_cs = value & 0xffff;
        return MSR_OK;
    case PVM_MSR_TSC_AUX:
        if (value >> 32)
            return MSR_FAIL; /* reserved upper half, as KVM */
        cpu->msr_tsc_aux = value;
        return MSR_OK;
    case PVM_MSR_IA32_DEBUGCTL:
        return MSR_OK; /* §2: writes ignored */
    case PVM_MSR_IA32_TSC:
        return MSR_OK; /* §10.28 decision: TSC writes have no effect (offset forced to 0) */
    default:
        return MSR_FAIL;
    }
}
