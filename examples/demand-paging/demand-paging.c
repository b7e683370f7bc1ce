/*
 * demand-paging: a guest kernel that maps memory on first touch.  Its #PF
 * handler (a supervisor exception, delivered at EVENT_ENTRY+256 with the
 * faulting address in PVCS.cr2) maps a fresh page and returns with ERETS;
 * the faulting instruction then runs again.
 */
#include <pvm/guest/pvm_guest.h>

#define HEAP_BASE 0x200000000000ull /* 32 TiB: unmapped until touched */
#define HEAP_PAGES 16

static unsigned faults;

static void on_page_fault(struct pvm_frame *f)
{
    uint64_t va = f->cr2 & ~(PVM_PAGE_SIZE - 1);
    if (pvm_frame_is_user(f) || va < HEAP_BASE || va >= HEAP_BASE + HEAP_PAGES * PVM_PAGE_SIZE)
        pvm_panic("page fault at 0x%lx (rip 0x%lx, error 0x%lx) outside the heap",
                  (unsigned long)f->cr2, (unsigned long)f->rip, (unsigned long)f->error_code);
    uint64_t page = pvm_page_alloc();
    if (!page || pvm_pt_map(pvm_pt_kernel_root(), va, page, PVM_MAP_WRITE) < 0)
        pvm_panic("out of memory");
    faults++;
}

int main(void)
{
    pvm_set_trap_handler(PVM_VEC_PF, on_page_fault);
    volatile uint64_t *heap = (volatile uint64_t *)HEAP_BASE;
    const uint64_t per_page = PVM_PAGE_SIZE / sizeof(uint64_t);

    for (uint64_t i = 0; i < HEAP_PAGES; i++)
        heap[i * per_page + i] = i * 1000 + 7; /* first touch of each page faults */
    uint64_t sum = 0;
    for (uint64_t i = 0; i < HEAP_PAGES; i++)
        sum += heap[i * per_page + i];

    pvm_printf("demand-paging: %u page faults, %u pages mapped, sum %lu\n", faults, HEAP_PAGES,
               (unsigned long)sum);
    return faults == HEAP_PAGES ? 0 : 1;
}
