/*
 * lib/backends/kvm/gena_abi.c - what the Gen A kvm-pvm mode passes through
 * each ioctl, as pure functions (gena.h).  Section numbers (§) refer to
 * shared/docs/pvm-abi.md; "RFC" is the kvm-pvm code of the RFC series
 * (arch/x86/kvm/pvm/pvm.c), which wins where it and the spec differ.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "gena.h"

/*
 * The machine model's reset state (lib/machine/model.h; the tests check
 * both agree), so a vCPU starts the same on every backend.
 */
#define GENA_CR0 0x80050033ull /* PE MP ET NE WP AM PG */
#define GENA_CR4 0x10620ull    /* PAE OSFXSR OSXMMEXCPT FSGSBASE */
#define GENA_EFER 0xd01ull     /* SCE LME LMA NXE */
#define GENA_KERNEL_CS 0x10u   /* the conventional kernel CS; SS is +8 */
#define GENA_STAR (((uint64_t)PVM_USER32_CS << 48) | ((uint64_t)GENA_KERNEL_CS << 32))

#define EFER_SCE (1ull << 0)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)
#define EFER_NXE (1ull << 11)

/* ---- CPUID ------------------------------------------------------------------------ */

static bool user_names(const struct pvm_cpuid_entry *u, size_t n, uint32_t function)
{
    for (size_t i = 0; i < n; i++)
        if (u[i].function == function)
            return true;
    return false;
}

static bool table_has(const struct kvm_cpuid_entry2 *t, size_t n, uint32_t function)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].function == function)
            return true;
    return false;
}

int kvm_gena_cpuid(const struct kvm_cpuid2 *supported, const struct pvm_cpuid_entry *user, size_t n,
                   struct kvm_cpuid_entry2 *out, size_t max)
{
    size_t k = 0;
    uint32_t nsup = supported ? supported->nent : 0;
    if (!user)
        n = 0;
    for (uint32_t i = 0; i < nsup; i++) {
        const struct kvm_cpuid_entry2 *e = &supported->entries[i];
        if (user_names(user, n, e->function))
            continue;
        if (k == max)
            return -1;
        out[k] = *e;
        /* §9.2: a guest detects PVM only if leaf 0x40000000 admits leaf 0x40000002 (§8.1). */
        if (e->function == PVM_KVM_CPUID_SIGNATURE && out[k].eax < PVM_KVM_CPUID_VENDOR_FEATURES)
            out[k].eax = PVM_KVM_CPUID_VENDOR_FEATURES;
        k++;
    }
    for (size_t i = 0; i < n; i++) {
        if (k == max)
            return -1;
        out[k++] = (struct kvm_cpuid_entry2){
            .function = user[i].function,
            .index = user[i].index,
            .flags = (user[i].flags & PVM_CPUID_FLAG_SIGNIFICANT_INDEX) ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0,
            .eax = user[i].eax, .ebx = user[i].ebx, .ecx = user[i].ecx, .edx = user[i].edx,
        };
    }
    /* The PVM leaves of §8.1 when neither table has them (the model's defaults, cpuid.c). */
    static const struct kvm_cpuid_entry2 pvm_leaves[] = {
        { .function = PVM_KVM_CPUID_SIGNATURE, .eax = PVM_KVM_CPUID_VENDOR_FEATURES, .ebx = PVM_KVM_SIGNATURE_EBX,
          .ecx = PVM_KVM_SIGNATURE_ECX, .edx = PVM_KVM_SIGNATURE_EDX },
        /* §10.31 decision: EBX 0x4d5650 (code), not the spec's 0x6d7670; EAX 0, no feature bits. */
        { .function = PVM_KVM_CPUID_VENDOR_FEATURES, .ebx = PVM_CPUID_SIGNATURE },
    };
    for (size_t i = 0; i < sizeof(pvm_leaves) / sizeof(pvm_leaves[0]); i++) {
        if (table_has(out, k, pvm_leaves[i].function))
            continue;
        if (k == max)
            return -1;
        out[k++] = pvm_leaves[i];
    }
    return (int)k;
}

/* ---- boot state ------------------------------------------------------------------ */

size_t kvm_gena_boot_msrs(struct kvm_msr_entry *out)
{
    static const struct kvm_msr_entry boot[KVM_GENA_BOOT_MSRS] = {
        /*
         * §1.2: the emulated smod CS/SS come from STAR.  kvm-pvm also derives
         * STAR from CS when it converts to PVM mode (§9.4); writing it makes
         * the value independent of which RFC revision did that.
         */
        { .index = PVM_MSR_STAR, .data = GENA_STAR },
        { .index = MSR_PVM_VCPU_STRUCT, .data = 0 },
        { .index = MSR_PVM_SUPERVISOR_RSP, .data = 0 },
        /* §10.11: not reset by kvm-pvm on INIT; pinned here. */
        { .index = MSR_PVM_SUPERVISOR_REDZONE, .data = 0 },
        { .index = MSR_PVM_EVENT_ENTRY, .data = 0 },
        /* §2: stored as value + 2, so this stores 0 and reads back 0xff..fe, as after reset. */
        { .index = MSR_PVM_RETU_RIP, .data = PVM_RET_RIP_RESET_READBACK },
        { .index = MSR_PVM_RETS_RIP, .data = PVM_RET_RIP_RESET_READBACK },
        { .index = MSR_PVM_SWITCH_CR3, .data = 0 },
    };
    memcpy(out, boot, sizeof(boot));
    return KVM_GENA_BOOT_MSRS;
}

static struct kvm_segment code_seg(uint16_t sel, uint8_t dpl, bool l)
{
    return (struct kvm_segment){ .base = 0, .limit = 0xffffffff, .selector = sel, .type = 11, .present = 1,
                                 .dpl = dpl, .db = !l, .s = 1, .l = l, .g = 1 };
}

static struct kvm_segment data_seg(uint16_t sel, uint8_t dpl, uint64_t base)
{
    return (struct kvm_segment){ .base = base, .limit = 0xffffffff, .selector = sel, .type = 3, .present = 1,
                                 .dpl = dpl, .db = 1, .s = 1, .l = 0, .g = 1 };
}

void kvm_gena_boot_sregs(const struct kvm_sregs *cur, struct kvm_sregs *out)
{
    *out = *cur;
    /*
     * §9.4 way (b): EFER.LMA and CS.L = 1 make kvm-pvm convert to PVM mode
     * inside this KVM_SET_SREGS (its set_segment(CS) runs after EFER and
     * CR0), so no guest instruction is ever emulated in non-PVM mode.
     */
    out->cr0 = GENA_CR0;
    out->cr2 = 0;
    out->cr3 = 0;
    out->cr4 = GENA_CR4;
    out->efer = GENA_EFER;
    out->cs = code_seg(GENA_KERNEL_CS, 0, true); /* DPL 0: smod (§9.4) */
    out->ss = data_seg(GENA_KERNEL_CS + 8, 0, 0);
    out->ds = out->es = out->fs = out->gs = data_seg(0, 0, 0);
    memset(out->interrupt_bitmap, 0, sizeof(out->interrupt_bitmap));
}

void kvm_gena_boot_regs(struct kvm_regs *out)
{
    memset(out, 0, sizeof(*out));
    out->rflags = PVM_ENTRY_RFLAGS; /* IF 0: smod IF is virtual (§1.2) and off */
}

/* ---- state accessors ------------------------------------------------------------ */

void kvm_gena_regs_to_kvm(const struct pvm_regs *r, struct kvm_regs *k)
{
    /* RFLAGS as given: kvm-pvm mirrors an smod IF change into the PVCS itself (§5.7). */
    *k = (struct kvm_regs){ .rax = r->rax, .rbx = r->rbx, .rcx = r->rcx, .rdx = r->rdx, .rsi = r->rsi,
                            .rdi = r->rdi, .rsp = r->rsp, .rbp = r->rbp, .r8 = r->r8, .r9 = r->r9,
                            .r10 = r->r10, .r11 = r->r11, .r12 = r->r12, .r13 = r->r13, .r14 = r->r14,
                            .r15 = r->r15, .rip = r->rip, .rflags = r->rflags };
}

void kvm_gena_regs_from_kvm(const struct kvm_regs *k, struct pvm_regs *r)
{
    *r = (struct pvm_regs){ .rax = k->rax, .rbx = k->rbx, .rcx = k->rcx, .rdx = k->rdx, .rsi = k->rsi,
                            .rdi = k->rdi, .rsp = k->rsp, .rbp = k->rbp, .r8 = k->r8, .r9 = k->r9,
                            .r10 = k->r10, .r11 = k->r11, .r12 = k->r12, .r13 = k->r13, .r14 = k->r14,
                            .r15 = k->r15, .rip = k->rip, .rflags = k->rflags };
}

void kvm_gena_sregs_from_kvm(const struct kvm_sregs *k, struct pvm_sregs *s)
{
    memset(s, 0, sizeof(*s));
    s->mode = k->cs.dpl == 3 ? PVM_MODE_USER : PVM_MODE_SUPERVISOR;
    if (s->mode == PVM_MODE_SUPERVISOR) {
        s->cs = k->cs.selector; /* STAR[47:32] & ~3 and + 8, as kvm-pvm computes them (§1.2) */
        s->ss = k->ss.selector;
    } else {
        /* §1.2 decision: real selectors, not the RFC's GDT indices. */
        s->cs = k->cs.l ? PVM_USER_CS : PVM_USER32_CS;
        s->ss = (k->ss.selector & 3) == 3 ? k->ss.selector : (uint16_t)((k->ss.selector << 3) | 3);
    }
    s->ds = k->ds.selector;
    s->es = k->es.selector;
    s->fs = k->fs.selector;
    s->gs = k->gs.selector;
    s->fs_base = k->fs.base;
    s->gs_base = k->gs.base;
    s->cr0 = k->cr0;
    s->cr2 = k->cr2;
    s->cr3 = k->cr3;
    s->cr4 = k->cr4;
    s->efer = k->efer;
}

int kvm_gena_sregs_to_kvm(const struct pvm_sregs *s, const struct kvm_sregs *cur, uint64_t star, bool has_run,
                          struct kvm_sregs *out, const char **why)
{
    bool cur_user = cur->cs.dpl == 3;
    *why = NULL;
    if (s->mode != PVM_MODE_SUPERVISOR && s->mode != PVM_MODE_USER) {
        *why = "the mode is neither smod nor umod";
        return PVM_EINVAL;
    }
    bool user = s->mode == PVM_MODE_USER;
    if (user && s->cs != PVM_USER_CS && s->cs != PVM_USER32_CS) {
        *why = "umod CS must be 0x33 or 0x23";
        return PVM_EINVAL;
    }
    if (user != cur_user && has_run) {
        /* RFC set_segment: after the first run a CS.DPL that differs from the mode is a triple fault. */
        *why = "kvm-pvm changes the mode through KVM_SET_SREGS only before the first run (§9.4); "
               "after it a CS.DPL change is a triple fault (§5.10)";
        return PVM_ESTATE;
    }
    /* The RFC's set_segment never loads the hardware CS (only ERETU does): umod keeps the current one. */
    uint16_t hw_cs = cur_user && !cur->cs.l ? PVM_USER32_CS : PVM_USER_CS;
    if (user && s->cs != hw_cs) {
        *why = "kvm-pvm takes the umod CS only from ERETU (its KVM_SET_SREGS keeps the hardware CS: "
               "0x33 when entering umod)";
        return PVM_ENOTSUP;
    }
    *out = *cur;
    if (user) {
        out->cs = code_seg(s->cs, 3, s->cs == PVM_USER_CS);
        out->ss = data_seg(PVM_USER_DS, 3, 0);
    } else {
        /* §1.2: the smod CS/SS are STAR's; the pvm_sregs values are ignored, as on every backend. */
        uint16_t kcs = (uint16_t)((star >> 32) & 0xfffc);
        out->cs = code_seg(kcs, 0, true);
        out->ss = data_seg((uint16_t)(kcs + 8), 0, 0);
    }
    out->ds = data_seg(s->ds, s->ds & 3, 0);
    out->es = data_seg(s->es, s->es & 3, 0);
    out->fs = data_seg(s->fs, s->fs & 3, s->fs_base);
    out->gs = data_seg(s->gs, s->gs & 3, s->gs_base);
    out->cr0 = s->cr0;
    out->cr2 = s->cr2;
    out->cr3 = s->cr3;
    out->cr4 = s->cr4;
    out->efer = s->efer;
    /* A set bit would make KVM_SET_SREGS queue that interrupt, past the gating rule. */
    memset(out->interrupt_bitmap, 0, sizeof(out->interrupt_bitmap));
    return 0;
}

static bool canonical(uint64_t v, bool la57)
{
    unsigned shift = la57 ? 64 - 57 : 64 - 48;
    return (uint64_t)((int64_t)(v << shift) >> shift) == v;
}

bool kvm_gena_msr_known(uint32_t index)
{
    if (index - PVM_VIRTUAL_MSR_BASE < 8)
        return true; /* the eight Gen A PVM MSRs 0x4b564df0-0x4b564df7 (§2) */
    switch (index) {
    case PVM_MSR_EFER:
    case PVM_MSR_STAR:
    case PVM_MSR_LSTAR:
    case PVM_MSR_CSTAR:
    case PVM_MSR_SYSCALL_MASK:
    case PVM_MSR_FS_BASE:
    case PVM_MSR_GS_BASE:
    case PVM_MSR_KERNEL_GS_BASE:
    case PVM_MSR_TSC_AUX:
    case PVM_MSR_IA32_SYSENTER_CS:
    case PVM_MSR_IA32_SYSENTER_ESP:
    case PVM_MSR_IA32_SYSENTER_EIP:
    case PVM_MSR_IA32_DEBUGCTL:
    case PVM_MSR_IA32_TSC:
        return true;
    default:
        return false;
    }
}

int kvm_gena_msr_check(uint32_t index, uint64_t value, bool la57)
{
    if (!kvm_gena_msr_known(index))
        return PVM_ENOENT;
    if (index == PVM_MSR_EFER) {
        /* The model's rule (msr.c): no non-PVM mode, so SCE/LME/LMA stay; only NXE may change. */
        const uint64_t must = EFER_SCE | EFER_LME | EFER_LMA;
        return (value & must) == must && !(value & ~(must | EFER_NXE)) ? 0 : PVM_EINVAL;
    }
    if (index == MSR_PVM_EVENT_ENTRY) {
        /* §10.12: the RFC requests a triple fault for this even on a host write; refuse it first. */
        bool ok = canonical(value, la57) && canonical(value + PVM_ENTRY_SUPERVISOR_EXCEPTION, la57) &&
                  canonical(value + PVM_ENTRY_SUPERVISOR_INTERRUPT, la57);
        return ok ? 0 : PVM_EINVAL;
    }
    return 0; /* the kernel checks the rest (§2) */
}

/* ---- memory ------------------------------------------------------------------------ */

int kvm_gena_memslot(const struct pvm_region *r, uint32_t slot, bool ro_ok, struct kvm_userspace_memory_region *out,
                     const char **why)
{
    *why = NULL;
    if (r->flags & PVM_MEM_NOEXEC) {
        *why = "a KVM memslot cannot forbid instruction fetches (there is no KVM_MEM_NOEXEC)";
        return PVM_ENOTSUP;
    }
    if ((r->flags & PVM_MEM_READONLY) && !ro_ok) {
        *why = "this KVM lacks KVM_CAP_READONLY_MEM";
        return PVM_ENOTSUP;
    }
    *out = (struct kvm_userspace_memory_region){
        .slot = slot,
        .flags = (r->flags & PVM_MEM_READONLY) ? KVM_MEM_READONLY : 0,
        .guest_phys_addr = r->gpa,
        .memory_size = r->size,
        .userspace_addr = (uint64_t)(uintptr_t)r->host,
    };
    return 0;
}

int kvm_gena_translation(const struct kvm_translation *t, uint64_t *gpa)
{
    if (!t->valid)
        return -1;
    *gpa = t->physical_address;
    return 0;
}

/* ---- exits ------------------------------------------------------------------------- */

static enum kvm_gena_next internal(struct pvm_exit *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static enum kvm_gena_next internal(struct pvm_exit *out, const char *fmt, ...)
{
    va_list ap;
    memset(out, 0, sizeof(*out));
    out->reason = PVM_EXIT_INTERNAL_ERROR;
    out->u.internal.code = PVM_EINTERNAL;
    va_start(ap, fmt);
    vsnprintf(out->u.internal.msg, sizeof(out->u.internal.msg), fmt, ap);
    va_end(ap);
    return KVM_GENA_TO_APP;
}

static const char *suberror_name(uint32_t s)
{
    switch (s) {
    case KVM_INTERNAL_ERROR_EMULATION: return "emulation failed";
    case KVM_INTERNAL_ERROR_SIMUL_EX: return "exception while delivering an exception";
    case KVM_INTERNAL_ERROR_DELIVERY_EV: return "exit while delivering an event";
    case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: return "unexpected exit reason";
    default: return "unknown suberror";
    }
}

enum kvm_gena_next kvm_gena_exit(const struct kvm_run *run, size_t run_size, struct pvm_exit *out,
                                 struct kvm_gena_pending *pend)
{
    memset(out, 0, sizeof(*out));
    *pend = (struct kvm_gena_pending){ .kind = KVM_GENA_PEND_NONE };
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
        uint8_t size = run->io.size;
        uint64_t off = run->io.data_offset;
        if (size != 1 && size != 2 && size != 4)
            return internal(out, "KVM_EXIT_IO on port 0x%x with size %u", run->io.port, size);
        if (run->io.count != 1)
            return internal(out, "string I/O (rep ins/outs) on port 0x%x, %u elements: not supported",
                            run->io.port, run->io.count);
        if (off > run_size || size > run_size - off)
            return internal(out, "KVM_EXIT_IO data offset 0x%llx lies outside the %zu-byte kvm_run mapping",
                            (unsigned long long)off, run_size);
        out->reason = PVM_EXIT_IO;
        out->u.io.port = run->io.port;
        out->u.io.size = size;
        out->u.io.is_write = run->io.direction == KVM_EXIT_IO_OUT;
        if (out->u.io.is_write)
            memcpy(&out->u.io.data, (const uint8_t *)run + off, size);
        else
            *pend = (struct kvm_gena_pending){ .kind = KVM_GENA_PEND_IO_IN, .size = size, .offset = (uint32_t)off };
        return KVM_GENA_TO_APP;
    }
    case KVM_EXIT_MMIO: {
        uint32_t len = run->mmio.len;
        if (len != 1 && len != 2 && len != 4 && len != 8)
            return internal(out, "KVM_EXIT_MMIO at gpa 0x%llx with length %u",
                            (unsigned long long)run->mmio.phys_addr, len);
        out->reason = PVM_EXIT_MMIO;
        out->u.mmio.gpa = run->mmio.phys_addr;
        out->u.mmio.size = (uint8_t)len;
        out->u.mmio.is_write = run->mmio.is_write != 0;
        if (out->u.mmio.is_write)
            memcpy(&out->u.mmio.data, run->mmio.data, len);
        else
            *pend = (struct kvm_gena_pending){ .kind = KVM_GENA_PEND_MMIO_READ, .size = (uint8_t)len };
        return KVM_GENA_TO_APP;
    }
    case KVM_EXIT_HLT:
        out->reason = PVM_EXIT_HALT;
        return KVM_GENA_HALTED;
    case KVM_EXIT_IRQ_WINDOW_OPEN:
        return KVM_GENA_AGAIN;
    case KVM_EXIT_INTR:
        out->reason = PVM_EXIT_KICKED;
        return KVM_GENA_INTERRUPTED;
    case KVM_EXIT_SHUTDOWN:
        out->reason = PVM_EXIT_SHUTDOWN;
        snprintf(out->u.shutdown.reason, sizeof(out->u.shutdown.reason),
                 "triple fault (KVM_EXIT_SHUTDOWN from kvm-pvm, pvm-abi.md §5.10)");
        return KVM_GENA_TO_APP;
    case KVM_EXIT_INTERNAL_ERROR: {
        uint32_t sub = run->internal.suberror, nd = run->internal.ndata;
        const uint32_t max = sizeof(run->internal.data) / sizeof(run->internal.data[0]);
        if (nd > max)
            return internal(out, "KVM internal error, suberror %u (%s), ndata %u out of range", sub,
                            suberror_name(sub), nd);
        if (nd >= 2)
            return internal(out, "KVM internal error, suberror %u (%s), data 0x%llx 0x%llx", sub, suberror_name(sub),
                            (unsigned long long)run->internal.data[0], (unsigned long long)run->internal.data[1]);
        if (nd == 1)
            return internal(out, "KVM internal error, suberror %u (%s), data 0x%llx", sub, suberror_name(sub),
                            (unsigned long long)run->internal.data[0]);
        return internal(out, "KVM internal error, suberror %u (%s)", sub, suberror_name(sub));
    }
    case KVM_EXIT_FAIL_ENTRY:
        return internal(out, "KVM entry failed, hardware reason 0x%llx",
                        (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
    case KVM_EXIT_EXCEPTION:
        return internal(out, "guest exception vector %u (error code 0x%x) that kvm-pvm does not handle (§5.12)",
                        run->ex.exception, run->ex.error_code);
    case KVM_EXIT_HYPERCALL:
        /*
         * Decision: no hypercall exit is enabled.  §7: kvm-pvm answers every
         * number in the kernel (host calls get -KVM_ENOSYS), and completing a
         * KVM_EXIT_HYPERCALL would skip the instruction after the SYSCALL
         * (§10.10).
         */
        return internal(out, "KVM_EXIT_HYPERCALL nr 0x%llx, which the library never enables (§10.10)",
                        (unsigned long long)run->hypercall.nr);
    default:
        return internal(out, "unexpected KVM exit reason %u", run->exit_reason);
    }
}

void kvm_gena_complete(struct kvm_run *run, size_t run_size, const struct kvm_gena_pending *p,
                       const struct pvm_exit *app)
{
    switch (p->kind) {
    case KVM_GENA_PEND_IO_IN:
        if (p->size <= sizeof(app->u.io.data) && p->offset <= run_size && p->size <= run_size - p->offset)
            memcpy((uint8_t *)run + p->offset, &app->u.io.data, p->size);
        break;
    case KVM_GENA_PEND_MMIO_READ:
        if (p->size <= sizeof(run->mmio.data))
            memcpy(run->mmio.data, &app->u.mmio.data, p->size);
        break;
    default:
        break;
    }
}

/* ---- events -------------------------------------------------------------------------- */

int kvm_gena_highest_irq(const uint64_t irq[4])
{
    for (int w = 3; w >= 0; w--) {
        uint64_t bits = w == 0 ? irq[0] & ~0xffffffffull : irq[w]; /* vectors < 32 are exceptions */
        if (bits)
            return w * 64 + 63 - __builtin_clzll(bits);
    }
    return -1;
}

void kvm_gena_plan(const uint64_t irq[4], bool nmi, bool exc, bool ready, bool if_flag, struct kvm_gena_plan *out)
{
    *out = (struct kvm_gena_plan){ .set_exception = exc, .nmi = nmi, .irq = -1 };
    int v = kvm_gena_highest_irq(irq);
    if (v < 0)
        return;
    if (!exc && !nmi && ready && if_flag) {
        uint64_t rest[4] = { irq[0], irq[1], irq[2], irq[3] };
        rest[v / 64] &= ~(1ull << (v % 64));
        out->irq = v;
        out->request_window = kvm_gena_highest_irq(rest) >= 0;
    } else {
        out->request_window = true;
    }
}

int kvm_gena_exception_events(const struct kvm_vcpu_events *cur, const struct pvm_event *ev,
                              struct kvm_vcpu_events *out)
{
    if (cur->exception.injected || cur->exception.pending)
        return -1;
    *out = *cur;
    out->exception.injected = 0;
    out->exception.pending = 1;
    out->exception.nr = ev->vector;
    out->exception.has_error_code = ev->has_error_code ? 1 : 0;
    out->exception.error_code = ev->has_error_code ? ev->error_code : 0;
    /* §5.1: the payload (CR2 for #PF) is applied before kvm-pvm delivers the event. */
    out->exception_has_payload = ev->vector == PVM_VEC_PF;
    out->exception_payload = ev->vector == PVM_VEC_PF ? ev->cr2 : 0;
    out->flags |= KVM_VCPUEVENT_VALID_PAYLOAD;
    return 0;
}

unsigned kvm_gena_take_back(struct kvm_vcpu_events *ev, bool take_exc, struct pvm_event *exc, int *irq)
{
    unsigned took = 0;
    uint8_t nr = ev->exception.nr;
    /*
     * Only what the library can queue again exactly: vectors 0..31 but NMI,
     * and a payload only for #PF (a #DB's DR6 payload stays in KVM).
     */
    if (take_exc && (ev->exception.injected || ev->exception.pending) && nr < 32 && nr != PVM_VEC_NMI &&
        (!ev->exception_has_payload || nr == PVM_VEC_PF)) {
        *exc = (struct pvm_event){ .type = PVM_EVENT_EXCEPTION, .vector = nr,
                                   .has_error_code = ev->exception.has_error_code ? 1 : 0,
                                   .error_code = ev->exception.has_error_code ? ev->exception.error_code : 0,
                                   .cr2 = ev->exception_has_payload ? ev->exception_payload : 0 };
        memset(&ev->exception, 0, sizeof(ev->exception));
        ev->exception_has_payload = 0;
        ev->exception_payload = 0;
        took |= KVM_GENA_TOOK_EXC;
    }
    if (ev->interrupt.injected && !ev->interrupt.soft && ev->interrupt.nr >= 32) {
        *irq = ev->interrupt.nr;
        ev->interrupt.injected = 0;
        ev->interrupt.nr = 0;
        took |= KVM_GENA_TOOK_IRQ;
    }
    return took;
}

enum kvm_gena_halt kvm_gena_halt(bool halted, bool if_flag, bool irqs, bool nmi, bool exc)
{
    if (!halted || exc || nmi || (irqs && if_flag))
        return KVM_GENA_RUN;
    return if_flag ? KVM_GENA_WAIT : KVM_GENA_EXIT_HALT;
}
