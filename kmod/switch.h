/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kmod/switch.h - the world switch's per-CPU area, shared by switch.S and C.
 *
 * Everything the CPU touches while a guest root is loaded or our IDT is live
 * (the switch code, the IDT, and per CPU the data below, our GDT and TSS, the
 * RSP0 and IST stacks) lives in the module's own image: module space is in
 * PML4 slot 511 on 4-level paging, so the same addresses are valid under the
 * host root (the kernel maps the module) and under every guest root (whose
 * slot 511 is the module's switcher PDPT, built from the same pages).  An NMI
 * can then arrive at any instruction of the switch and still find its gate,
 * its stack and its code, whichever CR3 and IDT are loaded.
 *
 * The area of one CPU, 5 pages, page aligned:
 *   page 0: data (0x000), our GDT (0x200), our TSS (0x300), RSP0 stack (top 0x1000)
 *   page 1: IST for #DF   (IST1, as Linux: IST_INDEX_DF)
 *   page 2: IST for NMI   (IST2, IST_INDEX_NMI)
 *   page 3: IST for #DB   (IST3, IST_INDEX_DB)
 *   page 4: IST for #MC   (IST4, IST_INDEX_MCE)
 * Each IST stack's top 16 bytes hold the area's address at top - 8 (the NMI
 * taken in ring 0 finds its area there: it may not trust GS); the IST
 * pointer is top - 16.  Linux's IST numbers are kept so that a host handler
 * that runs while our TSS is still loaded (the few instructions after the
 * host IDT is back) lands on a stack of the right kind.
 */
#ifndef PVM_KMOD_SWITCH_H
#define PVM_KMOD_SWITCH_H

#define PVM_AREA_PAGES 5
#define PVM_AREA_SIZE  (PVM_AREA_PAGES * 4096)
/* CPUs that can run guests: the areas are static (module space has no allocator for modules). */
#ifndef PVM_MAX_CPUS
#define PVM_MAX_CPUS   64 /* make PVM_MAX_CPUS=N for more: 20 KiB each */
#endif

/* Data offsets (static_assert'ed against struct pvm_cpu_area in cpu.c). */
#define PC_GPR          0x000 /* 16 x u64, x86 encoding order; [4] is RSP */
#define PC_RIP          0x080
#define PC_RFLAGS       0x088
#define PC_VECTOR       0x090 /* exit: 0..255, or PVM_SW_SYSCALL */
#define PC_ERROR        0x098
#define PC_CR2          0x0a0
#define PC_GUEST_CR3    0x0a8
#define PC_HOST_CR3     0x0b0
#define PC_HOST_RSP     0x0b8
#define PC_HOST_GS      0x0c0 /* the kernel's GS base (per-CPU data) */
#define PC_GUEST_GS     0x0c8 /* in: loaded into GS base; out: read back */
#define PC_HOST_KGS     0x0d0 /* MSR_KERNEL_GS_BASE of the thread (its user GS base) */
#define PC_SELF         0x0d8
#define PC_NMI          0x0e0 /* an NMI arrived in ring 0 during the switch */
#define PC_FLUSH_GLOBAL 0x0e8 /* toggle CR4.PGE under the guest root */
#define PC_CR4          0x0f0
#define PC_CS           0x0f8 /* in: __USER_CS or __USER32_CS; out: the CS of the exit */
#define PC_GDT_DESC     0x100 /* struct desc_ptr of our GDT */
#define PC_HOST_GDT     0x110
#define PC_HOST_IDT     0x120
/*
 * PVM_KMOD_RUN_PVM's fast path in the switch (switch.S pvm_fast_syscall): a
 * user SYSCALL and ERETU delivered without leaving the guest roots.
 */
#define PC_FAST         0x140 /* in: 1 = on for this switch (PC_PEER_CR3 0: no mode switch) */
#define PC_MODE         0x148 /* in/out: PVM_KMOD_MODE_* */
#define PC_SUP_RSP      0x150 /* in/out: MSR_PVM_SUPERVISOR_RSP */
#define PC_LSTAR        0x158
#define PC_KGS          0x160 /* the guest's MSR_KERNEL_GS_BASE */
#define PC_RETU2        0x168 /* MSR_PVM_RETU_RIP + 2 */
#define PC_PVCS         0x170 /* the PVCS, through this CPU's window */
#define PC_PEER_CR3     0x178 /* in/out: the other mode's root (swapped with PC_GUEST_CR3) */
#define PC_PEER_FLUSH   0x180 /* in/out: its flush_global (swapped with PC_FLUSH_GLOBAL) */
#define PC_FAST_EVENTS  0x188 /* out: switches made here */
#define PC_FAST_ERETU   0x190 /* out: how many were ERETU */
#define PC_RETS2        0x198 /* MSR_PVM_RETS_RIP + 2 */
#define PC_KVM_FEAT     0x1a0 /* CPUID 0x40000001 EAX */
#define PC_FAST_OTHER   0x1a8 /* out: hypercalls answered here (no switch) */
#define PC_GDT          0x200
#define PC_TSS          0x300
#define PC_STACK_TOP    0x1000

#define PC_GPR_RAX (PC_GPR + 0 * 8)
#define PC_GPR_RCX (PC_GPR + 1 * 8)
#define PC_GPR_RDX (PC_GPR + 2 * 8)
#define PC_GPR_RBX (PC_GPR + 3 * 8)
#define PC_GPR_RSP (PC_GPR + 4 * 8)
#define PC_GPR_RBP (PC_GPR + 5 * 8)
#define PC_GPR_RSI (PC_GPR + 6 * 8)
#define PC_GPR_RDI (PC_GPR + 7 * 8)
#define PC_GPR_R8  (PC_GPR + 8 * 8)
#define PC_GPR_R9  (PC_GPR + 9 * 8)
#define PC_GPR_R10 (PC_GPR + 10 * 8)
#define PC_GPR_R11 (PC_GPR + 11 * 8)
#define PC_GPR_R12 (PC_GPR + 12 * 8)
#define PC_GPR_R13 (PC_GPR + 13 * 8)
#define PC_GPR_R14 (PC_GPR + 14 * 8)
#define PC_GPR_R15 (PC_GPR + 15 * 8)

/* Exit "vectors" of a SYSCALL from 64-bit code and from compat mode (not IDT vectors). */
#define PVM_SW_SYSCALL   0x100
#define PVM_SW_SYSCALL32 0x101
/* An exit after the fast path delivered its event (an NMI came): nothing for C to do. */
#define PVM_SW_DELIVERED 0x102

/* PVCS offsets (docs/pvm-abi.md §3.1) and values for the fast path (checked in deliver.c). */
#define PVCS_EVENT_FLAGS 0
#define PVCS_USER_CS     64
#define PVCS_USER_SS     66
#define PVCS_USER_GSBASE 80
#define PVCS_EFLAGS      88
#define PVCS_PKRU        92
#define PVCS_RIP         96
#define PVCS_RSP         104
#define PVCS_RCX         112
#define PVCS_R11         120
#define PVCS_FLAGS_IP    0x100
#define PVCS_FLAGS_IF    0x200
#define PVM_RFLAGS_GUEST 0x254dd5 /* PVM_GUEST_RFLAGS (pvm.h) */
#define PVM_HC_BASE_     0x17088200 /* PVM_HC_SPECIAL_BASE; + 1 IRQ_WIN, + 9 LOAD_TLS (last defined) */
#define PVM_KVM_HC_END_  0x10000    /* PVM_KVM_HC_RANGE_END */
#define PVM_MODE_SUPERVISOR_ 0    /* PVM_KMOD_MODE_* */
#define PVM_MODE_USER_       1

/* GDT of the world switch: Linux's selectors (no TLS entries). */
#define PVM_GDT_ENTRIES 16
#define PVM_SEL_TSS     0x40 /* GDT_ENTRY_TSS * 8, 16 bytes */

#endif /* PVM_KMOD_SWITCH_H */
