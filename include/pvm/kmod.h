/*
 * pvm/kmod.h - the ioctl ABI of the kmod/ module's /dev/pvm (version 3).
 *
 * Shared by the module and user space: fixed-size types only, every struct
 * padded explicitly and its size pinned with _Static_assert, so the layout is
 * the same for every compiler and for 32-bit and 64-bit callers.  Reserved
 * fields and padding must be zero: the module rejects anything else with
 * -EINVAL, so later versions can give them a meaning.
 *
 * Version 1 holds the device, address spaces and mappings; version 2 adds
 * PVM_KMOD_AS_RUN, the world switch (docs/design.md "kmod"); version 3 adds
 * PVM_KMOD_RUN_PVM, the two PVM mode switches delivered inside the module.
 * Callers of an older version keep working.
 *
 *   /dev/pvm fd:  PVM_KMOD_GET_VERSION, PVM_KMOD_INFO, PVM_KMOD_CREATE_AS
 *   AS fd:        PVM_KMOD_AS_MAP, PVM_KMOD_AS_UNMAP, PVM_KMOD_AS_INFO,
 *                 PVM_KMOD_AS_RUN, PVM_KMOD_AS_KICK, PVM_KMOD_AS_POST_IRQ,
 *                 PVM_KMOD_AS_TAKE_IRQS
 *
 * An unknown ioctl on either fd returns -ENOTTY.
 */
#ifndef PVM_KMOD_H
#define PVM_KMOD_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
#endif
#include <linux/ioctl.h>

#define PVM_KMOD_DEVICE      "/dev/pvm"
#define PVM_KMOD_ABI_VERSION 3u
#define PVM_KMOD_PAGE_SIZE   4096ull

/*
 * Guest-virtual addresses an address space can map: both canonical halves of
 * 4-level paging except the top 512 GiB (PML4 slot 511), which the module
 * keeps for its own switch page, IDT, GDT, TSS and stacks.
 */
#define PVM_KMOD_GVA_LOW_END    0x0000800000000000ull /* [0, LOW_END) */
#define PVM_KMOD_GVA_HIGH_START 0xffff800000000000ull /* [HIGH_START, HIGH_END) */
#define PVM_KMOD_GVA_HIGH_END   0xffffff8000000000ull /* the reserved slot starts here */

/* Longest range one PVM_KMOD_AS_MAP may map (1 GiB); UNMAP has no cap. */
#define PVM_KMOD_MAP_MAX_LEN (1ull << 30)

#define PVM_KMOD_IOC_MAGIC 0xb7

/* ioctl(dev, PVM_KMOD_GET_VERSION): returns PVM_KMOD_ABI_VERSION. */
#define PVM_KMOD_GET_VERSION _IO(PVM_KMOD_IOC_MAGIC, 0x00)

/* ioctl(dev, PVM_KMOD_INFO, &info): the module's limits and counters. */
struct pvm_kmod_info {
    uint32_t abi_version;        /* PVM_KMOD_ABI_VERSION */
    uint32_t size;               /* sizeof(struct pvm_kmod_info) */
    uint64_t gva_low_end;        /* PVM_KMOD_GVA_* */
    uint64_t gva_high_start;
    uint64_t gva_high_end;
    uint64_t map_max_len;        /* PVM_KMOD_MAP_MAX_LEN */
    uint64_t max_pages_per_as;   /* module parameters */
    uint64_t max_pages_per_proc;
    uint32_t map_flags;          /* PVM_KMOD_MAP_* the module knows */
    uint32_t pad0;
    /* Module-wide counters: all 0 once every address space is closed. */
    uint64_t nr_as;              /* live address spaces */
    uint64_t nr_pinned;          /* user pages pinned by mappings and PVCS pins (PVM_KMOD_RUN_PVM) */
    uint64_t nr_tables;          /* page-table pages (PML4s included) */
    uint64_t nr_procs;           /* processes with an address space */
    uint64_t caller_pages;       /* pages the calling process has mapped */
    uint64_t reserved[7];
};
_Static_assert(sizeof(struct pvm_kmod_info) == 160, "pvm_kmod_info layout");
#define PVM_KMOD_INFO _IOR(PVM_KMOD_IOC_MAGIC, 0x01, struct pvm_kmod_info)

/*
 * ioctl(dev, PVM_KMOD_CREATE_AS, &arg): a new, empty address space.
 * Returns its fd (O_RDWR | O_CLOEXEC); closing the last reference unmaps
 * and unpins everything.  Only the creating process (its mm) may map into it.
 */
struct pvm_kmod_create_as {
    uint32_t flags;              /* none defined: 0 */
    uint32_t pad0;
    uint64_t reserved[3];
};
_Static_assert(sizeof(struct pvm_kmod_create_as) == 32, "pvm_kmod_create_as layout");
#define PVM_KMOD_CREATE_AS _IOW(PVM_KMOD_IOC_MAGIC, 0x02, struct pvm_kmod_create_as)

/* Mapping permissions: READ is required (x86 has no write- or exec-only pages). */
#define PVM_KMOD_MAP_READ  0x1u
#define PVM_KMOD_MAP_WRITE 0x2u
#define PVM_KMOD_MAP_EXEC  0x4u
#define PVM_KMOD_MAP_ALL   0x7u

/*
 * ioctl(as, PVM_KMOD_AS_MAP, &arg): map the caller's pages [uaddr, uaddr+len)
 * at guest-virtual [gva, gva+len), all or nothing.  The user range must be
 * anonymous or shmem (memfd) memory of the calling process, writable by it
 * for MAP_WRITE; the pages stay pinned until unmapped.
 *   0; -EINVAL bad argument (alignment, range, flags, reserved fields);
 *   -EFAULT the user range is not such memory; -EEXIST a page of the guest
 *   range is already mapped; -EPERM not the creating process; -ENOSPC the
 *   address space's page limit; -EDQUOT the process's page limit; -ENOMEM;
 *   -EINTR a fatal signal.
 */
struct pvm_kmod_map {
    uint64_t gva;                /* page aligned */
    uint64_t uaddr;              /* page aligned, the caller's virtual address */
    uint64_t len;                /* page multiple, 0 < len <= PVM_KMOD_MAP_MAX_LEN */
    uint32_t flags;              /* PVM_KMOD_MAP_* */
    uint32_t pad0;
    uint64_t reserved[2];
};
_Static_assert(sizeof(struct pvm_kmod_map) == 48, "pvm_kmod_map layout");
#define PVM_KMOD_AS_MAP _IOW(PVM_KMOD_IOC_MAGIC, 0x10, struct pvm_kmod_map)

/*
 * ioctl(as, PVM_KMOD_AS_UNMAP, &arg): unmap and unpin whatever is mapped in
 * [gva, gva+len) (holes are fine) and free page tables left empty.
 *   0; -EINVAL bad argument; -EPERM not the creating process.
 */
struct pvm_kmod_unmap {
    uint64_t gva;                /* page aligned */
    uint64_t len;                /* page multiple, > 0, inside one GVA range */
    uint32_t flags;              /* none defined: 0 */
    uint32_t pad0;
    uint64_t reserved[2];
};
_Static_assert(sizeof(struct pvm_kmod_unmap) == 40, "pvm_kmod_unmap layout");
#define PVM_KMOD_AS_UNMAP _IOW(PVM_KMOD_IOC_MAGIC, 0x11, struct pvm_kmod_unmap)

/*
 * ioctl(as, PVM_KMOD_AS_INFO, &info): this address space's counters, and the
 * id that names it in the module's debugfs dump of every live address space's
 * leaves (root only: <debugfs>/pvm/tables, one line per mapped page:
 * "id gva pml4e pdpte pde pte", each in hex).
 */
struct pvm_kmod_as_info {
    uint64_t mapped_pages;
    uint64_t table_pages;        /* its PML4 included */
    uint64_t id;                 /* unique while the module stays loaded */
    uint64_t reserved[5];
};
_Static_assert(sizeof(struct pvm_kmod_as_info) == 64, "pvm_kmod_as_info layout");
#define PVM_KMOD_AS_INFO _IOR(PVM_KMOD_IOC_MAGIC, 0x12, struct pvm_kmod_as_info)

/*
 * ioctl(as, PVM_KMOD_AS_RUN, &run): run the register file in @run at guest
 * ring 3 in this address space (CS 0x33 for 64-bit code or 0x23 for compat
 * mode, SS 0x2b, IF set, IOPL 0, no I/O permission) until the first guest trap, then store the register
 * file at the trap and what it was.  The FPU/SSE/AVX state the guest sees is
 * the calling thread's own (save and load it around the call).  Only the
 * creating process may run an address space; one RUN at a time per address
 * space (a second waits), and MAP/UNMAP wait for a RUN to end.
 *   0: exit_reason, vector, error_code, cr2 and the registers are filled.
 *   -EINTR: a signal is pending, immediate_exit was set, or a KICK came;
 *     the registers are the guest's as they are now (resume them as they are).
 *   -EINVAL bad argument (flags, reserved fields, CS, a non-canonical RIP,
 *   FS or GS base, or in compat mode a RIP above 4 GiB; with PVM_KMOD_RUN_PVM
 *   also a bad struct pvm_kmod_pvm: reserved fields, mode, a misaligned PVCS,
 *   a non-canonical lstar or kernel_gs_base, other_as not an address space of
 *   this process or the RUN's own); -EBUSY other_as is in use by another
 *   RUN, MAP or UNMAP; -EFAULT the run or pvm struct, or the PVCS page
 *   (writable anonymous or tmpfs memory of the caller), cannot be read or
 *   written;
 *   -EPERM not the creating process; -EOPNOTSUPP this CPU or kernel cannot
 *   (5-level paging, more than 64 CPUs, a Meltdown CPU without PTI).
 * RFLAGS in: only the arithmetic flags, TF, DF, NT, AC, RF and ID are taken;
 * IF is always set and IOPL is 0.  Out: as the CPU left them.
 */
struct pvm_kmod_regs {
    uint64_t gpr[16];            /* rax rcx rdx rbx rsp rbp rsi rdi r8..r15 */
    uint64_t rip, rflags;
    uint64_t fs_base, gs_base;
};
_Static_assert(sizeof(struct pvm_kmod_regs) == 160, "pvm_kmod_regs layout");

/* exit_reason */
#define PVM_KMOD_EXIT_SYSCALL   1u /* a SYSCALL: RIP after it (RCX, R11 as the CPU set them);
                                      CS 0x23 for one from compat mode (AMD CPUs: Intel's
                                      raise #UD there) */
#define PVM_KMOD_EXIT_EXCEPTION 2u /* vector, error_code (0 where none), cr2 (#PF only);
                                      INT3 and INT 0x80 (vector 0x80): RIP after them */

/*
 * run.flags: PVM_KMOD_RUN_PVM (version 3).  The register file is a PVM Gen A
 * vCPU (docs/pvm-abi.md) and the module delivers, without returning, the
 * events that need nothing but what struct pvm_kmod_pvm holds, with the
 * results of the library's machine model:
 *   in user mode:
 *     - a SYSCALL from 64-bit code: the user event of §5.3 at lstar;
 *     - #DE #DB #BP #OF #BR #UD #NM #MF #XM: the user event at event_entry;
 *     both write the PVCS and go on in supervisor mode in other_as;
 *   in supervisor mode (CS 0x33):
 *     - ERETU (a SYSCALL at retu_rip_plus2, §6.2): from the PVCS, on in user
 *       mode in other_as;
 *     - ERETS (at rets_rip_plus2, §6.3): from the 64-byte frame at RSP;
 *     - the same nine exceptions: the §5.4 frame below RSP, at event_entry + 256;
 *     - hypercalls with no state (§7): PVM_HC_IRQ_WIN, undefined PVM numbers
 *       and the KVM range (answered as KVM does, by kvm_features).
 * A frame is read or written only where this RUN's address space maps it
 * (writable to write), all 64 bytes in one page.  Anything else, or an
 * event whose result this RUN could not enter (a CS other than 0x33/0x23, SS
 * other than 0x2b, a RIP the RUN would refuse), ends the run as in version 2,
 * with nothing changed.  The guest's CR3 pair and the NMI mask are the
 * caller's: it swaps CR3 and SWITCH_CR3 once per mode switch and releases
 * the NMI mask if nmi_unmasked.  The caller asks for this only while it has
 * nothing to deliver first (a KICK ends the run to deliver a new event).
 * The PVCS page is pinned (and stays pinned for the next RUN of the same
 * address space while pvcs and pvcs_cookie stay the same, until it closes):
 * the module never writes through a stale address.
 */
#define PVM_KMOD_RUN_PVM 0x1u

#define PVM_KMOD_MODE_SUPERVISOR 0u
#define PVM_KMOD_MODE_USER       1u

struct pvm_kmod_pvm {
    uint64_t pvcs;               /* in: the caller's address of the 128-byte PVCS (128-byte aligned) */
    uint64_t pvcs_cookie;        /* in: the address space keeps its PVCS page pinned from one RUN to
                                    the next while pvcs and this stay the same: change it when
                                    the memory at pvcs may have been replaced */
    uint64_t lstar;              /* in: MSR_LSTAR (canonical) */
    uint64_t event_entry;        /* in: MSR_PVM_EVENT_ENTRY */
    uint64_t retu_rip_plus2;     /* in: MSR_PVM_RETU_RIP + 2 */
    uint64_t rets_rip_plus2;     /* in: MSR_PVM_RETS_RIP + 2 */
    uint64_t redzone;            /* in: MSR_PVM_SUPERVISOR_REDZONE */
    uint64_t kernel_gs_base;     /* in: MSR_KERNEL_GS_BASE (canonical) */
    uint64_t supervisor_rsp;     /* in and out: MSR_PVM_SUPERVISOR_RSP */
    int32_t other_as;            /* in: fd of the other mode's address space (of this process),
                                    or -1: no mode switch is delivered */
    uint32_t mode;               /* in and out: PVM_KMOD_MODE_* (the run ends in the RUN's own
                                    address space when it ends in the mode it started in) */
    uint32_t kvm_features;       /* in: CPUID 0x40000001 EAX (KVM_FEATURE_PV_SCHED_YIELD) */
    uint16_t sup_cs;             /* in: the supervisor CS frames show (STAR[47:32] & ~3; SS + 8) */
    uint16_t pad0;               /* 0 */
    uint32_t events;             /* out: events delivered in the module (switches included) */
    uint32_t switches;           /* out: how many of them switched mode */
    uint32_t nmi_unmasked;       /* out: 1 if an ERETU or ERETS released the NMI mask */
    uint32_t pad1;               /* 0 */
    uint64_t reserved[3];        /* 0 */
};
_Static_assert(sizeof(struct pvm_kmod_pvm) == 128, "pvm_kmod_pvm layout");

struct pvm_kmod_run {
    struct pvm_kmod_regs regs;   /* in and out */
    uint32_t flags;              /* in: 0 or PVM_KMOD_RUN_PVM */
    uint32_t exit_reason;        /* out: PVM_KMOD_EXIT_* */
    uint32_t vector;             /* out */
    uint32_t error_code;         /* out */
    uint64_t cr2;                /* out */
    uint32_t cs;                 /* in and out: 0x33, or 0x23 (compat mode) */
    uint32_t pad1;
    uint8_t immediate_exit;      /* in: set (from any thread, then signal the runner) to stop;
                                    never written by the module */
    uint8_t pad0[7];
    uint64_t pvm;                /* in: with PVM_KMOD_RUN_PVM, the caller's address of a struct
                                    pvm_kmod_pvm (in and out: written back with the registers
                                    when its events are not 0, else left as it was); else 0 */
    uint64_t reserved[5];
};
_Static_assert(sizeof(struct pvm_kmod_run) == 248, "pvm_kmod_run layout");
#define PVM_KMOD_AS_RUN _IOWR(PVM_KMOD_IOC_MAGIC, 0x13, struct pvm_kmod_run)

/*
 * ioctl(as, PVM_KMOD_AS_KICK, 0): end this address space's RUN promptly with
 * -EINTR, without a signal: the running CPU gets an IPI.  With no RUN in
 * progress, the next one returns -EINTR at once (a kick is never lost; one
 * that comes late makes one spurious -EINTR).  Any thread of the creating
 * process, any time (async-signal-safe: one syscall).
 *   0; -EINVAL argument not 0; -EPERM not the creating process.
 */
#define PVM_KMOD_AS_KICK _IO(PVM_KMOD_IOC_MAGIC, 0x14)

/*
 * ioctl(as, PVM_KMOD_AS_POST_IRQ, vector) (version 3): an external interrupt
 * (vector 32..255) for the guest of this address space's RUN.  It is kept
 * in the address space (a bit per vector) and the running CPU, if any, gets
 * an IPI.  A RUN with PVM_KMOD_RUN_PVM delivers the highest posted vector
 * itself where the machine model would deliver it at once (§5.3 in user
 * mode, with other_as; §5.5 in supervisor mode with the PVCS IF set), as an
 * event; one it cannot deliver ends the RUN with -EINTR and stays posted,
 * and so does any posted vector for a RUN without PVM_KMOD_RUN_PVM.  Any
 * thread of the creating process (async-signal-safe: one syscall).
 *   0; -EINVAL vector outside 32..255; -EPERM not the creating process.
 * ioctl(as, PVM_KMOD_AS_TAKE_IRQS, uint64_t bits[4]): take every posted
 * vector back (bit v of bits[v / 64]) and clear them.  0; -EFAULT; -EPERM.
 */
#define PVM_KMOD_AS_POST_IRQ  _IO(PVM_KMOD_IOC_MAGIC, 0x15)
#define PVM_KMOD_AS_TAKE_IRQS _IOR(PVM_KMOD_IOC_MAGIC, 0x16, uint64_t[4])

#endif /* PVM_KMOD_H */
