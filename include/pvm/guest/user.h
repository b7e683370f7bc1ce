/*
 * pvm/guest/user.h - running code in user mode (umod).
 *
 * pvm_enter_user() fills the PVCS and executes ERETU (§6.2); the user code
 * runs on the user page table set with pvm_pt_switch_user().  Every user
 * event comes back to the kernel's handlers (pvm/guest/trap.h) on the stack
 * pvm_enter_user() was called on; a handler ends the user program with
 * pvm_user_return(), which makes pvm_enter_user() return.
 *
 * Code and data the user program needs must be mapped PVM_MAP_USER in the
 * user root.  PVM_USER_TEXT / PVM_USER_DATA put functions and variables into
 * page-aligned sections (bounded by the symbols below) so a kernel can map
 * exactly those pages for its user program.
 */
#ifndef PVM_GUEST_USER_H
#define PVM_GUEST_USER_H

#include <stdint.h>

#define PVM_USER_TEXT __attribute__((section(".user.text"), used, noinline))
#define PVM_USER_DATA __attribute__((section(".user.data")))

/* Page-aligned bounds of the user sections (from the SDK linker script). */
extern char __pvm_user_text_start[], __pvm_user_text_end[];
extern char __pvm_user_data_start[], __pvm_user_data_end[];

/**
 * Run @entry in user mode with RSP = @user_rsp (RFLAGS.IF = 1, all other
 * registers zero) until a handler calls pvm_user_return(); returns that
 * value.  Not reentrant on one vCPU.  The caller's interrupt state is
 * restored on return.
 */
long pvm_enter_user(uint64_t entry, uint64_t user_rsp);
/**
 * From a handler of a user-mode event: abandon the user context and make the
 * pending pvm_enter_user() return @value.
 */
__attribute__((noreturn)) void pvm_user_return(long value);

/**
 * SYSCALL from user mode: RAX = @nr, RDI, RSI, RDX = arguments; returns RAX.
 * Always inlined, so PVM_USER_TEXT code can use it.
 */
static inline __attribute__((always_inline)) long pvm_user_syscall(long nr, long a0, long a1, long a2)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a0), "S"(a1), "d"(a2)
                     : "rcx", "r11", "memory");
    return ret;
}

#endif /* PVM_GUEST_USER_H */
