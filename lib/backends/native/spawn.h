/*
 * lib/backends/native/spawn.h - starting and reaping stub processes
 * (docs/design.md "Stub creation").
 *
 * Stubs are forked by zygote processes (stub/zygote.c): the first stub of a
 * process starts one, a new one is started per NSPAWN_ZYGOTE_STUBS live
 * stubs.  A spawn then costs a sendmsg with the stub's few fds and a fork of a tiny
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

/* The fds a stub starts with (stub_abi.h NSTUB_FD_*; the death pipe is spawn.c's); -1 = none. */
struct nspawn_fds {
    int ram;      /* NSTUB_FD_RAM, the guest-RAM memfd (nspawn_request: -1, it comes later) */
    int ctl;      /* NSTUB_FD_CTL, the control memfd (mapped and filled by the caller) */
    int notify;   /* NSTUB_FD_NOTIFY, the stub's end of the mapping-approval socket, or -1 */
    int link;     /* NSTUB_FD_LINK, the VM's link memfd (nspawn_request: -1, it comes later), or -1 */
    int snap;     /* NSTUB_FD_SNAP, a VM from a snapshot: its write-sealed RAM memfd, or -1 */
};

/*
 * Start a stub with @fds (they stay the caller's).  Returns 0 with *pid and
 * *pidfd, or a negative PVM_E* code with the reason in err.
 */
int nspawn_stub(struct nspawn *sp, const struct nspawn_fds *fds, pid_t *pid, int *pidfd, char *err, size_t errlen);
/*
 * A stub for the pool (stub.c): ask a zygote to fork one with @fds (no RAM
 * memfd: it waits for that on its socket) without waiting.  0, or
 * PVM_ENOTSUP where stubs are not forked by zygotes.  nspawn_collect() then
 * waits for it: 0 with *pid and *pidfd, or a negative PVM_E* code (the spawn
 * is then given up and reaped).
 */
int nspawn_request(struct nspawn *sp, const struct nspawn_fds *fds, char *err, size_t errlen);
int nspawn_collect(struct nspawn *sp, pid_t *pid, int *pidfd, char *err, size_t errlen);
/* sendmsg of @len bytes with @nfds (1..NSTUB_ZREQ_MAXFDS) fds (SCM_RIGHTS) on @sock, EINTR retried; its result. */
ssize_t nspawn_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
/* After @pidfd said the stub exited: how (si_code CLD_*, si_status).  Does not reap. */
bool nspawn_exit_status(const struct nspawn *sp, int pidfd, int *code, int *status);
/*
 * The stub was sent SIGKILL: without a zygote, reap it now; a zygote's stub
 * is reaped by its zygote, and its slot is freed by a later spawn once it
 * has been (no waiting here).
 */
void nspawn_reap(struct nspawn *sp, int pidfd);

#endif
