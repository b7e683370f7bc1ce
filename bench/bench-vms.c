/*
 * bench/bench-vms.c - VM lifetime costs on the native backend:
 *   VM create -> first guest instruction (a 5-page hand-made guest whose
 *   first instruction reads the TSC); create + load ELF + call + destroy
 *   (Hyperlight's measure) with bench-guest.elf; memory per idle VM (RSS
 *   and PSS of this process + every stub process, from /proc); how many
 *   idle VMs fit before creation fails or gets 2x slower.
 *
 * Usage: bench-vms [--guest FILE] [--json FILE] [--max-vms N] [--quick]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <sys/resource.h>
#include <unistd.h>

#include "pvm/abi.h"
#include "pvm/pvm.h"

#include "bench-backend.h"
#include "bench.h"

static double tsc_per_ns;

/* ---- a minimal guest: one code page at GVA 0x400000, 4-level tables ---- */

#define MINI_RAM  0x10000ull
#define MINI_CODE_GPA 0x8000ull
#define MINI_CODE_GVA 0x400000ull

/* rdtsc; rbx = tsc; host call 0 (PVM_HOSTCALL_USER_FIRST); ud2 */
static const uint8_t mini_code[] = {
    0x0f, 0x31,                               /* rdtsc */
    0x48, 0xc1, 0xe2, 0x20,                   /* shl $32, %rdx */
    0x48, 0x09, 0xd0,                         /* or %rdx, %rax */
    0x48, 0x89, 0xc3,                         /* mov %rax, %rbx */
    0x48, 0xb8, 0x00, 0x01, 0x00, 0x00, 0x4d, 0x56, 0x50, 0x4c, /* movabs $PVM_HOSTCALL(0x100), %rax */
    0x0f, 0x05,                               /* syscall */
    0x0f, 0x0b,                               /* ud2 */
};

struct mini {
    pvm_vm *vm;
    pvm_vcpu *cpu;
    uint64_t first_insn_tsc; /* the guest's TSC at its first instruction */
};

static const char *mini_err;

/*
 * Create a VM and run it to its first exit; returns 0 or -1 (mini_err says
 * where).  The page-table root is at GPA @root: 0 is the reset CR3, whose
 * stub pvm_vcpu_create() starts; any other root makes the first run start a
 * second stub (one per shadow root), as an ELF-loaded guest does.
 */
static int mini_start(struct mini *m, uint64_t root)
{
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.backend = bench_backend;
    o.max_vcpus = 1;
    uint8_t *ram;
    memset(m, 0, sizeof(*m));
    if (pvm_vm_create(&m->vm, &o) < 0)
        return mini_err = "pvm_vm_create", -1;
    if (pvm_vm_alloc_memory(m->vm, MINI_RAM, (void **)&ram) < 0 ||
        pvm_vm_map_memory(m->vm, 0, ram, MINI_RAM, 0) < 0)
        return mini_err = "guest memory", -1;
    /* PML4 @root -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000 -> code page. */
    uint64_t *pml4 = (uint64_t *)(ram + root), *pdpt = (uint64_t *)(ram + 0x2000);
    uint64_t *pd = (uint64_t *)(ram + 0x3000), *pt = (uint64_t *)(ram + 0x4000);
    pml4[0] = 0x2000 | PVM_PTE_P | PVM_PTE_W;
    pdpt[0] = 0x3000 | PVM_PTE_P | PVM_PTE_W;
    pd[(MINI_CODE_GVA >> 21) & 511] = 0x4000 | PVM_PTE_P | PVM_PTE_W;
    pt[(MINI_CODE_GVA >> 12) & 511] = MINI_CODE_GPA | PVM_PTE_P;
    memcpy(ram + MINI_CODE_GPA, mini_code, sizeof(mini_code));
    if (pvm_vcpu_create(&m->cpu, m->vm, NULL) < 0)
        return mini_err = "pvm_vcpu_create", -1;
    struct pvm_sregs s;
    struct pvm_regs r;
    pvm_vcpu_get_sregs(m->cpu, &s);
    s.cr3 = root;
    pvm_vcpu_get_regs(m->cpu, &r);
    r.rip = MINI_CODE_GVA;
    if (pvm_vcpu_set_sregs(m->cpu, &s) < 0 || pvm_vcpu_set_regs(m->cpu, &r) < 0)
        return mini_err = "set registers", -1;
    struct pvm_exit e;
    if (pvm_vcpu_run(m->cpu, &e) < 0 || e.reason != PVM_EXIT_HYPERCALL ||
        e.u.hypercall.nr != PVM_HOSTCALL(0x100))
        return mini_err = e.reason == PVM_EXIT_INTERNAL_ERROR ? e.u.internal.msg : "first exit", -1;
    m->first_insn_tsc = e.u.hypercall.args[0];
    return 0;
}

/* ---- memory of this process and its children (the stubs) ---------------- */

struct memsum {
    double rss_kib, pss_kib, pte_kib;
    unsigned procs;
};

static void add_proc(struct memsum *m, int pid)
{
    char p[64];
    snprintf(p, sizeof(p), "/proc/%d/smaps_rollup", pid);
    m->rss_kib += bench_field_kib(p, "Rss:");
    m->pss_kib += bench_field_kib(p, "Pss:");
    snprintf(p, sizeof(p), "/proc/%d/status", pid);
    m->pte_kib += bench_field_kib(p, "VmPTE:");
    m->procs++;
}

static void mem_now(struct memsum *m)
{
    memset(m, 0, sizeof(*m));
    add_proc(m, getpid());
    /* Stubs are children of whichever thread created them: read every thread's list. */
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[320];
        snprintf(p, sizeof(p), "/proc/self/task/%s/children", de->d_name);
        FILE *f = fopen(p, "r");
        int pid;
        while (f && fscanf(f, "%d", &pid) == 1)
            add_proc(m, pid);
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
    /* Stubs forked by this library's zygotes ("pvm-zygote zygote <our pid>", not our children). */
    d = opendir("/proc");
    while (d && (de = readdir(d))) {
        if (!bench_is_our_zygote(de->d_name))
            continue;
        add_proc(m, atoi(de->d_name));
        char p[640];
        snprintf(p, sizeof(p), "/proc/%s/task/%s/children", de->d_name, de->d_name);
        FILE *f = fopen(p, "r");
        int pid;
        while (f && fscanf(f, "%d", &pid) == 1)
            add_proc(m, pid);
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
}

static double mem_available_kib(void)
{
    return bench_field_kib("/proc/meminfo", "MemAvailable:");
}

/* ---- create + load + call + destroy --------------------------------------- */

static void *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *b = malloc(*len);
    if (b && fread(b, 1, *len, f) != *len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    return b;
}

/* One create + load + call + destroy; *load_ns: the pvm_vm_load_elf_image() part. */
static int create_call_destroy(const void *img, size_t len, double *load_ns)
{
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    struct pvm_load_options lo = PVM_LOAD_OPTIONS_INIT;
    struct pvm_load_info info;
    pvm_vm *vm;
    pvm_vcpu *cpu;
    pvm_gva_t fn;
    struct pvm_exit e;
    const uint64_t args[2] = { 2, 3 };
    o.backend = bench_backend;
    o.max_vcpus = 1;
    lo.ram_size = 4ull << 20;
    int ok = pvm_vm_create(&vm, &o) == 0;
    uint64_t t0 = bench_now_ns();
    ok = ok && pvm_vm_load_elf_image(vm, img, len, &lo, &info) == 0;
    *load_ns = (double)(bench_now_ns() - t0);
    ok = ok && pvm_vcpu_create(&cpu, vm, NULL) == 0 &&
         pvm_vm_elf_symbol(vm, "bench_call_add", &fn) == 0 && pvm_vcpu_setup_call(cpu, fn, args, 2) == 0 &&
         pvm_vcpu_run(cpu, &e) == 0 && e.reason == PVM_EXIT_HYPERCALL &&
         e.u.hypercall.nr == PVM_HOSTCALL(PVM_HOSTCALL_EXIT) && e.u.hypercall.args[0] == 5;
    pvm_vm_destroy(vm);
    return ok ? 0 : -1;
}

static double median(double *s, unsigned n)
{
    double *c = malloc(n * sizeof(*c));
    memcpy(c, s, n * sizeof(*c));
    qsort(c, n, sizeof(*c), bench_cmp_double);
    double m = c[n / 2];
    free(c);
    return m;
}

int main(int argc, char **argv)
{
    FILE *json = NULL;
    unsigned q = 1, max_vms = 2000, extra_fds = 0, gap_us = 0;
    bool max_vms_set = false;
    char guest[PATH_MAX];
    bench_sibling_path(guest, sizeof(guest), "bench-guest.elf");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = fopen(argv[++i], "a");
        else if (!strcmp(argv[i], "--guest") && i + 1 < argc)
            snprintf(guest, sizeof(guest), "%s", argv[++i]);
        else if (!strcmp(argv[i], "--max-vms") && i + 1 < argc)
            max_vms = (unsigned)atoi(argv[++i]), max_vms_set = true;
        else if (!strcmp(argv[i], "--quick"))
            q = 4;
        else if (!strcmp(argv[i], "--extra-fds") && i + 1 < argc)
            extra_fds = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gap-us") && i + 1 < argc)
            gap_us = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            if (bench_set_backend(argv[++i]) < 0)
                return 2;
            if (bench_backend != PVM_BACKEND_NATIVE && !max_vms_set)
                max_vms = 0; /* a KVM VM per vCPU: density only when asked (--max-vms) */
        }
        else {
            fprintf(stderr, "usage: %s [--backend native|kvm|kmod] [--guest FILE] [--json FILE] [--max-vms N] [--quick] [--extra-fds N] [--gap-us N]\n"
                            "Measures VM create -> first instruction, create+load+call+destroy, memory\n"
                            "per idle VM and how many idle VMs fit (default cap 2000).\n"
                            "--extra-fds N: open N more fds first (an application with many fds).\n"
                            "--gap-us N: sleep N us after each destroy, untimed (the previous VM's teardown and the\n"
                            "  stub pool's refill then finish before the next create; default 0: back to back).\n", argv[0]);
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    tsc_per_ns = bench_tsc_per_ns();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { /* a few fds per VM */
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    for (unsigned i = 0; i < extra_fds; i++)
        if (open("/dev/null", O_RDONLY | O_CLOEXEC) < 0) {
            fprintf(stderr, "bench-vms: --extra-fds: only %u: %s\n", i, strerror(errno));
            return 1;
        }

    /* VM create -> first guest instruction, and -> first exit seen by the host. */
    unsigned n = 200 / q;
    double *first = calloc(n, sizeof(double)), *exit1 = calloc(n, sizeof(double));
    struct mini m;
    struct bench_result r;
    /*
     * Back to back, each create shares the machine with the previous VM's
     * teardown (its stub exiting) and the stub pool's refill; "quiet" leaves
     * 2 ms after each destroy for them (untimed): a create on an otherwise idle
     * machine.
     */
    static const struct {
        uint64_t root;
        unsigned gap_us;
        const char *first, *exit;
    } kinds[] = {
        { 0, 0, "pvm.vm_create_to_first_insn", "pvm.vm_create_to_first_exit" },
        { 0x1000, 0, "pvm.vm_create_to_first_insn_new_cr3", "pvm.vm_create_to_first_exit_new_cr3" },
        { 0, 2000, "pvm.vm_create_to_first_insn_quiet", "pvm.vm_create_to_first_exit_quiet" },
    };
    for (unsigned k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        for (unsigned i = 0; i < n + 10; i++) {
            uint64_t t0 = bench_rdtsc();
            if (mini_start(&m, kinds[k].root) < 0) {
                fprintf(stderr, "bench-vms: %s: %s\n", mini_err, pvm_last_error());
                return 1;
            }
            uint64_t t1 = bench_rdtsc();
            if (i >= 10) { /* warm-up */
                first[i - 10] = (double)(m.first_insn_tsc - t0) / tsc_per_ns;
                exit1[i - 10] = (double)(t1 - t0) / tsc_per_ns;
            }
            pvm_vm_destroy(m.vm);
            if (gap_us || kinds[k].gap_us)
                usleep(gap_us > kinds[k].gap_us ? gap_us : kinds[k].gap_us);
        }
        bench_from_samples(&r, bench_row(kinds[k].first), first, n);
        bench_print(&r), bench_json(json, &r);
        bench_from_samples(&r, bench_row(kinds[k].exit), exit1, n);
        bench_print(&r), bench_json(json, &r);
    }

    /* Hyperlight's create + load + call + destroy. */
    size_t len;
    void *img = read_file(guest, &len);
    if (!img) {
        fprintf(stderr, "bench-vms: cannot read %s\n", guest);
        return 1;
    }
    for (unsigned i = 0; i < n + 10; i++) {
        uint64_t t0 = bench_now_ns();
        double load_ns;
        if (create_call_destroy(img, len, &load_ns) < 0) {
            fprintf(stderr, "bench-vms: create+call+destroy: %s\n", pvm_last_error());
            return 1;
        }
        if (i >= 10) {
            first[i - 10] = (double)(bench_now_ns() - t0);
            exit1[i - 10] = load_ns;
        }
    }
    bench_from_samples(&r, bench_row("pvm.create_load_call_destroy"), first, n);
    bench_print(&r), bench_json(json, &r);
    bench_from_samples(&r, bench_row("pvm.load_elf_4mib"), exit1, n);
    bench_print(&r), bench_json(json, &r);
    free(img);

    /* Idle VMs: memory per VM, and how many fit before creation fails or slows past 2x. */
    struct mini *vms = calloc(max_vms, sizeof(*vms));
    double *ct = calloc(max_vms, sizeof(double));
    struct memsum m0, m1;
    double avail0 = mem_available_kib(), avail1 = 0;
    const unsigned W = 50, MEM_AT = 200;
    mem_now(&m0);
    unsigned count = 0, slow_at = 0;
    const char *why = "reached the cap";
    double base = 0;
    for (; count < max_vms; count++) {
        uint64_t t0 = bench_now_ns();
        if (mini_start(&vms[count], 0) < 0) {
            pvm_vm_destroy(vms[count].vm);
            fprintf(stderr, "bench-vms: VM %u: %s: %s\n", count, mini_err, pvm_last_error());
            why = "creation failed";
            break;
        }
        ct[count] = (double)(bench_now_ns() - t0);
        if (count + 1 == W)
            base = median(ct, W);
        if (count + 1 == MEM_AT) {
            mem_now(&m1);
            avail1 = mem_available_kib();
        }
        /* Keep going after the 2x point: how far creation still works is worth knowing too. */
        if (!slow_at && count + 1 > W && (count + 1) % 10 == 0 && median(ct + count + 1 - W, W) > 2 * base)
            slow_at = count + 1;
    }
    if (count >= MEM_AT) {
        bench_json_value(json, bench_row("pvm.idle_vm_rss_kib"), (m1.rss_kib - m0.rss_kib) / MEM_AT, "KiB/VM");
        bench_json_value(json, bench_row("pvm.idle_vm_pss_kib"), (m1.pss_kib - m0.pss_kib) / MEM_AT, "KiB/VM");
        bench_json_value(json, bench_row("pvm.idle_vm_pagetables_kib"), (m1.pte_kib - m0.pte_kib) / MEM_AT, "KiB/VM");
        bench_json_value(json, bench_row("pvm.idle_vm_memavailable_kib"), (avail0 - avail1) / MEM_AT, "KiB/VM");
        bench_json_value(json, bench_row("pvm.idle_vm_procs"), (double)(m1.procs - m0.procs) / MEM_AT, "proc/VM");
    }
    bench_json_value(json, bench_row("pvm.idle_vms_before_2x_slower"), slow_at ? slow_at : count,
                     slow_at ? "creation slowed past 2x" : why);
    bench_json_value(json, bench_row("pvm.idle_vms_created"), count, why);
    if (count >= W) {
        bench_json_value(json, bench_row("pvm.idle_vms_first_create_us"), base / 1000, "us (median, first 50)");
        bench_json_value(json, bench_row("pvm.idle_vms_last_create_us"), median(ct + count - W, W) / 1000,
                         "us (median, last 50)");
    }
    uint64_t t0 = bench_now_ns();
    for (unsigned i = 0; i < count; i++)
        pvm_vm_destroy(vms[i].vm);
    bench_json_value(json, bench_row("pvm.idle_vms_destroy_all_ms"), (double)(bench_now_ns() - t0) / 1e6, "ms");
    free(vms);
    free(ct);
    free(first);
    free(exit1);
    if (json)
        fclose(json);
    return 0;
}
