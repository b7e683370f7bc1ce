/*
 * bench/bench-guest.c - the SDK guest bench-pvm drives.
 *
 * The guest asks the host for work (BG_HC_NEXT returns op << 32 | n), performs
 * the operation n times in a loop and reports BG_HC_DONE, so the host times
 * n operations between two host calls and divides (the two host-call exits
 * are measured separately with op EMPTY and subtracted).
 */
#include <pvm/guest/pvm_guest.h>

#include "bench-guest.h"
#include "compute.h"

/* ---- user mode: a syscall loop and a fresh-page touch loop -------------- */

#define USER_STACK_TOP 0x300000000000ull
#define USER_PF_BASE   0x310000000000ull /* BG_PF_PAGES pages, faulted in one by one */

PVM_USER_DATA static volatile uint64_t user_n;
PVM_USER_DATA static volatile uint64_t user_work;  /* BG_OP_MIXED: compute units per syscall */
PVM_USER_DATA static volatile uint64_t user_sink;
PVM_USER_DATA static volatile uint64_t user_pf_next; /* next fresh page index */

PVM_USER_TEXT static void user_syscalls(void)
{
    for (uint64_t i = user_n; i; i--)
        pvm_user_syscall(BG_SYS_NOP, 0, 0, 0);
    pvm_user_syscall(BG_SYS_EXIT, 0, 0, 0);
    for (;;)
        ;
}

/* The mixed workload: the same loop tinykernel.S runs under QEMU and /dev/kvm. */
PVM_USER_TEXT static void user_mixed(void)
{
    for (uint64_t i = user_n, w = user_work; i; i--) {
        user_sink += bench_compute(w);
        pvm_user_syscall(BG_SYS_NOP, 0, 0, 0);
    }
    pvm_user_syscall(BG_SYS_EXIT, 0, 0, 0);
    for (;;)
        ;
}

PVM_USER_TEXT static void user_touch(void)
{
    uint64_t first = user_pf_next, n = user_n;
    for (uint64_t i = 0; i < n; i++)
        *(volatile uint64_t *)(USER_PF_BASE + (first + i) * PVM_PAGE_SIZE) = i;
    user_pf_next = first + n;
    pvm_user_syscall(BG_SYS_EXIT, 0, 0, 0);
    for (;;)
        ;
}

static uint64_t user_root, pf_page;

static void on_syscall(struct pvm_frame *f)
{
    if (f->rax == BG_SYS_EXIT)
        pvm_user_return(0);
    f->rax = 0;
}

/* Leaf PTE of @va in @root; the tables exist (set up in user_setup). */
static volatile uint64_t *leaf_pte(uint64_t root, uint64_t va)
{
    uint64_t *t = pvm_phys_to_virt(root);
    for (int level = 3; level > 0; level--)
        t = pvm_phys_to_virt(t[(va >> (12 + 9 * level)) & 511] & PVM_PTE_ADDR);
    return &t[(va >> 12) & 511];
}

/*
 * A not-present -> present change needs no TLB flush (x86 does not cache
 * not-present entries), so the handler only writes the PTE, as Linux does.
 */
static void on_page_fault(struct pvm_frame *f)
{
    uint64_t va = f->cr2 & ~(PVM_PAGE_SIZE - 1);
    if (!pvm_frame_is_user(f) || va < USER_PF_BASE || va >= USER_PF_BASE + BG_PF_PAGES * PVM_PAGE_SIZE)
        pvm_panic("unexpected #PF at 0x%lx rip 0x%lx", (unsigned long)f->cr2, (unsigned long)f->rip);
    *leaf_pte(user_root, va) = pf_page | PVM_PTE_P | PVM_PTE_W | PVM_PTE_U | PVM_PTE_A | PVM_PTE_D | PVM_PTE_NX;
}

static void map_range(char *start, char *end, unsigned flags)
{
    for (char *p = start; p < end; p += PVM_PAGE_SIZE)
        PVM_ASSERT(pvm_pt_map(user_root, (uint64_t)p, pvm_virt_to_phys(p), flags) == 0);
}

static void user_setup(void)
{
    user_root = pvm_pt_create();
    uint64_t stack = pvm_page_alloc();
    pf_page = pvm_page_alloc();
    PVM_ASSERT(user_root && stack && pf_page);
    map_range(__pvm_user_text_start, __pvm_user_text_end, PVM_MAP_EXEC | PVM_MAP_USER);
    map_range(__pvm_user_data_start, __pvm_user_data_end, PVM_MAP_WRITE | PVM_MAP_USER);
    PVM_ASSERT(pvm_pt_map(user_root, USER_STACK_TOP - PVM_PAGE_SIZE, stack, PVM_MAP_WRITE | PVM_MAP_USER) == 0);
    /* Build the page tables of the fault region once, then leave every leaf not present. */
    for (uint64_t i = 0; i < BG_PF_PAGES; i += 512) {
        uint64_t va = USER_PF_BASE + i * PVM_PAGE_SIZE;
        PVM_ASSERT(pvm_pt_map(user_root, va, pf_page, PVM_MAP_WRITE | PVM_MAP_USER) == 0);
        *leaf_pte(user_root, va) = 0;
    }
    pvm_pt_switch_user(user_root); /* flushes */
    pvm_set_syscall_handler(on_syscall);
    pvm_set_trap_handler(PVM_VEC_PF, on_page_fault);
}

/* ---- supervisor operations ---------------------------------------------- */

static void on_ud(struct pvm_frame *f)
{
    f->rip += 2; /* skip the ud2 */
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* Injection: the handler's first statement stamps the TSC for the host. */
static volatile uint64_t irq_stamps[BG_IRQ_MAX];
static volatile uint64_t irq_count;

static void on_irq(struct pvm_frame *f)
{
    uint64_t t = rdtsc();
    (void)f;
    uint64_t i = irq_count;
    if (i < BG_IRQ_MAX)
        irq_stamps[i] = t;
    irq_count = i + 1;
}

/* Hyperlight-style call target for pvm_vcpu_setup_call(). */
__attribute__((used, noinline)) uint64_t bench_call_add(uint64_t a, uint64_t b)
{
    return a + b;
}

static volatile uint64_t sink;
static uint64_t compute_tsc; /* TSC ticks of the last BG_OP_COMPUTE loop */

static void run_op(unsigned op, uint64_t work, uint64_t n)
{
    switch (op) {
    case BG_OP_EMPTY:
        break;
    case BG_OP_HYPERCALL:
        for (uint64_t i = 0; i < n; i++)
            pvm_hypercall0(PVM_KVM_HC_VAPIC_POLL_IRQ); /* a no-op the library answers itself */
        break;
    case BG_OP_UD:
        for (uint64_t i = 0; i < n; i++)
            __asm__ volatile("ud2" ::: "memory");
        break;
    case BG_OP_WRMSR: {
        uint64_t v = pvm_rdmsr(MSR_PVM_SUPERVISOR_REDZONE);
        for (uint64_t i = 0; i < n; i++)
            pvm_wrmsr(MSR_PVM_SUPERVISOR_REDZONE, v);
        break;
    }
    case BG_OP_CPUID: {
        uint32_t r[4];
        for (uint64_t i = 0; i < n; i++)
            pvm_cpuid(PVM_KVM_CPUID_SIGNATURE, 0, r);
        break;
    }
    case BG_OP_PIO:
        for (uint64_t i = 0; i < n; i++)
            __asm__ volatile("outb %%al, %%dx" ::"a"(0), "d"(BG_PIO_PORT) : "memory");
        break;
    case BG_OP_USER_SYSCALL:
        user_n = n;
        pvm_enter_user((uint64_t)user_syscalls, USER_STACK_TOP - 8);
        break;
    case BG_OP_MIXED:
        user_n = n;
        user_work = work;
        pvm_enter_user((uint64_t)user_mixed, USER_STACK_TOP - 8);
        break;
    case BG_OP_USER_PF:
        if (user_pf_next + n > BG_PF_PAGES)
            pvm_panic("fault region exhausted");
        user_n = n;
        pvm_enter_user((uint64_t)user_touch, USER_STACK_TOP - 8);
        break;
    case BG_OP_COMPUTE: {
        /* Timed in the guest with the TSC: no exit or host wake-up inside the interval. */
        uint64_t t0 = rdtsc();
        for (uint64_t i = 0; i < n; i++)
            sink += bench_compute(BG_COMPUTE_N);
        compute_tsc = rdtsc() - t0;
        break;
    }
    case BG_OP_IRQ_SPIN:
        /* Running guest code with interrupts on: the injection must interrupt it. */
        irq_count = 0;
        pvm_irq_enable();
        while (irq_count < n)
            pvm_cpu_relax();
        pvm_irq_disable();
        break;
    case BG_OP_IRQ_HALT:
        irq_count = 0;
        while (irq_count < n)
            pvm_irq_halt();
        pvm_irq_disable();
        break;
    default:
        pvm_panic("unknown op %u", op);
    }
}

int main(void)
{
    user_setup();
    pvm_set_trap_handler(PVM_VEC_UD, on_ud);
    pvm_set_trap_handler(BG_IRQ_VECTOR, on_irq);
    pvm_hostcall(BG_HC_HELLO, (uint64_t)irq_stamps, (uint64_t)&irq_count);
    for (;;) {
        uint64_t cmd = pvm_hostcall(BG_HC_NEXT);
        unsigned op = (unsigned)(cmd >> 32) & ((1u << BG_OP_BITS) - 1);
        uint64_t work = (cmd >> 32) >> BG_OP_BITS;
        if (op == BG_OP_QUIT)
            return 0;
        uint64_t sp0, sp1;
        __asm__ volatile("mov %%rsp, %0" : "=r"(sp0));
        run_op(op, work, (uint32_t)cmd);
        __asm__ volatile("mov %%rsp, %0" : "=r"(sp1));
        /* The stack depth change across the run: a leak per event would show here. */
        pvm_hostcall(BG_HC_DONE, sp0 - sp1, compute_tsc);
    }
}
