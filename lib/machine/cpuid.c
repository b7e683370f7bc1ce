/*
 * lib/machine/cpuid.c - the VMM CPUID table the synthetic CPUID reads (§6.1,
 * §8.1, §9.2), with the KVM/PVM signature leaves present by default.
 */
#include <string.h>

#include "model.h"

/* §8.1 defaults.  §10.31 decision: EBX is 0x4d5650 (code), not the spec's 0x6d7670. */
static const struct pvm_cpuid_entry default_leaves[] = {
    { .function = PVM_KVM_CPUID_SIGNATURE, .eax = PVM_KVM_CPUID_VENDOR_FEATURES,
      .ebx = PVM_KVM_SIGNATURE_EBX, .ecx = PVM_KVM_SIGNATURE_ECX, .edx = PVM_KVM_SIGNATURE_EDX },
    /* No KVM PV features advertised (gates KICK_CPU / SEND_IPI / SCHED_YIELD, §7.3). */
    { .function = PVM_KVM_CPUID_FEATURES },
    /* EAX = 0: the RFC defines no PVM feature bits. */
    { .function = PVM_KVM_CPUID_VENDOR_FEATURES, .ebx = PVM_CPUID_SIGNATURE },
};
#define NR_DEFAULT_LEAVES (sizeof(default_leaves) / sizeof(default_leaves[0]))

static const struct pvm_cpuid_entry *find(const struct pvm_cpuid_entry *t, size_t n,
                                          uint32_t leaf, uint32_t subleaf)
{
    for (size_t i = 0; i < n; i++) {
        if (t[i].function != leaf)
            continue;
        if ((t[i].flags & PVM_CPUID_FLAG_SIGNIFICANT_INDEX) && t[i].index != subleaf)
            continue;
        return &t[i];
    }
    return NULL;
}

static bool has_leaf(const struct pvm_cpu *cpu, uint32_t leaf)
{
    for (uint32_t i = 0; i < cpu->nr_cpuid; i++)
        if (cpu->cpuid[i].function == leaf)
            return true;
    return false;
}

int pvm_m_set_cpuid(struct pvm_cpu *cpu, const struct pvm_cpuid_entry *e, size_t n)
{
    if (n > PVM_MAX_CPUID_ENTRIES || (n && !e))
        return PVM_EINVAL;
    if (n)
        memcpy(cpu->cpuid, e, n * sizeof(*e));
    cpu->nr_cpuid = (uint32_t)n;
    /* Add the PVM leaves the VMM left out; a VMM-provided leaf overrides ours. */
    for (size_t i = 0; i < NR_DEFAULT_LEAVES; i++)
        if (!has_leaf(cpu, default_leaves[i].function) && cpu->nr_cpuid < PVM_MAX_CPUID_ENTRIES)
            cpu->cpuid[cpu->nr_cpuid++] = default_leaves[i];
    return 0;
}

void pvm_m_cpuid(const struct pvm_cpu *cpu, uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{
    const struct pvm_cpuid_entry *e = find(cpu->cpuid, cpu->nr_cpuid, leaf, subleaf);

    /* Defaults also answer when the table is empty (fresh vCPU) or was full. */
    if (!e && !has_leaf(cpu, leaf))
        e = find(default_leaves, NR_DEFAULT_LEAVES, leaf, subleaf);
    /* A leaf missing from the table reads as zeros (AMD-style, no Intel "last leaf" rule). */
    if (!e) {
        out[0] = out[1] = out[2] = out[3] = 0;
        return;
    }
    out[0] = e->eax;
    out[1] = e->ebx;
    out[2] = e->ecx;
    out[3] = e->edx;
}

size_t pvm_m_cpuid_effective(const struct pvm_cpu *cpu, struct pvm_cpuid_entry *out, size_t max)
{
    size_t n = cpu->nr_cpuid;
    if (n + NR_DEFAULT_LEAVES > max)
        return 0;
    memcpy(out, cpu->cpuid, n * sizeof(*out));
    /* pvm_m_cpuid falls back to a default only for a function the table lacks entirely. */
    for (size_t i = 0; i < NR_DEFAULT_LEAVES; i++)
        if (!has_leaf(cpu, default_leaves[i].function))
            out[n++] = default_leaves[i];
    return n;
}
