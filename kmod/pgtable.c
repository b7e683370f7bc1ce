// SPDX-License-Identifier: GPL-2.0
/*
 * kmod/pgtable.c - an address space's own x86-64 4-level page tables.
 *
 * The tables live in module-allocated pages and map nothing but the pinned
 * user pages handed to pvm_pt_map(): the hardware walks them only once the
 * world switch loads this root (a later ABI version), so every entry is
 * written as the CPU will read it.  Each table page counts its present
 * entries in page_private(), so a table left empty by an unmap is freed at
 * once.
 */
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/mem_encrypt.h>
#include <linux/mm.h>

#include <asm/pgtable_types.h>

#include "pvm.h"

#define PT_ADDR_MASK 0x000ffffffffff000ull
/* Upper levels allow everything: the leaf alone decides (x86 ANDs R/W and U/S, ORs NX). */
#define PT_TABLE_FLAGS (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED)

static u64 *entry_table(u64 e)
{
	return __va(__sme_clr(e) & PT_ADDR_MASK);
}

static struct page *entry_page(u64 e)
{
	return pfn_to_page((__sme_clr(e) & PT_ADDR_MASK) >> PAGE_SHIFT);
}

static void count_add(u64 *table, long d)
{
	struct page *p = virt_to_page(table);

	set_page_private(p, page_private(p) + d);
}

static unsigned long count_of(u64 *table)
{
	return page_private(virt_to_page(table));
}

static u64 *alloc_table(struct pvm_pgtable *pt)
{
	/* Charged to the caller's memory cgroup, like its own page tables. */
	struct page *p = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO);

	if (!p)
		return NULL;
	set_page_private(p, 0);
	pt->nr_tables++;
	atomic_long_inc(&pvm_stats.nr_tables);
	return page_address(p);
}

static void free_table(struct pvm_pgtable *pt, u64 *table)
{
	set_page_private(virt_to_page(table), 0);
	free_page((unsigned long)table);
	pt->nr_tables--;
	atomic_long_dec(&pvm_stats.nr_tables);
}

int pvm_pt_init(struct pvm_pgtable *pt)
{
	pt->nr_tables = 0;
	pt->nr_mapped = 0;
	pt->high = false;
	pt->pml4 = alloc_table(pt);
	if (!pt->pml4)
		return -ENOMEM;
	/* The switcher (never counted: not one of this address space's tables). */
	pt->pml4[511] = pvm_switcher_pml4e();
	return 0;
}

void pvm_pt_fini(struct pvm_pgtable *pt)
{
	if (!pt->pml4)
		return;
	pvm_pt_unmap(pt, 0, PVM_KMOD_GVA_LOW_END);
	pvm_pt_unmap(pt, PVM_KMOD_GVA_HIGH_START, PVM_KMOD_GVA_HIGH_END);
	WARN_ON(pt->nr_mapped || count_of(pt->pml4));
	pt->pml4[511] = 0;
	free_table(pt, pt->pml4);
	pt->pml4 = NULL;
}

/* The end of the entry of @shift that holds @addr, clipped to @end. */
static u64 span_end(u64 addr, int shift, u64 end)
{
	u64 next = (addr | ((1ull << shift) - 1)) + 1;

	return (next == 0 || next > end) ? end : next;
}

static unsigned long count_level(u64 *table, int shift, u64 addr, u64 end)
{
	unsigned long n = 0;

	for (; addr < end; addr = span_end(addr, shift, end)) {
		u64 e = table[(addr >> shift) & 511];

		if (!(e & _PAGE_PRESENT))
			continue;
		if (shift == PAGE_SHIFT)
			n++;
		else
			n += count_level(entry_table(e), shift - 9, addr,
					 span_end(addr, shift, end));
	}
	return n;
}

bool pvm_pt_any_mapped(struct pvm_pgtable *pt, u64 gva, unsigned long n)
{
	return count_level(pt->pml4, 39, gva, gva + (n << PAGE_SHIFT)) != 0;
}

int pvm_pt_map(struct pvm_pgtable *pt, u64 gva, struct page *page, unsigned int flags)
{
	u64 *table = pt->pml4, leaf;
	int shift;

	for (shift = 39; shift > PAGE_SHIFT; shift -= 9) {
		u64 *slot = &table[(gva >> shift) & 511];

		if (!(*slot & _PAGE_PRESENT)) {
			u64 *child = alloc_table(pt);

			if (!child)
				return -ENOMEM; /* the caller's rollback frees empty tables */
			WRITE_ONCE(*slot, __sme_set(__pa(child)) | PT_TABLE_FLAGS);
			count_add(table, 1);
		}
		table = entry_table(*slot);
	}
	if (WARN_ON(table[(gva >> PAGE_SHIFT) & 511]))
		return -EEXIST;
	/* User pages, write-back; D preset on writable pages so the CPU never writes the leaf. */
	leaf = __sme_set(page_to_phys(page)) | _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED;
	if (flags & PVM_KMOD_MAP_WRITE)
		leaf |= _PAGE_RW | _PAGE_DIRTY;
	/* NX is a reserved bit where the CPU has none (EFER.NXE clear): then X is not enforced. */
	if (!(flags & PVM_KMOD_MAP_EXEC))
		leaf |= _PAGE_NX & __supported_pte_mask;
	WRITE_ONCE(table[(gva >> PAGE_SHIFT) & 511], leaf);
	count_add(table, 1);
	if (gva >= PVM_KMOD_GVA_HIGH_START)
		pt->high = true;
	pt->nr_mapped++;
	atomic_long_inc(&pvm_stats.nr_pinned);
	return 0;
}

void *pvm_pt_kaddr(struct pvm_pgtable *pt, u64 gva, bool write)
{
	u64 *table = pt->pml4, e;
	int shift;

	if (gva >= PVM_KMOD_GVA_HIGH_END || (gva >= PVM_KMOD_GVA_LOW_END && gva < PVM_KMOD_GVA_HIGH_START))
		return NULL; /* the switcher's slot, or not canonical */
	for (shift = 39; shift >= PAGE_SHIFT; shift -= 9) {
		e = READ_ONCE(table[(gva >> shift) & 511]);
		if (!(e & _PAGE_PRESENT))
			return NULL;
		if (shift == PAGE_SHIFT)
			break;
		table = entry_table(e);
	}
	if (write && !(e & _PAGE_RW))
		return NULL;
	return page_address(entry_page(e)) + (gva & ~PAGE_MASK);
}

static void unpin_leaf(u64 e)
{
	struct page *p = entry_page(e);

	/* A writable page may have been written through the guest mapping. */
	if (e & _PAGE_RW)
		unpin_user_pages_dirty_lock(&p, 1, true);
	else
		unpin_user_page(p);
}

static unsigned long unmap_level(struct pvm_pgtable *pt, u64 *table, int shift, u64 addr, u64 end)
{
	unsigned long n = 0;

	for (; addr < end; addr = span_end(addr, shift, end)) {
		u64 *slot = &table[(addr >> shift) & 511], e = *slot;
		u64 *child;

		if (!(e & _PAGE_PRESENT))
			continue;
		if (shift == PAGE_SHIFT) {
			WRITE_ONCE(*slot, 0);
			count_add(table, -1);
			unpin_leaf(e);
			pt->nr_mapped--;
			atomic_long_dec(&pvm_stats.nr_pinned);
			n++;
			continue;
		}
		child = entry_table(e);
		n += unmap_level(pt, child, shift - 9, addr, span_end(addr, shift, end));
		if (count_of(child) == 0) {
			WRITE_ONCE(*slot, 0);
			count_add(table, -1);
			free_table(pt, child);
		}
	}
	return n;
}

unsigned long pvm_pt_unmap(struct pvm_pgtable *pt, u64 gva, u64 end)
{
	return unmap_level(pt, pt->pml4, 39, gva, end);
}

/* The gva is rebuilt from the indices, so a leaf at the wrong index shows as a wrong gva. */
void pvm_pt_dump(struct seq_file *s, struct pvm_pgtable *pt, u64 id)
{
	unsigned int i4, i3, i2, i1;

	for (i4 = 0; i4 < 511; i4++) { /* 511: the switcher */
		u64 e4 = pt->pml4[i4], *l3;

		if (!(e4 & _PAGE_PRESENT))
			continue;
		l3 = entry_table(e4);
		for (i3 = 0; i3 < 512; i3++) {
			u64 e3 = l3[i3], *l2;

			if (!(e3 & _PAGE_PRESENT))
				continue;
			l2 = entry_table(e3);
			for (i2 = 0; i2 < 512; i2++) {
				u64 e2 = l2[i2], *l1;

				if (!(e2 & _PAGE_PRESENT))
					continue;
				l1 = entry_table(e2);
				for (i1 = 0; i1 < 512; i1++) {
					u64 gva = (u64)i4 << 39 | (u64)i3 << 30 |
						  (u64)i2 << 21 | (u64)i1 << 12;

					if (!(l1[i1] & _PAGE_PRESENT))
						continue;
					if (gva & (1ull << 47))
						gva |= 0xffff000000000000ull;
					seq_printf(s, "%llu %016llx %016llx %016llx %016llx %016llx\n",
						   id, gva, e4, e3, e2, l1[i1]);
				}
			}
		}
	}
}
