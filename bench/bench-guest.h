/*
 * bench/bench-guest.h - the protocol between bench-pvm (host) and
 * bench-guest.elf (guest).  Freestanding.
 */
#ifndef PVM_BENCH_GUEST_H
#define PVM_BENCH_GUEST_H

/* Host calls (PVM_HOSTCALL(n)). */
#define BG_HC_HELLO 0x100 /* a0 = GVA of irq_stamps[], a1 = GVA of irq_count */
#define BG_HC_NEXT  0x101 /* returns (op | work << BG_OP_BITS) << 32 | n */
#define BG_HC_DONE  0x102 /* a0 = guest stack growth over the run, a1 = TSC ticks of a compute loop */

enum bg_op {
    BG_OP_EMPTY = 0,
    BG_OP_HYPERCALL,
    BG_OP_UD,
    BG_OP_WRMSR,
    BG_OP_CPUID,
    BG_OP_PIO,
    BG_OP_USER_SYSCALL,
    BG_OP_USER_PF,
    BG_OP_COMPUTE,
    BG_OP_IRQ_SPIN,
    BG_OP_IRQ_HALT,
    BG_OP_QUIT,
    BG_OP_MIXED,      /* user mode: n x (bench_compute(work) + a SYSCALL to the guest kernel) */
};
#define BG_OP_BITS 8      /* the op's field in BG_HC_NEXT's answer; above it, the op's work */

#define BG_SYS_NOP     0
#define BG_SYS_EXIT    60
#define BG_PIO_PORT    0x510
#define BG_PF_PAGES    (64u * 1024u)  /* 256 MiB of user VA, each page faulted once */
#define BG_COMPUTE_N   1000           /* bench_compute(1000), as baseline.compute_1000 */
#define BG_IRQ_VECTOR  32
#define BG_IRQ_MAX     4096

#endif
