/*
 * lib/core/gdbstub.c - pvm_gdb_serve(): a GDB remote serial protocol stub
 * for a VM.  The calling thread serves packets; one worker thread per vCPU
 * runs it with pvm_vcpu_run() (all-stop: the first vCPU that stops for gdb
 * stops the others with kicks).  Breakpoints are INT3 bytes in guest memory
 * and single steps the trap flag, both intercepted by the hypervisor core
 * (pvm_vcpu_set_guest_debug), so the stub itself never names a backend.
 *
 * The client is untrusted: packet lengths are bounded (gdb_packet.c), every
 * number is parsed strictly, memory requests are clamped to what one reply
 * holds, and guest memory is reached only through the guest's page tables
 * and the VM's region lookup.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend.h"
#include "gdb_packet.h"
#include "gdb_regs.h"

#define MAX_BREAKPOINTS 256
#define INT3 0xcc

/* gdb's signal numbers (gdb/signals.def), not the host's. */
#define SIG_0 0
#define SIG_INT 2
#define SIG_ILL 4
#define SIG_TRAP 5
#define SIG_ABRT 6
#define SIG_FPE 8
#define SIG_BUS 10
#define SIG_SEGV 11

enum ev_kind {
    EV_NONE = 0,  /* stopped because it was asked to (kick) */
    EV_DEBUG,     /* PVM_EXIT_DEBUG: step, breakpoint, caught exception */
    EV_CRASH,     /* SHUTDOWN or INTERNAL_ERROR (or a failed run) */
    EV_FINISH,    /* the exit handler finished the guest */
    EV_STOP,      /* the exit handler asked to stop with a signal */
    EV_PARK,      /* the exit handler parked this vCPU */
};

struct worker {
    struct gdb *g;
    pvm_vcpu *v;
    pthread_t th;
    bool started;
    /* Under g->lock. */
    bool go;                  /* resume requested */
    bool step;
    bool pass;                /* inject the caught exception first */
    bool running;
    bool parked;              /* idle for good until resumed explicitly */
    bool dead;                /* crashed and reported */
    enum ev_kind ev;          /* why it stopped last, until reported or dropped */
    uint64_t ev_seq;
    int ev_status;            /* FINISH status, STOP signal */
    struct pvm_exit exit;     /* the exit behind ev */
};

struct bp {
    uint64_t gva, gpa;
    uint8_t orig;
};

struct gdb {
    pvm_vm *vm;
    int fd;
    int evfd;                 /* workers -> server: "I stopped" */
    struct pvm_gdb_options o;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool quit;
    bool stopping;            /* all-stop in progress: kicked workers go idle */
    uint64_t seq;
    unsigned nr;
    struct worker *w;
    unsigned gsel, csel;      /* Hg / Hc: worker index; csel UINT32_MAX = all */
    bool swbreak;             /* the client understands "swbreak" stop reasons */
    struct bp bps[MAX_BREAKPOINTS];
    unsigned nr_bps;
    struct pvm_gdb_rx rx;
    char out[2 * PVM_GDB_PACKET_MAX + 8];  /* framed packet (escapes double at most) */
    size_t out_len;
    char reply[PVM_GDB_PACKET_MAX + 1];    /* reply body being built */
    uint8_t mem[PVM_GDB_PACKET_MAX];       /* guest bytes of an m, M or X */
    bool closed;
    enum pvm_gdb_end end;
    int status;
};

/* ---- I/O ------------------------------------------------------------------ */

static void send_raw(struct gdb *g, const void *buf, size_t len)
{
    const char *b = buf;
    while (len && !g->closed) {
        /* MSG_NOSIGNAL: a client that went away must not kill the host with SIGPIPE. */
        ssize_t n = send(g->fd, b, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            g->closed = true;
            break;
        }
        b += n;
        len -= (size_t)n;
    }
}

static void send_packet(struct gdb *g, const void *body, size_t len)
{
    g->out_len = pvm_gdb_frame(g->out, sizeof(g->out), body, len);
    send_raw(g, g->out, g->out_len);
}

static void send_str(struct gdb *g, const char *s)
{
    send_packet(g, s, strlen(s));
}

/* An 'O' console packet: gdb prints @text. */
static void send_console(struct gdb *g, const char *text)
{
    size_t n = strlen(text);
    if (n > (PVM_GDB_PACKET_MAX - 1) / 2)
        n = (PVM_GDB_PACKET_MAX - 1) / 2;
    g->reply[0] = 'O';
    pvm_gdb_hex_encode(g->reply + 1, text, n);
    send_packet(g, g->reply, 1 + 2 * n);
}

/*
 * Read what the client sent; returns the rx event that matters (PACKET,
 * INTERRUPT) or NONE when @timeout_ms passed / only acks came.  On a closed
 * connection sets g->closed.  Bad packets are answered '-' here, NAKs with a
 * resend.  Reads one byte at a time: packets are small and this keeps bytes
 * after a packet for the next call.
 */
static enum pvm_gdb_rx_event receive(struct gdb *g, int timeout_ms)
{
    for (;;) {
        struct pollfd p = { .fd = g->fd, .events = POLLIN };
        int r = poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            g->closed = true;
            return PVM_GDB_RX_NONE;
        }
        if (r == 0)
            return PVM_GDB_RX_NONE;
        uint8_t c;
        ssize_t n = recv(g->fd, &c, 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            g->closed = true;
            return PVM_GDB_RX_NONE;
        }
        switch (pvm_gdb_rx_byte(&g->rx, c)) {
        case PVM_GDB_RX_PACKET:
            send_raw(g, "+", 1);
            return PVM_GDB_RX_PACKET;
        case PVM_GDB_RX_BAD:
            send_raw(g, "-", 1);
            break;
        case PVM_GDB_RX_NAK:
            send_raw(g, g->out, g->out_len);
            break;
        case PVM_GDB_RX_INTERRUPT:
            return PVM_GDB_RX_INTERRUPT;
        default:
            break;
        }
        timeout_ms = 0; /* drain what is there, then report */
        if (g->closed)
            return PVM_GDB_RX_NONE;
    }
}

/* ---- guest memory ----------------------------------------------------------- */

/* Host pointer of guest-virtual @gva (@len bytes, within one page) through @v's page tables. */
static uint8_t *gva_host(struct gdb *g, pvm_vcpu *v, uint64_t gva, size_t len, uint64_t *gpa_out)
{
    uint64_t gpa;
    if (!g->vm->ops->translate || g->vm->ops->translate(v, gva, &gpa) < 0)
        return NULL;
    if (gpa_out)
        *gpa_out = gpa;
    return pvm__gpa_lookup(g->vm, gpa, len, NULL);
}

/* Copy guest memory (write: into it); returns bytes done before the first unmapped page. */
static size_t mem_access(struct gdb *g, pvm_vcpu *v, uint64_t gva, uint8_t *buf, size_t len, bool write)
{
    size_t done = 0;
    pvm__mem_enter(g->vm);
    while (done < len) {
        uint64_t a = gva + done;
        size_t chunk = PVM_PAGE_SIZE - (a & PVM_PAGE_MASK);
        if (chunk > len - done)
            chunk = len - done;
        uint8_t *h = gva_host(g, v, a, chunk, NULL);
        if (!h)
            break;
        if (write)
            memcpy(h, buf + done, chunk);
        else
            memcpy(buf + done, h, chunk);
        done += chunk;
    }
    pvm__mem_leave(g->vm);
    return done;
}

static struct bp *bp_find(struct gdb *g, uint64_t gva)
{
    for (unsigned i = 0; i < g->nr_bps; i++)
        if (g->bps[i].gva == gva)
            return &g->bps[i];
    return NULL;
}

/* Reads show the guest's bytes, not our INT3s. */
static void bp_hide(struct gdb *g, uint64_t gva, uint8_t *buf, size_t len)
{
    for (unsigned i = 0; i < g->nr_bps; i++)
        if (g->bps[i].gva - gva < len)
            buf[g->bps[i].gva - gva] = g->bps[i].orig;
}

/* After a write over breakpoints: the written bytes become the originals, the INT3s stay. */
static void bp_rearm(struct gdb *g, pvm_vcpu *v, uint64_t gva, size_t len)
{
    for (unsigned i = 0; i < g->nr_bps; i++) {
        struct bp *b = &g->bps[i];
        if (b->gva - gva >= len)
            continue;
        pvm__mem_enter(g->vm);
        uint8_t *h = gva_host(g, v, b->gva, 1, NULL);
        if (h) {
            b->orig = *h;
            *h = INT3;
        }
        pvm__mem_leave(g->vm);
    }
}

static bool bp_insert(struct gdb *g, pvm_vcpu *v, uint64_t gva)
{
    if (bp_find(g, gva))
        return true;
    if (g->nr_bps == MAX_BREAKPOINTS)
        return false;
    struct bp b = { .gva = gva };
    pvm__mem_enter(g->vm);
    uint8_t *h = gva_host(g, v, gva, 1, &b.gpa);
    if (h) {
        b.orig = *h;
        *h = INT3;
        g->bps[g->nr_bps++] = b;
    }
    pvm__mem_leave(g->vm);
    return h != NULL;
}

/* Restore by guest-physical address: the guest may have changed its mappings since. */
static void bp_restore(struct gdb *g, const struct bp *b)
{
    pvm__mem_enter(g->vm);
    uint8_t *h = pvm__gpa_lookup(g->vm, b->gpa, 1, NULL);
    if (h && *h == INT3)
        *h = b->orig;
    pvm__mem_leave(g->vm);
}

static bool bp_remove(struct gdb *g, uint64_t gva)
{
    struct bp *b = bp_find(g, gva);
    if (!b)
        return false;
    bp_restore(g, b);
    *b = g->bps[--g->nr_bps];
    return true;
}

/* ---- workers ----------------------------------------------------------------- */

static void set_debug(struct gdb *g, struct worker *w, bool step)
{
    struct pvm_guest_debug d = PVM_GUEST_DEBUG_INIT;
    d.flags = step ? PVM_GUEST_DEBUG_SINGLESTEP : 0;
    d.catch_smod = g->o.catch_smod | (1u << 3); /* #BP: our breakpoints */
    d.catch_umod = g->o.catch_umod | (1u << 3);
    pvm_vcpu_set_guest_debug(w->v, &d);
}

static enum pvm_gdb_action default_exit(struct pvm_exit *e, int *status)
{
    switch (e->reason) {
    case PVM_EXIT_HYPERCALL:
        if (e->u.hypercall.nr == PVM_HOSTCALL(PVM_HOSTCALL_EXIT)) {
            *status = (int)(e->u.hypercall.args[0] & 0xff);
            return PVM_GDB_FINISH;
        }
        e->u.hypercall.ret = (uint64_t)-38; /* -ENOSYS */
        return PVM_GDB_RESUME;
    case PVM_EXIT_HALT:
        return PVM_GDB_PARK;
    default:
        *status = SIG_SEGV;
        return PVM_GDB_STOP;
    }
}

/* Run until something stops this vCPU; returns why (e filled). */
static enum ev_kind run_worker(struct gdb *g, struct worker *w, struct pvm_exit *e, int *status)
{
    memset(e, 0, sizeof(*e));
    for (;;) {
        if (pvm_vcpu_run(w->v, e) < 0) {
            memset(e, 0, sizeof(*e));
            e->reason = PVM_EXIT_INTERNAL_ERROR;
            e->u.internal.code = PVM_EINTERNAL;
            snprintf(e->u.internal.msg, sizeof(e->u.internal.msg), "%s", pvm_last_error());
            return EV_CRASH;
        }
        switch (e->reason) {
        case PVM_EXIT_KICKED:
            if (__atomic_load_n(&g->stopping, __ATOMIC_SEQ_CST))
                return EV_NONE;
            continue; /* someone else's kick (pvm_vcpu_kick by the application) */
        case PVM_EXIT_DEBUG:
            return EV_DEBUG;
        case PVM_EXIT_SHUTDOWN:
        case PVM_EXIT_INTERNAL_ERROR:
            return EV_CRASH;
        default:
            break;
        }
        enum pvm_gdb_action a = g->o.on_exit ? g->o.on_exit(g->o.opaque, w->v, e, status) : default_exit(e, status);
        switch (a) {
        case PVM_GDB_RESUME:
            continue; /* a pending stop ends the next run with KICKED, after it completes this exit */
        case PVM_GDB_PARK:
            return EV_PARK;
        case PVM_GDB_FINISH:
            return EV_FINISH;
        default:
            return EV_STOP;
        }
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct gdb *g = w->g;
    pthread_mutex_lock(&g->lock);
    for (;;) {
        while (!w->go && !g->quit)
            pthread_cond_wait(&g->cond, &g->lock);
        if (g->quit)
            break;
        w->go = false;
        bool step = w->step, pass = w->pass;
        w->pass = false;
        struct pvm_exit prev = w->exit;
        pthread_mutex_unlock(&g->lock);

        set_debug(g, w, step);
        if (pass && prev.reason == PVM_EXIT_DEBUG) {
            /* gdb passes the caught exception on: the guest gets it (injected, so not caught again). */
            struct pvm_event ev = { .type = PVM_EVENT_EXCEPTION, .vector = (uint8_t)prev.u.debug.vector,
                                    .has_error_code = prev.u.debug.has_error_code,
                                    .error_code = prev.u.debug.error_code, .cr2 = prev.u.debug.cr2 };
            pvm_vcpu_inject(w->v, &ev);
        }
        struct pvm_exit e;
        int status = 0;
        enum ev_kind k = run_worker(g, w, &e, &status);

        pthread_mutex_lock(&g->lock);
        w->running = false;
        w->ev = k;
        w->ev_seq = ++g->seq;
        w->ev_status = status;
        w->exit = e;
        if (k == EV_PARK)
            w->parked = true;
        uint64_t one = 1;
        if (write(g->evfd, &one, sizeof(one)) < 0) {
            /* An eventfd write fails only on overflow: the server is being told anyway. */
        }
    }
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

/* Kick every running worker; under g->lock. */
static void stop_all_locked(struct gdb *g)
{
    __atomic_store_n(&g->stopping, true, __ATOMIC_SEQ_CST);
    for (unsigned i = 0; i < g->nr; i++)
        if (g->w[i].running)
            pvm_vcpu_kick(g->w[i].v);
}

static bool any_running_locked(struct gdb *g)
{
    for (unsigned i = 0; i < g->nr; i++)
        if (g->w[i].running)
            return true;
    return false;
}

/* An event worth telling gdb about? */
static bool reportable(const struct worker *w)
{
    return w->ev != EV_NONE && w->ev != EV_PARK;
}

/* ---- stop replies --------------------------------------------------------- */

static int signal_of(const struct worker *w)
{
    switch (w->ev) {
    case EV_CRASH:
        return SIG_ABRT;
    case EV_STOP:
        return w->ev_status;
    case EV_DEBUG:
        switch (w->exit.u.debug.vector) {
        case 0: case 16: case 19: return SIG_FPE;
        case 1: case 3: return SIG_TRAP;
        case 6: return SIG_ILL;
        case 17: return SIG_BUS;
        default: return SIG_SEGV;
        }
    default:
        return SIG_TRAP;
    }
}

/* The stop reply for worker @i (its event), into g->reply. */
static void stop_reply(struct gdb *g, unsigned i, int sig, bool swbreak)
{
    snprintf(g->reply, sizeof(g->reply), "T%02xthread:%x;%s", sig & 0xff, g->w[i].v->id + 1,
             swbreak && g->swbreak ? "swbreak:;" : "");
}

/*
 * A breakpoint trap at one of ours: move RIP back onto the INT3's address, as
 * if the trap happened before it (gdb then sees the PC at the breakpoint and
 * the original instruction runs once the breakpoint is lifted).
 */
static bool rewind_breakpoint(struct gdb *g, struct worker *w)
{
    if (w->ev != EV_DEBUG || w->exit.u.debug.vector != 3)
        return false;
    struct pvm_regs r;
    if (pvm_vcpu_get_regs(w->v, &r) < 0 || !bp_find(g, r.rip - 1))
        return false;
    r.rip--;
    return pvm_vcpu_set_regs(w->v, &r) == 0;
}

/*
 * All workers are idle: pick the event to report (a finished guest first,
 * then the earliest), drop the others (a breakpoint hit is rewound so it hits
 * again; a caught fault re-faults), and send the reply.  Returns false if
 * the session is over.
 */
static bool report_stop(struct gdb *g, int interrupt_sig)
{
    int best = -1;
    for (unsigned i = 0; i < g->nr; i++) {
        struct worker *w = &g->w[i];
        if (!reportable(w))
            continue;
        if (best < 0 || (w->ev == EV_FINISH && g->w[best].ev != EV_FINISH) ||
            (w->ev_seq < g->w[best].ev_seq && (g->w[best].ev != EV_FINISH || w->ev == EV_FINISH)))
            best = (int)i;
    }
    for (unsigned i = 0; i < g->nr; i++) {
        struct worker *w = &g->w[i];
        if ((int)i == best || !reportable(w) || w->ev == EV_CRASH || w->ev == EV_FINISH)
            continue;
        rewind_breakpoint(g, w);
        w->ev = EV_NONE;
    }
    if (best < 0) {
        /* Ctrl-C, or every vCPU parked: report the selected thread. */
        unsigned t = g->gsel < g->nr ? g->gsel : 0;
        stop_reply(g, t, interrupt_sig, false);
        send_str(g, g->reply);
        return true;
    }
    struct worker *w = &g->w[best];
    g->gsel = (unsigned)best;
    g->csel = (unsigned)best;
    if (w->ev == EV_FINISH) {
        snprintf(g->reply, sizeof(g->reply), "W%02x", w->ev_status & 0xff);
        send_str(g, g->reply);
        g->end = PVM_GDB_END_FINISHED;
        g->status = w->ev_status & 0xff;
        return false;
    }
    if (w->ev == EV_CRASH) {
        char msg[PVM_EXIT_MSG_MAX + 64];
        if (w->dead) {
            /* Resumed after its crash was reported: the guest is gone. */
            snprintf(g->reply, sizeof(g->reply), "X%02x", SIG_ABRT);
            send_str(g, g->reply);
            g->end = PVM_GDB_END_CRASHED;
            return false;
        }
        w->dead = true;
        if (w->exit.reason == PVM_EXIT_SHUTDOWN)
            snprintf(msg, sizeof(msg), "vCPU %u: triple fault: %s\n", w->v->id, w->exit.u.shutdown.reason);
        else
            snprintf(msg, sizeof(msg), "vCPU %u: %s\n", w->v->id, w->exit.u.internal.msg);
        send_console(g, msg);
    }
    bool sw = rewind_breakpoint(g, w);
    stop_reply(g, (unsigned)best, signal_of(w), sw);
    if (w->ev != EV_CRASH)
        w->ev = EV_NONE; /* reported; a crash stays, so that a resume ends the session */
    send_str(g, g->reply);
    return true;
}

/*
 * Resume: workers with an action run; then wait for the first stop (or
 * Ctrl-C), stop everyone, report.  Returns false if the session is over.
 */
static bool resume_and_wait(struct gdb *g)
{
    int interrupt_sig = SIG_0;
    pthread_mutex_lock(&g->lock);
    __atomic_store_n(&g->stopping, false, __ATOMIC_SEQ_CST);
    bool any = false;
    for (unsigned i = 0; i < g->nr; i++) {
        struct worker *w = &g->w[i];
        if (!w->go)
            continue;
        if (w->dead) {
            /* A crashed vCPU cannot go on: report the end right away. */
            for (unsigned k = 0; k < g->nr; k++)
                g->w[k].go = false;
            pthread_mutex_unlock(&g->lock);
            return report_stop(g, SIG_0);
        }
        w->running = true;
        w->parked = false;
        any = true;
    }
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
    if (!any) {
        /* Nothing could run (all parked): say so at once. */
        stop_reply(g, g->gsel < g->nr ? g->gsel : 0, SIG_0, false);
        send_str(g, g->reply);
        return true;
    }

    for (;;) {
        struct pollfd p[2] = { { .fd = g->fd, .events = POLLIN }, { .fd = g->evfd, .events = POLLIN } };
        int r = poll(p, 2, -1);
        if (r < 0 && errno != EINTR) {
            g->closed = true;
        } else if (r > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            enum pvm_gdb_rx_event ev = receive(g, 0);
            if (ev == PVM_GDB_RX_INTERRUPT) {
                interrupt_sig = SIG_INT;
                pthread_mutex_lock(&g->lock);
                stop_all_locked(g);
                pthread_mutex_unlock(&g->lock);
            }
            /* A packet while running: all-stop gdb sends none; ignored. */
        }
        if (r > 0 && (p[1].revents & POLLIN)) {
            uint64_t n;
            if (read(g->evfd, &n, sizeof(n)) < 0) {
                /* Nonblocking: another wake-up consumed it. */
            }
        }
        pthread_mutex_lock(&g->lock);
        bool event = false;
        for (unsigned i = 0; i < g->nr; i++)
            if (!g->w[i].running && reportable(&g->w[i]))
                event = true;
        if (event || g->closed)
            stop_all_locked(g);
        bool running = any_running_locked(g);
        pthread_mutex_unlock(&g->lock);
        if (!running) {
            if (g->closed)
                return false;
            return report_stop(g, interrupt_sig);
        }
    }
}

/* ---- packets ------------------------------------------------------------------ */

/* Worker of gdb thread id @tid (1-based), or -1; 0 and -1 mean "any"/"all" (-2). */
static int thread_index(struct gdb *g, const char *s, const char *end, bool *all)
{
    *all = false;
    if (end - s == 2 && s[0] == '-' && s[1] == '1') {
        *all = true;
        return -2;
    }
    uint64_t tid;
    if (!pvm_gdb_parse_hex(&s, end, &tid) || s != end)
        return -1;
    if (tid == 0)
        return -2;
    for (unsigned i = 0; i < g->nr; i++)
        if (g->w[i].v->id + 1 == tid)
            return (int)i;
    return -1;
}

/* Parse "ADDR,LEN" then @term; *p moves past @term. */
static bool parse_addr_len(const char **p, const char *end, char term, uint64_t *addr, uint64_t *len)
{
    if (!pvm_gdb_parse_hex(p, end, addr) || *p >= end || **p != ',')
        return false;
    (*p)++;
    if (!pvm_gdb_parse_hex(p, end, len))
        return false;
    if (term) {
        if (*p >= end || **p != term)
            return false;
        (*p)++;
    } else if (*p != end) {
        return false;
    }
    return true;
}

static pvm_vcpu *gvcpu(struct gdb *g)
{
    return g->w[g->gsel < g->nr ? g->gsel : 0].v;
}

static void cmd_read_regs(struct gdb *g)
{
    struct pvm_gdb_state st;
    if (pvm_gdb_state_read(gvcpu(g), &st) < 0) {
        send_str(g, "E01");
        return;
    }
    size_t n = 0;
    for (unsigned i = 0; i < pvm_gdb_nr_regs(); i++)
        n += pvm_gdb_reg_hex(&st, i, g->reply + n);
    send_packet(g, g->reply, n);
}

static void cmd_write_regs(struct gdb *g, const char *s, size_t len)
{
    struct pvm_gdb_state st;
    if (pvm_gdb_state_read(gvcpu(g), &st) < 0) {
        send_str(g, "E01");
        return;
    }
    for (size_t k = 0; k < len; k++) {
        char c = s[k];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == 'x')) {
            send_str(g, "E01");
            return;
        }
    }
    size_t off = 0;
    for (unsigned i = 0; i < pvm_gdb_nr_regs(); i++) {
        size_t n = 2u * pvm_gdb_reg_size(i);
        if (off + n > len)
            break; /* a short G sets the registers it holds */
        /* Registers that cannot be set here (x87, CS/SS, PVM state) are ignored, as 'x's. */
        (void)pvm_gdb_reg_set(&st, i, s + off);
        off += n;
    }
    send_str(g, pvm_gdb_state_write(gvcpu(g), &st) == 0 ? "OK" : "E01");
}

static void cmd_read_reg(struct gdb *g, const char *s, const char *end)
{
    uint64_t n;
    struct pvm_gdb_state st;
    if (!pvm_gdb_parse_hex(&s, end, &n) || s != end || n >= pvm_gdb_nr_regs()) {
        send_str(g, "E01");
        return;
    }
    if (pvm_gdb_state_read(gvcpu(g), &st) < 0) {
        send_str(g, "E01");
        return;
    }
    send_packet(g, g->reply, pvm_gdb_reg_hex(&st, (unsigned)n, g->reply));
}

static void cmd_write_reg(struct gdb *g, const char *s, const char *end)
{
    uint64_t n;
    struct pvm_gdb_state st;
    if (!pvm_gdb_parse_hex(&s, end, &n) || s >= end || *s != '=' || n >= pvm_gdb_nr_regs() ||
        (size_t)(end - s - 1) != 2u * pvm_gdb_reg_size((unsigned)n)) {
        send_str(g, "E01");
        return;
    }
    if (pvm_gdb_state_read(gvcpu(g), &st) < 0 || !pvm_gdb_reg_set(&st, (unsigned)n, s + 1) ||
        pvm_gdb_state_write(gvcpu(g), &st) < 0) {
        send_str(g, "E01");
        return;
    }
    send_str(g, "OK");
}

static void cmd_read_mem(struct gdb *g, const char *s, const char *end)
{
    uint64_t addr, len;
    uint8_t *buf = g->mem;
    if (!parse_addr_len(&s, end, 0, &addr, &len)) {
        send_str(g, "E01");
        return;
    }
    if (len > (PVM_GDB_PACKET_MAX - 1) / 2)
        len = (PVM_GDB_PACKET_MAX - 1) / 2; /* a shorter reply is allowed: gdb asks for the rest */
    size_t n = mem_access(g, gvcpu(g), addr, buf, (size_t)len, false);
    if (len && !n) {
        send_str(g, "E0e"); /* EFAULT */
        return;
    }
    bp_hide(g, addr, buf, n);
    pvm_gdb_hex_encode(g->reply, buf, n);
    send_packet(g, g->reply, 2 * n);
}

/* M (hex) and X (binary) writes. */
static void cmd_write_mem(struct gdb *g, char *s, char *end, bool binary)
{
    uint64_t addr, len;
    uint8_t *buf = g->mem;
    const char *p = s;
    if (!parse_addr_len(&p, end, ':', &addr, &len) || len > sizeof(g->mem)) {
        send_str(g, "E01");
        return;
    }
    size_t have = (size_t)(end - p);
    if (binary) {
        have = pvm_gdb_unescape((char *)p, have);
        if (have != len) {
            send_str(g, "E01");
            return;
        }
        memcpy(buf, p, (size_t)len);
    } else if (have != 2 * len || !pvm_gdb_hex_decode(p, buf, (size_t)len)) {
        send_str(g, "E01");
        return;
    }
    size_t n = mem_access(g, gvcpu(g), addr, buf, (size_t)len, true);
    bp_rearm(g, gvcpu(g), addr, n);
    send_str(g, n == len ? "OK" : "E0e");
}

static void cmd_breakpoint(struct gdb *g, const char *s, const char *end, bool insert)
{
    uint64_t addr, kind;
    if (s >= end || *s != '0') {
        send_str(g, ""); /* hardware breakpoints and watchpoints: not supported */
        return;
    }
    s++;
    if (s >= end || *s != ',') {
        send_str(g, "E01");
        return;
    }
    s++;
    /* "addr,kind" possibly followed by ";cond..." which we do not support (ignored). */
    const char *semi = memchr(s, ';', (size_t)(end - s));
    if (!parse_addr_len(&s, semi ? semi : end, 0, &addr, &kind)) {
        send_str(g, "E01");
        return;
    }
    bool ok = insert ? bp_insert(g, gvcpu(g), addr) : bp_remove(g, addr);
    send_str(g, ok ? "OK" : "E0e");
}

/* qXfer:features:read:target.xml:OFF,LEN */
static void cmd_xfer_features(struct gdb *g, const char *s, const char *end)
{
    static const char annex[] = "target.xml:";
    uint64_t off, len;
    if ((size_t)(end - s) < sizeof(annex) - 1 || memcmp(s, annex, sizeof(annex) - 1)) {
        send_str(g, "E00");
        return;
    }
    s += sizeof(annex) - 1;
    if (!parse_addr_len(&s, end, 0, &off, &len)) {
        send_str(g, "E01");
        return;
    }
    const char *xml = pvm_gdb_target_xml();
    size_t total = strlen(xml);
    if (off > total) {
        send_str(g, "E01");
        return;
    }
    size_t n = total - (size_t)off;
    if (len > PVM_GDB_PACKET_MAX - 1)
        len = PVM_GDB_PACKET_MAX - 1;
    if (n > len)
        n = (size_t)len;
    g->reply[0] = off + n < total ? 'm' : 'l';
    memcpy(g->reply + 1, xml + off, n);
    send_packet(g, g->reply, n + 1);
}

/* "monitor ..." (qRcmd): catch masks. */
static void cmd_monitor(struct gdb *g, const char *hex, const char *end)
{
    char cmd[256], msg[256];
    size_t n = (size_t)(end - hex) / 2;
    if ((size_t)(end - hex) % 2 || n >= sizeof(cmd) || !pvm_gdb_hex_decode(hex, cmd, n)) {
        send_str(g, "E01");
        return;
    }
    cmd[n] = '\0';
    char which[16];
    unsigned long long mask;
    int k = sscanf(cmd, "catch %15s %llx", which, &mask);
    if (k == 2 && mask <= UINT32_MAX && !(mask & (1u << 2)) && (!strcmp(which, "smod") || !strcmp(which, "umod"))) {
        if (which[0] == 's')
            g->o.catch_smod = (uint32_t)mask;
        else
            g->o.catch_umod = (uint32_t)mask;
    } else if (strcmp(cmd, "catch") != 0) {
        send_console(g, "monitor catch                 show the exception vectors that stop the guest\n"
                        "monitor catch smod|umod MASK  set them (hex bit mask of vectors; not bit 2)\n");
        send_str(g, strcmp(cmd, "help") ? "E01" : "OK");
        return;
    }
    snprintf(msg, sizeof(msg), "catch smod 0x%x umod 0x%x\n", g->o.catch_smod, g->o.catch_umod);
    send_console(g, msg);
    send_str(g, "OK");
}

static void cmd_thread_info(struct gdb *g)
{
    size_t n = 0;
    g->reply[n++] = 'm';
    for (unsigned i = 0; i < g->nr; i++)
        n += (size_t)snprintf(g->reply + n, sizeof(g->reply) - n, "%s%x", i ? "," : "", g->w[i].v->id + 1);
    send_packet(g, g->reply, n);
}

static void cmd_query(struct gdb *g, char *s, char *end)
{
    if (!strncmp(s, "qSupported", 10)) {
        g->swbreak = strstr(s, "swbreak+") != NULL;
        snprintf(g->reply, sizeof(g->reply), "PacketSize=%x;qXfer:features:read+;swbreak+", PVM_GDB_PACKET_MAX);
        send_str(g, g->reply);
    } else if (!strncmp(s, "qXfer:features:read:", 20)) {
        cmd_xfer_features(g, s + 20, end);
    } else if (!strcmp(s, "qfThreadInfo")) {
        cmd_thread_info(g);
    } else if (!strcmp(s, "qsThreadInfo")) {
        send_str(g, "l");
    } else if (!strcmp(s, "qC")) {
        snprintf(g->reply, sizeof(g->reply), "QC%x", gvcpu(g)->id + 1);
        send_str(g, g->reply);
    } else if (!strcmp(s, "qAttached")) {
        send_str(g, "1"); /* gdb detaches (the guest runs on) rather than kills when it quits */
    } else if (!strncmp(s, "qThreadExtraInfo,", 17)) {
        bool all;
        int i = thread_index(g, s + 17, end, &all);
        struct pvm_sregs sr;
        char text[64];
        if (i < 0 || pvm_vcpu_get_sregs(g->w[i].v, &sr) < 0) {
            send_str(g, "E01");
            return;
        }
        snprintf(text, sizeof(text), "vCPU %u (%s)", g->w[i].v->id, sr.mode == PVM_MODE_USER ? "umod" : "smod");
        pvm_gdb_hex_encode(g->reply, text, strlen(text));
        send_packet(g, g->reply, 2 * strlen(text));
    } else if (!strncmp(s, "qRcmd,", 6)) {
        cmd_monitor(g, s + 6, end);
    } else if (!strncmp(s, "qSymbol", 7)) {
        send_str(g, "OK");
    } else {
        send_str(g, "");
    }
}

/* Mark which workers run and how; returns false on a malformed packet. */
static bool parse_vcont(struct gdb *g, const char *s, const char *end)
{
    bool set[PVM_MAX_VCPUS] = { false };
    while (s < end) {
        if (*s++ != ';')
            return false;
        char act = s < end ? *s++ : 0;
        uint64_t sig = 0;
        if (act == 'C' || act == 'S') {
            if (!pvm_gdb_parse_hex(&s, end, &sig) || sig > 0xff)
                return false;
        } else if (act != 'c' && act != 's' && act != 't') {
            return false;
        }
        const char *stop = memchr(s, ';', (size_t)(end - s));
        if (!stop)
            stop = end;
        int only = -2;
        if (s < stop) {
            bool all;
            if (*s != ':')
                return false;
            only = thread_index(g, s + 1, stop, &all);
            if (only == -1)
                return false;
        }
        for (unsigned i = 0; i < g->nr; i++) {
            if (set[i] || (only >= 0 && (unsigned)only != i))
                continue;
            set[i] = true;
            if (act == 't')
                continue;
            g->w[i].go = true;
            g->w[i].step = act == 's' || act == 'S';
            g->w[i].pass = sig != 0;
        }
        s = stop;
    }
    return true;
}

/* Old-style c/s/C/S: step the Hc thread (or the selected one), continue all for c. */
static void plain_resume(struct gdb *g, char cmd, const char *s, const char *end)
{
    uint64_t sig = 0;
    if (cmd == 'C' || cmd == 'S')
        pvm_gdb_parse_hex(&s, end, &sig);
    bool step = cmd == 's' || cmd == 'S';
    unsigned t = g->csel < g->nr ? g->csel : (g->gsel < g->nr ? g->gsel : 0);
    for (unsigned i = 0; i < g->nr; i++) {
        if (step && i != t)
            continue;
        g->w[i].go = true;
        g->w[i].step = step;
        g->w[i].pass = i == t && sig != 0;
    }
}

/* One packet; returns false when the session ends. */
static bool handle_packet(struct gdb *g)
{
    char *s = g->rx.buf, *end = g->rx.buf + g->rx.len;
    bool all;
    int i;
    switch (s[0]) {
    case '?':
        stop_reply(g, g->gsel < g->nr ? g->gsel : 0, SIG_TRAP, false);
        send_str(g, g->reply);
        return true;
    case 'g':
        if (g->rx.len == 1)
            cmd_read_regs(g);
        else
            send_str(g, "");
        return true;
    case 'G':
        cmd_write_regs(g, s + 1, g->rx.len - 1);
        return true;
    case 'p':
        cmd_read_reg(g, s + 1, end);
        return true;
    case 'P':
        cmd_write_reg(g, s + 1, end);
        return true;
    case 'm':
        cmd_read_mem(g, s + 1, end);
        return true;
    case 'M':
        cmd_write_mem(g, s + 1, end, false);
        return true;
    case 'X':
        cmd_write_mem(g, s + 1, end, true);
        return true;
    case 'Z':
    case 'z':
        cmd_breakpoint(g, s + 1, end, s[0] == 'Z');
        return true;
    case 'H':
        if (g->rx.len < 3 || (s[1] != 'g' && s[1] != 'c') || (i = thread_index(g, s + 2, end, &all)) == -1) {
            send_str(g, "E01");
            return true;
        }
        if (s[1] == 'g')
            g->gsel = i >= 0 ? (unsigned)i : 0;
        else
            g->csel = i >= 0 ? (unsigned)i : UINT32_MAX;
        send_str(g, "OK");
        return true;
    case 'T':
        send_str(g, thread_index(g, s + 1, end, &all) >= 0 ? "OK" : "E01");
        return true;
    case 'q':
        cmd_query(g, s, end);
        return true;
    case 'v':
        if (!strcmp(s, "vCont?")) {
            send_str(g, "vCont;c;C;s;S;t");
            return true;
        }
        if (!strncmp(s, "vCont;", 6) || !strcmp(s, "vCont")) {
            /* Resume requests under g->lock: an idle worker may wake up spuriously. */
            pthread_mutex_lock(&g->lock);
            bool ok = parse_vcont(g, s + 5, end);
            if (!ok)
                for (unsigned k = 0; k < g->nr; k++)
                    g->w[k].go = false;
            pthread_mutex_unlock(&g->lock);
            if (!ok) {
                send_str(g, "E01");
                return true;
            }
            return resume_and_wait(g);
        }
        if (!strncmp(s, "vKill", 5)) {
            send_str(g, "OK");
            g->end = PVM_GDB_END_KILLED;
            return false;
        }
        send_str(g, ""); /* vMustReplyEmpty and everything else */
        return true;
    case 'c':
    case 'C':
    case 's':
    case 'S':
        pthread_mutex_lock(&g->lock);
        plain_resume(g, s[0], s + 1, end);
        pthread_mutex_unlock(&g->lock);
        return resume_and_wait(g);
    case 'D':
        send_str(g, "OK");
        g->end = PVM_GDB_END_DETACHED;
        return false;
    case 'k':
        g->end = PVM_GDB_END_KILLED; /* no reply (the GDB manual) */
        return false;
    default:
        send_str(g, "");
        return true;
    }
}

/* ---- the session ------------------------------------------------------------- */

static void end_session(struct gdb *g)
{
    pthread_mutex_lock(&g->lock);
    stop_all_locked(g);
    g->quit = true;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
    for (unsigned i = 0; i < g->nr; i++)
        if (g->w[i].started)
            pthread_join(g->w[i].th, NULL);
    while (g->nr_bps)
        bp_remove(g, g->bps[0].gva);
    for (unsigned i = 0; i < g->nr; i++)
        pvm_vcpu_set_guest_debug(g->w[i].v, NULL);
}

int pvm_gdb_serve(pvm_vm *vm, int fd, const struct pvm_gdb_options *opts, enum pvm_gdb_end *end, int *status)
{
    pvm__clear_error();
    if (!vm || fd < 0 || !end || !status)
        return pvm__error(PVM_EINVAL, "pvm_gdb_serve: NULL argument or bad fd");
    struct pvm_gdb_options o = PVM_GDB_OPTIONS_INIT;
    if (opts) {
        if (opts->version != PVM_GDB_OPTIONS_VERSION)
            return pvm__error(PVM_EVERSION, "pvm_gdb_serve: options version %u is not supported (expected %u)",
                              opts->version, PVM_GDB_OPTIONS_VERSION);
        if ((opts->catch_smod | opts->catch_umod) & (1u << 2))
            return pvm__error(PVM_EINVAL, "pvm_gdb_serve: vector 2 (NMI) is not an exception");
        o = *opts;
    }
    struct gdb *g = calloc(1, sizeof(*g));
    if (!g)
        return pvm__error(PVM_ENOMEM, "pvm_gdb_serve: out of memory");
    g->vm = vm;
    g->fd = fd;
    g->o = o;
    g->csel = UINT32_MAX;
    g->evfd = -1;
    int rc = 0;

    /* The vCPUs, listed while none may come or go (vm->lock). */
    pthread_mutex_lock(&vm->lock);
    g->w = calloc(vm->opts.max_vcpus ? vm->opts.max_vcpus : 1, sizeof(*g->w));
    for (uint32_t i = 0; g->w && i < vm->opts.max_vcpus; i++) {
        pvm_vcpu *v = vm->vcpus[i];
        if (v && v->ready)
            g->w[g->nr++] = (struct worker){ .g = g, .v = v };
    }
    pthread_mutex_unlock(&vm->lock);
    if (!g->w)
        rc = pvm__error(PVM_ENOMEM, "pvm_gdb_serve: out of memory");
    else if (!g->nr)
        rc = pvm__error(PVM_ESTATE, "pvm_gdb_serve: the VM has no vCPU");
    /* Debugging must work before gdb is told anything (a backend without it: ENOTSUP). */
    for (unsigned i = 0; rc == 0 && i < g->nr; i++) {
        struct pvm_guest_debug d = PVM_GUEST_DEBUG_INIT;
        d.catch_smod = o.catch_smod | (1u << 3);
        d.catch_umod = o.catch_umod | (1u << 3);
        rc = pvm_vcpu_set_guest_debug(g->w[i].v, &d);
    }
    if (rc == 0 && (g->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
        rc = pvm__error(PVM_ENOMEM, "pvm_gdb_serve: eventfd: %s", strerror(errno));
    if (rc == 0) {
        pthread_mutex_init(&g->lock, NULL);
        pthread_cond_init(&g->cond, NULL);
        for (unsigned i = 0; rc == 0 && i < g->nr; i++) {
            if (pthread_create(&g->w[i].th, NULL, worker_main, &g->w[i]) != 0)
                rc = pvm__error(PVM_ENOMEM, "pvm_gdb_serve: cannot start a thread for vCPU %u", g->w[i].v->id);
            else
                g->w[i].started = true;
        }
        if (rc == 0) {
            g->end = PVM_GDB_END_DISCONNECTED;
            for (;;) {
                enum pvm_gdb_rx_event ev = receive(g, -1);
                if (g->closed)
                    break;
                if (ev == PVM_GDB_RX_PACKET && !handle_packet(g))
                    break;
                if (g->closed)
                    break;
            }
            if (g->closed)
                g->end = PVM_GDB_END_DISCONNECTED;
            *end = g->end;
            *status = g->status;
        }
        end_session(g);
        pthread_cond_destroy(&g->cond);
        pthread_mutex_destroy(&g->lock);
    } else {
        for (unsigned i = 0; i < g->nr; i++)
            pvm_vcpu_set_guest_debug(g->w[i].v, NULL);
    }
    if (g->evfd >= 0)
        close(g->evfd);
    free(g->w);
    free(g);
    return rc;
}
