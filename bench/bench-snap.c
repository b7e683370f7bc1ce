/*
 * bench/bench-snap.c - snapshot costs on the native backend, with a
 * hand-made guest of 16 MiB of RAM (DATA_MIB of it non-zero data, the rest
 * zero as in a freshly booted unikernel):
 *   pvm_vm_snapshot();
 *   pvm_vm_restore() with 1, 16 and 256 pages written since (written from
 *   the host through pvm_vm_gpa_to_host, so that exactly that many are
 *   tracked), and a restore to another snapshot (a full copy) for scale;
 *   pvm_vm_create_from_snapshot() -> the guest's first instruction (its
 *   TSC) and -> its first exit back in the host, also with VMs started
 *   ahead by pvm_snapshot_prestart();
 *   memory of N VMs created from one snapshot (one vCPU each: they share
 *   its pages copy-on-write), each run to its first exit: RSS and PSS of
 *   this process and every stub, Shmem and MemAvailable from /proc.
 *
 * Usage: bench-snap [--json FILE] [--vms N] [--data-mib M] [--quick]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdbool.h>

#include "pvm/abi.h"
#include "pvm/pvm.h"

#include "bench.h"

#define RAM (16ull << 20)
#define CODE_GPA 0x8000ull
#define CODE_GVA 0x400000ull

/* rdtsc; rbx = tsc; host call 0x100; then host call 0x101 forever */
static const uint8_t code[] = {
    0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48, 0x89, 0xc3,
    0x48, 0xb8, 0x00, 0x01, 0x00, 0x00, 0x4d, 0x56, 0x50, 0x4c, 0x0f, 0x05, /* movabs PVM_HOSTCALL(0x100); syscall */
    0x48, 0xb8, 0x01, 0x01, 0x00, 0x00, 0x4d, 0x56, 0x50, 0x4c, 0x0f, 0x05, /* movabs PVM_HOSTCALL(0x101); syscall */
    0xeb, 0xf2,                                                             /* jmp back */
};

static double tsc_per_ns;
static unsigned data_mib = 1;

static int die(const char *what)
{
    fprintf(stderr, "bench-snap: %s: %s\n", what, pvm_last_error());
    exit(1);
}

/* The 16 MiB guest, its vCPU at its first instruction (never run). */
static pvm_vm *make_vm(void)
{
    pvm_vm *vm;
    pvm_vcpu *cpu;
    uint8_t *ram;
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.backend = PVM_BACKEND_NATIVE;
    o.max_vcpus = 1;
    if (pvm_vm_create(&vm, &o) < 0 || pvm_vm_alloc_memory(vm, RAM, (void **)&ram) < 0 ||
        pvm_vm_map_memory(vm, 0, ram, RAM, 0) < 0)
        die("VM");
    uint64_t *pml4 = (uint64_t *)(ram + 0x1000), *pdpt = (uint64_t *)(ram + 0x2000);
    uint64_t *pd = (uint64_t *)(ram + 0x3000), *pt = (uint64_t *)(ram + 0x4000);
    pml4[0] = 0x2000 | PVM_PTE_P | PVM_PTE_W;
    pdpt[0] = 0x3000 | PVM_PTE_P | PVM_PTE_W;
    pd[(CODE_GVA >> 21) & 511] = 0x4000 | PVM_PTE_P | PVM_PTE_W;
    pt[(CODE_GVA >> 12) & 511] = CODE_GPA | PVM_PTE_P;
    memcpy(ram + CODE_GPA, code, sizeof(code));
    /* "Image data": non-zero pages from 1 MiB on. */
    for (uint64_t off = 1ull << 20; off < (1ull << 20) + ((uint64_t)data_mib << 20) && off < RAM; off += 8)
        *(uint64_t *)(ram + off) = off * 0x9e3779b97f4a7c15ull | 1;
    if (pvm_vcpu_create(&cpu, vm, NULL) < 0)
        die("vCPU");
    struct pvm_sregs s;
    struct pvm_regs r;
    pvm_vcpu_get_sregs(cpu, &s);
    s.cr3 = 0x1000;
    pvm_vcpu_get_regs(cpu, &r);
    r.rip = CODE_GVA;
    if (pvm_vcpu_set_sregs(cpu, &s) < 0 || pvm_vcpu_set_regs(cpu, &r) < 0)
        die("registers");
    return vm;
}

static uint64_t run_first(pvm_vm *vm)
{
    struct pvm_exit e;
    memset(&e, 0, sizeof(e));
    if (pvm_vcpu_run(pvm_vm_vcpu(vm, 0), &e) < 0 || e.reason != PVM_EXIT_HYPERCALL ||
        e.u.hypercall.nr != PVM_HOSTCALL(0x100))
        die(e.reason == PVM_EXIT_INTERNAL_ERROR ? e.u.internal.msg : "first exit");
    return e.u.hypercall.args[0];
}

/* ---- memory of this process and the stubs (as bench-vms.c) ---------------- */

static void add_proc(double *rss, double *pss, int pid)
{
    char p[64];
    snprintf(p, sizeof(p), "/proc/%d/smaps_rollup", pid);
    *rss += bench_field_kib(p, "Rss:");
    *pss += bench_field_kib(p, "Pss:");
}

/* This process plus every stub forked by this library's zygotes. */
static void mem_now(double *rss, double *pss)
{
    *rss = *pss = 0;
    add_proc(rss, pss, getpid());
    DIR *d = opendir("/proc");
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!bench_is_our_zygote(de->d_name))
            continue;
        add_proc(rss, pss, atoi(de->d_name));
        char p[640];
        snprintf(p, sizeof(p), "/proc/%s/task/%s/children", de->d_name, de->d_name);
        FILE *f = fopen(p, "r");
        int pid;
        while (f && fscanf(f, "%d", &pid) == 1)
            add_proc(rss, pss, pid);
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
}

/* @n creates from @snap (after 5 warm-ups), each run to its first exit: ns to the first instruction and exit. */
static void create_runs(pvm_snapshot *snap, unsigned n, double *first, double *exit1)
{
    for (unsigned i = 0; i < n + 5; i++) {
        pvm_vm *v2;
        uint64_t t0 = bench_rdtsc();
        if (pvm_vm_create_from_snapshot(&v2, snap, NULL) < 0)
            die("create from snapshot");
        uint64_t insn = run_first(v2);
        uint64_t t1 = bench_rdtsc();
        if (i >= 5) {
            first[i - 5] = (double)(insn - t0) / tsc_per_ns;
            exit1[i - 5] = (double)(t1 - t0) / tsc_per_ns;
        }
        pvm_vm_destroy(v2);
    }
}

int main(int argc, char **argv)
{
    FILE *json = NULL;
    bool quick = false;
    unsigned nvms = 1000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = fopen(argv[++i], "a");
        else if (!strcmp(argv[i], "--vms") && i + 1 < argc)
            nvms = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--data-mib") && i + 1 < argc)
            data_mib = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = true;
        else {
            fprintf(stderr, "usage: bench-snap [--json FILE] [--vms N] [--data-mib M] [--quick]\n");
            return 2;
        }
    }
    if (data_mib > 15)
        data_mib = 15;
    tsc_per_ns = bench_tsc_per_ns();
    const unsigned reps = quick ? 20 : 200;
    double *s = calloc(reps, sizeof(*s));
    struct bench_result r;
    char name[96];

    pvm_vm *vm = make_vm();
    pvm_snapshot *snap = NULL, *other = NULL;
    /* Snapshot (each one also makes the next write to every page fault once). */
    for (unsigned i = 0; i < reps; i++) {
        pvm_snapshot_free(snap);
        uint64_t t0 = bench_now_ns();
        if (pvm_vm_snapshot(vm, &snap) < 0)
            die("snapshot");
        s[i] = (double)(bench_now_ns() - t0);
    }
    snprintf(name, sizeof(name), "snap.snapshot_16mib_%umib_data", data_mib);
    bench_from_samples(&r, name, s, reps);
    bench_print(&r);
    bench_json(json, &r);

    /* Restore with N pages written since. */
    uint8_t *ram = pvm_vm_gpa_to_host(vm, 0, RAM);
    static const unsigned dirty[] = { 1, 16, 256 };
    for (unsigned k = 0; k < 3; k++) {
        for (unsigned i = 0; i < reps; i++) {
            for (unsigned p = 0; p < dirty[k]; p++) {
                uint8_t *h = pvm_vm_gpa_to_host(vm, (2ull << 20) + p * 4096ull, 4096);
                memset(h, (int)(i + p + 1), 4096);
            }
            uint64_t t0 = bench_now_ns();
            if (pvm_vm_restore(vm, snap) < 0)
                die("restore");
            s[i] = (double)(bench_now_ns() - t0);
        }
        snprintf(name, sizeof(name), "snap.restore_%u_dirty", dirty[k]);
        bench_from_samples(&r, name, s, reps);
        bench_print(&r);
        bench_json(json, &r);
    }
    (void)ram;
    /* A restore to another snapshot of the same VM: the full copy. */
    if (pvm_vm_snapshot(vm, &other) < 0)
        die("snapshot");
    for (unsigned i = 0; i < reps / 4 + 1; i++) {
        uint64_t t0 = bench_now_ns();
        if (pvm_vm_restore(vm, i % 2 ? other : snap) < 0)
            die("restore");
        s[i] = (double)(bench_now_ns() - t0);
    }
    bench_from_samples(&r, "snap.restore_other_snapshot_full_copy", s, reps / 4 + 1);
    bench_print(&r);
    bench_json(json, &r);
    pvm_snapshot_free(other);

    /* Create from the snapshot -> first instruction (guest TSC) and -> first exit. */
    unsigned nc = quick ? 20 : 100;
    double *first = calloc(nc, sizeof(*first)), *exit1 = calloc(nc, sizeof(*exit1));
    create_runs(snap, nc, first, exit1);
    /* The split: the create call alone (no stub yet: stubs start at the first run), then the first run. */
    double *cr = calloc(nc, sizeof(*cr));
    for (unsigned i = 0; i < nc; i++) {
        pvm_vm *v2;
        uint64_t t0 = bench_rdtsc();
        if (pvm_vm_create_from_snapshot(&v2, snap, NULL) < 0)
            die("create from snapshot");
        cr[i] = (double)(bench_rdtsc() - t0) / tsc_per_ns;
        run_first(v2);
        pvm_vm_destroy(v2);
    }
    bench_from_samples(&r, "snap.create_from_snapshot_call_only", cr, nc);
    bench_print(&r);
    bench_json(json, &r);
    free(cr);
    bench_from_samples(&r, "snap.create_from_snapshot_to_first_insn", first, nc);
    bench_print(&r);
    bench_json(json, &r);
    bench_from_samples(&r, "snap.create_from_snapshot_to_first_exit", exit1, nc);
    bench_print(&r);
    bench_json(json, &r);

    /* The same from VMs started ahead of time (pvm_snapshot_prestart): the create hands one out. */
    if (pvm_snapshot_prestart(snap, nc + 5) < 0)
        die("prestart");
    create_runs(snap, nc, first, exit1);
    bench_from_samples(&r, "snap.prestarted_create_to_first_insn", first, nc);
    bench_print(&r);
    bench_json(json, &r);
    bench_from_samples(&r, "snap.prestarted_create_to_first_exit", exit1, nc);
    bench_print(&r);
    bench_json(json, &r);

    /* N VMs from one snapshot, each run to its first exit. */
    /*
     * Guest RAM lives in memfds (shmem) that this process writes with
     * pwrite and need not map: RSS/PSS miss it, so count Shmem and the drop
     * of MemAvailable too.
     */
    double rss0, pss0, rss1, pss1;
    mem_now(&rss0, &pss0);
    double shm0 = bench_field_kib("/proc/meminfo", "Shmem:"), avail0 = bench_field_kib("/proc/meminfo", "MemAvailable:");
    pvm_vm **vms = calloc(nvms, sizeof(*vms));
    unsigned made = 0;
    uint64_t t0 = bench_now_ns();
    for (; made < nvms; made++) {
        if (pvm_vm_create_from_snapshot(&vms[made], snap, NULL) < 0) {
            fprintf(stderr, "bench-snap: VM %u: %s (stopping there)\n", made, pvm_last_error());
            break;
        }
        run_first(vms[made]);
    }
    double secs = (double)(bench_now_ns() - t0) / 1e9;
    mem_now(&rss1, &pss1);
    double shm1 = bench_field_kib("/proc/meminfo", "Shmem:"), avail1 = bench_field_kib("/proc/meminfo", "MemAvailable:");
    snprintf(name, sizeof(name), "snap.vms_from_one_snapshot");
    bench_json_value(json, name, made, "VMs");
    bench_json_value(json, "snap.vms_total_pss_mib", (pss1 - pss0) / 1024, "MiB");
    bench_json_value(json, "snap.vms_total_rss_mib", (rss1 - rss0) / 1024, "MiB");
    bench_json_value(json, "snap.vms_total_shmem_mib", (shm1 - shm0) / 1024, "MiB");
    bench_json_value(json, "snap.vms_memavailable_drop_mib", (avail0 - avail1) / 1024, "MiB");
    bench_json_value(json, "snap.vm_pss_plus_shmem_kib_each", made ? (pss1 - pss0 + shm1 - shm0) / made : 0, "KiB");
    bench_json_value(json, "snap.vm_memavailable_drop_kib_each", made ? (avail0 - avail1) / made : 0, "KiB");
    bench_json_value(json, "snap.vms_create_seconds", secs, "s");
    for (unsigned i = 0; i < made; i++)
        pvm_vm_destroy(vms[i]);
    free(vms);
    pvm_snapshot_free(snap);
    pvm_vm_destroy(vm);
    free(s);
    free(first);
    free(exit1);
    if (json)
        fclose(json);
    return 0;
}
