/*
 * tests/kmod/kmod_run_test.c - PVM_KMOD_AS_RUN (ABI v2, and v3's
 * PVM_KMOD_RUN_PVM), run inside QEMU by kmod-e2e.
 *
 * Tiny guests of a few instructions, exact to the register: every kind of
 * exit (SYSCALL, #UD, #PF with its error code and CR2, INT3, INT 0x80, #GP of
 * INT n, I/O, HLT and CLI at ring 3), the register file both ways, FS/GS
 * bases, the thread's FPU state as the guest's, guest writes landing in the
 * caller's pages, the module's own pages out of the guest's reach, a long run
 * that host interrupts cut many times, kicks (immediate_exit, a signal), an
 * UNMAP and a close from another thread while a guest runs, migration between
 * CPUs, bad arguments, and another process's address space; with
 * PVM_KMOD_RUN_PVM, user SYSCALLs and ERETUs between two address spaces,
 * exact to the PVCS byte, the ERETUs it must leave to the caller, and its
 * bad arguments.
 *
 * Every check prints its line on failure; exit status 0 only if all passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <pvm/kmod.h>

#define PG 4096ull
#define CODE 0x400000ull  /* RX */
#define DATA 0x600000ull  /* RW, the stack's page too */
#define RODATA 0x700000ull /* R */

#include "kcheck.h"

int failures;

enum { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15 };

static int dev, as;
static uint8_t *code, *data, *rodata;

static void *page(void)
{
    void *p = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    memset(p, 0, PG); /* populated: not the shared zero page */
    return p;
}

static void map(uint64_t gva, void *p, uint32_t flags)
{
    struct pvm_kmod_map m = { .gva = gva, .uaddr = (uintptr_t)p, .len = PG, .flags = flags };
    if (ioctl(as, PVM_KMOD_AS_MAP, &m) != 0) {
        perror("PVM_KMOD_AS_MAP");
        exit(2);
    }
}

/* A run from CODE with @bytes there; RSP at the top of DATA. */
static struct pvm_kmod_run prepare(const void *bytes, size_t n)
{
    struct pvm_kmod_run r;
    memset(code, 0xcc, PG);
    memcpy(code, bytes, n);
    memset(&r, 0, sizeof(r));
    r.regs.rip = CODE;
    r.cs = 0x33;
    r.regs.rflags = 0x2;
    r.regs.gpr[RSP] = DATA + PG;
    return r;
}

static int run(struct pvm_kmod_run *r)
{
    return ioctl(as, PVM_KMOD_AS_RUN, r);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

#define BYTES(...) ((const uint8_t[]){ __VA_ARGS__ }), sizeof((const uint8_t[]){ __VA_ARGS__ })

static void test_syscall_and_registers(void)
{
    /* mov $0x1234,%eax; syscall */
    struct pvm_kmod_run r = prepare(BYTES(0xb8, 0x34, 0x12, 0, 0, 0x0f, 0x05));
    for (unsigned i = 0; i < 16; i++)
        if (i != RSP)
            r.regs.gpr[i] = 0x1111111111111111ull * (i + 1) ^ 0x0123456789abcdefull;
    uint64_t in[16];
    memcpy(in, r.regs.gpr, sizeof(in));
    r.regs.rflags = 0x2 | 0x1 | 0x80 | 0x400 | 0x3000 /* IOPL: dropped */ | 0x20000 /* VM: dropped */;
    r.regs.fs_base = 0x1234567000ull;
    r.regs.gs_base = 0x7654321000ull;
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.exit_reason, PVM_KMOD_EXIT_SYSCALL);
    CHECK_EQ(r.vector, 0);
    CHECK_EQ(r.error_code, 0);
    CHECK_EQ(r.cr2, 0);
    CHECK_EQ(r.regs.rip, CODE + 7);
    CHECK_EQ(r.regs.gpr[RAX], 0x1234);
    CHECK_EQ(r.regs.gpr[RCX], CODE + 7); /* the CPU's SYSCALL */
    CHECK_EQ(r.regs.gpr[R11], 0x2 | 0x1 | 0x80 | 0x400 | 0x200);
    CHECK_EQ(r.regs.rflags, 0x2 | 0x1 | 0x80 | 0x400 | 0x200);
    for (unsigned i = 0; i < 16; i++)
        if (i != RAX && i != RCX && i != R11 && i != RSP)
            CHECK_EQ(r.regs.gpr[i], in[i]);
    CHECK_EQ(r.regs.gpr[RSP], DATA + PG);
    CHECK_EQ(r.regs.fs_base, 0x1234567000ull);
    CHECK_EQ(r.regs.gs_base, 0x7654321000ull);
    CHECK_EQ(r.cs, 0x33);
    CHECK_EQ(r.immediate_exit, 0);
}

static void test_exceptions(void)
{
    struct pvm_kmod_run r;

    r = prepare(BYTES(0x90, 0x0f, 0x0b)); /* nop; ud2 */
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.exit_reason, PVM_KMOD_EXIT_EXCEPTION);
    CHECK_EQ(r.vector, 6);
    CHECK_EQ(r.error_code, 0);
    CHECK_EQ(r.regs.rip, CODE + 1);
    CHECK_EQ(r.regs.rflags, 0x202);

    r = prepare(BYTES(0xcc)); /* int3: a trap, RIP after it */
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 3);
    CHECK_EQ(r.regs.rip, CODE + 1);

    r = prepare(BYTES(0xcd, 0x80)); /* int $0x80: RIP after it */
    r.regs.gpr[RAX] = 0xa0a0a0a000011234ull;
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 0x80);
    CHECK_EQ(r.regs.rip, CODE + 2);
    CHECK_EQ(r.regs.gpr[RAX], 0xa0a0a0a000011234ull);

    r = prepare(BYTES(0xcd, 0x20)); /* int $0x20: a DPL-0 gate, #GP(0x20 << 3 | 2) */
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 13);
    /* QEMU TCG (7.2) scales the index by the 16-byte gate size: 0x202. */
    CHECK(r.error_code == 0x102 || r.error_code == 0x202);
    CHECK_EQ(r.regs.rip, CODE);

    r = prepare(BYTES(0xe6, 0x80)); /* out %al,$0x80: no I/O permission, #GP(0) */
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 13);
    CHECK_EQ(r.error_code, 0);

    r = prepare(BYTES(0xf4)); /* hlt */
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 13);

    r = prepare(BYTES(0xfa)); /* cli with IOPL 0 */
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 13);

    r = prepare(BYTES(0x48, 0x31, 0xc0, 0x48, 0xf7, 0xf0)); /* xor %rax,%rax; div %rax */
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 0);
    CHECK_EQ(r.regs.rip, CODE + 3);

    /* TF set by the caller: #DB after one instruction. */
    r = prepare(BYTES(0x90, 0x90));
    r.regs.rflags = 0x102;
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 1);
    CHECK_EQ(r.regs.rip, CODE + 1);

    /* TF over a SYSCALL: its #DB comes in ring 0 at the switch's entry and is dropped; the SYSCALL exits. */
    r = prepare(BYTES(0x0f, 0x05));
    r.regs.rflags = 0x102;
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.exit_reason, PVM_KMOD_EXIT_SYSCALL);
    CHECK_EQ(r.regs.gpr[R11], 0x302);
    CHECK_EQ(r.regs.rip, CODE + 2);

    /* A far jump to 0x23 (ljmp *DATA+0x20, m16:32) enters compat mode: #UD there comes back with CS 0x23. */
    memcpy(data + 0x20, (const uint8_t[]){ 0x02, 0x00, 0x40, 0x00, 0x23, 0x00 }, 6);
    r = prepare(BYTES(0xff, 0x2c, 0x25, 0x20, 0x00, 0x60, 0x00, 0x0f, 0x0b));
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 6);
    CHECK_EQ(r.regs.rip, CODE + 7);
    CHECK_EQ(r.cs, 0x23);

    /* Compat mode in: INT 0x80 with EAX, then SYSCALL there (AMD: a SYSCALL exit with CS 0x23; Intel: #UD). */
    r = prepare(BYTES(0xb8, 0x78, 0x56, 0x34, 0x12, 0xcd, 0x80, 0x0f, 0x05));
    r.cs = 0x23;
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 0x80);
    CHECK_EQ(r.regs.rip, CODE + 7);
    CHECK_EQ(r.regs.gpr[RAX], 0x12345678);
    CHECK_EQ(r.cs, 0x23);
    CHECK_EQ(run(&r), 0);
    if (r.exit_reason == PVM_KMOD_EXIT_SYSCALL) {
        CHECK_EQ(r.regs.rip, CODE + 9);
        CHECK_EQ(r.regs.gpr[RCX], CODE + 9);
    } else {
        CHECK_EQ(r.vector, 6);
        CHECK_EQ(r.regs.rip, CODE + 7);
    }
    CHECK_EQ(r.cs, 0x23);

    /* A non-canonical RSP is loaded as it is: the guest's first push faults, in the guest (#SS or #GP). */
    r = prepare(BYTES(0x50)); /* push %rax */
    r.regs.gpr[RSP] = 0x0000800000000010ull;
    CHECK_EQ(run(&r), 0);
    CHECK(r.vector == 12 || r.vector == 13);
    CHECK_EQ(r.regs.rip, CODE);

    /* SYSENTER is #GP (a null SYSENTER_CS) or #UD (AMD in long mode), never the host's entry. */
    r = prepare(BYTES(0x0f, 0x34));
    CHECK_EQ(run(&r), 0);
    CHECK(r.vector == 13 || r.vector == 6);
    CHECK_EQ(r.regs.rip, CODE);
}

static void test_page_faults(void)
{
    struct pvm_kmod_run r;

    /* mov 0x5008,%rax: not present, read, user */
    r = prepare(BYTES(0x48, 0x8b, 0x04, 0x25, 0x08, 0x50, 0, 0));
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 14);
    CHECK_EQ(r.error_code, 0x4);
    CHECK_EQ(r.cr2, 0x5008);
    CHECK_EQ(r.regs.rip, CODE);

    /* movq $7,RODATA+16: present, write, user */
    r = prepare(BYTES(0x48, 0xc7, 0x04, 0x25, 0x10, 0x00, 0x70, 0x00, 0x07, 0, 0, 0));
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 14);
    CHECK_EQ(r.error_code, 0x7);
    CHECK_EQ(r.cr2, RODATA + 16);

    /* jmp *%rax to DATA (NX): instruction fetch */
    r = prepare(BYTES(0xff, 0xe0));
    r.regs.gpr[RAX] = DATA;
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 14);
    CHECK_EQ(r.error_code, 0x15);
    CHECK_EQ(r.cr2, DATA);
    CHECK_EQ(r.regs.rip, DATA);

    /* movq $0xdeadbeef,DATA+8; mov RODATA,%rbx; syscall: the caller's pages */
    rodata[0] = 0x5a;
    r = prepare(BYTES(0x48, 0xc7, 0x04, 0x25, 0x08, 0x00, 0x60, 0x00, 0xef, 0xbe, 0xad, 0xde,
                      0x48, 0x8b, 0x1c, 0x25, 0x00, 0x00, 0x70, 0x00, 0x0f, 0x05));
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.exit_reason, PVM_KMOD_EXIT_SYSCALL);
    CHECK_EQ(*(uint64_t *)(data + 8), 0xffffffffdeadbeefull);
    CHECK_EQ(r.regs.gpr[RBX], 0x5a);
}

/* The module's pages are in every guest root (slot 511) but supervisor only. */
static void test_module_pages_unreachable(void)
{
    unsigned long long text = 0;
    FILE *f = fopen("/sys/module/pvm/sections/.pvm_switch.text", "r");
    CHECK(f != NULL);
    if (f) {
        CHECK(fscanf(f, "%llx", &text) == 1);
        fclose(f);
    }
    CHECK(text >> 39 == 0x1ffffff); /* PML4 slot 511 */
    struct pvm_kmod_run r = prepare(BYTES(0x48, 0x8b, 0x00)); /* mov (%rax),%rax */
    r.regs.gpr[RAX] = text;
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 14);
    CHECK_EQ(r.error_code, 0x5); /* present, read, user: a protection fault */
    CHECK_EQ(r.cr2, text);
    /* Jumping there: the same, as an instruction fetch. */
    r = prepare(BYTES(0xff, 0xe0));
    r.regs.gpr[RAX] = text;
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 14);
    CHECK_EQ(r.error_code, 0x15);
    /* An unmapped kernel address: not present. */
    r = prepare(BYTES(0x48, 0x8b, 0x00));
    r.regs.gpr[RAX] = 0xffff888000000000ull;
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.vector, 14);
    CHECK_EQ(r.error_code, 0x4);
}

static void test_fs_gs_fpu(void)
{
    /* mov %fs:8,%rax; mov %gs:16,%rbx; movq %xmm0,%rcx; movq %rdx,%xmm1; syscall */
    struct pvm_kmod_run r = prepare(BYTES(0x64, 0x48, 0x8b, 0x04, 0x25, 0x08, 0, 0, 0,
                                          0x65, 0x48, 0x8b, 0x1c, 0x25, 0x10, 0, 0, 0,
                                          0x66, 0x48, 0x0f, 0x7e, 0xc1,
                                          0x66, 0x48, 0x0f, 0x6e, 0xca,
                                          0x0f, 0x05));
    *(uint64_t *)(data + 8) = 0x1111;
    *(uint64_t *)(data + 16 + 0x100) = 0x2222;
    r.regs.fs_base = DATA;
    r.regs.gs_base = DATA + 0x100;
    r.regs.gpr[RDX] = 0x5566778899aabbccull;
    uint64_t x0 = 0x0102030405060708ull, x1 = 0;
    /* The guest's FPU state is the thread's own: xmm0 in, xmm1 out. */
    __asm__ volatile("movq %0, %%xmm0" : : "r"(x0) : "xmm0");
    int rc = run(&r);
    __asm__ volatile("movq %%xmm1, %0" : "=r"(x1));
    CHECK_EQ(rc, 0);
    CHECK_EQ(r.exit_reason, PVM_KMOD_EXIT_SYSCALL);
    CHECK_EQ(r.regs.gpr[RAX], 0x1111);
    CHECK_EQ(r.regs.gpr[RBX], 0x2222);
    CHECK_EQ(r.regs.gpr[RCX], CODE + 30); /* SYSCALL's RCX */
    CHECK_EQ(x1, 0x5566778899aabbccull);

    /* WRFSBASE/WRGSBASE where the kernel allows them at ring 3: the bases come back. */
    if (getauxval(AT_HWCAP2) & 2 /* HWCAP2_FSGSBASE */) {
        /* wrfsbase %rax; wrgsbase %rbx; syscall */
        r = prepare(BYTES(0xf3, 0x48, 0x0f, 0xae, 0xd0, 0xf3, 0x48, 0x0f, 0xae, 0xdb, 0x0f, 0x05));
        r.regs.gpr[RAX] = 0xfeed000;
        r.regs.gpr[RBX] = 0xffff888000001000ull; /* a kernel address: only a base */
        CHECK_EQ(run(&r), 0);
        CHECK_EQ(r.exit_reason, PVM_KMOD_EXIT_SYSCALL);
        CHECK_EQ(r.regs.fs_base, 0xfeed000);
        CHECK_EQ(r.regs.gs_base, 0xffff888000001000ull);
    } else {
        printf("kmod_run_test: no FSGSBASE at ring 3, WRFSBASE case skipped\n");
    }
    /* The guest loading FS/DS selectors leaves the thread's as they were. */
    unsigned short fs0, ds0, fs1, ds1;
    __asm__ volatile("mov %%fs, %0; mov %%ds, %1" : "=r"(fs0), "=r"(ds0));
    /* mov $0x2b,%eax; mov %eax,%fs; mov %eax,%ds; syscall */
    r = prepare(BYTES(0xb8, 0x2b, 0, 0, 0, 0x8e, 0xe0, 0x8e, 0xd8, 0x0f, 0x05));
    CHECK_EQ(run(&r), 0);
    __asm__ volatile("mov %%fs, %0; mov %%ds, %1" : "=r"(fs1), "=r"(ds1));
    CHECK_EQ(fs1, fs0);
    CHECK_EQ(ds1, ds0);
}

/* 1: dec %rcx; jnz 1b; syscall - a run long enough for many host timer interrupts. */
static void test_long_run(void)
{
    struct pvm_kmod_run r = prepare(BYTES(0x48, 0xff, 0xc9, 0x75, 0xfb, 0x0f, 0x05));
    r.regs.gpr[RCX] = 100000000ull;
    r.regs.gpr[RBX] = 0xabcdef;
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.exit_reason, PVM_KMOD_EXIT_SYSCALL);
    CHECK_EQ(r.regs.gpr[RBX], 0xabcdef);
    CHECK_EQ(r.regs.rip, CODE + 7);
}

static struct pvm_kmod_run spin_run;
static volatile pid_t spin_tid;

static void on_sig(int sig)
{
    (void)sig;
}

static void *spinner(void *arg)
{
    (void)arg;
    spin_tid = (pid_t)syscall(SYS_gettid);
    long rc = run(&spin_run);
    return (void *)(rc == -1 ? (long)errno : 0);
}

/* Start spinner() on spin_run and wait until its thread is about to RUN. */
static void start_spinner(pthread_t *t)
{
    spin_tid = 0;
    pthread_create(t, NULL, spinner, NULL);
    while (!spin_tid)
        usleep(1000);
}

/* jmp . forever: a signal ends the run with EINTR and the guest's registers. */
static void test_kick(void)
{
    struct sigaction sa = { .sa_handler = on_sig };
    sigaction(SIGUSR1, &sa, NULL);
    spin_run = prepare(BYTES(0x48, 0xff, 0xc0, 0xeb, 0xfb)); /* 1: inc %rax; jmp 1b */
    pthread_t t;
    void *ret;
    start_spinner(&t);
    fprintf(stderr, "kick: spinner %d started\n", spin_tid);
    usleep(200000);
    fprintf(stderr, "kick: kicking\n");
    spin_run.immediate_exit = 1; /* as a provider's kick: flag, then signal */
    syscall(SYS_tgkill, getpid(), spin_tid, SIGUSR1);
    pthread_join(t, &ret);
    fprintf(stderr, "kick: joined\n");
    CHECK_EQ((long)ret, EINTR);
    CHECK(spin_run.regs.rip == CODE || spin_run.regs.rip == CODE + 3);
    CHECK(spin_run.regs.gpr[RAX] > 1000); /* it ran */
    uint64_t count = spin_run.regs.gpr[RAX];

    /* immediate_exit alone: no entry at all, registers unchanged. */
    CHECK_EQ(run(&spin_run), -1);
    CHECK_EQ(errno, EINTR);
    CHECK_EQ(spin_run.regs.gpr[RAX], count);

    /* PVM_KMOD_AS_KICK: no signal; the running guest exits (IPI) and RUN says EINTR. */
    spin_run.immediate_exit = 0;
    start_spinner(&t);
    usleep(100000);
    CHECK_EQ(ioctl(as, PVM_KMOD_AS_KICK, 0), 0);
    pthread_join(t, &ret);
    CHECK_EQ((long)ret, EINTR);
    CHECK(spin_run.regs.gpr[RAX] > count);
    count = spin_run.regs.gpr[RAX];
    /* A kick with no RUN in progress ends the next one at once, and only that one. */
    CHECK_EQ(ioctl(as, PVM_KMOD_AS_KICK, 0), 0);
    CHECK_EQ(run(&spin_run), -1);
    CHECK_EQ(errno, EINTR);
    CHECK_EQ(spin_run.regs.gpr[RAX], count);
    CHECK_EQ(ioctl(as, PVM_KMOD_AS_KICK, 1), -1);
    CHECK_EQ(errno, EINVAL);

    /* Resuming the registers as they came back goes on counting. */
    spin_run.immediate_exit = 0;
    start_spinner(&t);
    usleep(100000);
    fprintf(stderr, "kick: signal alone\n");
    syscall(SYS_tgkill, getpid(), spin_tid, SIGUSR1);
    pthread_join(t, &ret);
    CHECK_EQ((long)ret, EINTR);
    CHECK(spin_run.regs.gpr[RAX] > count);
}

static void *kick_later(void *arg)
{
    usleep(200000);
    syscall(SYS_tgkill, getpid(), *(pid_t *)arg, SIGUSR1);
    return NULL;
}

/*
 * A RUN holds its address space: an UNMAP from another thread waits until the
 * run ends (no page may go while a CPU can hold it in its TLB), and closing
 * the fd meanwhile frees nothing until the run is over.
 */
static void test_unmap_waits_for_run(void)
{
    spin_run = prepare(BYTES(0x48, 0xff, 0xc0, 0xeb, 0xfb)); /* 1: inc %rax; jmp 1b */
    pthread_t t, k;
    void *ret;
    start_spinner(&t);
    usleep(50000);
    pid_t tid = spin_tid;
    pthread_create(&k, NULL, kick_later, &tid);
    double t0 = now_ns();
    struct pvm_kmod_unmap u = { .gva = CODE, .len = PG };
    CHECK_EQ(ioctl(as, PVM_KMOD_AS_UNMAP, &u), 0);
    double waited_ms = (now_ns() - t0) / 1e6;
    pthread_join(t, &ret);
    pthread_join(k, NULL);
    CHECK_EQ((long)ret, EINTR);
    CHECK(waited_ms >= 150); /* the UNMAP returned only after the kick ended the run */
    /* The code page is gone now: the same registers fault on it. */
    spin_run.regs.rip = CODE;
    CHECK_EQ(run(&spin_run), 0);
    CHECK_EQ(spin_run.vector, 14);
    CHECK_EQ(spin_run.error_code, 0x14);
    CHECK_EQ(spin_run.cr2, CODE);
    map(CODE, code, PVM_KMOD_MAP_READ | PVM_KMOD_MAP_EXEC);

    /* Closing the address space's fd under a running guest: it lives until the run ends. */
    int dup_as = dup(as);
    spin_run = prepare(BYTES(0x48, 0xff, 0xc0, 0xeb, 0xfb));
    int saved = as;
    as = dup_as;
    start_spinner(&t);
    as = saved;
    usleep(50000);
    close(dup_as);
    struct pvm_kmod_info info;
    CHECK_EQ(ioctl(dev, PVM_KMOD_INFO, &info), 0);
    CHECK_EQ(info.nr_as, 1);
    syscall(SYS_tgkill, getpid(), spin_tid, SIGUSR1);
    pthread_join(t, &ret);
    CHECK_EQ((long)ret, EINTR);
}

/* Runs on every CPU in turn, moved between them by affinity. */
static void test_migration(void)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 0; i < 200; i++) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(i % ncpu, &set);
        sched_setaffinity(0, sizeof(set), &set);
        struct pvm_kmod_run r = prepare(BYTES(0x48, 0xff, 0xc9, 0x75, 0xfb, 0x0f, 0x05));
        r.regs.gpr[RCX] = 1000 + i;
        r.regs.gpr[RDX] = i;
        if (run(&r) != 0 || r.exit_reason != PVM_KMOD_EXIT_SYSCALL || r.regs.gpr[RDX] != (uint64_t)i) {
            CHECK(!"a run on a CPU failed");
            break;
        }
    }
    cpu_set_t all;
    CPU_ZERO(&all);
    for (long c = 0; c < ncpu; c++)
        CPU_SET(c, &all);
    sched_setaffinity(0, sizeof(all), &all);
}

/* A RUN of `syscall` with @change applied must fail with EINVAL. */
#define BAD_RUN(change)                                                                             \
    do {                                                                                            \
        r = prepare(BYTES(0x0f, 0x05));                                                             \
        change;                                                                                     \
        CHECK_EQ(run(&r), -1);                                                                      \
        CHECK_EQ(errno, EINVAL);                                                                    \
    } while (0)

static void test_bad_args(void)
{
    struct pvm_kmod_run r;
    BAD_RUN(r.regs.rip = 0x0000800000000000ull);
    BAD_RUN((r.cs = 0x23, r.regs.rip = 0x100000000ull)); /* beyond the 32-bit limit */
    BAD_RUN(r.regs.gs_base = 0x0000800000000000ull);     /* non-canonical: WRMSR would fault in ring 0 */
    BAD_RUN(r.regs.fs_base = 0x8000000000000000ull);
    BAD_RUN(r.cs = 0x10);                                /* kernel code */
    BAD_RUN(r.pad1 = 1);
    BAD_RUN(r.flags = 2);
    BAD_RUN(r.pvm = 8);                                  /* without PVM_KMOD_RUN_PVM */
    BAD_RUN(r.reserved[4] = 1);
    BAD_RUN(r.pad0[0] = 1);
    CHECK_EQ(ioctl(as, PVM_KMOD_AS_RUN, (void *)8), -1);
    CHECK_EQ(errno, EFAULT);
    CHECK_EQ(ioctl(dev, PVM_KMOD_AS_RUN, &r), -1); /* not on /dev/pvm */
    CHECK_EQ(errno, ENOTTY);

    /* A forked child may not run its parent's address space. */
    pid_t pid = fork();
    if (pid == 0) {
        struct pvm_kmod_run c = prepare(BYTES(0x0f, 0x05));
        _exit(ioctl(as, PVM_KMOD_AS_RUN, &c) == -1 && errno == EPERM ? 0 : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- PVM_KMOD_RUN_PVM ------------------------------------------------------------ */

#define KCODE 0x500000ull        /* the kernel address space's code (RX) */
#define KSTACK 0x601000ull       /* its stack page (RW), top KSTACK + PG */
#define SUP_RSP (KSTACK + 0x800)
#define KGS 0x5555000ull          /* MSR_KERNEL_GS_BASE */
#define UGS 0x7654321000ull       /* the user's GS base */

/* The Gen A PVCS (docs/pvm-abi.md §3.1). */
struct pvcs {
    uint64_t event_flags;
    uint32_t event_errcode, event_vector;
    uint64_t cr2, reserved0[5];
    uint16_t user_cs, user_ss;
    uint32_t reserved1;
    uint64_t reserved2, user_gsbase;
    uint32_t eflags, pkru;
    uint64_t rip, rsp, rcx, r11;
};
_Static_assert(sizeof(struct pvcs) == 128, "PVCS layout");

static int kas = -1;               /* the kernel address space */
static uint8_t *kcode, *kstack, *pvcs_page;

/*
 * User code at CODE: 1: inc %rbx; mov $7,%eax; syscall; jmp 1b.
 * Kernel code at KCODE (LSTAR): sub $8,%rsp; inc %r12; cmp %r15,%r12; je 1f;
 * nop; syscall (the ERETU site, RETU_RIP = KCODE + 13); 1: hlt (#GP: not the
 * module's to deliver, so the run ends there).
 */
static const uint8_t user_loop[] = { 0x48, 0xff, 0xc3, 0xb8, 7, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf4 };
static const uint8_t kernel_entry[] = { 0x48, 0x83, 0xec, 0x08, 0x49, 0xff, 0xc4, 0x4d, 0x39, 0xfc, 0x74, 0x03,
                                        0x90, 0x0f, 0x05, 0xf4 };
#define RETU_RIP (KCODE + 13)
#define USER_RET (CODE + 10) /* after the user's SYSCALL */

static void pvm_setup(void)
{
    struct pvm_kmod_create_as c = { 0 };
    kas = ioctl(dev, PVM_KMOD_CREATE_AS, &c);
    CHECK(kas >= 0);
    kcode = page();
    kstack = page();
    pvcs_page = page();
    memcpy(kcode, kernel_entry, sizeof(kernel_entry));
    struct pvm_kmod_map m = { .gva = KCODE, .uaddr = (uintptr_t)kcode, .len = PG,
                              .flags = PVM_KMOD_MAP_READ | PVM_KMOD_MAP_EXEC };
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_MAP, &m), 0);
    m = (struct pvm_kmod_map){ .gva = KSTACK, .uaddr = (uintptr_t)kstack, .len = PG,
                               .flags = PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE };
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_MAP, &m), 0);
}

static struct pvm_kmod_pvm pvm_block(uint32_t mode)
{
    return (struct pvm_kmod_pvm){ .pvcs = (uintptr_t)pvcs_page, .lstar = KCODE, .retu_rip_plus2 = RETU_RIP + 2,
                                  .kernel_gs_base = KGS, .supervisor_rsp = SUP_RSP, .other_as = kas,
                                  .mode = mode };
}

/*
 * Five user SYSCALLs and four ERETUs in one RUN: the kernel ends it with
 * HLT (#GP) at its fifth entry.  Every register and PVCS byte is the model's
 * (lib/machine/event.c, eret.c).
 */
static void test_pvm_switches(void)
{
    struct pvm_kmod_run r = prepare(user_loop, sizeof(user_loop));
    struct pvm_kmod_pvm p = pvm_block(PVM_KMOD_MODE_USER);
    struct pvcs *v = (struct pvcs *)pvcs_page;
    memset(pvcs_page, 0xa5, 128);
    v->event_flags = 0x300; /* IF and IP: the user event clears IF, ERETU IP */
    r.flags = PVM_KMOD_RUN_PVM;
    r.pvm = (uintptr_t)&p;
    r.regs.gpr[R15] = 5;
    r.regs.gs_base = UGS;
    r.regs.rflags = 0x2 | 0x1 | 0x400; /* CF, DF */
    CHECK_EQ(run(&r), 0);
    CHECK_EQ(r.exit_reason, PVM_KMOD_EXIT_EXCEPTION);
    CHECK_EQ(r.vector, 13);
    CHECK_EQ(r.regs.rip, KCODE + 15);
    CHECK_EQ(p.mode, PVM_KMOD_MODE_SUPERVISOR);
    CHECK_EQ(p.switches, 9);
    CHECK_EQ(p.events, 9);
    CHECK_EQ(p.nmi_unmasked, 1);
    CHECK_EQ(p.supervisor_rsp, SUP_RSP - 4 * 8); /* RSP at the fourth ERETU */
    CHECK_EQ(r.regs.gpr[RSP], SUP_RSP - 5 * 8);
    CHECK_EQ(r.regs.gpr[RBX], 5);
    CHECK_EQ(r.regs.gpr[R12], 5);
    CHECK_EQ(r.regs.gpr[RAX], 7);
    CHECK_EQ(r.regs.gpr[RCX], KCODE); /* §5.6: RCX = RIP of the entry */
    CHECK_EQ(r.regs.gpr[R11], 0x202);
    CHECK_EQ(r.regs.rflags, 0x202 | 0x40 | 0x4); /* the entry's 0x202, then cmp: ZF PF */
    CHECK_EQ(r.regs.gs_base, KGS);
    CHECK_EQ(r.cs, 0x33);
    /* The fifth user event's PVCS; ERETU read the fourth's back. */
    CHECK_EQ(v->event_flags, 0);
    CHECK_EQ(v->user_cs, 0x33);
    CHECK_EQ(v->user_ss, 0x2b);
    CHECK_EQ(v->user_gsbase, UGS);
    CHECK_EQ(v->rip, USER_RET);
    CHECK_EQ(v->rcx, USER_RET);
    CHECK_EQ(v->rsp, DATA + PG);
    /* The user's RFLAGS at its SYSCALL: CF DF kept, inc's flags (5: PF), IF; R11 the CPU's. */
    CHECK_EQ(v->eflags, 0x2 | 0x1 | 0x400 | 0x4 | 0x200);
    CHECK_EQ(v->r11, 0x2 | 0x1 | 0x400 | 0x4 | 0x200);
    CHECK_EQ(v->pkru, 0);
    /* What a SYSCALL event leaves alone (§10.5), and the reserved fields. */
    CHECK_EQ(v->event_errcode, 0xa5a5a5a5u);
    CHECK_EQ(v->event_vector, 0xa5a5a5a5u);
    CHECK_EQ(v->cr2, 0xa5a5a5a5a5a5a5a5ull);
    for (unsigned i = 0; i < 5; i++)
        CHECK_EQ(v->reserved0[i], 0xa5a5a5a5a5a5a5a5ull);
    CHECK_EQ(v->reserved1, 0xa5a5a5a5u);
    CHECK_EQ(v->reserved2, 0xa5a5a5a5a5a5a5a5ull);

    /* ERETU from there (a RUN of the kernel address space) goes back to user mode in `as`. */
    struct pvm_kmod_run k = r;
    struct pvm_kmod_pvm kp = pvm_block(PVM_KMOD_MODE_SUPERVISOR);
    kp.other_as = as;
    kp.supervisor_rsp = p.supervisor_rsp;
    k.pvm = (uintptr_t)&kp;
    k.regs.rip = RETU_RIP;
    k.regs.gpr[R15] = 7; /* two more entries */
    v->eflags = 0x2 | 0x80 | 0x40000 | 0x3000; /* SF, AC; IOPL dropped */
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_RUN, &k), 0);
    CHECK_EQ(k.exit_reason, PVM_KMOD_EXIT_EXCEPTION);
    CHECK_EQ(k.vector, 13);
    CHECK_EQ(kp.switches, 4);
    CHECK_EQ(kp.events, 4);
    CHECK_EQ(kp.mode, PVM_KMOD_MODE_SUPERVISOR);
    CHECK_EQ(k.regs.gpr[RBX], 7);
    CHECK_EQ(k.regs.gpr[R12], 7);
    /* ERETU took AC and SF (IOPL dropped); the user's inc to 7 then left AC with SF, PF clear. */
    CHECK_EQ(v->eflags, 0x2 | 0x40000 | 0x200);
}

/* ERETUs a RUN could not enter, and SYSCALLs that are neither, end the run untouched. */
static void test_pvm_not_delivered(void)
{
    struct pvcs *v = (struct pvcs *)pvcs_page;
    static const struct { uint16_t cs, ss; uint64_t rip; } bad[] = {
        { 0x10, 0x2b, CODE },                   /* kernel CS */
        { 0x33, 0x18, CODE },                   /* SS */
        { 0x33, 0x2b, 0x0000800000000000ull },  /* non-canonical RIP */
        { 0x23, 0x2b, 0x100000000ull },          /* compat mode above 4 GiB */
    };
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(pvcs_page, 0, 128);
        v->user_cs = bad[i].cs;
        v->user_ss = bad[i].ss;
        v->rip = bad[i].rip;
        v->event_flags = 0x100;
        struct pvm_kmod_run k = prepare(user_loop, sizeof(user_loop));
        struct pvm_kmod_pvm kp = pvm_block(PVM_KMOD_MODE_SUPERVISOR);
        kp.other_as = as;
        k.flags = PVM_KMOD_RUN_PVM;
        k.pvm = (uintptr_t)&kp;
        k.regs.rip = RETU_RIP;
        k.regs.gpr[RSP] = 0x1234;
        CHECK_EQ(ioctl(kas, PVM_KMOD_AS_RUN, &k), 0);
        CHECK_EQ(k.exit_reason, PVM_KMOD_EXIT_SYSCALL);
        CHECK_EQ(k.regs.rip, RETU_RIP + 2);
        CHECK_EQ(kp.switches, 0);
        CHECK_EQ(kp.mode, PVM_KMOD_MODE_SUPERVISOR);
        CHECK_EQ(kp.supervisor_rsp, SUP_RSP);
        CHECK_EQ(v->event_flags, 0x100); /* IP stays */
    }
    /* A SYSCALL in supervisor mode elsewhere with a host-call number: the caller's. */
    struct pvm_kmod_run k = prepare(BYTES(0x0f, 0x05));
    struct pvm_kmod_pvm kp = pvm_block(PVM_KMOD_MODE_SUPERVISOR);
    k.flags = PVM_KMOD_RUN_PVM;
    k.pvm = (uintptr_t)&kp;
    k.regs.gpr[RAX] = 0x4c50564d00000000ull;
    kp.other_as = kas;
    CHECK_EQ(run(&k), 0);
    CHECK_EQ(k.exit_reason, PVM_KMOD_EXIT_SYSCALL);
    CHECK_EQ(k.regs.rip, CODE + 2);
    CHECK_EQ(kp.events, 0);
    /* ... and the defined PVM hypercalls (here LOAD_PGTBL). */
    k = prepare(BYTES(0x0f, 0x05));
    k.flags = PVM_KMOD_RUN_PVM;
    k.pvm = (uintptr_t)&kp;
    k.regs.gpr[RAX] = 0x17088200;
    kp = pvm_block(PVM_KMOD_MODE_SUPERVISOR);
    kp.other_as = -1;
    CHECK_EQ(run(&k), 0);
    CHECK_EQ(k.exit_reason, PVM_KMOD_EXIT_SYSCALL);
    CHECK_EQ(kp.events, 0);
}

/*
 * Supervisor-mode events in the module: a KVM hypercall, #UD through the
 * §5.4 frame to its handler (event_entry + 256), which skips the ud2 in the
 * frame and returns with ERETS; then HLT ends the run.  No other address
 * space (other_as -1).  Every frame byte and register is the model's.
 */
#define EVENT_ENTRY (KCODE + 0x200)
#define RETS_RIP (KCODE + 0x380)
static void test_pvm_smod_events(void)
{
    /* mov $1,%eax (VAPIC_POLL_IRQ); syscall; ud2; hlt */
    static const uint8_t body[] = { 0xb8, 1, 0, 0, 0, 0x0f, 0x05, 0x0f, 0x0b, 0xf4 };
    /* At +256: addq $2,8(%rsp); jmp RETS_RIP (rel32); at RETS_RIP: syscall */
    static const uint8_t handler[] = { 0x48, 0x83, 0x44, 0x24, 0x08, 0x02, 0xe9, 0x75, 0x00, 0x00, 0x00 };
    struct pvcs *v = (struct pvcs *)pvcs_page;
    memset(kcode, 0xcc, PG);
    memcpy(kcode, body, sizeof(body));
    memcpy(kcode + 0x300, handler, sizeof(handler));
    kcode[0x380] = 0x0f;
    kcode[0x381] = 0x05;
    memset(pvcs_page, 0, 128);
    memset(kstack, 0, PG);
    v->event_flags = 0x300; /* IF, IP */

    struct pvm_kmod_run k;
    memset(&k, 0, sizeof(k));
    k.regs.rip = KCODE;
    k.cs = 0x33;
    k.regs.rflags = 0x2;
    k.regs.gpr[RSP] = KSTACK + 0x800;
    k.regs.gpr[R10] = 0x1234;
    struct pvm_kmod_pvm kp = pvm_block(PVM_KMOD_MODE_SUPERVISOR);
    kp.other_as = -1;
    kp.event_entry = EVENT_ENTRY;
    kp.rets_rip_plus2 = RETS_RIP + 2;
    kp.redzone = 16;
    kp.sup_cs = 0x10;
    k.flags = PVM_KMOD_RUN_PVM;
    k.pvm = (uintptr_t)&kp;
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_RUN, &k), 0);
    CHECK_EQ(k.exit_reason, PVM_KMOD_EXIT_EXCEPTION);
    CHECK_EQ(k.vector, 13);
    CHECK_EQ(k.regs.rip, KCODE + 9);
    CHECK_EQ(kp.events, 3); /* the hypercall, #UD, ERETS */
    CHECK_EQ(kp.switches, 0);
    CHECK_EQ(kp.nmi_unmasked, 1);
    CHECK_EQ(kp.mode, PVM_KMOD_MODE_SUPERVISOR);
    CHECK_EQ(k.regs.gpr[RAX], 0);        /* VAPIC_POLL_IRQ answers 0 */
    CHECK_EQ(k.regs.gpr[RCX], 0x1234);   /* = R10 (§7.3), restored by ERETS */
    CHECK_EQ(k.regs.gpr[R10], 0x1234);
    CHECK_EQ(k.regs.gpr[R11], 0x202);    /* the CPU's at the hypercall's SYSCALL */
    CHECK_EQ(k.regs.gpr[RSP], KSTACK + 0x800);
    CHECK_EQ(k.regs.rflags, 0x202);
    /* The frame: ((RSP - redzone) & ~15) - 64. */
    const uint64_t *f = (const uint64_t *)(kstack + 0x7b0);
    CHECK_EQ(f[0], 6ull << 32);
    CHECK_EQ(f[1], KCODE + 9);           /* the handler's addq made it the HLT */
    CHECK_EQ(f[2], 0x10);
    CHECK_EQ(f[3], 0x202);               /* the guest's RFLAGS with the PVCS IF */
    CHECK_EQ(f[4], KSTACK + 0x800);
    CHECK_EQ(f[5], 0x18);
    CHECK_EQ(f[6], 0x1234);
    CHECK_EQ(f[7], 0x202);
    /* The entry cleared IF; ERETS set it again (0 -> 1 clears IP, §10.31). */
    CHECK_EQ(v->event_flags, 0x200);

    /* A frame where nothing is mapped, or read-only: the #UD is the caller's, nothing written. */
    k.regs.rip = KCODE + 7;
    k.regs.gpr[RSP] = KSTACK + PG + 0x1000;
    kp = pvm_block(PVM_KMOD_MODE_SUPERVISOR);
    kp.other_as = -1;
    kp.event_entry = EVENT_ENTRY;
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_RUN, &k), 0);
    CHECK_EQ(k.exit_reason, PVM_KMOD_EXIT_EXCEPTION);
    CHECK_EQ(k.vector, 6);
    CHECK_EQ(kp.events, 0);
    CHECK_EQ(v->event_flags, 0x200);
    k.regs.rip = KCODE + 7;
    k.regs.gpr[RSP] = KCODE + 0x800; /* mapped, not writable */
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_RUN, &k), 0);
    CHECK_EQ(k.vector, 6);
    CHECK_EQ(kp.events, 0);
    /* ERETS with its frame unmapped: the caller's. */
    k.regs.rip = RETS_RIP;
    k.regs.gpr[RSP] = KSTACK + PG + 0x1000;
    kp.rets_rip_plus2 = RETS_RIP + 2;
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_RUN, &k), 0);
    CHECK_EQ(k.exit_reason, PVM_KMOD_EXIT_SYSCALL);
    CHECK_EQ(k.regs.rip, RETS_RIP + 2);
    CHECK_EQ(kp.events, 0);
    memcpy(kcode, kernel_entry, sizeof(kernel_entry));
    memset(kcode + 0x200, 0xcc, PG - 0x200);
}

/* A page the caller may only read, and the vDSO (neither anonymous-writable nor tmpfs). */
static void *rodata_host(void)
{
    void *p = mmap(NULL, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    return p;
}

static void *vdso_page(void)
{
    return (void *)getauxval(AT_SYSINFO_EHDR);
}

/*
 * The hypercalls without state, one of each kind, answered in the module (in
 * the switch itself with fast_switch on, the default), then a defined PVM
 * hypercall (LOAD_TLS) that is the caller's: CLOCK_PAIRING -EOPNOTSUPP,
 * SCHED_YIELD 0 with its feature bit, IRQ_WIN (RAX kept, IP cleared), an
 * undefined PVM number -KVM_ENOSYS with RCX = R10 (§7.3).
 */
static void test_pvm_hypercalls(void)
{
    static const uint8_t body[] = {
        0xb8, 0x09, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x89, 0xc3, 0xb8, 0x0b,
        0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x89, 0xc5, 0xb8, 0x01, 0x82, 0x08,
        0x17, 0x0f, 0x05, 0x49, 0x89, 0xc4, 0xb8, 0x50, 0x82, 0x08, 0x17, 0x0f,
        0x05, 0x49, 0x89, 0xc5, 0x49, 0x89, 0xce, 0xb8, 0x09, 0x82, 0x08, 0x17,
        0x0f, 0x05
    };
    struct pvcs *v = (struct pvcs *)pvcs_page;
    memset(pvcs_page, 0, 128);
    v->event_flags = 0x300;
    for (int yield = 0; yield < 2; yield++) {
        struct pvm_kmod_run r = prepare(body, sizeof(body));
        struct pvm_kmod_pvm p = pvm_block(PVM_KMOD_MODE_SUPERVISOR);
        p.other_as = -1;
        p.kvm_features = yield ? 1u << 13 : 0;
        r.flags = PVM_KMOD_RUN_PVM;
        r.pvm = (uintptr_t)&p;
        r.regs.gpr[R10] = 0x77;
        CHECK_EQ(run(&r), 0);
        CHECK_EQ(r.exit_reason, PVM_KMOD_EXIT_SYSCALL);
        CHECK_EQ(r.regs.rip, CODE + sizeof(body));
        CHECK_EQ(r.regs.gpr[RAX], 0x17088209);
        CHECK_EQ(p.events, 4);
        CHECK_EQ(p.switches, 0);
        CHECK_EQ(r.regs.gpr[RBX], (uint64_t)-95);
        CHECK_EQ(r.regs.gpr[RBP], yield ? 0 : (uint64_t)-1000);
        CHECK_EQ(r.regs.gpr[R12], 0x17088201);
        CHECK_EQ(r.regs.gpr[R13], (uint64_t)-1000);
        CHECK_EQ(r.regs.gpr[R14], 0x77);
        CHECK_EQ(r.regs.gpr[R10], 0x77);
        CHECK_EQ(v->event_flags, 0x200); /* IP cleared, IF kept */
    }
}

/* Post @vector to @as from another thread once @delay_ms has passed. */
struct poster {
    int as;
    unsigned vector, delay_ms;
};

static void *post_later(void *arg)
{
    const struct poster *p = arg;
    struct timespec ts = { 0, (long)p->delay_ms * 1000000L };
    nanosleep(&ts, NULL);
    CHECK_EQ(ioctl(p->as, PVM_KMOD_AS_POST_IRQ, (unsigned long)p->vector), 0);
    return NULL;
}

static void take_irqs(int fd, uint64_t want0, uint64_t want1)
{
    uint64_t bits[4] = { 1, 1, 1, 1 };
    CHECK_EQ(ioctl(fd, PVM_KMOD_AS_TAKE_IRQS, bits), 0);
    CHECK_EQ(bits[0], want0);
    CHECK_EQ(bits[1], want1);
    CHECK_EQ(bits[2], 0);
    CHECK_EQ(bits[3], 0);
}

/*
 * PVM_KMOD_AS_POST_IRQ: delivered by the module where the model would
 * deliver it at once (§5.5 in supervisor mode with IF set, the highest
 * vector first; §5.3 in user mode), left posted (the RUN ends with -EINTR)
 * where it would be held, and taken back with TAKE_IRQS.
 */
static void test_pvm_post_irq(void)
{
    struct pvcs *v = (struct pvcs *)pvcs_page;
    /* Bad arguments, and a failed TAKE loses nothing. */
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_POST_IRQ, 31ul), -1);
    CHECK_EQ(errno, EINVAL);
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_POST_IRQ, 256ul), -1);
    CHECK_EQ(errno, EINVAL);
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_POST_IRQ, 0x40ul), 0);
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_TAKE_IRQS, (void *)8), -1);
    CHECK_EQ(errno, EFAULT);
    take_irqs(kas, 0, 1ull << 0);
    take_irqs(kas, 0, 0);

    /* kcode: a spin at KCODE, hlt at the user entry (EVENT_ENTRY) and at +512. */
    memset(kcode, 0xcc, PG);
    kcode[0] = 0xeb, kcode[1] = 0xfe;                 /* 1: jmp 1b */
    kcode[EVENT_ENTRY - KCODE] = 0xf4;
    kcode[EVENT_ENTRY - KCODE + 512] = 0xf4;
    struct pvm_kmod_run k;
    struct pvm_kmod_pvm kp;
#define SMOD_RUN()                                                                                 \
    do {                                                                                           \
        memset(&k, 0, sizeof(k));                                                                  \
        k.regs.rip = KCODE, k.cs = 0x33, k.regs.rflags = 0x2, k.regs.gpr[RSP] = KSTACK + 0x808;    \
        k.regs.gpr[RCX] = 0x1111, k.regs.gpr[R11] = 0x2222;                                        \
        kp = pvm_block(PVM_KMOD_MODE_SUPERVISOR);                                                  \
        kp.other_as = -1, kp.event_entry = EVENT_ENTRY, kp.redzone = 16;                           \
        k.flags = PVM_KMOD_RUN_PVM, k.pvm = (uintptr_t)&kp;                                        \
    } while (0)

    /* Supervisor mode, IF set: posted while the guest spins, delivered at +512. */
    memset(pvcs_page, 0, 128);
    v->event_flags = 0x200;
    SMOD_RUN();
    struct poster ps = { kas, 0x40, 20 };
    pthread_t t;
    pthread_create(&t, NULL, post_later, &ps);
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_RUN, &k), 0);
    pthread_join(t, NULL);
    CHECK_EQ(k.exit_reason, PVM_KMOD_EXIT_EXCEPTION);
    CHECK_EQ(k.vector, 13);                            /* the handler's hlt */
    CHECK_EQ(k.regs.rip, EVENT_ENTRY + 512);
    CHECK_EQ(kp.events, 1);
    CHECK_EQ(k.regs.gpr[RSP], (KSTACK + 0x808 - 16) & ~15ull);
    CHECK_EQ(k.regs.gpr[RCX], EVENT_ENTRY + 512);
    CHECK_EQ(k.regs.gpr[R11], 0x202);
    CHECK_EQ(v->event_vector, 0x40);
    CHECK_EQ(v->rip, KCODE);
    CHECK_EQ(v->rsp, KSTACK + 0x808);
    CHECK_EQ(v->rcx, 0x1111);
    CHECK_EQ(v->r11, 0x2222);
    CHECK_EQ(v->eflags, 0x202);                        /* with the virtual IF */
    CHECK_EQ(v->event_flags, 0);                       /* IF cleared by the entry */
    take_irqs(kas, 0, 0);

    /* Two posted before the RUN: the higher first; then IF is 0, the other stays posted. */
    memset(pvcs_page, 0, 128);
    v->event_flags = 0x200;
    SMOD_RUN();
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_POST_IRQ, 0x41ul), 0);
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_POST_IRQ, 0x90ul), 0);
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_RUN, &k), -1);
    CHECK_EQ(errno, EINTR);
    CHECK_EQ(kp.events, 1);
    CHECK_EQ(k.regs.rip, EVENT_ENTRY + 512);
    CHECK_EQ(v->event_vector, 0x90);
    take_irqs(kas, 0, 1ull << 1);                      /* 0x41 */

    /* IF clear: nothing delivered, the RUN ends at once, the vector stays posted. */
    memset(pvcs_page, 0, 128);
    SMOD_RUN();
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_POST_IRQ, 0x42ul), 0);
    CHECK_EQ(ioctl(kas, PVM_KMOD_AS_RUN, &k), -1);
    CHECK_EQ(errno, EINTR);
    CHECK_EQ(k.regs.rip, KCODE);
    take_irqs(kas, 0, 1ull << 2);
    /* A RUN without PVM_KMOD_RUN_PVM never delivers one. */
    CHECK_EQ(ioctl(as, PVM_KMOD_AS_POST_IRQ, 0x43ul), 0);
    struct pvm_kmod_run plain = prepare(BYTES(0xeb, 0xfe));
    CHECK_EQ(run(&plain), -1);
    CHECK_EQ(errno, EINTR);
    take_irqs(as, 0, 1ull << 3);

    /* User mode: the user event of §5.3 with the vector, at EVENT_ENTRY in the kernel's address space. */
    memset(pvcs_page, 0, 128);
    struct pvm_kmod_run u = prepare(BYTES(0xeb, 0xfe));
    struct pvm_kmod_pvm up = pvm_block(PVM_KMOD_MODE_USER);
    up.event_entry = EVENT_ENTRY;
    u.flags = PVM_KMOD_RUN_PVM, u.pvm = (uintptr_t)&up;
    u.regs.gs_base = UGS;
    struct poster pu = { as, 0x60, 20 };
    pthread_create(&t, NULL, post_later, &pu);
    CHECK_EQ(run(&u), 0);
    pthread_join(t, NULL);
    CHECK_EQ(u.exit_reason, PVM_KMOD_EXIT_EXCEPTION);
    CHECK_EQ(u.vector, 13);
    CHECK_EQ(u.regs.rip, EVENT_ENTRY);
    CHECK_EQ(up.mode, PVM_KMOD_MODE_SUPERVISOR);
    CHECK_EQ(up.switches, 1);
    CHECK_EQ(u.regs.gpr[RSP], SUP_RSP);
    CHECK_EQ(u.regs.gs_base, KGS);
    CHECK_EQ(v->event_vector, 0x60);
    CHECK_EQ(v->rip, CODE);
    CHECK_EQ(v->user_cs, 0x33);
    CHECK_EQ(v->user_gsbase, UGS);
    take_irqs(as, 0, 0);
    memcpy(kcode, kernel_entry, sizeof(kernel_entry));
    memset(kcode + 0x200, 0xcc, PG - 0x200);
}

static void test_pvm_bad_args(void)
{
    struct pvm_kmod_run r = prepare(BYTES(0x0f, 0x05));
    struct pvm_kmod_pvm p;
    r.flags = PVM_KMOD_RUN_PVM;
    r.pvm = (uintptr_t)&p;
#define BAD_PVM(field, value, err)                                                                \
    do {                                                                                        \
        p = pvm_block(PVM_KMOD_MODE_USER);                                                      \
        p.field = value;                                                                        \
        r.regs.rip = CODE;                                                                      \
        CHECK_EQ(run(&r), -1);                                                                  \
        CHECK_EQ(errno, err);                                                                   \
    } while (0)
    BAD_PVM(other_as, as, EINVAL);       /* its own address space */
    BAD_PVM(other_as, -2, EINVAL);
    BAD_PVM(other_as, dev, EINVAL);      /* not an address space */
    BAD_PVM(other_as, 0, EINVAL);        /* stdin */
    BAD_PVM(mode, 2, EINVAL);
    BAD_PVM(reserved[2], 1, EINVAL);
    BAD_PVM(pad0, 1, EINVAL);
    BAD_PVM(switches, 1, EINVAL);
    BAD_PVM(pvcs, (uintptr_t)pvcs_page + 64, EINVAL);
    BAD_PVM(lstar, 0x0000800000000000ull, EINVAL);
    BAD_PVM(kernel_gs_base, 0x8000000000000000ull, EINVAL);
    BAD_PVM(pvcs, 0x1000, EFAULT);                 /* nothing mapped there */
    BAD_PVM(pvcs, (uintptr_t)rodata_host(), EFAULT); /* read-only for the caller */
    BAD_PVM(pvcs, (uintptr_t)vdso_page(), EFAULT); /* not anonymous or tmpfs memory */
    r.pvm = 8;
    CHECK_EQ(run(&r), -1);
    CHECK_EQ(errno, EFAULT);
    r.pvm = 0;
    CHECK_EQ(run(&r), -1);
    CHECK_EQ(errno, EFAULT);
    /* Nothing ran; the failed pins dropped this address space's PVCS pin, kas keeps its own. */
    struct pvm_kmod_info info;
    CHECK_EQ(ioctl(dev, PVM_KMOD_INFO, &info), 0);
    CHECK_EQ(info.nr_pinned, 6); /* CODE DATA RODATA, KCODE KSTACK, kas's PVCS */
}

/* The last run's pages go when the address space does: nothing is left behind. */
static void test_close_after_runs(void)
{
    struct pvm_kmod_info info;
    close(as);
    close(kas);
    CHECK_EQ(ioctl(dev, PVM_KMOD_INFO, &info), 0);
    CHECK_EQ(info.nr_as, 0);
    CHECK_EQ(info.nr_pinned, 0);
    CHECK_EQ(info.nr_tables, 0);
}


/* The median of t[0..n) (sorts it). */
static double median(double *t, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double x = t[j];
            t[j] = t[j - 1], t[j - 1] = x;
        }
    return t[n / 2];
}

/* Median of 9 batches of 2000: a RUN of one SYSCALL, one that never enters, and a getpid for scale. */
static void time_runs(void)
{
    double run_ns[9], pid_ns[9], noentry_ns[9];
    for (int b = 0; b < 9; b++) {
        struct pvm_kmod_run r = prepare(BYTES(0x0f, 0x05));
        double t0 = now_ns();
        for (int i = 0; i < 2000; i++) {
            r.regs.rip = CODE;
            run(&r);
        }
        run_ns[b] = (now_ns() - t0) / 2000;
        r.immediate_exit = 1;
        t0 = now_ns();
        for (int i = 0; i < 2000; i++)
            run(&r);
        noentry_ns[b] = (now_ns() - t0) / 2000;
        t0 = now_ns();
        for (int i = 0; i < 2000; i++)
            syscall(SYS_getpid);
        pid_ns[b] = (now_ns() - t0) / 2000;
    }
    printf("kmod_run_test: RUN of one guest SYSCALL %.0f ns, RUN that never enters %.0f ns, getpid %.0f ns "
           "(medians)\n", median(run_ns, 9), median(noentry_ns, 9), median(pid_ns, 9));
    /* PVM_KMOD_RUN_PVM: user SYSCALL -> kernel -> ERETU round trips inside one RUN. */
    pvm_setup();
    double rt_ns[5];
    for (int b = 0; b < 5; b++) {
        struct pvm_kmod_run r = prepare(user_loop, sizeof(user_loop));
        struct pvm_kmod_pvm p = pvm_block(PVM_KMOD_MODE_USER);
        r.flags = PVM_KMOD_RUN_PVM;
        r.pvm = (uintptr_t)&p;
        r.regs.gpr[R15] = 2001;
        double t0 = now_ns();
        run(&r);
        rt_ns[b] = (now_ns() - t0) / 2000;
        CHECK_EQ(p.switches, 4001);
    }
    printf("kmod_run_test: user SYSCALL -> kernel -> ERETU in the module %.0f ns (median of 5 x 2000)\n", median(rt_ns, 5));
    /* What PVM_KMOD_RUN_PVM adds to a RUN: the block in and out, the other address space, the PVCS pin check. */
    for (int b = 0; b < 5; b++) {
        struct pvm_kmod_run r = prepare(BYTES(0x0f, 0x05));
        struct pvm_kmod_pvm p = pvm_block(PVM_KMOD_MODE_USER);
        r.flags = PVM_KMOD_RUN_PVM;
        r.pvm = (uintptr_t)&p;
        r.immediate_exit = 1;
        double t0 = now_ns();
        for (int i = 0; i < 2000; i++)
            run(&r);
        rt_ns[b] = (now_ns() - t0) / 2000;
    }
    printf("kmod_run_test: RUN that never enters, with PVM_KMOD_RUN_PVM %.0f ns (median of 5 x 2000)\n", median(rt_ns, 5));
}

#define STEP(fn) (printf("kmod_run_test: %s\n", #fn), fflush(stdout), fn())

/* The module's fast_switch parameter (root): true if set. */
static bool set_fast_switch(int on)
{
    FILE *f = fopen("/sys/module/pvm/parameters/fast_switch", "w");
    if (!f)
        return false;
    bool ok = fprintf(f, "%d\n", on) > 0;
    ok = fclose(f) == 0 && ok;
    printf("kmod_run_test: fast_switch=%d\n", on);
    return ok;
}

int main(int argc, char **argv)
{
    dev = open(PVM_KMOD_DEVICE, O_RDWR | O_CLOEXEC);
    if (dev < 0) {
        perror(PVM_KMOD_DEVICE);
        return 2;
    }
    CHECK_EQ(ioctl(dev, PVM_KMOD_GET_VERSION, 0), 3);
    struct pvm_kmod_create_as c = { 0 };
    as = ioctl(dev, PVM_KMOD_CREATE_AS, &c);
    if (as < 0) {
        perror("PVM_KMOD_CREATE_AS");
        return 2;
    }
    code = page();
    data = page();
    rodata = page();
    map(CODE, code, PVM_KMOD_MAP_READ | PVM_KMOD_MAP_EXEC);
    map(DATA, data, PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE);
    map(RODATA, rodata, PVM_KMOD_MAP_READ);

    if (argc > 1) { /* one test, for debugging; "time": the cost of one RUN */
        if (strcmp(argv[1], "kick") == 0)
            STEP(test_kick);
        if (strcmp(argv[1], "time") == 0)
            time_runs();
        return failures ? 1 : 0;
    }
    STEP(test_syscall_and_registers);
    STEP(test_exceptions);
    STEP(test_page_faults);
    STEP(test_module_pages_unreachable);
    STEP(test_fs_gs_fpu);
    STEP(test_long_run);
    STEP(test_kick);
    STEP(test_unmap_waits_for_run);
    STEP(test_migration);
    STEP(test_bad_args);
    STEP(pvm_setup);
    STEP(test_pvm_switches);
    STEP(test_pvm_not_delivered);
    STEP(test_pvm_smod_events);
    STEP(test_pvm_hypercalls);
    STEP(test_pvm_post_irq);
    /* The same with the switch's fast path off: the module's C path (deliver.c) must agree. */
    if (set_fast_switch(0)) {
        STEP(test_pvm_switches);
        STEP(test_pvm_not_delivered);
        STEP(test_pvm_smod_events);
        STEP(test_pvm_hypercalls);
        CHECK(set_fast_switch(1));
    }
    STEP(test_pvm_bad_args);
    STEP(test_close_after_runs);
    close(dev);
    printf("kmod_run_test: %s (%d failed checks)\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
