/*
 * tests/test_stub.c - stub processes (lib/backends/native/stub.h): traps with
 * exact registers, kicks, death, containment, leaks, lifetime (outliving the
 * creating thread, not the library process), and round-trip costs.
 *
 * Guests are hand-assembled x86-64 bytes in a memfd mapped at CODE (r-x) and
 * DATA (rw-).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "backends/native/stub.h"
#include "backends/native/stub/stub_abi.h"
#include "pvm/pvm.h"
#include "testutil.h"

#define CODE 0x400000ull
#define DATA 0x600000ull
#define DATA_OFF 0x10000ull
#define RAM_SIZE 0x800000ull
#define KICK SIGUSR2

enum { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15 };

struct guest {
    int memfd;
    int linkfd;         /* the VM's link memfd (stub_abi.h NSTUB_FD_LINK): a pooled stub needs one */
    uint8_t *ram;
    struct nstub *s;
    struct nstub_regs r;
    struct nstub_trap t;
};

static void guest_code(struct guest *g, const void *code, size_t len)
{
    memset(g->ram, 0xcc, 0x1000);
    memcpy(g->ram, code, len);
}

/* @trust_maps: no mapping approval (struct nstub_config), to show what it stops. */
static void guest_init_ex(struct guest *g, const void *code, size_t len, bool trust_maps)
{
    char err[256] = "";
    memset(g, 0, sizeof(*g));
    g->memfd = memfd_create("test-guest", MFD_CLOEXEC);
    ck_assert_int_ge(g->memfd, 0);
    ck_assert_int_eq(ftruncate(g->memfd, RAM_SIZE), 0);
    g->ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, g->memfd, 0);
    ck_assert_ptr_ne(g->ram, MAP_FAILED);
    guest_code(g, code, len);
    g->linkfd = memfd_create("test-link", MFD_CLOEXEC);
    ck_assert_int_ge(g->linkfd, 0);
    ck_assert_int_eq(ftruncate(g->linkfd, NSTUB_LINK_SIZE), 0);
    struct nstub_config cfg = { .memfd = g->memfd, .kick_signal = KICK, .trust_maps = trust_maps,
                                .link_memfd = g->linkfd };
    int rc = nstub_create(&g->s, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "nstub_create: %d %s", rc, err);
    ck_assert_int_eq(nstub_map(g->s, CODE, 0x1000, 0, PROT_READ | PROT_EXEC), 0);
    ck_assert_int_eq(nstub_map(g->s, DATA, 0x1000, DATA_OFF, PROT_READ | PROT_WRITE), 0);
    memset(&g->r, 0, sizeof(g->r));
    g->r.rip = CODE;
    g->r.gpr[RSP] = DATA + 0x1000;
    g->r.rflags = 0x202;
    g->r.cs = 0x33;
    g->r.ss = 0x2b;
}

static void guest_init(struct guest *g, const void *code, size_t len)
{
    guest_init_ex(g, code, len, false);
}

static void guest_fini(struct guest *g)
{
    nstub_destroy(g->s);
    munmap(g->ram, RAM_SIZE);
    close(g->memfd);
    close(g->linkfd);
}

static void run(struct guest *g)
{
    ck_assert_int_eq(nstub_run(g->s, &g->r, &g->t), 0);
}

static void expect_fault(struct guest *g, uint32_t vector, uint64_t rip)
{
    ck_assert_msg(g->t.kind == NSTUB_TRAP_FAULT, "kind %u (signal %d, %s)", g->t.kind, g->t.signo, g->t.msg);
    ck_assert_uint_eq(g->t.vector, vector);
    ck_assert_uint_eq(g->r.rip, rip);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Create and destroy one stub, so that the per-process image memfd exists before fds are counted. */
static void warm_up(void)
{
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0x0f, 0x05 }, 2);
    guest_fini(&g);
}

/* ---- traps ------------------------------------------------------------------ */

START_TEST(test_syscall_trap)
{
    static const uint8_t code[] = { 0xb8, 0x27, 0, 0, 0, 0x0f, 0x05 }; /* mov eax,39; syscall */
    struct guest g;
    guest_init(&g, code, sizeof(code));
    for (int i = 0; i < 16; i++)
        if (i != RSP)
            g.r.gpr[i] = 0x1111111111111111ull * (uint64_t)(i + 1) ^ 0x0123456789abcdefull;
    struct nstub_regs in = g.r;
    run(&g);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL, "kind %u %s", g.t.kind, g.t.msg);
    ck_assert_int_eq(g.t.signo, SIGSYS);
    ck_assert_uint_eq(g.r.gpr[RAX], 39);
    ck_assert_uint_eq(g.r.rip, CODE + 7);
    ck_assert_uint_eq(g.r.gpr[RCX], CODE + 7);
    ck_assert_uint_eq(g.r.gpr[R11] & ~0x10000ull, 0x202);
    ck_assert_uint_eq(g.r.rflags & 0xfff, 0x202 & 0xfff);
    ck_assert_uint_eq(g.r.cs, 0x33);
    ck_assert_uint_eq(g.r.ss, 0x2b);
    for (int i = 0; i < 16; i++)
        if (i != RAX && i != RCX && i != R11)
            ck_assert_msg(g.r.gpr[i] == in.gpr[i], "gpr %d: %#llx != %#llx", i, (unsigned long long)g.r.gpr[i],
                          (unsigned long long)in.gpr[i]);
    guest_fini(&g);
}
END_TEST

START_TEST(test_page_faults)
{
    struct guest g;
    /* mov rax,[0x800000] (not mapped) */
    static const uint8_t rd[] = { 0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x80, 0x00 };
    guest_init(&g, rd, sizeof(rd));
    run(&g);
    expect_fault(&g, 14, CODE);
    ck_assert_uint_eq(g.t.cr2, 0x800000);
    ck_assert_uint_eq(g.t.error_code, 0x4);   /* user, read, not present */

    /* mov [0x400000],rax (write to the r-x code page) */
    static const uint8_t wr[] = { 0x48, 0x89, 0x04, 0x25, 0x00, 0x00, 0x40, 0x00 };
    guest_code(&g, wr, sizeof(wr));
    g.r.rip = CODE;
    run(&g);
    expect_fault(&g, 14, CODE);
    ck_assert_uint_eq(g.t.cr2, CODE);
    ck_assert_uint_eq(g.t.error_code, 0x7);   /* user, write, present */

    /* jump to the non-executable data page */
    g.r.rip = DATA + 0x10;
    run(&g);
    expect_fault(&g, 14, DATA + 0x10);
    ck_assert_uint_eq(g.t.cr2, DATA + 0x10);
    ck_assert_uint_eq(g.t.error_code, 0x15);  /* user, instruction fetch, present */

    /* map the page and resume at the faulting instruction: the read now succeeds */
    guest_code(&g, (const uint8_t[]){ 0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x80, 0x00, 0x0f, 0x05 }, 10);
    memcpy(g.ram + 0x20000, "\x88\x77\x66\x55\x44\x33\x22\x11", 8);
    ck_assert_int_eq(nstub_map(g.s, 0x800000, 0x1000, 0x20000, PROT_READ), 0);
    g.r.rip = CODE;
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    ck_assert_uint_eq(g.r.gpr[RAX], 0x1122334455667788ull);
    /* and unmapping makes it fault again */
    ck_assert_int_eq(nstub_unmap(g.s, 0x800000, 0x1000), 0);
    g.r.rip = CODE;
    run(&g);
    expect_fault(&g, 14, CODE);
    guest_fini(&g);
}
END_TEST

START_TEST(test_exceptions)
{
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0x0f, 0x0b }, 2);   /* ud2 */
    run(&g);
    expect_fault(&g, 6, CODE);
    ck_assert_int_eq(g.t.signo, SIGILL);

    guest_code(&g, (const uint8_t[]){ 0x90, 0xcc }, 2);   /* nop; int3: a trap, rip after it */
    g.r.rip = CODE;
    run(&g);
    expect_fault(&g, 3, CODE + 2);
    ck_assert_int_eq(g.t.signo, SIGTRAP);

    guest_code(&g, (const uint8_t[]){ 0x31, 0xc9, 0xf7, 0xf1 }, 4);   /* xor ecx,ecx; div ecx */
    g.r.rip = CODE;
    run(&g);
    expect_fault(&g, 0, CODE + 2);
    ck_assert_int_eq(g.t.signo, SIGFPE);

    static const uint8_t gp[][2] = { { 0xfa }, { 0xf4 }, { 0xe4, 0x60 } };   /* cli, hlt, in al,0x60 */
    for (unsigned i = 0; i < 3; i++) {
        guest_code(&g, gp[i], 2);
        g.r.rip = CODE;
        run(&g);
        expect_fault(&g, 13, CODE);
        ck_assert_uint_eq(g.t.error_code, 0);
    }
    guest_code(&g, (const uint8_t[]){ 0xcd, 0x21 }, 2);   /* int 0x21: #GP(0x21*8+2) */
    g.r.rip = CODE;
    run(&g);
    expect_fault(&g, 13, CODE);
    ck_assert_uint_eq(g.t.error_code, 0x21 * 8 + 2);

    /* TF set: single step gives #DB after one instruction */
    guest_code(&g, (const uint8_t[]){ 0x90, 0x90, 0x0f, 0x05 }, 4);
    g.r.rip = CODE;
    g.r.rflags = 0x302;
    run(&g);
    expect_fault(&g, 1, CODE + 1);
    ck_assert_int_eq(g.t.signo, SIGTRAP);
    guest_fini(&g);
}
END_TEST

START_TEST(test_resume_modified)
{
    /* syscall; mov rbx,rax; syscall; ud2; ud2 */
    static const uint8_t code[] = { 0x0f, 0x05, 0x48, 0x89, 0xc3, 0x0f, 0x05, 0x0f, 0x0b, 0x0f, 0x0b };
    struct guest g;
    guest_init(&g, code, sizeof(code));
    g.r.fs_base = 0x123000;
    g.r.gs_base = 0x7ffff000;
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    ck_assert_uint_eq(g.r.rip, CODE + 2);
    ck_assert_uint_eq(g.r.fs_base, 0x123000);
    ck_assert_uint_eq(g.r.gs_base, 0x7ffff000);
    g.r.gpr[RAX] = 0x55aa;
    g.r.fs_base = 0x456000;
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    ck_assert_uint_eq(g.r.rip, CODE + 7);
    ck_assert_uint_eq(g.r.gpr[RBX], 0x55aa);
    ck_assert_uint_eq(g.r.fs_base, 0x456000);
    g.r.rip = CODE + 9;   /* skip the first ud2 */
    run(&g);
    expect_fault(&g, 6, CODE + 9);

    /* rdfsbase in the guest sees what we set */
    guest_code(&g, (const uint8_t[]){ 0xf3, 0x48, 0x0f, 0xae, 0xc0, 0x0f, 0x05 }, 7);
    g.r.rip = CODE;
    g.r.fs_base = 0x789000;
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    ck_assert_uint_eq(g.r.gpr[RAX], 0x789000);

    /* misuse is refused */
    struct nstub_regs bad = g.r;
    bad.cs = 0x10;
    ck_assert_int_eq(nstub_run(g.s, &bad, &g.t), PVM_EINVAL);
    bad = g.r;
    bad.fs_base = 0x8000000000000000ull;
    ck_assert_int_eq(nstub_run(g.s, &bad, &g.t), PVM_EINVAL);
    guest_fini(&g);
}
END_TEST

START_TEST(test_fpu_preserved)
{
    /* movq xmm0,rax; syscall x3; movq rax,xmm0; syscall */
    static const uint8_t code[] = { 0x66, 0x48, 0x0f, 0x6e, 0xc0, 0x0f, 0x05, 0x0f, 0x05, 0x0f, 0x05,
                                    0x66, 0x48, 0x0f, 0x7e, 0xc0, 0x0f, 0x05 };
    struct guest g;
    guest_init(&g, code, sizeof(code));
    size_t sz = nstub_fpu_size(g.s);
    ck_assert_uint_ge(sz, 512);
    uint8_t *img = malloc(sz);
    ck_assert_ptr_nonnull(img);

    g.r.gpr[RAX] = 0x1122334455667788ull;
    run(&g);
    ck_assert_uint_eq(g.r.rip, CODE + 7);
    g.r.gpr[RAX] = 0;
    run(&g);
    /* the XSAVE image holds xmm0 at byte 160 */
    ck_assert_int_eq(nstub_get_fpu(g.s, img, sz), 0);
    uint64_t x;
    memcpy(&x, img + 160, 8);
    ck_assert_uint_eq(x, 0x1122334455667788ull);
    run(&g);
    run(&g);
    ck_assert_uint_eq(g.r.rip, CODE + 18);
    ck_assert_uint_eq(g.r.gpr[RAX], 0x1122334455667788ull);

    /* set_fpu replaces the state for the next resume */
    g.r.rip = CODE + 11;
    x = 0xdeadbeefcafef00dull;
    memcpy(img + 160, &x, 8);
    ck_assert_int_eq(nstub_set_fpu(g.s, img, sz), 0);
    run(&g);
    ck_assert_uint_eq(g.r.gpr[RAX], 0xdeadbeefcafef00dull);
    ck_assert_int_eq(nstub_get_fpu(g.s, img, 16), PVM_EINVAL);

    /* carry the state to a second stub, as the backend does on an address-space switch */
    struct guest h;
    guest_init(&h, code + 11, sizeof(code) - 11);
    ck_assert_uint_eq(nstub_fpu_size(h.s), sz);
    ck_assert_int_eq(nstub_get_fpu(g.s, img, sz), 0);
    ck_assert_int_eq(nstub_set_fpu(h.s, img, sz), 0);
    run(&h);
    ck_assert_uint_eq(h.r.gpr[RAX], 0xdeadbeefcafef00dull);
    guest_fini(&h);
    free(img);
    guest_fini(&g);
}
END_TEST

/* ---- kicks and death ------------------------------------------------------ */

struct later {
    struct nstub *s;
    int pid;
    int delay_ms;
};

static void *kick_later(void *p)
{
    struct later *l = p;
    usleep((useconds_t)l->delay_ms * 1000);
    nstub_kick(l->s);
    return NULL;
}

static void *kill_later(void *p)
{
    struct later *l = p;
    usleep((useconds_t)l->delay_ms * 1000);
    kill(l->pid, SIGKILL);
    return NULL;
}

/* The state letter of /proc/<pid>/stat ("S" asleep, "R" running). */
static char stub_state(struct guest *g)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", nstub_pid(g->s));
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    return p ? p[2] : 0;
}

static bool wait_state(struct guest *g, char want)
{
    for (int i = 0; i < 1000; i++) {
        if (stub_state(g) == want)
            return true;
        usleep(1000);
    }
    return false;
}

/*
 * nstub_prewake: a stub asleep in its wait wakes, spins and sleeps again,
 * and runs no guest code until the next nstub_run (a pre-wake is not a
 * resume); the next run then runs the guest exactly once to its next trap.
 */
START_TEST(test_prewake)
{
    /* incq (DATA); syscall; jmp back */
    static const uint8_t code[] = { 0x48, 0xff, 0x04, 0x25, 0x00, 0x00, 0x60, 0x00, 0x0f, 0x05, 0xeb, 0xf4 };
    _Static_assert(DATA == 0x600000, "the address in code[]");
    struct guest g;
    guest_init(&g, code, sizeof(code));
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    ck_assert_uint_eq(g.ram[DATA_OFF], 1);
    ck_assert_msg(wait_state(&g, 'S'), "the stub never slept after its spin");
    for (int i = 0; i < 3; i++) {
        nstub_prewake(g.s);
        usleep(20000);
        ck_assert_msg(wait_state(&g, 'S'), "the stub did not sleep again after a pre-wake");
        ck_assert_uint_eq(g.ram[DATA_OFF], 1);   /* no guest code ran */
    }
    char err[160] = "";
    ck_assert_msg(nstub_confirm_stopped(g.s, 1000, err, sizeof(err)) == 0, "%s", err);
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    ck_assert_uint_eq(g.r.rip, CODE + 10);
    ck_assert_uint_eq(g.ram[DATA_OFF], 2);
    nstub_prewake(g.s);   /* awake or not: harmless */
    run(&g);
    ck_assert_uint_eq(g.ram[DATA_OFF], 3);
    guest_fini(&g);
}
END_TEST

START_TEST(test_kick)
{
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0xeb, 0xfe }, 2);   /* jmp . */
    struct later l = { .s = g.s, .delay_ms = 30 };
    pthread_t th;
    for (int i = 0; i < 3; i++) {
        pthread_create(&th, NULL, kick_later, &l);
        uint64_t t0 = now_ns();
        run(&g);
        pthread_join(th, NULL);
        ck_assert_msg(g.t.kind == NSTUB_TRAP_KICK, "kind %u %s", g.t.kind, g.t.msg);
        ck_assert_uint_eq(g.r.rip, CODE);
        ck_assert_uint_lt(now_ns() - t0, 2000000000ull);
    }
    /* a kick while stopped is reported by the next run, once, without running the guest */
    guest_code(&g, (const uint8_t[]){ 0x0f, 0x05 }, 2);
    nstub_kick(g.s);
    nstub_kick(g.s);
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_KICK);
    ck_assert_uint_eq(g.r.rip, CODE);
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    /*
     * kicks racing with traps: never more KICK reports than kicks, none left
     * over.  A kick is a flag: one that lands while another is still pending
     * (a loaded machine runs the kicking thread late) is the same report.
     */
    int kicks_reported = 0;
    for (int i = 0; i < 50; i++) {
        g.r.rip = CODE;
        pthread_create(&th, NULL, kick_later, &(struct later){ .s = g.s, .delay_ms = 0 });
        run(&g);
        ck_assert(g.t.kind == NSTUB_TRAP_SYSCALL || g.t.kind == NSTUB_TRAP_KICK);
        kicks_reported += g.t.kind == NSTUB_TRAP_KICK;
        pthread_join(th, NULL);
    }
    for (int i = 0; i < 3; i++) {
        g.r.rip = CODE;
        run(&g);
        if (g.t.kind != NSTUB_TRAP_KICK)
            break;
        kicks_reported++;
    }
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    ck_assert_int_le(kicks_reported, 50);
    ck_assert_int_gt(kicks_reported, 0);
    guest_fini(&g);
}
END_TEST

START_TEST(test_killed_is_died)
{
    int children = pvm_test_count_children();
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0xeb, 0xfe }, 2);
    struct later l = { .pid = nstub_pid(g.s), .delay_ms = 30 };
    pthread_t th;
    pthread_create(&th, NULL, kill_later, &l);
    uint64_t t0 = now_ns();
    run(&g);
    uint64_t dt = now_ns() - t0;
    pthread_join(th, NULL);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_DIED, "kind %u", g.t.kind);
    ck_assert_msg(strstr(g.t.msg, "signal 9"), "msg: %s", g.t.msg);
    printf("stub: death noticed %.1f ms after the run started (kill after 30 ms)\n", dt / 1e6);
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_DIED);
    guest_fini(&g);
    ck_assert_int_eq(pvm_test_count_children(), children);
}
END_TEST

START_TEST(test_stub_process_state)
{
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0x0f, 0x05 }, 2);
    ck_assert_int_eq(nstub_sync(g.s), 0);
    char path[64], line[512];
    snprintf(path, sizeof(path), "/proc/%d/maps", nstub_pid(g.s));
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long long lo, hi;
        ck_assert_int_eq(sscanf(line, "%llx-%llx", &lo, &hi), 2);
        bool ok = (lo >= NSTUB_REGION_START && hi <= NSTUB_REGION_END) || lo == CODE || lo == DATA ||
                  lo == 0xffffffffff600000ull;
        ck_assert_msg(ok, "unexpected stub mapping: %s", line);
        ck_assert_msg(!strstr(line, "[vdso]") && !strstr(line, "[vvar]") && !strstr(line, "[stack]"), "%s", line);
        n++;
    }
    fclose(f);
    ck_assert_int_ge(n, 4);
    snprintf(path, sizeof(path), "/proc/%d/status", nstub_pid(g.s));
    f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    int seccomp = -1, nnp = -1;
    while (fgets(line, sizeof(line), f)) {
        sscanf(line, "Seccomp: %d", &seccomp);
        sscanf(line, "NoNewPrivs: %d", &nnp);
    }
    fclose(f);
    ck_assert_int_eq(seccomp, 2);
    ck_assert_int_eq(nnp, 1);
    /* exactly fds 3 and 4 (RAM, control) and 5 (the death pipe) */
    snprintf(path, sizeof(path), "/proc/%d/fd/0", nstub_pid(g.s));
    ck_assert_int_ne(access(path, F_OK), 0);
    for (int fd = 3; fd <= 6; fd++) {
        snprintf(path, sizeof(path), "/proc/%d/fd/%d", nstub_pid(g.s), fd);
        ck_assert_int_eq(access(path, F_OK) == 0, fd != 6);
    }
    guest_fini(&g);
}
END_TEST

START_TEST(test_map_args_and_batching)
{
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0x48, 0x8b, 0x03, 0x0f, 0x05 }, 5);   /* mov rax,[rbx]; syscall */
    ck_assert_int_eq(nstub_map(g.s, 0x1000, 0x1000, 0, PROT_READ), PVM_EINVAL);       /* below GUEST_LO */
    ck_assert_int_eq(nstub_map(g.s, NSTUB_GUEST_HI - 0x1000, 0x2000, 0, PROT_READ), PVM_EINVAL);
    ck_assert_int_eq(nstub_map(g.s, NSTUB_REGION_START, 0x1000, 0, PROT_READ), PVM_EINVAL);
    ck_assert_int_eq(nstub_map(g.s, 0x800001, 0x1000, 0, PROT_READ), PVM_EINVAL);
    ck_assert_int_eq(nstub_map(g.s, 0x800000, 0, 0, PROT_READ), PVM_EINVAL);
    ck_assert_int_eq(nstub_map(g.s, 0x800000, 0x1000, 0x10, PROT_READ), PVM_EINVAL);
    ck_assert_int_eq(nstub_map(g.s, 0x800000, 0x1000, 0, 0x100), PVM_EINVAL);
    ck_assert_int_eq(nstub_map(g.s, UINT64_MAX - 0xfff, 0x1000, 0, PROT_READ), PVM_EINVAL);
    ck_assert_int_eq(nstub_unmap(g.s, 0x800000, 1), PVM_EINVAL);

    /* 1000 separate pages (every other one): more than one batch */
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t off = 0x100000 + i * 0x1000;
        memcpy(g.ram + off, &i, 8);
        ck_assert_int_eq(nstub_map(g.s, 0x10000000 + i * 0x2000, 0x1000, off, PROT_READ), 0);
    }
    for (uint64_t i = 0; i < 1000; i += 111) {
        g.r.rip = CODE;
        g.r.gpr[RBX] = 0x10000000 + i * 0x2000 + 8 * 0;
        run(&g);
        ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
        ck_assert_uint_eq(g.r.gpr[RAX], i);
    }
    ck_assert_int_eq(nstub_unmap_all(g.s), 0);
    ck_assert_int_eq(nstub_map(g.s, CODE, 0x1000, 0, PROT_READ | PROT_EXEC), 0);
    g.r.rip = CODE;
    run(&g);
    expect_fault(&g, 14, CODE);   /* the data page is gone */
    guest_fini(&g);
}
END_TEST

/* ---- containment ---------------------------------------------------------- */

static pid_t sentinel_start(void)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        for (;;)
            pause();
    }
    return pid;
}

static void sentinel_check_and_stop(pid_t pid)
{
    int st;
    ck_assert_int_eq(waitpid(pid, &st, WNOHANG), 0);   /* still alive */
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
}

START_TEST(test_escape_syscalls)
{
    warm_up();
    int fds = pvm_test_count_fds();
    pid_t sentinel = sentinel_start();
    char path[64];
    snprintf(path, sizeof(path), "/tmp/pvm-stub-escape-%d", getpid());
    unlink(path);

    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0x0f, 0x05, 0x0f, 0x0b }, 4);   /* syscall; ud2 */
    strcpy((char *)g.ram + DATA_OFF, path);
    for (uint64_t nr = 0; nr <= 450; nr++) {
        g.r.rip = CODE;
        g.r.gpr[RAX] = nr;
        /* arguments that would do damage if any call went through */
        g.r.gpr[RDI] = (nr == 62 || nr == 200 || nr == 234) ? (uint64_t)sentinel : DATA;
        g.r.gpr[RSI] = (nr == 62 || nr == 200) ? SIGKILL : O_CREAT | O_WRONLY;
        g.r.gpr[RDX] = (nr == 234) ? SIGKILL : 0644;
        g.r.gpr[R10] = 0;
        g.r.gpr[R8] = 3;
        g.r.gpr[R9] = 0;
        run(&g);
        if (nr == 336) {
            /*
             * uprobe: the kernel runs it without asking seccomp; outside a uprobe
             * trampoline it only returns -ENXIO.  Harmless, but the guest is not
             * trapped: it continues to the ud2.
             */
            ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL || (g.t.kind == NSTUB_TRAP_FAULT && g.t.vector == 6 &&
                                                             g.r.gpr[RAX] == (uint64_t)-ENXIO),
                          "syscall 336: kind %u", g.t.kind);
            continue;
        }
        ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL, "syscall %llu: kind %u vector %u signal %d code %d rip %#llx %s",
                      (unsigned long long)nr, g.t.kind, g.t.vector, g.t.signo, g.t.si_code,
                      (unsigned long long)g.r.rip, g.t.msg);
        ck_assert_uint_eq(g.r.gpr[RAX], nr);
        ck_assert_uint_eq(g.r.rip, CODE + 2);
    }
    /* x32 numbers and INT 0x80 (i386 ABI) are trapped too */
    g.r.rip = CODE;
    g.r.gpr[RAX] = 0x40000000 | 39;
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    guest_code(&g, (const uint8_t[]){ 0xcd, 0x80 }, 2);
    g.r.rip = CODE;
    g.r.gpr[RAX] = 37;   /* i386 kill */
    g.r.gpr[RBX] = (uint64_t)sentinel;
    g.r.gpr[RCX] = SIGKILL;
    run(&g);
    /* Hosts without an INT 0x80 gate raise #GP with the IDT error code of vector 0x80 instead. */
    if (g.t.kind == NSTUB_TRAP_FAULT) {
        ck_assert_uint_eq(g.t.vector, 13);
        ck_assert_uint_eq(g.t.error_code, (0x80 << 3) | 2);
        ck_assert_uint_eq(g.r.rip, CODE);
    } else {
        ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
        ck_assert_uint_eq(g.r.rip, CODE + 2);
    }
    /* from 32-bit compatibility mode: int 0x80, syscall, sysenter */
    static const uint8_t compat[][2] = { { 0xcd, 0x80 }, { 0x0f, 0x05 }, { 0x0f, 0x34 } };
    for (unsigned i = 0; i < 3; i++) {
        guest_code(&g, compat[i], 2);
        g.r.rip = CODE;
        g.r.cs = 0x23;
        g.r.gpr[RAX] = 37;
        g.r.gpr[RSP] = DATA + 0x800;
        run(&g);
        ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL || g.t.kind == NSTUB_TRAP_FAULT, "compat %u: kind %u %s", i,
                      g.t.kind, g.t.msg);
        g.r.cs = 0x33;
    }
    guest_fini(&g);
    ck_assert_int_ne(access(path, F_OK), 0);
    sentinel_check_and_stop(sentinel);
    ck_assert_int_eq(pvm_test_count_fds(), fds);
}
END_TEST

/* Jump into the stub's own SYSCALL instruction with chosen registers. */
static void jump_into_stub(uint64_t nr, const uint64_t args[6], pid_t sentinel, bool *died)
{
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0x0f, 0x0b }, 2);
    uint64_t ret = CODE;   /* the gadget's RET comes back to our ud2 */
    memcpy(g.ram + DATA_OFF + 0xff8, &ret, 8);
    g.r.gpr[RSP] = DATA + 0xff8;
    g.r.rip = NSTUB_SYSCALL_INSN;
    g.r.gpr[RAX] = nr;
    static const int argreg[6] = { RDI, RSI, RDX, R10, R8, R9 };
    for (int i = 0; i < 6; i++)
        g.r.gpr[argreg[i]] = args[i];
    run(&g);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL || g.t.kind == NSTUB_TRAP_FAULT || g.t.kind == NSTUB_TRAP_DIED,
                  "kind %u", g.t.kind);
    if (g.t.kind == NSTUB_TRAP_SYSCALL) {
        ck_assert_uint_eq(g.r.rip, NSTUB_SYSCALL_INSN + 2);
        ck_assert_uint_eq(g.r.gpr[RAX], nr);
    }
    *died = g.t.kind == NSTUB_TRAP_DIED;
    (void)sentinel;
    guest_fini(&g);
}

/*
 * Guest code that calls the stub's own SYSCALL to map guest RAM (here: the
 * code page, writable, at a fresh address) gets nothing: the library refuses
 * the request it did not queue, and the trap is the guest's SYSCALL, with
 * RAX = 9 at the instruction after the stub's SYSCALL.  Without approval the
 * same call maps the page (what the test would see if approval broke).
 */
static void escape_attempt(struct guest *g)
{
    uint64_t ret = CODE;
    memcpy(g->ram + DATA_OFF + 0xff8, &ret, 8);
    g->r.gpr[RSP] = DATA + 0xff8;
    g->r.rip = NSTUB_SYSCALL_INSN;
    g->r.gpr[RAX] = 9;
    g->r.gpr[RDI] = 0x500000;
    g->r.gpr[RSI] = 4096;
    g->r.gpr[RDX] = PROT_READ | PROT_WRITE;
    g->r.gpr[R10] = MAP_SHARED | MAP_FIXED;
    g->r.gpr[R8] = 3; /* NSTUB_FD_RAM */
    g->r.gpr[R9] = 0; /* the code page's offset */
    run(g);
}

START_TEST(test_escape_mmap)
{
    /* mov byte [0x500000], 0xcc; ud2 */
    static const uint8_t code[] = { 0xc6, 0x04, 0x25, 0x00, 0x00, 0x50, 0x00, 0xcc, 0x0f, 0x0b };
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0x0f, 0x0b }, 2);
    run(&g);
    guest_code(&g, code, sizeof(code));
    uint64_t t0 = now_ns();
    escape_attempt(&g);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL, "kind %u (signal %d, %s)", g.t.kind, g.t.signo, g.t.msg);
    ck_assert_uint_eq(g.r.rip, NSTUB_SYSCALL_INSN + 2);
    ck_assert_uint_eq(g.r.gpr[RAX], 9);
    ck_assert_uint_eq(g.r.gpr[RDI], 0x500000);
    printf("stub: a guest's own mmap refused and reported after %.1f ms\n", (now_ns() - t0) / 1e6);
    /* The guest goes on (as its kernel would after a failed call): nothing is mapped there. */
    g.r.rip = CODE;
    run(&g);
    expect_fault(&g, 14, CODE);
    ck_assert_uint_eq(g.t.cr2, 0x500000);
    ck_assert_uint_eq(g.ram[0], 0xc6);
    guest_fini(&g);

    /* The same without approval: the hole it closes. */
    guest_init_ex(&g, (const uint8_t[]){ 0x0f, 0x0b }, 2, true);
    run(&g);
    guest_code(&g, code, sizeof(code));
    escape_attempt(&g);
    expect_fault(&g, 6, CODE + 8);   /* mapped: the store went through to the ud2 */
    ck_assert_uint_eq(g.ram[0], 0xcc);
    guest_fini(&g);
}
END_TEST

/* getppid through the stub's own SYSCALL would show a host pid: it is the guest's SYSCALL now. */
START_TEST(test_no_host_pid)
{
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0x0f, 0x0b }, 2);
    run(&g);
    uint64_t ret = CODE;
    memcpy(g.ram + DATA_OFF + 0xff8, &ret, 8);
    g.r.gpr[RSP] = DATA + 0xff8;
    g.r.rip = NSTUB_SYSCALL_INSN;
    g.r.gpr[RAX] = 110; /* __NR_getppid */
    run(&g);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL, "kind %u (signal %d)", g.t.kind, g.t.signo);
    ck_assert_uint_eq(g.r.gpr[RAX], 110);
    ck_assert_uint_eq(g.r.rip, NSTUB_SYSCALL_INSN + 2);
    guest_fini(&g);
}
END_TEST

/*
 * A forged report, then guest code that keeps asking for a mapping of its
 * own: when the library next resumes with a mapping command, the request it
 * gets is not that command, so the stub is lost (the guest ran on a forged
 * report), with the reason.  RDI = control page, RDX/R8 = offsets of state
 * and signo.
 */
START_TEST(test_forged_report_mapping)
{
    static const uint8_t code[] = {
        0x42, 0xc7, 0x04, 0x07, 0x1f, 0x00, 0x00, 0x00,   /* movl $31, (%rdi,%r8): signo = SIGSYS */
        0xc7, 0x04, 0x17, 0x02, 0x00, 0x00, 0x00,         /* movl $2, (%rdi,%rdx): state = TRAPPED */
        0x48, 0x8d, 0x0d, 0xf9, 0xff, 0xff, 0xff, 0x51,   /* 1: lea 1b(%rip), %rcx; push %rcx */
        0xb8, 0x09, 0x00, 0x00, 0x00,                     /* mmap(0x500000, 4096, RW, SHARED|FIXED, 3, 0) */
        0xbf, 0x00, 0x00, 0x50, 0x00, 0xbe, 0x00, 0x10, 0x00, 0x00, 0xba, 0x03, 0x00, 0x00, 0x00,
        0x41, 0xba, 0x11, 0x00, 0x00, 0x00, 0x41, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x45, 0x31, 0xc9,
        0x48, 0xb9, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00, 0xff, 0xe1, /* jmp to the stub's SYSCALL */
    };
    struct guest g;
    guest_init(&g, code, sizeof(code));
    g.r.gpr[RDI] = NSTUB_CTL_ADDR;
    g.r.gpr[RDX] = offsetof(struct nstub_ctl, state);
    g.r.gpr[R8] = offsetof(struct nstub_ctl, signo);
    run(&g);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL, "kind %u (signal %d, %s)", g.t.kind, g.t.signo, g.t.msg);
    ck_assert_int_eq(nstub_map(g.s, 0x700000, 0x1000, DATA_OFF, PROT_READ | PROT_WRITE), 0);
    run(&g);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_DIED && strstr(g.t.msg, "did not queue"), "kind %u: %s", g.t.kind,
                  g.t.msg);
    guest_fini(&g);
}
END_TEST

/* Capability bits of @pid's @field ("CapEff", "CapPrm") from /proc. */
static uint64_t proc_caps(pid_t pid, const char *field)
{
    char path[64], line[256];
    uint64_t v = ~0ull;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, field, strlen(field)) && line[strlen(field)] == ':')
            v = strtoull(line + strlen(field) + 1, NULL, 16);
    fclose(f);
    return v;
}

/* Guest code has no capabilities: even under a root library, page 0 stays out of reach. */
START_TEST(test_no_capabilities)
{
    struct guest g;
    /* Without mapping approval, which would refuse the mmap before the kernel sees it (test_escape_mmap). */
    guest_init_ex(&g, (const uint8_t[]){ 0x0f, 0x0b }, 2, true);
    run(&g); /* the stub is up and stopped at the ud2 */
    ck_assert_uint_eq(proc_caps(nstub_pid(g.s), "CapEff"), 0);
    ck_assert_uint_eq(proc_caps(nstub_pid(g.s), "CapPrm"), 0);
    /* mmap(0, 4096, RW, MAP_SHARED|MAP_FIXED, RAM, 0) through the stub's own SYSCALL: the filter lets it
     * by, vm.mmap_min_addr refuses it without CAP_SYS_RAWIO. */
    uint64_t ret = CODE;
    memcpy(g.ram + DATA_OFF + 0xff8, &ret, 8);
    g.r.gpr[RSP] = DATA + 0xff8;
    g.r.rip = NSTUB_SYSCALL_INSN;
    g.r.gpr[RAX] = 9;
    g.r.gpr[RDI] = 0;
    g.r.gpr[RSI] = 4096;
    g.r.gpr[RDX] = PROT_READ | PROT_WRITE;
    g.r.gpr[R10] = MAP_SHARED | MAP_FIXED;
    g.r.gpr[R8] = 3; /* NSTUB_FD_RAM */
    g.r.gpr[R9] = 0;
    run(&g);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_FAULT && g.r.rip == CODE, "kind %u rip %#llx", g.t.kind,
                  (unsigned long long)g.r.rip);
    ck_assert_int_eq((int64_t)g.r.gpr[RAX], -EPERM);
    guest_fini(&g);
}
END_TEST

START_TEST(test_escape_stub_code)
{
    warm_up();
    int fds = pvm_test_count_fds(), children = pvm_test_count_children();
    pid_t sentinel = sentinel_start();
    bool died;
    struct {
        uint64_t nr, a[6];
        int expect;   /* 0 trapped, 1 anything contained */
    } cases[] = {
        { 62, { (uint64_t)sentinel, SIGKILL }, 0 },                                      /* kill */
        { 11, { NSTUB_REGION_START, 0x1000 }, 0 },                                       /* munmap stub */
        { 11, { 0x7e0000000000, 0x20000000000 }, 0 },                                    /* munmap reaching it */
        { 9, { NSTUB_REGION_START, 0x1000, 7, MAP_SHARED | MAP_FIXED, 3, 0 }, 0 },       /* mmap over stub */
        { 9, { 0x900000, 0x1000, 7, MAP_SHARED | MAP_FIXED, 4, 0 }, 0 },                 /* the ctl memfd */
        { 9, { 0x900000, 0x1000, 7, MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS, -1, 0 }, 0 },
        { 10, { NSTUB_REGION_START, 0x1000, 7 }, 0 },                                    /* mprotect */
        { 202, { DATA, FUTEX_WAIT, 0 }, 0 },                                             /* other futex */
        { 202, { NSTUB_CTL_ADDR, FUTEX_REQUEUE, 1, 0, DATA }, 0 },
        { 1, { 2, DATA, 16 }, 0 },                                                       /* write */
        { 59, { DATA, 0, 0 }, 0 },                                                       /* execve */
        { 56, { 0 }, 0 },                                                                /* clone */
        { 157, { PR_SET_DUMPABLE, 1 }, 0 },                                              /* prctl */
        { 158, { 0x1012, 0 }, 0 },                                                       /* ARCH_SET_CPUID */
        { 158, { 0x1003, DATA }, 0 },                                                    /* ARCH_GET_FS */
        { 158, { 0x100000000ull | 0x1002, DATA }, 0 },                                   /* ARCH_SET_FS, high bits */
        { 158, { 0x1002, DATA }, 1 },                                                    /* ARCH_SET_FS: allowed */
        { 9, { NSTUB_PVCS_ADDR, 0x2000, 3, MAP_SHARED | MAP_FIXED, 3, 0 }, 0 },         /* PVCS slot: one page */
        { 9, { NSTUB_PVCS_ADDR, 0x1000, 3, MAP_SHARED | MAP_FIXED, 4, 0 }, 0 },         /* ... of RAM only */
        { 9, { NSTUB_PVCS_ADDR + 0x1000, 0x1000, 3, MAP_SHARED | MAP_FIXED, 3, 0 }, 0 },
        { 11, { NSTUB_PVCS_ADDR, 0x1000 }, 0 },                                          /* no munmap there */
        { 9, { 0x900000, 0x1000, 3, MAP_SHARED | MAP_FIXED, 3, 0 }, 1 },                 /* own RAM: allowed */
        { 9, { NSTUB_PVCS_ADDR, 0x1000, 7, MAP_SHARED | MAP_FIXED, 3, 0 }, 1 },          /* own RAM, PVCS slot */
        { 15, { 0 }, 1 },                                                                /* sigreturn, junk */
        { 231, { 0 }, 1 },                                                               /* exit_group */
    };
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        jump_into_stub(cases[i].nr, cases[i].a, sentinel, &died);
        if (cases[i].expect == 0)
            ck_assert_msg(!died, "case %u (syscall %llu) killed the stub", i, (unsigned long long)cases[i].nr);
    }
    sentinel_check_and_stop(sentinel);
    ck_assert_int_eq(pvm_test_count_fds(), fds);
    ck_assert_int_eq(pvm_test_count_children(), children);
}
END_TEST

/* A guest that blocks the kick signal with a forged rt_sigreturn is wedged: DIED, not a hang. */
/*
 * A signal frame for a forged rt_sigreturn through the stub's own SYSCALL:
 * resume the guest at CODE + 2 (after its ud2) with signal mask @mask.
 */
static void forged_frame(ucontext_t *uc, uint64_t mask)
{
    memset(uc, 0, sizeof(*uc));
    uc->uc_flags = 2;   /* UC_SIGCONTEXT_SS */
    uc->uc_stack.ss_sp = (void *)(NSTUB_CTL_ADDR + NSTUB_ALTSTACK_OFF);
    uc->uc_stack.ss_size = NSTUB_ALTSTACK_SIZE;
    uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(CODE + 2);
    uc->uc_mcontext.gregs[REG_RSP] = (greg_t)(DATA + 0x800);
    uc->uc_mcontext.gregs[REG_EFL] = 0x202;
    uc->uc_mcontext.gregs[REG_CSGSFS] = (greg_t)(0x33 | (0x2bull << 48));
    uc->uc_sigmask.__val[0] = mask;
}

START_TEST(test_guest_blocks_kicks)
{
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0x0f, 0x0b, 0xeb, 0xfe }, 4);   /* ud2; jmp . */
    ucontext_t uc;
    forged_frame(&uc, 1ull << (KICK - 1));
    memcpy(g.ram + DATA_OFF + 0x900, &uc, offsetof(ucontext_t, uc_sigmask) + 8);
    g.r.rip = NSTUB_SYSCALL_INSN;
    g.r.gpr[RAX] = 15;   /* rt_sigreturn, from the stub's own SYSCALL */
    g.r.gpr[RSP] = DATA + 0x900;
    pthread_t th;
    pthread_create(&th, NULL, kick_later, &(struct later){ .s = g.s, .delay_ms = 30 });
    uint64_t t0 = now_ns();
    run(&g);
    pthread_join(th, NULL);
    printf("stub: a guest that blocked the kick signal: kind %u after %.2f s: %s\n", g.t.kind,
           (now_ns() - t0) / 1e9, g.t.msg);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_DIED, "kind %u", g.t.kind);
    ck_assert_msg(strstr(g.t.msg, "kick"), "%s", g.t.msg);
    guest_fini(&g);
}
END_TEST

START_TEST(test_guest_writes_control_page)
{
    warm_up();
    int fds = pvm_test_count_fds(), children = pvm_test_count_children();
    /* mov rdi,CTL; mov ecx,0x4000; mov al,0xff; rep stosb; syscall */
    uint8_t fill[] = { 0x48, 0xbf, 0, 0, 0, 0, 0, 0, 0, 0, 0xb9, 0x00, 0x40, 0, 0, 0xb0, 0xff, 0xf3, 0xaa, 0x0f, 0x05 };
    uint64_t ctl = NSTUB_CTL_ADDR;
    memcpy(fill + 2, &ctl, 8);
    struct guest g;
    guest_init(&g, fill, sizeof(fill));
    run(&g);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL || g.t.kind == NSTUB_TRAP_DIED, "kind %u", g.t.kind);
    uint8_t buf[8192];
    int rc = nstub_get_fpu(g.s, buf, sizeof(buf));
    ck_assert(rc == 0 || rc == PVM_EFAULT || rc == PVM_ESTATE || rc == PVM_EINVAL);
    g.r.rip = CODE;
    run(&g);
    ck_assert(g.t.kind == NSTUB_TRAP_SYSCALL || g.t.kind == NSTUB_TRAP_DIED);
    guest_fini(&g);

    /* the whole area including the signal stack, then a fault: the frame is rebuilt by the kernel */
    fill[11] = 0x00;
    fill[12] = 0x00;
    fill[13] = 0x01;   /* ecx = 0x10000 */
    guest_init(&g, fill, sizeof(fill));
    run(&g);
    ck_assert(g.t.kind == NSTUB_TRAP_SYSCALL || g.t.kind == NSTUB_TRAP_DIED);
    guest_fini(&g);

    /* forge a trap: state = TRAPPED with a junk signal number, then keep running */
    uint8_t forge[] = { 0x48, 0xbf, 0, 0, 0, 0, 0, 0, 0, 0,                  /* mov rdi,&ctl->signo */
                        0xc7, 0x07, 0x39, 0x30, 0, 0,                        /* mov dword [rdi],12345 */
                        0x48, 0xbf, 0, 0, 0, 0, 0, 0, 0, 0,                  /* mov rdi,&ctl->state */
                        0xc7, 0x07, NSTUB_ST_TRAPPED, 0, 0, 0,               /* mov dword [rdi],TRAPPED */
                        0xeb, 0xfe };
    uint64_t a = NSTUB_CTL_ADDR + offsetof(struct nstub_ctl, signo), b = NSTUB_CTL_ADDR;
    memcpy(forge + 2, &a, 8);
    memcpy(forge + 18, &b, 8);
    guest_init(&g, forge, sizeof(forge));
    run(&g);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_DIED, "kind %u", g.t.kind);
    ck_assert_msg(strstr(g.t.msg, "bad report"), "%s", g.t.msg);
    guest_fini(&g);

    /* forge a plausible SYSCALL report while the guest keeps running: a kick still gets control back */
    forge[12] = SIGSYS;
    forge[13] = 0;
    guest_init(&g, forge, sizeof(forge));
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    struct later l = { .s = g.s, .delay_ms = 30 };
    pthread_t th;
    pthread_create(&th, NULL, kick_later, &l);
    run(&g);
    pthread_join(th, NULL);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_KICK || g.t.kind == NSTUB_TRAP_SYSCALL, "kind %u", g.t.kind);
    guest_fini(&g);
    ck_assert_int_eq(pvm_test_count_fds(), fds);
    ck_assert_int_eq(pvm_test_count_children(), children);
}
END_TEST

START_TEST(test_vsyscall_page)
{
    struct guest g;
    /* movabs rax,[0xffffffffff600000]; syscall */
    guest_init(&g, (const uint8_t[]){ 0x48, 0xa1, 0, 0, 0x60, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x05 }, 12);
    run(&g);
    /* vsyscall=xonly: not readable (a legacy vsyscall=emulate kernel would let the read through) */
    ck_assert(g.t.kind == NSTUB_TRAP_FAULT || g.t.kind == NSTUB_TRAP_SYSCALL);
    if (g.t.kind == NSTUB_TRAP_FAULT) {
        expect_fault(&g, 14, CODE);
        ck_assert_uint_eq(g.t.cr2, 0xffffffffff600000ull);
    }
    /* mov rax,0xffffffffff600000; call rax  (vsyscall gettimeofday(rdi=DATA)) */
    guest_code(&g, (const uint8_t[]){ 0x48, 0xb8, 0, 0, 0x60, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xd0, 0x0f, 0x0b },
               14);
    g.r.rip = CODE;
    g.r.gpr[RDI] = DATA;
    g.r.gpr[RSI] = 0;
    run(&g);
    /* reported as what PVM would give: a #PF fetching an unmapped address, at the call target */
    expect_fault(&g, 14, 0xffffffffff600000ull);
    ck_assert_uint_eq(g.t.cr2, 0xffffffffff600000ull);
    ck_assert_uint_eq(g.t.error_code, 0x14);
    ck_assert_uint_eq(g.r.gpr[RSP], DATA + 0x1000 - 8);   /* the return address is still pushed */
    uint64_t tv;
    memcpy(&tv, g.ram + DATA_OFF, 8);
    ck_assert_uint_eq(tv, 0);   /* gettimeofday did not write */
    guest_fini(&g);
}
END_TEST

START_TEST(test_cycles_no_leaks)
{
    struct guest g;
    warm_up();
    int fds = pvm_test_count_fds(), children = pvm_test_count_children();
    for (int i = 0; i < 200; i++) {
        guest_init(&g, (const uint8_t[]){ 0x0f, 0x05 }, 2);
        run(&g);
        ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
        guest_fini(&g);
    }
    ck_assert_int_eq(pvm_test_count_fds(), fds);
    ck_assert_int_eq(pvm_test_count_children(), children);
}
END_TEST

/* ---- lifetime: the stub lives as long as the library process, not longer ---- */

static void *create_on_thread(void *p)
{
    guest_init(p, (const uint8_t[]){ 0x0f, 0x05 }, 2);   /* syscall */
    return NULL;
}

/* The stub's parent pid, CPU time (s) and state letter from /proc/<pid>/stat; false if gone. */
static bool proc_stat(pid_t pid, int *ppid, double *cpu_s, char *state)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    char s = 0;
    int pp = 0;
    if (!p || sscanf(p + 1, " %c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &s, &pp, &ut, &st) != 4)
        return false;
    if (ppid)
        *ppid = pp;
    if (cpu_s)
        *cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    if (state)
        *state = s;
    return true;
}

/*
 * Is @ppid (a stub's parent) the library process @lib itself or one of its
 * zygotes (spawn.c: "pvm-zygote zygote <library pid>")?
 */
static bool parent_is_library(pid_t ppid, pid_t lib)
{
    if (ppid == lib)
        return true;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)ppid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *a1 = buf + strlen(buf) + 1;
    if (strcmp(buf, "pvm-zygote") || a1 >= buf + n || strcmp(a1, "zygote"))
        return false;
    return atoi(a1 + strlen(a1) + 1) == (int)lib;
}

/* Gone, or a zombie nobody has reaped yet.  Reaps it if it was reparented to us (a subreaper). */
static bool process_gone(pid_t pid)
{
    char st = 0;
    waitpid(pid, NULL, WNOHANG | __WALL);
    return !proc_stat(pid, NULL, NULL, &st) || st == 'Z' || st == 'X';
}

/* Wait until the stub @pid has used @cpu_s seconds of CPU (the guest spins), at most 20 s. */
static double wait_cpu(pid_t pid, double cpu_s)
{
    double used = 0;
    for (int i = 0; i < 400 && proc_stat(pid, NULL, &used, NULL) && used < cpu_s; i++)
        usleep(50000);
    return used;
}

/* Linux sends PR_SET_PDEATHSIG when the creating thread exits: the stub must not care. */
START_TEST(test_survives_creating_thread)
{
    struct guest g;
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, create_on_thread, &g), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    /* pthread_join returns when the tid is cleared, a moment before the kernel reparents */
    usleep(100000);
    int ppid = 0;
    char st = 0;
    ck_assert_msg(proc_stat(nstub_pid(g.s), &ppid, NULL, &st) && st != 'Z', "stub died with its creating thread");
    /* its zygote's, or reparented to another thread of this process (PVM_NATIVE_ZYGOTE=0) */
    ck_assert_msg(parent_is_library(ppid, getpid()), "stub parent %d", ppid);
    for (int i = 0; i < 3; i++) {
        g.r.rip = CODE;
        g.r.gpr[RAX] = 39 + (uint64_t)i;
        run(&g);
        ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL, "kind %u %s", g.t.kind, g.t.msg);
        ck_assert_uint_eq(g.r.gpr[RAX], 39 + (uint64_t)i);
        ck_assert_uint_eq(g.r.rip, CODE + 2);
    }
    /* and the thread that runs it now can still kick it */
    guest_code(&g, (const uint8_t[]){ 0xeb, 0xfe }, 2);
    g.r.rip = CODE;
    pthread_create(&th, NULL, kick_later, &(struct later){ .s = g.s, .delay_ms = 30 });
    run(&g);
    pthread_join(th, NULL);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_KICK);
    guest_fini(&g);
}
END_TEST

struct release {
    struct guest *g;
    double cpu_s;
};

/* Let the spinning guest go (DATA word = 1) once its stub has burnt @cpu_s of CPU. */
static void *release_after_cpu(void *p)
{
    struct release *r = p;
    wait_cpu(nstub_pid(r->g->s), r->cpu_s);
    __atomic_store_n((uint32_t *)(r->g->ram + DATA_OFF), 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* The CPU-time timer that watches for the library's death is invisible to the guest. */
START_TEST(test_cpu_timer_invisible)
{
    static const uint8_t code[] = {
        0x66, 0x49, 0x0f, 0x6e, 0xc0,                           /* movq xmm0,r8 */
        0x83, 0x3c, 0x25, 0x00, 0x00, 0x60, 0x00, 0x00,         /* 1: cmp dword [DATA],0 */
        0x74, 0xf6,                                             /* je 1b */
        0x66, 0x48, 0x0f, 0x7e, 0xc0,                           /* movq rax,xmm0 */
        0x0f, 0x05,                                             /* syscall */
    };
    struct guest g;
    guest_init(&g, code, sizeof(code));
    for (int i = 0; i < 16; i++)
        if (i != RSP)
            g.r.gpr[i] = 0x0101010101010101ull * (uint64_t)(i + 1) ^ 0xfedcba9876543210ull;
    g.r.fs_base = 0x123000;
    g.r.gs_base = 0x456000;
    struct nstub_regs in = g.r;
    pthread_t th;
    /* ITIMER_PROF ticks every NSTUB_ORPHAN_CPU_US: 1.2 s of CPU means at least two SIGPROFs */
    struct release rel = { .g = &g, .cpu_s = 1.2 };
    pthread_create(&th, NULL, release_after_cpu, &rel);
    run(&g);
    pthread_join(th, NULL);
    double cpu = 0;
    proc_stat(nstub_pid(g.s), NULL, &cpu, NULL);
    printf("stub: guest spun for %.2f s of CPU time; the trap after it: kind %u\n", cpu, g.t.kind);
    ck_assert_msg(cpu >= 1.2, "the guest got only %.2f s of CPU", cpu);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL, "kind %u signal %d %s", g.t.kind, g.t.signo, g.t.msg);
    ck_assert_uint_eq(g.r.rip, CODE + sizeof(code));
    ck_assert_uint_eq(g.r.gpr[RAX], in.gpr[R8]);   /* xmm0 survived */
    for (int i = 0; i < 16; i++)
        if (i != RAX && i != RCX && i != R11)
            ck_assert_msg(g.r.gpr[i] == in.gpr[i], "gpr %d: %#llx != %#llx", i, (unsigned long long)g.r.gpr[i],
                          (unsigned long long)in.gpr[i]);
    ck_assert_uint_eq(g.r.fs_base, in.fs_base);
    ck_assert_uint_eq(g.r.gs_base, in.gs_base);
    guest_fini(&g);
}
END_TEST

/* With SIGPROF as the kick signal every tick is a spurious kick: resumed, never reported. */
START_TEST(test_kick_signal_sigprof)
{
    char err[256] = "";
    struct guest g;
    guest_init(&g, (const uint8_t[]){ 0x0f, 0x05 }, 2);
    nstub_destroy(g.s);
    struct nstub_config cfg = { .memfd = g.memfd, .kick_signal = SIGPROF };
    int rc = nstub_create(&g.s, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "nstub_create: %d %s", rc, err);
    ck_assert_int_eq(nstub_map(g.s, CODE, 0x1000, 0, PROT_READ | PROT_EXEC), 0);
    ck_assert_int_eq(nstub_map(g.s, DATA, 0x1000, DATA_OFF, PROT_READ | PROT_WRITE), 0);
    run(&g);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_SYSCALL);
    /* 1: cmp dword [DATA],0; je 1b; syscall */
    guest_code(&g, (const uint8_t[]){ 0x83, 0x3c, 0x25, 0x00, 0x00, 0x60, 0x00, 0x00, 0x74, 0xf6, 0x0f, 0x05 }, 12);
    g.r.rip = CODE;
    pthread_t th;
    struct release rel = { .g = &g, .cpu_s = 1.2 };
    pthread_create(&th, NULL, release_after_cpu, &rel);
    run(&g);
    pthread_join(th, NULL);
    ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL, "kind %u signal %d %s", g.t.kind, g.t.signo, g.t.msg);
    ck_assert_uint_eq(g.r.rip, CODE + 12);
    /* a real kick is still one */
    guest_code(&g, (const uint8_t[]){ 0xeb, 0xfe }, 2);
    g.r.rip = CODE;
    pthread_create(&th, NULL, kick_later, &(struct later){ .s = g.s, .delay_ms = 30 });
    run(&g);
    pthread_join(th, NULL);
    ck_assert_uint_eq(g.t.kind, NSTUB_TRAP_KICK);
    ck_assert_uint_eq(g.r.rip, CODE);
    guest_fini(&g);
}
END_TEST

/*
 * A library process in a child: it makes a stub with nstub_* directly, sends
 * the stub's pid through a pipe, then runs a guest that spins forever
 * (@spin) or leaves the stub stopped at a trap.  No Check calls in there.
 */
/* Parent side of a forked library child: the stub pid it reports through pipe @p. */
static pid_t child_stub_pid(pid_t pid, int p[2], pid_t *stub_pid)
{
    close(p[1]);
    int sp = -1;
    ssize_t n = read(p[0], &sp, sizeof(sp));
    close(p[0]);
    if (n != sizeof(sp)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        ck_abort_msg("the library child could not start a stub");
    }
    *stub_pid = sp;
    return pid;
}

static pid_t library_child(bool spin, pid_t *stub_pid)
{
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(p[0]);
        static const uint8_t code[] = { 0x0f, 0x05, 0xeb, 0xfe };   /* syscall; jmp . */
        int memfd = memfd_create("test-guest", MFD_CLOEXEC);
        struct nstub *s;
        struct nstub_config cfg = { .memfd = memfd, .kick_signal = KICK };
        struct nstub_regs r = { .rip = CODE, .rflags = 0x202, .cs = 0x33, .ss = 0x2b };
        struct nstub_trap t;
        if (memfd < 0 || ftruncate(memfd, 0x1000) < 0 || pwrite(memfd, code, sizeof(code), 0) != sizeof(code) ||
            nstub_create(&s, &cfg, NULL, 0) < 0 || nstub_map(s, CODE, 0x1000, 0, PROT_READ | PROT_EXEC) < 0 ||
            nstub_run(s, &r, &t) < 0 || t.kind != NSTUB_TRAP_SYSCALL)
            _exit(1);
        int sp = nstub_pid(s);
        if (write(p[1], &sp, sizeof(sp)) != sizeof(sp))
            _exit(1);
        if (spin)
            nstub_run(s, &r, &t);   /* never returns: the guest spins */
        for (;;)
            pause();
    }
    return child_stub_pid(pid, p, stub_pid);
}

static void check_dies_with_library(bool spin)
{
    int sub = 0;
    prctl(PR_GET_CHILD_SUBREAPER, &sub);
    pid_t stub, lib = library_child(spin, &stub);
    int ppid = 0;
    char st = 0;
    if (spin) {
        /* make sure the guest really runs before the library goes */
        wait_cpu(stub, 0.1);
    } else {
        usleep(100000);
    }
    ck_assert_msg(proc_stat(stub, &ppid, NULL, &st), "stub %d is gone before its library", (int)stub);
    ck_assert_msg(parent_is_library(ppid, lib), "stub parent %d, library %d", ppid, (int)lib);
    ck_assert_msg(spin ? st == 'R' : st == 'S', "stub state %c", st);
    uint64_t t0 = now_ns();
    kill(lib, SIGKILL);
    ck_assert_int_eq(waitpid(lib, NULL, 0), lib);
    while (!process_gone(stub) && now_ns() - t0 < 3000000000ull)
        usleep(10000);
    double dt = (now_ns() - t0) / 1e9;
    printf("stub: %s stub %d gone %.2f s after its library process was killed (we are %sa subreaper)\n",
           spin ? "a running" : "an idle", (int)stub, dt, sub ? "" : "not ");
    if (!process_gone(stub)) {
        kill(stub, SIGKILL);
        ck_abort_msg("%s stub outlived its library process by %.1f s", spin ? "running" : "idle", dt);
    }
}

START_TEST(test_dies_with_library_running)
{
    check_dies_with_library(true);
}
END_TEST

START_TEST(test_dies_with_library_idle)
{
    check_dies_with_library(false);
}
END_TEST

/* ---- costs (printed, not asserted) ---------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    ((ucontext_t *)uc)->uc_mcontext.gregs[REG_RAX] = 0;
}

/* T: one in-process seccomp trap + SIGSYS handler + sigreturn, measured in a child. */
static double measure_T(void)
{
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    if (pid == 0) {
        struct sigaction sa = { .sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO };
        sigaction(SIGSYS, &sa, NULL);
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { 4, f };
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
        static uint64_t d[20000];
        for (int i = 0; i < 2000; i++)
            syscall(SYS_getppid);
        for (int i = 0; i < 20000; i++) {
            uint64_t t0 = now_ns();
            syscall(SYS_getppid);
            d[i] = now_ns() - t0;
        }
        qsort(d, 20000, sizeof(d[0]), cmp_u64);
        double t = (double)d[10000] / 1000;
        if (write(p[1], &t, sizeof(t)) != sizeof(t))
            _exit(1);
        _exit(0);
    }
    double t = 0;
    ck_assert_int_eq(read(p[0], &t, sizeof(t)), sizeof(t));
    waitpid(pid, NULL, 0);
    close(p[0]);
    close(p[1]);
    return t;
}

/* Median of @n guest SYSCALL -> library -> resume round trips (the machine may be busy: not the mean). */
static double round_trip_us(struct guest *g, int n)
{
    uint64_t *d = calloc((size_t)n, sizeof(*d));
    ck_assert_ptr_nonnull(d);
    for (int i = 0; i < n / 10; i++)
        run(g);
    for (int i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        run(g);
        d[i] = now_ns() - t0;
    }
    qsort(d, (size_t)n, sizeof(*d), cmp_u64);
    double med = (double)d[n / 2] / 1000;
    free(d);
    return med;
}

START_TEST(test_costs)
{
    double T = measure_T();
    printf("stub: T (in-process seccomp trap + handler + sigreturn) = %.2f us\n", T);

    static const uint8_t loop[] = { 0x0f, 0x05, 0xeb, 0xfc };   /* syscall; jmp back */
    struct guest g;
    guest_init(&g, loop, sizeof(loop));
    double spin = round_trip_us(&g, 20000);
    nstub_set_spin(g.s, 0);
    double futex_any = round_trip_us(&g, 5000);
    guest_fini(&g);
    printf("stub: syscall trap round trip, spin handoff (unpinned): %.2f us = %.2f T\n", spin, spin / T);
    printf("stub: syscall trap round trip, futex only (unpinned):  %.2f us = %.2f T\n", futex_any, futex_any / T);

    /* both on one CPU: the stub inherits the creating thread's affinity */
    cpu_set_t one, old;
    sched_getaffinity(0, sizeof(old), &old);
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    if (sched_setaffinity(0, sizeof(one), &one) == 0) {
        guest_init(&g, loop, sizeof(loop));
        double spin_same = round_trip_us(&g, 5000);
        nstub_set_spin(g.s, 0);
        double futex_same = round_trip_us(&g, 5000);
        guest_fini(&g);
        printf("stub: syscall trap round trip, spin, same CPU:         %.2f us = %.2f T\n", spin_same, spin_same / T);
        printf("stub: syscall trap round trip, futex, same CPU:        %.2f us = %.2f T\n", futex_same,
               futex_same / T);
        sched_setaffinity(0, sizeof(old), &old);
    }
    if (CPU_COUNT(&old) >= 2) {
        /* library on CPU 0, stub on CPU 1 */
        CPU_ZERO(&one);
        CPU_SET(1, &one);
        sched_setaffinity(0, sizeof(one), &one);
        guest_init(&g, loop, sizeof(loop));
        CPU_ZERO(&one);
        CPU_SET(0, &one);
        sched_setaffinity(0, sizeof(one), &one);
        double spin2 = round_trip_us(&g, 20000);
        nstub_set_spin(g.s, 0);
        double futex2 = round_trip_us(&g, 2000);
        guest_fini(&g);
        sched_setaffinity(0, sizeof(old), &old);
        printf("stub: syscall trap round trip, spin, 2 CPUs pinned:    %.2f us = %.2f T\n", spin2, spin2 / T);
        printf("stub: syscall trap round trip, futex, 2 CPUs pinned:   %.2f us = %.2f T\n", futex2, futex2 / T);
    }

    /* VM create -> first guest instruction: create + map + the first trap back */
    char err[256];
    int memfd = memfd_create("g", MFD_CLOEXEC);
    ck_assert_int_eq(ftruncate(memfd, 0x10000), 0);
    ck_assert_int_eq(pwrite(memfd, loop, sizeof(loop), 0), (ssize_t)sizeof(loop));
    enum { N = 60 };
    uint64_t total[N], create[N];
    for (int i = 0; i < N; i++) {
        struct nstub *s;
        struct nstub_regs r = { .rip = CODE, .rflags = 0x202, .cs = 0x33, .ss = 0x2b };
        struct nstub_trap t;
        struct nstub_config cfg = { .memfd = memfd, .kick_signal = KICK };
        uint64_t t0 = now_ns();
        ck_assert_int_eq(nstub_create(&s, &cfg, err, sizeof(err)), 0);
        uint64_t t1 = now_ns();
        nstub_map(s, CODE, 0x1000, 0, PROT_READ | PROT_EXEC);
        ck_assert_int_eq(nstub_run(s, &r, &t), 0);
        total[i] = now_ns() - t0;
        create[i] = t1 - t0;
        ck_assert_uint_eq(t.kind, NSTUB_TRAP_SYSCALL);
        nstub_destroy(s);
    }
    close(memfd);
    qsort(total, N, sizeof(total[0]), cmp_u64);
    qsort(create, N, sizeof(create[0]), cmp_u64);
    printf("stub: create -> first guest trap back: median %.0f us (nstub_create %.0f us), best %.0f us, p90 %.0f us\n",
           total[N / 2] / 1e3, create[N / 2] / 1e3, total[0] / 1e3, total[N * 9 / 10] / 1e3);
}
END_TEST

/* ---- stub creation: zygotes, fds, children, the death-pipe backstop ---------- */

/* PVM_NATIVE_ZYGOTE=0: the library spawns stubs itself; the zygote tests have nothing to test. */
static bool no_zygote(void)
{
    const char *e = getenv("PVM_NATIVE_ZYGOTE");
    if (e && !strcmp(e, "0")) {
        printf("stub: zygote test skipped: PVM_NATIVE_ZYGOTE=0\n");
        return true;
    }
    return false;
}

/* The parent pid of @pid from /proc/<pid>/stat, or -1. */
static int parent_of(pid_t pid)
{
    int ppid = -1;
    return proc_stat(pid, &ppid, NULL, NULL) ? ppid : -1;
}

/* Live (or zombie) children of @pid. */
static int children_of(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
    FILE *f = fopen(path, "r");
    int n = 0, c;
    if (!f)
        return -1;
    while (fscanf(f, "%d", &c) == 1)
        n++;
    fclose(f);
    return n;
}

/* One zygote forks the stubs; it is not our child; destroying leaves no zombie anywhere. */
START_TEST(test_zygote_reuse)
{
    if (no_zygote())
        return;
    warm_up();
    int fds = pvm_test_count_fds(), children = pvm_test_count_children();
    struct guest a, b;
    guest_init(&a, (const uint8_t[]){ 0x0f, 0x05 }, 2);
    guest_init(&b, (const uint8_t[]){ 0x0f, 0x05 }, 2);
    run(&a);
    run(&b);
    ck_assert_uint_eq(a.t.kind, NSTUB_TRAP_SYSCALL);
    ck_assert_uint_eq(b.t.kind, NSTUB_TRAP_SYSCALL);
    pid_t pa = nstub_pid(a.s), pb = nstub_pid(b.s);
    int z = parent_of(pa);
    ck_assert_int_eq(parent_of(pb), z);
    ck_assert_msg(z != getpid() && parent_is_library(z, getpid()), "stub parent %d is not our zygote", z);
    ck_assert_int_ne(parent_of(z), getpid());   /* double-forked: no SIGCHLD, not in our waitpid(-1) */
    ck_assert_int_eq(pvm_test_count_children(), children);
    int zc = children_of(z);
    ck_assert_int_ge(zc, 2);
    guest_fini(&a);
    guest_fini(&b);
    /* killed by nstub_destroy, reaped by the zygote soon after (nobody waits for it: nspawn_reap) */
    for (int i = 0; i < 2000 && !(kill(pa, 0) < 0 && kill(pb, 0) < 0 && children_of(z) == zc - 2); i++)
        usleep(1000);
    ck_assert_int_eq(kill(pa, 0) < 0 && errno == ESRCH, 1);
    ck_assert_int_eq(kill(pb, 0) < 0 && errno == ESRCH, 1);
    ck_assert_int_eq(children_of(z), zc - 2);
    ck_assert_int_eq(pvm_test_count_fds(), fds);
    ck_assert_int_eq(pvm_test_count_children(), children);
}
END_TEST

/*
 * A spawn the zygote does not answer in time (it is stopped) fails cleanly;
 * when the zygote wakes up and forks the stub for nobody, the next spawn
 * kills that orphan and frees its slot.
 */
START_TEST(test_zygote_timeout_reclaimed)
{
    if (no_zygote())
        return;
    warm_up();
    struct guest a;
    guest_init(&a, (const uint8_t[]){ 0x0f, 0x05 }, 2);
    run(&a);
    pid_t z = parent_of(nstub_pid(a.s));
    int zc = children_of(z);
    ck_assert_int_eq(kill(z, SIGSTOP), 0);
    int memfd = memfd_create("test-timeout", MFD_CLOEXEC);
    ck_assert_int_ge(memfd, 0);
    ck_assert_int_eq(ftruncate(memfd, RAM_SIZE), 0);
    /* Trusting maps: with approval, the orphan would end itself at once (its socket's peer is gone). */
    struct nstub_config cfg = { .memfd = memfd, .kick_signal = KICK, .trust_maps = true };
    struct nstub *lost = NULL;
    char err[256] = "";
    ck_assert_int_lt(nstub_create(&lost, &cfg, err, sizeof(err)), 0);
    ck_assert_ptr_null(lost);
    ck_assert_msg(strstr(err, "did not answer"), "%s", err);
    ck_assert_int_eq(kill(z, SIGCONT), 0);
    /* The zygote now forks the abandoned request's stub. */
    for (int i = 0; i < 100 && children_of(z) == zc; i++)
        usleep(10000);
    ck_assert_int_eq(children_of(z), zc + 1);
    struct guest b;
    guest_init(&b, (const uint8_t[]){ 0x0f, 0x05 }, 2);   /* reclaims: kills the orphan */
    run(&b);
    for (int i = 0; i < 100 && children_of(z) != zc + 1; i++)
        usleep(10000);
    ck_assert_int_eq(children_of(z), zc + 1);   /* a and b's stubs (zc counted a) */
    guest_fini(&b);
    guest_fini(&a);
    close(memfd);
}
END_TEST

/*
 * The pool (stub.c): the first create starts stubs ahead; the next creates
 * take them, with the VM's memfd handed over, and work like any stub (traps,
 * mappings, approval).  The library's fds stay constant over many cycles.
 */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double create_us(struct guest *g, const void *code, size_t len)
{
    uint64_t t0 = now_ns();
    guest_init(g, code, len);
    return (double)(now_ns() - t0) / 1e3;
}

START_TEST(test_pool)
{
    if (no_zygote())
        return;
    setenv("PVM_NATIVE_POOL", "2", 1);   /* before this process's first create (main turned it off) */
    /* mov byte [DATA], 0x5a; ud2 */
    static const uint8_t code[] = { 0xc6, 0x04, 0x25, (uint8_t)DATA, (uint8_t)(DATA >> 8), (uint8_t)(DATA >> 16),
                                    (uint8_t)(DATA >> 24), 0x5a, 0x0f, 0x0b };
    struct guest g;
    uint64_t hits = nstub_pool_hits();
    double fresh = create_us(&g, code, sizeof(code));
    ck_assert_uint_eq(nstub_pool_hits(), hits);
    guest_fini(&g);
    int fds = -1;
    double pooled[20];
    for (int i = 0; i < 20; i++) {
        usleep(5000);   /* the stubs the last create asked for have started meanwhile */
        pooled[i] = create_us(&g, code, sizeof(code));
        ck_assert_uint_eq(nstub_pool_hits(), hits + 1 + (uint64_t)i);
        run(&g);
        expect_fault(&g, 6, CODE + 8);
        ck_assert_uint_eq(g.ram[DATA_OFF], 0x5a);
        if (i == 0) {
            /* Approval came through the pool's socket too. */
            escape_attempt(&g);
            ck_assert_msg(g.t.kind == NSTUB_TRAP_SYSCALL, "kind %u (%s)", g.t.kind, g.t.msg);
            ck_assert_uint_eq(g.r.rip, NSTUB_SYSCALL_INSN + 2);
        }
        guest_fini(&g);
        if (i == 1)
            fds = pvm_test_count_fds();
    }
    ck_assert_int_eq(pvm_test_count_fds(), fds);
    qsort(pooled, 20, sizeof(double), cmp_double);
    printf("stub: create -> first trap back: fresh %.0f us, from the pool median %.0f us\n", fresh, pooled[10]);
}
END_TEST

/* More stubs than one zygote takes: a second zygote; two library fds per stub (pidfd, approval listener). */
START_TEST(test_many_stubs)
{
    if (no_zygote())
        return;
    enum { N = 300 };
    static struct nstub *st[N];
    warm_up();
    int memfd = memfd_create("test-many", MFD_CLOEXEC);
    ck_assert_int_ge(memfd, 0);
    ck_assert_int_eq(ftruncate(memfd, 0x1000), 0);
    int fds = pvm_test_count_fds(), children = pvm_test_count_children();
    int zyg[4] = { 0 }, nz = 0;
    char err[256];
    for (int i = 0; i < N; i++) {
        struct nstub_config cfg = { .memfd = memfd, .kick_signal = KICK };
        int rc = nstub_create(&st[i], &cfg, err, sizeof(err));
        ck_assert_msg(rc == 0, "stub %d: %d %s", i, rc, err);
        int z = parent_of(nstub_pid(st[i]));
        int k = 0;
        while (k < nz && zyg[k] != z)
            k++;
        if (k == nz) {
            ck_assert_int_lt(nz, 4);
            ck_assert_msg(parent_is_library(z, getpid()), "stub %d: parent %d", i, z);
            zyg[nz++] = z;
        }
    }
    int grown = pvm_test_count_fds() - fds;
    printf("stub: %d stubs: %d zygote(s), %d more fds in the library\n", N, nz, grown);
    ck_assert_int_ge(nz, 2);
    /* pidfd and listener per stub, plus socket + pidfd of each new zygote */
    ck_assert_int_le(grown, 2 * N + 2 * (nz - 1));
    int zc = 0;
    for (int k = 0; k < nz; k++)
        zc += children_of(zyg[k]);
    ck_assert_int_ge(zc, N);
    for (int i = 0; i < N; i++)
        nstub_destroy(st[i]);
    /* every destroyed stub reaped by its zygote soon after (nspawn_reap does not wait): no zombie left */
    int left = zc;
    for (int t = 0; t < 2000 && left != zc - N; t++) {
        if (t)
            usleep(1000);
        left = 0;
        for (int k = 0; k < nz; k++)
            left += children_of(zyg[k]);
    }
    ck_assert_int_eq(left, zc - N);
    ck_assert_int_le(pvm_test_count_fds() - fds, 2 * (nz - 1));
    ck_assert_int_eq(pvm_test_count_children(), children);
    close(memfd);
}
END_TEST

/*
 * A library child (forked: its own library process) whose stub's guest
 * forged an rt_sigreturn that blocks every signal and then spins: the
 * stub's own checks (SIGPROF, getppid) never run again.
 */
static pid_t backstop_child(bool direct, pid_t *stub_pid)
{
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(p[0]);
        if (direct)
            setenv("PVM_NATIVE_ZYGOTE", "0", 1);   /* read once, at the first stub of the process */
        static const uint8_t code[] = { 0x0f, 0x0b, 0xeb, 0xfe };   /* ud2; jmp . */
        int memfd = memfd_create("test-guest", MFD_CLOEXEC);
        ucontext_t uc;
        forged_frame(&uc, ~0ull);
        struct nstub *s;
        struct nstub_config cfg = { .memfd = memfd, .kick_signal = KICK };
        struct nstub_regs r = { .rip = NSTUB_SYSCALL_INSN, .rflags = 0x202, .cs = 0x33, .ss = 0x2b };
        r.gpr[RAX] = 15;   /* rt_sigreturn, from the stub's own SYSCALL */
        r.gpr[RSP] = DATA + 0x900;
        struct nstub_trap t;
        if (memfd < 0 || ftruncate(memfd, RAM_SIZE) < 0 || pwrite(memfd, code, sizeof(code), 0) != sizeof(code) ||
            pwrite(memfd, &uc, offsetof(ucontext_t, uc_sigmask) + 8, DATA_OFF + 0x900) < 0 ||
            nstub_create(&s, &cfg, NULL, 0) < 0 || nstub_map(s, CODE, 0x1000, 0, PROT_READ | PROT_EXEC) < 0 ||
            nstub_map(s, DATA, 0x1000, DATA_OFF, PROT_READ | PROT_WRITE) < 0)
            _exit(1);
        int sp = nstub_pid(s);
        if (write(p[1], &sp, sizeof(sp)) != sizeof(sp))
            _exit(1);
        nstub_run(s, &r, &t);   /* the guest spins with every signal blocked: no return */
        for (;;)
            pause();
    }
    return child_stub_pid(pid, p, stub_pid);
}

/* All signals blocked in /proc/<pid>/status (SigBlk)? */
static bool blocks_all(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    unsigned long long blk = 0;
    while (f && fgets(line, sizeof(line), f))
        sscanf(line, "SigBlk: %llx", &blk);
    if (f)
        fclose(f);
    return (blk | (1ull << (SIGKILL - 1)) | (1ull << (SIGSTOP - 1))) == ~0ull;
}

/*
 * Only the kernel can end such a stub: the death pipe's SIGKILL.  @direct:
 * spawned by the library itself; else by a zygote, which we SIGSTOP so that
 * it cannot kill its stubs either (its own backstop must end it too).
 */
static void check_backstop(bool direct)
{
    pid_t stub, lib = backstop_child(direct, &stub);
    double cpu = wait_cpu(stub, 0.6);   /* > NSTUB_ORPHAN_CPU_US: a SIGPROF was due and stayed blocked */
    ck_assert_msg(cpu >= 0.6, "the guest spun only %.2f s", cpu);
    ck_assert_msg(blocks_all(stub), "the forged sigreturn did not block every signal");
    pid_t z = parent_of(stub);
    if (direct) {
        ck_assert_int_eq(z, lib);
    } else {
        ck_assert_msg(z != lib && parent_is_library(z, lib), "stub parent %d", z);
        ck_assert_int_eq(kill(z, SIGSTOP), 0);
    }
    uint64_t t0 = now_ns();
    kill(lib, SIGKILL);
    ck_assert_int_eq(waitpid(lib, NULL, 0), lib);
    while (!process_gone(stub) && now_ns() - t0 < 3000000000ull)
        usleep(5000);
    double dt = (now_ns() - t0) / 1e9;
    bool zgone = direct;
    while (!direct && !(zgone = process_gone(z)) && now_ns() - t0 < 3000000000ull)
        usleep(5000);
    printf("stub: backstop (%s): a stub blocking every signal gone %.3f s after its library was killed%s\n",
           direct ? "direct spawn" : "zygote stopped", dt, direct ? "" : (zgone ? ", zygote gone too" : ""));
    if (!process_gone(stub))
        kill(stub, SIGKILL);
    if (!zgone)
        kill(z, SIGKILL);
    ck_assert_msg(dt < 1.0, "the stub outlived its library by %.2f s", dt);
    ck_assert_msg(zgone, "the stopped zygote outlived its library");
}

START_TEST(test_backstop_direct)
{
    check_backstop(true);
}
END_TEST

START_TEST(test_backstop_zygote)
{
    if (no_zygote())
        return;
    check_backstop(false);
}
END_TEST

int main(void)
{
    /* Exact process and fd accounting below: no pre-started stubs, except in test_pool. */
    setenv("PVM_NATIVE_POOL", "0", 1);
    Suite *s = suite_create("stub");
    TCase *tc = tcase_create("traps");
    tcase_add_test(tc, test_syscall_trap);
    tcase_add_test(tc, test_page_faults);
    tcase_add_test(tc, test_exceptions);
    tcase_add_test(tc, test_resume_modified);
    tcase_add_test(tc, test_fpu_preserved);
    tcase_add_test(tc, test_kick);
    tcase_add_test(tc, test_prewake);
    tcase_add_test(tc, test_killed_is_died);
    tcase_add_test(tc, test_stub_process_state);
    tcase_add_test(tc, test_map_args_and_batching);
    suite_add_tcase(s, tc);
    TCase *esc = tcase_create("containment");
    tcase_add_test(esc, test_escape_syscalls);
    tcase_add_test(esc, test_escape_stub_code);
    tcase_add_test(esc, test_no_capabilities);
    tcase_add_test(esc, test_escape_mmap);
    tcase_add_test(esc, test_no_host_pid);
    tcase_add_test(esc, test_forged_report_mapping);
    tcase_add_test(esc, test_guest_writes_control_page);
    tcase_add_test(esc, test_guest_blocks_kicks);
    tcase_add_test(esc, test_vsyscall_page);
    tcase_add_test(esc, test_cycles_no_leaks);
    tcase_set_timeout(esc, 120);
    suite_add_tcase(s, esc);
    TCase *life = tcase_create("lifetime");
    tcase_add_test(life, test_survives_creating_thread);
    tcase_add_test(life, test_cpu_timer_invisible);
    tcase_add_test(life, test_kick_signal_sigprof);
    tcase_add_test(life, test_dies_with_library_running);
    tcase_add_test(life, test_dies_with_library_idle);
    tcase_set_timeout(life, 60);
    suite_add_tcase(s, life);
    TCase *cost = tcase_create("costs");
    tcase_add_test(cost, test_costs);
    tcase_set_timeout(cost, 120);
    suite_add_tcase(s, cost);
    TCase *spawn = tcase_create("creation");
    tcase_add_test(spawn, test_zygote_reuse);
    tcase_add_test(spawn, test_many_stubs);
    tcase_add_test(spawn, test_pool);
    tcase_add_test(spawn, test_zygote_timeout_reclaimed);
    tcase_add_test(spawn, test_backstop_direct);
    tcase_add_test(spawn, test_backstop_zygote);
    tcase_set_timeout(spawn, 60);
    suite_add_tcase(s, spawn);
    return pvm_test_run_suite(s);
}
