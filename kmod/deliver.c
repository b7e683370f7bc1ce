// SPDX-License-Identifier: GPL-2.0
/*
 * kmod/deliver.c - PVM_KMOD_RUN_PVM: the two PVM Gen A mode switches the
 * module delivers itself (include/pvm/kmod.h), a user SYSCALL (§5.3) and
 * ERETU (§6.2), with exactly the results of the library's machine model
 * (lib/machine/event.c user_event, lib/machine/eret.c pvm_m__eretu): the
 * same guest gives the same bytes on every backend.  The decisions of
 * docs/pvm-abi.md §10 that apply are the model's and named where they act.
 *
 * The caller (the library) asks for it only with nothing to deliver first,
 * so the model's event check after each switch would do nothing; what is not
 * in struct pvm_kmod_pvm (the CR3 pair, the NMI mask) it applies itself from
 * the counts the run returns.
 */
#include <linux/build_bug.h>
#include <linux/highmem.h>
#include <linux/mm.h>
#include <linux/sched.h>

#include "pvm.h"

/* docs/pvm-abi.md §3.1: the Gen A PVCS. */
struct pvm_pvcs {
	u64 event_flags;
	u32 event_errcode;
	u32 event_vector;
	u64 cr2;
	u64 reserved0[5];
	u16 user_cs, user_ss;
	u32 reserved1;
	u64 reserved2;
	u64 user_gsbase;
	u32 eflags;
	u32 pkru;
	u64 rip, rsp, rcx, r11;
};
static_assert(sizeof(struct pvm_pvcs) == 128);
static_assert(offsetof(struct pvm_pvcs, user_cs) == 64);
static_assert(offsetof(struct pvm_pvcs, user_gsbase) == 80);
static_assert(offsetof(struct pvm_pvcs, rip) == 96);

#define PVCS_IP 0x100ull /* event_flags: interrupt pending */
#define PVCS_IF 0x200ull /* event_flags: the smod IF */
#define ENTRY_RFLAGS 0x202ull /* §5.6: underlying RFLAGS and R11 on every event entry */

enum { RCX = 1, RSP = 4, R11 = 11 };

int pvm_deliver_begin(struct pvm_deliver *d)
{
	const struct pvm_kmod_pvm *p = &d->p;
	int ret;

	d->page = NULL;
	if (memchr_inv(p->reserved, 0, sizeof(p->reserved)) || p->switches || p->eretus ||
	    p->mode > PVM_KMOD_MODE_USER || (p->pvcs & (sizeof(struct pvm_pvcs) - 1)) ||
	    !pvm_canonical48(p->lstar) || !pvm_canonical48(p->kernel_gs_base))
		return -EINVAL;
	ret = pvm_pin_pvcs(current->mm, p->pvcs, &d->page);
	if (ret)
		return ret;
	d->pvcs = page_address(d->page) + offset_in_page(p->pvcs);
	return 0;
}

void pvm_deliver_end(struct pvm_deliver *d)
{
	if (d->page)
		pvm_unpin_pvcs(d->page);
	d->page = NULL;
}

/* §5.3 with the SYSCALL vector: umod -> smod at MSR_LSTAR. */
static void user_syscall(struct pvm_deliver *d, struct pvm_switch_regs *g)
{
	struct pvm_pvcs *p = d->pvcs;

	WRITE_ONCE(p->user_cs, g->cs);
	WRITE_ONCE(p->user_ss, __USER_DS); /* a RUN's SS */
	/* §10.8: 32 bits of the guest's RFLAGS, IF as umod sees it (always 1). */
	WRITE_ONCE(p->eflags, (u32)(g->rflags | X86_EFLAGS_IF));
	WRITE_ONCE(p->pkru, 0); /* §10.6 */
	WRITE_ONCE(p->user_gsbase, g->gs_base);
	WRITE_ONCE(p->rip, g->rip);
	WRITE_ONCE(p->rsp, g->gpr[RSP]);
	WRITE_ONCE(p->rcx, g->gpr[RCX]);
	WRITE_ONCE(p->r11, g->gpr[R11]);
	/* §10.5: a SYSCALL leaves event_vector, event_errcode and cr2 alone. */
	/* §10.3: a user event clears IF in the PVCS. */
	WRITE_ONCE(p->event_flags, READ_ONCE(p->event_flags) & ~PVCS_IF);

	/* §1.3 umod -> smod (the caller swaps CR3 and SWITCH_CR3; §10.25: no flush). */
	g->gs_base = d->p.kernel_gs_base;
	g->gpr[RSP] = d->p.supervisor_rsp; /* no red zone, no alignment */
	g->cs = __USER_CS;
	/* §5.6 entry state: the guest sees RFLAGS 0x2 (its IF is the PVCS's, now 0). */
	g->rip = d->p.lstar;
	g->gpr[RCX] = d->p.lstar;
	g->gpr[R11] = ENTRY_RFLAGS;
	g->rflags = ENTRY_RFLAGS;
	d->p.mode = PVM_KMOD_MODE_SUPERVISOR;
}

/* §6.2 ERETU: smod -> umod through the PVCS; false (nothing changed) if a RUN could not enter it. */
static bool eretu(struct pvm_deliver *d, struct pvm_switch_regs *g)
{
	struct pvm_pvcs *p = d->pvcs;
	/* §10.26: only RPL 3 is OR-ed in (the model does not check more: then neither is it delivered here). */
	u16 cs = READ_ONCE(p->user_cs) | 3, ss = READ_ONCE(p->user_ss) | 3;
	u64 rip = READ_ONCE(p->rip), flags;

	if (ss != __USER_DS || !pvm_rip_ok(cs, rip))
		return false;
	/* §10.31: the NMI mask is released: the caller counts eretus. */
	d->p.supervisor_rsp = g->gpr[RSP];
	/* §5.7: IP cleared; nothing is pending (the caller's promise), so nothing to re-evaluate. */
	flags = READ_ONCE(p->event_flags);
	if (flags & PVCS_IP)
		WRITE_ONCE(p->event_flags, flags & ~PVCS_IP);
	g->cs = cs;
	/* §10.7: user_gsbase canonicalised (bit 47: the module has no LA57). */
	g->gs_base = (u64)sign_extend64(READ_ONCE(p->user_gsbase), 47);
	/* §10.8: 32-bit eflags | IF, as a RUN takes them. */
	g->rflags = ((u64)READ_ONCE(p->eflags) & PVM_GUEST_RFLAGS) | X86_EFLAGS_IF | X86_EFLAGS_FIXED;
	g->rip = rip;
	g->gpr[RSP] = READ_ONCE(p->rsp);
	g->gpr[RCX] = READ_ONCE(p->rcx);
	g->gpr[R11] = READ_ONCE(p->r11);
	d->p.mode = PVM_KMOD_MODE_USER;
	d->p.eretus++;
	return true;
}

bool pvm_deliver_syscall(struct pvm_deliver *d, struct pvm_switch_regs *g)
{
	/* A compat-mode SYSCALL (§10.19) and one on another CS (§10.18: a triple fault) are the library's. */
	if (g->cs != __USER_CS)
		return false;
	if (d->p.mode == PVM_KMOD_MODE_USER)
		user_syscall(d, g);
	else if (g->rip != d->p.retu_rip_plus2 || !eretu(d, g))
		return false; /* ERETS, a hypercall */
	d->p.switches++;
	return true;
}
