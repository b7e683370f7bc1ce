// SPDX-License-Identifier: GPL-2.0
/*
 * kmod/acct.c - pages mapped per process, for max_pages_per_proc.
 *
 * A process is its mm: every address space is bound to the mm that created
 * it (only that mm may map into it), so counting per mm bounds what one
 * process can pin, however many address spaces it opens.  The entry holds
 * the mm_struct (mmgrab, not the address space) so its pointer cannot be
 * reused by another process while counted.  Few processes use the module at
 * once, so a list under one mutex is enough.
 */
#include <linux/list.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "pvm.h"

struct pvm_acct {
	struct list_head node;
	struct mm_struct *mm;
	unsigned long refs;     /* address spaces */
	unsigned long pages;    /* mapped (pinned) pages, reservations included */
};

static LIST_HEAD(acct_list);
static DEFINE_MUTEX(acct_lock);

static struct pvm_acct *find(struct mm_struct *mm)
{
	struct pvm_acct *a;

	list_for_each_entry(a, &acct_list, node)
		if (a->mm == mm)
			return a;
	return NULL;
}

struct pvm_acct *pvm_acct_get(struct mm_struct *mm)
{
	struct pvm_acct *a;

	mutex_lock(&acct_lock);
	a = find(mm);
	if (!a) {
		a = kzalloc(sizeof(*a), GFP_KERNEL_ACCOUNT);
		if (a) {
			mmgrab(mm);
			a->mm = mm;
			list_add(&a->node, &acct_list);
			atomic_long_inc(&pvm_stats.nr_procs);
		}
	}
	if (a)
		a->refs++;
	mutex_unlock(&acct_lock);
	return a;
}

void pvm_acct_put(struct pvm_acct *a)
{
	mutex_lock(&acct_lock);
	if (--a->refs == 0) {
		WARN_ON(a->pages);
		list_del(&a->node);
		mmdrop(a->mm);
		kfree(a);
		atomic_long_dec(&pvm_stats.nr_procs);
	}
	mutex_unlock(&acct_lock);
}

int pvm_acct_charge(struct pvm_acct *a, unsigned long n)
{
	int ret = -EDQUOT;

	mutex_lock(&acct_lock);
	if (n <= pvm_max_pages_per_proc && a->pages <= pvm_max_pages_per_proc - n) {
		a->pages += n;
		ret = 0;
	}
	mutex_unlock(&acct_lock);
	return ret;
}

void pvm_acct_uncharge(struct pvm_acct *a, unsigned long n)
{
	mutex_lock(&acct_lock);
	WARN_ON(n > a->pages);
	a->pages -= min(n, a->pages);
	mutex_unlock(&acct_lock);
}

unsigned long pvm_acct_pages_of(struct mm_struct *mm)
{
	struct pvm_acct *a;
	unsigned long n;

	mutex_lock(&acct_lock);
	a = find(mm);
	n = a ? a->pages : 0;
	mutex_unlock(&acct_lock);
	return n;
}
