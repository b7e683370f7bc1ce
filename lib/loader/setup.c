/*
 * lib/loader/setup.c - vCPU boot state for a loaded guest.
 */
#include <string.h>

#include "core/core.h"
#include "loader.h"

typedef unsigned long long ull;

static int boot_state(pvm_vcpu *vcpu, pvm_gva_t entry, const char *fn, struct pvm_regs *r,
                      const struct pvm_loader **out)
{
    if (!vcpu)
        return pvm__error(PVM_EINVAL, "%s: NULL vcpu", fn);
    const struct pvm_loader *l = pvm_vcpu_vm(vcpu)->loader;
    if (!l)
        return pvm__error(PVM_ESTATE, "%s: no ELF loaded into this vCPU's VM", fn);
    uint32_t id = pvm_vcpu_id(vcpu);
    if (id >= l->nr_boot)
        return pvm__error(PVM_ERANGE, "%s: vCPU id %u has no boot area (%u were laid out)", fn, id,
                          l->nr_boot);
    struct pvm_sregs s;
    int rc = pvm_vcpu_get_sregs(vcpu, &s);
    if (rc < 0)
        return rc;
    s.mode = PVM_MODE_SUPERVISOR;
    s.cr3 = l->pt_root;
    if ((rc = pvm_vcpu_set_sregs(vcpu, &s)) < 0)
        return rc;
    memset(r, 0, sizeof(*r));
    r->rip = entry ? entry : l->entry;
    r->rsp = l->direct_map + pvm__loader_stack_top_gpa(l, id);
    r->rdi = l->direct_map + pvm__loader_boot_info_gpa(l, id);
    r->rsi = id;
    r->rflags = PVM_ENTRY_RFLAGS;
    *out = l;
    return 0;
}

int pvm_vcpu_setup_boot(pvm_vcpu *vcpu, pvm_gva_t entry)
{
    pvm__clear_error();
    struct pvm_regs r;
    const struct pvm_loader *l;
    int rc = boot_state(vcpu, entry, "pvm_vcpu_setup_boot", &r, &l);
    return rc < 0 ? rc : pvm_vcpu_set_regs(vcpu, &r);
}

int pvm_vcpu_setup_call(pvm_vcpu *vcpu, pvm_gva_t fn, const uint64_t *args, size_t nargs)
{
    pvm__clear_error();
    if (!vcpu)
        return pvm__error(PVM_EINVAL, "pvm_vcpu_setup_call: NULL vcpu");
    if (!fn || nargs > 6 || (nargs && !args))
        return pvm__error(PVM_EINVAL, "pvm_vcpu_setup_call: need a function and at most 6 arguments");
    pvm_gva_t ret;
    int rc = pvm_vm_elf_symbol(pvm_vcpu_vm(vcpu), "pvm_return_to_host", &ret);
    if (rc < 0)
        return pvm__error(rc, "pvm_vcpu_setup_call: the guest has no pvm_return_to_host "
                          "(link it with the libpvm guest SDK)");
    struct pvm_regs r;
    const struct pvm_loader *l = NULL; /* -O3 cannot see boot_state() set it */
    if ((rc = boot_state(vcpu, fn, "pvm_vcpu_setup_call", &r, &l)) < 0)
        return rc;
    uint64_t *argregs[6] = { &r.rdi, &r.rsi, &r.rdx, &r.rcx, &r.r8, &r.r9 };
    for (size_t i = 0; i < 6; i++)
        *argregs[i] = i < nargs ? args[i] : 0;
    /* Push the return address: RSP % 16 == 8 at function entry, as after a CALL. */
    uint64_t top_gpa = pvm__loader_stack_top_gpa(l, pvm_vcpu_id(vcpu)) - 8;
    memcpy(l->ram + top_gpa, &ret, 8);
    r.rsp -= 8;
    return pvm_vcpu_set_regs(vcpu, &r);
}
