/*
 * lib/backends/kmod/kmod.c - the kmod backend: the hypervisor core over the
 * kmod/ module's world switch (/dev/pvm, include/pvm/kmod.h, ABI v2).
 *
 * The provider is thin: one module address space per shadow slot, filled
 * with AS_MAP of the library's own mapping of guest RAM; run() is one
 * PVM_KMOD_AS_RUN, which returns at the guest's first trap, except that with
 * a module of ABI version 3 prepare() lets the module deliver the common
 * events itself (PVM_KMOD_RUN_PVM: user SYSCALL and exceptions, ERETU,
 * ERETS, supervisor exceptions, hypercalls without state) when nothing else
 * is due first: a user syscall round trip then never leaves the kernel.
 * PVM_KMOD_FASTPATH=0 turns that off.  Guest code runs
 * at ring 3 on the vCPU thread itself, so the thread's FPU state is the
 * guest's while it runs: run() swaps the two around the ioctl, in one asm
 * statement so that no compiled code runs with the guest's MXCSR.
 *
 * Guest-virtual window: the native backend's (the lower half), so the same
 * guest sees the same machine on every backend.
 */
#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <pvm/kmod.h>

#include "hv/hv.h"
#include "kmod.h"

extern const struct pvm_backend_ops pvm_kmod_backend;

#define KMOD_GUEST_LO 0x10000ull
#define KMOD_GUEST_HI 0x7f0000000000ull

struct kmod_cpu {
    int dev;
    int as[PVM_SHADOW_MAX_ROOTS];  /* atomic: -1 until activated */
    bool deliver_on;               /* module ABI >= 3 and PVM_KMOD_FASTPATH != "0" */
    /* Under hv->inbox_lock: the slot whose RUN takes posted interrupts (-1: none), and whether any was. */
    int irq_slot;
    bool posted;
    uint64_t events, switches;     /* delivered by the module, of which mode switches (statistics) */
    struct pvm_kmod_run run;
    struct pvm_kmod_pvm pvm;       /* run.pvm points here while prepare() allows it */
    /* prepare()'s lookups, kept while what they depend on stays (a run costs a few of them). */
    struct {
        uint64_t gpa, gen;         /* MSR_PVM_VCPU_STRUCT and the regions' generation it was found in */
        struct pvm_vcpu_struct *p; /* NULL: look again */
        uint32_t cpuid_gen;
        bool feat_ok;
        uint32_t kvm_features;
    } memo;
    uint8_t *fpu;                  /* the guest's FPU image (XSAVE or FXSAVE layout) */
    uint8_t *host_fpu;             /* the thread's, while the guest's is loaded */
};

/* How this CPU saves FPU state: XSAVE with XCR0's features, else FXSAVE (512 bytes). */
static struct {
    pthread_once_t once;
    bool xsave;
    uint64_t xcr0;
    size_t size;
    uint32_t mxcsr_mask;
} fpu = { .once = PTHREAD_ONCE_INIT };

static void fpu_probe(void)
{
    unsigned a, b, c, d;
    fpu.size = 512;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_OSXSAVE)) {
        uint32_t lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        fpu.xcr0 = ((uint64_t)hi << 32) | lo;
        __cpuid_count(0xd, 0, a, b, c, d);
        fpu.xsave = true;
        fpu.size = b;
    }
    uint8_t img[512] __attribute__((aligned(16))) = { 0 };
    __asm__ volatile("fxsave64 %0" : "=m"(img));
    memcpy(&fpu.mxcsr_mask, img + 28, 4);
    if (!fpu.mxcsr_mask)
        fpu.mxcsr_mask = 0xffbf;
}

static struct kmod_cpu *kc_of(const struct pvm_hv_vcpu *hv)
{
    return hv->pdata;
}

/* /dev/pvm with the world switch (ABI >= 2), or PVM_ENODEV with the reason; its version in *abi. */
static int open_dev(int *out, int *abi)
{
    int fd = open(PVM_KMOD_DEVICE, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return pvm__error(PVM_ENODEV, "kmod: cannot open %s: %s%s", PVM_KMOD_DEVICE, strerror(errno),
                          errno == ENOENT ? " (the pvm module is not loaded: kmod/README.md)" : "");
    int v = ioctl(fd, PVM_KMOD_GET_VERSION, 0);
    if (v < 2) {
        close(fd);
        return pvm__error(PVM_ENODEV, "kmod: %s speaks ABI version %d; the kmod backend needs 2 (RUN)",
                          PVM_KMOD_DEVICE, v);
    }
    *out = fd;
    if (abi)
        *abi = v;
    return 0;
}

static int kmod_probe(void)
{
    int fd = -1;
    int rc = open_dev(&fd, NULL);
    if (rc == 0)
        close(fd);
    return rc;
}

static void kmod_vcpu_fini(struct pvm_hv_vcpu *hv)
{
    struct kmod_cpu *kc = kc_of(hv);
    if (!kc)
        return;
    pvm__log(PVM_LOG_DEBUG, "vCPU %u: %llu events delivered by the module (%llu mode switches), "
             "%llu #PF and %llu fetch prefetches", hv->v->id, (unsigned long long)kc->events,
             (unsigned long long)kc->switches, (unsigned long long)hv->prefetches,
             (unsigned long long)hv->fetch_prefetches);
    for (unsigned i = 0; i < PVM_SHADOW_MAX_ROOTS; i++)
        if (kc->as[i] >= 0)
            close(kc->as[i]);
    if (kc->dev >= 0)
        close(kc->dev);
    free(kc->fpu);
    free(kc->host_fpu);
    free(kc);
    hv->pdata = NULL;
}

static int kmod_vcpu_init(struct pvm_hv_vcpu *hv)
{
    struct kmod_cpu *kc = calloc(1, sizeof(*kc));
    if (!kc)
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory");
    hv->pdata = kc; /* on failure the core calls kmod_vcpu_fini */
    kc->dev = -1;
    kc->irq_slot = -1;
    for (unsigned i = 0; i < PVM_SHADOW_MAX_ROOTS; i++)
        kc->as[i] = -1;
    /* A fault costs a world switch and a return to user space: prefetch what the retry would fault. */
    hv->prefetch_on = true;
    int abi = 0;
    int rc = open_dev(&kc->dev, &abi);
    if (rc < 0)
        return rc;
    const char *fp = getenv("PVM_KMOD_FASTPATH");
    kc->deliver_on = abi >= 3 && !(fp && !strcmp(fp, "0"));
    /* The module's per-address-space page limit bounds the shadow MMU's budget (which then resets the slot). */
    struct pvm_kmod_info info;
    if (ioctl(kc->dev, PVM_KMOD_INFO, &info) == 0)
        hv->map_limit = info.max_pages_per_as * PVM_KMOD_PAGE_SIZE;
    /*
     * Every page the module maps is pinned, so allocated, at once, where
     * native maps lazily: a guest's large page or run is installed a page at
     * a time as it faults, so only what the guest touches is allocated
     * (docs/benchmarks.md: create + call + destroy 1.5 ms this way in QEMU,
     * 2.6 ms with 64 KiB pieces, 12.9 ms with whole 2 MiB pages).
     * PVM_KMOD_MAP_CHUNK (bytes, a power of two) sets another piece size.
     */
    const char *chunk = getenv("PVM_KMOD_MAP_CHUNK");
    hv->install_max = chunk && *chunk ? strtoull(chunk, NULL, 0) : 4096;
    pthread_once(&fpu.once, fpu_probe);
    size_t sz = (fpu.size + 63) & ~(size_t)63;
    kc->fpu = aligned_alloc(64, sz);
    kc->host_fpu = aligned_alloc(64, sz);
    if (!kc->fpu || !kc->host_fpu)
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory");
    /* The reset state: FCW 0x37f, MXCSR 0x1f80, the rest at init (XSTATE_BV 0). */
    memset(kc->fpu, 0, sz);
    kc->fpu[0] = 0x7f;
    kc->fpu[1] = 0x03;
    uint32_t mxcsr = 0x1f80;
    memcpy(kc->fpu + 24, &mxcsr, 4);
    return 0;
}

/* ---- slots ------------------------------------------------------------------- */

static int kmod_activate(struct pvm_hv_vcpu *hv, unsigned slot, char *err, size_t errlen)
{
    struct kmod_cpu *kc = kc_of(hv);
    if (kc->as[slot] >= 0)
        return 0;
    struct pvm_kmod_create_as c = { 0 };
    int fd = ioctl(kc->dev, PVM_KMOD_CREATE_AS, &c);
    if (fd < 0) {
        snprintf(err, errlen, "kmod: PVM_KMOD_CREATE_AS failed: %s", strerror(errno));
        return errno == ENOMEM ? PVM_ENOMEM : PVM_EINTERNAL;
    }
    __atomic_store_n(&kc->as[slot], fd, __ATOMIC_RELEASE); /* kmod_kick reads it from any thread */
    return 0;
}

static int as_unmap(struct kmod_cpu *kc, unsigned slot, uint64_t gva, uint64_t len)
{
    struct pvm_kmod_unmap u = { .gva = gva, .len = len };
    return ioctl(kc->as[slot], PVM_KMOD_AS_UNMAP, &u);
}

static int kmod_map(struct pvm_hv_vcpu *hv, unsigned slot, uint64_t gva, uint64_t len, uint64_t gpa,
                    const struct pvm_region *r, unsigned prot)
{
    struct kmod_cpu *kc = kc_of(hv);
    if (kc->as[slot] < 0 || (prot & PVM_HV_PROT_SNAPSHOT) || gpa < r->gpa || gpa - r->gpa + len > r->size)
        return -1;
    for (uint64_t done = 0; done < len;) {
        uint64_t n = len - done < PVM_KMOD_MAP_MAX_LEN ? len - done : PVM_KMOD_MAP_MAX_LEN;
        struct pvm_kmod_map m = {
            .gva = gva + done,
            .uaddr = (uintptr_t)(r->host + (gpa + done - r->gpa)),
            .len = n,
            .flags = PVM_KMOD_MAP_READ | ((prot & PVM_PROT_WRITE) ? PVM_KMOD_MAP_WRITE : 0) |
                     ((prot & PVM_PROT_EXEC) ? PVM_KMOD_MAP_EXEC : 0),
        };
        int rc = ioctl(kc->as[slot], PVM_KMOD_AS_MAP, &m);
        if (rc < 0 && errno == EEXIST) {
            /* A changed translation: the module never replaces a leaf. */
            if (as_unmap(kc, slot, m.gva, n) < 0)
                return -1;
            rc = ioctl(kc->as[slot], PVM_KMOD_AS_MAP, &m);
        }
        if (rc < 0) {
            pvm__log(PVM_LOG_DEBUG, "kmod: AS_MAP %#llx+%#llx: %s", (unsigned long long)m.gva,
                     (unsigned long long)n, strerror(errno));
            return -1;
        }
        done += n;
    }
    return 0;
}

static int kmod_unmap(struct pvm_hv_vcpu *hv, unsigned slot, uint64_t gva, uint64_t len)
{
    struct kmod_cpu *kc = kc_of(hv);
    if (kc->as[slot] < 0)
        return 0;
    return as_unmap(kc, slot, gva, len) < 0 ? -1 : 0;
}

static void kmod_reset(struct pvm_hv_vcpu *hv, unsigned slot)
{
    struct kmod_cpu *kc = kc_of(hv);
    if (kc->as[slot] >= 0)
        as_unmap(kc, slot, KMOD_GUEST_LO, KMOD_GUEST_HI - KMOD_GUEST_LO);
}

/* ---- running ------------------------------------------------------------------ */

/* The module's KICK: an IPI to the CPU running the slot, no signal (a kick never gets lost there). */
static void kmod_kick(struct pvm_hv_vcpu *hv, unsigned slot)
{
    int as = __atomic_load_n(&kc_of(hv)->as[slot], __ATOMIC_ACQUIRE);
    if (as >= 0)
        ioctl(as, PVM_KMOD_AS_KICK, 0);
}

/*
 * May the module deliver events itself this run (PVM_KMOD_RUN_PVM)?  Only
 * when the model would do nothing between them but deliver them: nothing to
 * deliver or hold pending, no halt, no guest debugging or event trace (the
 * core must see every event then), a PVCS in writable RAM; mode switches
 * only with the other mode's address space already a slot (pvm_shadow_find:
 * no eviction, so the core's view stays exact).
 */
static void kmod_prepare(struct pvm_hv_vcpu *hv, unsigned slot)
{
    struct kmod_cpu *kc = kc_of(hv);
    const struct pvm_cpu *c = &hv->cpu;
    kc->run.flags = 0;
    kc->run.pvm = 0;
    if (!kc->deliver_on || pvm_hv_debug_on(hv) || pvm__log_on(PVM_LOG_TRACE) || c->halted ||
        pvm_hv_events_pending(hv) || pvm_hv_irqs_pending(c) || pvm_m_la57(c) || c->ss != PVM_USER_DS ||
        !pvm_hv_canonical48(c->msr_lstar) || !pvm_hv_canonical48(c->msr_kernel_gs_base))
        return;
    /* A found PVCS stays where it is until a region goes (regions_gen; a new one cannot cover it). */
    if (!kc->memo.p || kc->memo.gpa != c->msr_vcpu_struct || kc->memo.gen != hv->regions_gen) {
        kc->memo.p = pvm_m_pvcs(c, &hv->mem);
        kc->memo.gpa = c->msr_vcpu_struct;
        kc->memo.gen = hv->regions_gen;
    }
    struct pvm_vcpu_struct *pvcs = kc->memo.p;
    if (!pvcs)
        return;
    /*
     * Mode switches only with the other mode's slot already there (else the
     * model makes it), and not while a user #PF waits for its retry: the
     * library's ERETU then installs the page the retry would fault on (run.c
     * pf_prefetch), which saves a world switch.
     */
    int other = pvm_shadow_find(hv->shadow, c->msr_switch_cr3, c->mode != PVM_MODE_USER);
    if (other >= 0 && ((unsigned)other == slot || kc->as[other] < 0 ||
                       (hv->pf.pending && hv->pf.mode == PVM_MODE_USER)))
        other = -1;
    if (!kc->memo.feat_ok || kc->memo.cpuid_gen != hv->cpuid_gen) {
        uint32_t feat[4];
        pvm_m_cpuid(c, PVM_KVM_CPUID_FEATURES, 0, feat);
        kc->memo.kvm_features = feat[0];
        kc->memo.cpuid_gen = hv->cpuid_gen;
        kc->memo.feat_ok = true;
    }
    kc->pvm = (struct pvm_kmod_pvm){
        .pvcs = (uintptr_t)pvcs,
        /* A region change may put other memory at the same address: the module then pins it again. */
        .pvcs_cookie = hv->regions_gen,
        .lstar = c->msr_lstar,
        .event_entry = c->msr_event_entry,
        .retu_rip_plus2 = c->msr_retu_rip_plus2,
        .rets_rip_plus2 = c->msr_rets_rip_plus2,
        .redzone = c->msr_redzone,
        .kernel_gs_base = c->msr_kernel_gs_base,
        .supervisor_rsp = c->msr_supervisor_rsp,
        .other_as = other >= 0 ? kc->as[other] : -1,
        .mode = c->mode == PVM_MODE_USER ? PVM_KMOD_MODE_USER : PVM_KMOD_MODE_SUPERVISOR,
        .kvm_features = kc->memo.kvm_features,
        .sup_cs = (uint16_t)((c->msr_star >> 32) & 0xfffc),
    };
    kc->run.flags = PVM_KMOD_RUN_PVM;
    kc->run.pvm = (uintptr_t)&kc->pvm;
    /* From now until the run's end an injected interrupt goes to the module (kmod_post_irq). */
    pthread_mutex_lock(&hv->inbox_lock);
    kc->irq_slot = (int)slot;
    pthread_mutex_unlock(&hv->inbox_lock);
}

/*
 * An interrupt injected while a run with PVM_KMOD_RUN_PVM may be going on
 * (under inbox_lock): posted to the module, which delivers it as the model
 * would or leaves it posted and ends the run; kmod_take_irqs() then moves
 * what is left into the model.  Each one is delivered exactly once.
 */
static bool kmod_post_irq(struct pvm_hv_vcpu *hv, unsigned vector)
{
    struct kmod_cpu *kc = kc_of(hv);
    if (kc->irq_slot < 0 || ioctl(kc->as[kc->irq_slot], PVM_KMOD_AS_POST_IRQ, (unsigned long)vector) < 0)
        return false;
    kc->posted = true;
    return true;
}

/* After a run: no more posting; what the module did not deliver becomes the model's again. */
static void kmod_take_irqs(struct pvm_hv_vcpu *hv, unsigned slot, bool interrupted)
{
    struct kmod_cpu *kc = kc_of(hv);
    pthread_mutex_lock(&hv->inbox_lock);
    kc->irq_slot = -1;
    /* An ended run may also have met a vector posted some other way: take those too. */
    if (kc->posted || interrupted) {
        uint64_t bits[4] = { 0 };
        if (ioctl(kc->as[slot], PVM_KMOD_AS_TAKE_IRQS, bits) == 0)
            for (unsigned w = 0; w < 4; w++)
                hv->cpu.irq_pending[w] |= bits[w] & (w ? ~0ull : ~0xffffffffull);
        kc->posted = false;
    }
    pthread_mutex_unlock(&hv->inbox_lock);
}

static const struct kmod_cpu *kmod_of(const pvm_vcpu *v)
{
    if (!v || v->vm->ops != &pvm_kmod_backend || !v->bdata)
        return NULL;
    return kc_of(pvm_hv_of(v));
}

uint64_t pvm__kmod_events(const pvm_vcpu *v)
{
    const struct kmod_cpu *kc = kmod_of(v);
    return kc ? kc->events : 0;
}

uint64_t pvm__kmod_switches(const pvm_vcpu *v)
{
    const struct kmod_cpu *kc = kmod_of(v);
    return kc ? kc->switches : 0;
}

/*
 * ioctl(as, PVM_KMOD_AS_RUN, run) with the guest's FPU state loaded: save
 * the thread's, load the guest's, run, save the guest's, load the thread's.
 * A signal delivered on the way back saves and restores the guest's state in
 * its frame, so the order holds.
 */
static long run_with_guest_fpu(struct kmod_cpu *kc, int as)
{
    long ret;
    uint32_t lo = (uint32_t)fpu.xcr0, hi = (uint32_t)(fpu.xcr0 >> 32);
    if (fpu.xsave) {
        __asm__ volatile("mov %[lo], %%eax\n\tmov %[hi], %%edx\n\t"
                         "xsave64 (%[host])\n\txrstor64 (%[guest])\n\t"
                         "mov %[nr], %%eax\n\tmov %[arg], %%rdx\n\t"
                         "syscall\n\t"
                         "mov %%rax, %[ret]\n\t"
                         "mov %[lo], %%eax\n\tmov %[hi], %%edx\n\t"
                         "xsave64 (%[guest])\n\txrstor64 (%[host])"
                         : [ret] "=&r"(ret)
                         : [lo] "r"(lo), [hi] "r"(hi), [host] "r"(kc->host_fpu), [guest] "r"(kc->fpu),
                           [nr] "i"(SYS_ioctl), [arg] "r"(&kc->run), "D"((long)as),
                           "S"((unsigned long)PVM_KMOD_AS_RUN)
                         : "rax", "rcx", "rdx", "r11", "memory", "cc");
    } else {
        __asm__ volatile("fxsave64 (%[host])\n\tfxrstor64 (%[guest])\n\t"
                         "mov %[nr], %%eax\n\tmov %[arg], %%rdx\n\t"
                         "syscall\n\t"
                         "mov %%rax, %[ret]\n\t"
                         "fxsave64 (%[guest])\n\tfxrstor64 (%[host])"
                         : [ret] "=&r"(ret)
                         : [host] "r"(kc->host_fpu), [guest] "r"(kc->fpu), [nr] "i"(SYS_ioctl),
                           [arg] "r"(&kc->run), "D"((long)as), "S"((unsigned long)PVM_KMOD_AS_RUN)
                         : "rax", "rcx", "rdx", "r11", "memory", "cc");
    }
    return ret;
}


static int kmod_run_slot(struct pvm_hv_vcpu *hv, unsigned slot, struct pvm_hv_regs *regs, struct pvm_hv_trap *trap)
{
    struct kmod_cpu *kc = kc_of(hv);
    struct pvm_kmod_run *run = &kc->run;

    memcpy(run->regs.gpr, regs->gpr, sizeof(run->regs.gpr));
    run->regs.rip = regs->rip;
    run->cs = regs->cs;
    run->regs.rflags = regs->rflags;
    run->regs.fs_base = regs->fs_base;
    run->regs.gs_base = regs->gs_base;

    long rc = run_with_guest_fpu(kc, kc->as[slot]);
    if ((run->flags & PVM_KMOD_RUN_PVM) || rc == -EINTR)
        kmod_take_irqs(hv, slot, rc == -EINTR);
    if (rc < 0 && rc != -EINTR) {
        pvm_hv_trap_died(trap, "kmod: PVM_KMOD_AS_RUN failed: %s", strerror((int)-rc));
        return 0;
    }
    memset(trap, 0, sizeof(*trap));
    if ((run->flags & PVM_KMOD_RUN_PVM) && kc->pvm.events) {
        trap->events = kc->pvm.events;
        trap->switches = kc->pvm.switches;
        trap->nmi_unmasked = kc->pvm.nmi_unmasked != 0;
        trap->supervisor_rsp = kc->pvm.supervisor_rsp;
        kc->events += kc->pvm.events;
        kc->switches += kc->pvm.switches;
    }
    memcpy(regs->gpr, run->regs.gpr, sizeof(regs->gpr));
    regs->rip = run->regs.rip;
    regs->rflags = run->regs.rflags;
    regs->fs_base = run->regs.fs_base;
    regs->gs_base = run->regs.gs_base;
    regs->cs = (uint16_t)run->cs;
    regs->ss = PVM_USER_DS;
    if (rc == -EINTR) {
        trap->kind = PVM_HV_TRAP_KICK;
    } else if (run->exit_reason == PVM_KMOD_EXIT_SYSCALL) {
        trap->kind = PVM_HV_TRAP_SYSCALL;
    } else {
        trap->kind = PVM_HV_TRAP_FAULT;
        trap->vector = run->vector;
        trap->error_code = run->error_code;
        trap->cr2 = run->cr2;
    }
    return 0;
}

/* ---- auto: a one-time calibration ------------------------------------------------ */

/*
 * The round trip of one guest event here: a RUN of `1: syscall; jmp 1b` in a
 * throw-away address space, the median of 16 after 8 warm-ups (0 if it cannot run).
 */
static double kmod_event_us(void)
{
    static const uint8_t code[] = { 0x0f, 0x05, 0xeb, 0xfc };
    const uint64_t gva = 0x400000;
    double t[24], us = 0;
    int dev = -1, as = -1;
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (page == MAP_FAILED || open_dev(&dev, NULL) < 0)
        goto out;
    memcpy(page, code, sizeof(code));
    struct pvm_kmod_create_as c = { 0 };
    struct pvm_kmod_map m = { .gva = gva, .uaddr = (uintptr_t)page, .len = 4096,
                              .flags = PVM_KMOD_MAP_READ | PVM_KMOD_MAP_EXEC };
    if ((as = ioctl(dev, PVM_KMOD_CREATE_AS, &c)) < 0 || ioctl(as, PVM_KMOD_AS_MAP, &m) < 0)
        goto out;
    struct pvm_kmod_run r = { .regs = { .rip = gva, .rflags = 0x202 }, .cs = PVM_USER_CS };
    for (unsigned i = 0; i < 24; i++) {
        double t0 = pvm_hv_now_us();
        if (ioctl(as, PVM_KMOD_AS_RUN, &r) < 0 || r.exit_reason != PVM_KMOD_EXIT_SYSCALL)
            goto out;
        t[i] = pvm_hv_now_us() - t0;
        r.regs.rip = gva;
    }
    us = pvm_hv_median(t + 8, 16);
out:
    if (as >= 0)
        close(as);
    if (dev >= 0)
        close(dev);
    if (page != MAP_FAILED)
        munmap(page, 4096);
    return us;
}

static pthread_once_t calibrate_once = PTHREAD_ONCE_INIT;
static double calib_kmod_us, calib_native_us;

static void calibrate(void)
{
    calib_kmod_us = kmod_event_us();
    calib_native_us = pvm_hv_native_event_us();
}

/* auto picks this backend where a guest event costs less through the module than on native. */
static int kmod_prefer(void)
{
    int rc = kmod_probe();
    if (rc < 0)
        return rc;
    pthread_once(&calibrate_once, calibrate);
    if (calib_kmod_us <= 0)
        return pvm__error(PVM_ENODEV, "kmod: usable, but its calibration run failed: auto prefers another backend");
    if (calib_kmod_us < calib_native_us)
        return 0;
    return pvm__error(PVM_ENODEV, "kmod: usable, but a guest event costs %.1f us through the module here against "
                      "about %.1f us on native, so auto prefers another backend", calib_kmod_us, calib_native_us);
}

/* ---- FPU images (snapshots) ----------------------------------------------------- */

static int kmod_check_fpu(struct pvm_hv_vcpu *hv, size_t len)
{
    (void)hv;
    pthread_once(&fpu.once, fpu_probe);
    if (len != fpu.size)
        return pvm__error(PVM_ENOTSUP, "its FPU image has %zu bytes, the kmod backend's has %zu here "
                          "(a snapshot of another backend or CPU)", len, fpu.size);
    return 0;
}

static int kmod_get_fpu(struct pvm_hv_vcpu *hv, void *buf, size_t *len)
{
    if (*len < fpu.size)
        return PVM_ERANGE;
    memcpy(buf, kc_of(hv)->fpu, fpu.size);
    *len = fpu.size;
    return 0;
}

/* An image is loaded with XRSTOR/FXRSTOR in this process: anything they would fault on is refused. */
static int kmod_set_fpu(struct pvm_hv_vcpu *hv, const void *buf, size_t len)
{
    int rc = kmod_check_fpu(hv, len);
    if (rc < 0)
        return rc;
    const uint8_t *img = buf;
    uint32_t mxcsr;
    memcpy(&mxcsr, img + 24, 4);
    if (mxcsr & ~fpu.mxcsr_mask)
        return pvm__error(PVM_EINVAL, "kmod: FPU image with MXCSR %#x (reserved bits set)", mxcsr);
    if (fpu.xsave) {
        uint64_t hdr[8];
        memcpy(hdr, img + 512, sizeof(hdr));
        if ((hdr[0] & ~fpu.xcr0) || hdr[1])
            return pvm__error(PVM_EINVAL, "kmod: FPU image with XSTATE_BV %#llx / XCOMP_BV %#llx that "
                              "XCR0 %#llx cannot load", (unsigned long long)hdr[0],
                              (unsigned long long)hdr[1], (unsigned long long)fpu.xcr0);
        for (unsigned i = 2; i < 8; i++)
            if (hdr[i])
                return pvm__error(PVM_EINVAL, "kmod: FPU image with a non-zero reserved XSAVE header");
    }
    memcpy(kc_of(hv)->fpu, buf, len);
    return 0;
}

static const struct pvm_cpu_provider kmod_cpu = {
    .name = "kmod",
    .window_lo = KMOD_GUEST_LO,
    .window_hi = KMOD_GUEST_HI,
    /* The native backend's range (§10.30): the same guest sees the same machine on both. */
    .linear_range = PVM_LA_RANGE_MAKE(0x1ff, 0x1ff, 0x1ff, 0x1ff),
    .vcpu_init = kmod_vcpu_init,
    .vcpu_fini = kmod_vcpu_fini,
    .activate = kmod_activate,
    .map = kmod_map,
    .unmap = kmod_unmap,
    .reset = kmod_reset,
    .run = kmod_run_slot,
    .kick = kmod_kick,
    .prepare = kmod_prepare,
    .post_irq = kmod_post_irq,
    .get_fpu = kmod_get_fpu,
    .set_fpu = kmod_set_fpu,
    .check_fpu = kmod_check_fpu,
};

const struct pvm_backend_ops pvm_kmod_backend = {
    .name = "kmod",
    .id = PVM_BACKEND_KMOD,
    .caps = 0,
    .probe = kmod_probe,
    .prefer = kmod_prefer,
    PVM_HV_BACKEND_OPS(&kmod_cpu),
};
