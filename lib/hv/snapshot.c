/*
 * lib/hv/snapshot.c - a vCPU of the hypervisor core as a snapshot blob, and
 * back (format PVM_HV_SNAP_FORMAT).
 *
 * The blob lists the machine model's state field by field (the X-lists
 * below), little-endian, then the queued injections and the provider's FPU
 * image.  A blob comes from a file, so loading checks every field that
 * indexes something or that the provider loads into hardware, and changes
 * nothing unless all of it passes.  A new field means a new format name.
 */
#include <stdlib.h>
#include <string.h>

#include "hv.h"

#define SNAP_MAGIC 0x50435648u /* "HVCP" */
#define PVM_HV_FPU_MAX 65536      /* XSAVE images are a few KiB; AMX-sized ones fit */

/* struct pvm_cpu, field by field: (name) for u64, u32, u16, u8 and bool. */
#define CPU_U64(X)                                                                                     \
    X(rip) X(rflags) X(fs_base) X(gs_base) X(cr0) X(cr2) X(cr3) X(cr4) X(efer) X(msr_linear_range)     \
    X(msr_linear_range_default) X(msr_vcpu_struct) X(msr_supervisor_rsp) X(msr_redzone)                \
    X(msr_event_entry) X(msr_retu_rip_plus2) X(msr_rets_rip_plus2) X(msr_switch_cr3) X(msr_star)       \
    X(msr_lstar) X(msr_cstar) X(msr_sfmask) X(msr_kernel_gs_base) X(msr_tsc_aux) X(msr_sysenter_cs)    \
    X(msr_sysenter_esp) X(msr_sysenter_eip) X(exc_cr2) X(pending_rip)
#define CPU_U32(X) X(mode) X(exc_error) X(pending_exit) X(nr_cpuid)
#define CPU_U16(X) X(cs) X(ss) X(ds) X(es) X(fs) X(gs)
#define CPU_U8(X)                                                                                      \
    X(exc_vector) X(pending_io_size) X(pending_mmio_reg) X(pending_mmio_size) X(pending_insn_len)      \
    X(pending_mmio_ext) X(pending_mmio_dst_size)
#define CPU_BOOL(X) X(nmi_masked) X(halted) X(nmi_pending) X(exc_pending) X(exc_has_error) X(pending_mmio_high8)

struct buf {
    uint8_t *p;
    size_t len, pos;
    bool bad;
};

static void put(struct buf *b, const void *v, size_t n)
{
    if (b->p)
        memcpy(b->p + b->pos, v, n);
    b->pos += n;
}

static void get(struct buf *b, void *v, size_t n)
{
    if (b->bad || n > b->len - b->pos) {
        b->bad = true;
        memset(v, 0, n);
        return;
    }
    memcpy(v, b->p + b->pos, n);
    b->pos += n;
}

/* Serialize (b->p NULL: measure) the model state, the inbox and @fpu. */
static void encode(struct buf *b, const struct pvm_cpu *c, const struct pvm_event *inbox, uint32_t nr_inbox,
                   const void *fpu, uint32_t fpu_len)
{
    const uint32_t magic = SNAP_MAGIC;
    put(b, &magic, 4);
    put(b, c->gpr, sizeof(c->gpr));
    put(b, c->tls, sizeof(c->tls));
    put(b, c->irq_pending, sizeof(c->irq_pending));
#define P(f) put(b, &c->f, sizeof(c->f));
    CPU_U64(P) CPU_U32(P) CPU_U16(P) CPU_U8(P)
#undef P
#define PB(f) { uint8_t v = c->f; put(b, &v, 1); }
    CPU_BOOL(PB)
#undef PB
    put(b, &c->exit, sizeof(c->exit)); /* the exit an incomplete one answers (pvm_vcpu_pending_exit) */
    put(b, c->cpuid, (size_t)c->nr_cpuid * sizeof(c->cpuid[0]));
    put(b, &nr_inbox, 4);
    put(b, inbox, (size_t)nr_inbox * sizeof(*inbox));
    put(b, &fpu_len, 4);
    put(b, fpu, fpu_len);
}

static bool event_ok(const struct pvm_event *e)
{
    switch (e->type) {
    case PVM_EVENT_EXCEPTION:
        return e->vector < 32 && e->vector != PVM_VEC_NMI && e->has_error_code <= 1;
    case PVM_EVENT_INTERRUPT:
        return e->vector >= 32 && !e->has_error_code;
    case PVM_EVENT_NMI:
        return !e->has_error_code;
    default:
        return false;
    }
}

static bool size_ok(unsigned v, unsigned max)
{
    return v == 0 || ((v & (v - 1)) == 0 && v <= max);
}

/* Decode and check into *c (a copy of the live state: fields not in the blob keep theirs). */
static int decode(struct buf *b, struct pvm_cpu *c, struct pvm_event *inbox, uint32_t *nr_inbox,
                  const uint8_t **fpu, uint32_t *fpu_len)
{
#define BAD(...) return pvm__error(PVM_EBADSNAP, "snapshot vCPU state: " __VA_ARGS__)
    uint32_t magic;
    get(b, &magic, 4);
    if (b->bad || magic != SNAP_MAGIC)
        BAD("not a %s blob", PVM_HV_SNAP_FORMAT);
    get(b, c->gpr, sizeof(c->gpr));
    get(b, c->tls, sizeof(c->tls));
    get(b, c->irq_pending, sizeof(c->irq_pending));
#define G(f) get(b, &c->f, sizeof(c->f));
    CPU_U64(G) CPU_U32(G) CPU_U16(G) CPU_U8(G)
#undef G
#define GB(f) { uint8_t v; get(b, &v, 1); if (v > 1) BAD(#f " is %u, not a boolean", v); c->f = v; }
    CPU_BOOL(GB)
#undef GB
    if (b->bad)
        BAD("truncated");
    if (c->mode > PVM_MODE_USER)
        BAD("mode %u", c->mode);
    if (c->mode == PVM_MODE_SUPERVISOR ? c->cs != PVM_USER_CS : c->cs != PVM_USER_CS && c->cs != PVM_USER32_CS)
        BAD("CS 0x%x in mode %u", c->cs, c->mode);
    if (c->ss != PVM_USER_DS)
        BAD("SS 0x%x", c->ss);
    if (c->irq_pending[0] & 0xffffffffull)
        BAD("interrupt vectors below 32 pending");
    if (c->exc_vector >= 32)
        BAD("exception vector %u", c->exc_vector);
    if (c->nr_cpuid > PVM_MAX_CPUID_ENTRIES)
        BAD("%u CPUID entries", c->nr_cpuid);
    if (c->pending_exit != PVM_EXIT_NONE && c->pending_exit != PVM_EXIT_HYPERCALL && c->pending_exit != PVM_EXIT_IO &&
        c->pending_exit != PVM_EXIT_MMIO)
        BAD("pending exit %u", c->pending_exit);
    if (!size_ok(c->pending_io_size, 4) || c->pending_mmio_reg >= PVM_NR_GPRS || !size_ok(c->pending_mmio_size, 8) ||
        !size_ok(c->pending_mmio_dst_size, 8) || c->pending_mmio_ext > PVM_M_MMIO_SX || c->pending_insn_len > 15)
        BAD("incomplete exit (sizes %u/%u/%u, register %u, kind %u, length %u)", c->pending_io_size,
            c->pending_mmio_size, c->pending_mmio_dst_size, c->pending_mmio_reg, c->pending_mmio_ext,
            c->pending_insn_len);
    get(b, &c->exit, sizeof(c->exit));
    if (c->exit.reason > PVM_EXIT_INTERNAL_ERROR)
        BAD("exit reason %u", c->exit.reason);
    /* Messages are strings wherever the union puts them (beyond every numeric member). */
    c->exit.u.shutdown.reason[PVM_EXIT_MSG_MAX - 1] = '\0';
    c->exit.u.internal.msg[PVM_EXIT_MSG_MAX - 1] = '\0';
    get(b, c->cpuid, (size_t)c->nr_cpuid * sizeof(c->cpuid[0]));
    get(b, nr_inbox, 4);
    if (b->bad || *nr_inbox > PVM_HV_INBOX_MAX)
        BAD("%u queued events", *nr_inbox);
    get(b, inbox, (size_t)*nr_inbox * sizeof(*inbox));
    for (uint32_t i = 0; i < *nr_inbox; i++)
        if (!event_ok(&inbox[i]))
            BAD("queued event %u (type %u vector %u) is invalid", i, inbox[i].type, inbox[i].vector);
    get(b, fpu_len, 4);
    if (b->bad || *fpu_len > PVM_HV_FPU_MAX || *fpu_len > b->len - b->pos)
        BAD("truncated FPU state");
    *fpu = b->p + b->pos;
    b->pos += *fpu_len;
    if (b->pos != b->len)
        BAD("%zu bytes left over", b->len - b->pos);
    return 0;
#undef BAD
}

int pvm_hv_snap_save_vcpu(pvm_vcpu *v, void **blob, size_t *len)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    if (!hv->p->get_fpu)
        return pvm__error(PVM_ENOTSUP, "pvm_vm_snapshot: the %s provider cannot save the FPU state yet",
                          hv->p->name);
    if (hv->dead)
        return pvm__error(PVM_ESTATE, "pvm_vm_snapshot: vCPU %u has stopped for good (%s)", v->id,
                          hv->fatal.reason == PVM_EXIT_SHUTDOWN ? "shutdown" : "internal error");
    size_t fpu_len = PVM_HV_FPU_MAX;
    uint8_t *fpu = malloc(fpu_len);
    if (!fpu)
        return pvm__error(PVM_ENOMEM, "pvm_vm_snapshot: out of memory");
    int rc = hv->p->get_fpu(hv, fpu, &fpu_len);
    if (rc < 0) {
        free(fpu);
        return pvm__error(rc, "pvm_vm_snapshot: vCPU %u: reading the FPU state failed", v->id);
    }
    pthread_mutex_lock(&hv->inbox_lock);
    struct buf b = { 0 };
    encode(&b, &hv->cpu, hv->inbox, hv->nr_inbox, fpu, (uint32_t)fpu_len);
    b.p = malloc(b.pos);
    b.len = b.pos;
    b.pos = 0;
    if (b.p)
        encode(&b, &hv->cpu, hv->inbox, hv->nr_inbox, fpu, (uint32_t)fpu_len);
    pthread_mutex_unlock(&hv->inbox_lock);
    free(fpu);
    if (!b.p)
        return pvm__error(PVM_ENOMEM, "pvm_vm_snapshot: out of memory");
    *blob = b.p;
    *len = b.len;
    return 0;
}

int pvm_hv_snap_load_vcpu(pvm_vcpu *v, const void *blob, size_t len, bool apply)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    if (!hv->p->set_fpu || !hv->p->check_fpu)
        return pvm__error(PVM_ENOTSUP, "pvm_vm_restore: the %s provider cannot load the FPU state yet",
                          hv->p->name);
    /* On the stack (~8 KiB): a restore allocates nothing. */
    struct pvm_cpu cpu = hv->cpu, *c = &cpu;
    struct pvm_event inbox[PVM_HV_INBOX_MAX];
    uint32_t nr_inbox = 0, fpu_len = 0;
    const uint8_t *fpu = NULL;
    struct buf b = { .p = (uint8_t *)blob, .len = len };
    int rc = decode(&b, c, inbox, &nr_inbox, &fpu, &fpu_len);
    if (rc == 0 && fpu_len && (rc = hv->p->check_fpu(hv, fpu_len)) < 0)
        rc = pvm__error(PVM_ENOTSUP, "snapshot vCPU state: %s", pvm_last_error());
    if (rc == 0 && apply) {
        c->vcpu_id = v->id;
        hv->cpu = *c;
        if (fpu_len)
            hv->p->set_fpu(hv, fpu, fpu_len);
        pthread_mutex_lock(&hv->inbox_lock);
        memcpy(hv->inbox, inbox, nr_inbox * sizeof(inbox[0]));
        hv->nr_inbox = nr_inbox;
        __atomic_store_n(&hv->attention, nr_inbox != 0, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&hv->inbox_lock);
        __atomic_store_n(&hv->kick_pending, 0, __ATOMIC_SEQ_CST);
        hv->pf.pending = false;
        hv->dead = false; /* a vCPU that stopped for good after the snapshot runs again */
        hv->cpuid_gen++; /* the providers' copies of the table are stale */
    }
    return rc;
}

void pvm_hv_snap_flush(pvm_vm *vm, bool full)
{
    /* The caller holds vm->lock and no vCPU runs: every shadow may be touched from here. */
    for (uint32_t i = 0; i < vm->opts.max_vcpus; i++) {
        pvm_vcpu *v = vm->vcpus[i];
        if (!v || !v->ready)
            continue;
        struct pvm_hv_vcpu *hv = pvm_hv_of(v);
        if (full)
            pvm_shadow_flush_all(hv->shadow);
        else
            pvm_shadow_drop_writable(hv->shadow);
    }
}

int pvm_hv_pending_exit(pvm_vcpu *v, struct pvm_exit *e)
{
    const struct pvm_cpu *c = &pvm_hv_of(v)->cpu;
    memset(e, 0, sizeof(*e));
    if (c->pending_exit == PVM_EXIT_NONE || c->exit.reason != c->pending_exit)
        return 0;
    *e = c->exit;
    return 0;
}

int pvm_hv_warm_vcpu(pvm_vcpu *v)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    char err[160];
    /* The slot the first run will pick for this (CR3, mode): it finds the provider ready there. */
    unsigned slot = pvm_shadow_activate(hv->shadow, hv->cpu.cr3, hv->cpu.mode == PVM_MODE_USER);
    int rc = hv->p->activate(hv, slot, err, sizeof(err));
    if (rc < 0)
        return pvm__error(rc, "pvm_snapshot_prestart: %s: %s", hv->p->name, err);
    /* The first instruction's page, as its fetch would map it: the first run's prefetch, done ahead. */
    pvm__mem_enter(v->vm);
    pvm_hv_fetch_prefetch(hv);
    pvm__mem_leave(v->vm);
    return 0;
}
