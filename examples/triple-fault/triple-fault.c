/*
 * triple-fault: a guest that crashes on purpose, to show (and test) what the
 * host sees.  It points RSP at an unmapped address and executes UD2: the
 * hypervisor cannot write the #UD frame to the stack (§5.4), so the vCPU
 * triple-faults and pvm-run reports the reason and the guest RIP.
 */
#include <pvm/guest/pvm_guest.h>

int main(void)
{
    pvm_printf("triple-fault: crashing on purpose\n");
    __asm__ volatile("movq $0x8000, %rsp\n\tud2");
    return 0;
}
