/*
 * embed-guest: a guest that exports functions for a host application to call
 * (see embed.c).  It has no main: run on its own it just exits with 0.
 */
#include <pvm/guest/pvm_guest.h>

/* Called by the host through pvm_vcpu_setup_call(). */
uint64_t fib(uint64_t n)
{
    uint64_t a = 0, b = 1;
    while (n--) {
        uint64_t t = a + b;
        a = b;
        b = t;
    }
    return a;
}
