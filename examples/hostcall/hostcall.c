/*
 * hostcall: the guest calls a function of its host application with a
 * string argument.  Run it with examples/hostcall-host (which registers the
 * handler); pvm-run answers unknown host calls with -ENOSYS.
 */
#include <pvm/guest/pvm_guest.h>

#define HOSTCALL_SHOUT (PVM_HOSTCALL_USER_FIRST + 0) /* a0 = string, a1 = length */

int main(void)
{
    static const char text[] = "hello from the guest";
    int64_t r = (int64_t)pvm_hostcall(HOSTCALL_SHOUT, text, sizeof(text) - 1);
    pvm_printf("hostcall: host returned %ld\n", (long)r);
    return r == (int64_t)(sizeof(text) - 1) ? 0 : 1;
}
