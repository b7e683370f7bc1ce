/* tests/testutil.h - helpers shared by the Check programs. */
#ifndef PVM_TESTUTIL_H
#define PVM_TESTUTIL_H

#include <check.h>
#include <stddef.h>

/* Run @s with CK_NORMAL output; returns the process exit status. */
int pvm_test_run_suite(Suite *s);
/* Number of open file descriptors of this process (from /proc/self/fd). */
int pvm_test_count_fds(void);
/* Number of child processes of this process (from /proc). */
int pvm_test_count_children(void);
/* The whole file at @path, malloc'ed, its size in *len (fails the test if unreadable). */
void *pvm_test_read_file(const char *path, size_t *len);

#endif
