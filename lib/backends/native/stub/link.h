/*
 * lib/backends/native/stub/link.h - the user/kernel hand-off inside the
 * stubs (link.c; stub_abi.h struct nstub_link).  Freestanding.
 */
#ifndef PVM_NSTUB_LINK_H
#define PVM_NSTUB_LINK_H

#include <stdint.h>

#include <asm/siginfo.h>
#include <asm/ucontext.h>

/* What wait_change() returns when the kernel stub claimed a request (no nstub_state). */
#define NSTUB_ST_CLAIMED 0x100u

/*
 * User role, from the trap handler: hand this SYSCALL to the kernel stub and
 * wait for its ERETU.  1: answered, the frame holds the user state to return
 * to; 0: report it to the library as usual (not linked, not taken, or the
 * kernel stub needs the library: it adopts the kernel stub's report).
 */
int nstub_link_user(int sig, siginfo_t *si, struct ucontext *uc);

/* Kernel role, while waiting (ctl->state TRAPPED): take a posted request.  1: claimed. */
int nstub_link_claim(void);
/* Kernel role, after a claim: the frame becomes the guest kernel's SYSCALL entry (§5.3, §5.6). */
void nstub_link_enter(struct ucontext *uc);
/* Kernel role, at the guest's ERETU (fast.c): hand the user state back.  1: done, the stub waits. */
int nstub_link_eretu(struct ucontext *uc);
/* Kernel role, after publishing a report: tell a waiting user stub to report too. */
void nstub_link_reported(void);
/* Kernel role: spinning for requests (1) or not (0), as the user stub sees it. */
void nstub_link_spinning(int on);

/* The TSC and the FS/GS bases (every stub file that reads them). */
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline uint64_t rdfsbase(void)
{
    uint64_t v;
    __asm__ volatile("rdfsbase %0" : "=r"(v));
    return v;
}

static inline uint64_t rdgsbase(void)
{
    uint64_t v;
    __asm__ volatile("rdgsbase %0" : "=r"(v));
    return v;
}

/* From stub_main.c. */
void nstub_orphan_check(void);
void nstub_set_base(int code, uint64_t want, uint64_t cur);
/* The 16 GPRs between a signal frame and a register block (x86 encoding order). */
struct nstub_abi_regs;
struct sigcontext;
void nstub_gprs_to(volatile struct nstub_abi_regs *r, const struct sigcontext *sc);
void nstub_gprs_from(struct sigcontext *sc, const volatile struct nstub_abi_regs *r);
/* Where the frame of this trap is: ctl->frame_off / fpstate_off / fpstate_size for the library. */
void nstub_note_frame(struct ucontext *uc);

#endif /* PVM_NSTUB_LINK_H */
