/*
 * bench/tinykernel.S - the comparison kernel for QEMU TCG and /dev/kvm: the
 * same guest work as bench-pvm's user-syscall loop, on a standard x86 vCPU.
 *
 * Flat image linked at 1 MiB.  Multiboot (a.out kludge) enters at entry32,
 * which switches to long mode (EFER.SCE set there too); a KVM runner that sets long-mode sregs (EFER = LME|LMA|SCE) itself
 * enters at entry64 (address in the params block).  Both write one byte to
 * the debug port 0xe9 as their first instruction, so the host sees when
 * guest code first ran.  Then ring 3 runs `batches` batches of `iters`
 * SYSCALLs, each after `work` units of bench_compute() (0: none; the mixed
 * workload of bench-pvm); the ring-0 handler returns at once (IRETQ, see below); a 'M' on port
 * 0xe9 marks each batch boundary; port 0xf4 (isa-debug-exit) ends the run.
 * No IDT (nothing here can fault or take an interrupt); a tiny stack for IRETQ.
 */
#define DBG_PORT  0xe9
#define EXIT_PORT 0xf4
#define MSR_EFER  0xc0000080
#define MSR_STAR  0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_FMASK 0xc0000084

    .section .text, "ax"
    .code32
    .globl _start
_start:
mb_header:
    .long 0x1badb002                    /* multiboot magic */
    .long 0x00010000                    /* flags: the address fields below are valid */
    .long -(0x1badb002 + 0x00010000)
    .long mb_header                     /* header_addr */
    .long _start                        /* load_addr */
    .long _load_end                     /* load_end_addr */
    .long _bss_end                      /* bss_end_addr */
    .long entry32                       /* entry_addr */

/* Params block at +0x40: the runners find it by its magic and patch it. */
    .org 0x40
params:
    .ascii "PVMBITER"
iters:      .long 100000
batches:    .long 11
entry64_ptr: .quad entry64
pml4_ptr:   .quad pml4
work:       .quad 0                     /* compute units before each SYSCALL (the mixed workload) */

entry32:
    movb $'B', %al
    outb %al, $DBG_PORT                 /* first instruction after the loader */
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                     /* PAE */
    movl %eax, %cr4
    movl $MSR_EFER, %ecx
    rdmsr
    orl $0x101, %eax                    /* LME | SCE */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax               /* PG | PE */
    movl %eax, %cr0
    lgdt gdtr
    ljmp $0x08, $long_mode

    .code64
entry64:
    movb $'L', %al
    outb %al, $DBG_PORT                 /* first instruction on KVM */
long_mode:
    lgdt gdtr
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $MSR_STAR, %ecx
    xorl %eax, %eax
    movl $0x001b0008, %edx              /* SYSRET base 0x18 (user CS 0x2b, SS 0x23), SYSCALL CS 0x08 */
    wrmsr
    movl $MSR_LSTAR, %ecx
    movl $syscall_entry, %eax
    xorl %edx, %edx
    wrmsr
    movl $MSR_FMASK, %ecx
    movl $0x200, %eax
    wrmsr
    movq $user_main, %rcx
    movq $0x2, %r11                     /* RFLAGS: IF off */
    sysretq

/*
 * Ring 0: rax 0 = null syscall, 1 = batch mark, 2 = exit.  Returns with
 * IRETQ, not SYSRET: on this machine's /dev/kvm (a PVM-based hypervisor) a
 * SYSRET after a guest SYSCALL loads the user CS but leaves RIP on the
 * SYSRET and triple-faults.  QEMU runs the same code.
 */
syscall_entry:
    testl %eax, %eax
    jz ret_user
    cmpl $1, %eax
    jne 2f
    movb $'M', %al
    outb %al, $DBG_PORT
ret_user:
    movq $kstack_top, %rsp
    pushq $0x23                         /* SS */
    pushq $0                            /* RSP: ring 3 uses no stack */
    pushq %r11                          /* RFLAGS */
    pushq $0x2b                         /* CS */
    pushq %rcx                          /* RIP */
    iretq
2:  movb $'X', %al
    outb %al, $DBG_PORT
    movb $0, %al
    outb %al, $EXIT_PORT
3:  hlt
    jmp 3b

/* Ring 3: the same loop as bench-guest's user_syscalls(). */
user_main:
    movl batches(%rip), %r12d
1:  movl $1, %eax
    syscall
    movl iters(%rip), %r13d
2:  movq work(%rip), %r9               /* bench_compute(work) of bench/compute.h, then the SYSCALL */
    testq %r9, %r9
    jz 5f
    movabsq $0x9e3779b97f4a7c15, %rcx
    xorl %r8d, %r8d                     /* i */
4:  movq %rcx, %rax
    shlq $13, %rax
    xorq %rax, %rcx
    movq %rcx, %rax
    shrq $7, %rax
    xorq %rax, %rcx
    movq %rcx, %rax
    shlq $17, %rax
    xorq %rax, %rcx
    movq %r8, %rax
    orq $1, %rax
    imulq %rcx, %rax
    addq %rax, %r10                     /* acc */
    incq %r8
    cmpq %r9, %r8
    jne 4b
5:  xorl %eax, %eax
    syscall
    decl %r13d
    jnz 2b
    decl %r12d
    jnz 1b
    movl $1, %eax
    syscall
    movl $2, %eax
    syscall
3:  jmp 3b

    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff            /* 0x08 kernel code 64 */
    .quad 0x00cf92000000ffff            /* 0x10 kernel data */
    .quad 0x00cffa000000ffff            /* 0x18 user code 32 */
    .quad 0x00cff2000000ffff            /* 0x20 user data */
    .quad 0x00affa000000ffff            /* 0x28 user code 64 */
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt

/* Identity map of the first 8 MiB with 2 MiB user pages (ring 3 runs this image). */
    .section .data, "aw"
    .balign 4096
pml4:
    .quad pdpt + 7
    .fill 511, 8, 0
pdpt:
    .quad pd + 7
    .fill 511, 8, 0
pd:
    .quad 0x000087, 0x200087, 0x400087, 0x600087
    .fill 508, 8, 0
kstack:
    .fill 64, 8, 0
kstack_top:
