/*
 * test_examples - end to end: every example guest runs on the default
 * backend (through pvm-run or its own host program) and its exact output
 * and exit status are checked; so are pvm-run's failure messages.
 *
 * Where no VM with a vCPU can be created, every test prints SKIP with the
 * reason and the program exits with 77 (ctest's SKIP_RETURN_CODE).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pvm/pvm.h"
#include "testutil.h"

#define BIN PVM_TEST_BINARY_DIR "/examples/"
#define PVM_RUN BIN "pvm-run"
#define TIMEOUT_S 60

static char skip_reason[512];

struct result {
    char out[16384], err[16384];
    int status; /* exit status, or 128 + signal */
};

/* Run @argv with stdout/stderr captured; kills it after TIMEOUT_S seconds. */
static void run(struct result *r, char *const argv[])
{
    int po[2], pe[2];
    memset(r, 0, sizeof(*r));
    ck_assert(pipe2(po, O_CLOEXEC) == 0 && pipe2(pe, O_CLOEXEC) == 0);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    size_t lo = 0, le = 0;
    struct pollfd fds[2] = { { po[0], POLLIN, 0 }, { pe[0], POLLIN, 0 } };
    time_t deadline = time(NULL) + TIMEOUT_S;
    int open_fds = 2, killed = 0;
    while (open_fds > 0) {
        int n = poll(fds, 2, 1000);
        if (time(NULL) > deadline && !killed) {
            kill(pid, SIGKILL);
            killed = 1;
        }
        if (n <= 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP)))
                continue;
            char *buf = i ? r->err : r->out;
            size_t *len = i ? &le : &lo;
            size_t cap = (i ? sizeof(r->err) : sizeof(r->out)) - 1;
            char tmp[4096];
            ssize_t k = read(fds[i].fd, tmp, sizeof(tmp));
            if (k <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            size_t take = (size_t)k < cap - *len ? (size_t)k : cap - *len;
            memcpy(buf + *len, tmp, take);
            *len += take;
        }
    }
    int st;
    waitpid(pid, &st, 0);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    ck_assert_msg(!killed, "%s timed out after %d s; stdout:\n%s\nstderr:\n%s", argv[0], TIMEOUT_S,
                  r->out, r->err);
}

#define SKIP_IF_NO_BACKEND()                                                         \
    do {                                                                             \
        if (skip_reason[0]) {                                                        \
            printf("SKIP %s: %s\n", tcase_name(), skip_reason);                      \
            return;                                                                  \
        }                                                                            \
    } while (0)

static void expect(const struct result *r, const char *out, int status)
{
    ck_assert_msg(strcmp(r->out, out) == 0 && r->status == status,
                  "status %d (expected %d)\nstdout:\n%s\nexpected:\n%s\nstderr:\n%s", r->status,
                  status, r->out, out, r->err);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

START_TEST(hello)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ PVM_RUN, BIN "hello.elf", "a", "b", NULL });
    expect(&r, "Hello from a PVM guest on vCPU 0!\narg 1: a\narg 2: b\n", 2);
    ck_assert_str_eq(r.err, "");
    /* A second vCPU that has nothing to do stops without changing the outcome. */
    run(&r, (char *[]){ PVM_RUN, "--vcpus", "2", BIN "hello.elf", "x", "y", "z", NULL });
    expect(&r, "Hello from a PVM guest on vCPU 0!\narg 1: x\narg 2: y\narg 3: z\n", 3);
}
END_TEST

START_TEST(timer)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ PVM_RUN, "--timer-hz", "200", BIN "timer.elf", NULL });
    expect(&r, "timer: 5 ticks with irq_halt\ntimer: pending interrupt delivered on irq_enable\n", 0);
}
END_TEST

START_TEST(usermode)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ PVM_RUN, BIN "usermode.elf", NULL });
    expect(&r,
           "hello from user mode\n"
           "usermode: kernel mapped user page 0x310000000000 on demand\n"
           "usermode: user reports 84\n"
           "usermode: user access to 0x320000000000 refused (#PF error 0x5)\n"
           "usermode: user program ended with -14\n",
           0);
}
END_TEST

START_TEST(demand_paging)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ PVM_RUN, BIN "demand-paging.elf", NULL });
    expect(&r, "demand-paging: 16 page faults, 16 pages mapped, sum 120112\n", 0);
}
END_TEST

START_TEST(hostcall)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ BIN "hostcall-host", BIN "hostcall.elf", NULL });
    expect(&r, "host: the guest says \"HELLO FROM THE GUEST\"\nhostcall: host returned 20\n", 0);
    /* pvm-run does not know host call 0x100: -ENOSYS. */
    run(&r, (char *[]){ PVM_RUN, BIN "hostcall.elf", NULL });
    expect(&r, "hostcall: host returned -38\n", 1);
}
END_TEST

START_TEST(multi_vcpu)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ PVM_RUN, "--vcpus", "2", BIN "multi-vcpu.elf", NULL });
    expect(&r, "multi-vcpu: 2 vCPUs, counter 200000 (expected 200000)\n", 0);
    run(&r, (char *[]){ PVM_RUN, BIN "multi-vcpu.elf", NULL });
    expect(&r, "multi-vcpu: needs 2 vCPUs, got 1 (run with --vcpus 2)\n", 1);
}
END_TEST

START_TEST(embed)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ BIN "embed", BIN "embed-guest.elf", "50", NULL });
    expect(&r, "fib(50) = 12586269025\n", 0);
}
END_TEST

/* Without --gdb the debugging demo is an ordinary guest. */
START_TEST(gdb_demo)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ PVM_RUN, BIN "gdb-demo.elf", NULL });
    expect(&r, "gdb-demo: answer 84\n", 0);
    ck_assert_str_eq(r.err, "");
}
END_TEST

START_TEST(snapshot_loop)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ BIN "snapshot-loop", BIN "snap-server.elf", "100", "1000", "1000000", "10", NULL });
    expect(&r,
           "primes <= 100: 25 (requests served by this run: 1)\n"
           "primes <= 1000: 168 (requests served by this run: 1)\n"
           "primes <= 1000000: 78498 (requests served by this run: 1)\n"
           "primes <= 10: 4 (requests served by this run: 1)\n", 0);
}
END_TEST

/* pvm-run saves a snapshot at a host call; --restore answers that call again and runs on. */
START_TEST(pvm_run_snapshot_restore)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    char dir[] = "/tmp/pvm-run-snap.XXXXXX", file[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(file, sizeof(file), "%s/hostcall.snap", dir);
    run(&r, (char *[]){ PVM_RUN, "--snapshot-after-hostcall", "1", file, BIN "hostcall.elf", NULL });
    expect(&r, "hostcall: host returned -38\n", 1);
    ck_assert_msg(strstr(r.err, "snapshot after host call 1 saved to "), "stderr: %s", r.err);
    for (int i = 0; i < 2; i++) {
        run(&r, (char *[]){ PVM_RUN, "--restore", file, NULL });
        expect(&r, "hostcall: host returned -38\n", 1);
        ck_assert_str_eq(r.err, "");
    }
    /* Host call 2 is the guest's console write: the restored run prints that line again. */
    run(&r, (char *[]){ PVM_RUN, "--snapshot-after-hostcall", "2", file, BIN "hostcall.elf", NULL });
    expect(&r, "hostcall: host returned -38\n", 1);
    run(&r, (char *[]){ PVM_RUN, "--restore", file, NULL });
    expect(&r, "hostcall: host returned -38\n", 1);
    /* A corrupt file: a clear error and status 125. */
    FILE *f = fopen(file, "r+b");
    ck_assert_ptr_nonnull(f);
    fseek(f, 200, SEEK_SET);
    fputc(0x5a, f);
    fclose(f);
    run(&r, (char *[]){ PVM_RUN, "--restore", file, NULL });
    expect(&r, "", 125);
    ck_assert_msg(strstr(r.err, "checksum mismatch"), "stderr: %s", r.err);
    run(&r, (char *[]){ PVM_RUN, "--snapshot-after-hostcall", "1", NULL });
    ck_assert_int_eq(r.status, 2);
    unlink(file);
    rmdir(dir);
}
END_TEST

START_TEST(triple_fault)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ PVM_RUN, BIN "triple-fault.elf", NULL });
    expect(&r, "triple-fault: crashing on purpose\n", 124);
    ck_assert_msg(strstr(r.err, "pvm-run: guest triple fault on vCPU 0: ") && strstr(r.err, "(rip 0x"),
                  "stderr: %s", r.err);
    ck_assert_int_eq(count_lines(r.err), 1);
}
END_TEST

/* --core-on-crash: the crash also leaves an ELF core file, named on stderr. */
START_TEST(core_on_crash)
{
    SKIP_IF_NO_BACKEND();
    char dir[] = "/tmp/pvm-run-core-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    struct result r;
    run(&r, (char *[]){ PVM_RUN, "--core-on-crash", dir, BIN "triple-fault.elf", NULL });
    expect(&r, "triple-fault: crashing on purpose\n", 124);
    char want[128];
    snprintf(want, sizeof(want), "pvm-run: core written to %s/pvm-core.", dir);
    const char *at = strstr(r.err, want);
    ck_assert_msg(at, "stderr: %s", r.err);
    char path[256];
    ck_assert_int_eq(sscanf(at, "pvm-run: core written to %255s", path), 1);
    unsigned char hdr[18];
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fread(hdr, 1, sizeof(hdr), f), sizeof(hdr));
    fclose(f);
    ck_assert_int_eq(memcmp(hdr, "\177ELF", 4), 0);
    ck_assert_uint_eq(hdr[16] | hdr[17] << 8, 4); /* ET_CORE */
    unlink(path);
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

START_TEST(stats_and_trace)
{
    SKIP_IF_NO_BACKEND();
    struct result r;
    run(&r, (char *[]){ PVM_RUN, "--stats", "--trace", BIN "hello.elf", NULL });
    expect(&r, "Hello from a PVM guest on vCPU 0!\n", 0);
    ck_assert_msg(strstr(r.err, "[vcpu 0] exit hypercall nr=0x4c50564d00000001"), "%s", r.err);
    ck_assert_msg(strstr(r.err, "stats: run time") && strstr(r.err, "hypercall"), "%s", r.err);
}
END_TEST

/* ---- launcher failures: no backend needed beyond VM creation -------------- */

START_TEST(run_missing_file)
{
    struct result r;
    run(&r, (char *[]){ PVM_RUN, "/nonexistent/guest.elf", NULL });
    ck_assert_int_eq(r.status, 125);
    ck_assert_str_eq(r.err, "pvm-run: /nonexistent/guest.elf: No such file or directory\n");
}
END_TEST

START_TEST(run_bad_elf)
{
    struct result r;
    run(&r, (char *[]){ PVM_RUN, PVM_TEST_SOURCE_DIR "/tests/test_examples.c", NULL });
    ck_assert_int_eq(r.status, 125);
    ck_assert_int_eq(count_lines(r.err), 1);
    ck_assert_msg(strstr(r.err, "not an ELF file") || strstr(r.err, "cannot create a VM"), "%s", r.err);
}
END_TEST

START_TEST(run_usage)
{
    struct result r;
    run(&r, (char *[]){ PVM_RUN, "--help", NULL });
    ck_assert_int_eq(r.status, 0);
    const char *opts[] = { "--backend", "--mem", "--vcpus", "--timer-hz", "--trace", "--stats",
                           "--core-on-crash", "--gdb", "--help", "--version" };
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
        ck_assert_msg(strstr(r.out, opts[i]), "--help does not document %s", opts[i]);
    run(&r, (char *[]){ PVM_RUN, "--version", NULL });
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "pvm-run "));
    run(&r, (char *[]){ PVM_RUN, NULL });
    ck_assert_int_eq(r.status, 2);
    run(&r, (char *[]){ PVM_RUN, "--mem", "12x", BIN "hello.elf", NULL });
    ck_assert_int_eq(r.status, 2);
    ck_assert_int_eq(count_lines(r.err), 1);
    run(&r, (char *[]){ PVM_RUN, "--backend", "nope", BIN "hello.elf", NULL });
    ck_assert_int_eq(r.status, 2);
}
END_TEST

/* Can this machine run a guest at all?  Sets skip_reason if not. */
static void probe_backend(void)
{
    pvm_vm *vm = NULL;
    pvm_vcpu *vcpu = NULL;
    if (pvm_vm_create(&vm, NULL) < 0 || pvm_vcpu_create(&vcpu, vm, NULL) < 0)
        snprintf(skip_reason, sizeof(skip_reason), "default backend not usable: %s", pvm_last_error());
    pvm_vm_destroy(vm);
}

int main(void)
{
    probe_backend();
    Suite *s = suite_create("examples");
    TCase *t = tcase_create("examples");
    tcase_set_timeout(t, 4 * TIMEOUT_S);
    tcase_add_test(t, hello);
    tcase_add_test(t, timer);
    tcase_add_test(t, usermode);
    tcase_add_test(t, demand_paging);
    tcase_add_test(t, hostcall);
    tcase_add_test(t, multi_vcpu);
    tcase_add_test(t, embed);
    tcase_add_test(t, gdb_demo);
    tcase_add_test(t, triple_fault);
    tcase_add_test(t, core_on_crash);
    tcase_add_test(t, stats_and_trace);
    tcase_add_test(t, run_missing_file);
    tcase_add_test(t, run_bad_elf);
    tcase_add_test(t, run_usage);
    tcase_add_test(t, snapshot_loop);
    tcase_add_test(t, pvm_run_snapshot_restore);
    suite_add_tcase(s, t);
    int rc = pvm_test_run_suite(s);
    if (rc == 0 && skip_reason[0]) {
        printf("SKIP: %s\n", skip_reason);
        return 77;
    }
    return rc;
}
