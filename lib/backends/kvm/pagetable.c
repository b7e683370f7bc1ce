/*
 * lib/backends/kvm/pagetable.c - the hardware page tables of the kvm
 * provider: one PML4 per address-space slot, its lower half the shadow MMU's
 * mappings (user pages), its entry 511 the shared kernel half.  Table pages
 * come from a pool in the private area, owned by one slot each and freed
 * when the slot is reset.  Pure functions over the private area.
 */
#include <stdlib.h>
#include <string.h>

#include "kvm.h"

#define PG 4096ull
#define TABLE_FLAGS (KVM_PTE_P | KVM_PTE_W | KVM_PTE_U | KVM_PTE_A)

static uint64_t *table(const struct kvm_ptables *pt, uint64_t gpa)
{
    return (uint64_t *)(pt->priv + (gpa - pt->priv_gpa));
}

static uint64_t page_gpa(const struct kvm_ptables *pt, uint32_t page)
{
    return pt->priv_gpa + KVM_OFF_POOL + (uint64_t)page * PG;
}

int kvm_pt_init(struct kvm_ptables *pt, uint8_t *priv, uint64_t priv_gpa)
{
    memset(pt, 0, sizeof(*pt));
    pt->priv = priv;
    pt->priv_gpa = priv_gpa;
    pt->owner = calloc(KVM_POOL_PAGES, 1);
    return pt->owner ? 0 : -1;
}

void kvm_pt_fini(struct kvm_ptables *pt)
{
    free(pt->owner);
    pt->owner = NULL;
}

/* A zeroed table page for @slot, or 0 (page 0 of the pool is never handed out: 0 means none). */
static uint32_t alloc_page(struct kvm_ptables *pt, unsigned slot)
{
    for (uint32_t n = 0; n < KVM_POOL_PAGES; n++) {
        uint32_t i = (pt->next_free + n) % KVM_POOL_PAGES;
        if (i == 0 || pt->owner[i])
            continue;
        pt->owner[i] = (uint8_t)(slot + 1);
        pt->next_free = i + 1;
        pt->used++;
        memset(pt->priv + KVM_OFF_POOL + (uint64_t)i * PG, 0, PG);
        return i;
    }
    return 0;
}

uint64_t kvm_pt_root(struct kvm_ptables *pt, unsigned slot)
{
    if (!pt->pml4[slot]) {
        uint32_t p = alloc_page(pt, slot);
        if (!p)
            return 0;
        pt->pml4[slot] = p;
        table(pt, page_gpa(pt, p))[511] = (pt->priv_gpa + KVM_OFF_KPDPT) | KVM_PTE_P | KVM_PTE_W | KVM_PTE_A;
    }
    return page_gpa(pt, pt->pml4[slot]);
}

static unsigned index_of(uint64_t gva, int level)
{
    return (gva >> (12 + 9 * level)) & 511;
}

int kvm_pt_map(struct kvm_ptables *pt, unsigned slot, uint64_t gva, uint64_t len, uint64_t gpa, bool w, bool x)
{
    uint64_t root = kvm_pt_root(pt, slot);
    if (!root)
        return -1;
    uint64_t leaf_flags = KVM_PTE_P | KVM_PTE_U | KVM_PTE_A | KVM_PTE_D | (w ? KVM_PTE_W : 0) |
                          (x ? 0 : KVM_PTE_NX);
    while (len) {
        /* The largest page that fits: 1 GiB (level 2), 2 MiB (level 1) or 4 KiB (level 0). */
        int leaf = 0;
        for (int l = 2; l >= 1; l--) {
            uint64_t size = PG << (9 * l);
            if (!((gva | gpa) & (size - 1)) && len >= size) {
                leaf = l;
                break;
            }
        }
        uint64_t *t = table(pt, root);
        for (int l = 3; l > leaf; l--) {
            uint64_t *e = &t[index_of(gva, l)];
            if (!(*e & KVM_PTE_P) || (*e & KVM_PTE_PS)) {
                /* (A large page in the way was removed by the shadow MMU first; drop it if not.) */
                pt->replaced |= (*e & KVM_PTE_P) != 0;
                uint32_t p = alloc_page(pt, slot);
                if (!p)
                    return -1;
                *e = page_gpa(pt, p) | TABLE_FLAGS;
            }
            t = table(pt, *e & KVM_PTE_ADDR);
        }
        uint64_t size = PG << (9 * leaf);
        uint64_t *e = &t[index_of(gva, leaf)];
        pt->replaced |= (*e & KVM_PTE_P) != 0;
        *e = gpa | leaf_flags | (leaf ? KVM_PTE_PS : 0);
        gva += size;
        gpa += size;
        len -= size;
    }
    return 0;
}

/* Clear what lies in [gva, end) below entry table @t of @level. */
static void unmap_level(struct kvm_ptables *pt, uint64_t *t, int level, uint64_t gva, uint64_t end)
{
    uint64_t size = PG << (9 * level);
    while (gva < end) {
        uint64_t *e = &t[index_of(gva, level)];
        uint64_t next = (gva & ~(size - 1)) + size;
        if (*e & KVM_PTE_P) {
            if (level == 0 || (*e & KVM_PTE_PS))
                *e = 0;
            else
                unmap_level(pt, table(pt, *e & KVM_PTE_ADDR), level - 1, gva, next < end ? next : end);
        }
        if (next == 0 || next >= end)
            break;
        gva = next;
    }
}

void kvm_pt_unmap(struct kvm_ptables *pt, unsigned slot, uint64_t gva, uint64_t len)
{
    if (!pt->pml4[slot] || !len)
        return;
    uint64_t end = gva + len < gva ? KVM_GUEST_HI : gva + len;
    if (end > KVM_GUEST_HI)
        end = KVM_GUEST_HI;
    if (gva >= end)
        return;
    unmap_level(pt, table(pt, page_gpa(pt, pt->pml4[slot])), 3, gva, end);
}

void kvm_pt_reset(struct kvm_ptables *pt, unsigned slot)
{
    if (!pt->pml4[slot])
        return;
    for (uint32_t i = 1; i < KVM_POOL_PAGES; i++)
        if (pt->owner[i] == slot + 1 && i != pt->pml4[slot]) {
            pt->owner[i] = 0;
            pt->used--;
        }
    uint64_t *pml4 = table(pt, page_gpa(pt, pt->pml4[slot]));
    memset(pml4, 0, 511 * sizeof(uint64_t));
    pt->next_free = 1;
}

int kvm_pt_lookup(const struct kvm_ptables *pt, unsigned slot, uint64_t gva, uint64_t *gpa, uint64_t *pte)
{
    if (!pt->pml4[slot])
        return -1;
    uint64_t *t = table(pt, page_gpa(pt, pt->pml4[slot]));
    for (int l = 3; l >= 0; l--) {
        uint64_t e = t[index_of(gva, l)];
        if (!(e & KVM_PTE_P))
            return -1;
        if (l == 0 || (e & KVM_PTE_PS)) {
            uint64_t size = PG << (9 * l);
            *gpa = (e & KVM_PTE_ADDR & ~(size - 1)) + (gva & (size - 1));
            *pte = e;
            return 0;
        }
        t = table(pt, e & KVM_PTE_ADDR);
    }
    return -1;
}
