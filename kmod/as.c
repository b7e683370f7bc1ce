// SPDX-License-Identifier: GPL-2.0
/*
 * kmod/as.c - address spaces: one anon-inode fd each, MAP and UNMAP.
 *
 * The caller is untrusted: every argument is checked before anything is
 * touched, and a mapping is built only from pages that GUP pins out of the
 * calling process's own anonymous or tmpfs (memfd) memory, with the VMAs
 * checked and the pages pinned under one hold of mmap_lock, so nothing of
 * the host but what the caller owns can ever be mapped.
 */
#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <uapi/linux/magic.h>

#include "pvm.h"

struct pvm_as {
	struct mutex lock;          /* the tables and the counts */
	struct pvm_pgtable pt;
	struct pvm_acct *acct;
	struct mm_struct *mm;       /* the creator's; identity only (acct holds it) */
	u64 id;
	struct list_head node;      /* in as_list while its fd exists */
	struct pvm_kick kick;       /* PVM_KMOD_AS_KICK: lock-free, any time */
	struct pvm_pvcs_pin pvcs;   /* PVM_KMOD_RUN_PVM's PVCS page (under lock) */
};

/* Live address spaces, for the debugfs dump.  Order: as_list_lock, then as->lock. */
static LIST_HEAD(as_list);
static DEFINE_MUTEX(as_list_lock);
static atomic64_t as_next_id;

void pvm_as_dump_all(struct seq_file *s)
{
	struct pvm_as *as;

	mutex_lock(&as_list_lock);
	list_for_each_entry(as, &as_list, node) {
		mutex_lock(&as->lock);
		pvm_pt_dump(s, &as->pt, as->id);
		mutex_unlock(&as->lock);
	}
	mutex_unlock(&as_list_lock);
}

static bool gva_range_ok(u64 gva, u64 len)
{
	u64 end = gva + len;

	if (end < gva)
		return false;
	return end <= PVM_KMOD_GVA_LOW_END ||
	       (gva >= PVM_KMOD_GVA_HIGH_START && end <= PVM_KMOD_GVA_HIGH_END);
}

/* Anonymous memory or a tmpfs file (memfd, shared anonymous): pages the process owns. */
static int check_vmas(struct mm_struct *mm, unsigned long start, unsigned long end)
{
	unsigned long addr;
	struct vm_area_struct *vma;

	for (addr = start; addr < end; addr = vma->vm_end) {
		vma = find_vma(mm, addr);
		if (!vma || vma->vm_start > addr)
			return -EFAULT;
		if (vma->vm_flags & (VM_IO | VM_PFNMAP | VM_MIXEDMAP))
			return -EFAULT;
		if (vma_is_anonymous(vma))
			continue;
		if (!vma->vm_file || file_inode(vma->vm_file)->i_sb->s_magic != TMPFS_MAGIC)
			return -EFAULT; /* vDSO, vvar, other files, devices */
	}
	return 0;
}

#define PIN_CHUNK (PAGE_SIZE / sizeof(struct page *))

/* Pin and install; on failure the caller unmaps [gva, gva + n pages). */
static int map_pages(struct pvm_as *as, const struct pvm_kmod_map *m, unsigned long n,
		     struct page **pages)
{
	unsigned int gup = FOLL_LONGTERM | ((m->flags & PVM_KMOD_MAP_WRITE) ? FOLL_WRITE : 0);
	unsigned long done = 0;
	int ret;

	if (mmap_read_lock_killable(as->mm))
		return -EINTR;
	ret = check_vmas(as->mm, m->uaddr, m->uaddr + m->len);
	while (!ret && done < n) {
		long got = pin_user_pages(m->uaddr + (done << PAGE_SHIFT), min(n - done, PIN_CHUNK),
					  gup, pages, NULL);
		long i;

		if (got <= 0) {
			/* Out of memory or killed: say so; else not the caller's memory. */
			ret = (got == -ENOMEM || got == -EINTR) ? got : -EFAULT;
			break;
		}
		for (i = 0; i < got; i++) {
			u64 gva = m->gva + ((done + i) << PAGE_SHIFT);

			ret = pvm_pt_map(&as->pt, gva, pages[i], m->flags);
			if (ret) {
				unpin_user_pages(pages + i, got - i);
				break;
			}
		}
		done += i;
	}
	mmap_read_unlock(as->mm);
	return ret;
}

/*
 * PVM_KMOD_RUN_PVM's PVCS page: one writable page of @mm's own anonymous or
 * tmpfs memory (as MAP takes), pinned until pvm_unpin_pvcs().
 */
int pvm_pin_pvcs(struct mm_struct *mm, unsigned long uaddr, struct page **page)
{
	long got;
	int ret;

	if (mmap_read_lock_killable(mm))
		return -EINTR;
	ret = check_vmas(mm, uaddr & PAGE_MASK, (uaddr & PAGE_MASK) + PAGE_SIZE);
	if (!ret) {
		got = pin_user_pages(uaddr & PAGE_MASK, 1, FOLL_WRITE, page, NULL);
		ret = got == 1 ? 0 : (got == -ENOMEM || got == -EINTR) ? (int)got : -EFAULT;
	}
	mmap_read_unlock(mm);
	if (!ret)
		atomic_long_inc(&pvm_stats.nr_pinned); /* a leak shows in PVM_KMOD_INFO */
	return ret;
}

void pvm_unpin_pvcs(struct page *page)
{
	unpin_user_pages_dirty_lock(&page, 1, true);
	atomic_long_dec(&pvm_stats.nr_pinned);
}

static long as_map(struct pvm_as *as, const void __user *uarg)
{
	struct pvm_kmod_map m;
	struct page **pages;
	unsigned long n;
	long ret;

	if (copy_from_user(&m, uarg, sizeof(m)))
		return -EFAULT;
	if ((m.flags & ~PVM_KMOD_MAP_ALL) || !(m.flags & PVM_KMOD_MAP_READ) || m.pad0 ||
	    m.reserved[0] || m.reserved[1])
		return -EINVAL;
	if (!m.len || m.len > PVM_KMOD_MAP_MAX_LEN || ((m.gva | m.uaddr | m.len) & ~PAGE_MASK))
		return -EINVAL;
	if (!gva_range_ok(m.gva, m.len) || m.uaddr + m.len < m.uaddr)
		return -EINVAL;
	if (current->mm != as->mm)
		return -EPERM;
	if (!access_ok((const void __user *)(unsigned long)m.uaddr, m.len))
		return -EFAULT; /* kernel addresses */
	n = m.len >> PAGE_SHIFT;

	pages = (struct page **)__get_free_page(GFP_KERNEL);
	if (!pages)
		return -ENOMEM;
	mutex_lock(&as->lock);
	if (n > pvm_max_pages_per_as || as->pt.nr_mapped > pvm_max_pages_per_as - n) {
		ret = -ENOSPC;
	} else if (pvm_pt_any_mapped(&as->pt, m.gva, n)) {
		ret = -EEXIST;
	} else {
		ret = pvm_acct_charge(as->acct, n);
		if (!ret) {
			ret = map_pages(as, &m, n, pages);
			if (ret) {
				/* All or nothing: the range was empty before. */
				pvm_pt_unmap(&as->pt, m.gva, m.gva + m.len);
				pvm_acct_uncharge(as->acct, n);
			}
		}
	}
	mutex_unlock(&as->lock);
	free_page((unsigned long)pages);
	return ret;
}

static long as_unmap(struct pvm_as *as, const void __user *uarg)
{
	struct pvm_kmod_unmap u;
	unsigned long n;

	if (copy_from_user(&u, uarg, sizeof(u)))
		return -EFAULT;
	if (u.flags || u.pad0 || u.reserved[0] || u.reserved[1])
		return -EINVAL;
	if (!u.len || ((u.gva | u.len) & ~PAGE_MASK) || !gva_range_ok(u.gva, u.len))
		return -EINVAL;
	if (current->mm != as->mm)
		return -EPERM;
	mutex_lock(&as->lock);
	n = pvm_pt_unmap(&as->pt, u.gva, u.gva + u.len);
	pvm_acct_uncharge(as->acct, n);
	mutex_unlock(&as->lock);
	return 0;
}

static long as_info(struct pvm_as *as, void __user *uarg)
{
	struct pvm_kmod_as_info info = {};

	mutex_lock(&as->lock);
	info.mapped_pages = as->pt.nr_mapped;
	info.table_pages = as->pt.nr_tables;
	info.id = as->id;
	mutex_unlock(&as->lock);
	return copy_to_user(uarg, &info, sizeof(info)) ? -EFAULT : 0;
}

/*
 * The lock is held for the whole run: no page of the address space can be
 * unmapped (and unpinned) while a CPU may hold it in its TLB.  The next run
 * flushes the guest PCID (or, without PCIDs, every CR3 write does).
 */
static long as_run(struct pvm_as *as, void __user *uarg)
{
	long ret;

	if (current->mm != as->mm)
		return -EPERM;
	if (mutex_lock_killable(&as->lock))
		return -EINTR;
	ret = pvm_run(&as->pt, &as->kick, &as->pvcs, uarg);
	mutex_unlock(&as->lock);
	return ret;
}

static const struct file_operations pvm_as_fops;

/*
 * PVM_KMOD_RUN_PVM's other address space: @fd must be another address space
 * of the calling process than @self.  Held (a file reference and its lock,
 * taken with a trylock: the RUN holds its own, and two RUNs naming each
 * other must not deadlock) until pvm_as_put_peer().  Its tables, or an
 * ERR_PTR: -EINVAL not such an address space, -EBUSY in use by another RUN,
 * MAP or UNMAP.
 */
struct pvm_pgtable *pvm_as_get_peer(int fd, const struct pvm_pgtable *self, struct file **held)
{
	struct file *f = fget(fd);
	struct pvm_as *as;

	if (!f)
		return ERR_PTR(-EINVAL);
	as = f->private_data;
	if (f->f_op != &pvm_as_fops || as->mm != current->mm || &as->pt == self) {
		fput(f);
		return ERR_PTR(-EINVAL);
	}
	if (!mutex_trylock(&as->lock)) {
		fput(f);
		return ERR_PTR(-EBUSY);
	}
	*held = f;
	return &as->pt;
}

void pvm_as_put_peer(struct file *f)
{
	struct pvm_as *as = f->private_data;

	mutex_unlock(&as->lock);
	fput(f);
}

static long as_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct pvm_as *as = f->private_data;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case PVM_KMOD_AS_MAP:
		return as_map(as, uarg);
	case PVM_KMOD_AS_UNMAP:
		return as_unmap(as, uarg);
	case PVM_KMOD_AS_INFO:
		return as_info(as, uarg);
	case PVM_KMOD_AS_RUN:
		return as_run(as, uarg);
	case PVM_KMOD_AS_KICK:
		if (arg)
			return -EINVAL;
		if (current->mm != as->mm)
			return -EPERM;
		pvm_kick(&as->kick);
		return 0;
	case PVM_KMOD_AS_POST_IRQ:
		if (arg < 32 || arg > 255)
			return -EINVAL;
		if (current->mm != as->mm)
			return -EPERM;
		pvm_post_irq(&as->kick, (unsigned int)arg);
		return 0;
	case PVM_KMOD_AS_TAKE_IRQS: {
		u64 bits[4];

		if (current->mm != as->mm)
			return -EPERM;
		pvm_take_irqs(&as->kick, bits);
		if (copy_to_user(uarg, bits, sizeof(bits))) {
			/* Not lost: post them again. */
			unsigned int v;

			for (v = 32; v < 256; v++)
				if (bits[v / 64] & (1ull << (v % 64)))
					set_bit(v, as->kick.irqs);
			return -EFAULT;
		}
		return 0;
	}
	}
	return -ENOTTY;
}

static void as_free(struct pvm_as *as)
{
	unsigned long n = as->pt.nr_mapped;

	pvm_pvcs_unpin(&as->pvcs);
	pvm_pt_fini(&as->pt);
	if (as->acct) {
		pvm_acct_uncharge(as->acct, n);
		pvm_acct_put(as->acct);
	}
	kfree(as);
}

static int as_release(struct inode *inode, struct file *f)
{
	struct pvm_as *as = f->private_data;

	mutex_lock(&as_list_lock);
	list_del(&as->node);
	mutex_unlock(&as_list_lock);
	as_free(as);
	atomic_long_dec(&pvm_stats.nr_as);
	return 0;
}

static const struct file_operations pvm_as_fops = {
	.owner = THIS_MODULE, /* an open address space keeps the module loaded */
	.release = as_release,
	.unlocked_ioctl = as_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

long pvm_as_create(const struct pvm_kmod_create_as __user *uarg)
{
	struct pvm_kmod_create_as c;
	struct pvm_as *as;
	int fd;

	if (copy_from_user(&c, uarg, sizeof(c)))
		return -EFAULT;
	if (c.flags || c.pad0 || c.reserved[0] || c.reserved[1] || c.reserved[2])
		return -EINVAL;
	if (!current->mm)
		return -EINVAL;

	as = kzalloc(sizeof(*as), GFP_KERNEL_ACCOUNT);
	if (!as)
		return -ENOMEM;
	mutex_init(&as->lock);
	INIT_LIST_HEAD(&as->node);
	as->id = atomic64_inc_return(&as_next_id);
	as->kick.cpu = -1;
	as->mm = current->mm;
	as->acct = pvm_acct_get(as->mm);
	if (!as->acct || pvm_pt_init(&as->pt)) {
		as_free(as);
		return -ENOMEM;
	}
	/* Listed and counted first: another thread may close the fd as soon as it exists. */
	atomic_long_inc(&pvm_stats.nr_as);
	mutex_lock(&as_list_lock);
	list_add_tail(&as->node, &as_list);
	mutex_unlock(&as_list_lock);
	fd = anon_inode_getfd("[pvm-as]", &pvm_as_fops, as, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		mutex_lock(&as_list_lock);
		list_del(&as->node);
		mutex_unlock(&as_list_lock);
		atomic_long_dec(&pvm_stats.nr_as);
		as_free(as);
	}
	return fd;
}
