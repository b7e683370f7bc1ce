/*
 * lib/loader/layout.c - where everything goes in guest RAM, and writing it.
 *
 * Guest-physical layout (all page aligned):
 *   [0, 1 MiB)                  unused
 *   [1 MiB, ...)                PT_LOAD segments, packed in vaddr order
 *   then per vCPU id:           boot-info page, boot stack (stack_size)
 *   then                        initial page tables
 *   [free_gpa, ram_size)        free RAM (boot-info region type 1)
 * Guest-virtual: each segment at its link address (supervisor; W only if
 * PF_W; NX unless PF_X) and all RAM at PVM_LOADER_DIRECT_MAP + gpa
 * (supervisor, W, NX).  Boot info and stacks are reached through the direct map.
 */
#include <elf.h>
#include <string.h>
#include <sys/mman.h>

#include "core/core.h"
#include "loader.h"

typedef unsigned long long ull;

static uint64_t page_up(uint64_t x)
{
    return (x + PVM_PAGE_MASK) & ~PVM_PAGE_MASK;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* Initial page tables of a typical image: root, two paths down to the segments and the direct map. */
#define LOADER_PT_POPULATE 8

/*
 * Allocate and map the RAM pages [gpa, gpa+len) that the loader is about to
 * write, in one system call: a first write to each would take a page fault,
 * and on a host that is itself a guest an exception costs several
 * microseconds (docs/benchmarks.md).  Only pages written here: the guest's
 * own first touches happen in its backend's address space anyway.  A kernel
 * without MADV_POPULATE_WRITE simply faults them in as before.
 */
static void populate(uint8_t *ram, uint64_t ram_size, uint64_t gpa, uint64_t len)
{
    uint64_t a = gpa & ~PVM_PAGE_MASK, end = page_up(gpa + len);
    if (end > ram_size)
        end = ram_size;
    if (a < end)
        (void)madvise(ram + a, end - a, MADV_POPULATE_WRITE);
}

static void write_boot_info(const struct pvm_loader_params *p, const struct pvm_loader *l,
                            uint32_t id)
{
    struct pvm_boot_info *bi = (void *)(l->ram + pvm__loader_boot_info_gpa(l, id));
    memset(bi, 0, sizeof(*bi));
    bi->magic = PVM_BOOT_MAGIC;
    bi->version = 1;
    bi->vcpu_id = id;
    bi->nr_vcpus = l->nr_boot;
    bi->la_range = p->la_range;
    bi->direct_map_base = l->direct_map;
    bi->free_gpa = l->free_gpa;
    bi->ram_size = l->ram_size;
    bi->pt_root = l->pt_root;
    bi->nr_regions = 2;
    bi->regions[0] = (struct pvm_boot_region){ 0, l->free_gpa, 2, 0 };
    bi->regions[1] = (struct pvm_boot_region){ l->free_gpa, l->ram_size - l->free_gpa, 1, 0 };
    if (p->cmdline)
        memcpy(bi->cmdline, p->cmdline, strlen(p->cmdline) + 1); /* length checked by caller */
}

int pvm__loader_prepare(const struct pvm_elf_image *img, const struct pvm_loader_params *p,
                        uint8_t *ram, struct pvm_loader *l)
{
    struct pvm_elf_image im = *img; /* gpa fields are ours to fill */
    int rc;
    memset(l, 0, sizeof(*l));
    l->ram = ram;
    l->ram_size = p->ram_size;
    l->entry = im.entry;
    l->direct_map = PVM_LOADER_DIRECT_MAP;

    if (p->cmdline && strlen(p->cmdline) >= PVM_BOOT_CMDLINE_MAX)
        return pvm__error(PVM_EINVAL, "pvm_vm_load_elf: command line of %zu bytes exceeds %d",
                          strlen(p->cmdline), PVM_BOOT_CMDLINE_MAX - 1);
    if (p->lo > PVM_LOADER_DIRECT_MAP || p->hi < PVM_LOADER_DIRECT_MAP ||
        p->ram_size > p->hi - PVM_LOADER_DIRECT_MAP)
        return pvm__error(PVM_ERANGE, "pvm_vm_load_elf: the direct map of 0x%llx bytes of RAM at "
                          "0x%llx does not fit the allowed range [0x%llx, 0x%llx)",
                          (ull)p->ram_size, (ull)PVM_LOADER_DIRECT_MAP, (ull)p->lo, (ull)p->hi);

    /* Segments: packed GPAs, inside RAM, clear of the direct-map window. */
    uint64_t cursor = PVM_LOADER_IMAGE_GPA;
    for (size_t i = 0; i < im.nr_segs; i++) {
        struct pvm_elf_segment *s = &im.segs[i];
        uint64_t len = s->page_end - s->page_start;
        if (pvm__overlaps(s->page_start, len, PVM_LOADER_DIRECT_MAP, p->ram_size))
            return pvm__error(PVM_ERANGE, "pvm_vm_load_elf: segment at 0x%llx overlaps the direct "
                              "map of RAM at [0x%llx, 0x%llx)", (ull)s->vaddr,
                              (ull)PVM_LOADER_DIRECT_MAP, (ull)(PVM_LOADER_DIRECT_MAP + p->ram_size));
        if (len > p->ram_size || cursor > p->ram_size - len)
            return pvm__error(PVM_ERANGE, "pvm_vm_load_elf: segment at 0x%llx (0x%llx bytes) does not "
                              "fit in 0x%llx bytes of guest RAM", (ull)s->vaddr, (ull)s->memsz,
                              (ull)p->ram_size);
        s->gpa = cursor;
        cursor += len;
    }

    /* Boot areas. */
    uint64_t stack = page_up(p->stack_size);
    l->nr_boot = p->nr_vcpus;
    l->boot_gpa = cursor;
    l->boot_stride = PVM_PAGE_SIZE + stack;
    uint64_t boot_bytes = (uint64_t)l->nr_boot * l->boot_stride;
    if (stack == 0 || stack > p->ram_size || boot_bytes > p->ram_size - cursor)
        return pvm__error(PVM_ERANGE, "pvm_vm_load_elf: 0x%llx bytes of guest RAM cannot hold the "
                          "image (0x%llx bytes) and %u boot stacks of 0x%llx bytes", (ull)p->ram_size,
                          (ull)(cursor - PVM_LOADER_IMAGE_GPA), l->nr_boot, (ull)stack);
    cursor += boot_bytes;

    /* What is written below, in one go: file bytes, boot info and stack tops, the first tables. */
    for (size_t i = 0; i < im.nr_segs; i++)
        populate(ram, p->ram_size, im.segs[i].gpa + (im.segs[i].vaddr - im.segs[i].page_start), im.segs[i].filesz);
    for (uint32_t id = 0; id < l->nr_boot; id++) {
        populate(ram, p->ram_size, pvm__loader_boot_info_gpa(l, id), PVM_PAGE_SIZE);
        populate(ram, p->ram_size, pvm__loader_stack_top_gpa(l, id) - PVM_PAGE_SIZE, PVM_PAGE_SIZE);
    }
    populate(ram, p->ram_size, cursor, LOADER_PT_POPULATE * PVM_PAGE_SIZE);

    /* Copy the segments (RAM is zeroed, so the bss needs nothing). */
    for (size_t i = 0; i < im.nr_segs; i++) {
        const struct pvm_elf_segment *s = &im.segs[i];
        memcpy(ram + s->gpa + (s->vaddr - s->page_start), im.data + s->offset, s->filesz);
    }

    /* Page tables. */
    struct pvm_ptb b;
    if ((rc = pvm__ptb_init(&b, ram, cursor, p->ram_size)) < 0)
        return rc;
    for (size_t i = 0; i < im.nr_segs; i++) {
        const struct pvm_elf_segment *s = &im.segs[i];
        uint64_t f = 0;
        if (s->flags & PF_W)
            f |= PVM_PTE_W;
        if (!(s->flags & PF_X))
            f |= PVM_PTE_NX;
        if ((rc = pvm__ptb_map(&b, s->page_start, s->gpa, s->page_end - s->page_start, f, 0)) < 0)
            return rc;
    }
    if ((rc = pvm__ptb_map(&b, PVM_LOADER_DIRECT_MAP, 0, p->ram_size & ~PVM_PAGE_MASK,
                           PVM_PTE_W | PVM_PTE_NX, 1)) < 0)
        return rc;
    l->pt_root = b.root;
    l->free_gpa = b.next;

    for (uint32_t id = 0; id < l->nr_boot; id++)
        write_boot_info(p, l, id);
    return 0;
}
