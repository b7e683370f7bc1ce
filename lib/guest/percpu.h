/*
 * lib/guest/percpu.h - the per-vCPU area (runtime internal).
 *
 * GS base (and MSR_KERNEL_GS_BASE, loaded on every user->supervisor switch,
 * §1.3) points at the vCPU's area, so entry stubs reach the PVCS as %gs:0
 * without a free register.  The PVCS shares the page with the runtime's
 * per-vCPU fields: the hypervisor only touches the first 128 bytes (§3).
 * Offsets are plain numbers for entry.S; percpu.c pins them.
 */
#ifndef PVM_GUEST_PERCPU_H
#define PVM_GUEST_PERCPU_H

#define PERCPU_SELF          128 /* pointer to the area itself */
#define PERCPU_USER_CTX      136 /* kernel RSP saved by pvm_enter_user */
#define PERCPU_CPU_ID        144
#define PERCPU_BOOT_INFO     152

/* struct pvm_frame offsets (pvm/guest/trap.h). */
#define F_RAX     0
#define F_RBX     8
#define F_RCX     16
#define F_RDX     24
#define F_RSI     32
#define F_RDI     40
#define F_RBP     48
#define F_R8      56
#define F_R9      64
#define F_R10     72
#define F_R11     80
#define F_R12     88
#define F_R13     96
#define F_R14     104
#define F_R15     112
#define F_VECTOR  120
#define F_ERRCODE 128
#define F_CR2     136
#define F_RIP     144
#define F_RFLAGS  152
#define F_RSP     160
#define F_CS      168
#define F_SS      176
#define F_KIND    184
#define FRAME_SIZE 192

#define KIND_USER      1
#define KIND_SYSCALL   2
#define KIND_SUPER_EXC 3
#define KIND_SUPER_IRQ 4

/* Supervisor selectors the runtime puts in STAR[47:32] (CS; SS = CS + 8). */
#define KERNEL_CS 0x10
#define KERNEL_SS 0x18

#ifndef __ASSEMBLER__
#include <stdint.h>
#include "pvm/abi.h"

struct pvm_percpu {
    struct pvm_vcpu_struct pvcs;     /* 0: must come first, page aligned */
    struct pvm_percpu *self;         /* 128 */
    uint64_t user_ctx;               /* 136 */
    uint32_t cpu_id;                 /* 144 */
    uint32_t pad;
    const struct pvm_boot_info *boot;/* 152 */
} __attribute__((aligned(4096)));

extern struct pvm_percpu pvm__percpu[];
#endif

#endif
