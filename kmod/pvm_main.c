// SPDX-License-Identifier: GPL-2.0
/*
 * kmod/pvm_main.c - the pvm module: parameters, counters, /dev/pvm.
 *
 * ABI version 2 (include/pvm/kmod.h): version, info, address spaces built
 * from the caller's pinned pages, and RUN through the world switch
 * (docs/design.md "kmod (world-switch module)").
 *
 * /dev/pvm is a character device of its own rather than a misc device: only
 * a device_type's devnode() can give devtmpfs a group for the node, which the
 * group= parameter needs.
 */
#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/uidgid.h>

#include "pvm.h"

unsigned long pvm_max_pages_per_as = 262144;
module_param_named(max_pages_per_as, pvm_max_pages_per_as, ulong, 0444);
MODULE_PARM_DESC(max_pages_per_as, "most pages one address space may map (default 262144 = 1 GiB)");

unsigned long pvm_max_pages_per_proc = 1048576;
module_param_named(max_pages_per_proc, pvm_max_pages_per_proc, ulong, 0444);
MODULE_PARM_DESC(max_pages_per_proc,
		 "most pages one process may map in all (default 1048576 = 4 GiB)");

bool pvm_fast_switch = true;
module_param_named(fast_switch, pvm_fast_switch, bool, 0644);
MODULE_PARM_DESC(fast_switch, "deliver a user SYSCALL, ERETU and plain hypercalls inside the world switch "
		 "(PVM_KMOD_RUN_PVM; default on; off: in C between two switches, for measurements)");

static int group = -1;
module_param(group, int, 0444);
MODULE_PARM_DESC(group, "group that may open /dev/pvm (mode 0660); default -1: root only (0600)");

struct pvm_stats pvm_stats;

static dev_t pvm_devt;
static struct cdev pvm_cdev;
static struct class *pvm_class;
static struct device *pvm_dev;

static long pvm_info_ioctl(void __user *uarg)
{
	struct pvm_kmod_info info = {
		.abi_version = PVM_KMOD_ABI_VERSION,
		.size = sizeof(info),
		.gva_low_end = PVM_KMOD_GVA_LOW_END,
		.gva_high_start = PVM_KMOD_GVA_HIGH_START,
		.gva_high_end = PVM_KMOD_GVA_HIGH_END,
		.map_max_len = PVM_KMOD_MAP_MAX_LEN,
		.max_pages_per_as = pvm_max_pages_per_as,
		.max_pages_per_proc = pvm_max_pages_per_proc,
		.map_flags = PVM_KMOD_MAP_ALL,
		.nr_as = atomic_long_read(&pvm_stats.nr_as),
		.nr_pinned = atomic_long_read(&pvm_stats.nr_pinned),
		.nr_tables = atomic_long_read(&pvm_stats.nr_tables),
		.nr_procs = atomic_long_read(&pvm_stats.nr_procs),
		.caller_pages = current->mm ? pvm_acct_pages_of(current->mm) : 0,
	};

	return copy_to_user(uarg, &info, sizeof(info)) ? -EFAULT : 0;
}

static long dev_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case PVM_KMOD_GET_VERSION:
		return arg ? -EINVAL : PVM_KMOD_ABI_VERSION;
	case PVM_KMOD_INFO:
		return pvm_info_ioctl(uarg);
	case PVM_KMOD_CREATE_AS:
		return pvm_as_create(uarg);
	}
	return -ENOTTY;
}

static const struct file_operations pvm_dev_fops = {
	.owner = THIS_MODULE,
	.open = nonseekable_open,
	.unlocked_ioctl = dev_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static char *pvm_devnode(struct device *dev, umode_t *mode, kuid_t *uid, kgid_t *gid)
{
	if (mode)
		*mode = group >= 0 ? 0660 : 0600;
	if (gid && group >= 0)
		*gid = make_kgid(&init_user_ns, group);
	return NULL;
}

static const struct device_type pvm_dev_type = {
	.name = "pvm",
	.devnode = pvm_devnode,
};

static void pvm_dev_release(struct device *dev)
{
	kfree(dev);
}

static int __init pvm_init(void)
{
	int ret;

	if (group < -1 || (group >= 0 && !gid_valid(make_kgid(&init_user_ns, group)))) {
		pr_err("pvm: group=%d is not a valid group id\n", group);
		return -EINVAL;
	}
	if (!pvm_max_pages_per_as || !pvm_max_pages_per_proc) {
		pr_err("pvm: max_pages_per_as and max_pages_per_proc must be > 0\n");
		return -EINVAL;
	}
	ret = pvm_switch_init();
	if (ret)
		return ret;
	ret = alloc_chrdev_region(&pvm_devt, 0, 1, "pvm");
	if (ret)
		goto err_switch;
	pvm_class = class_create(THIS_MODULE, "pvm");
	if (IS_ERR(pvm_class)) {
		ret = PTR_ERR(pvm_class);
		goto err_region;
	}
	pvm_dev = kzalloc(sizeof(*pvm_dev), GFP_KERNEL);
	if (!pvm_dev) {
		ret = -ENOMEM;
		goto err_class;
	}
	device_initialize(pvm_dev);
	pvm_dev->devt = pvm_devt;
	pvm_dev->class = pvm_class;
	pvm_dev->type = &pvm_dev_type;
	pvm_dev->release = pvm_dev_release;
	ret = dev_set_name(pvm_dev, "pvm");
	if (ret)
		goto err_dev;
	cdev_init(&pvm_cdev, &pvm_dev_fops);
	pvm_cdev.owner = THIS_MODULE;
	ret = cdev_device_add(&pvm_cdev, pvm_dev);
	if (ret)
		goto err_dev;
	pvm_debugfs_init();
	pr_info("pvm: ABI version %u, /dev/pvm (%s)\n", PVM_KMOD_ABI_VERSION,
		group >= 0 ? "mode 0660, group from group=" : "mode 0600, root");
	return 0;

err_dev:
	put_device(pvm_dev);
err_class:
	class_destroy(pvm_class);
err_region:
	unregister_chrdev_region(pvm_devt, 1);
err_switch:
	pvm_switch_exit();
	return ret;
}

static void __exit pvm_exit(void)
{
	pvm_debugfs_exit();
	cdev_device_del(&pvm_cdev, pvm_dev);
	put_device(pvm_dev);
	class_destroy(pvm_class);
	unregister_chrdev_region(pvm_devt, 1);
	pvm_switch_exit();
	/* Open fds hold the module, so all of these are 0 here; anything else is a leak. */
	WARN_ON(atomic_long_read(&pvm_stats.nr_as) || atomic_long_read(&pvm_stats.nr_pinned) ||
		atomic_long_read(&pvm_stats.nr_tables) || atomic_long_read(&pvm_stats.nr_procs));
}

module_init(pvm_init);
module_exit(pvm_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("PVM guests: address spaces of pinned user pages and a world switch into them");
