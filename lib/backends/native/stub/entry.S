/*
 * lib/backends/native/stub/entry.S - the stub's entry point and its only
 * SYSCALL instruction.
 *
 * The seccomp filter allows syscalls only from the instruction right after
 * sys_insn, so there is exactly one place in the stub (and in the whole
 * address space) from which a syscall can get through; the linker script
 * puts it at NSTUB_SYSCALL_INSN.
 */
    .section .text.sys, "ax", @progbits
    .globl sys_insn
    .type sys_insn, @function
sys_insn:
    syscall
    ret
    .size sys_insn, . - sys_insn

    .text
/* long nstub_sys(long nr, long a1, long a2, long a3, long a4, long a5, long a6) */
    .globl nstub_sys
    .type nstub_sys, @function
nstub_sys:
    mov %rdi, %rax
    mov %rsi, %rdi
    mov %rdx, %rsi
    mov %rcx, %rdx
    mov %r8, %r10
    mov %r9, %r8
    mov 8(%rsp), %r9
    call sys_insn
    ret
    .size nstub_sys, . - nstub_sys

/*
 * sa_restorer: rt_sigreturn through the one syscall instruction.  The
 * kernel's sigreturn takes only some RFLAGS bits from the frame and keeps NT
 * and ID from the RFLAGS the rt_sigreturn SYSCALL was made with (R11): give
 * ours those two bits of the frame's, so the guest resumes with them (§1.1:
 * ERETU/ERETS restore NT and ID).  RSP points at the ucontext here; its
 * uc_mcontext.eflags is at 40 + 136.  RAX and RCX are free: sigreturn loads all.
 */
#define UC_EFLAGS 176
#define NT_ID 0x204000
    .globl nstub_restorer
    .type nstub_restorer, @function
nstub_restorer:
    mov UC_EFLAGS(%rsp), %rcx
    and $NT_ID, %ecx
    pushfq
    andq $~NT_ID, (%rsp)
    or %rcx, (%rsp)
    popfq
    mov $15, %eax
    jmp sys_insn
    .size nstub_restorer, . - nstub_restorer

    .globl _start
    .type _start, @function
_start:
    mov %rsp, %rdi              /* argc, argv: stub_main looks for the zygote argument */
    lea stub_stack_top(%rip), %rsp
    and $-16, %rsp
    xor %ebp, %ebp
    call stub_main
    /* stub_main never returns: it ends in the boot trap. */
    ud2
    .size _start, . - _start

/* The boot trap: the first report comes from here; the first RESUME never returns to it. */
    .globl nstub_boot_trap
    .type nstub_boot_trap, @function
nstub_boot_trap:
    ud2
    .size nstub_boot_trap, . - nstub_boot_trap

/* The stub's own stack (the handler runs on the signal stack in the control area). */
    .bss
    .balign 64
stub_stack:
    .skip 16384
stub_stack_top:

    .section .note.GNU-stack, "", @progbits
