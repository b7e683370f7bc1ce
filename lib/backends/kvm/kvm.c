/*
 * lib/backends/kvm/kvm.c - the "kvm" backend: the hypervisor core (lib/hv/)
 * over a /dev/kvm vCPU (kvm.h explains the machine it builds).
 *
 * Each library vCPU owns one KVM VM with one vCPU.  run() writes the
 * register file and the segment state of CPL 3 (KVM_CAP_SYNC_REGS: in
 * kvm_run, no extra ioctls; else SET_REGS/SET_SREGS), runs until a
 * trampoline HLT exits, and reads the trap from the frame the hardware
 * pushed.  Guest kernel and user run in separate hardware address spaces
 * (one PML4 per slot): this backend isolates a guest kernel from its user
 * programs, which the native backend cannot.
 *
 * TLB: KVM flushes the guest TLB when the host sets another CR3; a removal
 * under the same CR3 needs a flush too.  Under TDP (npt/ept) toggling
 * CR3.PWT makes it another CR3; under shadow paging (KVM's own, npt=0, or a
 * PVM-based host) KVM does not see the library's writes to the page tables
 * at all, so a removal re-registers the private area's memslot, which makes
 * KVM drop every shadow page.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hv/hv.h"
#include "kvm.h"

extern const struct pvm_backend_ops pvm_kvm_backend;

#define MSR_STAR 0xc0000081u
#define MSR_LSTAR 0xc0000082u
#define MSR_CSTAR 0xc0000083u
#define MSR_SFMASK 0xc0000084u
#define MSR_MISC_FEATURES_ENABLES 0x140u   /* bit 0: CPUID faulting */
#define SLOT_RAM 0
#define SLOT_PRIV 1

/* ---- probing /dev/kvm (once per process) ------------------------------------ */

static pthread_once_t probe_once_ctl = PTHREAD_ONCE_INIT;
static struct kvm_host host = { .rc = PVM_ENODEV };
static char host_why[256];

static bool sysfs_yes(const char *path)
{
    char c = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool yes = read(fd, &c, 1) == 1 && (c == 'Y' || c == '1');
    close(fd);
    return yes;
}

bool kvm_is_gen_a(const struct kvm_cpuid2 *c, const uint32_t *msrs, unsigned nr_msrs)
{
    bool leaf = false;
    for (unsigned i = 0; c && i < c->nent; i++)
        if (c->entries[i].function == 0x40000002 && c->entries[i].ebx == 0x4d5650)
            leaf = true;
    unsigned seen = 0;
    for (unsigned i = 0; i < nr_msrs; i++)
        if (msrs[i] - 0x4b564df0u < 8)
            seen |= 1u << (msrs[i] - 0x4b564df0u);
    return leaf && seen == 0xff;
}

/* A KVM_GET_* that fills a growing array: grow until it fits (E2BIG). */
static void *get_list(int fd, unsigned long req, size_t hdr, size_t elem, unsigned n0)
{
    for (unsigned n = n0; n <= n0 * 16; n *= 2) {
        uint32_t *p = calloc(1, hdr + n * elem);
        if (!p)
            return NULL;
        p[0] = n;   /* nent / nmsrs: the first field of both headers */
        if (ioctl(fd, req, p) == 0)
            return p;
        free(p);
        if (errno != E2BIG)
            return NULL;
    }
    return NULL;
}

static void probe_once(void)
{
    host.why = host_why;
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(host_why, sizeof(host_why), "kvm: cannot open /dev/kvm: %s%s", strerror(errno),
                 errno == EACCES ? " (needs root or the kvm group)" : errno == ENOENT ? " (no KVM on this machine)" : "");
        return;
    }
    int api = ioctl(fd, KVM_GET_API_VERSION, 0);
    host.mmap_size = ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    int sync = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
    host.sync_regs = sync > 0 && (sync & (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS)) ==
                                     (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
    struct kvm_cpuid2 *c = get_list(fd, KVM_GET_SUPPORTED_CPUID, sizeof(struct kvm_cpuid2),
                                    sizeof(struct kvm_cpuid_entry2), 256);
    struct kvm_msr_list *ml = get_list(fd, KVM_GET_MSR_INDEX_LIST, sizeof(struct kvm_msr_list), sizeof(uint32_t),
                                       256);
    host.cpuid = c;
    if (ml) {
        host.msrs = ml->indices;
        host.nr_msrs = ml->nmsrs;
    }
    host.phys_bits = 36;
    for (unsigned i = 0; c && i < c->nent; i++)
        if (c->entries[i].function == 0x80000008)
            host.phys_bits = c->entries[i].eax & 0xff;
    host.gen_a = kvm_is_gen_a(c, host.msrs, host.nr_msrs);
    host.fd_ok = api == KVM_API_VERSION;
    host.immediate_exit = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) > 0;
    if (api != KVM_API_VERSION)
        snprintf(host_why, sizeof(host_why), "kvm: /dev/kvm speaks API %d, not %d", api, KVM_API_VERSION);
    else if (!host.immediate_exit)
        snprintf(host_why, sizeof(host_why), "kvm: /dev/kvm lacks KVM_CAP_IMMEDIATE_EXIT");
    else if (host.mmap_size < (int)sizeof(struct kvm_run))
        snprintf(host_why, sizeof(host_why), "kvm: bad vCPU mmap size %d", host.mmap_size);
    else if (!c)
        snprintf(host_why, sizeof(host_why), "kvm: KVM_GET_SUPPORTED_CPUID failed: %s", strerror(errno));
    else if (host.gen_a)
        snprintf(host_why, sizeof(host_why),
                 "kvm: /dev/kvm is a Gen A kvm-pvm host, which runs only PVM guests at ring 3 (the standard "
                 "mode's CPL-0 trampoline cannot run there)");
    else
        host.rc = 0;
    host.tdp = sysfs_yes("/sys/module/kvm_amd/parameters/npt") || sysfs_yes("/sys/module/kvm_intel/parameters/ept");
    close(fd);
}

const struct kvm_host *kvm_host(void)
{
    pthread_once(&probe_once_ctl, probe_once);
    return &host;
}

static int kvm_probe(void)
{
    const struct kvm_host *h = kvm_host();
    if (h->rc < 0)
        return pvm__error(h->rc, "%s", h->why);
    return 0;
}

/* ---- a vCPU ---------------------------------------------------------------- */

struct kvm_cpu {
    int vm_fd, vcpu_fd;
    struct kvm_run *run;
    void *ram;
    uint64_t ram_size;
    uint8_t *priv;
    uint64_t priv_gpa;
    struct kvm_ptables pt;
    struct kvm_sregs sregs;     /* what every resume loads, but for CS/SS/FS/GS/CR3 */
    bool flush;                 /* a mapping went since the last run */
    uint64_t cr3_flip;          /* TDP flush: CR3.PWT toggled */
    int tid;                    /* atomic: thread inside run() */
    int kick_signal;
    uint64_t exits;             /* statistics */
};

static struct kvm_cpu *kc_of(const struct pvm_hv_vcpu *hv)
{
    return hv->pdata;
}

static int set_slot(struct kvm_cpu *kc, uint32_t slot, uint64_t gpa, uint64_t size, void *hva)
{
    struct kvm_userspace_memory_region m = { .slot = slot, .guest_phys_addr = gpa, .memory_size = size,
                                             .userspace_addr = (uint64_t)(uintptr_t)hva };
    return ioctl(kc->vm_fd, KVM_SET_USER_MEMORY_REGION, &m);
}

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, uint8_t dpl, bool code64)
{
    *s = (struct kvm_segment){ .base = 0, .limit = 0xffffffff, .selector = sel, .type = type, .present = 1,
                               .dpl = dpl, .db = code64 ? 0 : 1, .s = 1, .l = code64, .g = 1 };
}

int kvm_set_msr(int vcpu_fd, uint32_t index, uint64_t value)
{
    struct {
        struct kvm_msrs h;
        struct kvm_msr_entry e[1];
    } m = { .h.nmsrs = 1, .e[0] = { .index = index, .data = value } };
    return ioctl(vcpu_fd, KVM_SET_MSRS, &m) == 1 ? 0 : -1;
}

static int setup_msrs(struct kvm_cpu *kc)
{
    struct {
        struct kvm_msrs h;
        struct kvm_msr_entry e[4];
    } m = { .h.nmsrs = 4 };
    uint64_t entry = KVM_KBASE + KVM_OFF_TRAMP + KVM_TRAMP_SYSCALL;
    m.e[0] = (struct kvm_msr_entry){ .index = MSR_STAR, .data = (uint64_t)KVM_SEL_KCODE << 32 };
    m.e[1] = (struct kvm_msr_entry){ .index = MSR_LSTAR, .data = entry };
    m.e[2] = (struct kvm_msr_entry){ .index = MSR_CSTAR, .data = entry };
    /* TF IF DF IOPL NT AC: the trampoline runs with interrupts and single-step off. */
    m.e[3] = (struct kvm_msr_entry){ .index = MSR_SFMASK, .data = 0x47700 };
    if (ioctl(kc->vcpu_fd, KVM_SET_MSRS, &m) != 4)
        return -1;
    /* CPUID faulting: a guest CPUID traps (#GP) and the model answers it, as on native with faulting. */
    if (kvm_set_msr(kc->vcpu_fd, MSR_MISC_FEATURES_ENABLES, 1) < 0)
        pvm__log(PVM_LOG_DEBUG, "kvm: no CPUID faulting: guest CPUID returns KVM's table");
    return 0;
}

static bool cpuid_has(unsigned fn, unsigned reg, unsigned bit)
{
    const struct kvm_cpuid2 *c = host.cpuid;
    for (unsigned i = 0; i < c->nent; i++)
        if (c->entries[i].function == fn && c->entries[i].index == 0) {
            uint32_t r[4] = { c->entries[i].eax, c->entries[i].ebx, c->entries[i].ecx, c->entries[i].edx };
            return (r[reg] >> bit) & 1;
        }
    return false;
}

/* Close what machine_open() made (any part of it). */
static void machine_close(struct kvm_cpu *kc)
{
    if (kc->run)
        munmap(kc->run, (size_t)host.mmap_size);
    if (kc->vcpu_fd >= 0)
        close(kc->vcpu_fd);
    if (kc->vm_fd >= 0)
        close(kc->vm_fd);
    if (kc->ram)
        munmap(kc->ram, kc->ram_size);
    if (kc->priv)
        munmap(kc->priv, KVM_PRIV_SIZE);
    kvm_pt_fini(&kc->pt);
}

static void kvm_vcpu_fini(struct pvm_hv_vcpu *hv)
{
    struct kvm_cpu *kc = kc_of(hv);
    if (!kc)
        return;
    pvm__log(PVM_LOG_DEBUG, "vCPU %u: %llu KVM exits, %u page-table pages", hv->v->id,
             (unsigned long long)kc->exits, kc->pt.used);
    machine_close(kc);
    free(kc);
    hv->pdata = NULL;
}

/*
 * The KVM side of a vCPU: a KVM VM and vCPU in long mode at CPL 3, guest RAM
 * (@memfd by offset, @ram_size bytes) and the private area as memslots.
 * 0 or pvm__error(); machine_close() undoes any part.
 */
static int machine_open(struct kvm_cpu *kc, int memfd, uint64_t ram_size)
{
    int rc;
    const char *what;
    kc->vm_fd = kc->vcpu_fd = -1;
    kc->ram_size = (ram_size + 4095) & ~4095ull;
    kc->priv_gpa = kvm_priv_gpa(kc->ram_size);
    if (kc->priv_gpa + KVM_PRIV_SIZE > (1ull << host.phys_bits))
        return pvm__error(PVM_EINVAL, "kvm: max_memory 0x%llx does not fit the %u physical address bits of this KVM",
                          (unsigned long long)ram_size, host.phys_bits);
    what = "opening /dev/kvm";
    int kfd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kfd < 0)
        goto fail_errno;
    kc->vm_fd = ioctl(kfd, KVM_CREATE_VM, 0);
    close(kfd);
    what = "KVM_CREATE_VM";
    if (kc->vm_fd < 0)
        goto fail_errno;
    what = "KVM_CREATE_VCPU";
    if ((kc->vcpu_fd = ioctl(kc->vm_fd, KVM_CREATE_VCPU, 0)) < 0)
        goto fail_errno;
    what = "mapping kvm_run";
    kc->run = mmap(NULL, (size_t)host.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, kc->vcpu_fd, 0);
    if (kc->run == MAP_FAILED) {
        kc->run = NULL;
        goto fail_errno;
    }
    what = "mapping guest RAM";
    kc->ram = mmap(NULL, kc->ram_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, memfd, 0);
    if (kc->ram == MAP_FAILED) {
        kc->ram = NULL;
        goto fail_errno;
    }
    kc->priv = mmap(NULL, KVM_PRIV_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (kc->priv == MAP_FAILED) {
        kc->priv = NULL;
        goto fail_errno;
    }
    if (kvm_pt_init(&kc->pt, kc->priv, kc->priv_gpa) < 0) {
        rc = pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory");
        goto fail;
    }
    kvm_layout_build(kc->priv, kc->priv_gpa);
    what = "KVM_SET_USER_MEMORY_REGION";
    if (set_slot(kc, SLOT_RAM, 0, kc->ram_size, kc->ram) < 0 ||
        set_slot(kc, SLOT_PRIV, kc->priv_gpa, KVM_PRIV_SIZE, kc->priv) < 0)
        goto fail_errno;
    what = "KVM_SET_CPUID2";
    if (ioctl(kc->vcpu_fd, KVM_SET_CPUID2, host.cpuid) < 0)
        goto fail_errno;

    /* Long mode, paging, CPL 3 from the first instruction. */
    what = "KVM_GET_SREGS";
    struct kvm_sregs *s = &kc->sregs;
    if (ioctl(kc->vcpu_fd, KVM_GET_SREGS, s) < 0)
        goto fail_errno;
    s->cr0 = 0x80050033;                       /* PG WP NE ET MP PE */
    s->cr4 = (1u << 5) | (1u << 9) | (1u << 10); /* PAE OSFXSR OSXMMEXCPT */
    bool xsave = cpuid_has(1, 2, 26);
    if (xsave)
        s->cr4 |= 1u << 18;                    /* OSXSAVE */
    if (cpuid_has(7, 1, 0))
        s->cr4 |= 1u << 16;                    /* FSGSBASE: guest code may use it, as on native */
    s->efer = (1u << 0) | (1u << 8) | (1u << 10) | (1u << 11); /* SCE LME LMA NXE */
    s->gdt = (struct kvm_dtable){ .base = KVM_KBASE + KVM_OFF_GDT, .limit = KVM_GDT_ENTRIES * 8 - 1 };
    s->idt = (struct kvm_dtable){ .base = KVM_KBASE + KVM_OFF_IDT, .limit = 256 * 16 - 1 };
    s->tr = (struct kvm_segment){ .base = KVM_KBASE + KVM_OFF_TSS, .limit = 0x67, .selector = KVM_SEL_TSS,
                                  .type = 11, .present = 1 };
    s->ldt = (struct kvm_segment){ .unusable = 1 };
    seg(&s->cs, KVM_SEL_UCODE, 11, 3, true);
    seg(&s->ss, KVM_SEL_UDATA, 3, 3, false);
    seg(&s->ds, 0, 3, 3, false);
    s->ds.selector = 0;
    s->es = s->fs = s->gs = s->ds;
    memset(s->interrupt_bitmap, 0, sizeof(s->interrupt_bitmap));
    what = "programming the MSRs";
    if (setup_msrs(kc) < 0)
        goto fail_errno;
    if (xsave) {
        /* x87 and SSE, plus AVX where KVM offers it (XCR0 bit 2 is legal only with CPUID AVX). */
        struct kvm_xcrs x = { .nr_xcrs = 1, .xcrs[0] = { .xcr = 0, .value = cpuid_has(1, 2, 28) ? 7 : 3 } };
        what = "KVM_SET_XCRS";
        if (ioctl(kc->vcpu_fd, KVM_SET_XCRS, &x) < 0)
            goto fail_errno;
    }
    /* The guest reads the host's TSC, as guest code on native does: offset 0, else start it at the host's. */
    uint64_t zero = 0;
    struct kvm_device_attr tsc = { .group = KVM_VCPU_TSC_CTRL, .attr = KVM_VCPU_TSC_OFFSET,
                                   .addr = (uint64_t)(uintptr_t)&zero };
    if (ioctl(kc->vcpu_fd, KVM_SET_DEVICE_ATTR, &tsc) < 0) {
        uint32_t lo, hi;
        __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
        if (kvm_set_msr(kc->vcpu_fd, 0x10 /* IA32_TSC */, ((uint64_t)hi << 32) | lo) < 0)
            pvm__log(PVM_LOG_DEBUG, "kvm: the guest TSC is KVM's own (neither TSC offset nor IA32_TSC settable)");
    }
    return 0;

fail_errno:
    rc = pvm__error(PVM_ENODEV, "kvm: %s failed: %s", what, strerror(errno));
fail:
    return rc;
}

static int kvm_vcpu_init(struct pvm_hv_vcpu *hv)
{
    pvm_vm *vm = hv->v->vm;
    int rc = kvm_probe();
    if (rc < 0)
        return rc;
    struct kvm_cpu *kc = calloc(1, sizeof(*kc));
    if (!kc)
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory");
    hv->pdata = kc; /* on failure the core calls kvm_vcpu_fini */
    kc->kick_signal = vm->opts.kick_signal;
    hv->prefetch_on = true; /* a hardware fault costs a whole KVM exit: prefetch what the retry would fault */
    rc = machine_open(kc, vm->memfd, vm->opts.max_memory);
    if (rc == 0)
        rc = pvm_hv_install_kick_handler(kc->kick_signal);
    return rc;
}

/* ---- slots ------------------------------------------------------------------- */

static int kvm_activate(struct pvm_hv_vcpu *hv, unsigned slot, char *err, size_t errlen)
{
    if (!kvm_pt_root(&kc_of(hv)->pt, slot)) {
        snprintf(err, errlen, "out of page-table pages");
        return PVM_ENOMEM;
    }
    return 0;
}

static int kvm_map(struct pvm_hv_vcpu *hv, unsigned slot, uint64_t gva, uint64_t len, uint64_t gpa,
                   const struct pvm_region *r, unsigned prot)
{
    struct kvm_cpu *kc = kc_of(hv);
    uint64_t kgpa = r->memfd_off + (gpa - r->gpa);
    if (kgpa + len > kc->ram_size || kgpa + len < kgpa)
        return -1;
    int rc = kvm_pt_map(&kc->pt, slot, gva, len, kgpa, prot & PVM_PROT_WRITE, prot & PVM_PROT_EXEC);
    if (kc->pt.replaced) { /* a changed translation, not only a new one: flush as for a removal */
        kc->pt.replaced = false;
        kc->flush = true;
    }
    return rc;
}

static int kvm_unmap(struct pvm_hv_vcpu *hv, unsigned slot, uint64_t gva, uint64_t len)
{
    struct kvm_cpu *kc = kc_of(hv);
    kvm_pt_unmap(&kc->pt, slot, gva, len);
    kc->flush = true;
    return 0;
}

static void kvm_reset(struct pvm_hv_vcpu *hv, unsigned slot)
{
    struct kvm_cpu *kc = kc_of(hv);
    kvm_pt_reset(&kc->pt, slot);
    kc->flush = true;
}

/* ---- running ------------------------------------------------------------------ */

void kvm_kick_run(struct kvm_run *run, const int *tid, int sig)
{
    __atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    int t = __atomic_load_n(tid, __ATOMIC_SEQ_CST);
    if (t)
        syscall(SYS_tgkill, getpid(), t, sig);
}

static void kvm_kick(struct pvm_hv_vcpu *hv, unsigned slot)
{
    (void)slot;
    struct kvm_cpu *kc = kc_of(hv);
    kvm_kick_run(kc->run, &kc->tid, kc->kick_signal);
}

static void to_kvm(const struct pvm_hv_regs *r, struct kvm_regs *k)
{
    k->rax = r->gpr[PVM_RAX]; k->rcx = r->gpr[PVM_RCX]; k->rdx = r->gpr[PVM_RDX]; k->rbx = r->gpr[PVM_RBX];
    k->rsp = r->gpr[PVM_RSP]; k->rbp = r->gpr[PVM_RBP]; k->rsi = r->gpr[PVM_RSI]; k->rdi = r->gpr[PVM_RDI];
    k->r8 = r->gpr[PVM_R8]; k->r9 = r->gpr[PVM_R9]; k->r10 = r->gpr[PVM_R10]; k->r11 = r->gpr[PVM_R11];
    k->r12 = r->gpr[PVM_R12]; k->r13 = r->gpr[PVM_R13]; k->r14 = r->gpr[PVM_R14]; k->r15 = r->gpr[PVM_R15];
    k->rip = r->rip;
    k->rflags = r->rflags;
}

static void from_kvm(const struct kvm_regs *k, struct pvm_hv_regs *r)
{
    r->gpr[PVM_RAX] = k->rax; r->gpr[PVM_RCX] = k->rcx; r->gpr[PVM_RDX] = k->rdx; r->gpr[PVM_RBX] = k->rbx;
    r->gpr[PVM_RSP] = k->rsp; r->gpr[PVM_RBP] = k->rbp; r->gpr[PVM_RSI] = k->rsi; r->gpr[PVM_RDI] = k->rdi;
    r->gpr[PVM_R8] = k->r8; r->gpr[PVM_R9] = k->r9; r->gpr[PVM_R10] = k->r10; r->gpr[PVM_R11] = k->r11;
    r->gpr[PVM_R12] = k->r12; r->gpr[PVM_R13] = k->r13; r->gpr[PVM_R14] = k->r14; r->gpr[PVM_R15] = k->r15;
}

static int kvm_run_slot(struct pvm_hv_vcpu *hv, unsigned slot, struct pvm_hv_regs *regs, struct pvm_hv_trap *trap)
{
    struct kvm_cpu *kc = kc_of(hv);
    struct kvm_run *run = kc->run;
    struct kvm_regs kr;
    struct kvm_sregs sr = kc->sregs;

    if (kc->flush) {
        kc->flush = false;
        if (host.tdp)
            kc->cr3_flip ^= 1u << 3; /* another CR3 value: KVM flushes the guest TLB */
        else if (set_slot(kc, SLOT_PRIV, kc->priv_gpa, 0, kc->priv) < 0 ||
                 set_slot(kc, SLOT_PRIV, kc->priv_gpa, KVM_PRIV_SIZE, kc->priv) < 0) {
            pvm_hv_trap_died(trap, "re-registering the page-table memslot failed: %s", strerror(errno));
            return 0;
        }
    }
    to_kvm(regs, &kr);
    sr.cr3 = kvm_pt_root(&kc->pt, slot) | kc->cr3_flip;
    if (regs->cs == PVM_USER32_CS)
        seg(&sr.cs, KVM_SEL_UCODE32, 11, 3, false);
    sr.fs.base = regs->fs_base;
    sr.gs.base = regs->gs_base;
    if (host.sync_regs) {
        run->s.regs.regs = kr;
        run->s.regs.sregs = sr;
        run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
        run->kvm_dirty_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
    } else if (ioctl(kc->vcpu_fd, KVM_SET_SREGS, &sr) < 0 || ioctl(kc->vcpu_fd, KVM_SET_REGS, &kr) < 0) {
        pvm_hv_trap_died(trap, "KVM_SET_REGS/SREGS failed: %s", strerror(errno));
        return 0;
    }

    __atomic_store_n(&kc->tid, (int)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
    int rc = ioctl(kc->vcpu_fd, KVM_RUN, 0);
    int err = errno;
    __atomic_store_n(&kc->tid, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
    kc->exits++;
    memset(trap, 0, sizeof(*trap));
    bool interrupted = (rc < 0 && (err == EINTR || err == EAGAIN)) || (rc == 0 && run->exit_reason == KVM_EXIT_INTR);
    if (rc < 0 && !interrupted) {
        pvm_hv_trap_died(trap, "KVM_RUN failed: %s", strerror(err));
        return 0;
    }
    if (!interrupted && run->exit_reason != KVM_EXIT_HLT) {
        if (run->exit_reason == KVM_EXIT_SHUTDOWN)
            pvm_hv_trap_died(trap, "KVM reports a triple fault (the trampoline machine is broken)");
        else if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
            pvm_hv_trap_died(trap, "KVM internal error, suberror %u", run->internal.suberror);
        else if (run->exit_reason == KVM_EXIT_FAIL_ENTRY)
            pvm_hv_trap_died(trap, "KVM entry failed, hardware reason %#llx",
                 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
        else
            pvm_hv_trap_died(trap, "unexpected KVM exit %u", run->exit_reason);
        return 0;
    }
    /* The state at the exit: a signal may have stopped the guest anywhere, even after it ran. */
    if (host.sync_regs) {
        kr = run->s.regs.regs;
        sr = run->s.regs.sregs;
    } else if (ioctl(kc->vcpu_fd, KVM_GET_REGS, &kr) < 0 || ioctl(kc->vcpu_fd, KVM_GET_SREGS, &sr) < 0) {
        pvm_hv_trap_died(trap, "KVM_GET_REGS/SREGS failed: %s", strerror(errno));
        return 0;
    }
    uint64_t rip = kr.rip;
    if (interrupted) {
        /*
         * Stopped at CPL 3: a kick, with the guest's registers as they are now.
         * Stopped on a trampoline entry (the event was delivered, its HLT not
         * yet run): the trap, as if the HLT had exited.
         */
        if (rip - (KVM_KBASE + KVM_OFF_TRAMP) >= KVM_TRAMP_SIZE) {
            from_kvm(&kr, regs);
            regs->rip = kr.rip;
            regs->rflags = kr.rflags;
            regs->fs_base = sr.fs.base;
            regs->gs_base = sr.gs.base;
            regs->cs = sr.cs.selector;
            regs->ss = sr.ss.selector;
            trap->kind = PVM_HV_TRAP_KICK;
            return 0;
        }
        rip++;
    }
    struct kvm_trap_frame f;
    if (kvm_decode_exit(kc->priv, rip, kr.rsp, &f) < 0) {
        pvm_hv_trap_died(trap, "HLT exit at %#llx (RSP %#llx) is no trampoline entry", (unsigned long long)kr.rip,
             (unsigned long long)kr.rsp);
        return 0;
    }
    from_kvm(&kr, regs);
    regs->fs_base = sr.fs.base;
    regs->gs_base = sr.gs.base;
    if (f.syscall) {
        /* SYSCALL left RIP in RCX and RFLAGS in R11, and CS/SS as they were (no stack switch). */
        regs->rip = kr.rcx;
        regs->rflags = kr.r11;
        trap->kind = PVM_HV_TRAP_SYSCALL;
        return 0;
    }
    regs->rip = f.rip;
    regs->rflags = f.rflags;
    regs->gpr[PVM_RSP] = f.rsp;
    regs->cs = (uint16_t)f.cs;
    regs->ss = (uint16_t)f.ss;
    trap->kind = PVM_HV_TRAP_FAULT;
    trap->vector = f.vector;
    trap->error_code = (uint32_t)f.error_code;
    if (f.vector == PVM_VEC_PF)
        trap->cr2 = sr.cr2;
    return 0;
}

/* ---- auto: a one-time calibration ------------------------------------------------ */

/*
 * The round trip of one CPL-3 event here: a guest SYSCALL through the
 * trampoline to the library and back, the median of 16 (0 if it cannot run).
 */
static double kvm_event_us(void)
{
    static const uint8_t code[] = { 0x0f, 0x05, 0xeb, 0xfc }; /* 1: syscall; jmp 1b */
    const uint64_t gva = 0x400000, ram = 2ull << 20;
    double t[24], us = 0;
    struct kvm_cpu *kc = calloc(1, sizeof(*kc));
    int memfd = memfd_create("pvm-kvm-calibrate", MFD_CLOEXEC);
    if (!kc || memfd < 0 || ftruncate(memfd, (off_t)ram) < 0 || pwrite(memfd, code, sizeof(code), 0) != sizeof(code))
        goto out;
    if (machine_open(kc, memfd, ram) < 0 || kvm_pt_map(&kc->pt, 0, gva, 4096, 0, false, true) < 0)
        goto out;
    struct pvm_hv_vcpu hv = { .pdata = kc };
    struct pvm_hv_regs r = { .rip = gva, .rflags = 0x202, .cs = PVM_USER_CS, .ss = PVM_USER_DS };
    for (unsigned i = 0; i < 24; i++) {
        struct pvm_hv_trap trap;
        double t0 = pvm_hv_now_us();
        if (kvm_run_slot(&hv, 0, &r, &trap) < 0 || trap.kind != PVM_HV_TRAP_SYSCALL)
            goto out;
        t[i] = pvm_hv_now_us() - t0;
        r.rip = gva;
    }
    us = pvm_hv_median(t + 8, 16);
out:
    if (kc) {
        machine_close(kc);
        free(kc);
    }
    if (memfd >= 0)
        close(memfd);
    return us;
}

static pthread_once_t calibrate_once = PTHREAD_ONCE_INIT;
static double calib_kvm_us, calib_native_us;

static void calibrate(void)
{
    calib_kvm_us = kvm_event_us();
    calib_native_us = pvm_hv_native_event_us();
}

/* auto picks this backend only where a guest event costs less here than on native. */
static int kvm_prefer(void)
{
    int rc = kvm_probe();
    if (rc < 0)
        return rc;
    pthread_once(&calibrate_once, calibrate);
    if (calib_kvm_us <= 0)
        return pvm__error(PVM_ENODEV, "kvm: usable, but its calibration run failed: auto prefers native");
    if (calib_kvm_us < calib_native_us)
        return 0;
    return pvm__error(PVM_ENODEV, "kvm: usable (standard x86 KVM), but a guest event costs %.1f us through KVM "
                      "here against about %.1f us on native, so auto prefers native where it is usable",
                      calib_kvm_us, calib_native_us);
}

/*
 * Snapshots: the guest's FPU/SSE/AVX state is KVM's XSAVE area (struct
 * kvm_xsave, 4 KiB, the legacy layout every KVM has), read and written while
 * the vCPU is stopped.  It always exists: a vCPU that never ran has the reset
 * state.
 */
static int kvm_get_fpu(struct pvm_hv_vcpu *hv, void *buf, size_t *len)
{
    if (*len < sizeof(struct kvm_xsave))
        return PVM_ERANGE;
    if (ioctl(kc_of(hv)->vcpu_fd, KVM_GET_XSAVE, buf) < 0)
        return pvm__error(PVM_EIO, "kvm: KVM_GET_XSAVE: %s", strerror(errno));
    *len = sizeof(struct kvm_xsave);
    return 0;
}

static int kvm_check_fpu(struct pvm_hv_vcpu *hv, size_t len)
{
    (void)hv;
    if (len != sizeof(struct kvm_xsave))
        return pvm__error(PVM_ENOTSUP, "its FPU image has %zu bytes, the kvm backend's has %zu (a snapshot of "
                          "another backend)", len, sizeof(struct kvm_xsave));
    return 0;
}

static int kvm_set_fpu(struct pvm_hv_vcpu *hv, const void *buf, size_t len)
{
    int rc = kvm_check_fpu(hv, len);
    if (rc < 0)
        return rc;
    if (ioctl(kc_of(hv)->vcpu_fd, KVM_SET_XSAVE, buf) < 0)
        return pvm__error(PVM_EINVAL, "kvm: KVM_SET_XSAVE refused the image: %s", strerror(errno));
    return 0;
}

static const struct pvm_cpu_provider kvm_cpu = {
    .name = "kvm",
    .window_lo = KVM_GUEST_LO,
    .window_hi = KVM_GUEST_HI,
    /* The native backend's range (§10.30): the same guest sees the same machine on both. */
    .linear_range = PVM_LA_RANGE_MAKE(0x1ff, 0x1ff, 0x1ff, 0x1ff),
    .vcpu_init = kvm_vcpu_init,
    .vcpu_fini = kvm_vcpu_fini,
    .activate = kvm_activate,
    .map = kvm_map,
    .unmap = kvm_unmap,
    .reset = kvm_reset,
    .run = kvm_run_slot,
    .kick = kvm_kick,
    .get_fpu = kvm_get_fpu,
    .set_fpu = kvm_set_fpu,
    .check_fpu = kvm_check_fpu,
};

const struct pvm_backend_ops pvm_kvm_backend = {
    .name = "kvm",
    .id = PVM_BACKEND_KVM,
    .caps = 0,
    .probe = kvm_probe,
    .prefer = kvm_prefer,
    PVM_HV_BACKEND_OPS(&kvm_cpu),
};
