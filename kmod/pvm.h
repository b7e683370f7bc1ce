/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kmod/pvm.h - what the files of the pvm module share.
 *
 * pvm_main.c  module parameters, counters, /dev/pvm and its ioctls
 * as.c        address-space objects (one anon-inode fd each), MAP/UNMAP
 * pgtable.c   an address space's own x86-64 4-level page tables
 * acct.c      mapped pages per process (mm)
 * debugfs.c   <debugfs>/pvm/tables: every live address space's leaves (tests)
 * cpu.c       the world switch's per-CPU areas, IDT and switcher PDPT; one switch
 * switch.S    the switch itself (switch.h: the area's layout)
 * run.c       PVM_KMOD_AS_RUN
 * deliver.c   PVM_KMOD_RUN_PVM: a user SYSCALL and ERETU delivered in the module
 */
#ifndef PVM_KMOD_INTERNAL_H
#define PVM_KMOD_INTERNAL_H

#include <linux/atomic.h>
#include <linux/mm_types.h>
#include <linux/mutex.h>
#include <linux/seq_file.h>
#include <linux/types.h>

#include <asm/processor-flags.h>
#include <asm/segment.h>

#include <pvm/abi.h>
#include <pvm/kmod.h>

/* Module parameters (read-only once loaded). */
extern unsigned long pvm_max_pages_per_as;
extern bool pvm_fast_switch;
extern unsigned long pvm_max_pages_per_proc;

/* Module-wide counters for PVM_KMOD_INFO: leaks show as non-zero values. */
struct pvm_stats {
	atomic_long_t nr_as;
	atomic_long_t nr_pinned;
	atomic_long_t nr_tables;
	atomic_long_t nr_procs;
};
extern struct pvm_stats pvm_stats;

/* ---- acct.c: pages mapped per process ---------------------------------- */
struct pvm_acct;
/* The accounting of @mm, created on first use; NULL on -ENOMEM. */
struct pvm_acct *pvm_acct_get(struct mm_struct *mm);
void pvm_acct_put(struct pvm_acct *a);
/* Reserve @n pages against the process limit: 0 or -EDQUOT. */
int pvm_acct_charge(struct pvm_acct *a, unsigned long n);
void pvm_acct_uncharge(struct pvm_acct *a, unsigned long n);
/* Pages mapped by @mm's address spaces (0 if it has none). */
unsigned long pvm_acct_pages_of(struct mm_struct *mm);

/* ---- pgtable.c: 4-level tables of one address space -------------------- */
struct pvm_pgtable {
	u64 *pml4;                 /* kernel address of the root page */
	bool high;                 /* ever mapped upper-half addresses (run.c) */
	unsigned long nr_tables;   /* the root included */
	unsigned long nr_mapped;   /* leaf entries (pinned pages) */
};
int pvm_pt_init(struct pvm_pgtable *pt);
/* Free every table; every leaf must be gone (pvm_pt_unmap over all of it). */
void pvm_pt_fini(struct pvm_pgtable *pt);
/* True if a leaf is present anywhere in [gva, gva + n pages). */
bool pvm_pt_any_mapped(struct pvm_pgtable *pt, u64 gva, unsigned long n);
/* Map one page: the leaf must be empty.  0 or -ENOMEM. */
int pvm_pt_map(struct pvm_pgtable *pt, u64 gva, struct page *page, unsigned int flags);
/* The kernel address of the mapped byte at @gva (writable if @write), or NULL. */
void *pvm_pt_kaddr(struct pvm_pgtable *pt, u64 gva, bool write);
/* Clear the leaves of [gva, end), unpin their pages, free emptied tables. */
unsigned long pvm_pt_unmap(struct pvm_pgtable *pt, u64 gva, u64 end);
/* One line per leaf: "id gva pml4e pdpte pde pte". */
void pvm_pt_dump(struct seq_file *s, struct pvm_pgtable *pt, u64 id);

/* ---- cpu.c, run.c: the world switch --------------------------------------- */
struct pvm_switch_regs {
	u64 gpr[16];               /* x86 encoding order */
	u64 rip, rflags, fs_base, gs_base;
	u16 cs;                    /* __USER_CS or __USER32_CS, in and out */
	u64 error_code, cr2;       /* out */
};
/*
 * PVM_KMOD_RUN_PVM's fast path in the switch: a user SYSCALL, ERETU and the
 * hypercalls without state delivered on the guest roots (switch.S
 * pvm_fast_syscall), a mode switch going from @cr3 to peer_cr3 (0: none).
 * In: the PVCS page and offset, the MSRs, the KVM features; in and out:
 * mode, sup_rsp; out: events (mode switches: each swapped the roots),
 * eretus among them, other (hypercalls).
 */
struct pvm_switch_fast {
	struct page *pvcs_page;
	unsigned long pvcs_off;
	u64 mode, sup_rsp, lstar, kgs, retu2, rets2, peer_cr3;
	u32 kvm_features;
	bool peer_flush_global;
	u64 events, eretus, other;
};
int pvm_switch_init(void);
void pvm_switch_exit(void);
/* The entry of every guest root's PML4 slot 511: the module's switcher PDPT. */
u64 pvm_switcher_pml4e(void);
/* Interrupts off: one switch; PVM_SW_SYSCALL(32), a vector, -1 (host event), -errno. */
int pvm_switch_once(struct pvm_switch_regs *g, u64 cr3, bool flush_global, struct pvm_switch_fast *fast);
int pvm_run_supported(void);
/* RFLAGS bits a guest may set (§1.1's user-visible set); IF always, IOPL 0. */
#define PVM_GUEST_RFLAGS (X86_EFLAGS_CF | X86_EFLAGS_PF | X86_EFLAGS_AF | X86_EFLAGS_ZF | \
			  X86_EFLAGS_SF | X86_EFLAGS_TF | X86_EFLAGS_DF | X86_EFLAGS_OF | \
			  X86_EFLAGS_NT | X86_EFLAGS_RF | X86_EFLAGS_AC | X86_EFLAGS_ID)
static inline bool pvm_canonical48(u64 va)
{
	return va < 0x0000800000000000ull || va >= 0xffff800000000000ull;
}
/* Could a RUN enter @rip with @cs (64-bit: canonical; compat: below 4 GiB)? */
static inline bool pvm_rip_ok(u16 cs, u64 rip)
{
	return cs == __USER_CS ? pvm_canonical48(rip) : cs == __USER32_CS && rip <= U32_MAX;
}

/* ---- deliver.c: PVM_KMOD_RUN_PVM ------------------------------------------ */
/* An address space's PVCS page, pinned from one RUN to the next (under its lock). */
struct pvm_pvcs_pin {
	u64 uaddr, cookie;
	struct page *page;         /* NULL: none */
};
void pvm_pvcs_unpin(struct pvm_pvcs_pin *pin);
struct pvm_deliver {
	struct pvm_kmod_pvm p;     /* the caller's block: mode, supervisor_rsp, counts */
	struct pvm_vcpu_struct *pvcs; /* the PVCS, in its pinned page */
	bool switch_ok;            /* the other mode's address space is held: switches allowed */
};
/* Check @d->p (copied in) and pin its PVCS in @pin (or reuse it); @switch_ok: other_as is held.  0 or -errno. */
int pvm_deliver_begin(struct pvm_deliver *d, struct pvm_pvcs_pin *pin, bool switch_ok);
enum { PVM_NOT_DELIVERED, PVM_DELIVERED, PVM_DELIVERED_SWITCHED };
/*
 * After a trap with @vector (PVM_SW_SYSCALL or an exception) in @pt: deliver
 * it if it is one of the module's (*g, d->p updated); PVM_DELIVERED_SWITCHED:
 * go on in the other mode's address space.
 */
int pvm_deliver(struct pvm_deliver *d, struct pvm_switch_regs *g, int vector, struct pvm_pgtable *pt);
/* A posted external interrupt @vector, where the model would deliver it now (same results). */
int pvm_deliver_irq(struct pvm_deliver *d, struct pvm_switch_regs *g, unsigned int vector);
/* An address space's kick: a flag RUN consumes, and the CPU running it (-1: none). */
struct pvm_kick {
	atomic_t pending;
	int cpu;
	unsigned long irqs[256 / BITS_PER_LONG]; /* PVM_KMOD_AS_POST_IRQ: posted vectors */
};
struct pvm_pvcs_pin;
long pvm_run(struct pvm_pgtable *pt, struct pvm_kick *kick, struct pvm_pvcs_pin *pin,
	     struct pvm_kmod_run __user *urun);
void pvm_kick(struct pvm_kick *kick);
/* PVM_KMOD_AS_POST_IRQ / TAKE_IRQS. */
void pvm_post_irq(struct pvm_kick *kick, unsigned int vector);
void pvm_take_irqs(struct pvm_kick *kick, u64 bits[4]);

/* ---- as.c ---------------------------------------------------------------- */
long pvm_as_create(const struct pvm_kmod_create_as __user *uarg);
/* PVM_KMOD_RUN_PVM: the other mode's address space, held; ERR_PTR(-EINVAL / -EBUSY). */
struct pvm_pgtable *pvm_as_get_peer(int fd, const struct pvm_pgtable *self, struct file **held);
void pvm_as_put_peer(struct file *held);
/* ... and its PVCS page (the caller's anonymous or tmpfs memory), pinned: 0 or -errno. */
int pvm_pin_pvcs(struct mm_struct *mm, unsigned long uaddr, struct page **page);
void pvm_unpin_pvcs(struct page *page);
/* pvm_pt_dump() of every live address space. */
void pvm_as_dump_all(struct seq_file *s);

/* ---- debugfs.c ------------------------------------------------------------ */
void pvm_debugfs_init(void);
void pvm_debugfs_exit(void);

#endif /* PVM_KMOD_INTERNAL_H */
