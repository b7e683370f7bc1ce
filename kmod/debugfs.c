// SPDX-License-Identifier: GPL-2.0
/*
 * kmod/debugfs.c - <debugfs>/pvm/tables (root only): every live address
 * space's leaves with the entries on their path, so tests can check each
 * bit the hardware will read (tests/kmod/kmod_test.c compares the frames
 * with /proc/self/pagemap).  Physical addresses are for root's eyes only,
 * as in pagemap.  Without CONFIG_DEBUG_FS these are no-ops.
 */
#include <linux/debugfs.h>
#include <linux/seq_file.h>

#include "pvm.h"

static struct dentry *pvm_debugfs_dir;

static int tables_show(struct seq_file *s, void *unused)
{
	pvm_as_dump_all(s);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(tables);

void pvm_debugfs_init(void)
{
	/* Best effort: the module works without it. */
	pvm_debugfs_dir = debugfs_create_dir("pvm", NULL);
	debugfs_create_file("tables", 0400, pvm_debugfs_dir, NULL, &tables_fops);
}

void pvm_debugfs_exit(void)
{
	debugfs_remove(pvm_debugfs_dir);
}
