// SPDX-License-Identifier: GPL-2.0
/*
 * kmod/deliver.c - PVM_KMOD_RUN_PVM: the PVM Gen A events the module
 * delivers itself (include/pvm/kmod.h says which), with exactly the results
 * of the library's machine model, so that a guest leaves the same bytes on
 * every backend:
 *
 *   user event (§5.3)              lib/machine/event.c user_event
 *   supervisor exception (§5.4)    event.c supervisor_exception
 *   supervisor interrupt (§5.5)    event.c supervisor_interrupt (a posted IRQ)
 *   ERETU (§6.2), ERETS (§6.3)      lib/machine/eret.c
 *   hypercalls without state (§7)  lib/machine/hypercall.c smod_syscall
 *
 * docs/pvm-abi.md §10's decisions are the model's, named where they act.
 * The library asks for this only with nothing to deliver or hold pending, so
 * the model's event check after each event (pvm_m__trap_end) has nothing to
 * do; what is not in struct pvm_kmod_pvm (the CR3 pair, the NMI mask) it
 * applies itself from what the run returns.  Anything else, or not exactly
 * the model's common case, is PVM_NOT_DELIVERED with nothing changed: the
 * trap goes to the library.  Guest memory is touched only in the PVCS page
 * (pinned, and kept pinned by the address space from one RUN to the next:
 * struct pvm_pvcs_pin) and where the running address space maps a frame
 * (pinned too).
 */
#include <linux/build_bug.h>
#include <linux/mm.h>
#include <linux/sched.h>

#include <asm/trapnr.h>

#include "pvm.h"
#include "switch.h"

#define RF_IF  X86_EFLAGS_IF
#define RF_FIXED X86_EFLAGS_FIXED
enum { RAX = 0, RCX = 1, RSP = 4, R10 = 10, R11 = 11 };

/* The 64-byte supervisor frame (§4), as eight quadwords. */
enum { F_ERRCODE, F_RIP, F_CS, F_RFLAGS, F_RSP, F_SS, F_RCX, F_R11 };
static_assert(PVM_FRAME_SIZE == 8 * 8);

void pvm_pvcs_unpin(struct pvm_pvcs_pin *pin)
{
	if (pin->page)
		pvm_unpin_pvcs(pin->page);
	pin->page = NULL;
}

int pvm_deliver_begin(struct pvm_deliver *d, struct pvm_pvcs_pin *pin, bool switch_ok)
{
	const struct pvm_kmod_pvm *p = &d->p;
	int ret;

	d->switch_ok = switch_ok;
	if (memchr_inv(p->reserved, 0, sizeof(p->reserved)) || p->pad0 || p->pad1 || p->events ||
	    p->switches || p->nmi_unmasked || p->mode > PVM_KMOD_MODE_USER ||
	    (p->pvcs & (sizeof(struct pvm_vcpu_struct) - 1)) || !pvm_canonical48(p->lstar) ||
	    !pvm_canonical48(p->kernel_gs_base))
		return -EINVAL;
	/* The last RUN's pin while the caller says the memory is the same: no mmap_lock, no GUP. */
	if (!pin->page || pin->uaddr != (p->pvcs & PAGE_MASK) || pin->cookie != p->pvcs_cookie) {
		pvm_pvcs_unpin(pin);
		ret = pvm_pin_pvcs(current->mm, p->pvcs, &pin->page);
		if (ret)
			return ret;
		pin->uaddr = p->pvcs & PAGE_MASK;
		pin->cookie = p->pvcs_cookie;
	}
	d->pvcs = page_address(pin->page) + offset_in_page(p->pvcs);
	return 0;
}

/* The underlying RFLAGS a RUN enters with for the guest's @fl (run.c; the library's regs_to_provider). */
static u64 underlying(u64 fl)
{
	return (fl & PVM_GUEST_RFLAGS) | RF_IF | RF_FIXED;
}

/* The guest's RFLAGS in smod: the virtual IF is PVCS bit 9 (§1.2). */
static u64 guest_rflags(struct pvm_deliver *d, const struct pvm_switch_regs *g)
{
	return (g->rflags & ~RF_IF) | (READ_ONCE(d->pvcs->event_flags) & PVM_EVENT_FLAGS_IF);
}

/* §5.7 RFLAGS setter in smod: IF to the PVCS only on a change; 0 -> 1 clears IP (§10.31). */
static void set_virtual_if(struct pvm_deliver *d, u64 new_if)
{
	u64 ef = READ_ONCE(d->pvcs->event_flags);

	if ((ef & PVM_EVENT_FLAGS_IF) == (new_if & RF_IF))
		return;
	if (new_if & RF_IF)
		WRITE_ONCE(d->pvcs->event_flags, (ef | PVM_EVENT_FLAGS_IF) & ~PVM_EVENT_FLAGS_IP);
	else
		WRITE_ONCE(d->pvcs->event_flags, ef & ~PVM_EVENT_FLAGS_IF);
}

/* §5.6: the entry state of every event. */
static void enter_handler(struct pvm_switch_regs *g, u64 entry)
{
	g->rip = entry;
	g->gpr[RCX] = entry;
	g->gpr[R11] = PVM_ENTRY_R11;
	g->rflags = underlying(PVM_ENTRY_RFLAGS);
}

/* The 64 bytes at @gva, in one page this address space maps (writable to @write), or NULL. */
static u64 *frame_at(struct pvm_pgtable *pt, u64 gva, bool write)
{
	if ((gva & ~PAGE_MASK) > PAGE_SIZE - PVM_FRAME_SIZE)
		return NULL;
	return pvm_pt_kaddr(pt, gva, write);
}

/* Exceptions the model reflects without an error code (lib/machine/exception.c). */
static bool reflected(int vector)
{
	switch (vector) {
	case X86_TRAP_DE: case X86_TRAP_DB: case X86_TRAP_BP: case X86_TRAP_OF: case X86_TRAP_BR:
	case X86_TRAP_UD: case X86_TRAP_NM: case X86_TRAP_MF: case X86_TRAP_XF:
		return true;
	}
	return false;
}

/* §5.3: umod -> smod, at lstar for a SYSCALL (@vector < 0), else at event_entry. */
static int user_event(struct pvm_deliver *d, struct pvm_switch_regs *g, int vector)
{
	struct pvm_vcpu_struct *p = d->pvcs;
	u64 entry = vector < 0 ? d->p.lstar : d->p.event_entry + PVM_ENTRY_USER;

	if (!d->switch_ok || !pvm_canonical48(entry))
		return PVM_NOT_DELIVERED;
	WRITE_ONCE(p->user_cs, g->cs);
	WRITE_ONCE(p->user_ss, __USER_DS); /* a RUN's SS */
	/* §10.8: 32 bits of RFLAGS, IF as umod sees it (always 1). */
	WRITE_ONCE(p->eflags, (u32)(g->rflags | RF_IF));
	WRITE_ONCE(p->pkru, 0); /* §10.6 */
	WRITE_ONCE(p->user_gsbase, g->gs_base);
	WRITE_ONCE(p->rip, g->rip);
	WRITE_ONCE(p->rsp, g->gpr[RSP]);
	WRITE_ONCE(p->rcx, g->gpr[RCX]);
	WRITE_ONCE(p->r11, g->gpr[R11]);
	/* §10.4: no error code (none of these has one): event_errcode stays; §10.5: SYSCALL leaves the vector. */
	if (vector >= 0)
		WRITE_ONCE(p->event_vector, vector);
	/* §10.3: a user event clears IF in the PVCS. */
	WRITE_ONCE(p->event_flags, READ_ONCE(p->event_flags) & ~PVM_EVENT_FLAGS_IF);

	/* §1.3 umod -> smod (the caller swaps CR3 and SWITCH_CR3; §10.25: no flush). */
	g->gs_base = d->p.kernel_gs_base;
	g->gpr[RSP] = d->p.supervisor_rsp; /* no red zone, no alignment */
	g->cs = __USER_CS;
	enter_handler(g, entry);
	d->p.mode = PVM_KMOD_MODE_SUPERVISOR;
	return PVM_DELIVERED_SWITCHED;
}

/* §6.2 ERETU: smod -> umod through the PVCS. */
static int eretu(struct pvm_deliver *d, struct pvm_switch_regs *g)
{
	struct pvm_vcpu_struct *p = d->pvcs;
	/* §10.26: only RPL 3 is OR-ed in (the model checks no more: other selectors are the library's). */
	u16 cs = READ_ONCE(p->user_cs) | 3, ss = READ_ONCE(p->user_ss) | 3;
	u64 rip = READ_ONCE(p->rip), flags;

	if (!d->switch_ok || ss != __USER_DS || !pvm_rip_ok(cs, rip))
		return PVM_NOT_DELIVERED;
	d->p.nmi_unmasked = 1; /* §10.31 */
	d->p.supervisor_rsp = g->gpr[RSP];
	/* §5.7: IP cleared; nothing is pending (the caller's promise): nothing to re-evaluate. */
	flags = READ_ONCE(p->event_flags);
	if (flags & PVM_EVENT_FLAGS_IP)
		WRITE_ONCE(p->event_flags, flags & ~PVM_EVENT_FLAGS_IP);
	g->cs = cs;
	/* §10.7: user_gsbase canonicalised (from bit 47: the module has no LA57). */
	g->gs_base = (u64)sign_extend64(READ_ONCE(p->user_gsbase), 47);
	/* §10.8: the 32-bit eflags | IF, filtered. */
	g->rflags = underlying(READ_ONCE(p->eflags));
	g->rip = rip;
	g->gpr[RSP] = READ_ONCE(p->rsp);
	g->gpr[RCX] = READ_ONCE(p->rcx);
	g->gpr[R11] = READ_ONCE(p->r11);
	d->p.mode = PVM_KMOD_MODE_USER;
	return PVM_DELIVERED_SWITCHED;
}

/* §6.3 ERETS: from the frame at RSP; mode, CS and SS stay. */
static int erets(struct pvm_deliver *d, struct pvm_switch_regs *g, struct pvm_pgtable *pt)
{
	const u64 *f = frame_at(pt, g->gpr[RSP], false);
	u64 rip, fl;

	if (!f)
		return PVM_NOT_DELIVERED;
	rip = READ_ONCE(f[F_RIP]);
	if (!pvm_canonical48(rip))
		return PVM_NOT_DELIVERED;
	d->p.nmi_unmasked = 1;
	/* Through the setter (IF to the PVCS; 0 -> 1 clears IP), filtered as on every entry (§10.8). */
	fl = (READ_ONCE(f[F_RFLAGS]) & (PVM_GUEST_RFLAGS | RF_IF)) | RF_FIXED;
	set_virtual_if(d, fl);
	g->rip = rip;
	g->gpr[RSP] = READ_ONCE(f[F_RSP]);
	g->gpr[RCX] = READ_ONCE(f[F_RCX]);
	g->gpr[R11] = READ_ONCE(f[F_R11]);
	g->rflags = underlying(fl);
	return PVM_DELIVERED;
}

/* §5.4: smod, a vector below 32 without an error code: the frame below RSP, entry + 256. */
static int supervisor_exception(struct pvm_deliver *d, struct pvm_switch_regs *g, int vector,
				struct pvm_pgtable *pt)
{
	u64 rsp = g->gpr[RSP];
	u64 frame = ((rsp - d->p.redzone) & ~0xfull) - PVM_FRAME_SIZE;
	u64 entry = d->p.event_entry + PVM_ENTRY_SUPERVISOR_EXCEPTION;
	u64 *f = frame_at(pt, frame, true);

	if (!f || !pvm_canonical48(entry))
		return PVM_NOT_DELIVERED;
	WRITE_ONCE(f[F_ERRCODE], (u64)vector << 32); /* §10.4: no error code -> low half 0 */
	WRITE_ONCE(f[F_RIP], g->rip);
	WRITE_ONCE(f[F_CS], d->p.sup_cs);
	WRITE_ONCE(f[F_RFLAGS], guest_rflags(d, g));
	WRITE_ONCE(f[F_RSP], rsp);
	WRITE_ONCE(f[F_SS], (u64)d->p.sup_cs + 8);
	WRITE_ONCE(f[F_RCX], g->gpr[RCX]);
	WRITE_ONCE(f[F_R11], g->gpr[R11]);
	g->gpr[RSP] = frame;
	set_virtual_if(d, PVM_ENTRY_RFLAGS);
	enter_handler(g, entry);
	return PVM_DELIVERED;
}

/* §5.5: smod, a posted interrupt with the PVCS IF set: state to the PVCS, nothing pushed, entry + 512. */
static int supervisor_interrupt(struct pvm_deliver *d, struct pvm_switch_regs *g, unsigned int vector)
{
	struct pvm_vcpu_struct *p = d->pvcs;
	u64 rflags = guest_rflags(d, g);
	u64 entry = d->p.event_entry + PVM_ENTRY_SUPERVISOR_INTERRUPT;

	/* irq.c: IF = 0 holds it (the model then sets IP): the caller's. */
	if (!(rflags & RF_IF) || !pvm_canonical48(entry))
		return PVM_NOT_DELIVERED;
	WRITE_ONCE(p->eflags, (u32)rflags); /* §10.8, with the virtual IF */
	WRITE_ONCE(p->rip, g->rip);
	WRITE_ONCE(p->rsp, g->gpr[RSP]);
	WRITE_ONCE(p->rcx, g->gpr[RCX]);
	WRITE_ONCE(p->r11, g->gpr[R11]);
	WRITE_ONCE(p->event_vector, vector); /* §10.4: no error code, event_errcode stays */
	g->gpr[RSP] = (g->gpr[RSP] - d->p.redzone) & ~0xfull;
	set_virtual_if(d, PVM_ENTRY_RFLAGS);
	enter_handler(g, entry);
	return PVM_DELIVERED;
}

/* Count what was delivered (the block's events and switches); returns @done. */
static int counted(struct pvm_deliver *d, int done)
{
	if (done != PVM_NOT_DELIVERED)
		d->p.events++;
	if (done == PVM_DELIVERED_SWITCHED)
		d->p.switches++;
	return done;
}

int pvm_deliver_irq(struct pvm_deliver *d, struct pvm_switch_regs *g, unsigned int vector)
{
	/* Compat-mode user code and smod on another CS (§10.18) are the library's. */
	if (g->cs != __USER_CS)
		return PVM_NOT_DELIVERED;
	if (d->p.mode == PVM_KMOD_MODE_USER)
		return counted(d, user_event(d, g, (int)vector)); /* umod: IF is always 1 (§1.2) */
	return counted(d, supervisor_interrupt(d, g, vector));
}

/* §7.3 a generic KVM hypercall: RCX := R10, RAX := the result, R10 := RCX (hypercall.c kvm_hypercall). */
static void kvm_hypercall(struct pvm_deliver *d, struct pvm_switch_regs *g, u64 nr)
{
	s64 ret = -PVM_KVM_ENOSYS;

	g->gpr[RCX] = g->gpr[R10];
	if (nr == PVM_KVM_HC_VAPIC_POLL_IRQ)
		ret = 0;
	else if (nr == PVM_KVM_HC_CLOCK_PAIRING)
		ret = -PVM_KVM_EOPNOTSUPP;
	else if (nr == PVM_KVM_HC_SCHED_YIELD && (d->p.kvm_features & (1u << 13))) /* PV_SCHED_YIELD */
		ret = 0;
	g->gpr[RAX] = (u64)ret;
	g->gpr[R10] = g->gpr[RCX];
}

/* A SYSCALL in smod (hypercall.c smod_syscall): ERETU, ERETS, the hypercalls without state. */
static int smod_syscall(struct pvm_deliver *d, struct pvm_switch_regs *g, struct pvm_pgtable *pt)
{
	u64 nr = g->gpr[RAX];

	/* §6.3: ERETU is compared first and wins. */
	if (g->rip == d->p.retu_rip_plus2)
		return eretu(d, g);
	if (g->rip == d->p.rets_rip_plus2)
		return erets(d, g, pt);
	if (nr >= PVM_HC_SPECIAL_BASE && nr < PVM_HC_SPECIAL_BASE + PVM_HC_SPECIAL_MAX_NR) {
		if (nr == PVM_HC_IRQ_WIN)
			WRITE_ONCE(d->pvcs->event_flags, READ_ONCE(d->pvcs->event_flags) & ~PVM_EVENT_FLAGS_IP);
		else if (nr <= PVM_HC_LOAD_TLS)
			return PVM_NOT_DELIVERED; /* a defined PVM hypercall: the library's */
		else
			kvm_hypercall(d, g, nr);  /* §7.2: undefined numbers fall through */
	} else if (nr < PVM_KVM_HC_RANGE_END) {
		kvm_hypercall(d, g, nr);
	} else {
		return PVM_NOT_DELIVERED; /* a host call: an exit to the application */
	}
	g->rflags = underlying(g->rflags);
	return PVM_DELIVERED;
}

int pvm_deliver(struct pvm_deliver *d, struct pvm_switch_regs *g, int vector, struct pvm_pgtable *pt)
{
	/*
	 * A compat-mode SYSCALL (§10.19) and anything in smod on another CS
	 * (§10.18: a triple fault) are the library's.
	 */
	if (g->cs != __USER_CS)
		return PVM_NOT_DELIVERED;
	if (d->p.mode == PVM_KMOD_MODE_USER) {
		if (vector != PVM_SW_SYSCALL && !reflected(vector))
			return PVM_NOT_DELIVERED;
		return counted(d, user_event(d, g, vector == PVM_SW_SYSCALL ? -1 : vector));
	}
	if (vector == PVM_SW_SYSCALL)
		return counted(d, smod_syscall(d, g, pt));
	if (reflected(vector))
		return counted(d, supervisor_exception(d, g, vector, pt));
	return PVM_NOT_DELIVERED;
}
