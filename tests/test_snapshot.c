/*
 * tests/test_snapshot.c - snapshots end to end on the e2e backend: a
 * restored VM continues the same run (a nonce kept only in guest RAM, a
 * counter in RAM and one in an SSE register), pending interrupts survive,
 * restores undo guest and host writes page by page, VMs from one snapshot
 * are isolated, bad files are refused and change nothing, and 10,000
 * restores leak nothing.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "core/snapshot.h"
#include "hv/hv.h"
#include "guestvm.h"
#include "testutil.h"

#define HC(n) GVM_HC(n)
#define SCRIB 0x200000ull  /* 32 scribble pages */
#define SCRIB_PAGES 32

/*
 * nonce = TSC, kept only at DATA; then forever: ++DATA[8] and ++xmm0,
 * host call 1 (RBX = nonce from RAM, R10 = RAM counter, RDX = xmm0 counter).
 */
GVM_CODE_BLOCK(g_count,
    "rdtsc\n shl $32, %rdx\n or %rdx, %rax\n mov %rax, 0x106000\n pxor %xmm0, %xmm0\n"
    "1: incq 0x106008\n movq %xmm0, %rdx\n inc %rdx\n movq %rdx, %xmm0\n"
    "mov 0x106000, %rbx\n mov 0x106008, %r10\n" HC(1) "jmp 1b\n");

/* Host call 1; then fill the scribble pages with 0xaa; host call 2; again. */
GVM_CODE_BLOCK(g_scribble,
    "1:" HC(1) "mov $0x200000, %rdi\n mov $0x20000, %rcx\n mov $0xaa, %al\n rep stosb\n" HC(2) "jmp 1b\n");

/* Host call 1; store its answer at DATA+16; host call 2; host call 3 with RBX = DATA+16. */
GVM_CODE_BLOCK(g_store,
    HC(1) "mov %rax, 0x106010\n" HC(2) "mov 0x106010, %rbx\n" HC(3) "ud2\n");

/* Interrupts: IF stays 0 until after host call 0x21, then IRQ_WIN. */
GVM_CODE_BLOCK(g_irq,
    HC(0x21) "orq $0x200, 0x101000\n mov $0x17088201, %eax\n syscall\n ud2\n");

static char tmpdir[64];

static void tmp_path(char *out, size_t n, const char *name)
{
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/pvm-snap-test.XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    }
    snprintf(out, n, "%s/%s", tmpdir, name);
}

/* Run @cpu answering the previous exit *e with @ret; expect host call @nr. */
static void run_hc(pvm_vcpu *cpu, struct pvm_exit *e, uint64_t ret, uint32_t nr)
{
    if (e->reason == PVM_EXIT_HYPERCALL)
        e->u.hypercall.ret = ret;
    int rc = pvm_vcpu_run(cpu, e);
    ck_assert_msg(rc == 0, "run: %s", pvm_last_error());
    if (e->reason == PVM_EXIT_INTERNAL_ERROR)
        ck_abort_msg("internal error: %s", e->u.internal.msg);
    gvm_expect_hc(e, nr);
}

/* One counting step: expect nonce, RAM counter and SSE counter. */
static void expect_count(pvm_vcpu *cpu, struct pvm_exit *e, uint64_t nonce, uint64_t n)
{
    run_hc(cpu, e, 0, 1);
    ck_assert_uint_eq(e->u.hypercall.args[0], nonce);
    ck_assert_uint_eq(e->u.hypercall.args[1], n);
    ck_assert_uint_eq(e->u.hypercall.args[2], n); /* RDX: args are RBX, R10, RDX, ... */
}

/* Boot the counting guest and run it to its first report: its nonce (kept only in guest RAM). */
static uint64_t boot_counter(struct gvm *g, struct pvm_exit *e)
{
    gvm_boot(g, g_count_start, g_count_end);
    run_hc(g->cpu, e, 0, 1);
    return e->u.hypercall.args[0];
}

/*
 * The counter guest at its first count, snapshotted there: returns its nonce.
 * @exact_fds: the caller counts fds exactly, so no stub pool may refill
 * meanwhile (set before this process's first stub).
 */
static uint64_t counter_snapshot(struct gvm *g, struct pvm_exit *e, pvm_snapshot **snap, bool exact_fds)
{
    if (exact_fds)
        setenv("PVM_NATIVE_POOL", "0", 1);
    const uint64_t nonce = boot_counter(g, e);
    ck_assert_int_eq(pvm_vm_snapshot(g->vm, snap), 0);
    return nonce;
}

START_TEST(restore_continues_same_run)
{
    struct gvm g;
    struct pvm_exit e = { 0 };
    const uint64_t nonce = boot_counter(&g, &e);
    ck_assert_uint_ne(nonce, 0);
    expect_count(g.cpu, &e, nonce, 2);
    expect_count(g.cpu, &e, nonce, 3);

    pvm_snapshot *snap;
    ck_assert_msg(pvm_vm_snapshot(g.vm, &snap) == 0, "%s", pvm_last_error());
    struct pvm_exit at = e; /* the exit the snapshot stopped at, still to be answered */
    expect_count(g.cpu, &e, nonce, 4);
    expect_count(g.cpu, &e, nonce, 5);

    /* Restore twice into the same VM: each time the run goes on from 3. */
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(pvm_vm_restore(g.vm, snap) == 0, "%s", pvm_last_error());
        e = at;
        expect_count(g.cpu, &e, nonce, 4);
        expect_count(g.cpu, &e, nonce, 5);
        expect_count(g.cpu, &e, nonce, 6);
    }

    /* A new VM from it, and one from the file. */
    char path[128];
    tmp_path(path, sizeof(path), "count.snap");
    ck_assert_msg(pvm_snapshot_save(snap, path) == 0, "%s", pvm_last_error());
    pvm_snapshot *loaded;
    ck_assert_msg(pvm_snapshot_load(&loaded, path) == 0, "%s", pvm_last_error());
    pvm_snapshot *both[2] = { snap, loaded };
    for (int i = 0; i < 2; i++) {
        pvm_vm *vm;
        ck_assert_msg(pvm_vm_create_from_snapshot(&vm, both[i], NULL) == 0, "%s", pvm_last_error());
        pvm_vcpu *cpu = pvm_vm_vcpu(vm, 0);
        ck_assert_ptr_nonnull(cpu);
        ck_assert_ptr_null(pvm_vm_vcpu(vm, 1));
        ck_assert_int_eq(pvm_vm_backend(vm), pvm_vm_backend(g.vm));
        /* The exit it stopped at, as the application first saw it. */
        ck_assert_int_eq(pvm_vcpu_pending_exit(cpu, &e), 0);
        ck_assert_uint_eq(e.reason, PVM_EXIT_HYPERCALL);
        ck_assert_uint_eq(e.u.hypercall.nr, PVM_HOSTCALL(1));
        ck_assert_uint_eq(e.u.hypercall.args[0], nonce);
        ck_assert_uint_eq(e.u.hypercall.args[1], 3);
        ck_assert_int_eq(memcmp(&e, &at, sizeof(e)), 0);
        e = at;
        expect_count(cpu, &e, nonce, 4);
        expect_count(cpu, &e, nonce, 5);
        pvm_vm_destroy(vm);
    }
    pvm_snapshot_free(loaded);
    unlink(path);
    /* The VM keeps the snapshot alive after the application's free. */
    pvm_snapshot_free(snap);
    ck_assert_int_eq(pvm_vm_restore(g.vm, g.vm->dirty.base), 0);
    e = at;
    expect_count(g.cpu, &e, nonce, 4);
    gvm_fini(&g);
}
END_TEST

START_TEST(pending_interrupts_survive)
{
    struct gvm g;
    struct pvm_exit e = { 0 };
    gvm_boot(&g, g_irq_start, g_irq_end);
    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = 0x40 };
    ck_assert_int_eq(pvm_vcpu_inject(g.cpu, &ev), 0);
    run_hc(g.cpu, &e, 0, 0x21);   /* IF = 0: 0x40 stays pending, IP set */
    ev.vector = 0x41;
    ck_assert_int_eq(pvm_vcpu_inject(g.cpu, &ev), 0); /* still in the inbox */
    ck_assert_uint_eq(gvm_pvcs(&g)->event_flags, PVM_EVENT_FLAGS_IP);

    pvm_snapshot *snap;
    ck_assert_msg(pvm_vm_snapshot(g.vm, &snap) == 0, "%s", pvm_last_error());
    pvm_vm *vm;
    ck_assert_msg(pvm_vm_create_from_snapshot(&vm, snap, NULL) == 0, "%s", pvm_last_error());
    pvm_vcpu *cpu = pvm_vm_vcpu(vm, 0);
    struct pvm_hv_vcpu *hv = pvm_hv_of(cpu);
    ck_assert_uint_eq(hv->cpu.irq_pending[0], 0);
    ck_assert_uint_eq(hv->cpu.irq_pending[1], 1);       /* vector 0x40 */
    ck_assert_uint_eq(hv->nr_inbox, 1);
    ck_assert_uint_eq(hv->inbox[0].vector, 0x41);
    uint8_t *ram = pvm_vm_gpa_to_host(vm, 0, GVM_RAM_SIZE);
    struct pvm_vcpu_struct *p = (void *)(ram + GVM_PVCS);
    ck_assert_uint_eq(p->event_flags, PVM_EVENT_FLAGS_IP);
    /* IRQ_WIN: the highest first, then the other. */
    run_hc(cpu, &e, 0, GVM_HC_REPORT_IRQ);
    ck_assert_uint_eq(p->event_vector, 0x41);
    ck_assert_uint_eq(hv->cpu.irq_pending[1], 1);
    pvm_vm_destroy(vm);
    pvm_snapshot_free(snap);
    gvm_fini(&g);
}
END_TEST

static void fill_pattern(uint8_t *ram)
{
    for (unsigned i = 0; i < SCRIB_PAGES * 4096; i++)
        ram[SCRIB + i] = (uint8_t)(i * 7 + i / 4096);
}

static void expect_pattern(const uint8_t *ram)
{
    for (unsigned i = 0; i < SCRIB_PAGES * 4096; i++)
        ck_assert_msg(ram[SCRIB + i] == (uint8_t)(i * 7 + i / 4096), "byte %u is 0x%x", i, ram[SCRIB + i]);
}

static void scribble_vm(struct gvm *g)
{
    gvm_init(g);
    for (unsigned i = 0; i < SCRIB_PAGES; i++)
        gvm_map(g, g->kroot, SCRIB + i * 4096ull, SCRIB + i * 4096ull, PVM_PTE_W | PVM_PTE_NX);
    gvm_load(g, GVM_CODE, g_scribble_start, g_scribble_end);
    gvm_start(g, GVM_CODE, GVM_STACK_TOP);
    fill_pattern(g->ram);
}

START_TEST(restore_undoes_writes)
{
    struct gvm g;
    struct pvm_exit e = { 0 };
    scribble_vm(&g);
    memcpy(g.ram + GVM_DATA, "original", 8);
    run_hc(g.cpu, &e, 0, 1);
    pvm_snapshot *snap;
    ck_assert_msg(pvm_vm_snapshot(g.vm, &snap) == 0, "%s", pvm_last_error());
    struct pvm_exit at = e;
    ck_assert_uint_eq(g.vm->dirty.nlist, 0);

    /* Host-side writes are tracked page by page. */
    static uint8_t junk[3 * 4096];
    memset(junk, 0x55, sizeof(junk));
    ck_assert_int_eq(pvm_vcpu_write_guest(g.cpu, SCRIB, junk, sizeof(junk)), 0);
    ck_assert_uint_eq(g.vm->dirty.nlist, 3);
    uint8_t *h = pvm_vm_gpa_to_host(g.vm, GVM_DATA, 8);
    memcpy(h, "changed!", 8);
    ck_assert_uint_eq(g.vm->dirty.nlist, 4);
    ck_assert_int_eq(pvm_vm_restore(g.vm, snap), 0);
    ck_assert_uint_eq(g.vm->dirty.nlist, 0);
    expect_pattern(g.ram);
    ck_assert_int_eq(memcmp(g.ram + GVM_DATA, "original", 8), 0);

    /* The guest scribbles over all 32 pages, three times over three restores. */
    for (int round = 0; round < 3; round++) {
        e = at;
        run_hc(g.cpu, &e, 0, 2);
        for (unsigned i = 0; i < SCRIB_PAGES * 4096; i++)
            ck_assert_uint_eq(g.ram[SCRIB + i], 0xaa);
        ck_assert_uint_ge(g.vm->dirty.nlist, SCRIB_PAGES);
        ck_assert_int_eq(pvm_vm_restore(g.vm, snap), 0);
        expect_pattern(g.ram);
    }
    pvm_snapshot_free(snap);
    gvm_fini(&g);
}
END_TEST

START_TEST(vms_from_one_snapshot_isolated)
{
    struct gvm g;
    struct pvm_exit e = { 0 }, ea, eb;
    gvm_boot(&g, g_store_start, g_store_end);
    run_hc(g.cpu, &e, 0, 1);
    pvm_snapshot *snap;
    ck_assert_msg(pvm_vm_snapshot(g.vm, &snap) == 0, "%s", pvm_last_error());
    pvm_vm *a, *b;
    ck_assert_int_eq(pvm_vm_create_from_snapshot(&a, snap, NULL), 0);
    ck_assert_int_eq(pvm_vm_create_from_snapshot(&b, snap, NULL), 0);
    pvm_vcpu *ca = pvm_vm_vcpu(a, 0), *cb = pvm_vm_vcpu(b, 0);
    ea = eb = e;
    run_hc(ca, &ea, 0xaaaa, 2);
    run_hc(cb, &eb, 0xbbbb, 2);
    run_hc(ca, &ea, 0, 3);
    run_hc(cb, &eb, 0, 3);
    ck_assert_uint_eq(ea.u.hypercall.args[0], 0xaaaa);
    ck_assert_uint_eq(eb.u.hypercall.args[0], 0xbbbb);
    uint64_t v;
    memcpy(&v, g.ram + GVM_DATA + 16, 8);
    ck_assert_uint_eq(v, 0); /* the original VM and the snapshot saw neither */
    pvm_vm_destroy(a);
    /* b still runs on its own after a is gone; a new one starts from the snapshot. */
    ck_assert_int_eq(pvm_vm_restore(b, snap), 0);
    eb = e;
    run_hc(cb, &eb, 0xcccc, 2);
    run_hc(cb, &eb, 0, 3);
    ck_assert_uint_eq(eb.u.hypercall.args[0], 0xcccc);
    pvm_vm_destroy(b);
    pvm_snapshot_free(snap);
    gvm_fini(&g);
}
END_TEST

/* ---- VMs sharing a snapshot's pages (one vCPU) ---------------------------------- */

static uint64_t own_pages(const pvm_vm *vm)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < (vm->cow_npages + 63) / 64; i++)
        n += (uint64_t)__builtin_popcountll(vm->cow_own[i]);
    return n;
}

static pvm_vm *shared_vm(const pvm_snapshot *snap)
{
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.backend = gvm_backend();
    o.max_vcpus = 1;
    o.max_memory = 64ull << 20;
    pvm_vm *vm;
    ck_assert_msg(pvm_vm_create_from_snapshot(&vm, snap, &o) == 0, "%s", pvm_last_error());
    return vm;
}

START_TEST(vms_share_snapshot_pages)
{
    struct gvm g;
    struct pvm_exit e = { 0 };
    const uint64_t nonce = boot_counter(&g, &e);
    expect_count(g.cpu, &e, nonce, 2);
    expect_count(g.cpu, &e, nonce, 3);
    pvm_snapshot *snap;
    ck_assert_int_eq(pvm_vm_snapshot(g.vm, &snap), 0);
    const struct pvm_exit at = e;
    if (gvm_backend() != PVM_BACKEND_NATIVE) {
        pvm_snapshot_free(snap);
        gvm_fini(&g);
        return;   /* only native shares pages; the other cases cover copies */
    }
    /* The snapshot's RAM cannot be written by anyone: sealed. */
    ck_assert_int_eq(fcntl(snap->fd, F_GET_SEALS) & (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK),
                     F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK);
    ck_assert_ptr_eq(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, snap->fd, 0), MAP_FAILED);

    pvm_vm *a = shared_vm(snap), *b = shared_vm(snap);
    ck_assert_ptr_eq(a->cow, snap);
    ck_assert_uint_eq(own_pages(a), 0);
    struct pvm_exit ea = at, eb = at;
    pvm_vcpu *ca = pvm_vm_vcpu(a, 0), *cb = pvm_vm_vcpu(b, 0);
    expect_count(ca, &ea, nonce, 4);
    expect_count(ca, &ea, nonce, 5);
    expect_count(ca, &ea, nonce, 6);
    /* Written: the counter's page and the PVCS page; everything else is still the snapshot's. */
    ck_assert_uint_eq(own_pages(a), 2);
    ck_assert_uint_eq(own_pages(b), 0);
    expect_count(cb, &eb, nonce, 4);
    ck_assert_uint_eq(own_pages(b), 2);
    /* The library reads what the guest wrote, each VM its own. */
    const uint8_t *ha = pvm_vm_gpa_to_host(a, GVM_DATA, 16), *hb = pvm_vm_gpa_to_host(b, GVM_DATA, 16);
    uint64_t va, vb;
    memcpy(&va, ha + 8, 8);
    memcpy(&vb, hb + 8, 8);
    ck_assert_uint_eq(va, 6);
    ck_assert_uint_eq(vb, 4);
    /* A host write to a page still shared makes it the VM's own, and the guest sees it at once. */
    static const uint64_t planted = 0x1234;
    ck_assert_int_eq(pvm_vcpu_write_guest(ca, GVM_DATA + 8, &planted, 8), 0);
    run_hc(ca, &ea, 0, 1);
    ck_assert_uint_eq(ea.u.hypercall.args[1], 0x1235);
    ck_assert_uint_eq(ea.u.hypercall.args[2], 7); /* the SSE counter knows nothing of it */

    /* Restores copy back into the VM's own pages; they stay its own. */
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(pvm_vm_restore(a, snap), 0);
        ea = at;
        expect_count(ca, &ea, nonce, 4);
    }
    ck_assert_uint_eq(own_pages(a), 2);

    /* A snapshot of a sharing VM holds what it sees; a VM from that one goes on. */
    pvm_snapshot *s2;
    ck_assert_int_eq(pvm_vm_snapshot(a, &s2), 0);
    pvm_vm *c = shared_vm(s2);
    struct pvm_exit ec = ea;
    expect_count(pvm_vm_vcpu(c, 0), &ec, nonce, 5);
    pvm_vm_destroy(c);
    ck_assert_int_eq(pvm_vm_restore(a, s2), 0);
    ck_assert_int_eq(pvm_vm_restore(a, snap), 0);   /* back to the one it shares: a full (own pages) restore */
    ea = at;
    expect_count(ca, &ea, nonce, 4);
    pvm_snapshot_free(s2);

    /* From a file too. */
    char path[128];
    tmp_path(path, sizeof(path), "shared.snap");
    ck_assert_int_eq(pvm_snapshot_save(snap, path), 0);
    pvm_snapshot *loaded;
    ck_assert_int_eq(pvm_snapshot_load(&loaded, path), 0);
    unlink(path);
    pvm_vm *d = shared_vm(loaded);
    ck_assert_ptr_eq(d->cow, loaded);
    pvm_snapshot_free(loaded); /* d keeps it */
    struct pvm_exit ed = at;
    expect_count(pvm_vm_vcpu(d, 0), &ed, nonce, 4);
    pvm_vm_destroy(d);

    pvm_vm_destroy(a);
    expect_count(cb, &eb, nonce, 5);
    pvm_vm_destroy(b);
    pvm_snapshot_free(snap);
    gvm_fini(&g);
}
END_TEST

START_TEST(shared_vm_restore_undoes_scribbles)
{
    struct gvm g;
    struct pvm_exit e = { 0 };
    scribble_vm(&g);
    run_hc(g.cpu, &e, 0, 1);
    pvm_snapshot *snap;
    ck_assert_int_eq(pvm_vm_snapshot(g.vm, &snap), 0);
    const struct pvm_exit at = e;
    pvm_vm *vm = shared_vm(snap);
    pvm_vcpu *cpu = pvm_vm_vcpu(vm, 0);
    const uint8_t *ram = pvm_vm_gpa_to_host(vm, 0, 4096); /* page 0 only: the rest stays shared */
    (void)ram;
    for (int round = 0; round < 3; round++) {
        e = at;
        run_hc(cpu, &e, 0, 2);
        const uint8_t *h = pvm_vm_gpa_to_host(vm, SCRIB, SCRIB_PAGES * 4096);
        for (unsigned i = 0; i < SCRIB_PAGES * 4096; i++)
            ck_assert_uint_eq(h[i], 0xaa);
        ck_assert_int_eq(pvm_vm_restore(vm, snap), 0);
        expect_pattern(h - SCRIB);
    }
    expect_pattern(g.ram); /* the VM it came from never saw any of it */
    pvm_vm_destroy(vm);
    pvm_snapshot_free(snap);
    gvm_fini(&g);
}
END_TEST

START_TEST(prestarted_vms_handed_out)
{
    struct gvm g;
    struct pvm_exit e = { 0 };
    pvm_snapshot *snap;
    const uint64_t nonce = counter_snapshot(&g, &e, &snap, true);
    const struct pvm_exit at = e;
    /* A one-vCPU snapshot too, whose VMs share its pages. */
    pvm_vm *one = shared_vm(snap);
    pvm_snapshot *snap1;
    ck_assert_int_eq(pvm_vm_snapshot(one, &snap1), 0);
    pvm_vm_destroy(one);
    const int fds0 = pvm_test_count_fds();

    pvm_snapshot *both[2] = { snap, snap1 };
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(pvm_snapshot_prestart(both[k], 3) == 0, "%s", pvm_last_error());
        ck_assert_uint_eq(both[k]->npool, 3);
        pvm_vm *vms[4];
        for (int i = 0; i < 4; i++) {
            ck_assert_int_eq(pvm_vm_create_from_snapshot(&vms[i], both[k], NULL), 0);
            ck_assert_uint_eq(both[k]->npool, i < 3 ? 2 - i : 0);
        }
        /* Only native VMs share snapshot pages (the kvm backend gives each a copy). */
        ck_assert_ptr_eq(vms[0]->cow, k && gvm_backend() == PVM_BACKEND_NATIVE ? snap1 : NULL);
        for (int i = 0; i < 4; i++) {
            struct pvm_exit ei = at;
            expect_count(pvm_vm_vcpu(vms[i], 0), &ei, nonce, 2);
            expect_count(pvm_vm_vcpu(vms[i], 0), &ei, nonce, 3);
            pvm_vm_destroy(vms[i]);
        }
        /* Options given: never from the pool. */
        ck_assert_int_eq(pvm_snapshot_prestart(both[k], 2), 0);
        struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
        o.backend = gvm_backend();
        pvm_vm *vm;
        ck_assert_int_eq(pvm_vm_create_from_snapshot(&vm, both[k], &o), 0);
        ck_assert_uint_eq(both[k]->npool, 2);
        pvm_vm_destroy(vm);
    }
    ck_assert_int_eq(pvm_snapshot_prestart(NULL, 1), PVM_EINVAL);
    /* The two VMs still waiting in each go with the application's reference: nothing is left. */
    pvm_snapshot_free(snap);   /* g.vm keeps it (and its memfd) alive */
    pvm_snapshot_free(snap1);
    ck_assert_int_eq(pvm_test_count_fds(), fds0 - 1); /* and snap1's own memfd is gone */
    gvm_fini(&g);
}
END_TEST

/* ---- files ------------------------------------------------------------------- */

static uint32_t crc32c_ref(const uint8_t *p, size_t n)
{
    uint32_t c = ~0u;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return ~c;
}

static void write_all(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* Re-seal @b after an edit, as a forger would. */
static void reseal(uint8_t *b, size_t n)
{
    uint32_t c = crc32c_ref(b, n - 8);
    memcpy(b + n - 8, &c, 4);
}

static int load_variant(const char *path, const uint8_t *b, size_t n)
{
    write_all(path, b, n);
    pvm_snapshot *s = (pvm_snapshot *)1;
    int rc = pvm_snapshot_load(&s, path);
    ck_assert_ptr_null(s);
    return rc;
}

START_TEST(bad_files_refused)
{
    struct gvm g;
    struct pvm_exit e = { 0 };
    pvm_snapshot *snap;
    const uint64_t nonce = counter_snapshot(&g, &e, &snap, false);
    char good[128], bad[128];
    tmp_path(good, sizeof(good), "good.snap");
    tmp_path(bad, sizeof(bad), "bad.snap");
    ck_assert_int_eq(pvm_snapshot_save(snap, good), 0);
    struct stat st;
    ck_assert_int_eq(stat(good, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    size_t n;
    uint8_t *b = pvm_test_read_file(good, &n);
    ck_assert_uint_eq(n % 8, 0);
    ck_assert_int_eq(memcmp(b, "PVMSNAP\0", 8), 0);
    uint32_t crc;
    memcpy(&crc, b + n - 8, 4);
    ck_assert_uint_eq(crc, crc32c_ref(b, n - 8)); /* the library's CRC32C is the standard one */
    static const uint8_t check[] = "123456789";
    ck_assert_uint_eq(crc32c_ref(check, 9), 0xe3069283u);
    uint8_t *c = malloc(n);

    memcpy(c, b, n);
    c[0] ^= 1;
    ck_assert_int_eq(load_variant(bad, c, n), PVM_EBADSNAP);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "bad magic"));

    memcpy(c, b, n);
    c[8] = 2; /* version */
    reseal(c, n);
    ck_assert_int_eq(load_variant(bad, c, n), PVM_EVERSION);

    memcpy(c, b, n);
    c[n - 100] ^= 0x40; /* page data */
    ck_assert_int_eq(load_variant(bad, c, n), PVM_EBADSNAP);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "checksum"));

    ck_assert_int_eq(load_variant(bad, b, n - 4096), PVM_EBADSNAP);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "truncated"));
    ck_assert_int_eq(load_variant(bad, b, 50), PVM_EBADSNAP);
    ck_assert_int_eq(load_variant(bad, b, 0), PVM_EBADSNAP);

    /* Sealed but lying: max_vcpus 0 (offset 8+4+4+8+32+4), a huge allocation count. */
    memcpy(c, b, n);
    memset(c + 60, 0, 4);
    reseal(c, n);
    ck_assert_int_eq(load_variant(bad, c, n), PVM_EBADSNAP);
    memcpy(c, b, n);
    memset(c + 80, 0xff, 4);
    reseal(c, n);
    ck_assert_int_eq(load_variant(bad, c, n), PVM_EBADSNAP);
    pvm_snapshot *none = (pvm_snapshot *)1;
    ck_assert_int_eq(pvm_snapshot_load(&none, "/nonexistent/x"), PVM_ENOENT);
    ck_assert_ptr_null(none);

    /*
     * A sealed file whose vCPU state lies (mode 7: blob offset 4 + 128 + 24 +
     * 32 + 29 * 8, the blob at 104 + 16 + 32 + 8) loads, but its restore is
     * refused and changes nothing: not memory, not registers.
     */
    memcpy(c, b, n);
    const size_t mode_off = 104 + 16 + 32 + 8 + 4 + 128 + 24 + 32 + 29 * 8;
    uint32_t mode;
    memcpy(&mode, c + mode_off, 4);
    ck_assert_uint_eq(mode, PVM_MODE_SUPERVISOR);
    mode = 7;
    memcpy(c + mode_off, &mode, 4);
    reseal(c, n);
    write_all(bad, c, n);
    pvm_snapshot *liar;
    ck_assert_int_eq(pvm_snapshot_load(&liar, bad), 0);
    struct pvm_regs before, after;
    expect_count(g.cpu, &e, nonce, 2);
    ck_assert_int_eq(pvm_vcpu_get_regs(g.cpu, &before), 0);
    ck_assert_int_eq(pvm_vm_restore(g.vm, liar), PVM_EBADSNAP);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "mode 7"));
    ck_assert_int_eq(pvm_vcpu_get_regs(g.cpu, &after), 0);
    ck_assert_int_eq(memcmp(&before, &after, sizeof(before)), 0);
    uint64_t counter;
    memcpy(&counter, g.ram + GVM_DATA + 8, 8);
    ck_assert_uint_eq(counter, 2);
    pvm_vm *vm = (pvm_vm *)1;
    ck_assert_int_eq(pvm_vm_create_from_snapshot(&vm, liar, NULL), PVM_EBADSNAP);
    ck_assert_ptr_null(vm);
    pvm_snapshot_free(liar);

    /* Another layout: refused, nothing changed. */
    struct gvm other;
    gvm_boot(&other, g_count_start, g_count_end);
    void *extra;
    ck_assert_int_eq(pvm_vm_alloc_memory(other.vm, 4096, &extra), 0);
    ck_assert_int_eq(pvm_vm_restore(other.vm, snap), PVM_ESTATE);
    ck_assert_int_eq(pvm_vcpu_get_regs(other.cpu, &after), 0);
    ck_assert_uint_eq(after.rip, GVM_CODE);
    gvm_fini(&other);

    free(b);
    free(c);
    unlink(good);
    unlink(bad);
    pvm_snapshot_free(snap);
    gvm_fini(&g);
}
END_TEST

/*
 * Sealed files with random lies in the header, layout and vCPU state: every
 * load either refuses or gives a snapshot whose create/restore refuses or
 * works; nothing crashes (the process would die) and nothing is changed by
 * a refusal.
 */
START_TEST(fuzzed_files_refused_cleanly)
{
    struct gvm g;
    struct pvm_exit e = { 0 };
    pvm_snapshot *snap;
    (void)counter_snapshot(&g, &e, &snap, false);
    char good[128], bad[128];
    tmp_path(good, sizeof(good), "fuzz-good.snap");
    tmp_path(bad, sizeof(bad), "fuzz-bad.snap");
    ck_assert_int_eq(pvm_snapshot_save(snap, good), 0);
    size_t n;
    uint8_t *b = pvm_test_read_file(good, &n), *c = malloc(n);
    /* The parts before the page data: header, allocations, regions, the vCPU blob. */
    const size_t span = 104 + 16 + 32 + 8 + snap->vcpus[0].len;
    ck_assert_uint_lt(span, n);
    unsigned seed = 12345, loaded = 0, refused = 0;
    for (int i = 0; i < 400; i++) {
        memcpy(c, b, n);
        int flips = 1 + (int)(rand_r(&seed) % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = (size_t)rand_r(&seed) % span;
            c[at] = (uint8_t)(rand_r(&seed) & 1 ? c[at] ^ (1u << (rand_r(&seed) % 8)) : (uint8_t)rand_r(&seed));
        }
        reseal(c, n);
        write_all(bad, c, n);
        pvm_snapshot *s = NULL;
        int rc = pvm_snapshot_load(&s, bad);
        if (rc < 0) {
            ck_assert_msg(rc == PVM_EBADSNAP || rc == PVM_EVERSION, "load gave %d: %s", rc, pvm_last_error());
            ck_assert_ptr_null(s);
            refused++;
            continue;
        }
        loaded++;
        struct pvm_regs before, after;
        ck_assert_int_eq(pvm_vcpu_get_regs(g.cpu, &before), 0);
        rc = pvm_vm_restore(g.vm, s);
        if (rc < 0) {
            ck_assert_int_eq(pvm_vcpu_get_regs(g.cpu, &after), 0);
            ck_assert_int_eq(memcmp(&before, &after, sizeof(before)), 0);
        }
        pvm_vm *vm = NULL;
        if (pvm_vm_create_from_snapshot(&vm, s, NULL) == 0)
            pvm_vm_destroy(vm);
        else
            ck_assert_ptr_null(vm);
        pvm_snapshot_free(s);
    }
    ck_assert_uint_eq(loaded + refused, 400);
    ck_assert_uint_gt(refused, 0);
    free(b);
    free(c);
    unlink(good);
    unlink(bad);
    pvm_snapshot_free(snap);
    gvm_fini(&g);
}
END_TEST

static long rss_kib(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fscanf(f, "%ld %ld", &pages, &rss), 2);
    fclose(f);
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

START_TEST(no_leak_over_10000_restores)
{
    struct gvm g;
    struct pvm_exit e = { 0 };
    pvm_snapshot *snap;
    const uint64_t nonce = counter_snapshot(&g, &e, &snap, true);
    const struct pvm_exit at = e;
    long rss0 = 0;
    int fds0 = 0;
    for (int i = 0; i < 10100; i++) {
        if (i == 100) {
            rss0 = rss_kib();
            fds0 = pvm_test_count_fds();
        }
        e = at;
        expect_count(g.cpu, &e, nonce, 2);
        ck_assert_int_eq(pvm_vm_restore(g.vm, snap), 0);
    }
    ck_assert_int_eq(pvm_test_count_fds(), fds0);
    long grew = rss_kib() - rss0;
#ifdef __SANITIZE_ADDRESS__
    /* ASan's quarantine keeps freed memory on purpose; its LeakSanitizer checks leaks instead. */
    (void)grew;
#else
    ck_assert_msg(grew < 512, "RSS grew by %ld KiB over 10,000 restores", grew);
#endif
    /* Create and destroy VMs from it, take and drop snapshots: no fd or child left. */
    int children = pvm_test_count_children();
    for (int i = 0; i < 50; i++) {
        pvm_vm *vm;
        pvm_snapshot *s2;
        ck_assert_int_eq(pvm_vm_create_from_snapshot(&vm, snap, NULL), 0);
        e = at;
        expect_count(pvm_vm_vcpu(vm, 0), &e, nonce, 2);
        ck_assert_int_eq(pvm_vm_snapshot(vm, &s2), 0);
        pvm_snapshot_free(s2);
        pvm_vm_destroy(vm);
    }
    ck_assert_int_eq(pvm_test_count_fds(), fds0);
    ck_assert_int_eq(pvm_test_count_children(), children);
    pvm_snapshot_free(snap);
    gvm_fini(&g);
}
END_TEST

START_TEST(snapshot_refused_while_running_or_unsupported)
{
    struct gvm g;
    gvm_boot(&g, g_count_start, g_count_end);
    pvm_snapshot *s = (pvm_snapshot *)1;
    __atomic_store_n(&g.cpu->running, 1, __ATOMIC_RELEASE); /* as inside pvm_vcpu_run on another thread */
    ck_assert_int_eq(pvm_vm_snapshot(g.vm, &s), PVM_EBUSY);
    ck_assert_ptr_null(s);
    __atomic_store_n(&g.cpu->running, 0, __ATOMIC_RELEASE);
    ck_assert_int_eq(pvm_vm_snapshot(NULL, &s), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_restore(g.vm, NULL), PVM_EINVAL);
    ck_assert_int_eq(pvm_snapshot_save(NULL, "/tmp/x"), PVM_EINVAL);
    pvm_snapshot_free(NULL);
    ck_assert_int_eq(pvm_vm_snapshot(g.vm, &s), 0);
    __atomic_store_n(&g.cpu->running, 1, __ATOMIC_RELEASE);
    ck_assert_int_eq(pvm_vm_restore(g.vm, s), PVM_EBUSY);
    __atomic_store_n(&g.cpu->running, 0, __ATOMIC_RELEASE);
    pvm_snapshot_free(s);
    gvm_fini(&g);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("snapshot");
    TCase *tc = tcase_create("e2e");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, restore_continues_same_run);
    tcase_add_test(tc, pending_interrupts_survive);
    tcase_add_test(tc, restore_undoes_writes);
    tcase_add_test(tc, vms_from_one_snapshot_isolated);
    tcase_add_test(tc, vms_share_snapshot_pages);
    tcase_add_test(tc, shared_vm_restore_undoes_scribbles);
    tcase_add_test(tc, prestarted_vms_handed_out);
    tcase_add_test(tc, bad_files_refused);
    tcase_add_test(tc, fuzzed_files_refused_cleanly);
    tcase_add_test(tc, no_leak_over_10000_restores);
    tcase_add_test(tc, snapshot_refused_while_running_or_unsupported);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
