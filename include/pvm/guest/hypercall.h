/*
 * pvm/guest/hypercall.h - hypercalls and host calls from a PVM guest (smod only).
 *
 * A hypercall is a SYSCALL executed in smod (pvm-abi.md §7.1): RAX = number,
 * arguments in RBX, R10, RDX; host calls (pvm/abi.h) add RSI, RDI, R8.  The
 * SYSCALL itself clobbers RCX and R11.  RAX keeps the number when the call
 * defines no result.
 *
 * Freestanding: safe to include from any guest translation unit.
 */
#ifndef PVM_GUEST_HYPERCALL_H
#define PVM_GUEST_HYPERCALL_H

#include <stdint.h>

#include "pvm/abi.h"

/** Raw PVM or KVM hypercall with up to three arguments; returns RAX. */
static inline uint64_t pvm_hypercall3(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2)
{
    register uint64_t r10 __asm__("r10") = a1;
    uint64_t ret = nr;
    __asm__ volatile("syscall"
                     : "+a"(ret), "+b"(a0), "+r"(r10), "+d"(a2)
                     :
                     : "rcx", "r11", "memory");
    return ret;
}

static inline uint64_t pvm_hypercall0(uint64_t nr) { return pvm_hypercall3(nr, 0, 0, 0); }
static inline uint64_t pvm_hypercall1(uint64_t nr, uint64_t a0) { return pvm_hypercall3(nr, a0, 0, 0); }

/**
 * Host call @nr (a PVM_HOSTCALL_* or application number >= PVM_HOSTCALL_USER_FIRST)
 * with six arguments; returns what the host wrote to RAX.
 */
static inline uint64_t pvm_hostcall6(uint32_t nr, uint64_t a0, uint64_t a1, uint64_t a2,
                                     uint64_t a3, uint64_t a4, uint64_t a5)
{
    register uint64_t r10 __asm__("r10") = a1;
    register uint64_t r8 __asm__("r8") = a5;
    uint64_t ret = PVM_HOSTCALL(nr);
    __asm__ volatile("syscall"
                     : "+a"(ret), "+b"(a0), "+r"(r10), "+d"(a2), "+S"(a3), "+D"(a4), "+r"(r8)
                     :
                     : "rcx", "r11", "memory");
    return ret;
}

/*
 * pvm_hostcall(nr, args...): host call with 0..6 arguments; integers and
 * pointers are both accepted (a pointer is passed as its guest-virtual
 * address, which the host reads with pvm_vcpu_read_guest()).
 */
#define PVM__U64(x) ((uint64_t)(uintptr_t)(x))
#define PVM__HOSTCALL_PICK(nr, a0, a1, a2, a3, a4, a5, ...)                      \
    pvm_hostcall6((nr), PVM__U64(a0), PVM__U64(a1), PVM__U64(a2), PVM__U64(a3),  \
                  PVM__U64(a4), PVM__U64(a5))
#define pvm_hostcall(...) PVM__HOSTCALL_PICK(__VA_ARGS__, 0, 0, 0, 0, 0, 0, 0)

/* ---- PVM hypercalls (§7.2) ---------------------------------------------- */

/** Load the supervisor and user page-table roots (GPAs); flushes the TLB. */
static inline void pvm_hc_load_pgtbl(uint64_t kernel_root, uint64_t user_root)
{
    pvm_hypercall3(PVM_HC_LOAD_PGTBL, PVM_LOAD_PGTBL_FLAGS_TLB, kernel_root, user_root);
}
static inline void pvm_hc_tlb_flush(void) { pvm_hypercall0(PVM_HC_TLB_FLUSH); }
static inline void pvm_hc_tlb_invlpg(uint64_t va) { pvm_hypercall1(PVM_HC_TLB_INVLPG, va); }
/** Returns 0 or -5 (-EIO) when the MSR write is refused (§10.9). */
static inline int64_t pvm_hc_wrmsr(uint32_t msr, uint64_t v)
{
    return (int64_t)pvm_hypercall3(PVM_HC_WRMSR, msr, v, 0);
}
static inline uint64_t pvm_hc_rdmsr(uint32_t msr) { return pvm_hypercall1(PVM_HC_RDMSR, msr); }

/* ---- privileged instructions (trap with #GP and are emulated, §1.4) ----- */

static inline void pvm_wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}

static inline uint64_t pvm_rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
    return ((uint64_t)hi << 32) | lo;
}

/** PVM_SYNTHETIC_CPUID (§6.1): CPUID as the hypervisor's table answers it. */
static inline void pvm_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{
    __asm__ volatile(".byte 0x0f,0x01,0x3c,0x25,0x50,0x56,0x4d,0xff,0x0f,0xa2"
                     : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])
                     : "a"(leaf), "c"(subleaf)
                     : "memory");
}

#endif /* PVM_GUEST_HYPERCALL_H */
