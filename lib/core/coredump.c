/*
 * lib/core/coredump.c - pvm_vm_write_core(): an ELF core file of a stopped VM
 * that gdb opens beside the guest ELF ("gdb guest.elf core"): guest memory
 * as PT_LOAD segments by guest-virtual address (through vCPU 0's page
 * tables), and one NT_PRSTATUS per vCPU with its registers.
 *
 * The page tables are the guest's: every entry is checked before use (a
 * table outside RAM ends that branch), and the dump is bounded.
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/procfs.h>
#include <sys/user.h>
#include <unistd.h>

#include "backend.h"

#define CORE_MAX_SEGMENTS 16384
#define CORE_MAX_BYTES (4ull << 30)
/* Tables visited: the guest's tables may point at themselves (512^4 paths); bounded work. */
#define CORE_MAX_TABLES 65536

struct seg {
    uint64_t gva, len;
    const uint8_t *host;
    uint32_t flags; /* PF_R | PF_W | PF_X */
};

struct segs {
    struct seg *v;
    size_t n, cap;
    uint64_t bytes;
    unsigned tables; /* visited so far */
};

/* Add a page-table leaf, merged with the previous segment when it continues it. */
static int add_seg(struct segs *s, uint64_t gva, uint64_t len, const uint8_t *host, uint32_t flags)
{
    if (s->bytes + len > CORE_MAX_BYTES)
        return -1;
    s->bytes += len;
    if (s->n) {
        struct seg *l = &s->v[s->n - 1];
        if (l->gva + l->len == gva && l->host + l->len == host && l->flags == flags) {
            l->len += len;
            return 0;
        }
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        if (cap > CORE_MAX_SEGMENTS)
            return -1;
        struct seg *v = realloc(s->v, cap * sizeof(*v));
        if (!v)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (struct seg){ gva, len, host, flags };
    return 0;
}

/* Walk the table at @table_gpa (level 3 = PML4) for the addresses from @base. */
static int walk(pvm_vm *vm, struct segs *s, uint64_t table_gpa, int level, uint64_t base, bool w, bool x)
{
    const uint64_t *t = pvm__gpa_lookup(vm, table_gpa & PVM_PTE_ADDR, 4096, NULL);
    if (!t)
        return 0; /* not RAM: nothing mapped below */
    if (++s->tables > CORE_MAX_TABLES)
        return -1;
    for (unsigned i = 0; i < 512; i++) {
        uint64_t e = t[i];
        if (!(e & PVM_PTE_P))
            continue;
        uint64_t gva = base + ((uint64_t)i << (12 + 9 * level));
        if (level == 3 && i >= 256)
            gva |= 0xffff000000000000ull; /* canonical upper half */
        bool ew = w && (e & PVM_PTE_W), ex = x && !(e & PVM_PTE_NX);
        if (level == 0 || (level <= 2 && (e & PVM_PTE_PS))) {
            uint64_t size = 4096ull << (9 * level);
            uint64_t gpa = e & PVM_PTE_ADDR & ~(size - 1);
            const uint8_t *h = pvm__gpa_lookup(vm, gpa, size, NULL);
            if (h && add_seg(s, gva, size, h, PF_R | (ew ? PF_W : 0) | (ex ? PF_X : 0)) < 0)
                return -1;
        } else if (walk(vm, s, e, level - 1, gva, ew, ex) < 0) {
            return -1;
        }
    }
    return 0;
}

static void fill_prstatus(struct elf_prstatus *p, uint32_t id, const struct pvm_regs *r, const struct pvm_sregs *s)
{
    struct user_regs_struct u = {
        .r15 = r->r15, .r14 = r->r14, .r13 = r->r13, .r12 = r->r12, .rbp = r->rbp, .rbx = r->rbx,
        .r11 = r->r11, .r10 = r->r10, .r9 = r->r9, .r8 = r->r8, .rax = r->rax, .rcx = r->rcx,
        .rdx = r->rdx, .rsi = r->rsi, .rdi = r->rdi, .orig_rax = UINT64_MAX, .rip = r->rip,
        .cs = s->cs, .eflags = r->rflags, .rsp = r->rsp, .ss = s->ss, .fs_base = s->fs_base,
        .gs_base = s->gs_base, .ds = s->ds, .es = s->es, .fs = s->fs, .gs = s->gs,
    };
    memset(p, 0, sizeof(*p));
    p->pr_pid = (pid_t)id + 1; /* gdb's thread ids: vCPU n is "LWP n+1" */
    _Static_assert(sizeof(p->pr_reg) == sizeof(u), "elf_gregset_t is user_regs_struct");
    memcpy(&p->pr_reg, &u, sizeof(u));
}

static int write_all(int fd, const void *buf, size_t len, off_t off)
{
    const uint8_t *b = buf;
    while (len) {
        ssize_t n = pwrite(fd, b, len, off);
        if (n <= 0)
            return -1;
        b += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

int pvm_vm_write_core(pvm_vm *vm, const char *path)
{
    pvm__clear_error();
    if (!vm || !path)
        return pvm__error(PVM_EINVAL, "pvm_vm_write_core: NULL argument");

    /* The vCPUs and their registers, taken while none runs (vm->lock keeps the list still). */
    uint32_t n = 0, max = vm->opts.max_vcpus;
    struct elf_prstatus *ps = calloc(max ? max : 1, sizeof(*ps));
    uint64_t cr3 = 0;
    int rc = 0;
    if (!ps)
        return pvm__error(PVM_ENOMEM, "pvm_vm_write_core: out of memory");
    pthread_mutex_lock(&vm->lock);
    for (uint32_t i = 0; i < max && rc == 0; i++) {
        pvm_vcpu *v = vm->vcpus[i];
        if (!v || !v->ready)
            continue;
        struct pvm_regs r;
        struct pvm_sregs s;
        if (__atomic_load_n(&v->running, __ATOMIC_ACQUIRE))
            rc = pvm__error(PVM_EBUSY, "pvm_vm_write_core: vCPU %u is running", v->id);
        else if (vm->ops->get_regs(v, &r) < 0 || vm->ops->get_sregs(v, &s) < 0)
            rc = PVM_EINTERNAL;
        else {
            if (!n)
                cr3 = s.cr3;
            fill_prstatus(&ps[n++], v->id, &r, &s);
        }
    }
    pthread_mutex_unlock(&vm->lock);
    if (rc == 0 && !n)
        rc = pvm__error(PVM_ESTATE, "pvm_vm_write_core: the VM has no vCPU");
    if (rc < 0) {
        free(ps);
        return rc;
    }

    /* Guest memory as vCPU 0 sees it; its host pointers stay valid until pvm__mem_leave (pvm_vm.mem_users). */
    struct segs s = { 0 };
    pvm__mem_enter(vm);
    if (walk(vm, &s, cr3, 3, 0, true, true) < 0) {
        pvm__mem_leave(vm);
        free(ps);
        free(s.v);
        return pvm__error(PVM_ERANGE, "pvm_vm_write_core: the guest's page tables map more than %u segments, "
                          "%llu bytes or %u tables", CORE_MAX_SEGMENTS, (unsigned long long)CORE_MAX_BYTES,
                          CORE_MAX_TABLES);
    }

    /* Layout: ELF header, program headers (PT_NOTE, then one PT_LOAD per segment), notes, data. */
    const size_t note_one = sizeof(Elf64_Nhdr) + 8 /* "CORE\0" padded */ + sizeof(struct elf_prstatus);
    size_t nph = 1 + s.n;
    uint64_t note_off = sizeof(Elf64_Ehdr) + nph * sizeof(Elf64_Phdr);
    uint64_t note_len = note_one * n;
    uint64_t data_off = (note_off + note_len + 4095) & ~4095ull;
    size_t hdr_len = data_off;
    uint8_t *hdr = calloc(1, hdr_len);
    if (!hdr) {
        pvm__mem_leave(vm);
        free(ps);
        free(s.v);
        return pvm__error(PVM_ENOMEM, "pvm_vm_write_core: out of memory");
    }
    Elf64_Ehdr *eh = (Elf64_Ehdr *)hdr;
    memcpy(eh->e_ident, ELFMAG, SELFMAG);
    eh->e_ident[EI_CLASS] = ELFCLASS64;
    eh->e_ident[EI_DATA] = ELFDATA2LSB;
    eh->e_ident[EI_VERSION] = EV_CURRENT;
    eh->e_ident[EI_OSABI] = ELFOSABI_NONE;
    eh->e_type = ET_CORE;
    eh->e_machine = EM_X86_64;
    eh->e_version = EV_CURRENT;
    eh->e_phoff = sizeof(Elf64_Ehdr);
    eh->e_ehsize = sizeof(Elf64_Ehdr);
    eh->e_phentsize = sizeof(Elf64_Phdr);
    _Static_assert(1 + CORE_MAX_SEGMENTS < PN_XNUM, "e_phnum holds every program header");
    eh->e_phnum = (uint16_t)nph;
    Elf64_Phdr *ph = (Elf64_Phdr *)(hdr + eh->e_phoff);
    ph[0] = (Elf64_Phdr){ .p_type = PT_NOTE, .p_offset = note_off, .p_filesz = note_len, .p_align = 4 };
    uint64_t off = data_off;
    for (size_t i = 0; i < s.n; i++) {
        ph[1 + i] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_flags = s.v[i].flags, .p_offset = off,
                                  .p_vaddr = s.v[i].gva, .p_filesz = s.v[i].len, .p_memsz = s.v[i].len,
                                  .p_align = 4096 };
        off += s.v[i].len;
    }
    uint8_t *np = hdr + note_off;
    for (uint32_t i = 0; i < n; i++) {
        Elf64_Nhdr nh = { .n_namesz = 5, .n_descsz = sizeof(struct elf_prstatus), .n_type = NT_PRSTATUS };
        memcpy(np, &nh, sizeof(nh));
        memcpy(np + sizeof(nh), "CORE", 5);
        memcpy(np + sizeof(nh) + 8, &ps[i], sizeof(ps[i]));
        np += note_one;
    }

    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        rc = pvm__error(PVM_EIO, "pvm_vm_write_core: %s: %s", path, strerror(errno));
    if (rc == 0 && write_all(fd, hdr, hdr_len, 0) < 0)
        rc = pvm__error(PVM_EIO, "pvm_vm_write_core: writing %s: %s", path, strerror(errno));
    off = data_off;
    for (size_t i = 0; rc == 0 && i < s.n; i++) {
        if (write_all(fd, s.v[i].host, s.v[i].len, (off_t)off) < 0)
            rc = pvm__error(PVM_EIO, "pvm_vm_write_core: writing %s: %s", path, strerror(errno));
        off += s.v[i].len;
    }
    pvm__mem_leave(vm);
    if (fd >= 0 && close(fd) < 0 && rc == 0)
        rc = pvm__error(PVM_EIO, "pvm_vm_write_core: closing %s: %s", path, strerror(errno));
    if (rc < 0 && fd >= 0)
        unlink(path);
    free(hdr);
    free(ps);
    free(s.v);
    return rc;
}
