/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kmod/switch.S - the world switch: into guest ring 3 and back.
 *
 * Layout and rules: switch.h.  The code between pvm_switch_text_start and
 * pvm_switch_text_end runs under guest roots too (mapped at its own address
 * in every guest root's slot 511), so it touches nothing but its per-CPU
 * area and the IDT while a guest root is loaded; it never trusts the GS base
 * the guest left (the guest owns it, with FSGSBASE): a trap from ring 3
 * SWAPGS's to the area (MSR_KERNEL_GS_BASE holds it while the guest runs), an
 * NMI taken in ring 0 finds the area at the top of its IST stack.
 *
 * No stack frames here: objtool skips this file (Kbuild).
 */
#include <linux/linkage.h>
#include <asm/msr-index.h>
#include <asm/nospec-branch.h>
#include <asm/processor-flags.h>
#include <asm/segment.h>

#include "switch.h"

/* MSR \msr = %rax (clobbers %rcx, %rdx). */
.macro WRMSR_RAX msr
	movl	$\msr, %ecx
	movq	%rax, %rdx
	shrq	$32, %rdx
	wrmsr
.endm

/* Drop global TLB entries (host ones could shadow guest upper-half pages): toggle CR4.PGE. */
.macro TOGGLE_PGE area
	movq	PC_CR4(\area), %rax
	movq	%rax, %rdx
	andq	$~X86_CR4_PGE, %rdx
	movq	%rdx, %cr4
	movq	%rax, %cr4
.endm

/* Quadword \src -> \dst through %rax. */
.macro MOVQ_MEM src, dst
	movq	\src, %rax
	movq	%rax, \dst
.endm

	.section .pvm_switch.text, "ax"
	.balign 4096
SYM_CODE_START_NOALIGN(pvm_switch_text_start)

/*
 * void pvm_switch_run(struct pvm_cpu_area *pc) - interrupts off.  Runs the
 * guest registers of @pc under pc->guest_cr3 until its next exit, which
 * fills pc's registers, vector, error code and CR2.  The caller has saved
 * and set the MSRs (FS base, LSTAR, SYSENTER_CS) and the host descriptors.
 */
	.balign 16
SYM_INNER_LABEL(pvm_switch_run, SYM_L_GLOBAL)
	pushq	%rbp
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	pushfq
	movq	%rsp, PC_HOST_RSP(%rdi)

	/* Our GDT, TSS and IDT: in module memory, valid under both roots. */
	lgdt	PC_GDT_DESC(%rdi)
	movl	$PVM_SEL_TSS, %eax
	ltr	%ax
	lidt	pvm_idt_desc(%rip)

	/* MSR_KERNEL_GS_BASE = the area (for the exit's SWAPGS), GS base = the guest's. */
	movq	%rdi, %rax
	WRMSR_RAX MSR_KERNEL_GS_BASE
	movq	PC_GUEST_GS(%rdi), %rax
	WRMSR_RAX MSR_GS_BASE

	/* Our RSP0 stack from here (the host stack is not in the guest root). */
	leaq	PC_STACK_TOP(%rdi), %rsp

	movq	PC_GUEST_CR3(%rdi), %rax
	movq	%rax, %cr3
	/* Host global TLB entries could shadow guest upper-half pages: drop them. */
	cmpq	$0, PC_FLUSH_GLOBAL(%rdi)
	je	1f
	TOGGLE_PGE %rdi
1:
	/* The PVCS window: the host's (global) entry for its address must not survive here. */
	cmpq	$0, PC_FAST(%rdi)
	je	2f
	movq	PC_PVCS(%rdi), %rax
	invlpg	(%rax)
2:
	jmp	pvm_enter_guest

/*
 * Into the guest with the registers of the area %rdi, from its RSP0 stack
 * (the root and the GS bases are set): the IRETQ frame, then every GPR.
 */
pvm_enter_guest:
	leaq	PC_STACK_TOP(%rdi), %rsp
	pushq	$__USER_DS
	pushq	PC_GPR_RSP(%rdi)
	pushq	PC_RFLAGS(%rdi)
	pushq	PC_CS(%rdi)
	pushq	PC_RIP(%rdi)
	movq	PC_GPR_RAX(%rdi), %rax
	movq	PC_GPR_RCX(%rdi), %rcx
	movq	PC_GPR_RDX(%rdi), %rdx
	movq	PC_GPR_RBX(%rdi), %rbx
	movq	PC_GPR_RBP(%rdi), %rbp
	movq	PC_GPR_RSI(%rdi), %rsi
	movq	PC_GPR_R8(%rdi), %r8
	movq	PC_GPR_R9(%rdi), %r9
	movq	PC_GPR_R10(%rdi), %r10
	movq	PC_GPR_R11(%rdi), %r11
	movq	PC_GPR_R12(%rdi), %r12
	movq	PC_GPR_R13(%rdi), %r13
	movq	PC_GPR_R14(%rdi), %r14
	movq	PC_GPR_R15(%rdi), %r15
	movq	PC_GPR_RDI(%rdi), %rdi
	iretq

/* Save the GPRs but RSP (and RDI's) to the area at %gs (after SWAPGS). */
.macro SAVE_GPRS
	movq	%rax, %gs:PC_GPR_RAX
	movq	%rcx, %gs:PC_GPR_RCX
	movq	%rdx, %gs:PC_GPR_RDX
	movq	%rbx, %gs:PC_GPR_RBX
	movq	%rbp, %gs:PC_GPR_RBP
	movq	%rsi, %gs:PC_GPR_RSI
	movq	%rdi, %gs:PC_GPR_RDI
	movq	%r8, %gs:PC_GPR_R8
	movq	%r9, %gs:PC_GPR_R9
	movq	%r10, %gs:PC_GPR_R10
	movq	%r11, %gs:PC_GPR_R11
	movq	%r12, %gs:PC_GPR_R12
	movq	%r13, %gs:PC_GPR_R13
	movq	%r14, %gs:PC_GPR_R14
	movq	%r15, %gs:PC_GPR_R15
.endm

/*
 * SYSCALL from guest ring 3: MSR_LSTAR (64-bit code) and MSR_CSTAR (compat
 * mode, AMD only: Intel raises #UD) while the guest runs.  RSP is the
 * guest's and interrupts are off (the host's SFMASK); an NMI here takes its
 * IST stack and sees ring 0.
 */
.macro SYSCALL_ENTRY name, vector, cs
	.balign 16
SYM_INNER_LABEL(\name, SYM_L_GLOBAL)
	swapgs
	movq	%rsp, %gs:PC_GPR_RSP
	SAVE_GPRS
	movq	$\vector, %gs:PC_VECTOR
	movq	$\cs, %gs:PC_CS
	jmp	syscall_common
.endm
	SYSCALL_ENTRY pvm_syscall_entry, PVM_SW_SYSCALL, __USER_CS
	SYSCALL_ENTRY pvm_syscall32_entry, PVM_SW_SYSCALL32, __USER32_CS
syscall_common:
	movq	$0, %gs:PC_ERROR
	movq	%rcx, %gs:PC_RIP	/* where the CPU put them */
	movq	%r11, %gs:PC_RFLAGS
	movq	%gs:PC_SELF, %rdi
	cmpq	$0, PC_FAST(%rdi)
	jne	pvm_fast_syscall
	jmp	pvm_exit_host

/*
 * PVM_KMOD_RUN_PVM's fast path: a user SYSCALL (§5.3), ERETU (§6.2) and
 * the hypercalls without state delivered here, on the guest root, as
 * deliver.c's user_event(), eretu() and smod_syscall() do (the same checks,
 * the same writes; anything else goes to C); a mode switch goes on in the
 * other mode's root without a trip through the host: one CR3 write instead
 * of two.  %rdi: the area, GS base: the area, the guest's GS base in
 * MSR_KERNEL_GS_BASE, the guest's GPRs saved; interrupts off, any register
 * free (all are reloaded from the area).
 */
pvm_fast_syscall:
	cmpq	$PVM_SW_SYSCALL, PC_VECTOR(%rdi)	/* 64-bit code only (§10.19) */
	jne	pvm_exit_host
	movq	PC_PVCS(%rdi), %rsi
	cmpq	$PVM_MODE_USER_, PC_MODE(%rdi)
	je	pvm_fast_user
	/* Supervisor mode: ERETU (§6.3: compared first), ERETS (C's), else a hypercall. */
	movq	PC_RIP(%rdi), %rax
	cmpq	PC_RETU2(%rdi), %rax
	je	pvm_fast_eretu
	cmpq	PC_RETS2(%rdi), %rax
	je	pvm_exit_host
	movq	PC_GPR_RAX(%rdi), %rax
	movq	%rax, %rdx
	subq	$PVM_HC_BASE_, %rdx
	cmpq	$256, %rdx
	jae	1f
	cmpq	$1, %rdx		/* PVM_HC_IRQ_WIN: IP cleared, RAX kept (§10.9) */
	jne	2f
	andq	$~PVCS_FLAGS_IP, PVCS_EVENT_FLAGS(%rsi)
	jmp	pvm_fast_done
2:	cmpq	$9, %rdx		/* the other defined ones are the library's */
	jbe	pvm_exit_host
	jmp	3f			/* §7.2: undefined numbers fall through */
1:	cmpq	$PVM_KVM_HC_END_, %rax
	jae	pvm_exit_host		/* a host call: an exit to the application */
3:	/* §7.3 a KVM hypercall: RCX := R10, RAX := the result, R10 := RCX. */
	movq	$-1000, %rdx		/* -KVM_ENOSYS */
	cmpq	$1, %rax		/* VAPIC_POLL_IRQ */
	je	4f
	cmpq	$11, %rax		/* SCHED_YIELD, with KVM_FEATURE_PV_SCHED_YIELD */
	jne	5f
	testl	$(1 << 13), PC_KVM_FEAT(%rdi)
	jz	6f
4:	xorl	%edx, %edx
	jmp	6f
5:	cmpq	$9, %rax		/* CLOCK_PAIRING */
	jne	6f
	movq	$-95, %rdx		/* -KVM_EOPNOTSUPP */
6:	movq	%rdx, PC_GPR_RAX(%rdi)
	MOVQ_MEM PC_GPR_R10(%rdi), PC_GPR_RCX(%rdi)
pvm_fast_done:
	movl	PC_RFLAGS(%rdi), %eax	/* as a RUN takes them */
	andl	$PVM_RFLAGS_GUEST, %eax
	orl	$(X86_EFLAGS_IF | X86_EFLAGS_FIXED), %eax
	movq	%rax, PC_RFLAGS(%rdi)
	incq	PC_FAST_OTHER(%rdi)
	jmp	pvm_fast_return

pvm_fast_eretu:
	cmpq	$0, PC_PEER_CR3(%rdi)	/* no other address space: C's */
	je	pvm_exit_host
	movzwl	PVCS_USER_SS(%rsi), %eax
	orl	$3, %eax
	cmpl	$__USER_DS, %eax
	jne	pvm_exit_host
	movzwl	PVCS_USER_CS(%rsi), %ecx
	orl	$3, %ecx		/* §10.26: RPL 3 OR-ed in */
	movq	PVCS_RIP(%rsi), %rdx	/* read once */
	cmpl	$__USER_CS, %ecx
	jne	1f
	movq	%rdx, %rax		/* canonical (48 bits) */
	shlq	$16, %rax
	sarq	$16, %rax
	cmpq	%rax, %rdx
	jne	pvm_exit_host
	jmp	2f
1:	cmpl	$__USER32_CS, %ecx
	jne	pvm_exit_host
	movq	%rdx, %rax		/* compat mode: below 4 GiB */
	shrq	$32, %rax
	jnz	pvm_exit_host
2:	movq	PC_GPR_RSP(%rdi), %rax	/* SUPERVISOR_RSP <- RSP */
	movq	%rax, PC_SUP_RSP(%rdi)
	andq	$~PVCS_FLAGS_IP, PVCS_EVENT_FLAGS(%rsi)	/* §5.7 */
	movq	%rcx, PC_CS(%rdi)	/* the values checked, not a second read */
	movq	%rdx, PC_RIP(%rdi)
	movq	PVCS_USER_GSBASE(%rsi), %rax	/* §10.7: canonicalised; the guest's at SWAPGS */
	shlq	$16, %rax
	sarq	$16, %rax
	WRMSR_RAX MSR_KERNEL_GS_BASE
	movl	PVCS_EFLAGS(%rsi), %eax	/* §10.8: 32 bits, filtered, IF */
	andl	$PVM_RFLAGS_GUEST, %eax
	orl	$(X86_EFLAGS_IF | X86_EFLAGS_FIXED), %eax
	movq	%rax, PC_RFLAGS(%rdi)
	MOVQ_MEM PVCS_RSP(%rsi), PC_GPR_RSP(%rdi)
	MOVQ_MEM PVCS_RCX(%rsi), PC_GPR_RCX(%rdi)
	MOVQ_MEM PVCS_R11(%rsi), PC_GPR_R11(%rdi)
	movq	$PVM_MODE_USER_, PC_MODE(%rdi)
	incq	PC_FAST_ERETU(%rdi)
	jmp	pvm_fast_switch

/* User mode: the SYSCALL event (§5.3, vector SYSCALL: event_vector, errcode, cr2 untouched). */
pvm_fast_user:
	cmpq	$0, PC_PEER_CR3(%rdi)
	je	pvm_exit_host
	movw	$__USER_CS, PVCS_USER_CS(%rsi)
	movw	$__USER_DS, PVCS_USER_SS(%rsi)
	movq	PC_RFLAGS(%rdi), %rax
	orl	$X86_EFLAGS_IF, %eax
	movl	%eax, PVCS_EFLAGS(%rsi)	/* §10.8 */
	movl	$0, PVCS_PKRU(%rsi)	/* §10.6 */
	movl	$MSR_KERNEL_GS_BASE, %ecx
	rdmsr
	movl	%eax, PVCS_USER_GSBASE(%rsi)
	movl	%edx, PVCS_USER_GSBASE+4(%rsi)
	MOVQ_MEM PC_RIP(%rdi), PVCS_RIP(%rsi)
	MOVQ_MEM PC_GPR_RSP(%rdi), PVCS_RSP(%rsi)
	MOVQ_MEM PC_GPR_RCX(%rdi), PVCS_RCX(%rsi)
	MOVQ_MEM PC_GPR_R11(%rdi), PVCS_R11(%rsi)
	andq	$~PVCS_FLAGS_IF, PVCS_EVENT_FLAGS(%rsi)	/* §10.3 */
	movq	PC_KGS(%rdi), %rax	/* GS base <- MSR_KERNEL_GS_BASE (at SWAPGS) */
	WRMSR_RAX MSR_KERNEL_GS_BASE
	MOVQ_MEM PC_SUP_RSP(%rdi), PC_GPR_RSP(%rdi)	/* no red zone, no alignment */
	movq	$__USER_CS, PC_CS(%rdi)
	movq	PC_LSTAR(%rdi), %rax	/* §5.6 entry state */
	movq	%rax, PC_RIP(%rdi)
	movq	%rax, PC_GPR_RCX(%rdi)
	movq	$(X86_EFLAGS_IF | X86_EFLAGS_FIXED), PC_GPR_R11(%rdi)
	movq	$(X86_EFLAGS_IF | X86_EFLAGS_FIXED), PC_RFLAGS(%rdi)
	movq	$PVM_MODE_SUPERVISOR_, PC_MODE(%rdi)
	/* fall through */

/* On in the other root (no flush of the host's entries needed: the entry's INVLPG did it). */
pvm_fast_switch:
	incq	PC_FAST_EVENTS(%rdi)
	movq	PC_GUEST_CR3(%rdi), %rax
	movq	PC_PEER_CR3(%rdi), %rdx
	movq	%rdx, PC_GUEST_CR3(%rdi)
	movq	%rax, PC_PEER_CR3(%rdi)
	movq	PC_FLUSH_GLOBAL(%rdi), %rax
	movq	PC_PEER_FLUSH(%rdi), %rcx
	movq	%rcx, PC_FLUSH_GLOBAL(%rdi)
	movq	%rax, PC_PEER_FLUSH(%rdi)
	movq	%rdx, %cr3
	testq	%rcx, %rcx
	jz	1f
	TOGGLE_PGE %rdi
1:
pvm_fast_return:
	/* An NMI taken in ring 0 meanwhile: C raises it (the event is done). */
	cmpq	$0, PC_NMI(%rdi)
	jne	2f
	swapgs
	jmp	pvm_enter_guest
2:	movq	$PVM_SW_DELIVERED, PC_VECTOR(%rdi)
	jmp	pvm_exit_host

/*
 * One 16-byte stub per IDT vector: an error code (0 where the CPU pushes
 * none), the vector, then the common exit.  NMI, #DB, #MC and #DF (IST
 * stacks) have handlers of their own.
 */
.macro VEC_STUB v
	.balign 16
	.if \v == 1
	jmp	pvm_db
	.elseif \v == 2
	jmp	pvm_nmi
	.elseif \v == 8
	jmp	pvm_df
	.elseif \v == 18
	jmp	pvm_mc
	.else
	.if (\v != 10) && (\v != 11) && (\v != 12) && (\v != 13) && (\v != 14) && (\v != 17) && (\v != 21) && (\v != 29) && (\v != 30)
	pushq	$0
	.endif
	pushq	$\v
	jmp	pvm_exit_common
	.endif
.endm

	.balign 16
SYM_INNER_LABEL(pvm_vector_stubs, SYM_L_GLOBAL)
	vec = 0
	.rept 256
	VEC_STUB vec
	vec = vec + 1
	.endr

/*
 * [rsp]: vector, error code, RIP, CS, RFLAGS, RSP, SS.  From ring 3 only: a
 * trap in ring 0 is a bug of the switch.
 */
pvm_exit_common:
	testb	$3, 24(%rsp)
	jz	pvm_switch_bug
	swapgs
	SAVE_GPRS
	MOVQ_MEM 0(%rsp), %gs:PC_VECTOR
	MOVQ_MEM 8(%rsp), %gs:PC_ERROR
	MOVQ_MEM 16(%rsp), %gs:PC_RIP
	MOVQ_MEM 24(%rsp), %gs:PC_CS
	MOVQ_MEM 32(%rsp), %gs:PC_RFLAGS
	MOVQ_MEM 40(%rsp), %gs:PC_GPR_RSP
	movq	%cr2, %rax
	movq	%rax, %gs:PC_CR2
	movq	%gs:PC_SELF, %rdi
	/* fall through */

/*
 * %rdi: the area; GS base: the area; the guest's GS base in
 * MSR_KERNEL_GS_BASE.  Back to the host: its root first (our pages are in
 * both), its GS base before its GDT and IDT (a host NMI handler may run as
 * soon as its IDT is back, and reads both), then its stack.
 */
pvm_exit_host:
	movq	PC_HOST_CR3(%rdi), %rax
	movq	%rax, %cr3
	movl	$MSR_KERNEL_GS_BASE, %ecx
	rdmsr
	shlq	$32, %rdx
	orq	%rdx, %rax
	movq	%rax, PC_GUEST_GS(%rdi)
	movq	PC_HOST_KGS(%rdi), %rax
	WRMSR_RAX MSR_KERNEL_GS_BASE
	movq	PC_HOST_GS(%rdi), %rax
	WRMSR_RAX MSR_GS_BASE
	lgdt	PC_HOST_GDT(%rdi)
	lidt	PC_HOST_IDT(%rdi)
	movq	PC_HOST_RSP(%rdi), %rsp
	popfq
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	popq	%rbp
	RET

/*
 * NMI (IST2).  From ring 3: an exit like any other (the C side raises it
 * again for the host).  From ring 0 (the switch itself, any root, any GS):
 * note it in the area, found at the IST top, and return; the C side raises
 * it for the host after the switch.
 */
pvm_nmi:
	testb	$3, 8(%rsp)
	jz	1f
	pushq	$0
	pushq	$2
	jmp	pvm_exit_common
1:	pushq	%rax
	movq	56(%rsp), %rax
	movq	$1, PC_NMI(%rax)
	popq	%rax
	iretq

/* #DB (IST3) from ring 0: no host breakpoint is armed in the switch (DR7 is clear): ignore. */
pvm_db:
	testb	$3, 8(%rsp)
	jz	1f
	pushq	$0
	pushq	$1
	jmp	pvm_exit_common
1:	iretq

/* #MC (IST4): from ring 3 an exit (C hands it to the host's handler); from ring 0 it cannot be handled here. */
pvm_mc:
	testb	$3, 8(%rsp)
	jz	1f
	pushq	$0
	pushq	$18
	jmp	pvm_exit_common
1:	pushq	$0
	pushq	$18
	jmp	pvm_switch_bug

/* #DF (IST1, error code 0): always a bug of the switch. */
pvm_df:
	pushq	$8
	/* fall through */

/*
 * A trap in ring 0 inside the switch: a bug, and nothing can be trusted.
 * Say where on COM1 ("pvm: switch bug vector VV rip RRRRRRRRRRRRRRRR") and
 * stop this CPU.  [rsp]: vector, error code, RIP.
 */
pvm_switch_bug:
	movw	$0x3f8, %dx
	movq	$0x206d7670, %rax	/* "pvm " */
	call	pvm_bug_putc4
	movq	$0x20677562, %rax	/* "bug " */
	call	pvm_bug_putc4
	movq	0(%rsp), %rsi
	shlq	$56, %rsi
	movl	$2, %ecx
	call	pvm_bug_puthex
	movb	$0x20, %al
	outb	%al, %dx
	movq	16(%rsp), %rsi
	movl	$16, %ecx
	call	pvm_bug_puthex
	movb	$0x0a, %al
	outb	%al, %dx
2:	cli
	hlt
	jmp	2b

/* Four bytes of %eax, low first, to port %dx. */
pvm_bug_putc4:
	movl	$4, %ecx
1:	outb	%al, %dx
	shrl	$8, %eax
	decl	%ecx
	jnz	1b
	ret

/* The top %ecx nibbles of %rsi in hex to port %dx. */
pvm_bug_puthex:
	rolq	$4, %rsi
	movl	%esi, %eax
	andl	$15, %eax
	addb	$0x30, %al
	cmpb	$0x39, %al
	jbe	1f
	addb	$0x27, %al
1:	outb	%al, %dx
	decl	%ecx
	jnz	pvm_bug_puthex
	ret

SYM_INNER_LABEL(pvm_switch_text_end, SYM_L_GLOBAL)
SYM_CODE_END(pvm_switch_text_start)

	.text
/*
 * void pvm_call_host_gate(unsigned long entry) - interrupts off: run the host
 * IDT's handler at @entry for an external interrupt the guest's exit took,
 * with the frame the CPU would have pushed in kernel mode (as KVM on VMX).
 */
SYM_FUNC_START(pvm_call_host_gate)
	pushq	%rbp
	movq	%rsp, %rbp
	andq	$-16, %rsp
	pushq	$__KERNEL_DS
	pushq	%rbp
	pushfq
	pushq	$__KERNEL_CS
	CALL_NOSPEC rdi
	leave
	RET
SYM_FUNC_END(pvm_call_host_gate)
