/*
 * pvm/guest/paging.h - physical pages and 4-level page tables for guest kernels.
 *
 * The loader maps all guest RAM at boot_info->direct_map_base (gva = base +
 * gpa), so page-table pages are reached through that direct map.  Roots and
 * physical addresses are guest-physical (uint64_t GPAs).
 *
 * Not thread-safe between vCPUs for the same root (take your own lock);
 * pvm_page_alloc() is safe from any vCPU.
 */
#ifndef PVM_GUEST_PAGING_H
#define PVM_GUEST_PAGING_H

#include <stdint.h>

#define PVM_PAGE_SIZE 4096ull

/* pvm_pt_map() flags; a mapping is always readable. */
#define PVM_MAP_WRITE (1u << 0)
#define PVM_MAP_EXEC  (1u << 1) /**< without it the page is NX */
#define PVM_MAP_USER  (1u << 2) /**< U/S = 1: reachable from umod */

/** Host-visible address of guest-physical @gpa through the direct map. */
void *pvm_phys_to_virt(uint64_t gpa);
/** GPA behind kernel virtual address @va (walks the kernel root), or ~0 if unmapped. */
uint64_t pvm_virt_to_phys(const void *va);

/** A zeroed physical page from the free RAM the loader reported; 0 when exhausted. */
uint64_t pvm_page_alloc(void);
/** Bytes of free RAM not yet handed out by pvm_page_alloc(). */
uint64_t pvm_page_free_bytes(void);

/** The kernel (supervisor) root the loader built, as a GPA. */
uint64_t pvm_pt_kernel_root(void);
/** A new empty root (GPA), 0 when out of memory. */
uint64_t pvm_pt_create(void);
/**
 * Map the 4 KiB page at @va to @pa in @root with PVM_MAP_* @flags, allocating
 * intermediate tables as needed, and drop the old translation from the TLB.
 * Returns 0, -12 (out of memory) or -22 (@va/@pa unaligned or covered by a
 * large page).
 */
int pvm_pt_map(uint64_t root, uint64_t va, uint64_t pa, unsigned flags);
/** Remove the 4 KiB mapping at @va (0, or -2 if none) and flush it from the TLB. */
int pvm_pt_unmap(uint64_t root, uint64_t va);
/** The leaf entry for @va in @root (4 KiB, 2 MiB or 1 GiB page), or 0 if not present. */
uint64_t pvm_pt_lookup(uint64_t root, uint64_t va);
/** GPA of byte @va through @root, or ~0 if not mapped. */
uint64_t pvm_pt_translate(uint64_t root, uint64_t va);
/**
 * Make @user_root the page table used in user mode (MSR_PVM_SWITCH_CR3 via
 * PVM_HC_LOAD_PGTBL, with a TLB flush); the kernel root stays current.
 */
void pvm_pt_switch_user(uint64_t user_root);

#endif /* PVM_GUEST_PAGING_H */
