/*
 * lib/guest/paging.c - page allocator and 4-level page-table helpers.
 *
 * Page-table pages are reached through the loader's direct map of all RAM
 * (boot_info->direct_map_base).  After every change the translation is
 * dropped with PVM_HC_TLB_INVLPG: a shadow MMU may cache what it saw (§7.2).
 */
#include "pvm/guest/pvm_guest.h"
#include "runtime.h"

/* Intermediate entries allow everything; the leaf decides (as Linux does). */
#define TABLE_FLAGS (PVM_PTE_P | PVM_PTE_W | PVM_PTE_U | PVM_PTE_A)

static uint64_t alloc_next, alloc_end;

void pvm__page_alloc_init(uint64_t free_gpa, uint64_t ram_size)
{
    alloc_next = (free_gpa + PVM_PAGE_SIZE - 1) & ~(PVM_PAGE_SIZE - 1);
    alloc_end = ram_size & ~(PVM_PAGE_SIZE - 1);
}

uint64_t pvm_page_alloc(void)
{
    uint64_t gpa = __atomic_load_n(&alloc_next, __ATOMIC_RELAXED);
    do {
        if (gpa + PVM_PAGE_SIZE > alloc_end)
            return 0;
    } while (!__atomic_compare_exchange_n(&alloc_next, &gpa, gpa + PVM_PAGE_SIZE, false,
                                          __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    memset(pvm_phys_to_virt(gpa), 0, PVM_PAGE_SIZE);
    return gpa;
}

uint64_t pvm_page_free_bytes(void)
{
    uint64_t next = __atomic_load_n(&alloc_next, __ATOMIC_RELAXED);
    return next < alloc_end ? alloc_end - next : 0;
}

void *pvm_phys_to_virt(uint64_t gpa)
{
    return (void *)(uintptr_t)(pvm__direct_map_base + gpa);
}

uint64_t pvm_pt_kernel_root(void)
{
    return pvm__kernel_root;
}

static uint64_t *table(uint64_t entry)
{
    return pvm_phys_to_virt(entry & PVM_PTE_ADDR);
}

static unsigned idx(uint64_t va, int level) /* level 3 = PML4 .. 0 = PT */
{
    return (unsigned)(va >> (12 + 9 * level)) & 511;
}

uint64_t pvm_pt_lookup(uint64_t root, uint64_t va)
{
    uint64_t *t = pvm_phys_to_virt(root & PVM_PTE_ADDR);
    for (int level = 3; level >= 0; level--) {
        uint64_t e = t[idx(va, level)];
        if (!(e & PVM_PTE_P))
            return 0;
        if (level == 0 || (level <= 2 && (e & PVM_PTE_PS)))
            return e;
        t = table(e);
    }
    return 0;
}

uint64_t pvm_pt_translate(uint64_t root, uint64_t va)
{
    uint64_t *t = pvm_phys_to_virt(root & PVM_PTE_ADDR);
    for (int level = 3; level >= 0; level--) {
        uint64_t e = t[idx(va, level)];
        if (!(e & PVM_PTE_P))
            return ~0ull;
        if (level == 0 || (level <= 2 && (e & PVM_PTE_PS))) {
            uint64_t size = 1ull << (12 + 9 * level);
            /* Large-page entries keep PAT in bit 12: mask the frame to the page size. */
            return ((e & PVM_PTE_ADDR) & ~(size - 1)) | (va & (size - 1));
        }
        t = table(e);
    }
    return ~0ull;
}

uint64_t pvm_virt_to_phys(const void *va)
{
    return pvm_pt_translate(pvm__kernel_root, (uint64_t)(uintptr_t)va);
}

uint64_t pvm_pt_create(void)
{
    return pvm_page_alloc();
}

int pvm_pt_map(uint64_t root, uint64_t va, uint64_t pa, unsigned flags)
{
    if ((va | pa) & (PVM_PAGE_SIZE - 1))
        return -22;
    uint64_t *t = pvm_phys_to_virt(root & PVM_PTE_ADDR);
    for (int level = 3; level > 0; level--) {
        uint64_t *e = &t[idx(va, level)];
        if (!(*e & PVM_PTE_P)) {
            uint64_t page = pvm_page_alloc();
            if (!page)
                return -12;
            *e = page | TABLE_FLAGS;
        } else if (*e & PVM_PTE_PS) {
            return -22;
        }
        t = table(*e);
    }
    /* A and D preset: the guest never depends on them, the walker need not set them. */
    uint64_t pte = pa | PVM_PTE_P | PVM_PTE_A | PVM_PTE_D;
    if (flags & PVM_MAP_WRITE)
        pte |= PVM_PTE_W;
    if (flags & PVM_MAP_USER)
        pte |= PVM_PTE_U;
    if (!(flags & PVM_MAP_EXEC))
        pte |= PVM_PTE_NX;
    __atomic_store_n(&t[idx(va, 0)], pte, __ATOMIC_RELEASE);
    pvm_hc_tlb_invlpg(va);
    return 0;
}

int pvm_pt_unmap(uint64_t root, uint64_t va)
{
    uint64_t *t = pvm_phys_to_virt(root & PVM_PTE_ADDR);
    for (int level = 3; level > 0; level--) {
        uint64_t e = t[idx(va, level)];
        if (!(e & PVM_PTE_P) || (e & PVM_PTE_PS))
            return -2;
        t = table(e);
    }
    if (!(t[idx(va, 0)] & PVM_PTE_P))
        return -2;
    __atomic_store_n(&t[idx(va, 0)], 0, __ATOMIC_RELEASE);
    pvm_hc_tlb_invlpg(va);
    return 0;
}

void pvm_pt_switch_user(uint64_t user_root)
{
    pvm_hc_load_pgtbl(pvm__kernel_root, user_root);
}
