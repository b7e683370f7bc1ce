/*
 * lib/backends/kvm/gena.h - the kvm backend's Gen A kvm-pvm mode.
 *
 * On a Gen A kvm-pvm host (the 2024 RFC module, pvm-abi.md §9) the kernel is
 * the PVM hypervisor: event delivery, ERETU/ERETS, hypercalls, the PVM MSRs,
 * synthetic CPUID and the shadow MMU all run in KVM.  The library only
 * programs KVM: one KVM VM per library VM (memslots), one KVM vCPU per library
 * vCPU (CPUID, a 64-bit smod boot state, MSRs), and events through
 * KVM_INTERRUPT / KVM_NMI / KVM_SET_VCPU_EVENTS.  It does not use lib/hv/.
 *
 * Everything that goes through an ioctl is computed by the pure functions
 * below (gena_abi.c: no ioctls, no OS calls), so tests/test_kvm_gena.c can
 * check it byte for byte; gena.c only issues the ioctls.  No Gen A host was
 * reachable while this was written: those tests show what the library
 * sends, not that a real kvm-pvm host accepts it.
 */
#ifndef PVM_KVM_GENA_H
#define PVM_KVM_GENA_H

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* KVM_SET_CPUID2 takes at most this many entries (KVM_MAX_CPUID_ENTRIES). */
#define KVM_GENA_MAX_CPUID 256

/* ---- CPUID (§8.1, §9.2) ------------------------------------------------------ */

/*
 * The table for KVM_SET_CPUID2: the host's KVM_GET_SUPPORTED_CPUID table
 * (@supported, may be NULL) with the @n entries of @user (may be NULL when
 * @n is 0) replacing every host entry of the leaves they name (a leaf is
 * replaced whole, as the machine model answers a leaf only from the table).
 * The PVM leaves stay: leaf 0x40000000 (EAX raised to at least 0x40000002
 * unless the user gave the leaf) and 0x40000002 (EBX 0x4d5650) are kept from
 * the host table or added when both lack them.  User flags map
 * PVM_CPUID_FLAG_SIGNIFICANT_INDEX to KVM_CPUID_FLAG_SIGNIFCANT_INDEX (the
 * uapi spelling).
 * Writes at most @max entries to @out; returns the count, or -1 if the table
 * would not fit.
 */
int kvm_gena_cpuid(const struct kvm_cpuid2 *supported, const struct pvm_cpuid_entry *user, size_t n,
                   struct kvm_cpuid_entry2 *out, size_t max);

/* ---- the boot state of a new vCPU (§9.3, §9.4) ------------------------------- */

/* Number of entries kvm_gena_boot_msrs() writes. */
#define KVM_GENA_BOOT_MSRS 8

/*
 * MSRs a new vCPU gets through KVM_SET_MSRS, after its boot sregs: STAR
 * (supervisor CS 0x10, user CS base 0x23: the machine model's reset value)
 * and the PVM MSRs at their reset values (RETU/RETS written as
 * 0xfffffffffffffffe so they are stored as 0 and read back as after a
 * reset, §2).  MSR_PVM_LINEAR_ADDRESS_RANGE is left at the host default.
 * Writes KVM_GENA_BOOT_MSRS entries; returns that count.
 */
size_t kvm_gena_boot_msrs(struct kvm_msr_entry *out);

/*
 * The sregs of a new vCPU: 64-bit smod straight away (§9.4 way (b)), so
 * KVM converts to PVM mode at this KVM_SET_SREGS and never emulates
 * non-PVM code: CR0/CR4/EFER as the machine model's reset, CS 0x10 (DPL 0,
 * L=1), SS 0x18, null data selectors, CR3 0.  GDT/IDT/TR/LDT (no effect in
 * PVM, §1.4), CR8 and the APIC base are kept from @cur (KVM_GET_SREGS of the
 * fresh vCPU); the interrupt bitmap is cleared so KVM_SET_SREGS queues
 * nothing.
 */
void kvm_gena_boot_sregs(const struct kvm_sregs *cur, struct kvm_sregs *out);

/* The registers of a new vCPU: all zero but RFLAGS 0x2 (the model's reset). */
void kvm_gena_boot_regs(struct kvm_regs *out);

/* ---- state accessors ----------------------------------------------------------- */

void kvm_gena_regs_to_kvm(const struct pvm_regs *r, struct kvm_regs *k);
void kvm_gena_regs_from_kvm(const struct kvm_regs *k, struct pvm_regs *r);

/*
 * KVM_GET_SREGS -> struct pvm_sregs.  Mode from CS.DPL (kvm-pvm reports 0 in
 * smod, 3 in umod).  smod CS/SS are KVM's, which it derives from STAR (§1.2).
 * In umod the RFC reports the hardware selectors shifted right by 3; libpvm
 * reports real selectors (§1.2 decision): CS is 0x33 or 0x23 by CS.L, SS is
 * the reported value when its RPL is 3 (a fixed host) and (value << 3) | 3
 * otherwise (5 -> 0x2b).
 */
void kvm_gena_sregs_from_kvm(const struct kvm_sregs *k, struct pvm_sregs *s);

/*
 * struct pvm_sregs -> KVM_SET_SREGS, starting from @cur (KVM_GET_SREGS now);
 * @star is the current MSR_STAR, @has_run whether KVM_RUN ran yet.  smod:
 * CS = STAR[47:32] & ~3, SS = CS + 8 (the pvm_sregs CS/SS are ignored, §1.2);
 * kvm-pvm rewrites STAR from this CS once the vCPU has run, so the caller
 * restores @star afterwards.  umod: CS 0x33/0x23 (DPL 3), SS 0x2b.  Refused:
 * a mode other than smod/umod (PVM_EINVAL); a mode change after the first
 * KVM_RUN, which kvm-pvm turns into a triple fault (§5.10, §9.4,
 * PVM_ESTATE); a umod CS other than the current hardware one (0x33 when
 * entering umod), because the RFC's set_segment never loads the hardware CS
 * (PVM_ENOTSUP).  Data selectors, FS/GS bases, CR0/2/3/4 and EFER are taken
 * as given.  On refusal *why (static) says why.
 */
int kvm_gena_sregs_to_kvm(const struct pvm_sregs *s, const struct kvm_sregs *cur, uint64_t star, bool has_run,
                          struct kvm_sregs *out, const char **why);

/*
 * The MSRs the library reads and writes through KVM_GET_MSRS/KVM_SET_MSRS:
 * those pvm_vcpu_get_msr() documents, as the machine model has them: the
 * eight PVM MSRs 0x4b564df0-0x4b564df7, EFER, STAR, LSTAR, CSTAR,
 * SYSCALL_MASK, FS/GS/KERNEL_GS base, TSC_AUX, SYSENTER_CS/ESP/EIP,
 * DEBUGCTL and TSC.  Any other index is PVM_ENOENT without an ioctl.
 */
bool kvm_gena_msr_known(uint32_t index);

/*
 * May the library write @value to MSR @index (a host write)?  0;
 * PVM_ENOENT for an index kvm_gena_msr_known() refuses; PVM_EINVAL for a
 * value the library refuses before KVM sees it: EFER must keep SCE, LME and
 * LMA and may change only NXE (no non-PVM mode, as in the model);
 * MSR_PVM_EVENT_ENTRY must be canonical at +0/+256/+512 (48-bit, or 57-bit
 * with @la57), because kvm-pvm requests a triple fault even for a host
 * write that is not (§2, §10.12).  Other values are the kernel's to check.
 */
int kvm_gena_msr_check(uint32_t index, uint64_t value, bool la57);

/* ---- memory --------------------------------------------------------------------- */

/*
 * The memslot for region @r in KVM slot @slot: guest_phys_addr = gpa, size,
 * userspace_addr = host, PVM_MEM_READONLY -> KVM_MEM_READONLY.  PVM_ENOTSUP
 * (with *why) for PVM_MEM_NOEXEC, which a memslot cannot express, and for
 * READONLY when @ro_ok is false (no KVM_CAP_READONLY_MEM).
 */
int kvm_gena_memslot(const struct pvm_region *r, uint32_t slot, bool ro_ok, struct kvm_userspace_memory_region *out,
                     const char **why);

/* KVM_TRANSLATE result: 0 and *gpa when valid, else -1. */
int kvm_gena_translation(const struct kvm_translation *t, uint64_t *gpa);

/* ---- exits ------------------------------------------------------------------------ */

/* An exit whose result the application supplies on its next pvm_vcpu_run(). */
struct kvm_gena_pending {
    uint8_t kind;      /* KVM_GENA_PEND_* */
    uint8_t size;      /* bytes: 1/2/4 (IN), 1/2/4/8 (MMIO read) */
    uint32_t offset;   /* IN: io.data_offset in the kvm_run mapping */
};
#define KVM_GENA_PEND_NONE 0
#define KVM_GENA_PEND_IO_IN 1
#define KVM_GENA_PEND_MMIO_READ 2

/* What the run loop does with a KVM exit. */
enum kvm_gena_next {
    KVM_GENA_TO_APP = 0,      /* *out is the application's exit */
    KVM_GENA_AGAIN = 1,       /* nothing for the application (IRQ window open): plan and run again */
    KVM_GENA_HALTED = 2,      /* HLT or PVM_HC_IRQ_HALT (§7.2): the vCPU waits for an event */
    KVM_GENA_INTERRUPTED = 3, /* a signal ended KVM_RUN (KVM_EXIT_INTR): a kick, or an injection to program */
};

/*
 * Translate the exit in @run (a kvm_run mapping of @run_size bytes) into
 * *out.  IO (one element; size 1/2/4; data inside the mapping), MMIO (len
 * 1/2/4/8) -> PVM_EXIT_IO/MMIO, with *pend set for an IN or an MMIO read;
 * SHUTDOWN -> PVM_EXIT_SHUTDOWN (rip 0: the caller fills it);
 * INTERNAL_ERROR, FAIL_ENTRY, EXCEPTION (§5.12 unknown vectors), and every
 * exit the library never enables (HYPERCALL: no hypercall exits are enabled,
 * and completing one would skip an instruction on kvm-pvm, §10.10; DEBUG;
 * MSR exits) or does not know -> PVM_EXIT_INTERNAL_ERROR (code
 * PVM_EINTERNAL) naming it.  Kernel-returned sizes, offsets and counts are
 * checked before use; a bad one is an internal error too.  HLT ->
 * KVM_GENA_HALTED, INTR -> KVM_GENA_INTERRUPTED (*out = KICKED),
 * IRQ_WINDOW_OPEN -> KVM_GENA_AGAIN.
 */
enum kvm_gena_next kvm_gena_exit(const struct kvm_run *run, size_t run_size, struct pvm_exit *out,
                                 struct kvm_gena_pending *pend);

/*
 * Complete a pending exit before the next KVM_RUN: copy the application's
 * answer (@app->u.io.data or u.mmio.data, @p->size bytes, little-endian)
 * into @run.  Does nothing for KVM_GENA_PEND_NONE or an offset that no
 * longer fits @run_size.
 */
void kvm_gena_complete(struct kvm_run *run, size_t run_size, const struct kvm_gena_pending *p,
                       const struct pvm_exit *app);

/* ---- events: the gating rule (§9.5) ------------------------------------------------ */

/* Highest vector set in the 256-bit map @irq (vectors < 32 are never set), or -1. */
int kvm_gena_highest_irq(const uint64_t irq[4]);

/* What to program before the next KVM_RUN. */
struct kvm_gena_plan {
    bool set_exception;  /* KVM_SET_VCPU_EVENTS with the queued exception (kvm_gena_exception_events) */
    bool nmi;            /* KVM_NMI */
    int irq;             /* KVM_INTERRUPT with this vector, or -1 */
    bool request_window; /* kvm_run->request_interrupt_window */
};

/*
 * The gating rule.  @irq: pending interrupt vectors; @nmi, @exc: an NMI /
 * an exception is queued; @ready, @if_flag: kvm_run's
 * ready_for_interrupt_injection and if_flag from the last exit (the caller
 * passes @ready false when it changed the vCPU state since).
 *  - An exception goes first, by KVM_SET_VCPU_EVENTS.
 *  - An NMI goes by KVM_NMI, also in the same round as an exception: KVM
 *    keeps it queued behind the exception and gates it by the NMI mask
 *    alone (§5.8, §9.5).
 *  - An interrupt goes by KVM_INTERRUPT only when KVM said it is ready and
 *    IF is set, and only in a round with no exception and no NMI: on
 *    kvm-pvm KVM_INTERRUPT is delivered with no IF check (§9.5), and KVM
 *    reinjects an already-injected interrupt ahead of a new NMI or
 *    exception, so it would also beat the NMI.  Otherwise the round
 *    requests the interrupt window (KVM sets PVCS IP and exits with
 *    KVM_EXIT_IRQ_WINDOW_OPEN once IF allows, §5.7).  The highest vector
 *    goes first; while more remain the window stays requested.
 */
void kvm_gena_plan(const uint64_t irq[4], bool nmi, bool exc, bool ready, bool if_flag, struct kvm_gena_plan *out);

/*
 * KVM_SET_VCPU_EVENTS for exception @ev, from @cur (KVM_GET_VCPU_EVENTS
 * now, so the NMI, interrupt and shadow state round-trip unchanged): a
 * pending exception (KVM_CAP_EXCEPTION_PAYLOAD is enabled on the VM) with
 * #PF's CR2 as its payload, so KVM sets CR2 before kvm-pvm delivers it
 * (§5.1).  Returns 0, or -1 if @cur already holds an exception (pending or
 * injected): the caller keeps @ev queued.
 */
int kvm_gena_exception_events(const struct kvm_vcpu_events *cur, const struct pvm_event *ev,
                              struct kvm_vcpu_events *out);

/*
 * After a KVM_RUN that may not have entered the guest (-EINTR), take back
 * from @ev (KVM_GET_VCPU_EVENTS) an exception or a KVM_INTERRUPT that KVM
 * has not delivered yet, so the library queues them again: a later
 * KVM_SET_REGS would drop a pending exception, and an injected interrupt
 * would be delivered whatever IF the application sets meanwhile.  The
 * exception only when @take_exc (the library's one exception slot is
 * free), with a vector 0..31 other than NMI, and with a payload only for
 * #PF (a #DB's DR6 payload has no place in struct pvm_event, so it stays in
 * KVM); the interrupt only if it is not a soft one and its vector is >= 32.
 * Clears what it takes in @ev (to be written back with
 * KVM_SET_VCPU_EVENTS); returns KVM_GENA_TOOK_* bits, with *exc / *irq
 * filled for each.
 */
#define KVM_GENA_TOOK_EXC (1u << 0)
#define KVM_GENA_TOOK_IRQ (1u << 1)
unsigned kvm_gena_take_back(struct kvm_vcpu_events *ev, bool take_exc, struct pvm_event *exc, int *irq);

/* What a halted vCPU does (the hypervisor core's rule, lib/hv/run.c). */
enum kvm_gena_halt {
    KVM_GENA_RUN = 0,       /* not halted, or an event wakes it: run */
    KVM_GENA_WAIT = 1,      /* an interrupt could wake it (IF set): wait for inject or kick */
    KVM_GENA_EXIT_HALT = 2, /* only an NMI could: PVM_EXIT_HALT, the application decides */
};
enum kvm_gena_halt kvm_gena_halt(bool halted, bool if_flag, bool irqs, bool nmi, bool exc);

#endif /* PVM_KVM_GENA_H */
