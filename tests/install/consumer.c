/* An outside program built against the installed libpvm (find_package and pkg-config). */
#include <pvm/pvm.h>
#include <stdio.h>

int main(void)
{
    pvm_vm *vm;
    int rc = pvm_vm_create(&vm, NULL);
    if (rc < 0) {
        fprintf(stderr, "pvm_vm_create: %s (%s)\n", pvm_strerror(rc), pvm_last_error());
        return 1;
    }
    printf("libpvm %s on %s\n", pvm_version_string(), pvm_backend_name(pvm_vm_backend(vm)));
    pvm_vm_destroy(vm);
    return 0;
}
