/*
 * tests/kmod/kmod_test.c - the pvm module's ABI v1, run inside QEMU by kmod-e2e.
 *
 *   kmod_test            with pvm.ko loaded with small limits (max_pages_per_as <
 *                        max_pages_per_proc <= 2 x max_pages_per_as, both <= 4096):
 *                        node, version/info, create/map/unmap/close, every entry of
 *                        the page tables (debugfs, against pagemap), every bad
 *                        argument's errno, memory the caller does not own, limits,
 *                        fork, an address space outliving its creator, threads, many
 *                        address spaces, unload refused while one is open
 *   kmod_test group GID  with pvm.ko group=GID: the node is root:GID 0660 and only
 *                        root and GID's members can open it
 *
 * Every check prints its line on failure; the exit status is 0 only if all
 * passed, and each mode ends by asserting that the module's counters are 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pvm/kmod.h>

#define PG 4096ull

#include "kcheck.h"

int failures;

#define CHECK_OK(expr)                                                          \
    do {                                                                        \
        errno = 0;                                                              \
        long r_ = (long)(expr);                                                 \
        if (r_ < 0) {                                                           \
            fprintf(stderr, "FAIL %s:%d: %s = %ld (%s)\n", __FILE__, __LINE__,  \
                    #expr, r_, strerror(errno));                                \
            failures++;                                                         \
        }                                                                       \
    } while (0)

static int open_dev(void)
{
    int fd = open(PVM_KMOD_DEVICE, O_RDWR | O_CLOEXEC);

    if (fd < 0) {
        perror("open " PVM_KMOD_DEVICE);
        exit(1);
    }
    return fd;
}

static struct pvm_kmod_info info_of(int dev)
{
    struct pvm_kmod_info i;

    memset(&i, 0xa5, sizeof(i));
    CHECK_OK(ioctl(dev, PVM_KMOD_INFO, &i));
    return i;
}

static struct pvm_kmod_as_info as_info_of(int as)
{
    struct pvm_kmod_as_info i;

    memset(&i, 0xa5, sizeof(i));
    CHECK_OK(ioctl(as, PVM_KMOD_AS_INFO, &i));
    return i;
}

static int create_as(int dev)
{
    struct pvm_kmod_create_as c = {0};
    int fd = ioctl(dev, PVM_KMOD_CREATE_AS, &c);

    if (fd < 0) {
        perror("PVM_KMOD_CREATE_AS");
        exit(1);
    }
    return fd;
}

static int map(int as, uint64_t gva, const void *uaddr, uint64_t len, uint32_t flags)
{
    struct pvm_kmod_map m = {.gva = gva, .uaddr = (uintptr_t)uaddr, .len = len, .flags = flags};

    return ioctl(as, PVM_KMOD_AS_MAP, &m);
}

static int unmap(int as, uint64_t gva, uint64_t len)
{
    struct pvm_kmod_unmap u = {.gva = gva, .len = len};

    return ioctl(as, PVM_KMOD_AS_UNMAP, &u);
}

static void *anon(size_t pages, int prot)
{
    void *p = mmap(NULL, pages * PG, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

static unsigned long param(const char *name)
{
    char path[128], buf[64] = "";
    FILE *f;

    snprintf(path, sizeof(path), "/sys/module/pvm/parameters/%s", name);
    f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof(buf), f)) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    return strtoul(buf, NULL, 0);
}

static void check_zero(int dev, const char *when)
{
    struct pvm_kmod_info i = info_of(dev);

    if (i.nr_as || i.nr_pinned || i.nr_tables || i.nr_procs || i.caller_pages) {
        fprintf(stderr, "FAIL %s: counters not 0: as %llu pinned %llu tables %llu procs %llu caller %llu\n",
                when, (unsigned long long)i.nr_as, (unsigned long long)i.nr_pinned,
                (unsigned long long)i.nr_tables, (unsigned long long)i.nr_procs,
                (unsigned long long)i.caller_pages);
        failures++;
    }
}

/* Run fn in a child with the given ids; returns its exit status. */
static int as_user(uid_t uid, gid_t gid, int (*fn)(void))
{
    pid_t pid = fork();
    int st;

    if (pid == 0) {
        if (setgroups(0, NULL) || setgid(gid) || setuid(uid))
            _exit(99);
        _exit(fn());
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

/* 0 opened and got version 1; 1 EACCES; 2 anything else. */
static int try_open(void)
{
    int fd = open(PVM_KMOD_DEVICE, O_RDWR);

    if (fd < 0)
        return errno == EACCES ? 1 : 2;
    return ioctl(fd, PVM_KMOD_GET_VERSION, 0) == (int)PVM_KMOD_ABI_VERSION ? 0 : 2;
}

static void test_node(unsigned mode, gid_t gid)
{
    struct stat st;

    CHECK(stat(PVM_KMOD_DEVICE, &st) == 0);
    CHECK(S_ISCHR(st.st_mode));
    CHECK((st.st_mode & 07777) == mode);
    CHECK(st.st_uid == 0);
    CHECK(st.st_gid == gid);
}

static void test_version_info(int dev)
{
    struct pvm_kmod_info i;

    CHECK(ioctl(dev, PVM_KMOD_GET_VERSION, 0) == (int)PVM_KMOD_ABI_VERSION);
    CHECK_ERR(ioctl(dev, PVM_KMOD_GET_VERSION, 1), EINVAL);
    i = info_of(dev);
    CHECK(i.abi_version == PVM_KMOD_ABI_VERSION);
    CHECK(i.size == sizeof(struct pvm_kmod_info));
    CHECK(i.gva_low_end == 0x0000800000000000ull);
    CHECK(i.gva_high_start == 0xffff800000000000ull);
    CHECK(i.gva_high_end == 0xffffff8000000000ull);
    CHECK(i.map_max_len == 1ull << 30);
    CHECK(i.max_pages_per_as == param("max_pages_per_as"));
    CHECK(i.max_pages_per_proc == param("max_pages_per_proc"));
    CHECK(i.map_flags == (PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE | PVM_KMOD_MAP_EXEC));
    CHECK(i.pad0 == 0);
    for (unsigned k = 0; k < sizeof(i.reserved) / sizeof(i.reserved[0]); k++)
        CHECK(i.reserved[k] == 0);
    CHECK_ERR(ioctl(dev, PVM_KMOD_INFO, NULL), EFAULT);
    CHECK_ERR(ioctl(dev, PVM_KMOD_INFO, (void *)1), EFAULT);
    CHECK_ERR(ioctl(dev, _IO(PVM_KMOD_IOC_MAGIC, 0x7f), 0), ENOTTY);
    CHECK_ERR(ioctl(dev, _IOR(PVM_KMOD_IOC_MAGIC, 0x01, uint64_t), &i), ENOTTY); /* wrong size */
    CHECK_ERR(ioctl(dev, PVM_KMOD_AS_INFO, &i), ENOTTY);
}

static void test_create(int dev)
{
    struct pvm_kmod_create_as c;
    char link[64], target[64] = "";
    int as;

    memset(&c, 0, sizeof(c));
    c.flags = 1;
    CHECK_ERR(ioctl(dev, PVM_KMOD_CREATE_AS, &c), EINVAL);
    memset(&c, 0, sizeof(c));
    c.pad0 = 1;
    CHECK_ERR(ioctl(dev, PVM_KMOD_CREATE_AS, &c), EINVAL);
    for (unsigned k = 0; k < 3; k++) {
        memset(&c, 0, sizeof(c));
        c.reserved[k] = 1;
        CHECK_ERR(ioctl(dev, PVM_KMOD_CREATE_AS, &c), EINVAL);
    }
    CHECK_ERR(ioctl(dev, PVM_KMOD_CREATE_AS, NULL), EFAULT);
    check_zero(dev, "after refused creates");

    as = create_as(dev);
    CHECK(fcntl(as, F_GETFD) == FD_CLOEXEC);
    snprintf(link, sizeof(link), "/proc/self/fd/%d", as);
    CHECK(readlink(link, target, sizeof(target) - 1) > 0);
    CHECK(strcmp(target, "anon_inode:[pvm-as]") == 0);
    CHECK(info_of(dev).nr_as == 1);
    CHECK(info_of(dev).nr_procs == 1);
    CHECK(info_of(dev).nr_tables == 1); /* the PML4 */
    CHECK(as_info_of(as).mapped_pages == 0 && as_info_of(as).table_pages == 1);
    CHECK_ERR(ioctl(as, PVM_KMOD_INFO, &c), ENOTTY);
    CHECK_ERR(ioctl(as, PVM_KMOD_GET_VERSION, 0), ENOTTY);
    CHECK_ERR(ioctl(as, PVM_KMOD_AS_INFO, NULL), EFAULT);
    close(as);
    check_zero(dev, "after close");
}

static void test_map_unmap(int dev)
{
    const uint32_t rw = PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE;
    char *buf = anon(16, PROT_READ | PROT_WRITE);
    int as = create_as(dev);
    struct pvm_kmod_as_info a;

    CHECK_OK(map(as, 0x400000, buf, 16 * PG, rw));
    a = as_info_of(as);
    CHECK(a.mapped_pages == 16 && a.table_pages == 4);
    CHECK(info_of(dev).nr_pinned == 16 && info_of(dev).nr_tables == 4);
    CHECK(info_of(dev).caller_pages == 16);
    /* Already mapped, wholly or partly: refused, nothing changes. */
    CHECK_ERR(map(as, 0x400000, buf, PG, rw), EEXIST);
    CHECK_ERR(map(as, 0x400000 - 4 * PG, buf, 8 * PG, rw), EEXIST);
    CHECK_ERR(map(as, 0x400000 + 15 * PG, buf, 2 * PG, rw), EEXIST);
    a = as_info_of(as);
    CHECK(a.mapped_pages == 16 && a.table_pages == 4 && info_of(dev).caller_pages == 16);
    /* Beside it (the previous 2 MiB: a page table of its own), the same user page again. */
    CHECK_OK(map(as, 0x400000 - PG, buf, PG, PVM_KMOD_MAP_READ | PVM_KMOD_MAP_EXEC));
    a = as_info_of(as);
    CHECK(a.mapped_pages == 17 && a.table_pages == 5 && info_of(dev).nr_pinned == 17);
    /* Unmap part, a hole, then a table's last page, then all: tables go when empty. */
    CHECK_OK(unmap(as, 0x400000 + 4 * PG, 4 * PG));
    CHECK(as_info_of(as).mapped_pages == 13 && as_info_of(as).table_pages == 5);
    CHECK_OK(unmap(as, 0x400000 - PG, PG));
    CHECK(as_info_of(as).mapped_pages == 12 && as_info_of(as).table_pages == 4);
    CHECK_OK(unmap(as, 0x400000 + 4 * PG, 4 * PG));
    CHECK(as_info_of(as).mapped_pages == 12);
    CHECK_OK(unmap(as, 0, PVM_KMOD_GVA_LOW_END));
    a = as_info_of(as);
    CHECK(a.mapped_pages == 0 && a.table_pages == 1);
    CHECK(info_of(dev).nr_pinned == 0 && info_of(dev).caller_pages == 0);

    /* The edges of both ranges; each page its own three tables. */
    CHECK_OK(map(as, 0, buf, PG, PVM_KMOD_MAP_READ));
    CHECK_OK(map(as, PVM_KMOD_GVA_LOW_END - PG, buf, PG, rw));
    CHECK_OK(map(as, PVM_KMOD_GVA_HIGH_START, buf, PG, rw));
    CHECK_OK(map(as, PVM_KMOD_GVA_HIGH_END - PG, buf, PG, PVM_KMOD_MAP_ALL));
    a = as_info_of(as);
    CHECK(a.mapped_pages == 4 && a.table_pages == 1 + 4 * 3);
    CHECK_OK(unmap(as, PVM_KMOD_GVA_HIGH_START, PVM_KMOD_GVA_HIGH_END - PVM_KMOD_GVA_HIGH_START));
    a = as_info_of(as);
    CHECK(a.mapped_pages == 2 && a.table_pages == 1 + 2 * 3);

    /* Pinned while mapped, whatever the process does with its own mapping. */
    CHECK_OK(munmap(buf, 16 * PG));
    CHECK(info_of(dev).nr_pinned == 2);
    close(as); /* with mappings: close unpins and frees all */
    check_zero(dev, "after map/unmap");
}

static uint64_t vvar_addr(void)
{
    char line[256];
    unsigned long lo = 0;
    FILE *f = fopen("/proc/self/maps", "r");

    while (f && fgets(line, sizeof(line), f))
        if (strstr(line, "[vvar]") && sscanf(line, "%lx-", &lo) == 1)
            break;
    if (f)
        fclose(f);
    return lo;
}

static void test_bad_map_args(int dev)
{
    const uint32_t r = PVM_KMOD_MAP_READ, rw = PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE;
    char *buf = anon(4, PROT_READ | PROT_WRITE);
    char *ro = anon(1, PROT_READ), *none = anon(1, PROT_NONE), *hole = anon(3, PROT_READ | PROT_WRITE);
    int as = create_as(dev), mfd;
    struct pvm_kmod_map m;
    struct pvm_kmod_unmap u;
    void *vdso = (void *)getauxval(AT_SYSINFO_EHDR);
    uint64_t vvar = vvar_addr();

    CHECK_OK(munmap(hole + PG, 2 * PG)); /* hole: one page, then nothing */

    /* Alignment, length, ranges. */
    CHECK_ERR(map(as, 0x400001, buf, PG, r), EINVAL);
    CHECK_ERR(map(as, 0x400800, buf, PG, r), EINVAL);
    CHECK_ERR(map(as, 0x400000, buf + 1, PG, r), EINVAL);
    CHECK_ERR(map(as, 0x400000, buf, 0, r), EINVAL);
    CHECK_ERR(map(as, 0x400000, buf, PG + 1, r), EINVAL);
    CHECK_ERR(map(as, 0x400000, buf, PG - 1, r), EINVAL);
    CHECK_ERR(map(as, 0x400000, buf, PVM_KMOD_MAP_MAX_LEN + PG, r), EINVAL);
    CHECK_ERR(map(as, 0xfffffffffffff000ull, buf, 2 * PG, r), EINVAL);  /* gva + len wraps */
    CHECK_ERR(map(as, 0x0000800000000000ull, buf, PG, r), EINVAL);      /* non-canonical */
    CHECK_ERR(map(as, 0x8000000000000000ull, buf, PG, r), EINVAL);
    CHECK_ERR(map(as, 0xffff7ffffffff000ull, buf, PG, r), EINVAL);
    CHECK_ERR(map(as, PVM_KMOD_GVA_LOW_END - PG, buf, 2 * PG, r), EINVAL); /* crosses the hole */
    CHECK_ERR(map(as, PVM_KMOD_GVA_HIGH_END, buf, PG, r), EINVAL);      /* the module's slot */
    CHECK_ERR(map(as, 0xfffffffffffff000ull, buf, PG, r), EINVAL);
    CHECK_ERR(map(as, PVM_KMOD_GVA_HIGH_END - PG, buf, 2 * PG, r), EINVAL);
    CHECK_ERR(map(as, 0x400000, (void *)0xfffffffffffff000ull, 2 * PG, r), EINVAL); /* uaddr wraps */
    /* Flags and reserved fields. */
    CHECK_ERR(map(as, 0x400000, buf, PG, 0), EINVAL);
    CHECK_ERR(map(as, 0x400000, buf, PG, PVM_KMOD_MAP_WRITE), EINVAL);
    CHECK_ERR(map(as, 0x400000, buf, PG, PVM_KMOD_MAP_EXEC), EINVAL);
    CHECK_ERR(map(as, 0x400000, buf, PG, r | 0x8), EINVAL);
    CHECK_ERR(map(as, 0x400000, buf, PG, r | 0x80000000u), EINVAL);
    memset(&m, 0, sizeof(m));
    m.gva = 0x400000, m.uaddr = (uintptr_t)buf, m.len = PG, m.flags = r, m.pad0 = 1;
    CHECK_ERR(ioctl(as, PVM_KMOD_AS_MAP, &m), EINVAL);
    m.pad0 = 0, m.reserved[0] = 1;
    CHECK_ERR(ioctl(as, PVM_KMOD_AS_MAP, &m), EINVAL);
    m.reserved[0] = 0, m.reserved[1] = 1;
    CHECK_ERR(ioctl(as, PVM_KMOD_AS_MAP, &m), EINVAL);
    CHECK_ERR(ioctl(as, PVM_KMOD_AS_MAP, NULL), EFAULT);
    CHECK_ERR(ioctl(as, PVM_KMOD_AS_MAP, (void *)8), EFAULT);

    /* Memory the caller does not own, or may not use that way. */
    CHECK_ERR(map(as, 0x400000, (void *)0xffff888000000000ull, PG, r), EFAULT); /* the kernel */
    CHECK_ERR(map(as, 0x400000, (void *)0xffffffffff600000ull, PG, r), EFAULT); /* vsyscall */
    CHECK_ERR(map(as, 0x400000, (void *)0x0000800000000000ull, PG, r), EFAULT); /* above user space */
    CHECK_ERR(map(as, 0x400000, hole + PG, PG, r), EFAULT);                      /* nothing there */
    CHECK_ERR(map(as, 0x400000, hole, 2 * PG, r), EFAULT);                       /* ends in a hole */
    CHECK_ERR(map(as, 0x400000, ro, PG, rw), EFAULT);                            /* read-only */
    CHECK_ERR(map(as, 0x400000, none, PG, r), EFAULT);                           /* PROT_NONE */
    CHECK(vdso != NULL);
    CHECK_ERR(map(as, 0x400000, vdso, PG, r), EFAULT);                           /* the vDSO */
    CHECK(vvar != 0);
    CHECK_ERR(map(as, 0x400000, (void *)vvar, PG, r), EFAULT);                   /* vvar (PFNMAP) */
    CHECK(as_info_of(as).mapped_pages == 0 && as_info_of(as).table_pages == 1);
    CHECK(info_of(dev).nr_pinned == 0 && info_of(dev).caller_pages == 0);

    /* What the caller does own: read-only memory read-only, memfd, shared anonymous. */
    CHECK_OK(map(as, 0x400000, ro, PG, r));
    mfd = memfd_create("kmod_test", MFD_CLOEXEC);
    CHECK(mfd >= 0 && ftruncate(mfd, 2 * PG) == 0);
    {
        void *mp = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
        void *sh = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

        CHECK(mp != MAP_FAILED && sh != MAP_FAILED);
        CHECK_OK(map(as, 0x500000, mp, 2 * PG, rw | PVM_KMOD_MAP_EXEC));
        CHECK_OK(map(as, 0x600000, sh, PG, rw));
        munmap(mp, 2 * PG);
        munmap(sh, PG);
    }
    close(mfd);
    CHECK(as_info_of(as).mapped_pages == 4);

    /* UNMAP's arguments. */
    CHECK_ERR(unmap(as, 0x400001, PG), EINVAL);
    CHECK_ERR(unmap(as, 0x400000, 0), EINVAL);
    CHECK_ERR(unmap(as, 0x400000, 100), EINVAL);
    CHECK_ERR(unmap(as, 0x0000800000000000ull, PG), EINVAL);
    CHECK_ERR(unmap(as, PVM_KMOD_GVA_HIGH_END, PG), EINVAL);
    CHECK_ERR(unmap(as, 0, PVM_KMOD_GVA_LOW_END + PG), EINVAL);
    CHECK_ERR(unmap(as, 0xfffffffffffff000ull, 2 * PG), EINVAL);
    memset(&u, 0, sizeof(u));
    u.gva = 0x400000, u.len = PG, u.flags = 1;
    CHECK_ERR(ioctl(as, PVM_KMOD_AS_UNMAP, &u), EINVAL);
    u.flags = 0, u.pad0 = 1;
    CHECK_ERR(ioctl(as, PVM_KMOD_AS_UNMAP, &u), EINVAL);
    u.pad0 = 0, u.reserved[1] = 1;
    CHECK_ERR(ioctl(as, PVM_KMOD_AS_UNMAP, &u), EINVAL);
    CHECK_ERR(ioctl(as, PVM_KMOD_AS_UNMAP, NULL), EFAULT);
    CHECK_ERR(ioctl(as, _IO(PVM_KMOD_IOC_MAGIC, 0x13), 0), ENOTTY);
    CHECK(as_info_of(as).mapped_pages == 4);

    close(as);
    munmap(buf, 4 * PG);
    munmap(ro, PG);
    munmap(none, PG);
    munmap(hole, PG);
    check_zero(dev, "after bad arguments");
}

static void test_limits(int dev)
{
    const uint32_t rw = PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE;
    struct pvm_kmod_info i = info_of(dev);
    uint64_t per_as = i.max_pages_per_as, per_proc = i.max_pages_per_proc, rest = per_proc - per_as;
    char *buf;
    int a, b;

    if (!(per_as < per_proc && rest < per_as && per_proc <= 4096)) {
        fprintf(stderr, "FAIL: load pvm.ko with max_pages_per_as < max_pages_per_proc <= "
                        "2 x max_pages_per_as <= 4096 for this test\n");
        failures++;
        return;
    }
    buf = anon(per_proc + 1, PROT_READ | PROT_WRITE);
    a = create_as(dev);
    b = create_as(dev);
    CHECK(info_of(dev).nr_procs == 1);
    /* The address space's limit. */
    CHECK_ERR(map(a, 0, buf, (per_as + 1) * PG, rw), ENOSPC);
    CHECK_OK(map(a, 0, buf, per_as * PG, rw));
    CHECK_ERR(map(a, per_as * PG, buf, PG, rw), ENOSPC);
    /* The process's, over both address spaces. */
    CHECK_ERR(map(b, 0, buf, (rest + 1) * PG, rw), EDQUOT);
    CHECK_OK(map(b, 0, buf, rest * PG, rw));
    CHECK(info_of(dev).caller_pages == per_proc);
    CHECK_ERR(map(b, rest * PG, buf, PG, rw), EDQUOT);
    /* A refused map leaves nothing behind. */
    CHECK(as_info_of(b).mapped_pages == rest && info_of(dev).nr_pinned == per_proc);
    /* Freed pages count again. */
    CHECK_OK(unmap(a, 0, PG));
    CHECK_OK(map(b, rest * PG, buf, PG, rw));
    CHECK_ERR(map(a, 0, buf, PG, rw), EDQUOT);
    close(b); /* closing gives its pages back */
    CHECK(info_of(dev).caller_pages == per_as - 1);
    CHECK_OK(map(a, 0, buf, PG, rw));
    close(a);
    munmap(buf, (per_proc + 1) * PG);
    check_zero(dev, "after limits");
}

static int fork_child(int dev, int parent_as, uint64_t parent_pages)
{
    char *buf = anon(8, PROT_READ | PROT_WRITE);
    int as;

    failures = 0;
    /* Not the creating process: it may look but not map or unmap. */
    CHECK_ERR(map(parent_as, 0x10000000, buf, PG, PVM_KMOD_MAP_READ), EPERM);
    CHECK_ERR(unmap(parent_as, 0, PG), EPERM);
    CHECK(as_info_of(parent_as).mapped_pages == parent_pages);
    /* Its own address space, with its own quota although the parent is at its limit. */
    as = create_as(dev);
    CHECK_OK(map(as, 0x1000, buf, 8 * PG, PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE));
    CHECK(info_of(dev).nr_procs == 2 && info_of(dev).caller_pages == 8);
    return failures ? 1 : 0; /* exits with its address space open */
}

static void test_fork(int dev)
{
    uint64_t per_proc = info_of(dev).max_pages_per_proc;
    char *buf = anon(per_proc, PROT_READ | PROT_WRITE);
    int as = create_as(dev), as2 = create_as(dev), st = -1;
    pid_t pid;

    /* The parent at its process limit, over two address spaces. */
    CHECK_OK(map(as, 0, buf, (per_proc / 2) * PG, PVM_KMOD_MAP_READ));
    CHECK_OK(map(as2, 0, buf + (per_proc / 2) * PG, (per_proc - per_proc / 2) * PG, PVM_KMOD_MAP_READ));
    pid = fork();
    if (pid == 0)
        _exit(fork_child(dev, as, per_proc / 2));
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(info_of(dev).nr_procs == 1 && info_of(dev).nr_pinned == per_proc);
    CHECK(info_of(dev).nr_as == 2);
    close(as);
    close(as2);
    munmap(buf, per_proc * PG);
    check_zero(dev, "after fork");
}

/*
 * An address space that outlives its creator: the grandchild keeps the fd after
 * the child (the owner) exited; it may look, not map, and its close unpins pages
 * of an mm that no longer runs.
 */
static int orphan_child(int dev)
{
    char *buf = anon(4, PROT_READ | PROT_WRITE);
    int as = create_as(dev), pipefd[2];
    pid_t pid;
    char c;

    failures = 0;
    CHECK_OK(map(as, 0x200000, buf, 4 * PG, PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE));
    if (pipe(pipefd))
        return 1;
    pid = fork();
    if (pid == 0) {
        close(pipefd[1]);
        (void)!read(pipefd[0], &c, 1); /* EOF: the owner has exited */
        while (getppid() != 1)         /* and is gone, not just closing */
            usleep(1000);
        CHECK(as_info_of(as).mapped_pages == 4);
        CHECK(info_of(dev).nr_procs == 1 && info_of(dev).nr_pinned == 4); /* its mm only */
        CHECK_ERR(map(as, 0, buf, PG, PVM_KMOD_MAP_READ), EPERM);
        close(as);
        CHECK(info_of(dev).nr_procs == 0 && info_of(dev).nr_pinned == 0);
        _exit(failures ? 1 : 0);
    }
    return pid > 0 ? 0 : 1; /* exits at once, the fd still open in the grandchild */
}

static void test_orphan(int dev)
{
    pid_t pid = fork();
    int st = -1;

    if (pid == 0)
        _exit(orphan_child(dev));
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* The grandchild is not ours to wait for: wait for its close instead. */
    for (int k = 0; k < 5000 && info_of(dev).nr_as != 0; k++)
        usleep(1000);
    check_zero(dev, "after the orphaned address space");
}

/* Threads mapping, unmapping and reading counters of one address space at once. */
struct race {
    int dev, as;
    char *buf;
    uint64_t base;
    int errors;
};

static void *race_thread(void *arg)
{
    struct race *r = arg;

    for (int k = 0; k < 200; k++) {
        if (map(r->as, r->base, r->buf, 8 * PG, PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE) ||
            map(r->as, r->base, r->buf, PG, PVM_KMOD_MAP_READ) != -1 || errno != EEXIST ||
            unmap(r->as, r->base, 8 * PG))
            r->errors++;
        struct pvm_kmod_info i;
        if (ioctl(r->dev, PVM_KMOD_INFO, &i))
            r->errors++;
    }
    return NULL;
}

static void test_threads(int dev)
{
    enum { T = 4 };
    char *buf = anon(8, PROT_READ | PROT_WRITE);
    int as = create_as(dev);
    struct race r[T];
    pthread_t t[T];

    for (int k = 0; k < T; k++) {
        r[k] = (struct race){.dev = dev, .as = as, .buf = buf, .base = (uint64_t)k << 21};
        CHECK(pthread_create(&t[k], NULL, race_thread, &r[k]) == 0);
    }
    for (int k = 0; k < T; k++) {
        CHECK(pthread_join(t[k], NULL) == 0);
        CHECK(r[k].errors == 0);
    }
    CHECK(as_info_of(as).mapped_pages == 0 && as_info_of(as).table_pages == 1);
    close(as);
    munmap(buf, 8 * PG);
    check_zero(dev, "after threads");
}

/* The debugfs line of (as id, gva): the entries on its path; false if none. */
static bool dump_entries(uint64_t id, uint64_t gva, uint64_t e[4], unsigned *lines_of_id)
{
    FILE *f = fopen("/sys/kernel/debug/pvm/tables", "r");
    unsigned long long lid, lgva, x[4];
    bool found = false;

    *lines_of_id = 0;
    if (!f) {
        perror("/sys/kernel/debug/pvm/tables");
        return false;
    }
    while (fscanf(f, "%llu %llx %llx %llx %llx %llx", &lid, &lgva, &x[0], &x[1], &x[2], &x[3]) == 6) {
        if (lid != id)
            continue;
        ++*lines_of_id;
        if (lgva == gva) {
            for (int k = 0; k < 4; k++)
                e[k] = x[k];
            found = true;
        }
    }
    fclose(f);
    return found;
}

/* The frame behind one of our pages (root sees frames in pagemap). */
static uint64_t pfn_of(const void *p)
{
    uint64_t v = 0;
    int fd = open("/proc/self/pagemap", O_RDONLY);

    if (fd < 0 || pread(fd, &v, 8, (off_t)((uintptr_t)p / PG * 8)) != 8)
        v = 0;
    if (fd >= 0)
        close(fd);
    return (v >> 63) ? (v & ((1ull << 55) - 1)) : 0;
}

/* Every bit of every entry on the path of a leaf, and its frame. */
static void check_leaf(uint64_t id, uint64_t gva, const void *user, uint64_t want_flags)
{
    const uint64_t addr = 0x000ffffffffff000ull;
    uint64_t e[4] = {0}, pfn = pfn_of(user);
    unsigned lines;

    CHECK(pfn != 0);
    if (!dump_entries(id, gva, e, &lines)) {
        fprintf(stderr, "FAIL: no leaf for gva %#llx in address space %llu\n",
                (unsigned long long)gva, (unsigned long long)id);
        failures++;
        return;
    }
    for (int k = 0; k < 3; k++) /* P|RW|US|A, no NX: the leaf decides */
        CHECK((e[k] & ~addr) == 0x27);
    CHECK((e[3] & addr) >> 12 == pfn);
    if ((e[3] & ~addr) != want_flags) {
        fprintf(stderr, "FAIL: gva %#llx leaf flags %#llx, want %#llx\n", (unsigned long long)gva,
                (unsigned long long)(e[3] & ~addr), (unsigned long long)want_flags);
        failures++;
    }
}

static void test_tables(int dev)
{
    const uint64_t nx = 1ull << 63, r = nx | 0x25, rw = nx | 0x67, rx = 0x25, rwx = 0x67;
    const uint64_t hi = PVM_KMOD_GVA_HIGH_END - PG;
    char *buf = anon(4, PROT_READ | PROT_WRITE);
    int as = create_as(dev), mfd = memfd_create("kmod_tables", MFD_CLOEXEC);
    char *mp;
    uint64_t id = as_info_of(as).id, e[4];
    unsigned lines;

    CHECK(id != 0 && mfd >= 0 && ftruncate(mfd, PG) == 0);
    mp = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    CHECK(mp != MAP_FAILED);
    mp[0] = 1; /* a page in the page cache for pagemap to show */
    CHECK_OK(map(as, 0x400000, buf, 2 * PG, PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE));
    CHECK_OK(map(as, 0x7ffffffff000ull, buf + 2 * PG, PG, PVM_KMOD_MAP_READ));
    CHECK_OK(map(as, PVM_KMOD_GVA_HIGH_START + PG, mp, PG, PVM_KMOD_MAP_READ | PVM_KMOD_MAP_EXEC));
    CHECK_OK(map(as, hi, buf + 3 * PG, PG, PVM_KMOD_MAP_ALL));
    check_leaf(id, 0x400000, buf, rw);
    check_leaf(id, 0x401000, buf + PG, rw);
    check_leaf(id, 0x7ffffffff000ull, buf + 2 * PG, r);
    check_leaf(id, PVM_KMOD_GVA_HIGH_START + PG, mp, rx);
    check_leaf(id, hi, buf + 3 * PG, rwx);
    CHECK(dump_entries(id, 0x400000, e, &lines) && lines == 5);
    CHECK_OK(unmap(as, 0x400000, PG));
    CHECK(!dump_entries(id, 0x400000, e, &lines) && lines == 4);
    check_leaf(id, 0x401000, buf + PG, rw);
    close(as);
    CHECK(!dump_entries(id, 0x401000, e, &lines) && lines == 0);
    munmap(mp, PG);
    close(mfd);
    munmap(buf, 4 * PG);
    check_zero(dev, "after tables");
}

static void test_many(int dev)
{
    enum { N = 48 };
    char *buf = anon(4, PROT_READ | PROT_WRITE);
    int as[N];

    for (int k = 0; k < N; k++) {
        as[k] = create_as(dev);
        CHECK_OK(map(as[k], (uint64_t)k << 30, buf, 2 * PG, PVM_KMOD_MAP_READ | PVM_KMOD_MAP_WRITE));
        CHECK_OK(map(as[k], PVM_KMOD_GVA_HIGH_START + ((uint64_t)k << 39), buf + 2 * PG, PG,
                     PVM_KMOD_MAP_READ | PVM_KMOD_MAP_EXEC));
        CHECK_OK(map(as[k], 0x7f0000000000ull + (uint64_t)k * PG, buf + 3 * PG, PG, PVM_KMOD_MAP_READ));
    }
    CHECK(info_of(dev).nr_as == N && info_of(dev).nr_pinned == 4 * N);
    CHECK(info_of(dev).nr_tables == N * (1 + 3 + 3 + 3));
    for (int k = 0; k < N; k++)
        close(as[k]);
    munmap(buf, 4 * PG);
    check_zero(dev, "after many address spaces");
}

/* With an address space open (and /dev/pvm closed) the module cannot go. */
static void test_busy(void)
{
    int dev = open_dev(), as = create_as(dev);
    char *buf = anon(1, PROT_READ | PROT_WRITE);

    CHECK_OK(map(as, 0, buf, PG, PVM_KMOD_MAP_READ));
    close(dev);
    CHECK_ERR(syscall(SYS_delete_module, "pvm", O_NONBLOCK), EWOULDBLOCK);
    close(as);
    dev = open_dev();
    check_zero(dev, "after busy");
    close(dev);
    munmap(buf, PG);
}

int main(int argc, char **argv)
{
    int dev;

    if (argc == 3 && strcmp(argv[1], "group") == 0) {
        gid_t gid = (gid_t)strtoul(argv[2], NULL, 0);

        test_node(0660, gid);
        CHECK(as_user(65534, gid, try_open) == 0);
        CHECK(as_user(65534, gid + 1, try_open) == 1);
        dev = open_dev();
        test_version_info(dev);
        check_zero(dev, "group mode");
        close(dev);
    } else if (argc == 1) {
        test_node(0600, 0);
        CHECK(as_user(65534, 65534, try_open) == 1);
        dev = open_dev();
        test_version_info(dev);
        check_zero(dev, "at start");
        test_create(dev);
        test_map_unmap(dev);
        test_tables(dev);
        test_bad_map_args(dev);
        test_limits(dev);
        test_fork(dev);
        test_orphan(dev);
        test_threads(dev);
        test_many(dev);
        close(dev);
        test_busy();
    } else {
        fprintf(stderr, "usage: kmod_test | kmod_test group GID\n");
        return 2;
    }
    printf("kmod_test %s: %s (%d failed checks)\n", argc == 1 ? "main" : "group",
           failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
