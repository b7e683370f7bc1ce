// SPDX-License-Identifier: GPL-2.0
/*
 * kmod/cpu.c - what the world switch needs besides its code: the per-CPU
 * areas (data, GDT, TSS, stacks), the IDT, and the switcher PDPT that every
 * guest root links in its slot 511.  Layout and rules: switch.h.
 */
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>
#include <linux/mem_encrypt.h>
#include <linux/sync_core.h>

#include <asm/apic.h>
#include <asm/debugreg.h>
#include <asm/desc.h>
#include <asm/io.h>
#include <asm/nmi.h>
#include <asm/trapnr.h>
#include <asm/pgtable_types.h>
#include <asm/processor.h>

#include "pvm.h"
#include "switch.h"

struct pvm_cpu_area {
	u64 gpr[16];
	u64 rip, rflags, vector, error_code, cr2;
	u64 guest_cr3, host_cr3, host_rsp, host_gs, guest_gs, host_kgs, self;
	u64 nmi_pending, flush_global, cr4;
	u64 cs;
	struct desc_ptr gdt_desc;
	u8 pad1[6];
	struct desc_ptr host_gdt;
	u8 pad2[6];
	struct desc_ptr host_idt;
	u8 pad3[PC_FAST - PC_HOST_IDT - sizeof(struct desc_ptr)];
	u64 fast, mode, sup_rsp, lstar, kgs, retu2, pvcs, peer_cr3, peer_flush, fast_events, fast_eretu;
	u64 rets2, kvm_feat, fast_other;
	u8 pad5[PC_GDT - PC_FAST_OTHER - 8];
	struct desc_struct gdt[PVM_GDT_ENTRIES];
	u8 pad4[PC_TSS - PC_GDT - PVM_GDT_ENTRIES * sizeof(struct desc_struct)];
	struct x86_hw_tss tss;
	u8 stack[PC_STACK_TOP - PC_TSS - sizeof(struct x86_hw_tss)];
	u8 ist[PVM_AREA_PAGES - 1][PAGE_SIZE];
} __aligned(PAGE_SIZE);

#define AREA_AT(field, off) static_assert(offsetof(struct pvm_cpu_area, field) == (off))
AREA_AT(gpr, PC_GPR);
AREA_AT(rip, PC_RIP);
AREA_AT(rflags, PC_RFLAGS);
AREA_AT(vector, PC_VECTOR);
AREA_AT(error_code, PC_ERROR);
AREA_AT(cr2, PC_CR2);
AREA_AT(guest_cr3, PC_GUEST_CR3);
AREA_AT(host_cr3, PC_HOST_CR3);
AREA_AT(host_rsp, PC_HOST_RSP);
AREA_AT(host_gs, PC_HOST_GS);
AREA_AT(guest_gs, PC_GUEST_GS);
AREA_AT(host_kgs, PC_HOST_KGS);
AREA_AT(self, PC_SELF);
AREA_AT(nmi_pending, PC_NMI);
AREA_AT(flush_global, PC_FLUSH_GLOBAL);
AREA_AT(cr4, PC_CR4);
AREA_AT(cs, PC_CS);
AREA_AT(gdt_desc, PC_GDT_DESC);
AREA_AT(host_gdt, PC_HOST_GDT);
AREA_AT(host_idt, PC_HOST_IDT);
AREA_AT(fast, PC_FAST);
AREA_AT(mode, PC_MODE);
AREA_AT(sup_rsp, PC_SUP_RSP);
AREA_AT(lstar, PC_LSTAR);
AREA_AT(kgs, PC_KGS);
AREA_AT(retu2, PC_RETU2);
AREA_AT(pvcs, PC_PVCS);
AREA_AT(peer_cr3, PC_PEER_CR3);
AREA_AT(peer_flush, PC_PEER_FLUSH);
AREA_AT(fast_events, PC_FAST_EVENTS);
AREA_AT(fast_eretu, PC_FAST_ERETU);
AREA_AT(rets2, PC_RETS2);
AREA_AT(kvm_feat, PC_KVM_FEAT);
AREA_AT(fast_other, PC_FAST_OTHER);
AREA_AT(gdt, PC_GDT);
AREA_AT(tss, PC_TSS);
AREA_AT(ist, PC_STACK_TOP);
static_assert(sizeof(struct pvm_cpu_area) == PVM_AREA_SIZE);

/* switch.S */
extern const u8 pvm_switch_text_start[], pvm_switch_text_end[], pvm_vector_stubs[];
extern const u8 pvm_syscall_entry[], pvm_syscall32_entry[];
void pvm_switch_run(struct pvm_cpu_area *pc);
void pvm_call_host_gate(unsigned long entry);

static struct pvm_cpu_area pvm_areas[PVM_MAX_CPUS];
/*
 * Per CPU, the page through which the fast path reaches the PVCS: under the
 * guest roots (the switcher tables) it maps the pinned PVCS page while a
 * fast switch runs, and this module page otherwise; under the host root it
 * is always this module page.  pvm_window_pte: its leaf in the switcher tables.
 */
static u8 pvm_windows[PVM_MAX_CPUS][PAGE_SIZE] __aligned(PAGE_SIZE);
static u64 *pvm_window_pte[PVM_MAX_CPUS], pvm_window_leaf[PVM_MAX_CPUS];
static gate_desc pvm_idt[IDT_ENTRIES] __aligned(PAGE_SIZE);
struct desc_ptr pvm_idt_desc; /* read by switch.S's LIDT */

/* The switcher PDPT and the tables below it: module-owned, shared by every guest root. */
static u64 *switcher_pdpt;
static u64 *switcher_tables[8];
static unsigned int nr_switcher_tables;

static u64 *switcher_table(void)
{
	u64 *t;

	if (nr_switcher_tables == ARRAY_SIZE(switcher_tables))
		return NULL;
	t = (u64 *)get_zeroed_page(GFP_KERNEL);
	if (t)
		switcher_tables[nr_switcher_tables++] = t;
	return t;
}

/*
 * Map the module page at @va at the same address under the switcher PDPT:
 * supervisor only (the guest runs at ring 3), not global, A/D preset.
 */
enum switcher_prot { SW_TEXT, SW_RO, SW_RW };

static int switcher_map(unsigned long va, enum switcher_prot prot, u64 **leaf_out)
{
	/* Upper levels: present, writable, supervisor (US clear at every level). */
	const u64 table_flags = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED;
	struct page *page = vmalloc_to_page((void *)va);
	u64 *table = switcher_pdpt, leaf;
	int shift;

	if (!page || ((va >> 39) & 511) != 511)
		return -EINVAL;
	for (shift = 30; shift > PAGE_SHIFT; shift -= 9) {
		u64 *slot = &table[(va >> shift) & 511];

		if (!(*slot & _PAGE_PRESENT)) {
			u64 *child = switcher_table();

			if (!child)
				return -ENOMEM;
			*slot = __sme_set(__pa(child)) | table_flags;
		}
		table = __va(__sme_clr(*slot) & PTE_PFN_MASK);
	}
	/* Code read-only and executable; the IDT read-only; data writable (D preset); NX but code. */
	leaf = __sme_set(page_to_phys(page)) | _PAGE_PRESENT | _PAGE_ACCESSED;
	if (prot != SW_TEXT)
		leaf |= _PAGE_NX & __supported_pte_mask;
	if (prot == SW_RW)
		leaf |= _PAGE_RW | _PAGE_DIRTY;
	table[(va >> PAGE_SHIFT) & 511] = leaf;
	if (leaf_out)
		*leaf_out = &table[(va >> PAGE_SHIFT) & 511];
	return 0;
}

static int switcher_map_range(const void *start, const void *end, enum switcher_prot prot)
{
	unsigned long va = (unsigned long)start & PAGE_MASK;
	int ret = 0;

	for (; !ret && va < (unsigned long)end; va += PAGE_SIZE)
		ret = switcher_map(va, prot, NULL);
	return ret;
}

/* The entry for a guest root's slot 511. */
u64 pvm_switcher_pml4e(void)
{
	return __sme_set(__pa(switcher_pdpt)) | _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED;
}

/* NMIs the host has seen on each CPU (counted by a handler of our own). */
static DEFINE_PER_CPU(unsigned long, pvm_nmis);

static int pvm_nmi_seen(unsigned int type, struct pt_regs *regs)
{
	this_cpu_inc(pvm_nmis);
	return NMI_DONE; /* not ours: the host's handlers decide what it was */
}

static void set_gate(unsigned int v, unsigned int dpl, unsigned int ist)
{
	unsigned long addr = (unsigned long)pvm_vector_stubs + v * 16;
	gate_desc *g = &pvm_idt[v];

	memset(g, 0, sizeof(*g));
	g->offset_low = (u16)addr;
	g->segment = __KERNEL_CS;
	g->bits.ist = ist;
	g->bits.type = GATE_INTERRUPT;
	g->bits.dpl = dpl;
	g->bits.p = 1;
	g->offset_middle = (u16)(addr >> 16);
	g->offset_high = (u32)(addr >> 32);
}

static void init_area(struct pvm_cpu_area *pc, int cpu)
{
	struct desc_struct *host = get_cpu_gdt_rw(cpu);
	static const unsigned int copied[] = {
		GDT_ENTRY_KERNEL32_CS, GDT_ENTRY_KERNEL_CS, GDT_ENTRY_KERNEL_DS,
		GDT_ENTRY_DEFAULT_USER32_CS, GDT_ENTRY_DEFAULT_USER_DS, GDT_ENTRY_DEFAULT_USER_CS,
		GDT_ENTRY_CPUNODE,
	};
	tss_desc td;
	unsigned int i;

	memset(pc, 0, sizeof(*pc));
	pc->self = (u64)pc;
	/*
	 * Linux's descriptors but TLS (the thread's, not the guest's); CPUNODE
	 * stays because a host NMI handler running in the switch's last
	 * instructions reads it.
	 */
	for (i = 0; i < ARRAY_SIZE(copied); i++)
		pc->gdt[copied[i]] = host[copied[i]];
	set_tssldt_descriptor(&td, (unsigned long)&pc->tss, DESC_TSS, sizeof(pc->tss) - 1);
	memcpy(&pc->gdt[GDT_ENTRY_TSS], &td, sizeof(td));
	pc->gdt_desc.size = sizeof(pc->gdt) - 1;
	pc->gdt_desc.address = (unsigned long)pc->gdt;

	pc->tss.sp0 = (u64)pc + PC_STACK_TOP;
	for (i = 0; i < PVM_AREA_PAGES - 1; i++) {
		u64 top = (u64)pc->ist[i] + PAGE_SIZE;

		*(u64 *)(top - 8) = (u64)pc;
		pc->tss.ist[i] = top - 16;
	}
	/* No I/O bitmap: every port access from ring 3 is #GP. */
	pc->tss.io_bitmap_base = sizeof(pc->tss);
}

int pvm_switch_init(void)
{
	unsigned int v;
	int cpu, ret;

	BUILD_BUG_ON(GDT_ENTRY_TSS * 8 != PVM_SEL_TSS);
	BUILD_BUG_ON(IST_INDEX_DF != 0 || IST_INDEX_NMI != 1 || IST_INDEX_DB != 2 ||
		     IST_INDEX_MCE != 3);
	if (pvm_switch_text_end - pvm_switch_text_start > 2 * PAGE_SIZE) {
		pr_err("pvm: the switch code is too long\n");
		return -EINVAL;
	}
	for (v = 0; v < IDT_ENTRIES; v++)
		set_gate(v, (v == X86_TRAP_BP || v == X86_TRAP_OF || v == IA32_SYSCALL_VECTOR) ? 3 : 0,
			 v == X86_TRAP_DF ? IST_INDEX_DF + 1 :
			 v == X86_TRAP_NMI ? IST_INDEX_NMI + 1 :
			 v == X86_TRAP_DB ? IST_INDEX_DB + 1 :
			 v == X86_TRAP_MC ? IST_INDEX_MCE + 1 : 0);
	ret = register_nmi_handler(NMI_LOCAL, pvm_nmi_seen, 0, "pvm");
	if (ret)
		return ret;
	pvm_idt_desc.size = sizeof(pvm_idt) - 1;
	pvm_idt_desc.address = (unsigned long)pvm_idt;

	switcher_pdpt = (u64 *)get_zeroed_page(GFP_KERNEL);
	ret = switcher_pdpt ? 0 : -ENOMEM;
	if (!ret)
		ret = switcher_map_range(pvm_switch_text_start, pvm_switch_text_end, SW_TEXT);
	if (!ret)
		ret = switcher_map_range(pvm_idt, pvm_idt + IDT_ENTRIES, SW_RO);
	for_each_possible_cpu(cpu) {
		if (ret || cpu >= PVM_MAX_CPUS)
			break;
		init_area(&pvm_areas[cpu], cpu);
		ret = switcher_map_range(&pvm_areas[cpu], &pvm_areas[cpu] + 1, SW_RW);
		if (!ret)
			ret = switcher_map((unsigned long)pvm_windows[cpu], SW_RW, &pvm_window_pte[cpu]);
		if (!ret)
			pvm_window_leaf[cpu] = *pvm_window_pte[cpu];
	}
	if (ret) {
		pr_err("pvm: cannot map the world switch (%d)\n", ret);
		pvm_switch_exit();
	} else if (nr_cpu_ids > PVM_MAX_CPUS) {
		pr_warn("pvm: guests cannot run on CPUs %d and up (RUN there: -EOPNOTSUPP); "
			"build with PVM_MAX_CPUS=%u\n", PVM_MAX_CPUS, nr_cpu_ids);
	}
	return ret;
}

void pvm_switch_exit(void)
{
	unregister_nmi_handler(NMI_LOCAL, "pvm");
	while (nr_switcher_tables)
		free_page((unsigned long)switcher_tables[--nr_switcher_tables]);
	free_page((unsigned long)switcher_pdpt);
	switcher_pdpt = NULL;
}

/* ---- one world switch ---------------------------------------------------- */

#define SEL_OF(seg) ({ unsigned short __sel; savesegment(seg, __sel); __sel; })

/*
 * An NMI the switch took is the host's: unblock NMIs (the exit was no IRET;
 * iret_to_self() is linux/sync_core.h's), raise it again as a self-IPI, and
 * wait until the host has taken it: a self-IPI arrives a little later, and
 * arriving in the guest again it would come straight back here.
 */
static void reraise_nmi(void)
{
	unsigned long seen = this_cpu_read(pvm_nmis);
	unsigned int spins;

	iret_to_self();
	apic->send_IPI(smp_processor_id(), NMI_VECTOR);
	for (spins = 0; spins < 1000000 && this_cpu_read(pvm_nmis) == seen; spins++)
		cpu_relax();
}

/*
 * Run @g once on this CPU, interrupts off, and hand back what the guest's
 * exit was: PVM_SW_SYSCALL or an exception vector (< 32 or 0x80), with @g
 * updated.  External interrupts and NMIs are given to the host here and
 * reported as -1 (the caller decides whether to go on).  @cr3 is the guest
 * root; @flush_global drops global TLB entries under it.  @fast (or NULL):
 * the fast path's state, in and out; its roots are swapped per switch.
 */
int pvm_switch_once(struct pvm_switch_regs *g, u64 cr3, bool flush_global, struct pvm_switch_fast *fast)
{
	int cpu = smp_processor_id();
	struct pvm_cpu_area *pc;
	u64 lstar, cstar, sysenter_cs, fs_base, cr4;
	unsigned short h_ds, h_es, h_fs, h_gs;
	unsigned long dr7;
	int vector;

	lockdep_assert_irqs_disabled();
	if (cpu >= PVM_MAX_CPUS)
		return -EOPNOTSUPP;
	pc = &pvm_areas[cpu];

	memcpy(pc->gpr, g->gpr, sizeof(pc->gpr));
	pc->rip = g->rip;
	pc->rflags = g->rflags;
	pc->cs = g->cs;
	pc->guest_gs = g->gs_base;
	pc->guest_cr3 = cr3;
	cr4 = __read_cr4();
	pc->cr4 = cr4;
	pc->flush_global = flush_global && (cr4 & X86_CR4_PGE);
	/* Host entries are tagged with other PCIDs: keep them. */
	pc->host_cr3 = __read_cr3() | ((cr4 & X86_CR4_PCIDE) ? X86_CR3_PCID_NOFLUSH : 0);
	native_store_gdt(&pc->host_gdt);
	store_idt(&pc->host_idt);
	rdmsrl(MSR_GS_BASE, pc->host_gs);
	rdmsrl(MSR_KERNEL_GS_BASE, pc->host_kgs);
	/* LTR needs an available TSS: clear the busy bit the last LTR set. */
	pc->gdt[GDT_ENTRY_TSS].type = DESC_TSS;
	pc->nmi_pending = 0;
	pc->fast = fast != NULL;
	if (fast) {
		/* The PVCS through this CPU's window (the switch's INVLPG drops the host's entry). */
		WRITE_ONCE(*pvm_window_pte[cpu], __sme_set(page_to_phys(fast->pvcs_page)) | _PAGE_PRESENT |
			   _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | (_PAGE_NX & __supported_pte_mask));
		pc->pvcs = (u64)pvm_windows[cpu] + fast->pvcs_off;
		pc->mode = fast->mode;
		pc->sup_rsp = fast->sup_rsp;
		pc->lstar = fast->lstar;
		pc->kgs = fast->kgs;
		pc->retu2 = fast->retu2;
		pc->rets2 = fast->rets2;
		pc->kvm_feat = fast->kvm_features;
		pc->fast_other = 0;
		pc->peer_cr3 = fast->peer_cr3;
		pc->peer_flush = fast->peer_flush_global && (cr4 & X86_CR4_PGE);
		pc->fast_events = 0;
		pc->fast_eretu = 0;
	}

	savesegment(ds, h_ds);
	savesegment(es, h_es);
	savesegment(fs, h_fs);
	savesegment(gs, h_gs);
	rdmsrl(MSR_FS_BASE, fs_base);
	rdmsrl(MSR_LSTAR, lstar);
	rdmsrl(MSR_CSTAR, cstar);
	rdmsrl(MSR_IA32_SYSENTER_CS, sysenter_cs);
	dr7 = local_db_save(); /* host breakpoints must not fire on guest addresses */
	wrmsrl(MSR_FS_BASE, g->fs_base);
	wrmsrl(MSR_LSTAR, (unsigned long)pvm_syscall_entry);
	wrmsrl(MSR_CSTAR, (unsigned long)pvm_syscall32_entry);
	/* SYSENTER is legal in 64-bit mode on Intel: a null CS makes it #GP. */
	if (sysenter_cs)
		wrmsrl(MSR_IA32_SYSENTER_CS, 0);

	pvm_switch_run(pc);

	/* The host's TR (pvm_switch_run restored its GDT, IDT, GS base and root). */
	force_reload_TR();
	rdmsrl(MSR_FS_BASE, g->fs_base);
	if (sysenter_cs)
		wrmsrl(MSR_IA32_SYSENTER_CS, sysenter_cs);
	wrmsrl(MSR_LSTAR, lstar);
	wrmsrl(MSR_CSTAR, cstar);
	local_db_restore(dr7);
	/* The guest may have loaded selectors (loading FS/GS also sets their bases). */
	if (unlikely(SEL_OF(ds) != h_ds))
		loadsegment(ds, h_ds);
	if (unlikely(SEL_OF(es) != h_es))
		loadsegment(es, h_es);
	if (unlikely(SEL_OF(fs) != h_fs))
		loadsegment(fs, h_fs);
	if (unlikely(SEL_OF(gs) != h_gs)) {
		load_gs_index(h_gs);
		wrmsrl(MSR_KERNEL_GS_BASE, pc->host_kgs);
	}
	wrmsrl(MSR_FS_BASE, fs_base);

	if (fast) {
		/* Back to this module page: the PVCS page may be unpinned after the run. */
		WRITE_ONCE(*pvm_window_pte[cpu], pvm_window_leaf[cpu]);
		fast->mode = pc->mode;
		fast->sup_rsp = pc->sup_rsp;
		fast->events = pc->fast_events;
		fast->eretus = pc->fast_eretu;
		fast->other = pc->fast_other;
	}
	memcpy(g->gpr, pc->gpr, sizeof(g->gpr));
	g->rip = pc->rip;
	g->rflags = pc->rflags;
	g->cs = (u16)pc->cs;
	g->gs_base = pc->guest_gs;
	g->error_code = pc->error_code;
	g->cr2 = pc->cr2;
	vector = (int)pc->vector;

	if (vector == X86_TRAP_NMI || pc->nmi_pending) {
		reraise_nmi();
		if (vector == X86_TRAP_NMI)
			return -1;
	}
	if (vector == X86_TRAP_MC) {
		/* The host's machine check, not the guest's: through its own IDT, as KVM does. */
		asm volatile("int $0x12");
		return -1;
	}
	if (vector == PVM_SW_DELIVERED)
		return -1;
	if (vector >= FIRST_EXTERNAL_VECTOR && vector != IA32_SYSCALL_VECTOR &&
	    vector != PVM_SW_SYSCALL && vector != PVM_SW_SYSCALL32) {
		struct desc_ptr idt;

		store_idt(&idt);
		pvm_call_host_gate(gate_offset((gate_desc *)idt.address + vector));
		return -1;
	}
	return vector;
}
