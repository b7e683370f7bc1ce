/*
 * lib/guest/entry.S - boot entry, PVM event entry stubs, ERETU/ERETS sites.
 *
 * Section numbers (§) refer to shared/docs/pvm-abi.md.  The PVCS offsets
 * (PVCS_*) come from pvm/abi.h, whose C parts are hidden from the assembler.
 */
#include "pvm/abi.h"
#include "percpu.h"

#define HW_errcode 0   /* struct pvm_supervisor_event (§4) */
#define HW_rip     8
#define HW_cs      16
#define HW_rflags  24
#define HW_rsp     32
#define HW_ss      40
#define HW_rcx     48
#define HW_r11     56
#define HOSTCALL_EXIT 0x4c50564d00000001

/* Save / restore every GPR but RCX and R11 (the event put those elsewhere). */
.macro SAVE_REGS
    movq %rax, F_RAX(%rsp)
    movq %rbx, F_RBX(%rsp)
    movq %rdx, F_RDX(%rsp)
    movq %rsi, F_RSI(%rsp)
    movq %rdi, F_RDI(%rsp)
    movq %rbp, F_RBP(%rsp)
    movq %r8, F_R8(%rsp)
    movq %r9, F_R9(%rsp)
    movq %r10, F_R10(%rsp)
    movq %r12, F_R12(%rsp)
    movq %r13, F_R13(%rsp)
    movq %r14, F_R14(%rsp)
    movq %r15, F_R15(%rsp)
.endm

.macro RESTORE_REGS
    movq F_RBX(%rsp), %rbx
    movq F_RDX(%rsp), %rdx
    movq F_RSI(%rsp), %rsi
    movq F_RDI(%rsp), %rdi
    movq F_RBP(%rsp), %rbp
    movq F_R8(%rsp), %r8
    movq F_R9(%rsp), %r9
    movq F_R10(%rsp), %r10
    movq F_R12(%rsp), %r12
    movq F_R13(%rsp), %r13
    movq F_R14(%rsp), %r14
    movq F_R15(%rsp), %r15
    movq F_RAX(%rsp), %rax
.endm

/* Copy a PVCS field into the frame (clobbers RAX, already saved). */
.macro PVCS_TO_FRAME field, off
    movq %gs:\field, %rax
    movq %rax, \off(%rsp)
.endm

    .section .text.pvm_boot, "ax"
    .code64

/* _start: 64-bit smod, RDI = boot-info GVA, RSI = vCPU id, RSP = boot stack. */
    .globl _start
    .type _start, @function
_start:
    xorl %ebp, %ebp
    andq $-16, %rsp
    call pvm__boot
1:  ud2
    jmp 1b
    .size _start, . - _start

/*
 * Return address the host pushes for pvm_vcpu_setup_call(): the function's
 * result goes back to the host as PVM_HOSTCALL_EXIT's argument.
 */
    .globl pvm_return_to_host
    .type pvm_return_to_host, @function
pvm_return_to_host:
    movq %rax, %rbx
    movabsq $HOSTCALL_EXIT, %rax
    syscall
1:  ud2
    jmp 1b
    .size pvm_return_to_host, . - pvm_return_to_host

/*
 * The event entry block (MSR_PVM_EVENT_ENTRY, §5.2).  Each stub must fit in
 * its 256-byte slot: .org fails the build if one grows too long.
 */
    .section .text.pvm_events, "ax"
    .balign 4096
    .globl pvm__event_entry
pvm__event_entry:
/* +0: user event (umod exception/interrupt/NMI); RSP = MSR_PVM_SUPERVISOR_RSP. */
    subq $FRAME_SIZE, %rsp
    SAVE_REGS
    movq $KIND_USER, F_KIND(%rsp)
    jmp user_common

    .org pvm__event_entry + 256
/* +256: supervisor exception; RSP points at the 64-byte frame of §4. */
    subq $FRAME_SIZE, %rsp
    SAVE_REGS
    movq $KIND_SUPER_EXC, F_KIND(%rsp)
    jmp super_exc_common

    .org pvm__event_entry + 512
/*
 * +512: supervisor interrupt; state is in the PVCS (§5.5).  Reserve a
 * 64-byte slot above the frame so the ERETS frame can be built in place.
 */
    subq $(FRAME_SIZE + 64), %rsp
    SAVE_REGS
    movq $KIND_SUPER_IRQ, F_KIND(%rsp)
    jmp super_irq_common

    .org pvm__event_entry + 768

/* MSR_LSTAR: SYSCALL from umod; RSP = MSR_PVM_SUPERVISOR_RSP (§5.3). */
    .globl pvm__syscall_entry
pvm__syscall_entry:
    subq $FRAME_SIZE, %rsp
    SAVE_REGS
    movq $KIND_SYSCALL, F_KIND(%rsp)
    jmp user_common

/* The user context was written to the PVCS (§5.3): copy it into the frame. */
user_common:
    PVCS_TO_FRAME PVCS_rcx, F_RCX
    PVCS_TO_FRAME PVCS_r11, F_R11
    PVCS_TO_FRAME PVCS_rip, F_RIP
    PVCS_TO_FRAME PVCS_rsp, F_RSP
    PVCS_TO_FRAME PVCS_cr2, F_CR2
    movl %gs:PVCS_eflags, %eax
    movq %rax, F_RFLAGS(%rsp)
    movzwl %gs:PVCS_user_cs, %eax
    movq %rax, F_CS(%rsp)
    movzwl %gs:PVCS_user_ss, %eax
    movq %rax, F_SS(%rsp)
    movl %gs:PVCS_event_vector, %eax
    movq %rax, F_VECTOR(%rsp)
    movl %gs:PVCS_event_errcode, %eax
    movq %rax, F_ERRCODE(%rsp)
    movq %rsp, %rdi
    call pvm__trap_dispatch
/* Back to user mode: the frame goes into the PVCS and ERETU loads it (§6.2). */
    movq F_RIP(%rsp), %rax
    movq %rax, %gs:PVCS_rip
    movq F_RSP(%rsp), %rax
    movq %rax, %gs:PVCS_rsp
    movq F_RCX(%rsp), %rax
    movq %rax, %gs:PVCS_rcx
    movq F_R11(%rsp), %rax
    movq %rax, %gs:PVCS_r11
    movq F_RFLAGS(%rsp), %rax
    movl %eax, %gs:PVCS_eflags
    movq F_CS(%rsp), %rax
    movw %ax, %gs:PVCS_user_cs
    movq F_SS(%rsp), %rax
    movw %ax, %gs:PVCS_user_ss
    RESTORE_REGS
    addq $FRAME_SIZE, %rsp
    jmp pvm__eretu

super_exc_common:
    movq FRAME_SIZE+HW_errcode(%rsp), %rax
    movl %eax, %ecx                 /* RCX/R11 live in the hardware frame */
    movq %rcx, F_ERRCODE(%rsp)
    shrq $32, %rax
    movq %rax, F_VECTOR(%rsp)
    movq FRAME_SIZE+HW_rip(%rsp), %rax
    movq %rax, F_RIP(%rsp)
    movq FRAME_SIZE+HW_cs(%rsp), %rax
    movq %rax, F_CS(%rsp)
    movq FRAME_SIZE+HW_rflags(%rsp), %rax
    movq %rax, F_RFLAGS(%rsp)
    movq FRAME_SIZE+HW_rsp(%rsp), %rax
    movq %rax, F_RSP(%rsp)
    movq FRAME_SIZE+HW_ss(%rsp), %rax
    movq %rax, F_SS(%rsp)
    movq FRAME_SIZE+HW_rcx(%rsp), %rax
    movq %rax, F_RCX(%rsp)
    movq FRAME_SIZE+HW_r11(%rsp), %rax
    movq %rax, F_R11(%rsp)
    /* A nested #PF would overwrite PVCS.cr2: read it first (§10.21). */
    PVCS_TO_FRAME PVCS_cr2, F_CR2
    jmp super_dispatch

super_irq_common:
    PVCS_TO_FRAME PVCS_rip, F_RIP
    PVCS_TO_FRAME PVCS_rsp, F_RSP
    PVCS_TO_FRAME PVCS_rcx, F_RCX
    PVCS_TO_FRAME PVCS_r11, F_R11
    PVCS_TO_FRAME PVCS_cr2, F_CR2
    movl %gs:PVCS_eflags, %eax
    movq %rax, F_RFLAGS(%rsp)
    movl %gs:PVCS_event_vector, %eax
    movq %rax, F_VECTOR(%rsp)
    movq $0, F_ERRCODE(%rsp)
    movq $KERNEL_CS, F_CS(%rsp)
    movq $KERNEL_SS, F_SS(%rsp)

super_dispatch:
    movq %rsp, %rdi
    call pvm__trap_dispatch
/* Back to supervisor mode: build the §4 frame above ours and ERETS (§6.3). */
    movq F_RIP(%rsp), %rax
    movq %rax, FRAME_SIZE+HW_rip(%rsp)
    movq F_RFLAGS(%rsp), %rax
    movq %rax, FRAME_SIZE+HW_rflags(%rsp)
    movq F_RSP(%rsp), %rax
    movq %rax, FRAME_SIZE+HW_rsp(%rsp)
    movq F_RCX(%rsp), %rax
    movq %rax, FRAME_SIZE+HW_rcx(%rsp)
    movq F_R11(%rsp), %rax
    movq %rax, FRAME_SIZE+HW_r11(%rsp)
    RESTORE_REGS
    addq $FRAME_SIZE, %rsp
    jmp pvm__erets

/* ERETU / ERETS: a SYSCALL at the address in MSR_PVM_RETU_RIP / RETS_RIP. */
    .globl pvm__eretu
pvm__eretu:
    syscall
    ud2
    .globl pvm__erets
pvm__erets:
    syscall
    ud2

/*
 * long pvm__enter_user(uint64_t rip, uint64_t rsp): save the callee-saved
 * registers, fill the PVCS user context and ERETU.  ERETU stores the RSP
 * below into MSR_PVM_SUPERVISOR_RSP, so user events arrive just below the
 * saved context, which pvm_user_return() resumes.
 */
    .section .text, "ax"
    .globl pvm__enter_user
    .type pvm__enter_user, @function
pvm__enter_user:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp                   /* keep RSP 16-byte aligned for the events */
    movq %rsp, %gs:PERCPU_USER_CTX
    movq %rdi, %gs:PVCS_rip
    movq %rdi, %gs:PVCS_rcx
    movq %rsi, %gs:PVCS_rsp
    movq $0x202, %gs:PVCS_r11
    movl $0x202, %gs:PVCS_eflags
    movw $0x33, %gs:PVCS_user_cs    /* host __USER_CS / __USER_DS (§1.1) */
    movw $0x2b, %gs:PVCS_user_ss
    movq $0, %gs:PVCS_user_gsbase
    xorl %eax, %eax                 /* leak no kernel values to user mode */
    xorl %ebx, %ebx
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %edi, %edi
    xorl %ebp, %ebp
    xorl %r8d, %r8d
    xorl %r9d, %r9d
    xorl %r10d, %r10d
    xorl %r12d, %r12d
    xorl %r13d, %r13d
    xorl %r14d, %r14d
    xorl %r15d, %r15d
    jmp pvm__eretu
    .size pvm__enter_user, . - pvm__enter_user

    .globl pvm_user_return
    .type pvm_user_return, @function
pvm_user_return:
    movq %rdi, %rax
    movq %gs:PERCPU_USER_CTX, %rsp
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size pvm_user_return, . - pvm_user_return

    .section .note.GNU-stack, "", @progbits
