/*
 * lib/core/snapfile.c - snapshot files: pvm_snapshot_save() and
 * pvm_snapshot_load() (docs/design.md "Snapshot files").
 *
 * Layout, little-endian, every part 8-byte aligned:
 *   header    struct file_header (magic, version, sizes and counts)
 *   allocs    nr_allocs x struct pvm_snap_alloc
 *   regions   nr_regions x struct pvm_snap_region
 *   vcpus     nr_vcpus x { u32 id, u32 len, len bytes padded to 8 }
 *   pages     nr_pages x u64 page number (strictly increasing), then
 *             nr_pages x 4096 bytes of data (zero pages are not stored)
 *   trailer   u32 CRC32C of everything before it, u32 zero
 * A file is untrusted input: it is read whole, its size and checksum are
 * checked first, then every field; nothing is built from a file that fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshot.h"

#define FILE_MAGIC "PVMSNAP\0"
#define FILE_VERSION 1u

struct file_header {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t file_size;
    char format[PVM_SNAP_FORMAT_MAX];
    uint32_t backend, max_vcpus;
    uint64_t max_memory, ram_size;
    uint32_t nr_allocs, nr_regions, nr_vcpus, pad;
    uint64_t nr_pages;
};
_Static_assert(sizeof(struct file_header) == 104, "snapshot file header layout");
_Static_assert(sizeof(struct pvm_snap_alloc) == 16 && sizeof(struct pvm_snap_region) == 32,
               "snapshot file record layout");

/* ---- CRC32C (Castagnoli, reflected 0x82f63b78), table-driven, slice by 8 ---------- */

static uint32_t crc_table[8][256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

static uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^ crc_table[5][(w >> 16) & 0xff] ^
              crc_table[4][(w >> 24) & 0xff] ^ crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
              crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

/* ---- save --------------------------------------------------------------------- */

struct out {
    int fd;
    uint32_t crc;
    bool failed;
    uint8_t buf[1 << 16];
    size_t n;
};

static void flush_out(struct out *o)
{
    for (size_t done = 0; done < o->n && !o->failed;) {
        ssize_t w = write(o->fd, o->buf + done, o->n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            o->failed = true;
        else
            done += (size_t)w;
    }
    o->n = 0;
}

static void emit(struct out *o, const void *data, size_t len)
{
    o->crc = crc32c(o->crc, data, len);
    const uint8_t *p = data;
    while (len) {
        size_t k = sizeof(o->buf) - o->n < len ? sizeof(o->buf) - o->n : len;
        memcpy(o->buf + o->n, p, k);
        o->n += k;
        p += k;
        len -= k;
        if (o->n == sizeof(o->buf))
            flush_out(o);
    }
}

static uint64_t pad8(uint64_t n)
{
    return (n + 7) & ~7ull;
}

int pvm_snapshot_save(const pvm_snapshot *snap, const char *path)
{
    pvm__clear_error();
    if (!snap || !path)
        return pvm__error(PVM_EINVAL, "pvm_snapshot_save: NULL argument");
    const struct pvm_snapshot *s = snap;
    struct file_header h = { .version = FILE_VERSION, .header_size = sizeof(h), .backend = s->backend,
                             .max_vcpus = s->max_vcpus, .max_memory = s->max_memory, .ram_size = s->ram_size,
                             .nr_allocs = s->nr_allocs, .nr_regions = s->nr_regions, .nr_vcpus = s->nr_vcpus,
                             .nr_pages = s->nr_nonzero };
    memcpy(h.magic, FILE_MAGIC, 8);
    memcpy(h.format, s->format, sizeof(h.format));
    uint64_t size = sizeof(h) + (uint64_t)s->nr_allocs * sizeof(*s->allocs) +
                    (uint64_t)s->nr_regions * sizeof(*s->regions) + s->nr_nonzero * (8 + PVM_PAGE_SIZE) + 8;
    for (uint32_t i = 0; i < s->nr_vcpus; i++)
        size += 8 + pad8(s->vcpus[i].len);
    h.file_size = size;

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    struct out *o = malloc(sizeof(*o));
    if (!tmp || !o) {
        free(tmp);
        free(o);
        return pvm__error(PVM_ENOMEM, "pvm_snapshot_save: out of memory");
    }
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    o->fd = mkostemp(tmp, O_CLOEXEC);
    if (o->fd < 0) {
        int e = errno;
        free(tmp);
        free(o);
        return pvm__error(PVM_EIO, "pvm_snapshot_save: creating a file beside %s: %s", path, strerror(e));
    }
    o->crc = 0;
    o->failed = false;
    o->n = 0;
    static const uint8_t zeros[8];
    emit(o, &h, sizeof(h));
    emit(o, s->allocs, (size_t)s->nr_allocs * sizeof(*s->allocs));
    emit(o, s->regions, (size_t)s->nr_regions * sizeof(*s->regions));
    for (uint32_t i = 0; i < s->nr_vcpus; i++) {
        uint32_t idlen[2] = { s->vcpus[i].id, s->vcpus[i].len };
        emit(o, idlen, 8);
        emit(o, s->vcpus[i].state, s->vcpus[i].len);
        emit(o, zeros, pad8(s->vcpus[i].len) - s->vcpus[i].len);
    }
    uint64_t npages = s->ram_size / PVM_PAGE_SIZE;
    for (uint64_t p = 0; p < npages; p++)
        if (pvm__snap_page_nonzero(s, p))
            emit(o, &p, 8);
    for (uint64_t p = 0; p < npages; p++)
        if (pvm__snap_page_nonzero(s, p))
            emit(o, s->ram + p * PVM_PAGE_SIZE, PVM_PAGE_SIZE);
    uint32_t trailer[2] = { o->crc, 0 };
    emit(o, trailer, 8);
    flush_out(o);
    int rc = 0;
    if (o->failed || fchmod(o->fd, 0600) < 0 || fsync(o->fd) < 0)
        rc = pvm__error(PVM_EIO, "pvm_snapshot_save: writing %s: %s", tmp, strerror(errno ? errno : EIO));
    if (close(o->fd) < 0 && rc == 0)
        rc = pvm__error(PVM_EIO, "pvm_snapshot_save: closing %s: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) < 0)
        rc = pvm__error(PVM_EIO, "pvm_snapshot_save: renaming %s to %s: %s", tmp, path, strerror(errno));
    if (rc < 0)
        unlink(tmp);
    free(tmp);
    free(o);
    return rc;
}

/* ---- load --------------------------------------------------------------------- */

struct in {
    const uint8_t *p;
    uint64_t len, pos;
};

/* The next @n bytes, or NULL if the file ends first. */
static const void *take(struct in *in, uint64_t n)
{
    if (n > in->len - in->pos)
        return NULL;
    const void *r = in->p + in->pos;
    in->pos += n;
    return r;
}

#define BAD(...) (rc = pvm__error(PVM_EBADSNAP, __VA_ARGS__))

static int parse(struct pvm_snapshot *s, const uint8_t *data, uint64_t size, const char *path)
{
    int rc = 0;
    struct file_header h;
    struct in in = { data, size - 8, 0 };
    memcpy(&h, take(&in, sizeof(h)), sizeof(h));
    memcpy(s->format, h.format, sizeof(s->format));
    s->backend = h.backend;
    s->max_vcpus = h.max_vcpus;
    s->max_memory = h.max_memory;
    s->nr_allocs = h.nr_allocs;
    s->nr_regions = h.nr_regions;
    s->ram_size = h.ram_size; /* RAM itself is allocated last, after every check */
    /* Counts bound the allocations below: check them against the file first. */
    if (h.header_size != sizeof(h) || h.nr_allocs > PVM_SNAP_MAX_ALLOCS || h.nr_regions > PVM_SNAP_MAX_REGIONS ||
        h.nr_vcpus > PVM_MAX_VCPUS || (h.ram_size & PVM_PAGE_MASK) || h.ram_size > PVM_SNAP_MAX_RAM ||
        h.nr_pages > h.ram_size / PVM_PAGE_SIZE)
        return BAD("pvm_snapshot_load: %s: header fields out of range", path);
    const void *a = take(&in, (uint64_t)h.nr_allocs * sizeof(*s->allocs));
    const void *r = take(&in, (uint64_t)h.nr_regions * sizeof(*s->regions));
    s->allocs = calloc(h.nr_allocs + 1, sizeof(*s->allocs));
    s->regions = calloc(h.nr_regions + 1, sizeof(*s->regions));
    s->vcpus = calloc(h.nr_vcpus + 1, sizeof(*s->vcpus));
    if (!s->allocs || !s->regions || !s->vcpus)
        return pvm__error(PVM_ENOMEM, "pvm_snapshot_load: out of memory");
    if (!a || !r)
        return BAD("pvm_snapshot_load: %s: truncated layout", path);
    memcpy(s->allocs, a, (size_t)h.nr_allocs * sizeof(*s->allocs));
    memcpy(s->regions, r, (size_t)h.nr_regions * sizeof(*s->regions));
    uint32_t nv = 0;
    for (uint32_t i = 0; i < h.nr_vcpus; i++) {
        const uint32_t *idlen = take(&in, 8);
        if (!idlen)
            return BAD("pvm_snapshot_load: %s: truncated vCPU %u", path, i);
        uint32_t id, len;
        memcpy(&id, idlen, 4);
        memcpy(&len, (const uint8_t *)idlen + 4, 4);
        const void *st = len <= PVM_SNAP_MAX_STATE ? take(&in, pad8(len)) : NULL;
        if (!st)
            return BAD("pvm_snapshot_load: %s: vCPU %u state of %u bytes is truncated or too large", path, i, len);
        struct pvm_snap_vcpu *v = &s->vcpus[nv++];
        v->id = id;
        v->len = len;
        if (!(v->state = malloc(len ? len : 1)))
            return pvm__error(PVM_ENOMEM, "pvm_snapshot_load: out of memory");
        memcpy(v->state, st, len);
        s->nr_vcpus = nv;
    }
    s->nr_vcpus = h.nr_vcpus;
    s->ram_size = h.ram_size;
    if ((rc = pvm__snap_check(s, "pvm_snapshot_load")) < 0)
        return rc;
    s->ram_size = 0;
    const uint8_t *idx = take(&in, h.nr_pages * 8);
    const uint8_t *pages = take(&in, h.nr_pages * PVM_PAGE_SIZE);
    if (!idx || !pages || in.pos != in.len)
        return BAD("pvm_snapshot_load: %s: the page data does not fill the file exactly", path);
    if (pvm__snap_alloc_ram(s, h.ram_size) < 0)
        return pvm__error(PVM_ENOMEM, "pvm_snapshot_load: out of memory for 0x%llx bytes of RAM",
                          (unsigned long long)h.ram_size);
    uint64_t prev = 0;
    for (uint64_t i = 0; i < h.nr_pages; i++) {
        uint64_t p;
        memcpy(&p, idx + i * 8, 8);
        if (p >= h.ram_size / PVM_PAGE_SIZE || (i && p <= prev))
            return BAD("pvm_snapshot_load: %s: page number %llu out of range or order", path, (unsigned long long)p);
        prev = p;
        memcpy(s->ram + p * PVM_PAGE_SIZE, pages + i * PVM_PAGE_SIZE, PVM_PAGE_SIZE);
        s->nonzero[p / 64] |= 1ull << (p % 64);
    }
    s->nr_nonzero = h.nr_pages;
    if (pvm__snap_seal(s) < 0)
        return pvm__error(PVM_EIO, "pvm_snapshot_load: sealing the snapshot's memfd: %s", strerror(errno));
    return 0;
}

int pvm_snapshot_load(pvm_snapshot **out, const char *path)
{
    pvm__clear_error();
    if (!out || !path)
        return pvm__error(PVM_EINVAL, "pvm_snapshot_load: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pvm__error(errno == ENOENT ? PVM_ENOENT : PVM_EIO, "pvm_snapshot_load: %s: %s", path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pvm__error(PVM_EIO, "pvm_snapshot_load: %s is not a readable regular file", path);
    }
    uint64_t size = (uint64_t)st.st_size;
    struct file_header h;
    if (size < sizeof(h) + 8) {
        close(fd);
        return pvm__error(PVM_EBADSNAP, "pvm_snapshot_load: %s: %llu bytes is too short for a snapshot file", path,
                          (unsigned long long)size);
    }
    void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return pvm__error(PVM_EIO, "pvm_snapshot_load: mapping %s: %s", path, strerror(errno));
    memcpy(&h, m, sizeof(h));
    uint32_t crc, zero;
    memcpy(&crc, (const uint8_t *)m + size - 8, 4);
    memcpy(&zero, (const uint8_t *)m + size - 4, 4);
    struct pvm_snapshot *s = NULL;
    /* Magic, then version (another version may lay out the rest differently), then size and checksum. */
    if (memcmp(h.magic, FILE_MAGIC, 8))
        BAD("pvm_snapshot_load: %s is not a libpvm snapshot file (bad magic)", path);
    else if (h.version != FILE_VERSION)
        rc = pvm__error(PVM_EVERSION, "pvm_snapshot_load: %s has format version %u; this library reads version %u",
                        path, h.version, FILE_VERSION);
    else if (h.file_size != size)
        BAD("pvm_snapshot_load: %s has %llu bytes, its header says %llu (truncated or extended)", path,
            (unsigned long long)size, (unsigned long long)h.file_size);
    else if (zero != 0 || crc32c(0, m, size - 8) != crc)
        BAD("pvm_snapshot_load: %s: checksum mismatch (corrupt file)", path);
    else if (!(s = pvm__snap_new()))
        rc = pvm__error(PVM_ENOMEM, "pvm_snapshot_load: out of memory");
    else
        rc = parse(s, m, size, path);
    munmap(m, size);
    if (rc < 0) {
        pvm__snap_unref(s);
        return rc;
    }
    *out = s;
    return 0;
}
