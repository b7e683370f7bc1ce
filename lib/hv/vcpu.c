/*
 * lib/hv/vcpu.c - a vCPU of the hypervisor core: its lifetime, the guest
 * memory accessor the machine model uses, the shadow MMU's glue to the cpu
 * provider, and the asynchronous paths (inject, kick).
 */
#include <errno.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hv.h"

static const struct pvm_cpu_provider *provider_of(const pvm_vm *vm)
{
    return vm->ops->cpu;
}

int pvm_hv_vm_init(pvm_vm *vm)
{
    const struct pvm_cpu_provider *p = provider_of(vm);
    return p->vm_init ? p->vm_init(vm) : 0;
}

void pvm_hv_vm_fini(pvm_vm *vm)
{
    const struct pvm_cpu_provider *p = provider_of(vm);
    if (p->vm_fini)
        p->vm_fini(vm);
}

uint64_t pvm_hv_linear_range(const pvm_vm *vm)
{
    return provider_of(vm)->linear_range;
}

void pvm_hv_lower_half(const pvm_vm *vm, uint64_t *lo, uint64_t *hi)
{
    *lo = provider_of(vm)->window_lo;
    *hi = provider_of(vm)->window_hi;
}

/* ---- guest memory accessors ---------------------------------------------- */

static uint64_t *pte_ptr(void *opaque, uint64_t gpa)
{
    struct pvm_hv_vcpu *hv = opaque;
    if (gpa & 7)
        return NULL;
    /* After a snapshot: a restore that rewrites this page must flush every shadow. */
    if (pvm__dirty_on(hv->v->vm))
        pvm__dirty_pt(hv->v->vm, gpa);
    return pvm__gpa_lookup(hv->v->vm, gpa, 8, NULL);
}

/* The walker is about to set an A/D bit: a write to guest RAM by the library. */
static bool pte_write(void *opaque, uint64_t gpa)
{
    struct pvm_hv_vcpu *hv = opaque;
    return pvm__dirty_mark_gpa(hv->v->vm, gpa, 8);
}

static void *mem_phys(void *opaque, uint64_t gpa, size_t len, bool write)
{
    struct pvm_hv_vcpu *hv = opaque;
    struct pvm_region r;
    void *p = pvm__gpa_lookup(hv->v->vm, gpa, len, &r);
    if (p && write && (r.flags & PVM_MEM_READONLY))
        return NULL;
    if (p && write && !pvm__dirty_mark_gpa(hv->v->vm, gpa, len))
        return NULL;
    return p;
}

void pvm_hv_refresh_env(struct pvm_hv_vcpu *hv)
{
    hv->env.la_range = hv->cpu.msr_linear_range;
    hv->env.nxe = (hv->cpu.efer >> 11) & 1;
}

/* Copy between guest-virtual memory and @buf with supervisor privilege. */
static int virt_access(struct pvm_hv_vcpu *hv, uint64_t gva, void *buf, size_t len, bool write)
{
    pvm_hv_refresh_env(hv);
    uint8_t *b = buf;
    while (len) {
        struct pvm_walk_result res;
        size_t chunk = PVM_PAGE_SIZE - (gva & PVM_PAGE_MASK);
        if (chunk > len)
            chunk = len;
        if (pvm_mmu_walk(&hv->env, hv->cpu.cr3, gva, write ? PVM_PFEC_W : 0, true, &res) != PVM_WALK_OK)
            return -1;
        void *h = mem_phys(hv, res.gpa, chunk, write);
        if (!h)
            return -1;
        if (write)
            memcpy(h, b, chunk);
        else
            memcpy(b, h, chunk);
        gva += chunk;
        b += chunk;
        len -= chunk;
    }
    return 0;
}

int pvm_hv_read_virt(struct pvm_hv_vcpu *hv, uint64_t gva, void *buf, size_t len)
{
    return virt_access(hv, gva, buf, len, false);
}

static int mem_read_virt(void *opaque, uint64_t gva, void *buf, size_t len)
{
    return virt_access(opaque, gva, buf, len, false);
}

static int mem_write_virt(void *opaque, uint64_t gva, const void *buf, size_t len)
{
    return virt_access(opaque, gva, (void *)buf, len, true);
}

static void mem_flush(void *opaque, enum pvm_flush_kind kind, uint64_t gva)
{
    struct pvm_hv_vcpu *hv = opaque;
    switch (kind) {
    case PVM_FLUSH_ALL:
        pvm_shadow_flush_all(hv->shadow);
        break;
    case PVM_FLUSH_CURRENT:
        pvm_shadow_flush_root(hv->shadow, hv->cpu.cr3);
        pvm_shadow_flush_root(hv->shadow, hv->cpu.msr_switch_cr3);
        break;
    case PVM_FLUSH_ONE:
        pvm_shadow_invlpg(hv->shadow, gva);
        break;
    }
}

/* PVM_LOG=trace: one line per delivered event (lib/machine calls this after each delivery). */
static void mem_trace(void *opaque, unsigned vector, uint32_t error_code, uint8_t from_mode, uint64_t from_rip,
                      uint64_t entry)
{
    struct pvm_hv_vcpu *hv = opaque;
    if (!pvm__log_on(PVM_LOG_TRACE))
        return;
    char what[32];
    if (vector == PVM_M_VEC_SYSCALL)
        snprintf(what, sizeof(what), "syscall");
    else
        snprintf(what, sizeof(what), "vector %u error %#x", vector, error_code);
    pvm__log(PVM_LOG_TRACE, "vCPU %u: event %s from %s RIP %#llx -> %#llx", hv->v->id, what,
             from_mode == PVM_MODE_USER ? "umod" : "smod", (unsigned long long)from_rip, (unsigned long long)entry);
}

/* pvm_vcpu_set_guest_debug: a guest exception the application wants to see first. */
static bool mem_catch_exc(void *opaque, unsigned vector, uint32_t mode)
{
    struct pvm_hv_vcpu *hv = opaque;
    return vector < 32 && ((hv->dbg.catch_mask[mode & 1] >> vector) & 1);
}

/* ---- shadow MMU glue: the provider carries the mappings out ---------------- */

static int sh_install(void *opaque, unsigned slot, uint64_t gva, uint64_t len, uint64_t gpa, unsigned prot)
{
    struct pvm_hv_vcpu *hv = opaque;
    pvm_vm *vm = hv->v->vm;
    struct pvm_region r;
    if (!pvm__gpa_lookup(vm, gpa, len, &r) || r.memfd_off == PVM_NO_MEMFD)
        return -1;
    if (gva < hv->p->window_lo || gva + len > hv->p->window_hi || gva + len < gva)
        return -1;
    if (!vm->cow)
        return hv->p->map(hv, slot, gva, len, gpa, &r, prot);
    /* Sharing a snapshot: runs of pages still shared come from its memfd, read-only (cow.c). */
    for (uint64_t done = 0; done < len;) {
        uint64_t page = (r.memfd_off + (gpa + done - r.gpa)) / PVM_PAGE_SIZE, n = PVM_PAGE_SIZE;
        bool shared = pvm__cow_shared(vm, page);
        while (done + n < len && pvm__cow_shared(vm, page + n / PVM_PAGE_SIZE) == shared)
            n += PVM_PAGE_SIZE;
        unsigned p = shared ? (prot & ~PVM_PROT_WRITE) | PVM_HV_PROT_SNAPSHOT : prot;
        int rc = hv->p->map(hv, slot, gva + done, n, gpa + done, &r, p);
        if (rc < 0)
            return rc;
        done += n;
    }
    return 0;
}

/* Drop the mappings of snapshot pages the VM has made its own since (cow.c): before guest code runs. */
void pvm_hv_cow_flush(struct pvm_hv_vcpu *hv)
{
    pvm_vm *vm = hv->v->vm;
    uint64_t pages[64];
    size_t n = pvm__cow_take_flushes(vm, pages, 64);
    if (n == SIZE_MAX) {
        pvm_shadow_flush_all(hv->shadow);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t gpa;
        for (size_t cur = 0; pvm__arena_gpa(vm, pages[i] * PVM_PAGE_SIZE, &cur, &gpa);)
            pvm_shadow_flush_gpa(hv->shadow, gpa, PVM_PAGE_SIZE);
    }
}

static int sh_remove(void *opaque, unsigned slot, uint64_t gva, uint64_t len)
{
    struct pvm_hv_vcpu *hv = opaque;
    return hv->p->unmap(hv, slot, gva, len);
}

static void sh_reset_slot(void *opaque, unsigned slot)
{
    struct pvm_hv_vcpu *hv = opaque;
    hv->p->reset(hv, slot);
}

static uint64_t sh_ram_extent(void *opaque, uint64_t gpa, uint32_t *flags)
{
    struct pvm_hv_vcpu *hv = opaque;
    struct pvm_region r;
    if (!pvm__gpa_lookup(hv->v->vm, gpa, 1, &r) || r.memfd_off == PVM_NO_MEMFD)
        return 0;
    *flags = r.flags;
    return r.size - (gpa - r.gpa);
}

/*
 * Guest-virtual space one address space may have mapped: twice the guest's
 * RAM (a direct map and a process's own view of it) plus PVM_HV_MAP_SLACK.
 * A provider's page tables then stay under about 1/256 of RAM per address
 * space however the guest aliases its RAM (docs/design.md "Mapping approval").
 * A provider with a smaller limit of its own (kmod's max_pages_per_as) lowers it.
 */
static uint64_t sh_map_budget(void *opaque)
{
    struct pvm_hv_vcpu *hv = opaque;
    uint64_t b = 2 * __atomic_load_n(&hv->v->vm->ram_bytes, __ATOMIC_RELAXED) + PVM_HV_MAP_SLACK;
    return hv->map_limit && hv->map_limit < b ? hv->map_limit : b;
}

static uint64_t sh_install_max(void *opaque)
{
    return ((struct pvm_hv_vcpu *)opaque)->install_max;
}

/* Write tracking after a snapshot: the guest gets a page writable only once it is recorded. */
static int sh_track_write(void *opaque, uint64_t gpa, bool write)
{
    struct pvm_hv_vcpu *hv = opaque;
    if (!pvm__dirty_on(hv->v->vm))
        return PVM_SHADOW_TRACK_OFF;
    int rc = pvm__dirty_page(hv->v->vm, gpa, write);
    if (rc < 0)
        return PVM_SHADOW_TRACK_ERROR;
    /* A page just copied from a shared snapshot: no slot may keep the snapshot's (safe here: no cached indices). */
    pvm_hv_cow_flush(hv);
    return rc ? PVM_SHADOW_TRACK_WRITABLE : PVM_SHADOW_TRACK_READONLY;
}

static const struct pvm_shadow_ops shadow_ops = {
    .install = sh_install,
    .remove = sh_remove,
    .reset_slot = sh_reset_slot,
    .ram_extent = sh_ram_extent,
    .map_budget = sh_map_budget,
    .install_max = sh_install_max,
    .track_write = sh_track_write,
};

/* ---- vCPU lifetime ----------------------------------------------------- */

void pvm_hv_vcpu_fini(pvm_vcpu *v)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    if (!hv)
        return;
    pvm_shadow_destroy(hv->shadow);
    hv->p->vcpu_fini(hv);
    pthread_mutex_destroy(&hv->inbox_lock);
    free(hv);
    v->bdata = NULL;
}

int pvm_hv_vcpu_init(pvm_vcpu *v)
{
    struct pvm_hv_vcpu *hv = calloc(1, sizeof(*hv));
    if (!hv)
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory");
    v->bdata = hv;
    hv->v = v;
    hv->p = provider_of(v->vm);
    hv->running_slot = -1;
    hv->halt_slot = -1;
    hv->cpuid_gen = 1;
    pthread_mutex_init(&hv->inbox_lock, NULL);
    pvm_m_reset(&hv->cpu, hv->p->linear_range);
    hv->cpu.vcpu_id = v->id;
    hv->mem = (struct pvm_mem){ .opaque = hv, .phys = mem_phys, .read_virt = mem_read_virt,
                                .write_virt = mem_write_virt, .flush = mem_flush, .trace = mem_trace,
                                .catch_exc = mem_catch_exc };
    hv->env = (struct pvm_walk_env){ .opaque = hv, .pte_ptr = pte_ptr, .pte_write = pte_write,
                                .maxphyaddr_mask = PVM_PTE_ADDR };
    hv->regions_gen = __atomic_load_n(&v->vm->regions_gen, __ATOMIC_ACQUIRE);
    int rc = hv->p->vcpu_init(hv);
    if (rc < 0) {
        pvm_hv_vcpu_fini(v);
        return rc;
    }
    hv->shadow = pvm_shadow_create(&shadow_ops, hv, PVM_SHADOW_MAX_ROOTS, 0);
    if (!hv->shadow) {
        pvm_hv_vcpu_fini(v);
        return pvm__error(PVM_ENOMEM, "pvm_vcpu_create: out of memory for the shadow MMU");
    }
    pvm_shadow_set_window(hv->shadow, hv->p->window_lo, hv->p->window_hi);
    return 0;
}

/* ---- asynchronous events ---------------------------------------------------- */

static void wake_vcpu(struct pvm_hv_vcpu *hv)
{
    __atomic_store_n(&hv->attention, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&hv->wake, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &hv->wake, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    int slot = __atomic_load_n(&hv->running_slot, __ATOMIC_SEQ_CST);
    if (slot >= 0)
        hv->p->kick(hv, (unsigned)slot);
    else if (hv->p->halt_wake && (slot = __atomic_load_n(&hv->halt_slot, __ATOMIC_SEQ_CST)) >= 0 &&
             __atomic_compare_exchange_n(&hv->halt_slot, &slot, -2, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        /* Once per halt, the first event's; -2 holds the vCPU thread off its stubs meanwhile (run.c). */
        hv->p->halt_wake(hv, (unsigned)slot);
        __atomic_store_n(&hv->halt_slot, -1, __ATOMIC_SEQ_CST);
    }
}

/* Unmapped memory must leave every shadow before the guest runs on: interrupt the vCPUs. */
void pvm_hv_region_del(pvm_vm *vm, const struct pvm_region *r)
{
    (void)r;
    pvm_hv_mem_changed(vm);
}

void pvm_hv_mem_changed(pvm_vm *vm)
{
    /* Under vm->lock: a vCPU being created or destroyed is not listed as ready. */
    pthread_mutex_lock(&vm->lock);
    for (uint32_t i = 0; i < vm->opts.max_vcpus; i++)
        if (vm->vcpus[i] && vm->vcpus[i]->ready)
            wake_vcpu(vm->vcpus[i]->bdata);
    pthread_mutex_unlock(&vm->lock);
}

int pvm_hv_kick(pvm_vcpu *v)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    __atomic_store_n(&hv->kick_pending, 1, __ATOMIC_SEQ_CST);
    wake_vcpu(hv);
    return 0;
}

int pvm_hv_inject(pvm_vcpu *v, const struct pvm_event *ev)
{
    struct pvm_hv_vcpu *hv = pvm_hv_of(v);
    int rc = 0;
    pthread_mutex_lock(&hv->inbox_lock);
    /* A provider that delivers interrupts itself while it runs takes them straight away. */
    if (ev->type == PVM_EVENT_INTERRUPT && ev->vector >= 32 && hv->p->post_irq &&
        hv->p->post_irq(hv, ev->vector)) {
        pthread_mutex_unlock(&hv->inbox_lock);
        return 0;
    }
    if (ev->type == PVM_EVENT_EXCEPTION) {
        for (unsigned i = 0; i < hv->nr_inbox; i++)
            if (hv->inbox[i].type == PVM_EVENT_EXCEPTION)
                rc = pvm__error(PVM_EBUSY, "pvm_vcpu_inject: an exception is already queued for vCPU %u",
                                v->id);
    }
    if (rc == 0 && hv->nr_inbox == PVM_HV_INBOX_MAX)
        rc = pvm__error(PVM_EAGAIN, "pvm_vcpu_inject: %d events already queued for vCPU %u", PVM_HV_INBOX_MAX,
                        v->id);
    if (rc == 0)
        hv->inbox[hv->nr_inbox++] = *ev;
    pthread_mutex_unlock(&hv->inbox_lock);
    if (rc == 0)
        wake_vcpu(hv);
    return rc;
}
