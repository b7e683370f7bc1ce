/*
 * tests/test_gdb_e2e.c - end to end: `pvm-run --gdb` on real example guests
 * with Debian's gdb as the client, checking exactly what gdb prints
 * (breakpoint hit, backtrace, variables, a step, finish, threads, a caught
 * exception and a triple fault), and a raw client that sends garbage and
 * hangs up, which pvm-run survives.  Exits 77 (skip) after the rest if gdb
 * is not installed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define PVM_RUN PVM_TEST_BINARY_DIR "/examples/pvm-run"
#define BIN PVM_TEST_BINARY_DIR "/examples/"
#define SRC PVM_TEST_SOURCE_DIR

struct child {
    pid_t pid;
    int err_fd, out_fd;   /* its stderr and stdout */
    unsigned port;
};

/* Read from @fd until @want appears or it closes (10 s at most); returns what was read. */
static char *read_until(int fd, const char *want, char *buf, size_t cap)
{
    size_t n = strlen(buf);
    while (!strstr(buf, want) && n + 1 < cap) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 10000) != 1)
            break;
        ssize_t k = read(fd, buf + n, cap - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
        buf[n] = '\0';
    }
    return buf;
}

/* Start pvm-run --gdb 127.0.0.1:0 [extra] ELF and learn its port from stderr. */
static void start_pvm_run(struct child *c, const char *extra, const char *elf)
{
    int err[2], out[2];
    ck_assert_int_eq(pipe2(err, O_CLOEXEC), 0);
    ck_assert_int_eq(pipe2(out, O_CLOEXEC), 0);
    c->pid = fork();
    ck_assert_int_ge(c->pid, 0);
    if (c->pid == 0) {
        dup2(err[1], 2);
        dup2(out[1], 1);
        if (extra)
            execl(PVM_RUN, PVM_RUN, "--gdb", "127.0.0.1:0", extra, "2", elf, (char *)NULL);
        else
            execl(PVM_RUN, PVM_RUN, "--gdb", "127.0.0.1:0", elf, (char *)NULL);
        _exit(127);
    }
    close(err[1]);
    close(out[1]);
    c->err_fd = err[0];
    c->out_fd = out[0];
    char buf[256] = "";
    read_until(c->err_fd, "\n", buf, sizeof(buf));
    ck_assert_msg(sscanf(buf, "pvm-run: waiting for gdb on 127.0.0.1:%u\n", &c->port) == 1, "pvm-run said: %s", buf);
    ck_assert_uint_gt(c->port, 0);
}

/* Wait for pvm-run; returns its exit status (-1 if a signal ended it); @err gets the rest of its stderr. */
static int wait_pvm_run(struct child *c, char *err, size_t cap)
{
    int st;
    err[0] = '\0';
    read_until(c->err_fd, "\x01", err, cap); /* to EOF */
    ck_assert_int_eq(waitpid(c->pid, &st, 0), c->pid);
    close(c->err_fd);
    close(c->out_fd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool have_gdb(void)
{
    return system("command -v gdb >/dev/null 2>&1") == 0;
}

/* Run gdb -batch on @elf against @port with the -ex commands in @cmds; returns its output with 0x... masked. */
static char *run_gdb(const char *elf, unsigned port, const char *cmds)
{
    static char out[32768];
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "timeout 60 gdb -batch -nx %s -ex 'target remote 127.0.0.1:%u' %s 2>&1", elf, port, cmds);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    pclose(p);
    /* Addresses depend on the build: "0x4016c5" becomes "0x?". */
    static char masked[sizeof(out)];
    size_t w = 0;
    for (size_t r = 0; r < n;) {
        if (out[r] == '0' && r + 2 < n && out[r + 1] == 'x' && strchr("0123456789abcdef", out[r + 2]) && out[r + 2]) {
            memcpy(masked + w, "0x?", 3);
            w += 3;
            r += 2;
            while (r < n && out[r] && strchr("0123456789abcdef", out[r]))
                r++;
        } else {
            masked[w++] = out[r++];
        }
    }
    masked[w] = '\0';
    return masked;
}

/* Each of @lines (NULL-terminated) is a whole line of @out, in this order. */
static void expect_lines(const char *out, const char *const *lines)
{
    const char *at = out;
    for (unsigned i = 0; lines[i]; i++) {
        size_t n = strlen(lines[i]);
        const char *f = at;
        for (;;) {
            f = strstr(f, lines[i]);
            ck_assert_msg(f != NULL, "gdb output lacks line %u \"%s\" (in order); gdb said:\n%s", i, lines[i], out);
            if ((f == out || f[-1] == '\n') && (f[n] == '\n' || f[n] == '\0'))
                break;
            f++;
        }
        at = f + n;
    }
}

#define DEMO SRC "/examples/gdb-demo/gdb-demo.c"

START_TEST(gdb_session_on_gdb_demo)
{
    if (!have_gdb())
        return;
    struct child c;
    start_pvm_run(&c, NULL, BIN "gdb-demo.elf");
    const char *out = run_gdb(BIN "gdb-demo.elf", c.port,
                              "-ex 'break add_one' -ex continue -ex bt -ex 'print counter' -ex step "
                              "-ex 'print counter' -ex finish -ex 'print counter = 50' -ex 'print counter' "
                              "-ex 'print $pvm_mode' -ex 'info threads' -ex continue");
    const char *const want[] = {
        "Breakpoint 1 at 0x?: file " DEMO ", line 15.",
        "Breakpoint 1, add_one (x=41) at " DEMO ":15",
        "15\t    counter = x + 1;",
        "#0  add_one (x=41) at " DEMO ":15",
        "#1  0x? in compute (x=41) at " DEMO ":21",
        "#2  0x? in main () at " DEMO ":27",
        "$1 = 41",
        "16\t    return counter;",
        "$2 = 42",
        "0x? in compute (x=41) at " DEMO ":21",
        "21\t    int y = add_one(x);",
        "Value returned is $3 = 42",
        "$4 = 50",
        "$5 = 50",
        "$6 = 0",
        "* 1    Thread 1 (vCPU 0 (smod)) 0x? in compute (x=41) at " DEMO ":21",
        "[Inferior 1 (Remote target) exited normally]",
        NULL,
    };
    expect_lines(out, want);
    char err[4096];
    ck_assert_int_eq(wait_pvm_run(&c, err, sizeof(err)), 0);
}
END_TEST

#define MULTI SRC "/examples/multi-vcpu/multi-vcpu.c"

START_TEST(gdb_threads_on_multi_vcpu)
{
    if (!have_gdb())
        return;
    struct child c;
    start_pvm_run(&c, "--vcpus", BIN "multi-vcpu.elf");
    const char *out = run_gdb(BIN "multi-vcpu.elf", c.port,
                              "-ex 'break multi-vcpu.c:pvm_secondary_main' -ex continue -ex 'print id' "
                              "-ex 'thread 1' -ex 'print $_thread' -ex delete -ex continue");
    const char *const want[] = {
        "[Switching to Thread 2]",
        "Thread 2 hit Breakpoint 1, pvm_secondary_main (id=1) at " MULTI ":20",
        "$1 = 1",
        "[Switching to thread 1 (Thread 1)]",
        "$2 = 1",
        "[Inferior 1 (Remote target) exited normally]",
        NULL,
    };
    expect_lines(out, want);
    char err[4096];
    ck_assert_int_eq(wait_pvm_run(&c, err, sizeof(err)), 0);
}
END_TEST

#define TRIPLE SRC "/examples/triple-fault/triple-fault.c"

START_TEST(gdb_stops_on_exceptions_and_triple_fault)
{
    if (!have_gdb())
        return;
    struct child c;
    start_pvm_run(&c, NULL, BIN "triple-fault.elf");
    /* #UD in smod is caught; passing it on (gdb passes SIGILL) triple-faults the guest. */
    const char *out = run_gdb(BIN "triple-fault.elf", c.port, "-ex continue -ex 'bt 1' -ex continue -ex continue");
    const char *const want[] = {
        "Program received signal SIGILL, Illegal instruction.",
        "#0  0x? in main () at " TRIPLE ":12",
        "vCPU 0: triple fault: supervisor exception (vector 6): cannot write the 64-byte frame at 0x? (RSP 0x?)",
        "Program received signal SIGABRT, Aborted.",
        "Program terminated with signal SIGABRT, Aborted.",
        NULL,
    };
    expect_lines(out, want);
    char err[4096];
    ck_assert_int_eq(wait_pvm_run(&c, err, sizeof(err)), 124);
    ck_assert_msg(strstr(err, "pvm-run: guest crashed under gdb\n"), "pvm-run said: %s", err);
}
END_TEST

/* A client that is not gdb: garbage, a bad checksum, one good packet, then gone. */
START_TEST(pvm_run_survives_a_garbage_client)
{
    struct child c;
    start_pvm_run(&c, NULL, BIN "gdb-demo.elf");
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)c.port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    const char garbage[] = "\xff\x00\x7f}}}##$$$#zz";
    ck_assert_int_eq(send(fd, garbage, sizeof(garbage) - 1, MSG_NOSIGNAL), (ssize_t)sizeof(garbage) - 1);
    char buf[64] = "";
    read_until(fd, "-", buf, sizeof(buf));
    ck_assert_str_eq(buf, "-");
    ck_assert_int_eq(send(fd, "$?#3f", 5, MSG_NOSIGNAL), 5);
    read_until(fd, "#", buf, sizeof(buf));
    size_t want = (size_t)(strchr(buf, '#') - buf) + 3; /* and the two checksum digits */
    read_until(fd, "\x01", buf, want + 1);
    ck_assert_str_eq(buf, "-+$T05thread:1;#d7");
    ck_assert_int_eq(send(fd, "$m4016", 6, MSG_NOSIGNAL), 6); /* half a packet, then gone */
    close(fd);
    char err[4096];
    ck_assert_int_eq(wait_pvm_run(&c, err, sizeof(err)), 124);
    ck_assert_str_eq(err, "pvm-run: gdb disconnected; guest stopped\n");
}
END_TEST

START_TEST(bad_gdb_address)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        execl(PVM_RUN, PVM_RUN, "--gdb", "localhost:99999", BIN "gdb-demo.elf", (char *)NULL);
        _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 2);
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("gdb_e2e");
    TCase *tc = tcase_create("gdb_e2e");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, gdb_session_on_gdb_demo);
    tcase_add_test(tc, gdb_threads_on_multi_vcpu);
    tcase_add_test(tc, gdb_stops_on_exceptions_and_triple_fault);
    tcase_add_test(tc, pvm_run_survives_a_garbage_client);
    tcase_add_test(tc, bad_gdb_address);
    suite_add_tcase(s, tc);
    int rc = pvm_test_run_suite(s);
    if (rc == 0 && !have_gdb()) {
        printf("gdb_e2e: no gdb on PATH: the gdb sessions were skipped\n");
        return 77;
    }
    return rc;
}
