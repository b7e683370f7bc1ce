/*
 * bench/bench-kvm.c - the peer a user would otherwise pick: tinykernel.bin
 * as a standard x86 guest on /dev/kvm (long mode set up with KVM_SET_SREGS).
 * Measures VM create (KVM_CREATE_VM) -> first guest instruction (its first
 * debug-port exit) and the ring-3 SYSCALL -> ring-0 -> IRETQ round trip.
 * Exits 77 (skip) with the reason when /dev/kvm is absent or unusable.
 *
 * Usage: bench-kvm [--kernel FILE] [--json FILE] [--quick] [--mixed]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"
#include "tinykernel.h"

#define RAM_SIZE (4u << 20)

struct kvm_guest {
    int vm, vcpu;
    struct kvm_run *run;
    uint8_t *ram;
};

static int setup_sregs(int vcpu, uint64_t pml4)
{
    struct kvm_sregs s;
    if (ioctl(vcpu, KVM_GET_SREGS, &s) < 0)
        return -1;
    struct kvm_segment code = { .base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11, .present = 1,
                                .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1 };
    struct kvm_segment data = code;
    data.selector = 0x10;
    data.type = 3;
    data.l = 0;
    data.db = 1;
    s.cs = code;
    s.ds = s.es = s.fs = s.gs = s.ss = data;
    s.cr3 = pml4;
    s.cr4 = 0x20;                         /* PAE */
    s.cr0 = 0x80000011;                   /* PG | ET | PE */
    /* LME | LMA | SCE: a guest WRMSR of EFER triple-faults on this machine's /dev/kvm. */
    s.efer = 0x501;
    return ioctl(vcpu, KVM_SET_SREGS, &s);
}

/* Create the VM and run to the first exit; the caller timestamps around it. */
static int kvm_start(int kvm, const struct tk_image *k, struct kvm_guest *g, const char **why)
{
    memset(g, 0, sizeof(*g));
    g->vm = g->vcpu = -1;
    g->vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (g->vm < 0)
        return *why = "KVM_CREATE_VM", -1;
    g->ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (g->ram == MAP_FAILED)
        return *why = "mmap", -1;
    struct kvm_userspace_memory_region mr = { .slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE,
                                              .userspace_addr = (uint64_t)g->ram };
    if (ioctl(g->vm, KVM_SET_USER_MEMORY_REGION, &mr) < 0)
        return *why = "KVM_SET_USER_MEMORY_REGION", -1;
    memcpy(g->ram + TK_LOAD_ADDR, k->data, k->len);
    g->vcpu = ioctl(g->vm, KVM_CREATE_VCPU, 0);
    if (g->vcpu < 0)
        return *why = "KVM_CREATE_VCPU", -1;
    int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    g->run = mmap(NULL, (size_t)sz, PROT_READ | PROT_WRITE, MAP_SHARED, g->vcpu, 0);
    if (g->run == MAP_FAILED)
        return *why = "mmap kvm_run", -1;
    if (setup_sregs(g->vcpu, k->params->pml4) < 0)
        return *why = "KVM_SET_SREGS", -1;
    struct kvm_regs r = { .rip = k->params->entry64, .rflags = 2 };
    if (ioctl(g->vcpu, KVM_SET_REGS, &r) < 0)
        return *why = "KVM_SET_REGS", -1;
    if (ioctl(g->vcpu, KVM_RUN, 0) < 0)
        return *why = "KVM_RUN", -1;
    if (g->run->exit_reason != KVM_EXIT_IO || g->run->io.port != 0xe9)
        return *why = "first exit is not the debug port", -1;
    return 0;
}

static void kvm_stop(struct kvm_guest *g)
{
    if (g->run && g->run != MAP_FAILED)
        munmap(g->run, 4096);
    if (g->ram && g->ram != MAP_FAILED)
        munmap(g->ram, RAM_SIZE);
    if (g->vcpu >= 0)
        close(g->vcpu);
    if (g->vm >= 0)
        close(g->vm);
}

static uint8_t io_byte(const struct kvm_guest *g)
{
    return *((uint8_t *)g->run + g->run->io.data_offset);
}

/*
 * One run of @batches x @iters (@work compute units + a SYSCALL): the batch
 * marks are I/O exits timestamped here; prints the per-iteration row @row.
 */
static int syscall_series(int kvm, struct tk_image *k, unsigned work, unsigned iters, unsigned batches, FILE *json,
                          const char *row)
{
    const char *why = "";
    struct kvm_guest g;
    k->params->iters = iters;
    k->params->batches = batches;
    k->params->work = work;
    if (kvm_start(kvm, k, &g, &why) < 0) {
        printf("skip: /dev/kvm unusable: %s\n", why);
        return -1;
    }
    double *ops = calloc(batches, sizeof(double));
    unsigned marks = 0, nops = 0;
    uint64_t last = 0;
    for (;;) {
        if (ioctl(g.vcpu, KVM_RUN, 0) < 0) {
            fprintf(stderr, "bench-kvm: KVM_RUN: %s\n", strerror(errno));
            kvm_stop(&g);
            free(ops);
            return -1;
        }
        uint64_t t = bench_now_ns();
        if (g.run->exit_reason != KVM_EXIT_IO) {
            struct kvm_regs rr;
            ioctl(g.vcpu, KVM_GET_REGS, &rr);
            struct kvm_sregs ss;
            ioctl(g.vcpu, KVM_GET_SREGS, &ss);
            fprintf(stderr, "bench-kvm: unexpected exit %u at rip 0x%llx after %u marks (cs 0x%x l %u db %u dpl %u, "
                            "ss 0x%x, efer 0x%llx)\n", g.run->exit_reason, (unsigned long long)rr.rip, marks,
                    ss.cs.selector, ss.cs.l, ss.cs.db, ss.cs.dpl, ss.ss.selector, (unsigned long long)ss.efer);
            kvm_stop(&g);
            free(ops);
            return -1;
        }
        if (g.run->io.port == 0xf4)
            break;
        if (io_byte(&g) == 'M') {
            if (marks >= 2 && nops < batches)
                ops[nops++] = (double)(t - last) / iters;
            last = t;
            marks++;
        }
    }
    kvm_stop(&g);
    struct bench_result r;
    bench_from_samples(&r, row, ops, nops);
    r.iters = iters;
    bench_print(&r), bench_json(json, &r);
    free(ops);
    return 0;
}

int main(int argc, char **argv)
{
    FILE *json = NULL;
    unsigned creates = 50, iters = 2000, batches = 11;
    int mixed = 0;
    char kernel[PATH_MAX];
    bench_sibling_path(kernel, sizeof(kernel), "tinykernel.bin");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = fopen(argv[++i], "a");
        else if (!strcmp(argv[i], "--kernel") && i + 1 < argc)
            snprintf(kernel, sizeof(kernel), "%s", argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            creates = 20, iters = 200;
        else if (!strcmp(argv[i], "--mixed"))
            mixed = 1;
        else {
            fprintf(stderr, "usage: %s [--kernel FILE] [--json FILE] [--quick] [--mixed]\n"
                            "Runs tinykernel.bin on /dev/kvm: create -> first instruction, SYSCALL round trip.\n"
                            "--mixed: also m compute units + 1 SYSCALL per iteration (kvm.mixed_m*).\n"
                            "Exit status 77 with the reason when /dev/kvm is not usable.\n", argv[0]);
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        printf("skip: /dev/kvm: %s\n", strerror(errno));
        return 77;
    }
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        printf("skip: /dev/kvm: unexpected API version\n");
        return 77;
    }
    struct tk_image k;
    if (tk_load(&k, kernel) < 0) {
        fprintf(stderr, "bench-kvm: cannot load %s\n", kernel);
        return 1;
    }
    k.params->iters = iters;
    k.params->batches = batches;

    /* KVM_CREATE_VM -> first guest instruction (/dev/kvm already open, as a VMM keeps it). */
    double *create = calloc(creates, sizeof(double));
    const char *why = "";
    struct kvm_guest g;
    for (unsigned i = 0; i < creates + 5; i++) {
        uint64_t t0 = bench_now_ns();
        if (kvm_start(kvm, &k, &g, &why) < 0) {
            printf("skip: /dev/kvm unusable: %s: %s\n", why, strerror(errno));
            return 77;
        }
        if (i >= 5)
            create[i - 5] = (double)(bench_now_ns() - t0);
        kvm_stop(&g);
    }
    struct bench_result r;
    bench_from_samples(&r, "kvm.vm_create_to_first_insn", create, creates);
    bench_print(&r), bench_json(json, &r);

    if (syscall_series(kvm, &k, 0, iters, batches, json, "kvm.user_syscall_roundtrip") < 0)
        return 1;
    /* The mixed workload (bench-pvm's pvm.mixed_m*): m compute units + 1 SYSCALL per iteration. */
    static const unsigned mixed_work[] = { 100, 1000, 10000, 100000 };
    for (unsigned i = 0; mixed && i < sizeof(mixed_work) / sizeof(mixed_work[0]); i++) {
        unsigned m = mixed_work[i], n = (m >= 10000 ? 2000000 / m : 20000000 / (m * 20)) / (iters < 2000 ? 4 : 1);
        char name[64];
        snprintf(name, sizeof(name), "kvm.mixed_m%u", m);
        if (syscall_series(kvm, &k, m, n ? n : 1, batches, json, name) < 0)
            return 1;
    }
    if (json)
        fclose(json);
    return 0;
}
