/*
 * hello: the smallest libpvm unikernel: console output and an exit status
 * (the number of arguments, so `pvm-run hello.elf a b` exits with 2).
 */
#include <pvm/guest/pvm_guest.h>

int main(int argc, char **argv)
{
    pvm_printf("Hello from a PVM guest on vCPU %u!\n", pvm_cpu_id());
    for (int i = 1; i < argc; i++)
        pvm_printf("arg %d: %s\n", i, argv[i]);
    return argc - 1;
}
