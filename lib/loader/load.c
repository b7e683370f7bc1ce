/*
 * lib/loader/load.c - pvm_vm_load_elf(), pvm_vm_load_elf_image(), symbols.
 */
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "loader.h"

typedef unsigned long long ull;

void pvm__loader_free(void *p)
{
    struct pvm_loader *l = p;
    if (!l)
        return;
    for (size_t i = 0; i < l->nr_syms; i++)
        free(l->syms[i].name);
    free(l->syms);
    free(l);
}

int pvm__loader_read_symbols(const struct pvm_elf_image *img, struct pvm_loader *l)
{
    /* Symbols are optional: a stripped or odd section table just yields none. */
    Elf *elf = elf_memory((char *)(uintptr_t)img->data, img->size);
    if (!elf)
        return 0;
    Elf_Scn *scn = NULL;
    while ((scn = elf_nextscn(elf, scn))) {
        GElf_Shdr sh;
        if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_SYMTAB || sh.sh_entsize == 0)
            continue;
        /* libelf checks the section against the file size before handing out data. */
        Elf_Data *data = elf_getdata(scn, NULL);
        if (!data)
            continue;
        size_t n = data->d_size / sh.sh_entsize;
        struct pvm_loader_sym *syms = calloc(n ? n : 1, sizeof(*syms));
        if (!syms) {
            elf_end(elf);
            return pvm__error(PVM_ENOMEM, "pvm_vm_load_elf: out of memory for %zu symbols", n);
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            GElf_Sym sym;
            if (!gelf_getsym(data, (int)i, &sym) || sym.st_shndx == SHN_UNDEF)
                continue;
            int type = GELF_ST_TYPE(sym.st_info);
            if (type != STT_FUNC && type != STT_OBJECT && type != STT_NOTYPE)
                continue;
            const char *name = elf_strptr(elf, sh.sh_link, sym.st_name);
            if (!name || !*name)
                continue;
            if (!(syms[k].name = strdup(name)))
                break;
            syms[k++].value = sym.st_value;
        }
        l->syms = syms;
        l->nr_syms = k;
        break;
    }
    elf_end(elf);
    return 0;
}

static int loader_busy(pvm_vm *vm)
{
    pthread_rwlock_rdlock(&vm->regions_lock);
    int busy = vm->nr_regions > 0 || vm->loader;
    pthread_rwlock_unlock(&vm->regions_lock);
    return busy;
}

int pvm_vm_load_elf_image(pvm_vm *vm, const void *image, size_t size,
                          const struct pvm_load_options *opts, struct pvm_load_info *info)
{
    pvm__clear_error();
    if (!vm || !image)
        return pvm__error(PVM_EINVAL, "pvm_vm_load_elf: NULL %s", vm ? "image" : "vm");
    struct pvm_load_options defaults = PVM_LOAD_OPTIONS_INIT;
    const struct pvm_load_options *o = opts ? opts : &defaults;
    if (o->version != PVM_LOAD_OPTIONS_VERSION)
        return pvm__error(PVM_EVERSION, "pvm_vm_load_elf: options version %u is not supported "
                          "(use PVM_LOAD_OPTIONS_INIT)", o->version);
    uint64_t ram_size = o->ram_size ? o->ram_size : PVM_LOADER_DEFAULT_RAM;
    uint64_t stack_size = o->stack_size ? o->stack_size : PVM_LOADER_DEFAULT_STACK;
    if ((ram_size & PVM_PAGE_MASK) || ram_size < (2ull << 20))
        return pvm__error(PVM_EINVAL, "pvm_vm_load_elf: ram_size 0x%llx must be a multiple of "
                          "4096 and at least 2 MiB", (ull)ram_size);
    if (stack_size > (1ull << 30))
        return pvm__error(PVM_EINVAL, "pvm_vm_load_elf: stack_size 0x%llx is larger than 1 GiB",
                          (ull)stack_size);
    if (loader_busy(vm))
        return pvm__error(PVM_ESTATE, "pvm_vm_load_elf: the VM already has memory or a loaded "
                          "image; load into a fresh VM");
    if (size > PVM_LOADER_MAX_FILE)
        return pvm__error(PVM_EBADELF, "pvm_vm_load_elf: image of %zu bytes exceeds the %llu-byte "
                          "limit", size, (ull)PVM_LOADER_MAX_FILE);

    /* A private copy: libelf's elf_memory() wants a writable buffer. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return pvm__error(PVM_ENOMEM, "pvm_vm_load_elf: out of memory for a %zu-byte image", size);
    memcpy(copy, image, size);

    pvm_gva_t lo, hi;
    pvm_vm_lower_half(vm, &lo, &hi);
    struct pvm_elf_image img;
    struct pvm_loader *l = NULL;
    void *ram = NULL;
    int mapped = 0;
    int rc = pvm__elf_parse(copy, size, lo, hi, &img);
    if (rc < 0)
        goto fail;
    if ((rc = pvm_vm_alloc_memory(vm, ram_size, &ram)) < 0)
        goto fail;
    if ((rc = pvm_vm_map_memory(vm, 0, ram, ram_size, 0)) < 0)
        goto fail;
    mapped = 1;
    if (!(l = calloc(1, sizeof(*l)))) {
        rc = pvm__error(PVM_ENOMEM, "pvm_vm_load_elf: out of memory");
        goto fail;
    }
    struct pvm_loader_params p = {
        .ram_size = ram_size, .stack_size = stack_size, .nr_vcpus = vm->opts.max_vcpus,
        .la_range = pvm_vm_linear_address_range(vm), .lo = lo, .hi = hi, .cmdline = o->cmdline,
    };
    if ((rc = pvm__loader_prepare(&img, &p, ram, l)) < 0)
        goto fail;
    if ((rc = pvm__loader_read_symbols(&img, l)) < 0)
        goto fail;
    free(copy);
    pthread_rwlock_wrlock(&vm->regions_lock);
    vm->loader = l;
    vm->loader_free = pvm__loader_free;
    pthread_rwlock_unlock(&vm->regions_lock);
    pvm__log(PVM_LOG_DEBUG, "loaded ELF: entry 0x%llx, %zu segments, root 0x%llx, free RAM from 0x%llx",
             (ull)l->entry, img.nr_segs, (ull)l->pt_root, (ull)l->free_gpa);
    if (info) {
        info->entry = l->entry;
        info->boot_info_gpa = pvm__loader_boot_info_gpa(l, 0);
        info->pt_root = l->pt_root;
        info->ram = ram;
        info->ram_size = ram_size;
    }
    return 0;
fail: {
    /* Leave nothing half-made; the cleanup calls reset the message, so keep the first. */
    char why[512];
    snprintf(why, sizeof(why), "%s", pvm_last_error());
    if (mapped)
        pvm_vm_unmap_memory(vm, 0, ram_size);
    if (ram)
        pvm_vm_free_memory(vm, ram);
    pvm__loader_free(l);
    free(copy);
    return pvm__error(rc, "%s", why);
}
}

int pvm_vm_load_elf(pvm_vm *vm, const char *path, const struct pvm_load_options *opts,
                    struct pvm_load_info *info)
{
    pvm__clear_error();
    if (!vm || !path)
        return pvm__error(PVM_EINVAL, "pvm_vm_load_elf: NULL %s", vm ? "path" : "vm");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return pvm__error(e == ENOENT ? PVM_ENOENT : PVM_EIO, "pvm_vm_load_elf: %s: %s", path,
                          strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pvm__error(PVM_EIO, "pvm_vm_load_elf: %s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > PVM_LOADER_MAX_FILE) {
        close(fd);
        return pvm__error(PVM_EBADELF, "pvm_vm_load_elf: %s: %lld bytes exceeds the %llu-byte limit",
                          path, (long long)st.st_size, (ull)PVM_LOADER_MAX_FILE);
    }
    size_t size = (size_t)st.st_size, got = 0;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return pvm__error(PVM_ENOMEM, "pvm_vm_load_elf: out of memory for %zu bytes", size);
    }
    /* Read at most the size fstat saw: a file growing underneath cannot overrun the buffer. */
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return pvm__error(PVM_EIO, "pvm_vm_load_elf: %s: read: %s", path, strerror(e));
        }
        if (n == 0)
            break; /* shrank: parse what is there, the checks catch truncation */
        got += (size_t)n;
    }
    close(fd);
    int rc = pvm_vm_load_elf_image(vm, buf, got, opts, info);
    free(buf);
    if (rc < 0 && rc != PVM_ENOMEM) {
        /* Prefix the file name to the detail message. */
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", pvm_last_error());
        const char *m = strncmp(msg, "pvm_vm_load_elf: ", 17) == 0 ? msg + 17 : msg;
        pvm__error(rc, "pvm_vm_load_elf: %s: %s", path, m);
    }
    return rc;
}

int pvm_vm_elf_symbol(pvm_vm *vm, const char *name, pvm_gva_t *gva)
{
    pvm__clear_error();
    if (!vm || !name || !gva)
        return pvm__error(PVM_EINVAL, "pvm_vm_elf_symbol: NULL argument");
    const struct pvm_loader *l = vm->loader;
    if (!l)
        return pvm__error(PVM_ESTATE, "pvm_vm_elf_symbol: no ELF loaded into this VM");
    for (size_t i = 0; i < l->nr_syms; i++)
        if (strcmp(l->syms[i].name, name) == 0) {
            *gva = l->syms[i].value;
            return 0;
        }
    return pvm__error(PVM_ENOENT, "pvm_vm_elf_symbol: no symbol \"%s\" in the loaded ELF", name);
}
