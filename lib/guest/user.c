/* lib/guest/user.c - user-mode entry (the ERETU part lives in entry.S). */
#include "pvm/guest/pvm_guest.h"
#include "runtime.h"

long pvm_enter_user(uint64_t entry, uint64_t user_rsp)
{
    bool irq = pvm_irq_save();
    long r = pvm__enter_user(entry, user_rsp);
    /* Back from a handler: the event entry cleared IF (§5.6). */
    if (irq)
        pvm_irq_enable();
    else
        pvm_irq_disable();
    return r;
}
