/*
 * lib/core/backend.h - the backend ops table.
 *
 * A backend is one folder under lib/backends/ and one const ops table, listed
 * in lib/core/registry.c.  The core never names a backend: everything a
 * backend needs is an op here or a capability bit.  Required ops are checked
 * once (pvm__backend_check); a missing optional op makes the core return
 * PVM_ENOTSUP.
 */
#ifndef PVM_BACKEND_H
#define PVM_BACKEND_H

#include "core.h"

/* Capabilities. */
#define PVM_CAP_ANY_HOST_MEMORY (1u << 0) /* regions may use any host memory, not only the arena */
/* VMs created from a snapshot may share its pages (cow.c): the provider maps PVM_HV_PROT_SNAPSHOT pages. */
#define PVM_CAP_SHARED_SNAPSHOT (1u << 1)

struct pvm_cpu_provider;

struct pvm_backend_ops {
    const char *name;
    enum pvm_backend id;
    uint32_t caps;
    /* Backends built on the hypervisor core (lib/hv/): the provider that runs guest code. */
    const struct pvm_cpu_provider *cpu;

    /* Required. */
    int (*probe)(void);                 /* 0 if usable, else pvm__error(PVM_ENODEV, why) */
    int (*vm_init)(pvm_vm *vm);
    void (*vm_fini)(pvm_vm *vm);
    int (*vcpu_init)(pvm_vcpu *vcpu);
    void (*vcpu_fini)(pvm_vcpu *vcpu);
    int (*run)(pvm_vcpu *vcpu, struct pvm_exit *exit);
    int (*get_regs)(pvm_vcpu *vcpu, struct pvm_regs *regs);
    int (*set_regs)(pvm_vcpu *vcpu, const struct pvm_regs *regs);
    int (*get_sregs)(pvm_vcpu *vcpu, struct pvm_sregs *sregs);
    int (*set_sregs)(pvm_vcpu *vcpu, const struct pvm_sregs *sregs);
    int (*get_msr)(pvm_vcpu *vcpu, uint32_t index, uint64_t *value);
    int (*set_msr)(pvm_vcpu *vcpu, uint32_t index, uint64_t value);
    int (*inject)(pvm_vcpu *vcpu, const struct pvm_event *ev);
    int (*kick)(pvm_vcpu *vcpu);        /* async-signal-safe */

    /* Optional. */
    /* auto picks this backend only if prefer() is 0 too; else its pvm__error says why not. */
    int (*prefer)(void);
    /* region_add runs under the regions write lock; region_del after it is released. */
    int (*region_add)(pvm_vm *vm, const struct pvm_region *r);
    void (*region_del)(pvm_vm *vm, const struct pvm_region *r);
    int (*set_cpuid)(pvm_vcpu *vcpu, const struct pvm_cpuid_entry *e, size_t n);
    int (*translate)(pvm_vcpu *vcpu, uint64_t gva, uint64_t *gpa);
    uint64_t (*linear_range)(const pvm_vm *vm);               /* default MSR value */
    /* pvm_vcpu_set_guest_debug: @dbg already checked, all-zero means off. */
    int (*set_guest_debug)(pvm_vcpu *vcpu, const struct pvm_guest_debug *dbg);
    void (*lower_half)(const pvm_vm *vm, uint64_t *lo, uint64_t *hi);

    /*
     * Snapshots (snapshot.c); all three or none (PVM_ENOTSUP).  Called only
     * while no vCPU runs.  snap_format names the vCPU state layout: a
     * snapshot restores only into a backend with the same one.
     * snap_save_vcpu: the vCPU's whole state as a malloc'd blob.
     * snap_load_vcpu: check @blob (untrusted: from a file) and, if @apply,
     * make it the vCPU's state; a blob that fails the check changes nothing.
     * snap_flush: guest memory was copied or restored behind the shadow
     * MMUs: drop every writable mapping (@full: every mapping).
     */
    const char *snap_format;
    int (*snap_save_vcpu)(pvm_vcpu *v, void **blob, size_t *len);
    int (*snap_load_vcpu)(pvm_vcpu *v, const void *blob, size_t len, bool apply);
    void (*snap_flush)(pvm_vm *vm, bool full);
    /*
     * Guest RAM changed behind the shadow MMUs (a shared snapshot page was
     * copied): make vCPUs running guest code look at once (any thread).
     */
    void (*mem_changed)(pvm_vm *vm);
    /* Start what the vCPU's first run would start (a stub), ahead of time (pvm_snapshot_prestart). */
    int (*warm_vcpu)(pvm_vcpu *v);
    /* The exit the vCPU stopped at and awaits an answer for (reason NONE if none). */
    int (*pending_exit)(pvm_vcpu *v, struct pvm_exit *exit);
};

/* Registry (registry.c). */
const struct pvm_backend_ops *pvm__backend_lookup(enum pvm_backend id, const char **why);
int pvm__backend_select(enum pvm_backend want, const struct pvm_backend_ops **out);

#endif /* PVM_BACKEND_H */
