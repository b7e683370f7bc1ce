/*
 * lib/loader/loader.h - ELF loader internals (parse, layout, page tables).
 *
 * Split so that every step runs without a VM: tests feed crafted images to
 * pvm__elf_parse() and check the guest RAM pvm__loader_prepare() writes.
 */
#ifndef PVM_LOADER_H
#define PVM_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "pvm/abi.h"
#include "pvm/pvm.h"

#define PVM_LOADER_MAX_FILE      (256ull << 20) /* largest ELF file accepted */
#define PVM_LOADER_MAX_PHDRS     64             /* e_phnum limit */
#define PVM_LOADER_MAX_SEGMENTS  16             /* PT_LOAD limit */
#define PVM_LOADER_IMAGE_GPA     0x100000ull    /* segments are packed from 1 MiB up */
/* All RAM is mapped at gva = PVM_LOADER_DIRECT_MAP + gpa (16 TiB: lower half, below the native stub). */
#define PVM_LOADER_DIRECT_MAP    0x100000000000ull
#define PVM_LOADER_DEFAULT_RAM   (64ull << 20)
#define PVM_LOADER_DEFAULT_STACK (64ull << 10)

struct pvm_elf_segment {
    uint64_t vaddr, memsz;   /* as in the program header */
    uint64_t offset, filesz;
    uint32_t flags;          /* PF_R / PF_W / PF_X */
    uint64_t page_start;     /* vaddr rounded down to 4 KiB */
    uint64_t page_end;       /* vaddr + memsz rounded up */
    uint64_t gpa;            /* GPA of page_start (set by the layout) */
};

struct pvm_elf_image {
    const uint8_t *data;     /* the file bytes (not owned) */
    size_t size;
    uint64_t entry;
    size_t nr_segs;
    struct pvm_elf_segment segs[PVM_LOADER_MAX_SEGMENTS]; /* sorted by vaddr */
    uint32_t abi_generation, sdk_version; /* from the libpvm note */
};

/*
 * Validate the ELF64 x86-64 executable [data, data+size) and describe its
 * loadable segments; [lo, hi) is the guest-virtual range they must lie in.
 * Never reads outside the buffer.  Returns 0, PVM_EBADELF or PVM_ERANGE with
 * pvm_last_error() set.
 */
int pvm__elf_parse(const void *data, size_t size, uint64_t lo, uint64_t hi,
                   struct pvm_elf_image *img);

struct pvm_loader_sym {
    char *name;
    uint64_t value;
};

/* The boot layout of a loaded VM (vm->loader). */
struct pvm_loader {
    uint64_t entry;
    uint64_t pt_root;        /* GPA */
    uint64_t direct_map;     /* GVA of GPA 0 */
    uint64_t ram_size, free_gpa;
    uint8_t *ram;            /* host address of GPA 0 */
    uint32_t nr_boot;        /* boot areas = vCPU ids 0..nr_boot-1 */
    uint64_t boot_gpa;       /* first boot area */
    uint64_t boot_stride;    /* boot-info page + stack */
    struct pvm_loader_sym *syms;
    size_t nr_syms;
};

struct pvm_loader_params {
    uint64_t ram_size;
    uint64_t stack_size;
    uint32_t nr_vcpus;
    uint64_t la_range;       /* MSR_PVM_LINEAR_ADDRESS_RANGE for the boot info */
    uint64_t lo, hi;         /* allowed lower-half range (for the direct map) */
    const char *cmdline;
};

/*
 * Lay out and write everything into zeroed guest RAM [ram, ram+ram_size):
 * segments, boot areas (boot info + stack per vCPU), page tables.  Fills
 * *out (syms left empty).  Returns 0, PVM_ERANGE or PVM_EINVAL.
 */
int pvm__loader_prepare(const struct pvm_elf_image *img, const struct pvm_loader_params *p,
                        uint8_t *ram, struct pvm_loader *out);

/* GPA of vCPU @id's boot info and GVA of the top of its stack. */
static inline uint64_t pvm__loader_boot_info_gpa(const struct pvm_loader *l, uint32_t id)
{
    return l->boot_gpa + (uint64_t)id * l->boot_stride;
}
static inline uint64_t pvm__loader_stack_top_gpa(const struct pvm_loader *l, uint32_t id)
{
    return pvm__loader_boot_info_gpa(l, id) + l->boot_stride;
}

/* Read the symbol table (FUNC/OBJECT/NOTYPE symbols) into l->syms; missing table is fine. */
int pvm__loader_read_symbols(const struct pvm_elf_image *img, struct pvm_loader *l);
void pvm__loader_free(void *loader);

/* ---- page-table builder over guest RAM (pagetable.c) -------------------- */

struct pvm_ptb {
    uint8_t *ram;
    uint64_t next, end;      /* free page-table pages [next, end) */
    uint64_t root;           /* GPA of the PML4 */
};

int pvm__ptb_init(struct pvm_ptb *b, uint8_t *ram, uint64_t start, uint64_t end);
/* Map [va, va+size) -> [pa, pa+size) with leaf bits @pte_flags; 2 MiB pages where aligned if @large. */
int pvm__ptb_map(struct pvm_ptb *b, uint64_t va, uint64_t pa, uint64_t size, uint64_t pte_flags,
                 int large);

#endif /* PVM_LOADER_H */
