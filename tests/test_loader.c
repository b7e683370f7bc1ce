/*
 * test_loader - the ELF loader: one crafted bad ELF per rejection rule
 * (pvm__elf_parse, no VM needed), the RAM layout and page tables it writes
 * (checked with the machine model's page walker), and the public API on the
 * default backend (skipped, with the reason, where no VM can be created).
 */
#include <elf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "loader/loader.h"
#include "machine/mmu.h"
#include "testutil.h"

#define LO 0x10000ull
#define HI 0x7f0000000000ull
#define TEXT_VA 0x400000ull
#define DATA_VA 0x401000ull
#define NOTE_OFF 0x800
#define IMG_SIZE 0x3000

/* A minimal valid guest: text (R+X), data+bss (R+W), the libpvm note. */
struct img {
    uint8_t b[IMG_SIZE];
    size_t size;
};

static Elf64_Ehdr *eh(struct img *m) { return (Elf64_Ehdr *)m->b; }
static Elf64_Phdr *ph(struct img *m, int i) { return (Elf64_Phdr *)(m->b + 64) + i; }

static void make_valid(struct img *m)
{
    memset(m, 0, sizeof(*m));
    m->size = IMG_SIZE;
    Elf64_Ehdr *e = eh(m);
    memcpy(e->e_ident, ELFMAG, SELFMAG);
    e->e_ident[EI_CLASS] = ELFCLASS64;
    e->e_ident[EI_DATA] = ELFDATA2LSB;
    e->e_ident[EI_VERSION] = EV_CURRENT;
    e->e_type = ET_EXEC;
    e->e_machine = EM_X86_64;
    e->e_version = EV_CURRENT;
    e->e_entry = TEXT_VA;
    e->e_phoff = 64;
    e->e_ehsize = 64;
    e->e_phentsize = sizeof(Elf64_Phdr);
    e->e_phnum = 3;
    *ph(m, 0) = (Elf64_Phdr){ PT_LOAD, PF_R | PF_X, 0x1000, TEXT_VA, TEXT_VA, 0x10, 0x10, 0x1000 };
    *ph(m, 1) = (Elf64_Phdr){ PT_LOAD, PF_R | PF_W, 0x2000, DATA_VA, DATA_VA, 0x8, 0x2000, 0x1000 };
    *ph(m, 2) = (Elf64_Phdr){ PT_NOTE, PF_R, NOTE_OFF, 0, 0, 28, 28, 4 };
    uint32_t note[7] = { 7, 8, PVM_ELF_NOTE_TYPE_ABI, 0, 0, PVM_ABI_GENERATION_A, 0x100 };
    memcpy(&note[3], "libpvm", 7);
    memcpy(m->b + NOTE_OFF, note, sizeof(note));
    memset(m->b + 0x1000, 0xf4, 0x10);               /* hlt */
    memcpy(m->b + 0x2000, "\x2a\0\0\0\0\0\0\0", 8);  /* data = 42 */
}

static int parse(struct img *m, struct pvm_elf_image *out)
{
    return pvm__elf_parse(m->b, m->size, LO, HI, out);
}

/* Expect @rc and a detail message containing @needle. */
#define CHECK_REJECT(m, rc, needle)                                                   \
    do {                                                                              \
        struct pvm_elf_image im_;                                                     \
        int r_ = parse(m, &im_);                                                      \
        ck_assert_msg(r_ == (rc), "rc %d (%s), expected %d", r_, pvm_last_error(), (rc)); \
        ck_assert_msg(strstr(pvm_last_error(), needle), "message \"%s\" lacks \"%s\"",   \
                      pvm_last_error(), needle);                                      \
    } while (0)

START_TEST(valid_image_parses)
{
    struct img m;
    struct pvm_elf_image im;
    make_valid(&m);
    ck_assert_int_eq(parse(&m, &im), 0);
    ck_assert_uint_eq(im.nr_segs, 2);
    ck_assert_uint_eq(im.entry, TEXT_VA);
    ck_assert_uint_eq(im.segs[1].page_end, DATA_VA + 0x2000);
    ck_assert_uint_eq(im.abi_generation, PVM_ABI_GENERATION_A);
}
END_TEST

START_TEST(reject_bad_magic)
{
    struct img m;
    make_valid(&m);
    m.b[1] = 'X';
    CHECK_REJECT(&m, PVM_EBADELF, "not an ELF file");
}
END_TEST

START_TEST(reject_class32)
{
    struct img m;
    make_valid(&m);
    m.b[EI_CLASS] = ELFCLASS32;
    CHECK_REJECT(&m, PVM_EBADELF, "ELFCLASS64");
}
END_TEST

START_TEST(reject_big_endian)
{
    struct img m;
    make_valid(&m);
    m.b[EI_DATA] = ELFDATA2MSB;
    CHECK_REJECT(&m, PVM_EBADELF, "little-endian");
}
END_TEST

START_TEST(reject_machine)
{
    struct img m;
    make_valid(&m);
    eh(&m)->e_machine = EM_386;
    CHECK_REJECT(&m, PVM_EBADELF, "EM_X86_64");
}
END_TEST

START_TEST(reject_type_dyn)
{
    struct img m;
    make_valid(&m);
    eh(&m)->e_type = ET_DYN;
    CHECK_REJECT(&m, PVM_EBADELF, "ET_DYN");
}
END_TEST

START_TEST(reject_type_rel)
{
    struct img m;
    make_valid(&m);
    eh(&m)->e_type = ET_REL;
    CHECK_REJECT(&m, PVM_EBADELF, "ET_EXEC");
}
END_TEST

START_TEST(reject_truncated_header)
{
    struct img m;
    make_valid(&m);
    m.size = 40;
    CHECK_REJECT(&m, PVM_EBADELF, "truncated");
    m.size = 3;
    CHECK_REJECT(&m, PVM_EBADELF, "not an ELF file");
}
END_TEST

START_TEST(reject_truncated_phdrs)
{
    struct img m;
    make_valid(&m);
    m.size = 64 + sizeof(Elf64_Phdr); /* room for one of three */
    CHECK_REJECT(&m, PVM_EBADELF, "program headers");
    make_valid(&m);
    eh(&m)->e_phoff = 0xfffffffffffffff0ull; /* overflow-safe check */
    CHECK_REJECT(&m, PVM_EBADELF, "truncated");
}
END_TEST

START_TEST(reject_truncated_segment)
{
    struct img m;
    make_valid(&m);
    m.size = 0x2004; /* data segment's file bytes end at 0x2008 */
    CHECK_REJECT(&m, PVM_EBADELF, "truncated");
    make_valid(&m);
    ph(&m, 0)->p_offset = 0xffffffffffffff00ull;
    CHECK_REJECT(&m, PVM_EBADELF, "truncated");
}
END_TEST

START_TEST(reject_filesz_gt_memsz)
{
    struct img m;
    make_valid(&m);
    ph(&m, 1)->p_filesz = 0x3000;
    CHECK_REJECT(&m, PVM_EBADELF, "exceeds p_memsz");
}
END_TEST

START_TEST(reject_absurd_size)
{
    struct img m;
    make_valid(&m);
    ph(&m, 1)->p_memsz = 1ull << 50;
    CHECK_REJECT(&m, PVM_EBADELF, "absurd");
    make_valid(&m);
    ph(&m, 1)->p_vaddr = 0xfffffffffffff000ull; /* vaddr + memsz wraps */
    CHECK_REJECT(&m, PVM_EBADELF, "absurd");
}
END_TEST

START_TEST(reject_phentsize)
{
    struct img m;
    make_valid(&m);
    eh(&m)->e_phentsize = 32;
    CHECK_REJECT(&m, PVM_EBADELF, "e_phentsize");
}
END_TEST

START_TEST(reject_too_many_phdrs)
{
    struct img m;
    make_valid(&m);
    eh(&m)->e_phnum = PVM_LOADER_MAX_PHDRS + 1;
    CHECK_REJECT(&m, PVM_EBADELF, "program headers");
}
END_TEST

START_TEST(reject_too_many_segments)
{
    struct img m;
    make_valid(&m);
    int n = PVM_LOADER_MAX_SEGMENTS + 1;
    eh(&m)->e_phnum = (uint16_t)(n + 1);
    for (int i = 0; i < n; i++)
        *ph(&m, i) = (Elf64_Phdr){ PT_LOAD, PF_R | (i == 0 ? PF_X : 0), 0x1000,
                                   TEXT_VA + (uint64_t)i * 0x1000, 0, 0x10, 0x10, 0x1000 };
    *ph(&m, n) = (Elf64_Phdr){ PT_NOTE, PF_R, NOTE_OFF, 0, 0, 28, 28, 4 };
    CHECK_REJECT(&m, PVM_EBADELF, "PT_LOAD segments");
}
END_TEST

START_TEST(reject_wx)
{
    struct img m;
    make_valid(&m);
    ph(&m, 1)->p_flags = PF_R | PF_W | PF_X;
    CHECK_REJECT(&m, PVM_EBADELF, "W^X");
}
END_TEST

START_TEST(reject_overlap)
{
    struct img m;
    make_valid(&m);
    ph(&m, 1)->p_vaddr = TEXT_VA + 0x800; /* shares the text page */
    CHECK_REJECT(&m, PVM_EBADELF, "overlap");
}
END_TEST

START_TEST(reject_outside_range)
{
    struct img m;
    make_valid(&m);
    ph(&m, 1)->p_vaddr = 0x1000; /* below the lowest allowed address */
    CHECK_REJECT(&m, PVM_ERANGE, "outside");
    make_valid(&m);
    ph(&m, 1)->p_vaddr = HI - 0x1000; /* runs into the native stub's region */
    CHECK_REJECT(&m, PVM_ERANGE, "outside");
    make_valid(&m);
    ph(&m, 1)->p_vaddr = 0xffff800000000000ull; /* upper half */
    CHECK_REJECT(&m, PVM_ERANGE, "outside");
}
END_TEST

START_TEST(reject_missing_note)
{
    struct img m;
    make_valid(&m);
    ph(&m, 2)->p_type = PT_NULL;
    CHECK_REJECT(&m, PVM_EBADELF, "no libpvm ABI note");
    make_valid(&m);
    memcpy(m.b + NOTE_OFF + 12, "libxyz", 6); /* another vendor's note */
    CHECK_REJECT(&m, PVM_EBADELF, "no libpvm ABI note");
}
END_TEST

START_TEST(reject_wrong_generation)
{
    struct img m;
    make_valid(&m);
    uint32_t gen = 2;
    memcpy(m.b + NOTE_OFF + 20, &gen, 4);
    CHECK_REJECT(&m, PVM_EBADELF, "generation 2");
}
END_TEST

START_TEST(reject_bad_note)
{
    struct img m;
    make_valid(&m);
    uint32_t descsz = 0x1000; /* runs past the PT_NOTE */
    memcpy(m.b + NOTE_OFF + 4, &descsz, 4);
    CHECK_REJECT(&m, PVM_EBADELF, "PT_NOTE");
    make_valid(&m);
    ph(&m, 2)->p_offset = IMG_SIZE - 8;
    CHECK_REJECT(&m, PVM_EBADELF, "truncated");
}
END_TEST

START_TEST(reject_no_load)
{
    struct img m;
    make_valid(&m);
    ph(&m, 0)->p_type = PT_NULL;
    ph(&m, 1)->p_type = PT_NULL;
    CHECK_REJECT(&m, PVM_EBADELF, "no loadable");
}
END_TEST

START_TEST(reject_dynamic)
{
    struct img m;
    make_valid(&m);
    ph(&m, 2)->p_type = PT_INTERP;
    CHECK_REJECT(&m, PVM_EBADELF, "dynamically linked");
}
END_TEST

START_TEST(reject_entry_not_exec)
{
    struct img m;
    make_valid(&m);
    eh(&m)->e_entry = DATA_VA;
    CHECK_REJECT(&m, PVM_EBADELF, "entry point");
}
END_TEST

/* ---- layout and page tables ------------------------------------------------ */

struct ram {
    uint8_t *p;
    uint64_t size;
};

static uint64_t *pte_ptr(void *opaque, uint64_t gpa)
{
    struct ram *r = opaque;
    return gpa + 8 <= r->size ? (uint64_t *)(r->p + gpa) : NULL;
}

static enum pvm_walk_status walk(struct ram *r, uint64_t root, uint64_t gva, uint32_t access,
                                 struct pvm_walk_result *res)
{
    struct pvm_walk_env env = { r, pte_ptr, PVM_LA_RANGE_MAKE(0x1b2, 0x1d2, 0x1ff, 0x1ff), true,
                                PVM_PTE_ADDR, NULL };
    return pvm_mmu_walk(&env, root, gva, access, false, res);
}

static struct pvm_loader_params params(uint64_t ram_size)
{
    return (struct pvm_loader_params){ .ram_size = ram_size, .stack_size = 0x4000, .nr_vcpus = 2,
                                       .la_range = 0x1234, .lo = LO, .hi = HI, .cmdline = "a b" };
}

START_TEST(layout_and_page_tables)
{
    struct img m;
    struct pvm_elf_image im;
    struct pvm_loader l;
    struct ram r = { calloc(1, 8 << 20), 8 << 20 };
    make_valid(&m);
    ck_assert_int_eq(parse(&m, &im), 0);
    struct pvm_loader_params p = params(r.size);
    ck_assert_int_eq(pvm__loader_prepare(&im, &p, r.p, &l), 0);

    struct pvm_walk_result res;
    /* Text: supervisor, read-only, executable, with the file bytes. */
    ck_assert_int_eq(walk(&r, l.pt_root, TEXT_VA, PVM_PFEC_I, &res), PVM_WALK_OK);
    ck_assert(!res.writable && !res.user && res.executable);
    ck_assert_uint_eq(r.p[res.gpa], 0xf4);
    ck_assert_int_eq(walk(&r, l.pt_root, TEXT_VA, PVM_PFEC_W, &res), PVM_WALK_FAULT);
    /* Data: writable, NX, initialised; bss zero. */
    ck_assert_int_eq(walk(&r, l.pt_root, DATA_VA, PVM_PFEC_W, &res), PVM_WALK_OK);
    ck_assert(res.writable && !res.executable && !res.user);
    ck_assert_uint_eq(r.p[res.gpa], 42);
    ck_assert_int_eq(walk(&r, l.pt_root, DATA_VA + 0x1000, PVM_PFEC_W, &res), PVM_WALK_OK);
    ck_assert_uint_eq(r.p[res.gpa], 0);
    ck_assert_int_eq(walk(&r, l.pt_root, DATA_VA, PVM_PFEC_I, &res), PVM_WALK_FAULT);
    /* Nothing else of the low range is mapped. */
    ck_assert_int_eq(walk(&r, l.pt_root, DATA_VA + 0x2000, 0, &res), PVM_WALK_FAULT);
    /* Direct map: every byte of RAM, writable, NX. */
    ck_assert_int_eq(walk(&r, l.pt_root, l.direct_map + r.size - 1, PVM_PFEC_W, &res), PVM_WALK_OK);
    ck_assert_uint_eq(res.gpa, r.size - 1);
    ck_assert(!res.executable);
    ck_assert_int_eq(walk(&r, l.pt_root, l.direct_map + r.size, 0, &res), PVM_WALK_FAULT);

    /* Boot info per vCPU, and the stack below the next one. */
    for (uint32_t id = 0; id < 2; id++) {
        const struct pvm_boot_info *bi = (void *)(r.p + pvm__loader_boot_info_gpa(&l, id));
        ck_assert_uint_eq(bi->magic, PVM_BOOT_MAGIC);
        ck_assert_uint_eq(bi->vcpu_id, id);
        ck_assert_uint_eq(bi->nr_vcpus, 2);
        ck_assert_uint_eq(bi->pt_root, l.pt_root);
        ck_assert_uint_eq(bi->free_gpa, l.free_gpa);
        ck_assert_uint_eq(bi->la_range, 0x1234);
        ck_assert_str_eq(bi->cmdline, "a b");
        ck_assert_uint_eq(bi->regions[1].gpa + bi->regions[1].size, r.size);
        ck_assert_uint_eq(pvm__loader_stack_top_gpa(&l, id) - pvm__loader_boot_info_gpa(&l, id),
                          0x4000 + 0x1000);
    }
    ck_assert(l.free_gpa > pvm__loader_stack_top_gpa(&l, 1));
    ck_assert(l.free_gpa % 4096 == 0 && l.free_gpa < r.size);
    free(r.p);
}
END_TEST

START_TEST(layout_rejects_small_ram)
{
    struct img m;
    struct pvm_elf_image im;
    struct pvm_loader l;
    struct ram r = { calloc(1, 1 << 20), 1 << 20 };
    make_valid(&m);
    ck_assert_int_eq(parse(&m, &im), 0);
    struct pvm_loader_params p = params(r.size); /* the image starts at 1 MiB */
    ck_assert_int_eq(pvm__loader_prepare(&im, &p, r.p, &l), PVM_ERANGE);
    ck_assert(strstr(pvm_last_error(), "guest RAM"));
    free(r.p);
    r.size = 0x108000;
    r.p = calloc(1, r.size);
    p = params(r.size); /* fits the image but not the boot stacks */
    ck_assert_int_eq(pvm__loader_prepare(&im, &p, r.p, &l), PVM_ERANGE);
    ck_assert(strstr(pvm_last_error(), "boot stacks"));
    free(r.p);
}
END_TEST

START_TEST(layout_rejects_direct_map_clash)
{
    struct img m;
    struct pvm_elf_image im;
    struct pvm_loader l;
    struct ram r = { calloc(1, 4 << 20), 4 << 20 };
    make_valid(&m);
    ph(&m, 1)->p_vaddr = PVM_LOADER_DIRECT_MAP + 0x1000;
    ck_assert_int_eq(parse(&m, &im), 0);
    struct pvm_loader_params p = params(r.size);
    ck_assert_int_eq(pvm__loader_prepare(&im, &p, r.p, &l), PVM_ERANGE);
    ck_assert(strstr(pvm_last_error(), "direct map"));
    free(r.p);
}
END_TEST

/* ---- public API on the default backend ------------------------------------ */

static pvm_vm *vm_or_skip(void)
{
    pvm_vm *vm = NULL;
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.max_vcpus = 2;
    if (pvm_vm_create(&vm, &o) < 0) {
        printf("SKIP %s: no usable backend: %s\n", tcase_name(), pvm_last_error());
        return NULL;
    }
    return vm;
}

START_TEST(api_load_image)
{
    pvm_vm *vm = vm_or_skip();
    if (!vm)
        return;
    struct img m;
    struct pvm_load_info info;
    struct pvm_load_options o = PVM_LOAD_OPTIONS_INIT;
    o.ram_size = 4 << 20;
    make_valid(&m);
    /* A bad image leaves nothing behind: the VM can still take a good one. */
    eh(&m)->e_machine = EM_386;
    ck_assert_int_eq(pvm_vm_load_elf_image(vm, m.b, m.size, &o, &info), PVM_EBADELF);
    make_valid(&m);
    ck_assert_int_eq(pvm_vm_load_elf_image(vm, m.b, m.size, &o, &info), 0);
    ck_assert_uint_eq(info.entry, TEXT_VA);
    ck_assert_uint_eq(info.ram_size, 4 << 20);
    const struct pvm_boot_info *bi = pvm_vm_gpa_to_host(vm, info.boot_info_gpa, sizeof(*bi));
    ck_assert_ptr_nonnull(bi);
    ck_assert_uint_eq(bi->magic, PVM_BOOT_MAGIC);
    ck_assert_uint_eq(bi->la_range, pvm_vm_linear_address_range(vm));
    /* Only one image per VM. */
    ck_assert_int_eq(pvm_vm_load_elf_image(vm, m.b, m.size, &o, &info), PVM_ESTATE);
    pvm_gva_t gva;
    ck_assert_int_eq(pvm_vm_elf_symbol(vm, "main", &gva), PVM_ENOENT); /* no symtab */
    pvm_vm_destroy(vm);
}
END_TEST

START_TEST(api_load_file_errors)
{
    pvm_vm *vm = vm_or_skip();
    if (!vm)
        return;
    ck_assert_int_eq(pvm_vm_load_elf(vm, "/nonexistent/guest.elf", NULL, NULL), PVM_ENOENT);
    ck_assert(strstr(pvm_last_error(), "/nonexistent/guest.elf"));
    ck_assert_int_eq(pvm_vm_load_elf(vm, "/etc/hostname", NULL, NULL), PVM_EBADELF);
    ck_assert(strstr(pvm_last_error(), "not an ELF file"));
    ck_assert_int_eq(pvm_vm_elf_symbol(vm, "main", &(pvm_gva_t){ 0 }), PVM_ESTATE);
    pvm_vm_destroy(vm);
}
END_TEST

START_TEST(api_sdk_guest_and_boot_state)
{
    pvm_vm *vm = vm_or_skip();
    if (!vm)
        return;
    const char *path = PVM_TEST_BINARY_DIR "/examples/hello.elf";
    int rc = pvm_vm_load_elf(vm, path, NULL, NULL);
    if (rc == PVM_ENOENT) {
        printf("SKIP %s: %s not built\n", tcase_name(), path);
        pvm_vm_destroy(vm);
        return;
    }
    ck_assert_msg(rc == 0, "%s", pvm_last_error());
    pvm_gva_t start, ret;
    ck_assert_int_eq(pvm_vm_elf_symbol(vm, "_start", &start), 0);
    ck_assert_int_eq(pvm_vm_elf_symbol(vm, "pvm_return_to_host", &ret), 0);
    pvm_vcpu *vcpu = NULL;
    struct pvm_vcpu_options co = PVM_VCPU_OPTIONS_INIT;
    co.id = 1;
    if (pvm_vcpu_create(&vcpu, vm, &co) < 0) {
        printf("SKIP %s (boot state): pvm_vcpu_create: %s\n", tcase_name(), pvm_last_error());
        pvm_vm_destroy(vm);
        return;
    }
    ck_assert_int_eq(pvm_vcpu_setup_boot(vcpu, 0), 0);
    struct pvm_regs r;
    struct pvm_sregs s;
    ck_assert_int_eq(pvm_vcpu_get_regs(vcpu, &r), 0);
    ck_assert_int_eq(pvm_vcpu_get_sregs(vcpu, &s), 0);
    ck_assert_uint_eq(r.rip, start);
    ck_assert_uint_eq(r.rsi, 1);
    ck_assert_uint_eq(r.rflags & ~0x200ull, 0x2);
    ck_assert_uint_eq(s.mode, PVM_MODE_SUPERVISOR);
    struct pvm_boot_info bi;
    ck_assert_int_eq(pvm_vcpu_read_guest(vcpu, r.rdi, &bi, sizeof(bi)), 0);
    ck_assert_uint_eq(bi.magic, PVM_BOOT_MAGIC);
    ck_assert_uint_eq(bi.vcpu_id, 1);
    ck_assert_uint_eq(s.cr3 & PVM_PTE_ADDR, bi.pt_root);
    uint64_t arg = 5;
    ck_assert_int_eq(pvm_vcpu_setup_call(vcpu, start, &arg, 1), 0);
    ck_assert_int_eq(pvm_vcpu_get_regs(vcpu, &r), 0);
    uint64_t pushed;
    ck_assert_int_eq(pvm_vcpu_read_guest(vcpu, r.rsp, &pushed, 8), 0);
    ck_assert_uint_eq(pushed, ret);
    ck_assert_uint_eq(r.rdi, 5);
    ck_assert_uint_eq(r.rsp % 16, 8);
    pvm_vm_destroy(vm);
}
END_TEST

static Suite *loader_suite(void)
{
    Suite *s = suite_create("loader");
    TCase *t = tcase_create("parse");
    tcase_add_test(t, valid_image_parses);
    tcase_add_test(t, reject_bad_magic);
    tcase_add_test(t, reject_class32);
    tcase_add_test(t, reject_big_endian);
    tcase_add_test(t, reject_machine);
    tcase_add_test(t, reject_type_dyn);
    tcase_add_test(t, reject_type_rel);
    tcase_add_test(t, reject_truncated_header);
    tcase_add_test(t, reject_truncated_phdrs);
    tcase_add_test(t, reject_truncated_segment);
    tcase_add_test(t, reject_filesz_gt_memsz);
    tcase_add_test(t, reject_absurd_size);
    tcase_add_test(t, reject_phentsize);
    tcase_add_test(t, reject_too_many_phdrs);
    tcase_add_test(t, reject_too_many_segments);
    tcase_add_test(t, reject_wx);
    tcase_add_test(t, reject_overlap);
    tcase_add_test(t, reject_outside_range);
    tcase_add_test(t, reject_missing_note);
    tcase_add_test(t, reject_wrong_generation);
    tcase_add_test(t, reject_bad_note);
    tcase_add_test(t, reject_no_load);
    tcase_add_test(t, reject_dynamic);
    tcase_add_test(t, reject_entry_not_exec);
    suite_add_tcase(s, t);
    t = tcase_create("layout");
    tcase_add_test(t, layout_and_page_tables);
    tcase_add_test(t, layout_rejects_small_ram);
    tcase_add_test(t, layout_rejects_direct_map_clash);
    suite_add_tcase(s, t);
    t = tcase_create("api");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, api_load_image);
    tcase_add_test(t, api_load_file_errors);
    tcase_add_test(t, api_sdk_guest_and_boot_state);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    return pvm_test_run_suite(loader_suite());
}
