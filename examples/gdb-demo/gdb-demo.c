/*
 * gdb-demo: a guest to debug with `pvm-run --gdb` (docs/guide-first-unikernel.md,
 * "A debugging session"; tests/test_gdbstub.c drives gdb through it).  Built
 * without optimisation so that each line is one gdb step.
 */
#pragma GCC optimize("O0")

#include <pvm/guest/pvm_guest.h>

/* A global to print and change from gdb. */
volatile int counter = 41;

int add_one(int x)
{
    counter = x + 1;
    return counter;
}

int compute(int x)
{
    int y = add_one(x);
    return y * 2;
}

int main(void)
{
    int answer = compute(counter);
    pvm_printf("gdb-demo: answer %d\n", answer);
    return answer == 84 ? 0 : 1;
}
