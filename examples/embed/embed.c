/*
 * embed: the smallest host program that runs guest code: create a VM, load
 * a guest, call one of its functions and print the result.
 *
 *   embed embed-guest.elf [n]     prints fib(n) computed inside the guest
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pvm/abi.h>
#include <pvm/pvm.h>

int main(int argc, char **argv)
{
    pvm_vm *vm = NULL;
    pvm_vcpu *vcpu = NULL;
    pvm_gva_t fib;
    uint64_t n = argc > 2 ? strtoull(argv[2], NULL, 0) : 50;
    struct pvm_exit e = { 0 };

    if (argc > 1 && !strcmp(argv[1], "--help")) {
        printf("usage: embed guest.elf [n]\n"
               "Create a VM, load guest.elf, call its function fib(n) (default n = 50)\n"
               "and print the result the guest returns.\n");
        return 0;
    }
    if (argc < 2 || pvm_vm_create(&vm, NULL) < 0 || pvm_vm_load_elf(vm, argv[1], NULL, NULL) < 0 ||
        pvm_vcpu_create(&vcpu, vm, NULL) < 0 || pvm_vm_elf_symbol(vm, "fib", &fib) < 0 ||
        pvm_vcpu_setup_call(vcpu, fib, &n, 1) < 0 || pvm_vcpu_run(vcpu, &e) < 0) {
        fprintf(stderr, "embed: %s\n", argc < 2 ? "usage: embed guest.elf [n]" : pvm_last_error());
        pvm_vm_destroy(vm);
        return 1;
    }
    /* The function's return value comes back as the PVM_HOSTCALL_EXIT host call. */
    if (e.reason != PVM_EXIT_HYPERCALL || e.u.hypercall.nr != PVM_HOSTCALL(PVM_HOSTCALL_EXIT)) {
        fprintf(stderr, "embed: unexpected exit %u\n", e.reason);
        pvm_vm_destroy(vm);
        return 1;
    }
    printf("fib(%llu) = %llu\n", (unsigned long long)n, (unsigned long long)e.u.hypercall.args[0]);
    pvm_vm_destroy(vm);
    return 0;
}
