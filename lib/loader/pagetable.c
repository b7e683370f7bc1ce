/*
 * lib/loader/pagetable.c - builds the initial 4-level page tables in guest RAM.
 *
 * Intermediate entries allow everything (P|W|U|A) and leaves decide, so a
 * guest may later add user pages under the same tables; leaves get A and D
 * preset so nothing depends on the walker setting them.
 */
#include <string.h>

#include "core/core.h"
#include "loader.h"

#define TABLE_FLAGS (PVM_PTE_P | PVM_PTE_W | PVM_PTE_U | PVM_PTE_A)
#define SIZE_2M (2ull << 20)

static uint64_t *entry_at(struct pvm_ptb *b, uint64_t table_gpa, unsigned idx)
{
    return (uint64_t *)(b->ram + table_gpa) + idx;
}

static int alloc_table(struct pvm_ptb *b, uint64_t *gpa)
{
    if (b->next + PVM_PAGE_SIZE > b->end)
        return pvm__error(PVM_ERANGE, "pvm_vm_load_elf: guest RAM too small for the initial "
                          "page tables (need more than 0x%llx bytes)",
                          (unsigned long long)b->end);
    *gpa = b->next;
    memset(b->ram + b->next, 0, PVM_PAGE_SIZE);
    b->next += PVM_PAGE_SIZE;
    return 0;
}

int pvm__ptb_init(struct pvm_ptb *b, uint8_t *ram, uint64_t start, uint64_t end)
{
    b->ram = ram;
    b->next = start;
    b->end = end;
    return alloc_table(b, &b->root);
}

/* The table at @level below @va's entry in @table, created if absent. */
static int next_table(struct pvm_ptb *b, uint64_t table, uint64_t va, int level, uint64_t *out)
{
    uint64_t *e = entry_at(b, table, (unsigned)(va >> (12 + 9 * level)) & 511);
    if (!(*e & PVM_PTE_P)) {
        uint64_t t = 0;
        int rc = alloc_table(b, &t);
        if (rc < 0)
            return rc;
        *e = t | TABLE_FLAGS;
    } else if (*e & PVM_PTE_PS) {
        return pvm__error(PVM_EINTERNAL, "pvm_vm_load_elf: mapping 0x%llx under a large page",
                          (unsigned long long)va);
    }
    *out = *e & PVM_PTE_ADDR;
    return 0;
}

int pvm__ptb_map(struct pvm_ptb *b, uint64_t va, uint64_t pa, uint64_t size, uint64_t pte_flags,
                 int large)
{
    uint64_t leaf = pte_flags | PVM_PTE_P | PVM_PTE_A | PVM_PTE_D;
    for (uint64_t off = 0; off < size;) {
        uint64_t v = va + off, p = pa + off, t = b->root;
        int use_2m = large && !(v & (SIZE_2M - 1)) && !(p & (SIZE_2M - 1)) && size - off >= SIZE_2M;
        int rc;
        for (int level = 3; level > (use_2m ? 1 : 0); level--)
            if ((rc = next_table(b, t, v, level, &t)) < 0)
                return rc;
        if (use_2m) {
            *entry_at(b, t, (unsigned)(v >> 21) & 511) = p | leaf | PVM_PTE_PS;
            off += SIZE_2M;
        } else {
            *entry_at(b, t, (unsigned)(v >> 12) & 511) = p | leaf;
            off += PVM_PAGE_SIZE;
        }
    }
    return 0;
}
