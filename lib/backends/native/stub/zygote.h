/*
 * lib/backends/native/stub/zygote.h - the stub image's zygote mode and the
 * death-pipe backstop (zygote.c).  Freestanding.
 */
#ifndef PVM_NSTUB_ZYGOTE_H
#define PVM_NSTUB_ZYGOTE_H

#include <stddef.h>
#include <stdint.h>

/* sendmsg/recvmsg structs as the kernel lays them out (no libc here; zygote.c, stub_main.c). */
struct k_iovec {
    void *base;
    size_t len;
};
struct k_msghdr {
    void *name;
    int namelen;
    struct k_iovec *iov;
    size_t iovlen;
    void *control;
    size_t controllen;
    unsigned flags;
};

/* @sp: the initial stack pointer (argc, argv...): started as a zygote? */
int nstub_is_zygote(const uint64_t *sp);
/*
 * Serve spawn requests forever; returns only in a forked child, with fds
 * 3-6 set up as a stub expects, to go on into the stub start-up.
 */
void nstub_zygote_main(void);
/*
 * Arm the death-pipe backstop on NSTUB_FD_DEATH: 0 armed, 1 the library is
 * already gone, or -errno (no such fd, no /proc): not armed.
 */
int nstub_backstop(void);

#endif
