/* kvm_smoke: proves the QEMU harness gives a working /dev/kvm (kvm_amd).
 *
 * Runs a 64-bit long-mode guest that writes 0xdeadbeef to port 0xe9 (checked as
 * KVM_EXIT_IO), then does ROUNDS `out`s to port 0xea (timed: the KVM exit round trip),
 * stores a 64-bit value to memory and halts (KVM_EXIT_HLT). The register and memory
 * checks only pass if the code ran in 64-bit mode. Exit 0 only if every value matches;
 * 77 if there is no /dev/kvm (not run inside tests/qemu/vm-run). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE 0x200000u /* one 2 MiB page, identity-mapped */
#define CODE 0x1000u
#define PML4 0x2000u
#define PDPT 0x3000u
#define PD 0x4000u
#define DATA 0x5000u
#define STACK_TOP 0x8000u
#define ROUNDS 1000u
#define MAGIC64 UINT64_C(0x1122334455667788)

static int failures;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                                \
            printf(__VA_ARGS__);                                                                                       \
            printf("\n");                                                                                              \
            failures++;                                                                                                \
        }                                                                                                              \
    } while (0)

static void die(const char *what) {
    printf("FAIL %s: %s\n", what, strerror(errno));
    exit(1);
}

static int xioctl(int fd, unsigned long req, void *arg, const char *what) {
    int r = ioctl(fd, req, arg);
    if (r < 0)
        die(what);
    return r;
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* mov edx,0xe9; mov eax,0xdeadbeef; out dx,eax
 * mov edx,0xea; mov ecx,ROUNDS; 1: out dx,al; dec ecx; jnz 1b
 * movabs rax,MAGIC64; mov rbx,rax; mov [DATA],rbx; hlt
 * In 32-bit mode the REX.W bytes would decode as `dec eax` and the checks fail. */
/* clang-format off */
static const uint8_t guest_code[] = {
    0xba, 0xe9, 0x00, 0x00, 0x00,                   /* mov edx, 0xe9 */
    0xb8, 0xef, 0xbe, 0xad, 0xde,                   /* mov eax, 0xdeadbeef */
    0xef,                                           /* out dx, eax */
    0xba, 0xea, 0x00, 0x00, 0x00,                   /* mov edx, 0xea */
    0xb9, ROUNDS & 0xff, ROUNDS >> 8, 0x00, 0x00,   /* mov ecx, ROUNDS */
    0xee,                                           /* 1: out dx, al */
    0xff, 0xc9,                                     /* dec ecx */
    0x75, 0xfb,                                     /* jnz 1b */
    0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, /* movabs rax, MAGIC64 */
    0x48, 0x89, 0xc3,                               /* mov rbx, rax */
    0x48, 0x89, 0x1c, 0x25, DATA & 0xff, DATA >> 8, 0x00, 0x00, /* mov [DATA], rbx */
    0xf4,                                           /* hlt */
};
/* clang-format on */

static void set_long_mode(int vcpu, uint8_t *mem) {
    uint64_t *pml4 = (uint64_t *)(mem + PML4), *pdpt = (uint64_t *)(mem + PDPT), *pd = (uint64_t *)(mem + PD);
    pml4[0] = PDPT | 3; /* present, writable */
    pdpt[0] = PD | 3;
    pd[0] = 0 | 0x83; /* present, writable, 2 MiB page */

    struct kvm_sregs s;
    xioctl(vcpu, KVM_GET_SREGS, &s, "KVM_GET_SREGS");
    struct kvm_segment code = {.base = 0,
                               .limit = 0xffffffff,
                               .selector = 8,
                               .type = 11,
                               .present = 1,
                               .dpl = 0,
                               .db = 0,
                               .s = 1,
                               .l = 1,
                               .g = 1};
    struct kvm_segment data = code;
    data.selector = 16;
    data.type = 3;
    data.db = 1;
    data.l = 0;
    s.cs = code;
    s.ds = s.es = s.fs = s.gs = s.ss = data;
    s.cr3 = PML4;
    s.cr4 = 1u << 5;                    /* PAE */
    s.cr0 = 0x80000000u | 0x10u | 0x1u; /* PG | ET | PE */
    s.efer = (1u << 8) | (1u << 10);    /* LME | LMA */
    xioctl(vcpu, KVM_SET_SREGS, &s, "KVM_SET_SREGS");

    struct kvm_regs r = {.rip = CODE, .rsp = STACK_TOP, .rflags = 2};
    xioctl(vcpu, KVM_SET_REGS, &r, "KVM_SET_REGS");
}

/* Long mode needs a CPUID with LM; give the vCPU all that KVM supports. */
static void set_cpuid(int kvm, int vcpu) {
    int n = 100;
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
    if (!c)
        die("calloc");
    c->nent = n;
    xioctl(kvm, KVM_GET_SUPPORTED_CPUID, c, "KVM_GET_SUPPORTED_CPUID");
    xioctl(vcpu, KVM_SET_CPUID2, c, "KVM_SET_CPUID2");
    free(c);
}

static const char *exit_name(uint32_t r) {
    switch (r) {
    case KVM_EXIT_IO:
        return "IO";
    case KVM_EXIT_HLT:
        return "HLT";
    case KVM_EXIT_SHUTDOWN:
        return "SHUTDOWN";
    case KVM_EXIT_FAIL_ENTRY:
        return "FAIL_ENTRY";
    case KVM_EXIT_INTERNAL_ERROR:
        return "INTERNAL_ERROR";
    case KVM_EXIT_MMIO:
        return "MMIO";
    default:
        return "other";
    }
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        printf("SKIP: /dev/kvm: %s (run me under tests/qemu/vm-run)\n", strerror(errno));
        return 77;
    }
    int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
    printf("KVM_GET_API_VERSION = %d\n", api);
    CHECK(api == KVM_API_VERSION, "API version %d, want %d", api, KVM_API_VERSION);
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) > 0, "no KVM_CAP_USER_MEMORY");

    double t0 = now_us();
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap guest memory");
    memcpy(mem + CODE, guest_code, sizeof(guest_code));
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)mem};
    xioctl(vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (int)sizeof(struct kvm_run))
        die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");
    set_cpuid(kvm, vcpu);
    set_long_mode(vcpu, mem);

    /* 1: out dx, eax to 0xe9 */
    xioctl(vcpu, KVM_RUN, NULL, "KVM_RUN");
    double t_first = now_us();
    printf("exit 1: %s", exit_name(run->exit_reason));
    if (run->exit_reason == KVM_EXIT_IO) {
        uint32_t v;
        memcpy(&v, (uint8_t *)run + run->io.data_offset, sizeof(v));
        printf(" dir=%s port=0x%x size=%u count=%u value=0x%" PRIx32, run->io.direction ? "out" : "in", run->io.port,
               run->io.size, run->io.count, v);
        CHECK(run->io.direction == KVM_EXIT_IO_OUT && run->io.port == 0xe9 && run->io.size == 4 && run->io.count == 1 &&
                  v == 0xdeadbeef,
              "unexpected first I/O exit");
    }
    printf("\n");
    CHECK(run->exit_reason == KVM_EXIT_IO, "first exit %u, want KVM_EXIT_IO", run->exit_reason);
    if (run->exit_reason != KVM_EXIT_IO)
        return 1;

    /* 2: ROUNDS outs of al to 0xea */
    unsigned outs = 0;
    double t1 = now_us();
    for (;;) {
        xioctl(vcpu, KVM_RUN, NULL, "KVM_RUN");
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != 0xea)
            break;
        CHECK(run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 1 && run->io.count == 1,
              "bad I/O exit in the loop");
        outs++;
    }
    double t2 = now_us();
    printf("loop: %u I/O exits to port 0xea\n", outs);
    CHECK(outs == ROUNDS, "%u loop exits, want %u", outs, ROUNDS);

    /* 3: hlt */
    printf("exit %u: %s\n", outs + 2, exit_name(run->exit_reason));
    CHECK(run->exit_reason == KVM_EXIT_HLT, "last exit %u, want KVM_EXIT_HLT", run->exit_reason);
    struct kvm_regs r;
    xioctl(vcpu, KVM_GET_REGS, &r, "KVM_GET_REGS");
    struct kvm_sregs s;
    xioctl(vcpu, KVM_GET_SREGS, &s, "KVM_GET_SREGS");
    uint64_t stored;
    memcpy(&stored, mem + DATA, sizeof(stored));
    printf("rip=0x%llx rbx=0x%llx [0x%x]=0x%" PRIx64 " efer=0x%llx\n", (unsigned long long)r.rip,
           (unsigned long long)r.rbx, DATA, stored, (unsigned long long)s.efer);
    CHECK(r.rip == CODE + sizeof(guest_code), "rip 0x%llx, want 0x%zx", (unsigned long long)r.rip,
          CODE + sizeof(guest_code));
    CHECK(r.rbx == MAGIC64 && stored == MAGIC64, "64-bit value not seen: not in long mode?");
    CHECK(s.efer & (1u << 10), "EFER.LMA clear");

    printf("VM create to first exit: %.0f us; I/O exit round trip: %.1f us (mean of %u)\n", t_first - t0,
           outs ? (t2 - t1) / outs : 0.0, outs);
    printf("%s\n", failures ? "kvm_smoke: FAILED" : "kvm_smoke: OK");
    return failures ? 1 : 0;
}
