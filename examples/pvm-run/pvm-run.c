/*
 * pvm-run - run a libpvm guest (unikernel) ELF.
 *
 *   pvm-run [options] guest.elf [guest args...]
 *
 * One host thread per vCPU, the guest console on stdout, and the guest's
 * exit status (PVM_HOSTCALL_EXIT) as pvm-run's own.  With
 * --snapshot-after-hostcall N FILE it saves a snapshot of the VM when the
 * guest makes its Nth host call; --restore FILE runs on from such a file
 * (answering the host call the snapshot stopped at) instead of booting.  Launcher failures exit
 * with 125, a guest that crashes (triple fault, backend error, halt without
 * an exit status) with 124, bad usage with 2.  With --gdb it first waits for
 * one gdb connection and lets pvm_gdb_serve() run the guest.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <pvm/abi.h>
#include <pvm/pvm.h>

#define EXIT_USAGE 2
#define EXIT_CRASH 124
#define EXIT_LAUNCH 125
#define NR_REASONS 8

static const char *const reason_names[NR_REASONS] = {
    "none", "hypercall", "io", "mmio", "halt", "shutdown", "kicked", "internal-error",
};

struct opts {
    enum pvm_backend backend;
    uint64_t mem;
    unsigned vcpus;
    unsigned timer_hz;
    bool trace, stats;
    const char *core_dir;     /* --core-on-crash */
    const char *gdb;          /* --gdb [HOST]:PORT */
    uint64_t snap_after;      /* --snapshot-after-hostcall N FILE: 0 = off */
    const char *snap_file;
    const char *restore;      /* --restore FILE */
};

struct runner {
    struct opts o;
    pvm_vm *vm;
    pvm_vcpu **vcpus;
    pthread_mutex_t lock;     /* stdout/stderr lines, stats */
    atomic_bool stop;
    int status;               /* guest exit status, or EXIT_CRASH */
    bool have_status;
    uint64_t exits[NR_REASONS];
    uint64_t hostcalls;       /* vCPU 0's, for --snapshot-after-hostcall */
    struct sockaddr_in gdb_addr;  /* --gdb, parsed */
};

static const char *prog = "pvm-run";

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: %s [options] guest.elf [guest args...]\n"
        "       %s [options] --restore FILE\n"
        "Run a libpvm guest (an ELF built with the libpvm guest SDK), or continue one\n"
        "from a snapshot file.\n"
        "\n"
        "Options:\n"
        "  -b, --backend=NAME   backend: auto (default), native, kvm or kmod; the environment\n"
        "                       variable PVM_BACKEND is used when this is not given\n"
        "  -m, --mem=SIZE       guest RAM, e.g. 64M (default), 1G, 512K; a multiple of 4 KiB\n"
        "  -c, --vcpus=N        number of vCPUs, 1..%d (default 1); all start at the ELF entry\n"
        "  -t, --timer-hz=HZ    inject timer interrupt vector 32 into vCPU 0 HZ times a second\n"
        "                       from a host thread (default 0: no timer)\n"
        "      --trace          print every exit to stderr\n"
        "      --stats          print exits by kind and the run time to stderr at the end\n"
        "      --core-on-crash=DIR  when the guest crashes, write an ELF core file\n"
        "                       DIR/pvm-core.<pid> (open it with: gdb guest.elf DIR/pvm-core.<pid>)\n"
        "      --gdb=[HOST]:PORT  before the guest runs, wait for one gdb connection on HOST\n"
        "                       (default 127.0.0.1; PORT 0 picks a free port) and let gdb\n"
        "                       control the guest: gdb guest.elf -ex 'target remote HOST:PORT'.\n"
        "                       If gdb detaches, the guest runs on; if it kills the guest or\n"
        "                       disconnects, pvm-run exits with %d\n"
        "      --snapshot-after-hostcall N FILE\n"
        "                       when the guest makes its Nth host call (counting from 1,\n"
        "                       console writes included), save a snapshot of the VM to FILE,\n"
        "                       then go on; needs --vcpus 1\n"
        "      --restore FILE   instead of booting an ELF, create the VM from the snapshot\n"
        "                       FILE and run on from where it was taken (the pending host\n"
        "                       call is answered first); --mem and --vcpus do not apply\n"
        "  -h, --help           show this help and exit\n"
        "  -V, --version        show the pvm-run and libpvm versions and exit\n"
        "\n"
        "The guest's console goes to stdout; the guest args become its command line.\n"
        "Exit status: the guest's exit status; %d if the guest crashed (triple fault,\n"
        "backend error, halt without exit), %d if it could not be started, %d for bad usage.\n",
        prog, prog, PVM_MAX_VCPUS, EXIT_CRASH, EXIT_CRASH, EXIT_LAUNCH, EXIT_USAGE);
}

static void die_usage(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (try --help)\n");
    exit(EXIT_USAGE);
}

static bool parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *s == '-')
        return false;
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 0: break;
    default: return false;
    }
    if (*end == 'i' && shift) /* accept KiB/MiB/GiB spellings */
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || v > (UINT64_MAX >> shift))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}

static bool parse_uint(const char *s, unsigned max, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || v > max)
        return false;
    *out = (unsigned)v;
    return true;
}

static void msg(struct runner *r, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&r->lock);
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    pthread_mutex_unlock(&r->lock);
}

/* Record the outcome (first one wins) and stop every vCPU. */
static void finish(struct runner *r, int status)
{
    pthread_mutex_lock(&r->lock);
    if (!r->have_status) {
        r->status = status;
        r->have_status = true;
    }
    pthread_mutex_unlock(&r->lock);
    atomic_store(&r->stop, true);
    for (unsigned i = 0; i < r->o.vcpus; i++)
        pvm_vcpu_kick(r->vcpus[i]);
}

static void trace_exit(struct runner *r, unsigned id, const struct pvm_exit *e)
{
    const char *name = e->reason < NR_REASONS ? reason_names[e->reason] : "?";
    pthread_mutex_lock(&r->lock);
    fprintf(stderr, "[vcpu %u] exit %s", id, name);
    switch (e->reason) {
    case PVM_EXIT_HYPERCALL:
        fprintf(stderr, " nr=0x%" PRIx64 " args=0x%" PRIx64 ",0x%" PRIx64 ",0x%" PRIx64,
                e->u.hypercall.nr, e->u.hypercall.args[0], e->u.hypercall.args[1],
                e->u.hypercall.args[2]);
        break;
    case PVM_EXIT_IO:
        fprintf(stderr, " port=0x%x size=%u %s data=0x%x", e->u.io.port, e->u.io.size,
                e->u.io.is_write ? "out" : "in", e->u.io.data);
        break;
    case PVM_EXIT_MMIO:
        fprintf(stderr, " gpa=0x%" PRIx64 " size=%u %s", e->u.mmio.gpa, e->u.mmio.size,
                e->u.mmio.is_write ? "write" : "read");
        break;
    case PVM_EXIT_SHUTDOWN:
        fprintf(stderr, " rip=0x%" PRIx64 " reason=%s", e->u.shutdown.rip, e->u.shutdown.reason);
        break;
    case PVM_EXIT_INTERNAL_ERROR:
        fprintf(stderr, " %s: %s", pvm_err_name(e->u.internal.code), e->u.internal.msg);
        break;
    default:
        break;
    }
    fputc('\n', stderr);
    pthread_mutex_unlock(&r->lock);
}

static uint64_t guest_rip(pvm_vcpu *vcpu)
{
    struct pvm_regs regs;
    return pvm_vcpu_get_regs(vcpu, &regs) == 0 ? regs.rip : 0;
}

/* PVM_HOSTCALL_CONSOLE_WRITE: copy the guest's bytes (bounds-checked by the library). */
static uint64_t console_write(struct runner *r, pvm_vcpu *vcpu, uint64_t gva, uint64_t len)
{
    char buf[4096];
    uint64_t done = 0;
    while (done < len) {
        size_t n = len - done < sizeof(buf) ? (size_t)(len - done) : sizeof(buf);
        if (pvm_vcpu_read_guest(vcpu, gva + done, buf, n) < 0)
            break;
        pthread_mutex_lock(&r->lock);
        fwrite(buf, 1, n, stdout);
        pthread_mutex_unlock(&r->lock);
        done += n;
    }
    fflush(stdout);
    return done == len ? len : (uint64_t)-14; /* -EFAULT */
}

/* Handle one exit; returns false when this vCPU's thread should end. */
static bool handle_exit(struct runner *r, pvm_vcpu *vcpu, struct pvm_exit *e)
{
    unsigned id = pvm_vcpu_id(vcpu);
    switch (e->reason) {
    case PVM_EXIT_HYPERCALL: {
        uint64_t nr = e->u.hypercall.nr;
        if (nr == PVM_HOSTCALL(PVM_HOSTCALL_CONSOLE_WRITE)) {
            e->u.hypercall.ret = console_write(r, vcpu, e->u.hypercall.args[0], e->u.hypercall.args[1]);
            return true;
        }
        if (nr == PVM_HOSTCALL(PVM_HOSTCALL_EXIT)) {
            finish(r, (int)(e->u.hypercall.args[0] & 0xff));
            return false;
        }
        if (r->o.trace)
            msg(r, "vCPU %u: unknown host call 0x%" PRIx64 " returns -ENOSYS", id, nr);
        e->u.hypercall.ret = (uint64_t)-38;
        return true;
    }
    case PVM_EXIT_KICKED:
        return !atomic_load(&r->stop);
    case PVM_EXIT_HALT:
        if (id == 0) {
            msg(r, "guest halted on vCPU 0 without an exit status (rip 0x%" PRIx64 ")", guest_rip(vcpu));
            finish(r, EXIT_CRASH);
        }
        return false; /* a secondary vCPU that stopped for good */
    case PVM_EXIT_SHUTDOWN:
        msg(r, "guest triple fault on vCPU %u: %s (rip 0x%" PRIx64 ")", id, e->u.shutdown.reason,
            e->u.shutdown.rip);
        finish(r, EXIT_CRASH);
        return false;
    case PVM_EXIT_INTERNAL_ERROR:
        msg(r, "backend error on vCPU %u: %s (%s) (rip 0x%" PRIx64 ")", id, e->u.internal.msg,
            pvm_err_name(e->u.internal.code), guest_rip(vcpu));
        finish(r, EXIT_CRASH);
        return false;
    case PVM_EXIT_IO:
        msg(r, "guest on vCPU %u did port I/O (port 0x%x), which pvm-run does not emulate (rip 0x%" PRIx64 ")",
            id, e->u.io.port, guest_rip(vcpu));
        finish(r, EXIT_CRASH);
        return false;
    case PVM_EXIT_MMIO:
        msg(r, "guest on vCPU %u accessed guest-physical 0x%" PRIx64 ", which is not RAM (rip 0x%" PRIx64 ")",
            id, e->u.mmio.gpa, guest_rip(vcpu));
        finish(r, EXIT_CRASH);
        return false;
    default:
        msg(r, "unexpected exit %u on vCPU %u", e->reason, id);
        finish(r, EXIT_CRASH);
        return false;
    }
}

/* --gdb: the exits pvm_gdb_serve() leaves to us, handled as handle_exit() would. */
static enum pvm_gdb_action gdb_exit(void *opaque, pvm_vcpu *vcpu, struct pvm_exit *e, int *status)
{
    struct runner *r = opaque;
    unsigned id = pvm_vcpu_id(vcpu);
    switch (e->reason) {
    case PVM_EXIT_HYPERCALL:
        if (e->u.hypercall.nr == PVM_HOSTCALL(PVM_HOSTCALL_CONSOLE_WRITE)) {
            e->u.hypercall.ret = console_write(r, vcpu, e->u.hypercall.args[0], e->u.hypercall.args[1]);
            return PVM_GDB_RESUME;
        }
        if (e->u.hypercall.nr == PVM_HOSTCALL(PVM_HOSTCALL_EXIT)) {
            *status = (int)(e->u.hypercall.args[0] & 0xff);
            return PVM_GDB_FINISH;
        }
        e->u.hypercall.ret = (uint64_t)-38;
        return PVM_GDB_RESUME;
    case PVM_EXIT_HALT:
        msg(r, "vCPU %u halted for good (rip 0x%" PRIx64 ")", id, guest_rip(vcpu));
        return PVM_GDB_PARK;
    case PVM_EXIT_IO:
        msg(r, "guest on vCPU %u did port I/O (port 0x%x), which pvm-run does not emulate", id, e->u.io.port);
        *status = 11; /* SIGSEGV */
        return PVM_GDB_STOP;
    default:
        msg(r, "guest on vCPU %u: exit %u that pvm-run does not handle", id, e->reason);
        *status = 11;
        return PVM_GDB_STOP;
    }
}

/* Parse [HOST]:PORT into @sa (HOST: a dotted IPv4 address or "localhost"; default loopback). */
static bool parse_hostport(const char *s, struct sockaddr_in *sa)
{
    const char *colon = strrchr(s, ':');
    unsigned port;
    char host[64];
    if (!colon || (size_t)(colon - s) >= sizeof(host) || !parse_uint(colon + 1, 65535, &port))
        return false;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (!host[0] || !strcmp(host, "localhost"))
        strcpy(host, "127.0.0.1");
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1;
}

/* Listen on @sa, say where, accept one connection; returns its fd or -1. */
static int wait_for_gdb(struct sockaddr_in *sa)
{
    int one = 1, ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t len = sizeof(*sa);
    char addr[INET_ADDRSTRLEN];
    if (ls < 0)
        return -1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (struct sockaddr *)sa, sizeof(*sa)) < 0 || listen(ls, 1) < 0 ||
        getsockname(ls, (struct sockaddr *)sa, &len) < 0) {
        fprintf(stderr, "%s: --gdb: %s\n", prog, strerror(errno));
        close(ls);
        return -1;
    }
    inet_ntop(AF_INET, &sa->sin_addr, addr, sizeof(addr));
    fprintf(stderr, "%s: waiting for gdb on %s:%u\n", prog, addr, (unsigned)ntohs(sa->sin_port));
    int fd;
    do
        fd = accept(ls, NULL, NULL);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        fprintf(stderr, "%s: --gdb: accept: %s\n", prog, strerror(errno));
    close(ls);
    return fd;
}

/*
 * Serve gdb on the VM before (and instead of) the vCPU threads.  Returns
 * true if the guest should run on without gdb (gdb detached); otherwise the
 * outcome is recorded with finish().
 */
static bool serve_gdb(struct runner *r, const struct sockaddr_in *where)
{
    struct sockaddr_in sa = *where;
    int fd = wait_for_gdb(&sa);
    if (fd < 0) {
        finish(r, EXIT_LAUNCH);
        return false;
    }
    struct pvm_gdb_options go = PVM_GDB_OPTIONS_INIT;
    go.on_exit = gdb_exit;
    go.opaque = r;
    enum pvm_gdb_end end;
    int status = 0;
    int rc = pvm_gdb_serve(r->vm, fd, &go, &end, &status);
    close(fd);
    if (rc < 0) {
        msg(r, "gdb stub: %s", pvm_last_error());
        finish(r, EXIT_LAUNCH);
        return false;
    }
    switch (end) {
    case PVM_GDB_END_FINISHED:
        finish(r, status);
        return false;
    case PVM_GDB_END_DETACHED:
        msg(r, "gdb detached; the guest runs on");
        return true;
    case PVM_GDB_END_KILLED:
        msg(r, "guest killed by gdb");
        break;
    case PVM_GDB_END_CRASHED:
        msg(r, "guest crashed under gdb");
        break;
    default:
        msg(r, "gdb disconnected; guest stopped");
        break;
    }
    finish(r, EXIT_CRASH);
    return false;
}

struct vcpu_arg {
    struct runner *r;
    pvm_vcpu *vcpu;
};

/* --snapshot-after-hostcall: vCPU 0 is the only one, stopped at its Nth host call. */
static void maybe_snapshot(struct runner *r, pvm_vcpu *vcpu, const struct pvm_exit *e)
{
    if (!r->o.snap_after || pvm_vcpu_id(vcpu) != 0 || e->reason != PVM_EXIT_HYPERCALL ||
        (e->u.hypercall.nr >> 32) != (PVM_HOSTCALL(0) >> 32) || ++r->hostcalls != r->o.snap_after)
        return;
    pvm_snapshot *snap;
    if (pvm_vm_snapshot(r->vm, &snap) < 0 || pvm_snapshot_save(snap, r->o.snap_file) < 0) {
        msg(r, "snapshot: %s", pvm_last_error());
        finish(r, EXIT_LAUNCH);
        return;
    }
    pvm_snapshot_free(snap);
    msg(r, "snapshot after host call %" PRIu64 " saved to %s", r->o.snap_after, r->o.snap_file);
}

static void *vcpu_thread(void *p)
{
    struct vcpu_arg *a = p;
    struct runner *r = a->r;
    struct pvm_exit e;
    memset(&e, 0, sizeof(e));
    /* Restored: first answer the exit the snapshot stopped at. */
    if (r->o.restore && pvm_vcpu_pending_exit(a->vcpu, &e) == 0 && e.reason != PVM_EXIT_NONE &&
        !handle_exit(r, a->vcpu, &e))
        return NULL;
    while (!atomic_load(&r->stop)) {
        int rc = pvm_vcpu_run(a->vcpu, &e);
        if (rc < 0) {
            msg(r, "pvm_vcpu_run: %s", pvm_last_error());
            finish(r, EXIT_CRASH);
            break;
        }
        if (e.reason < NR_REASONS) {
            pthread_mutex_lock(&r->lock);
            r->exits[e.reason]++;
            pthread_mutex_unlock(&r->lock);
        }
        if (r->o.trace)
            trace_exit(r, pvm_vcpu_id(a->vcpu), &e);
        maybe_snapshot(r, a->vcpu, &e);
        if (!handle_exit(r, a->vcpu, &e))
            break;
    }
    return NULL;
}

static void *timer_thread(void *p)
{
    struct runner *r = p;
    struct timespec period = { 0, 0 }, next;
    uint64_t ns = 1000000000ull / r->o.timer_hz;
    period.tv_sec = (time_t)(ns / 1000000000ull);
    period.tv_nsec = (long)(ns % 1000000000ull);
    clock_gettime(CLOCK_MONOTONIC, &next);
    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = 32 };
    while (!atomic_load(&r->stop)) {
        next.tv_sec += period.tv_sec;
        next.tv_nsec += period.tv_nsec;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_sec++;
            next.tv_nsec -= 1000000000L;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
        if (!atomic_load(&r->stop))
            pvm_vcpu_inject(r->vcpus[0], &ev); /* a tick still pending is simply merged */
    }
    return NULL;
}

/* Join the guest args into one command line (the boot-info cmdline). */
static char *join_args(int argc, char **argv)
{
    size_t len = 1;
    for (int i = 0; i < argc; i++)
        len += strlen(argv[i]) + 1;
    char *s = calloc(1, len);
    if (!s)
        return NULL;
    for (int i = 0; i < argc; i++) {
        if (i)
            strcat(s, " ");
        strcat(s, argv[i]);
    }
    return s;
}

/* Run every vCPU of r->vm on its own thread until the guest is done; destroys the VM. */
static int run_vm(struct runner *r)
{
    struct vcpu_arg *args = calloc(r->o.vcpus, sizeof(*args));
    pthread_t *threads = calloc(r->o.vcpus, sizeof(*threads));
    if (!args || !threads) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return EXIT_LAUNCH;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    /* The timer first: with --gdb its ticks reach the guest while gdb runs it too. */
    pthread_t timer;
    bool have_timer = r->o.timer_hz && pthread_create(&timer, NULL, timer_thread, r) == 0;
    unsigned started = 0;
    bool run = !r->o.gdb || serve_gdb(r, &r->gdb_addr);
    for (; run && started < r->o.vcpus; started++) {
        args[started] = (struct vcpu_arg){ r, r->vcpus[started] };
        if (pthread_create(&threads[started], NULL, vcpu_thread, &args[started]) != 0) {
            msg(r, "cannot start a thread for vCPU %u", started);
            finish(r, EXIT_LAUNCH);
            break;
        }
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    if (!r->have_status) {
        msg(r, "every vCPU stopped without an exit status");
        finish(r, EXIT_CRASH);
    }
    atomic_store(&r->stop, true);
    if (have_timer)
        pthread_join(timer, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);

    if (r->o.stats) {
        double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        uint64_t total = 0;
        fprintf(stderr, "%s: stats: run time %.6f s, backend %s, %u vCPU(s)\n", prog, secs,
                pvm_backend_name(pvm_vm_backend(r->vm)), r->o.vcpus);
        for (int i = 1; i < NR_REASONS; i++) {
            total += r->exits[i];
            if (r->exits[i])
                fprintf(stderr, "%s: stats:   %-15s %" PRIu64 "\n", prog, reason_names[i], r->exits[i]);
        }
        fprintf(stderr, "%s: stats:   %-15s %" PRIu64 "\n", prog, "total exits", total);
    }
    if (r->o.core_dir && r->status == EXIT_CRASH) {
        char core[4096];
        snprintf(core, sizeof(core), "%s/pvm-core.%d", r->o.core_dir, (int)getpid());
        if (pvm_vm_write_core(r->vm, core) == 0)
            fprintf(stderr, "%s: core written to %s\n", prog, core);
        else
            fprintf(stderr, "%s: no core written: %s\n", prog, pvm_last_error());
    }
    pvm_vm_destroy(r->vm);
    free(r->vcpus);
    free(args);
    free(threads);
    fflush(stdout);
    return r->status;
}

/* --restore FILE: the VM and its vCPUs come from the snapshot. */
static int run_restored(struct runner *r, bool backend_given)
{
    pvm_snapshot *snap;
    if (pvm_snapshot_load(&snap, r->o.restore) < 0) {
        fprintf(stderr, "%s: %s\n", prog, pvm_last_error());
        return EXIT_LAUNCH;
    }
    struct pvm_vm_options vo = PVM_VM_OPTIONS_INIT;
    vo.backend = r->o.backend;
    int rc = pvm_vm_create_from_snapshot(&r->vm, snap, backend_given ? &vo : NULL);
    pvm_snapshot_free(snap);
    if (rc < 0) {
        fprintf(stderr, "%s: cannot create a VM from %s: %s\n", prog, r->o.restore, pvm_last_error());
        return EXIT_LAUNCH;
    }
    r->vcpus = calloc(PVM_MAX_VCPUS, sizeof(*r->vcpus));
    if (!r->vcpus) {
        fprintf(stderr, "%s: out of memory\n", prog);
        pvm_vm_destroy(r->vm);
        return EXIT_LAUNCH;
    }
    r->o.vcpus = 0;
    for (uint32_t id = 0; id < PVM_MAX_VCPUS; id++)
        if (pvm_vm_vcpu(r->vm, id))
            r->vcpus[r->o.vcpus++] = pvm_vm_vcpu(r->vm, id);
    if (r->o.vcpus == 0) {
        fprintf(stderr, "%s: %s has no vCPUs\n", prog, r->o.restore);
        pvm_vm_destroy(r->vm);
        free(r->vcpus);
        return EXIT_LAUNCH;
    }
    return run_vm(r);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "backend", required_argument, NULL, 'b' },
        { "mem", required_argument, NULL, 'm' },
        { "vcpus", required_argument, NULL, 'c' },
        { "timer-hz", required_argument, NULL, 't' },
        { "trace", no_argument, NULL, 'T' },
        { "stats", no_argument, NULL, 'S' },
        { "core-on-crash", required_argument, NULL, 'C' },
        { "gdb", required_argument, NULL, 'G' },
        { "snapshot-after-hostcall", required_argument, NULL, 'N' },
        { "restore", required_argument, NULL, 'R' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    struct runner r;
    memset(&r, 0, sizeof(r));
    r.o = (struct opts){ .backend = PVM_BACKEND_AUTO, .mem = 64ull << 20, .vcpus = 1 };
    bool backend_given = false;
    pthread_mutex_init(&r.lock, NULL);

    int c;
    /* '+': options end at the guest ELF; what follows belongs to the guest. */
    while ((c = getopt_long(argc, argv, "+b:m:c:t:hV", longopts, NULL)) != -1) {
        switch (c) {
        case 'b':
            if (pvm_backend_from_name(optarg, &r.o.backend) < 0)
                die_usage("unknown backend '%s' (auto, native, kvm or kmod)", optarg);
            backend_given = true;
            break;
        case 'm':
            if (!parse_size(optarg, &r.o.mem) || r.o.mem == 0 || (r.o.mem & 4095))
                die_usage("--mem '%s' is not a size that is a multiple of 4 KiB", optarg);
            break;
        case 'c':
            if (!parse_uint(optarg, PVM_MAX_VCPUS, &r.o.vcpus) || r.o.vcpus == 0)
                die_usage("--vcpus '%s' is not a number in 1..%d", optarg, PVM_MAX_VCPUS);
            break;
        case 't':
            if (!parse_uint(optarg, 100000, &r.o.timer_hz))
                die_usage("--timer-hz '%s' is not a number in 0..100000", optarg);
            break;
        case 'T': r.o.trace = true; break;
        case 'S': r.o.stats = true; break;
        case 'C': r.o.core_dir = optarg; break;
        case 'G':
            if (!parse_hostport(optarg, &r.gdb_addr))
                die_usage("--gdb '%s' is not [HOST]:PORT (HOST an IPv4 address, PORT 0..65535)", optarg);
            r.o.gdb = optarg;
            break;
        case 'N': {
            unsigned n;
            /* Two arguments: N here, FILE the next word. */
            if (!parse_uint(optarg, UINT32_MAX > 1000000000u ? 1000000000u : UINT32_MAX, &n) || n == 0)
                die_usage("--snapshot-after-hostcall '%s' is not a number in 1..1000000000", optarg);
            if (optind >= argc)
                die_usage("--snapshot-after-hostcall needs N and FILE");
            r.o.snap_after = n;
            r.o.snap_file = argv[optind++];
            break;
        }
        case 'R': r.o.restore = optarg; break;
        case 'h': usage(stdout); return 0;
        case 'V':
            printf("pvm-run %d.%d.%d (libpvm %s, PVM ABI generation A)\n", PVM_VERSION_MAJOR,
                   PVM_VERSION_MINOR, PVM_VERSION_PATCH, pvm_version_string());
            return 0;
        default:
            fprintf(stderr, "(try %s --help)\n", prog);
            return EXIT_USAGE;
        }
    }
    if (r.o.snap_after && r.o.vcpus != 1)
        die_usage("--snapshot-after-hostcall needs --vcpus 1");
    if (r.o.restore) {
        if (optind < argc)
            die_usage("--restore takes no guest ELF");
        return run_restored(&r, backend_given);
    }
    if (optind >= argc)
        die_usage("no guest ELF given");
    const char *path = argv[optind];
    if (access(path, R_OK) < 0) {
        fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
        return EXIT_LAUNCH;
    }
    char *cmdline = join_args(argc - optind - 1, argv + optind + 1);
    if (!cmdline) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return EXIT_LAUNCH;
    }

    struct pvm_vm_options vo = PVM_VM_OPTIONS_INIT;
    vo.backend = r.o.backend;
    vo.max_vcpus = r.o.vcpus;
    if (pvm_vm_create(&r.vm, &vo) < 0) {
        fprintf(stderr, "%s: cannot create a VM: %s\n", prog, pvm_last_error());
        free(cmdline);
        return EXIT_LAUNCH;
    }
    struct pvm_load_options lo = PVM_LOAD_OPTIONS_INIT;
    lo.ram_size = r.o.mem;
    lo.cmdline = cmdline;
    int rc = pvm_vm_load_elf(r.vm, path, &lo, NULL);
    free(cmdline);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", prog, pvm_last_error());
        pvm_vm_destroy(r.vm);
        return EXIT_LAUNCH;
    }
    r.vcpus = calloc(r.o.vcpus, sizeof(*r.vcpus));
    if (!r.vcpus) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return EXIT_LAUNCH;
    }
    for (unsigned i = 0; i < r.o.vcpus; i++) {
        struct pvm_vcpu_options co = PVM_VCPU_OPTIONS_INIT;
        co.id = i;
        if (pvm_vcpu_create(&r.vcpus[i], r.vm, &co) < 0 || pvm_vcpu_setup_boot(r.vcpus[i], 0) < 0) {
            fprintf(stderr, "%s: vCPU %u: %s\n", prog, i, pvm_last_error());
            pvm_vm_destroy(r.vm);
            return EXIT_LAUNCH;
        }
    }

    return run_vm(&r);
}
