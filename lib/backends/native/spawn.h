/*
 * lib/backends/native/spawn.h - starting and reaping stub processes
 * (docs/design.md "Stub creation").
 *
 * Stubs are forked by zygote processes (stub/zygote.c): the first stub of a
 * process starts one, a new one is started per NSPAWN_ZYGOTE_STUBS live
 * stubs.  A spawn then costs a sendmsg with two (three) fds and a fork of a tiny
 * process: nothing in it grows with the library's fd table.
 * PVM_NATIVE_ZYGOTE=0 in the environment (read once) spawns every stub
 * directly from the library instead (clone(CLONE_VM|CLONE_VFORK) +
 * execveat), the old way, kept as the fallback when no zygote can start.
 */
#ifndef PVM_NATIVE_SPAWN_H
#define PVM_NATIVE_SPAWN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct nstub_ctl;
struct nspawn_zygote;

/* How a stub was started: by a zygote (z, slot) or directly (z NULL). */
struct nspawn {
    struct nspawn_zygote *z;
    int slot;
};

/*
 * Start a stub on @ram_fd, the control memfd @ctl_fd and, if @snap_fd >= 0,
 * a sealed snapshot memfd (all stay the caller's), whose control area @ctl
 * is mapped and filled; sets ctl->parent_pid to the stub's parent.  Returns
 * 0 with *pid and *pidfd, or a negative PVM_E* code with the reason in err.
 */
int nspawn_stub(struct nspawn *sp, int ram_fd, int ctl_fd, int snap_fd, volatile struct nstub_ctl *ctl, pid_t *pid,
                int *pidfd, char *err, size_t errlen);
/* After @pidfd said the stub exited: how (si_code CLD_*, si_status).  Does not reap. */
bool nspawn_exit_status(const struct nspawn *sp, int pidfd, int *code, int *status);
/* The stub was sent SIGKILL: wait until it is reaped (no zombie left) and free its slot. */
void nspawn_reap(struct nspawn *sp, int pidfd);

#endif
