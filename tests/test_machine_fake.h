/*
 * tests/test_machine_fake.h - a fake guest memory for the machine-model tests:
 * a flat byte array, virtual == physical, with an optional hole that makes
 * virtual accesses fail, and a recorder for TLB flush requests.
 * Header-only so each test_machine_*.c stays its own program.
 */
#ifndef PVM_TEST_MACHINE_FAKE_H
#define PVM_TEST_MACHINE_FAKE_H

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "machine/machine.h"
#include "testutil.h"

#define FAKE_RAM_SIZE   0x100000ull /* 1 MiB, identity mapped */
#define PVCS_GPA        0x1000ull
#define ENTRY           0x20000ull
#define LSTAR           0x21000ull
#define RETU_RIP        0x30000ull
#define RETS_RIP        0x30100ull
#define SUP_RSP         0x80000ull
#define KSTACK          0x70008ull
#define REDZONE         16ull
#define KERNEL_GS       0x9000ull
#define KROOT           0x6000ull
#define UROOT           0x5000ull
#define TEST_RANGE      PVM_LA_RANGE_MAKE(0x1b2, 0x1d2, 0x1ff, 0x1ff)
#define STAR_VALUE      ((0x10ull << 32) | (0x23ull << 48))

struct fake_mem {
    uint8_t *ram;
    uint64_t hole_lo, hole_hi; /* virtual accesses touching [lo, hi) fail */
    int nflush;
    enum pvm_flush_kind last_kind;
    uint64_t last_gva;
};

static struct fake_mem fm;
static struct pvm_mem mem;
static struct pvm_cpu *cpu;

static inline bool fake_ok(uint64_t a, size_t len)
{
    if (a >= FAKE_RAM_SIZE || len > FAKE_RAM_SIZE - a)
        return false;
    return !(fm.hole_hi > fm.hole_lo && a < fm.hole_hi && a + len > fm.hole_lo);
}

static inline void *fake_phys(void *o, uint64_t gpa, size_t len, bool write)
{
    (void)o;
    (void)write;
    if (gpa >= FAKE_RAM_SIZE || len > FAKE_RAM_SIZE - gpa)
        return NULL;
    return fm.ram + gpa;
}

static inline int fake_read(void *o, uint64_t gva, void *buf, size_t len)
{
    (void)o;
    if (!fake_ok(gva, len))
        return -1;
    memcpy(buf, fm.ram + gva, len);
    return 0;
}

static inline int fake_write(void *o, uint64_t gva, const void *buf, size_t len)
{
    (void)o;
    if (!fake_ok(gva, len))
        return -1;
    memcpy(fm.ram + gva, buf, len);
    return 0;
}

static inline void fake_flush(void *o, enum pvm_flush_kind kind, uint64_t gva)
{
    (void)o;
    fm.nflush++;
    fm.last_kind = kind;
    fm.last_gva = gva;
}

static inline uint64_t rd64(uint64_t a) { uint64_t v; memcpy(&v, fm.ram + a, 8); return v; }
static inline uint32_t rd32(uint64_t a) { uint32_t v; memcpy(&v, fm.ram + a, 4); return v; }
static inline uint16_t rd16(uint64_t a) { uint16_t v; memcpy(&v, fm.ram + a, 2); return v; }
static inline void wr64(uint64_t a, uint64_t v) { memcpy(fm.ram + a, &v, 8); }
static inline void wr32(uint64_t a, uint32_t v) { memcpy(fm.ram + a, &v, 4); }
static inline void wr16(uint64_t a, uint16_t v) { memcpy(fm.ram + a, &v, 2); }
static inline void put_bytes(uint64_t a, const void *b, size_t n) { memcpy(fm.ram + a, b, n); }

static inline uint64_t pvcs_flags(void) { return rd64(PVCS_GPA + 0); }
static inline void set_pvcs_flags(uint64_t v) { wr64(PVCS_GPA + 0, v); }

/* Fresh vCPU after reset, nothing configured. */
static inline void fake_setup_bare(void)
{
    memset(&fm, 0, sizeof(fm));
    fm.ram = aligned_alloc(4096, FAKE_RAM_SIZE);
    ck_assert_ptr_nonnull(fm.ram);
    memset(fm.ram, 0, FAKE_RAM_SIZE);
    mem = (struct pvm_mem){ .opaque = &fm, .phys = fake_phys, .read_virt = fake_read,
                            .write_virt = fake_write, .flush = fake_flush };
    cpu = calloc(1, sizeof(*cpu));
    ck_assert_ptr_nonnull(cpu);
    pvm_m_reset(cpu, TEST_RANGE);
}

static inline void wrmsr_ok(uint32_t idx, uint64_t v)
{
    ck_assert_int_eq(pvm_m_wrmsr(cpu, &mem, idx, v, false), 0);
}

/* A configured guest kernel as Linux sets it up (§9.4), in smod with IF = 1. */
static inline void fake_setup(void)
{
    fake_setup_bare();
    wrmsr_ok(MSR_PVM_VCPU_STRUCT, PVCS_GPA);
    wrmsr_ok(MSR_PVM_EVENT_ENTRY, ENTRY);
    wrmsr_ok(MSR_PVM_SUPERVISOR_REDZONE, REDZONE);
    wrmsr_ok(MSR_PVM_SUPERVISOR_RSP, SUP_RSP);
    wrmsr_ok(MSR_PVM_RETU_RIP, RETU_RIP);
    wrmsr_ok(MSR_PVM_RETS_RIP, RETS_RIP);
    wrmsr_ok(PVM_MSR_LSTAR, LSTAR);
    wrmsr_ok(PVM_MSR_STAR, STAR_VALUE);
    wrmsr_ok(PVM_MSR_KERNEL_GS_BASE, KERNEL_GS);
    cpu->cr3 = KROOT;
    cpu->msr_switch_cr3 = UROOT;
    cpu->gpr[PVM_RSP] = KSTACK;
    cpu->rip = 0x10000;
    set_pvcs_flags(PVM_EVENT_FLAGS_IF);
    pvm_m_set_rflags(cpu, &mem, 0x246);
    fm.nflush = 0;
}

/* Put the vCPU in umod as if it had ERETU'd to a 64-bit user program. */
static inline void go_user(void)
{
    cpu->mode = PVM_MODE_USER;
    cpu->cs = PVM_USER_CS;
    cpu->ss = PVM_USER_DS;
    cpu->cr3 = UROOT;
    cpu->msr_switch_cr3 = KROOT;
    cpu->gs_base = 0x7000001234ull;
    cpu->rflags = 0x246;
    cpu->rip = 0x401002;
    cpu->gpr[PVM_RSP] = 0x7ffff000;
    cpu->gpr[PVM_RCX] = 0x401002;
    cpu->gpr[PVM_R11] = 0x246;
}

static inline void fake_teardown(void)
{
    free(cpu);
    free(fm.ram);
    cpu = NULL;
    fm.ram = NULL;
}

static inline TCase *fake_tcase(const char *name)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, fake_setup, fake_teardown);
    return tc;
}

#endif
