/*
 * lib/loader/elf_parse.c - validation of guest ELF files.
 *
 * The file is untrusted: every offset and size is checked against the buffer
 * (overflow-safe) before libelf or this code reads through it.
 */
#include <gelf.h>
#include <libelf.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "loader.h"

#define BAD(...) pvm__error(PVM_EBADELF, "pvm_vm_load_elf: " __VA_ARGS__)
#define OUT_OF_RANGE(...) pvm__error(PVM_ERANGE, "pvm_vm_load_elf: " __VA_ARGS__)

typedef unsigned long long ull;

/* Is [off, off+len) inside a buffer of @size bytes? (no overflow) */
static int in_file(uint64_t off, uint64_t len, size_t size)
{
    return off <= size && len <= size - off;
}

static int cmp_seg(const void *a, const void *b)
{
    const struct pvm_elf_segment *x = a, *y = b;
    return x->vaddr < y->vaddr ? -1 : x->vaddr > y->vaddr;
}

/* Look for the libpvm ABI note in one PT_NOTE segment's bytes. */
static int find_note(const uint8_t *p, uint64_t len, struct pvm_elf_image *img)
{
    uint64_t off = 0;
    while (len - off >= 12) {
        uint32_t namesz, descsz, type;
        memcpy(&namesz, p + off, 4);
        memcpy(&descsz, p + off + 4, 4);
        memcpy(&type, p + off + 8, 4);
        uint64_t name_off = off + 12;
        uint64_t desc_off = name_off + (((uint64_t)namesz + 3) & ~3ull);
        uint64_t next = desc_off + (((uint64_t)descsz + 3) & ~3ull);
        if (next > len)
            return BAD("PT_NOTE entry at offset %llu runs past its segment", (ull)off);
        if (namesz == sizeof(PVM_ELF_NOTE_NAME) &&
            memcmp(p + name_off, PVM_ELF_NOTE_NAME, sizeof(PVM_ELF_NOTE_NAME)) == 0 &&
            type == PVM_ELF_NOTE_TYPE_ABI) {
            if (descsz < 8)
                return BAD("libpvm ABI note has %u descriptor bytes, expected 8", descsz);
            memcpy(&img->abi_generation, p + desc_off, 4);
            memcpy(&img->sdk_version, p + desc_off + 4, 4);
            return 1;
        }
        off = next;
    }
    return 0;
}

static int check_ident(const uint8_t *d, size_t size)
{
    if (size < EI_NIDENT || memcmp(d, ELFMAG, SELFMAG) != 0)
        return BAD("not an ELF file (bad magic)");
    if (d[EI_CLASS] != ELFCLASS64)
        return BAD("ELF class %u is not ELFCLASS64 (a 64-bit x86-64 executable is required)",
                   d[EI_CLASS]);
    if (d[EI_DATA] != ELFDATA2LSB)
        return BAD("ELF data encoding %u is not little-endian", d[EI_DATA]);
    if (d[EI_VERSION] != EV_CURRENT)
        return BAD("ELF identification version %u is not EV_CURRENT", d[EI_VERSION]);
    if (size < sizeof(Elf64_Ehdr))
        return BAD("truncated file: %zu bytes, the ELF header needs %zu", size, sizeof(Elf64_Ehdr));
    return 0;
}

static int check_segment(const GElf_Phdr *ph, unsigned i, size_t size, uint64_t lo, uint64_t hi)
{
    if (ph->p_filesz > ph->p_memsz)
        return BAD("segment %u: p_filesz 0x%llx exceeds p_memsz 0x%llx", i, (ull)ph->p_filesz,
                   (ull)ph->p_memsz);
    if (!in_file(ph->p_offset, ph->p_filesz, size))
        return BAD("truncated file: segment %u needs bytes [0x%llx, +0x%llx) of a %zu-byte file", i,
                   (ull)ph->p_offset, (ull)ph->p_filesz, size);
    if ((ph->p_flags & PF_W) && (ph->p_flags & PF_X))
        return BAD("segment %u at 0x%llx is writable and executable (W^X is enforced)", i,
                   (ull)ph->p_vaddr);
    if (ph->p_memsz > (1ull << 46) || ph->p_vaddr > UINT64_MAX - ph->p_memsz - PVM_PAGE_SIZE)
        return BAD("segment %u: absurd size 0x%llx at 0x%llx", i, (ull)ph->p_memsz,
                   (ull)ph->p_vaddr);
    if (ph->p_vaddr < lo || ph->p_vaddr + ph->p_memsz > hi)
        return OUT_OF_RANGE("segment %u [0x%llx, 0x%llx) lies outside the guest address range "
                            "[0x%llx, 0x%llx) this backend allows", i, (ull)ph->p_vaddr,
                            (ull)(ph->p_vaddr + ph->p_memsz), (ull)lo, (ull)hi);
    return 0;
}

int pvm__elf_parse(const void *data, size_t size, uint64_t lo, uint64_t hi,
                   struct pvm_elf_image *img)
{
    const uint8_t *d = data;
    int rc;
    memset(img, 0, sizeof(*img));
    img->data = d;
    img->size = size;
    if (!data)
        return BAD("NULL image");
    if ((rc = check_ident(d, size)) < 0)
        return rc;

    Elf64_Ehdr eh;
    memcpy(&eh, d, sizeof(eh));
    if (eh.e_machine != EM_X86_64)
        return BAD("e_machine %u is not EM_X86_64 (62)", eh.e_machine);
    if (eh.e_type == ET_DYN)
        return BAD("ELF type ET_DYN (position-independent) is not supported: link the guest "
                   "with -no-pie at a fixed address");
    if (eh.e_type != ET_EXEC)
        return BAD("ELF type %u is not ET_EXEC (an executable is required)", eh.e_type);
    if (eh.e_phentsize != sizeof(Elf64_Phdr))
        return BAD("e_phentsize %u, expected %zu", eh.e_phentsize, sizeof(Elf64_Phdr));
    if (eh.e_phnum == 0)
        return BAD("no program headers");
    if (eh.e_phnum > PVM_LOADER_MAX_PHDRS)
        return BAD("%u program headers, at most %d are accepted", eh.e_phnum, PVM_LOADER_MAX_PHDRS);
    if (!in_file(eh.e_phoff, (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr), size))
        return BAD("truncated file: program headers at 0x%llx (%u entries) run past its %zu bytes",
                   (ull)eh.e_phoff, eh.e_phnum, size);

    /* libelf reads what was checked above; elf_memory wants a writable buffer. */
    if (elf_version(EV_CURRENT) == EV_NONE)
        return pvm__error(PVM_EINTERNAL, "pvm_vm_load_elf: libelf: %s", elf_errmsg(-1));
    Elf *elf = elf_memory((char *)(uintptr_t)d, size);
    if (!elf)
        return BAD("libelf: %s", elf_errmsg(-1));
    rc = 0;
    int have_note = 0;
    for (unsigned i = 0; i < eh.e_phnum && rc == 0; i++) {
        GElf_Phdr ph;
        if (!gelf_getphdr(elf, (int)i, &ph)) {
            rc = BAD("program header %u: %s", i, elf_errmsg(-1));
            break;
        }
        switch (ph.p_type) {
        case PT_LOAD:
            if (ph.p_memsz == 0)
                break;
            if ((rc = check_segment(&ph, i, size, lo, hi)) < 0)
                break;
            if (img->nr_segs == PVM_LOADER_MAX_SEGMENTS) {
                rc = BAD("more than %d PT_LOAD segments", PVM_LOADER_MAX_SEGMENTS);
                break;
            }
            struct pvm_elf_segment *s = &img->segs[img->nr_segs++];
            s->vaddr = ph.p_vaddr;
            s->memsz = ph.p_memsz;
            s->offset = ph.p_offset;
            s->filesz = ph.p_filesz;
            s->flags = ph.p_flags;
            s->page_start = ph.p_vaddr & ~PVM_PAGE_MASK;
            s->page_end = (ph.p_vaddr + ph.p_memsz + PVM_PAGE_MASK) & ~PVM_PAGE_MASK;
            break;
        case PT_NOTE:
            if (!in_file(ph.p_offset, ph.p_filesz, size)) {
                rc = BAD("truncated file: PT_NOTE %u needs bytes [0x%llx, +0x%llx) of a %zu-byte file",
                         i, (ull)ph.p_offset, (ull)ph.p_filesz, size);
                break;
            }
            if (!have_note) {
                int n = find_note(d + ph.p_offset, ph.p_filesz, img);
                if (n < 0)
                    rc = n;
                have_note = n > 0;
            }
            break;
        case PT_INTERP:
        case PT_DYNAMIC:
            rc = BAD("dynamically linked executables are not supported (PT_INTERP/PT_DYNAMIC)");
            break;
        case PT_TLS:
            rc = BAD("thread-local storage (PT_TLS) is not supported");
            break;
        default:
            break;
        }
    }
    elf_end(elf);
    if (rc < 0)
        return rc;
    if (img->nr_segs == 0)
        return BAD("no loadable (PT_LOAD) segments");
    if (!have_note)
        return BAD("no libpvm ABI note (PT_NOTE \"%s\" type 0x%x): build the guest with "
                   "pvm_add_guest() from cmake/PvmGuest.cmake", PVM_ELF_NOTE_NAME,
                   PVM_ELF_NOTE_TYPE_ABI);
    if (img->abi_generation != PVM_ABI_GENERATION_A)
        return BAD("guest was built for PVM ABI generation %u; this library speaks generation A (%u)",
                   img->abi_generation, PVM_ABI_GENERATION_A);

    qsort(img->segs, img->nr_segs, sizeof(img->segs[0]), cmp_seg);
    for (size_t i = 1; i < img->nr_segs; i++) {
        /* Page granularity: two segments in one page could not keep their permissions. */
        if (img->segs[i].page_start < img->segs[i - 1].page_end)
            return BAD("segments at 0x%llx and 0x%llx overlap (or share a page)",
                       (ull)img->segs[i - 1].vaddr, (ull)img->segs[i].vaddr);
    }
    img->entry = eh.e_entry;
    int entry_ok = 0;
    for (size_t i = 0; i < img->nr_segs; i++)
        if ((img->segs[i].flags & PF_X) && eh.e_entry >= img->segs[i].vaddr &&
            eh.e_entry < img->segs[i].vaddr + img->segs[i].memsz)
            entry_ok = 1;
    if (!entry_ok)
        return BAD("entry point 0x%llx is not inside an executable segment", (ull)eh.e_entry);
    return 0;
}
