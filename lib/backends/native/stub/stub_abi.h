/*
 * lib/backends/native/stub/stub_abi.h - what the library and the stub program
 * agree on: fixed addresses inside the stub region and the control area.
 *
 * Freestanding: included by the stub (no libc) and by stub.c.
 *
 * The control area is a memfd (fd NSTUB_FD_CTL in the stub) of
 * NSTUB_CTL_SIZE bytes, mapped MAP_SHARED by both sides: the control page
 * (struct nstub_ctl) and the stub's signal stack, so the signal frame - and
 * with it the guest's XSAVE image - can be read and written by the library
 * without a copy.  The guest can write all of it: the library validates
 * every value it reads back.
 *
 * Protocol (ctl->state is the futex word, both directions):
 *   stub  -> TRAPPED   report filled (regs, signal info, frame location)
 *   lib   -> RESUME    regs and map commands filled; the stub applies the
 *                      commands, loads the regs into the frame, sets RUNNING
 *                      and sigreturns into the guest
 *   lib   -> SYNC      the stub applies the commands and answers TRAPPED
 *                      again without running the guest
 * Each side futex-wakes the other only if the other announced that it sleeps
 * (lib_sleeping / stub_sleeping), after a short spin.  ctl->death is a robust
 * futex word holding the stub's pid: when the stub dies the kernel sets
 * FUTEX_OWNER_DIED in it and wakes the library (futex_waitv on both words).
 * The other way round, the stub exits on its own once the death pipe hangs
 * up (the library process died): it looks while it spins, after each wake-up
 * and at every SIGPROF of its CPU-time timer (NSTUB_ORPHAN_CPU_US), which it
 * handles without a report; asleep, it is killed by the kernel when the pipe
 * loses its writer (nstub_backstop).  Its sleep is untimed (the filter allows
 * no other FUTEX_WAIT): a stub asleep on ctl->state runs no guest code until
 * the library wakes it, the stop that nstub_confirm_stopped() checks
 * (ctl->park asks the stub to stop spinning).
 *
 * Every mmap of guest RAM (NSTUB_CMD_MAP/PVCS) waits for the library's
 * approval (ctl->approve_maps, stub_main.c install_map_approval): the
 * library lets through exactly the commands it queued, in order, and nothing
 * a guest asks for by itself.
 */
#ifndef PVM_NSTUB_ABI_H
#define PVM_NSTUB_ABI_H

#include <stdint.h>

#define NSTUB_ABI_MAGIC   0x42555453u   /* "STUB" */
#define NSTUB_ABI_VERSION 8u

/* Layout of the stub region [0x7f0000000000, 0x800000000000). */
#define NSTUB_IMAGE_BASE  0x7f0000000000ull  /* linker script: text first */
/* The stub's only SYSCALL instruction (the linker script puts it first). */
#define NSTUB_SYSCALL_INSN NSTUB_IMAGE_BASE
#define NSTUB_IMAGE_MAX   0x100000ull        /* the image must fit below the control area */
#define NSTUB_CTL_ADDR    0x7f0000100000ull
#define NSTUB_CTL_SIZE    0x10000ull
#define NSTUB_ALTSTACK_OFF  0x6000ull        /* signal stack: the rest of the control area */
#define NSTUB_ALTSTACK_SIZE (NSTUB_CTL_SIZE - NSTUB_ALTSTACK_OFF)
/* The vCPU's PVCS page (guest RAM, NSTUB_CMD_PVCS), right after the control area: smod fast path. */
#define NSTUB_PVCS_ADDR   (NSTUB_CTL_ADDR + NSTUB_CTL_SIZE)
/* The vCPU's link area (NSTUB_CMD_LINK, struct nstub_link), after the PVCS page. */
#define NSTUB_LINK_ADDR   (NSTUB_PVCS_ADDR + 0x1000ull)
#define NSTUB_LINK_FPU_OFF 0x1000ull         /* the XSAVE image travels here */
#define NSTUB_LINK_SIZE   (NSTUB_LINK_FPU_OFF + NSTUB_ALTSTACK_SIZE)

/* How soon a stub notices that the library process died: idle, and running guest code. */
#define NSTUB_ORPHAN_CPU_US   500000    /* ITIMER_PROF period: CPU time between checks */

/* The stub's file descriptors. */
#define NSTUB_FD_RAM 3
#define NSTUB_FD_CTL 4
/*
 * The read end of the library's death pipe (the library keeps the only write
 * end, O_CLOEXEC).  At start-up the stub (and the zygote) reopens it through
 * /proc/self/fd as an open file description of its own, with O_ASYNC,
 * F_SETOWN = itself and F_SETSIG = SIGKILL: when the last writer closes
 * (library death or exec) the kernel SIGKILLs the holder, whatever its guest
 * does.  The guest cannot undo it (no fcntl/close in the seccomp filter).
 */
#define NSTUB_FD_DEATH 5
/*
 * The stub's end of a SOCK_SEQPACKET pair with the library: the stub sends
 * the listener of its mapping-approval filter over it (SCM_RIGHTS) and closes
 * it before any guest code runs.
 */
#define NSTUB_FD_NOTIFY 6
/*
 * The VM's link memfd: one NSTUB_LINK_SIZE area per vCPU (by id), which a
 * vCPU's stubs map at NSTUB_LINK_ADDR (NSTUB_CMD_LINK) for the user/kernel
 * hand-off (struct nstub_link).
 */
#define NSTUB_FD_LINK 7
/*
 * A VM created from a snapshot: the snapshot's RAM, a memfd sealed against
 * writes (F_SEAL_WRITE: no writable shared mapping of it can exist), mapped
 * read-only by offset like NSTUB_FD_RAM for pages the VM has not written.
 * Absent (closed) for other VMs.
 */
#define NSTUB_FD_SNAP 8

/*
 * The zygote (stub/zygote.c): the stub image started with argv[1] =
 * NSTUB_ZYGOTE_ARG forks stubs on request, so a stub spawn never copies the
 * library's fd table.  Its fds: NSTUB_ZFD_SOCK (SOCK_SEQPACKET; a request is
 * one struct nstub_zreq with SCM_RIGHTS of the stub's fds it names),
 * NSTUB_ZFD_PAGE (a memfd holding struct nstub_zpage, mapped by both sides
 * and closed after mapping) and NSTUB_FD_DEATH.  A request carries a third
 * fd, the snapshot memfd (NSTUB_FD_SNAP), for a VM created from a snapshot.  The page is never visible
 * to a guest: every stub unmaps it before its seccomp filter.
 */
#define NSTUB_ZYGOTE_ARG "zygote"
#define NSTUB_ZFD_SOCK 3
#define NSTUB_ZFD_PAGE 4
#define NSTUB_ZYG_ADDR  0x7f0000200000ull   /* above the PVCS page: every stub unmaps it */
#define NSTUB_ZYG_SLOTS 256                 /* live stubs per zygote */
#define NSTUB_ZYG_MAGIC 0x4759595au         /* "ZYYG" */

/* A slot's state: the library moves FREE/REAPED -> REQ, the zygote the rest (futex word). */
enum nstub_zslot_state {
    NSTUB_Z_FREE = 0,
    NSTUB_Z_REQ = 1,        /* request sent */
    NSTUB_Z_SPAWNED = 2,    /* pid valid */
    NSTUB_Z_FAILED = 3,     /* fork failed: status = errno */
    NSTUB_Z_EXITED = 4,     /* exited, code/status valid, not yet reaped (pid still ours) */
    NSTUB_Z_REAPED = 5,     /* reaped: the slot may be reused */
};

struct nstub_zslot {
    uint32_t state;
    int32_t pid;
    int32_t code, status;   /* siginfo si_code (CLD_*) and si_status */
};

struct nstub_zpage {
    uint32_t magic;
    uint32_t ready;         /* futex: 0 starting, 1 serving, 2 failed (fail = errno) */
    int32_t lib_pid;        /* library -> zygote: who to watch */
    int32_t zygote_pid;
    int32_t backstop;       /* 0: the death-pipe backstop is armed, else -errno */
    int32_t fail;
    struct nstub_zslot slot[NSTUB_ZYG_SLOTS];
};

struct nstub_zreq {
    uint32_t op;            /* NSTUB_ZOP_SPAWN */
    uint32_t slot;
    uint32_t fds;           /* bit n: the stub's fd n comes in SCM_RIGHTS (in increasing n) */
};
#define NSTUB_ZOP_SPAWN 1
/* The fds a request may carry: the control memfd always; RAM and link (not for a pooled stub, which gets them later), socket. */
#define NSTUB_ZREQ_FDS ((1u << NSTUB_FD_RAM) | (1u << NSTUB_FD_CTL) | (1u << NSTUB_FD_NOTIFY) | (1u << NSTUB_FD_LINK) | \
                        (1u << NSTUB_FD_SNAP))
#define NSTUB_ZREQ_MAXFDS 5
#define NSTUB_FD_LAST NSTUB_FD_SNAP    /* the stub's highest fd */

enum nstub_state {
    NSTUB_ST_BOOT = 0,      /* written by the library before the stub starts */
    NSTUB_ST_RUNNING = 1,   /* the guest runs */
    NSTUB_ST_TRAPPED = 2,   /* the stub waits in its handler; report valid */
    NSTUB_ST_RESUME = 3,
    NSTUB_ST_SYNC = 4,
    NSTUB_ST_GO = 5,        /* pooled stub: its memfds wait on the socket (stub_main.c receive_ram) */
};

enum nstub_cmd_op {
    NSTUB_CMD_MAP = 1,      /* mmap(gva, len, prot, MAP_SHARED|MAP_FIXED, fd, off), fd NSTUB_FD_RAM or _SNAP */
    NSTUB_CMD_UNMAP = 2,    /* munmap(gva, len) */
    NSTUB_CMD_PVCS = 3,     /* mmap(NSTUB_PVCS_ADDR, 4096, RW, MAP_SHARED|MAP_FIXED, NSTUB_FD_RAM, off) */
    NSTUB_CMD_LINK = 4,     /* mmap(NSTUB_LINK_ADDR, NSTUB_LINK_SIZE, RW, MAP_SHARED|MAP_FIXED, NSTUB_FD_LINK, off) */
};

struct nstub_cmd {
    uint64_t gva, len, off;
    uint32_t op, prot;
    uint32_t fd, pad;       /* MAP: the fd the stub maps from (NSTUB_FD_RAM or NSTUB_FD_SNAP) */
};

#define NSTUB_MAX_CMDS 256


/* Registers in the order the stub keeps them (same as struct nstub_regs). */
struct nstub_abi_regs {
    uint64_t gpr[16];       /* rax rcx rdx rbx rsp rbp rsi rdi r8..r15 */
    uint64_t rip, rflags, fs_base, gs_base;
    uint16_t cs, ss;
    uint32_t pad;
};

/*
 * The smod fast path (stub/fast.c): PVM events the stub answers itself,
 * with the machine model's exact results, without a report.  The library
 * fills this block before every RESUME (only while the stub is stopped)
 * and reads back count and nmi_masked after the next report.  Everything
 * here is guest-writable: a guest that forges it only harms itself, and the
 * library trusts nothing read back beyond what the guest could do anyway.
 */
#define NSTUB_FAST_ON        1u        /* enabled must be exactly this (a scribble is not "on") */
#define NSTUB_FAST_CPUID     1u        /* flags: the synthetic CPUID may be answered from cpuid[] */
#define NSTUB_FAST_WINDOWS   8
#define NSTUB_FAST_MAX_CPUID 264
#define NSTUB_PROT_READ      1u        /* window prot bits (PROT_READ / PROT_WRITE) */
#define NSTUB_PROT_WRITE     2u
#define NSTUB_RFLAGS_ALLOWED 0x254fd7ull   /* pvm-abi.md §1.1, = PVM_RFLAGS_ALLOWED */

/* Installed guest mappings the fast path may touch (shadow TLB entries: §1.4 TLB semantics). */
struct nstub_window {
    uint64_t start, len;
    uint32_t prot, pad;
};

struct nstub_cpuid {
    uint32_t function, index, flags;   /* flags bit 0: index is significant */
    uint32_t eax, ebx, ecx, edx;
};

struct nstub_fast {
    /* lib -> stub, before every resume */
    uint32_t enabled;       /* NSTUB_FAST_ON: smod, PVCS mapped, no event pending */
    uint32_t flags;         /* NSTUB_FAST_* */
    /* both: the PVM MSRs a fast WRMSR may write (§2; RETU/RETS stored +2 as in msr.c; sup_rsp below) */
    uint64_t retu_plus2, rets_plus2;
    uint64_t event_entry, redzone;
    uint64_t sup_cs;        /* STAR[47:32] & ~3 (§1.2) */
    uint32_t kvm_features;  /* CPUID 0x40000001 EAX (KVM hypercall gates, §7.3) */
    uint32_t nr_windows;
    struct nstub_window win[NSTUB_FAST_WINDOWS];
    /* any library thread -> stub: an injection or kick is on its way, report at once */
    uint32_t attention;
    /* both: the NMI mask (§5.8); the fast path only clears it (ERETS) */
    uint32_t nmi_masked;
    /* stub -> lib: events handled in the stub since the last resume (statistics) */
    uint64_t count;
    /*
     * External interrupts for in-stub delivery (§5.5, fast.c deliver_irq): bit v = vector v
     * (32..255) pending.  Library threads only set bits (atomic OR, then the kick signal
     * without attention: a "poke"); the stub claims a vector by an atomic AND that clears
     * its bit; the library takes back the rest (atomic exchange) only while the stub is
     * stopped.  So every posted vector is delivered exactly once, by one side.
     */
    uint64_t irq[4];
    /*
     * Poke coalescing: a library thread signals only if its atomic exchange of 1 found 0;
     * the stub's kick handler stores 0 before it looks at irq[] (and attention), the library
     * also at take-back.  So at most one poke signal is queued per stub (RT kick signals
     * would otherwise queue one per interrupt while a guest blocks them).
     */
    uint32_t poke_pending, pad3;
    uint64_t irqs;          /* stub -> lib: interrupts delivered in the stub (statistics) */
    uint64_t sup_rsp;       /* both: MSR_PVM_SUPERVISOR_RSP (fast WRMSR, §2) */
    /* lib -> stub when the vCPU's table changes: the effective CPUID table (§6.1) */
    uint32_t nr_cpuid, pad;
    struct nstub_cpuid cpuid[NSTUB_FAST_MAX_CPUID];
};

/*
 * The user/kernel hand-off (stub/link.c, docs/design.md "The user stub and
 * the kernel stub hand off"): a user SYSCALL goes from the user stub straight
 * to the spinning kernel stub of the same vCPU, and the guest kernel's ERETU
 * straight back, without the library.  word = (gen << 8) | state; every
 * transition is a CAS, so a request and its withdrawal, or a finish and a
 * give-up, cannot both win:
 *   lib    IDLE -> ARMED   at a user resume (and back to IDLE by exchange when
 *                           the user stub reports: the library takes the link back)
 *   user   ARMED -> REQ    regs and fpu hold its SYSCALL; REQ -> ARMED withdraws
 *   kernel REQ -> RUN      claimed: it runs the guest kernel's entry (§5.3)
 *   kernel RUN -> DONE     its ERETU (§6.2): regs and fpu hold the user state
 *   user   DONE -> ARMED   it returns to user code
 *   kernel RUN -> REPORT   it reported to the library instead (any other trap)
 *   user   RUN -> LEFT     it stopped waiting and reports; the library adopts
 *                           the kernel stub's next report
 * Guest-writable like everything a stub maps: the library believes only
 * what a user SYSCALL or an ERETU could have produced (docs/design.md).
 */
enum nstub_link_state {
    NSTUB_LINK_IDLE = 0,
    NSTUB_LINK_ARMED = 1,
    NSTUB_LINK_REQ = 2,
    NSTUB_LINK_RUN = 3,
    NSTUB_LINK_DONE = 4,
    NSTUB_LINK_REPORT = 5,
    NSTUB_LINK_LEFT = 6,
};
#define NSTUB_LINK_WORD(gen, st) (((gen) << 8) | (st))
/* An armed kernel stub spins this many spin times (spin_tsc: 240 us by default) for requests, from the arm or its last hand-back (KVM polls a halted vCPU 200 us). */
#define NSTUB_LINK_ARMED_SPINS 8
#define NSTUB_LINK_GEN_MASK 0xffffffu

enum nstub_role {
    NSTUB_ROLE_NONE = 0,
    NSTUB_ROLE_USER = 1,    /* may post its SYSCALLs */
    NSTUB_ROLE_KERNEL = 2,  /* takes them while it waits, answers the ERETU */
};

struct nstub_link {
    uint32_t word;
    uint32_t k_spinning;    /* the kernel stub spins for requests (a sleeper takes none) */
    uint64_t trips;         /* round trips completed (statistics) */
    uint32_t fpu_size, pad;
    struct nstub_abi_regs regs;
    /* the XSAVE image at NSTUB_LINK_FPU_OFF */
};

struct nstub_ctl {
    /* futex words and flags */
    uint32_t state;
    uint32_t death;         /* robust futex: stub pid; FUTEX_OWNER_DIED when it dies */
    uint32_t lib_sleeping;
    uint32_t stub_sleeping;

    /* set up by the library before the stub starts */
    uint32_t magic, version;
    int32_t kick_signal;
    uint32_t approve_maps;  /* 1: every guest-RAM mmap waits for the library (NSTUB_FD_NOTIFY) */
    uint32_t pooled;        /* 1: started without a VM; the RAM memfd comes on NSTUB_FD_NOTIFY */
    uint32_t pad_pooled;
    uint64_t spin_tsc;      /* how long the stub spins (sched_yield) for RESUME, in TSC ticks */
    uint32_t park;          /* lib -> stub at a trap: stop spinning, sleep (nstub_confirm_stopped) */
    uint32_t pad_park;

    /* lib -> stub while the hand-off is armed (struct nstub_link), else role NONE */
    uint32_t link_role;     /* NSTUB_ROLE_* */
    uint32_t link_gen;      /* the arm's generation: the link word must carry it */
    uint64_t link_lstar;    /* kernel role: MSR_LSTAR, the SYSCALL entry (§5.3) */
    uint64_t link_kgs;      /* kernel role: MSR_KERNEL_GS_BASE, canonical */

    /* trap report (stub -> library) */
    uint64_t trap_seq;
    int32_t signo, si_code;
    uint32_t sys_arch, sys_nr;  /* SIGSYS: audit arch and syscall number ... */
    uint64_t sys_call_addr;     /* ... and where the kernel saw the call (si_call_addr) */
    uint64_t trapno, err, cr2, fault_addr;
    uint64_t frame_off;     /* ucontext's offset in the control area */
    uint64_t fpstate_off;   /* XSAVE image's offset in the control area, 0 = none */
    uint32_t fpstate_size;
    int32_t cmd_err;        /* first failed command: -errno ... */
    uint32_t cmd_err_idx;   /* ... and its index */
    uint32_t pad1;

    struct nstub_abi_regs regs;   /* both directions */

    uint32_t nr_cmds;       /* lib -> stub */
    uint32_t pad2;
    struct nstub_cmd cmds[NSTUB_MAX_CMDS];

    char fail_msg[128];     /* startup failure, NUL-terminated (if the stub got that far) */

    struct nstub_fast fast;
};

_Static_assert(sizeof(struct nstub_ctl) <= NSTUB_ALTSTACK_OFF, "control page overlaps the signal stack");
_Static_assert(sizeof(struct nstub_abi_regs) == 168, "register block layout");
_Static_assert(sizeof(struct nstub_link) <= NSTUB_LINK_FPU_OFF, "link header overlaps its XSAVE image");
_Static_assert(NSTUB_LINK_ADDR + NSTUB_LINK_SIZE <= NSTUB_ZYG_ADDR, "link area overlaps the zygote page");
_Static_assert(sizeof(struct nstub_zpage) <= 8192, "zygote page size");

#endif /* PVM_NSTUB_ABI_H */
