// SPDX-License-Identifier: GPL-2.0
/*
 * kmod/run.c - PVM_KMOD_AS_RUN: run a register file at guest ring 3 until a
 * trap, through the world switch (cpu.c, switch.S).
 *
 * Preemption, signals and migration happen only between world switches:
 * each one runs with preemption and interrupts off on the CPU it started on,
 * whose area it uses; the guest root is per address space, so the next one
 * may run anywhere.  Host interrupts and NMIs that end a switch go to the
 * host's handlers (cpu.c), then the guest goes on without a trip to user
 * space unless a signal is pending (-EINTR, the caller's kick).
 */
#include <linux/kernel.h>
#include <linux/sched/signal.h>
#include <linux/uaccess.h>

#include <asm/fpu/api.h>
#include <asm/trapnr.h>
#include <asm/tlbflush.h>

#include "pvm.h"
#include "switch.h"

/* A guest PCID the host never uses (Linux: 1..TLB_NR_DYN_ASIDS, and those | 0x800 with PTI). */
#define PVM_GUEST_PCID 0x7ffull

/* Can this kernel and CPU run a guest at all?  0 or -EOPNOTSUPP. */
int pvm_run_supported(void)
{
	if (pgtable_l5_enabled())
		return -EOPNOTSUPP;
	/* Host kernel pages in the TLB under the guest root, readable by Meltdown. */
	if (boot_cpu_has_bug(X86_BUG_CPU_MELTDOWN) && !boot_cpu_has(X86_FEATURE_PTI))
		return -EOPNOTSUPP;
	return 0;
}

static void kick_nop(void *unused)
{
}

/*
 * PVM_KMOD_AS_KICK: the flag first, then an IPI to the CPU running the
 * address space, if any; RUN publishes its CPU first, then reads the flag
 * (both with a full barrier between), so one of the two always sees the
 * other.  The IPI only makes the guest exit: the flag ends the run.
 */
void pvm_kick(struct pvm_kick *kick)
{
	int cpu;

	atomic_set(&kick->pending, 1);
	smp_mb();
	cpu = READ_ONCE(kick->cpu);
	if (cpu >= 0)
		smp_call_function_single(cpu, kick_nop, NULL, 0);
}

static u64 root_of(const struct pvm_pgtable *pt)
{
	return __pa(pt->pml4) | ((__read_cr4() & X86_CR4_PCIDE) ? PVM_GUEST_PCID : 0);
}

/*
 * PVM_KMOD_AS_POST_IRQ: the bit first, then an IPI to the RUN's CPU (the
 * kick's protocol: RUN publishes its CPU, then looks at the bits).
 */
void pvm_post_irq(struct pvm_kick *kick, unsigned int vector)
{
	int cpu;

	set_bit(vector, kick->irqs);
	smp_mb__after_atomic();
	cpu = READ_ONCE(kick->cpu);
	if (cpu >= 0)
		smp_call_function_single(cpu, kick_nop, NULL, 0);
}

void pvm_take_irqs(struct pvm_kick *kick, u64 bits[4])
{
	unsigned int i;

	BUILD_BUG_ON(sizeof(kick->irqs) != 4 * sizeof(u64));
	for (i = 0; i < ARRAY_SIZE(kick->irqs); i++)
		((unsigned long *)bits)[i] = xchg(&kick->irqs[i], 0);
}

static bool irqs_posted(const struct pvm_kick *kick)
{
	return !bitmap_empty(kick->irqs, 256);
}

/*
 * Posted interrupts before the next entry: the highest one delivered where
 * the model would deliver it now (then the next turn looks again), else the
 * RUN ends (they stay posted for the caller).  0 or -EINTR.
 */
static int posted_irqs(struct pvm_kick *kick, bool pvm, struct pvm_deliver *d, struct pvm_switch_regs *g,
		       unsigned int *cur)
{
	unsigned int v = find_last_bit(kick->irqs, 256);
	int done;

	if (v >= 256)
		return 0;
	if (!pvm || v < 32 || !test_and_clear_bit(v, kick->irqs))
		return -EINTR;
	done = pvm_deliver_irq(d, g, v);
	if (done == PVM_NOT_DELIVERED) {
		set_bit(v, kick->irqs);
		return -EINTR;
	}
	if (done == PVM_DELIVERED_SWITCHED)
		*cur ^= 1;
	return 0;
}

long pvm_run(struct pvm_pgtable *pt, struct pvm_kick *kick, struct pvm_pvcs_pin *pin,
	     struct pvm_kmod_run __user *urun)
{
	struct pvm_kmod_run r;
	struct pvm_switch_regs g;
	/* PVM_KMOD_RUN_PVM: the two address spaces (the RUN's own first) and the one running. */
	struct pvm_pgtable *as[2] = { pt, NULL };
	struct file *peer = NULL;
	struct pvm_deliver d;
	struct pvm_switch_fast fast, *fp;
	bool pvm;
	unsigned int i, cur = 0;
	long ret;

	if (copy_from_user(&r, urun, sizeof(r)))
		return -EFAULT;
	pvm = r.flags & PVM_KMOD_RUN_PVM;
	if ((r.flags & ~PVM_KMOD_RUN_PVM) || r.pad1 || memchr_inv(r.pad0, 0, sizeof(r.pad0)) ||
	    memchr_inv(r.reserved, 0, sizeof(r.reserved)) || (!pvm && r.pvm))
		return -EINVAL;
	/* IRETQ would fault in ring 0 on a bad RIP (beyond the 32-bit limit in compat mode). */
	if (r.cs > U16_MAX || !pvm_rip_ok((u16)r.cs, r.regs.rip))
		return -EINVAL;
	/* WRMSR of a non-canonical base faults: in ring 0, inside the switch for GS. */
	if (!pvm_canonical48(r.regs.fs_base) || !pvm_canonical48(r.regs.gs_base))
		return -EINVAL;
	ret = pvm_run_supported();
	if (ret)
		return ret;
	if (pvm) {
		if (copy_from_user(&d.p, u64_to_user_ptr(r.pvm), sizeof(d.p)))
			return -EFAULT;
		if (d.p.other_as != -1) {
			as[1] = pvm_as_get_peer(d.p.other_as, pt, &peer);
			if (IS_ERR(as[1]))
				return PTR_ERR(as[1]);
		}
		ret = pvm_deliver_begin(&d, pin, as[1] != NULL);
		if (ret) {
			if (peer)
				pvm_as_put_peer(peer);
			return ret;
		}
	}

	memcpy(g.gpr, r.regs.gpr, sizeof(g.gpr));
	g.rip = r.regs.rip;
	g.cs = (u16)r.cs;
	g.rflags = (r.regs.rflags & PVM_GUEST_RFLAGS) | X86_EFLAGS_IF | X86_EFLAGS_FIXED;
	g.fs_base = r.regs.fs_base;
	g.gs_base = r.regs.gs_base;

	for (;;) {
		int vector;

		if (r.immediate_exit || signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		if (irqs_posted(kick) && posted_irqs(kick, pvm, &d, &g, &cur) < 0) {
			ret = -EINTR;
			break;
		}
		cond_resched();
		preempt_disable();
		local_irq_disable();
		if (signal_pending(current) || need_resched()) {
			local_irq_enable();
			preempt_enable();
			continue;
		}
		WRITE_ONCE(kick->cpu, smp_processor_id());
		smp_mb();
		if (atomic_xchg(&kick->pending, 0)) {
			WRITE_ONCE(kick->cpu, -1);
			local_irq_enable();
			preempt_enable();
			ret = -EINTR;
			break;
		}
		/* An interrupt posted before the CPU was published: the top of the loop takes it. */
		if (irqs_posted(kick)) {
			WRITE_ONCE(kick->cpu, -1);
			local_irq_enable();
			preempt_enable();
			continue;
		}
		/* The thread's user FPU state is the guest's: in the registers. */
		if (test_thread_flag(TIF_NEED_FPU_LOAD))
			switch_fpu_return();
		/*
		 * A user SYSCALL, ERETU and plain hypercalls inside the switch:
		 * no trip through the host, one CR3 write per mode switch.
		 */
		fp = NULL;
		if (pvm && READ_ONCE(pvm_fast_switch)) {
			fast = (struct pvm_switch_fast){
				.pvcs_page = pin->page, .pvcs_off = offset_in_page(d.p.pvcs),
				.mode = d.p.mode, .sup_rsp = d.p.supervisor_rsp, .lstar = d.p.lstar,
				.kgs = d.p.kernel_gs_base, .retu2 = d.p.retu_rip_plus2,
				.rets2 = d.p.rets_rip_plus2, .kvm_features = d.p.kvm_features,
				.peer_cr3 = as[1] ? root_of(as[cur ^ 1]) : 0,
				.peer_flush_global = as[1] && as[cur ^ 1]->high,
			};
			fp = &fast;
		}
		vector = pvm_switch_once(&g, root_of(as[cur]), as[cur]->high, fp);
		if (fp && (fast.events || fast.other)) {
			d.p.mode = fast.mode;
			d.p.supervisor_rsp = fast.sup_rsp;
			d.p.events += fast.events + fast.other;
			d.p.switches += fast.events;
			if (fast.eretus)
				d.p.nmi_unmasked = 1;
			if (fast.events & 1)
				cur ^= 1;
		}
		WRITE_ONCE(kick->cpu, -1);
		local_irq_enable();
		preempt_enable();
		if (vector == -1)
			continue; /* a host interrupt or NMI */
		if (vector < 0) {
			ret = vector;
			break;
		}
		/* A SYSCALL from compat mode (AMD; Intel raises #UD): a SYSCALL, CS says which. */
		if (vector == PVM_SW_SYSCALL32)
			vector = PVM_SW_SYSCALL;
		/* A PVM event the module delivers: on, in the other mode's address space after a switch. */
		if (pvm) {
			int done = pvm_deliver(&d, &g, vector, as[cur]);

			if (done == PVM_DELIVERED_SWITCHED)
				cur ^= 1;
			if (done != PVM_NOT_DELIVERED)
				continue;
		}
		r.exit_reason = vector == PVM_SW_SYSCALL ? PVM_KMOD_EXIT_SYSCALL : PVM_KMOD_EXIT_EXCEPTION;
		r.vector = vector == PVM_SW_SYSCALL ? 0 : vector;
		r.error_code = vector == PVM_SW_SYSCALL ? 0 : (u32)g.error_code;
		r.cr2 = vector == X86_TRAP_PF ? g.cr2 : 0;
		ret = 0;
		break;
	}
	for (i = 0; i < 16; i++)
		r.regs.gpr[i] = g.gpr[i];
	r.regs.rip = g.rip;
	r.cs = g.cs;
	r.regs.rflags = g.rflags;
	r.regs.fs_base = g.fs_base;
	r.regs.gs_base = g.gs_base;
	if (peer)
		pvm_as_put_peer(peer);
	/* Everything before immediate_exit: that one is the kicker's to write. */
	if ((ret == 0 || ret == -EINTR) &&
	    (copy_to_user(urun, &r, offsetof(struct pvm_kmod_run, immediate_exit)) ||
	     (pvm && d.p.events && copy_to_user(u64_to_user_ptr(r.pvm), &d.p, sizeof(d.p)))))
		return -EFAULT;
	return ret;
}
