/*
 * tests/test_gdbstub.c - pvm_gdb_serve() spoken to byte by byte over a
 * socketpair, on tiny guests (backend: PVM_TEST_BACKEND, native by
 * default): replies to every supported packet, breakpoints in guest RAM and
 * hidden from reads, steps, Ctrl-C, caught exceptions, detach, and clients
 * that send garbage or vanish.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/gdb_packet.h"
#include "guestvm.h"
#include "testutil.h"

extern const uint8_t g_loop_2[], g_loop_bp[], g_loop_spin[], g_loop_ud[];
GVM_CODE_BLOCK(g_loop,
    "nop\n nop\n"
    ".globl g_loop_2\ng_loop_2:\n mov $0x5a, %rbx\n"
    ".globl g_loop_bp\ng_loop_bp:\n mov $0x77, %rcx\n"
    ".globl g_loop_spin\ng_loop_spin:\n cmp $0, %rdx\n je g_loop_spin\n"
    ".globl g_loop_ud\ng_loop_ud:\n ud2\n");

static uint64_t gaddr(const uint8_t *label)
{
    return GVM_CODE + (uint64_t)(label - g_loop_start);
}

struct session {
    struct gvm g;
    int fd;            /* our end */
    pthread_t th;
    int rc, status;
    enum pvm_gdb_end end;
    int peer;
};

static void *serve(void *arg)
{
    struct session *s = arg;
    s->rc = pvm_gdb_serve(s->g.vm, s->peer, NULL, &s->end, &s->status);
    return NULL;
}

static void start(struct session *s)
{
    int sv[2];
    memset(s, 0, sizeof(*s));
    gvm_boot(&s->g, g_loop_start, g_loop_end);
    struct pvm_regs r;
    gvm_regs(&s->g, &r);
    r.rax = 0x1122334455667788ull;
    ck_assert_int_eq(pvm_vcpu_set_regs(s->g.cpu, &r), 0);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    s->fd = sv[0];
    s->peer = sv[1];
    ck_assert_int_eq(pthread_create(&s->th, NULL, serve, s), 0);
}

/* Wait for the session to end; returns how. */
static enum pvm_gdb_end finish(struct session *s)
{
    pthread_join(s->th, NULL);
    ck_assert_int_eq(s->rc, 0);
    close(s->peer);
    return s->end;
}

static void put(struct session *s, const char *raw)
{
    ck_assert_int_eq(send(s->fd, raw, strlen(raw), MSG_NOSIGNAL), (ssize_t)strlen(raw));
}

static int getbyte(struct session *s)
{
    struct pollfd p = { .fd = s->fd, .events = POLLIN };
    ck_assert_int_eq(poll(&p, 1, 20000), 1);
    uint8_t c;
    ck_assert_int_eq(recv(s->fd, &c, 1, 0), 1);
    return c;
}

/* Read one packet (acking it); returns its body (static storage). */
static const char *get_packet(struct session *s)
{
    static struct pvm_gdb_rx rx;
    memset(&rx, 0, sizeof(rx));
    for (;;) {
        enum pvm_gdb_rx_event e = pvm_gdb_rx_byte(&rx, (uint8_t)getbyte(s));
        ck_assert_int_ne(e, PVM_GDB_RX_BAD);
        if (e == PVM_GDB_RX_PACKET)
            break;
    }
    put(s, "+");
    return rx.buf;
}

/* Send @body as a packet, expect the '+', return the reply. */
static const char *xchg(struct session *s, const char *body)
{
    char frame[4200];
    size_t n = pvm_gdb_frame(frame, sizeof(frame), body, strlen(body));
    ck_assert_uint_gt(n, 0);
    frame[n] = '\0';
    put(s, frame);
    ck_assert_int_eq(getbyte(s), '+');
    return get_packet(s);
}

/* Send @body as a packet and expect only the '+'. */
static void send_only(struct session *s, const char *body)
{
    char frame[64];
    size_t n = pvm_gdb_frame(frame, sizeof(frame), body, strlen(body));
    ck_assert_uint_gt(n, 0);
    frame[n] = '\0';
    put(s, frame);
    ck_assert_int_eq(getbyte(s), '+');
}

#define XCHG_EQ(s, body, want) ck_assert_str_eq(xchg(s, body), want)

static uint64_t reg(struct session *s, unsigned n)
{
    char q[16];
    snprintf(q, sizeof(q), "p%x", n);
    const char *hex = xchg(s, q);
    ck_assert_uint_eq(strlen(hex), 16);
    uint8_t le[8];
    ck_assert(pvm_gdb_hex_decode(hex, le, 8));
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | le[i];
    return v;
}

START_TEST(queries_and_registers)
{
    struct session s;
    start(&s);
    XCHG_EQ(&s, "qSupported:multiprocess+;swbreak+;xmlRegisters=i386", "PacketSize=4000;qXfer:features:read+;swbreak+");
    XCHG_EQ(&s, "?", "T05thread:1;");
    XCHG_EQ(&s, "vMustReplyEmpty", "");
    XCHG_EQ(&s, "qfThreadInfo", "m1");
    XCHG_EQ(&s, "qsThreadInfo", "l");
    XCHG_EQ(&s, "qC", "QC1");
    XCHG_EQ(&s, "qAttached", "1");
    XCHG_EQ(&s, "Hg1", "OK");
    XCHG_EQ(&s, "Hc-1", "OK");
    XCHG_EQ(&s, "Hg2", "E01");
    XCHG_EQ(&s, "T1", "OK");
    XCHG_EQ(&s, "T2", "E01");
    XCHG_EQ(&s, "vCont?", "vCont;c;C;s;S;t");
    XCHG_EQ(&s, "qThreadExtraInfo,1", "7643505520302028736d6f6429"); /* "vCPU 0 (smod)" */
    XCHG_EQ(&s, "qXfer:features:read:target.xml:0,10", "m<?xml version=\"1");
    XCHG_EQ(&s, "qXfer:features:read:other.xml:0,10", "E00");
    XCHG_EQ(&s, "Z1,100000,1", "");  /* hardware breakpoints: not supported */
    XCHG_EQ(&s, "qNoSuchThing", "");

    /* monitor catch: the masks as an 'O' console packet, then OK. */
    char hex[256];
    const char *say = "catch smod 0x6041 umod 0x0\n";
    pvm_gdb_hex_encode(hex + 1, say, strlen(say));
    hex[0] = 'O';
    hex[1 + 2 * strlen(say)] = '\0';
    XCHG_EQ(&s, "qRcmd,6361746368", hex);                  /* "catch" */
    ck_assert_str_eq(get_packet(&s), "OK");
    say = "catch smod 0x6041 umod 0x4000\n";
    pvm_gdb_hex_encode(hex + 1, say, strlen(say));
    hex[1 + 2 * strlen(say)] = '\0';
    XCHG_EQ(&s, "qRcmd,636174636820756d6f642034303030", hex); /* "catch umod 4000" */
    ck_assert_str_eq(get_packet(&s), "OK");
    ck_assert_int_eq(xchg(&s, "qRcmd,636174636820756d6f642034")[0], 'O'); /* "catch umod 4": bit 2, refused */
    ck_assert_str_eq(get_packet(&s), "E01");
    XCHG_EQ(&s, "qRcmd,6", "E01");                         /* odd hex */

    /* 'g': rax first, little-endian; x87 unavailable ('x'). */
    const char *gr = xchg(&s, "g");
    ck_assert_uint_eq(strlen(gr), 2 * (16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 2 * 8 + 12 * 8));
    ck_assert_int_eq(strncmp(gr, "8877665544332211", 16), 0);
    ck_assert_int_eq(strncmp(gr + 2 * (16 * 8 + 8 + 4 + 6 * 4), "xxxxxxxxxxxxxxxxxxxx", 20), 0);
    ck_assert_uint_eq(reg(&s, 16), GVM_CODE);              /* rip */
    ck_assert_uint_eq(reg(&s, 7), GVM_STACK_TOP);          /* rsp */
    XCHG_EQ(&s, "p11", "02000000");                        /* eflags: IF clear in smod at boot */
    XCHG_EQ(&s, "p2a", "0000000000000000");                /* pvm_mode: smod */
    XCHG_EQ(&s, "P0=efcdab8967452301", "OK");
    ck_assert_uint_eq(reg(&s, 0), 0x0123456789abcdefull);
    XCHG_EQ(&s, "P2a=0100000000000000", "E01");           /* read-only */
    XCHG_EQ(&s, "P0=1234", "E01");                         /* wrong size */
    XCHG_EQ(&s, "P0=zz23456789abcdef", "E01");             /* not hex */
    XCHG_EQ(&s, "p99", "E01");
    XCHG_EQ(&s, "p10000000000000000", "E01");              /* 17 digits */
    struct pvm_regs r;
    send_only(&s, "k");                                    /* no reply (the GDB manual) */
    ck_assert_int_eq(finish(&s), PVM_GDB_END_KILLED);
    gvm_regs(&s.g, &r);
    ck_assert_uint_eq(r.rax, 0x0123456789abcdefull);
    close(s.fd);
    gvm_fini(&s.g);
}
END_TEST

START_TEST(memory_and_breakpoints)
{
    struct session s;
    start(&s);
    char want[64];
    pvm_gdb_hex_encode(want, g_loop_start, 4);
    want[8] = '\0';
    XCHG_EQ(&s, "m100000,4", want);
    XCHG_EQ(&s, "m0,4", "E0e");                    /* not mapped */
    XCHG_EQ(&s, "m100000", "E01");
    XCHG_EQ(&s, "mzz,4", "E01");
    XCHG_EQ(&s, "m100000,0", "");

    /* Z0: an INT3 in guest RAM, invisible to reads; z0 puts the byte back. */
    uint64_t bp = gaddr(g_loop_bp);
    uint8_t orig = s.g.ram[bp];
    char pkt[64];
    snprintf(pkt, sizeof(pkt), "Z0,%llx,1", (unsigned long long)bp);
    XCHG_EQ(&s, pkt, "OK");
    ck_assert_uint_eq(s.g.ram[bp], 0xcc);
    snprintf(pkt, sizeof(pkt), "m%llx,1", (unsigned long long)bp);
    snprintf(want, sizeof(want), "%02x", orig);
    XCHG_EQ(&s, pkt, want);

    /* Writes: M (hex), X (binary, escaped); over a breakpoint the INT3 stays and the byte is remembered. */
    XCHG_EQ(&s, "M106000,4:deadbeef", "OK");
    ck_assert_int_eq(memcmp(s.g.ram + 0x106000, "\xde\xad\xbe\xef", 4), 0);
    XCHG_EQ(&s, "X106004,2:#}", "OK");           /* sent escaped: "}\x03}]" */
    ck_assert_int_eq(memcmp(s.g.ram + 0x106004, "#}", 2), 0);
    XCHG_EQ(&s, "X106004,3:ab", "E01");            /* length mismatch */
    XCHG_EQ(&s, "M106000,2:dead00", "E01");
    XCHG_EQ(&s, "M106000,1:zz", "E01");
    snprintf(pkt, sizeof(pkt), "M%llx,1:90", (unsigned long long)bp);
    XCHG_EQ(&s, pkt, "OK");
    ck_assert_uint_eq(s.g.ram[bp], 0xcc);
    snprintf(pkt, sizeof(pkt), "m%llx,1", (unsigned long long)bp);
    XCHG_EQ(&s, pkt, "90");
    snprintf(pkt, sizeof(pkt), "M%llx,1:%02x", (unsigned long long)bp, orig);
    XCHG_EQ(&s, pkt, "OK");

    /* Continue to it: PC at the breakpoint, "swbreak" as the client asked. */
    XCHG_EQ(&s, "qSupported:swbreak+", "PacketSize=4000;qXfer:features:read+;swbreak+");
    XCHG_EQ(&s, "vCont;c", "T05thread:1;swbreak:;");
    ck_assert_uint_eq(reg(&s, 16), bp);
    ck_assert_uint_eq(reg(&s, 1), 0x5a); /* rbx: the instruction before it ran */

    /* Step off it (gdb lifts the breakpoint first): one instruction. */
    snprintf(pkt, sizeof(pkt), "z0,%llx,1", (unsigned long long)bp);
    XCHG_EQ(&s, pkt, "OK");
    ck_assert_uint_eq(s.g.ram[bp], orig);
    XCHG_EQ(&s, pkt, "E0e");                        /* not there any more */
    XCHG_EQ(&s, "vCont;s:1", "T05thread:1;");
    ck_assert_uint_eq(reg(&s, 16), gaddr(g_loop_spin));
    ck_assert_uint_eq(reg(&s, 2), 0x77);

    /* Spinning: Ctrl-C stops it. */
    snprintf(pkt, sizeof(pkt), "Z0,%llx,1", (unsigned long long)bp);
    XCHG_EQ(&s, pkt, "OK");
    send_only(&s, "vCont;c");
    usleep(50000);
    put(&s, "\x03");
    ck_assert_str_eq(get_packet(&s), "T02thread:1;");
    uint64_t rip = reg(&s, 16);
    ck_assert(rip == gaddr(g_loop_spin) || rip == gaddr(g_loop_spin) + 4);

    /* Out of the loop into the ud2: caught (#UD in smod), SIGILL, PC at it. */
    XCHG_EQ(&s, "P3=0100000000000000", "OK");    /* rdx = 1 */
    XCHG_EQ(&s, "c", "T04thread:1;");
    ck_assert_uint_eq(reg(&s, 16), gaddr(g_loop_ud));

    /* Detach: breakpoints out of guest memory, debugging off, the guest runs on. */
    XCHG_EQ(&s, "D", "OK");
    ck_assert_int_eq(finish(&s), PVM_GDB_END_DETACHED);
    ck_assert_uint_eq(s.g.ram[bp], orig);
    struct pvm_exit e;
    gvm_run(&s.g, &e);
    gvm_expect_hc(&e, GVM_HC_REPORT_EXC); /* the guest's own #UD handler */
    close(s.fd);
    gvm_fini(&s.g);
}
END_TEST

START_TEST(bad_packets_and_disconnect)
{
    struct session s;
    start(&s);
    uint64_t bp = gaddr(g_loop_bp);
    uint8_t orig = s.g.ram[bp];
    put(&s, "$?#00");                   /* bad checksum */
    ck_assert_int_eq(getbyte(&s), '-');
    put(&s, "$?#zz");                   /* bad digits */
    ck_assert_int_eq(getbyte(&s), '-');
    put(&s, "garbage without a dollar");
    XCHG_EQ(&s, "!", "");               /* unknown: empty reply, and the stub still answers */
    put(&s, "-");                       /* a NAK: the last reply again */
    ck_assert_str_eq(get_packet(&s), "");
    /* An over-long packet: '-'. */
    char *big = malloc(PVM_GDB_PACKET_MAX + 16);
    memset(big, 'm', PVM_GDB_PACKET_MAX + 10);
    big[0] = '$';
    memcpy(big + PVM_GDB_PACKET_MAX + 5, "#00", 4);
    put(&s, big);
    free(big);
    ck_assert_int_eq(getbyte(&s), '-');
    char pkt[64];
    snprintf(pkt, sizeof(pkt), "Z0,%llx,1", (unsigned long long)bp);
    XCHG_EQ(&s, pkt, "OK");
    /* Gone in the middle of a packet: the session ends, the breakpoint is removed. */
    put(&s, "$m1000");
    close(s.fd);
    ck_assert_int_eq(finish(&s), PVM_GDB_END_DISCONNECTED);
    ck_assert_uint_eq(s.g.ram[bp], orig);
    gvm_fini(&s.g);
}
END_TEST

START_TEST(disconnect_while_running)
{
    struct session s;
    start(&s);
    /* Start in the spin loop, so that wherever the guest is when we hang up is known. */
    char pkt[64];
    uint64_t spin = gaddr(g_loop_spin);
    snprintf(pkt, sizeof(pkt), "P10=%016llx", (unsigned long long)__builtin_bswap64(spin));
    XCHG_EQ(&s, pkt, "OK");
    send_only(&s, "c");
    usleep(50000);
    close(s.fd);
    ck_assert_int_eq(finish(&s), PVM_GDB_END_DISCONNECTED);
    struct pvm_regs r;
    gvm_regs(&s.g, &r); /* stopped: the accessors work */
    ck_assert(r.rip >= gaddr(g_loop_spin) && r.rip <= gaddr(g_loop_spin) + 4);
    gvm_fini(&s.g);
}
END_TEST

START_TEST(bad_arguments)
{
    struct gvm g;
    enum pvm_gdb_end end;
    int status;
    gvm_boot(&g, g_loop_start, g_loop_end);
    ck_assert_int_eq(pvm_gdb_serve(NULL, 0, NULL, &end, &status), PVM_EINVAL);
    ck_assert_int_eq(pvm_gdb_serve(g.vm, -1, NULL, &end, &status), PVM_EINVAL);
    struct pvm_gdb_options o = PVM_GDB_OPTIONS_INIT;
    o.version = 0;
    ck_assert_int_eq(pvm_gdb_serve(g.vm, 0, &o, &end, &status), PVM_EVERSION);
    o.version = PVM_GDB_OPTIONS_VERSION;
    o.catch_umod = 1u << 2;
    ck_assert_int_eq(pvm_gdb_serve(g.vm, 0, &o, &end, &status), PVM_EINVAL);
    gvm_fini(&g);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gdbstub");
    TCase *tc = tcase_create("gdbstub");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, queries_and_registers);
    tcase_add_test(tc, memory_and_breakpoints);
    tcase_add_test(tc, bad_packets_and_disconnect);
    tcase_add_test(tc, disconnect_while_running);
    tcase_add_test(tc, bad_arguments);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
