/* tests/guestvm.c - see guestvm.h. */
#include <stdlib.h>

#include "guestvm.h"

#include <check.h>

/* Entry block: every stub saves RCX/R11/RSP, reports, then jumps where the host says. */
#define GVM_STUB(kind) "mov %rcx, %r12\n mov %r11, %r13\n mov %rsp, %r14\n" GVM_HC(kind) "jmp *%rax\n"
GVM_CODE_BLOCK(gvm_entry,
    GVM_STUB(0x10)
    ".org 256\n" GVM_STUB(0x11)
    ".org 512\n" GVM_STUB(0x12)
    ".org 0x300\n syscall\n ud2\n"     /* ERETU site; a trap after it (see native.c lost_eret) */
    ".org 0x310\n syscall\n ud2\n"     /* ERETS site */
    ".org 0x380\n" GVM_STUB(0x13)      /* LSTAR */
    ".org 0x400\n");

void gvm_map(struct gvm *g, uint64_t root, uint64_t gva, uint64_t gpa, uint64_t flags)
{
    uint64_t table = root;
    for (int level = 3; level > 0; level--) {
        uint64_t *e = (uint64_t *)(g->ram + table) + ((gva >> (12 + 9 * level)) & 511);
        if (!(*e & PVM_PTE_P)) {
            ck_assert_uint_lt(g->pt_next, 0x20000);
            *e = g->pt_next | PVM_PTE_P | PVM_PTE_W | PVM_PTE_U;
            g->pt_next += 4096;
        }
        table = *e & PVM_PTE_ADDR;
    }
    uint64_t *pte = (uint64_t *)(g->ram + table) + ((gva >> 12) & 511);
    *pte = gpa | flags | PVM_PTE_P;
}

void gvm_load(struct gvm *g, uint64_t gpa, const void *start, const void *end)
{
    size_t n = (size_t)((const uint8_t *)end - (const uint8_t *)start);
    ck_assert_uint_le(gpa + n, GVM_RAM_SIZE);
    memcpy(g->ram + gpa, start, n);
}

static void set_msr(struct gvm *g, uint32_t idx, uint64_t v)
{
    int rc = pvm_vcpu_set_msr(g->cpu, idx, v);
    ck_assert_msg(rc == 0, "set MSR 0x%x: %s", idx, pvm_last_error());
}

enum pvm_backend gvm_backend(void)
{
    const char *b = getenv("PVM_TEST_BACKEND");
    enum pvm_backend id = PVM_BACKEND_NATIVE;
    if (b && *b)
        ck_assert_msg(pvm_backend_from_name(b, &id) == 0, "PVM_TEST_BACKEND: %s", pvm_last_error());
    return id;
}

void gvm_init(struct gvm *g)
{
    memset(g, 0, sizeof(*g));
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.backend = gvm_backend();
    o.max_memory = 64ull << 20;
    ck_assert_msg(pvm_vm_create(&g->vm, &o) == 0, "vm: %s", pvm_last_error());
    ck_assert_int_eq(pvm_vm_alloc_memory(g->vm, GVM_RAM_SIZE, (void **)&g->ram), 0);
    ck_assert_int_eq(pvm_vm_map_memory(g->vm, 0, g->ram, GVM_RAM_SIZE, 0), 0);
    ck_assert_msg(pvm_vcpu_create(&g->cpu, g->vm, NULL) == 0, "vcpu: %s", pvm_last_error());
    g->kroot = 0x1000;
    g->uroot = 0x2000;
    g->pt_next = 0x3000;
    const uint64_t NX = PVM_PTE_NX, W = PVM_PTE_W, U = PVM_PTE_U;
    for (uint64_t a = GVM_CODE; a < GVM_CODE + 0x1000; a += 4096)
        gvm_map(g, g->kroot, a, a, 0);
    gvm_map(g, g->kroot, GVM_PVCS, GVM_PVCS, W | NX);
    for (uint64_t a = GVM_STACK_TOP - 0x2000; a < GVM_STACK_TOP; a += 4096)
        gvm_map(g, g->kroot, a, a, W | NX);
    gvm_map(g, g->kroot, GVM_ENTRY, GVM_ENTRY, 0);
    gvm_map(g, g->kroot, GVM_DATA, GVM_DATA, W | NX);
    gvm_map(g, g->uroot, GVM_USER_CODE, GVM_USER_CODE, U);
    for (uint64_t a = GVM_USER_STACK_TOP - 0x2000; a < GVM_USER_STACK_TOP; a += 4096)
        gvm_map(g, g->uroot, a, a, U | W | NX);
    gvm_load(g, GVM_ENTRY, gvm_entry_start, gvm_entry_end);

    struct pvm_sregs s;
    ck_assert_int_eq(pvm_vcpu_get_sregs(g->cpu, &s), 0);
    s.cr3 = g->kroot;
    s.efer |= 1ull << 11; /* NXE */
    ck_assert_int_eq(pvm_vcpu_set_sregs(g->cpu, &s), 0);
    set_msr(g, PVM_MSR_STAR, (0x23ull << 48) | (0x10ull << 32));
    set_msr(g, MSR_PVM_VCPU_STRUCT, GVM_PVCS);
    set_msr(g, MSR_PVM_EVENT_ENTRY, GVM_ENTRY);
    set_msr(g, MSR_PVM_SUPERVISOR_REDZONE, GVM_REDZONE);
    set_msr(g, MSR_PVM_SUPERVISOR_RSP, GVM_STACK_TOP);
    set_msr(g, MSR_PVM_RETU_RIP, GVM_RETU_SITE);
    set_msr(g, MSR_PVM_RETS_RIP, GVM_RETS_SITE);
    set_msr(g, PVM_MSR_LSTAR, GVM_LSTAR);
    set_msr(g, MSR_PVM_SWITCH_CR3, g->uroot);
}

void gvm_fini(struct gvm *g)
{
    pvm_vm_destroy(g->vm);
}

void gvm_start(struct gvm *g, uint64_t rip, uint64_t rsp)
{
    struct pvm_regs r;
    gvm_regs(g, &r);
    r.rip = rip;
    r.rsp = rsp;
    ck_assert_int_eq(pvm_vcpu_set_regs(g->cpu, &r), 0);
}

uint32_t gvm_run(struct gvm *g, struct pvm_exit *e)
{
    int rc = pvm_vcpu_run(g->cpu, e);
    ck_assert_msg(rc == 0, "run: %s", pvm_last_error());
    if (e->reason == PVM_EXIT_INTERNAL_ERROR)
        ck_abort_msg("internal error exit: %s", e->u.internal.msg);
    return e->reason;
}

struct pvm_vcpu_struct *gvm_pvcs(struct gvm *g)
{
    return (struct pvm_vcpu_struct *)(g->ram + GVM_PVCS);
}

void gvm_regs(struct gvm *g, struct pvm_regs *r)
{
    ck_assert_int_eq(pvm_vcpu_get_regs(g->cpu, r), 0);
}

void gvm_expect_hc(const struct pvm_exit *e, uint32_t nr)
{
    ck_assert_msg(e->reason == PVM_EXIT_HYPERCALL, "expected host call 0x%x, got exit %u%s%s", nr, e->reason,
                  e->reason == PVM_EXIT_SHUTDOWN ? ": " : "",
                  e->reason == PVM_EXIT_SHUTDOWN ? e->u.shutdown.reason : "");
    ck_assert_uint_eq(e->u.hypercall.nr, PVM_HOSTCALL(nr));
}

void gvm_boot(struct gvm *g, const uint8_t *start, const uint8_t *end)
{
    gvm_init(g);
    gvm_load(g, GVM_CODE, start, end);
    gvm_start(g, GVM_CODE, GVM_STACK_TOP);
}
