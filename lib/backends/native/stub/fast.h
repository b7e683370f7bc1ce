/*
 * lib/backends/native/stub/fast.h - the stub's smod fast path (fast.c).
 */
#ifndef PVM_NSTUB_FAST_H
#define PVM_NSTUB_FAST_H

#include <asm/siginfo.h>
#include <asm/ucontext.h>

/*
 * Called first by the trap handler (every signal blocked).  Returns 1 if the
 * event was handled completely (the frame in @uc now holds the guest's next
 * state: the handler returns straight to it), NSTUB_FAST_LINKED if it was
 * the guest kernel's ERETU handed to the user stub (link.c: the stub waits
 * for the next request), 0 if it must be reported.
 */
#define NSTUB_FAST_LINKED 2
int nstub_fast(int sig, siginfo_t *si, struct ucontext *uc);

#endif /* PVM_NSTUB_FAST_H */
