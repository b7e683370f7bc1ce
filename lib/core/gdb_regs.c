/*
 * lib/core/gdb_regs.c - the register file gdb sees: one table gives both
 * the 'g' packet layout and the target.xml gdb reads it with.
 *
 * gdb's amd64 architecture insists on its i386 core feature, x87 registers
 * included; libpvm keeps no FPU state it could show, so those read as
 * unavailable ('x').  The segments feature gives fs_base/gs_base; the PVM
 * feature gives the mode, control registers and PVM MSRs, read-only.
 */
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "gdb_packet.h"
#include "gdb_regs.h"

enum src { S_GPR, S_RIP, S_FLAGS, S_SEG, S_NONE, S_BASE, S_MODE, S_CR, S_MSR };
enum feat { F_CORE, F_SEGMENTS, F_PVM };

struct reg {
    const char *name;
    uint8_t bytes;
    uint8_t feature;
    uint8_t src;
    uint8_t arg;       /* field index within its source */
    const char *type;
    const char *group; /* or NULL */
};

/* Offsets of the GPRs in struct pvm_regs, in gdb's order (rax rbx rcx rdx rsi rdi rbp rsp r8..r15). */
static const size_t gpr_off[16] = {
    offsetof(struct pvm_regs, rax), offsetof(struct pvm_regs, rbx), offsetof(struct pvm_regs, rcx),
    offsetof(struct pvm_regs, rdx), offsetof(struct pvm_regs, rsi), offsetof(struct pvm_regs, rdi),
    offsetof(struct pvm_regs, rbp), offsetof(struct pvm_regs, rsp), offsetof(struct pvm_regs, r8),
    offsetof(struct pvm_regs, r9),  offsetof(struct pvm_regs, r10), offsetof(struct pvm_regs, r11),
    offsetof(struct pvm_regs, r12), offsetof(struct pvm_regs, r13), offsetof(struct pvm_regs, r14),
    offsetof(struct pvm_regs, r15),
};

/* The MSRs of the PVM feature (struct pvm_gdb_state.msr order). */
static const uint32_t msr_index[6] = {
    PVM_MSR_KERNEL_GS_BASE, MSR_PVM_LINEAR_ADDRESS_RANGE, MSR_PVM_VCPU_STRUCT,
    MSR_PVM_SUPERVISOR_RSP, MSR_PVM_EVENT_ENTRY,         MSR_PVM_SWITCH_CR3,
};

#define GPR(n, i, t) { n, 8, F_CORE, S_GPR, i, t, NULL }
#define SEG(n, i) { n, 4, F_CORE, S_SEG, i, "int32", NULL }
#define ST(n) { n, 10, F_CORE, S_NONE, 0, "i387_ext", NULL }
#define FPC(n) { n, 4, F_CORE, S_NONE, 0, "int", "float" }
#define PVM(n, s, i) { n, 8, F_PVM, s, i, "uint64", "system" }

static const struct reg regs[] = {
    GPR("rax", 0, "int64"), GPR("rbx", 1, "int64"), GPR("rcx", 2, "int64"), GPR("rdx", 3, "int64"),
    GPR("rsi", 4, "int64"), GPR("rdi", 5, "int64"), GPR("rbp", 6, "data_ptr"), GPR("rsp", 7, "data_ptr"),
    GPR("r8", 8, "int64"), GPR("r9", 9, "int64"), GPR("r10", 10, "int64"), GPR("r11", 11, "int64"),
    GPR("r12", 12, "int64"), GPR("r13", 13, "int64"), GPR("r14", 14, "int64"), GPR("r15", 15, "int64"),
    { "rip", 8, F_CORE, S_RIP, 0, "code_ptr", NULL },
    { "eflags", 4, F_CORE, S_FLAGS, 0, "i386_eflags", NULL },
    SEG("cs", 0), SEG("ss", 1), SEG("ds", 2), SEG("es", 3), SEG("fs", 4), SEG("gs", 5),
    ST("st0"), ST("st1"), ST("st2"), ST("st3"), ST("st4"), ST("st5"), ST("st6"), ST("st7"),
    FPC("fctrl"), FPC("fstat"), FPC("ftag"), FPC("fiseg"), FPC("fioff"), FPC("foseg"), FPC("fooff"), FPC("fop"),
    { "fs_base", 8, F_SEGMENTS, S_BASE, 0, "int", NULL },
    { "gs_base", 8, F_SEGMENTS, S_BASE, 1, "int", NULL },
    PVM("pvm_mode", S_MODE, 0), PVM("cr0", S_CR, 0), PVM("cr2", S_CR, 1), PVM("cr3", S_CR, 2),
    PVM("cr4", S_CR, 3), PVM("efer", S_CR, 4), PVM("kernel_gs_base", S_MSR, 0),
    PVM("pvm_linear_address_range", S_MSR, 1), PVM("pvm_vcpu_struct", S_MSR, 2),
    PVM("pvm_supervisor_rsp", S_MSR, 3), PVM("pvm_event_entry", S_MSR, 4), PVM("pvm_switch_cr3", S_MSR, 5),
};
#define NR_REGS (sizeof(regs) / sizeof(regs[0]))

unsigned pvm_gdb_nr_regs(void)
{
    return (unsigned)NR_REGS;
}

unsigned pvm_gdb_reg_size(unsigned n)
{
    return n < NR_REGS ? regs[n].bytes : 0;
}

static const char *const feature_name[] = { "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.segments", "org.libpvm.pvm" };

static const char eflags_type[] =
    "<flags id=\"i386_eflags\" size=\"4\">"
    "<field name=\"CF\" start=\"0\" end=\"0\"/><field name=\"\" start=\"1\" end=\"1\"/>"
    "<field name=\"PF\" start=\"2\" end=\"2\"/><field name=\"AF\" start=\"4\" end=\"4\"/>"
    "<field name=\"ZF\" start=\"6\" end=\"6\"/><field name=\"SF\" start=\"7\" end=\"7\"/>"
    "<field name=\"TF\" start=\"8\" end=\"8\"/><field name=\"IF\" start=\"9\" end=\"9\"/>"
    "<field name=\"DF\" start=\"10\" end=\"10\"/><field name=\"OF\" start=\"11\" end=\"11\"/>"
    "<field name=\"NT\" start=\"14\" end=\"14\"/><field name=\"RF\" start=\"16\" end=\"16\"/>"
    "<field name=\"VM\" start=\"17\" end=\"17\"/><field name=\"AC\" start=\"18\" end=\"18\"/>"
    "<field name=\"VIF\" start=\"19\" end=\"19\"/><field name=\"VIP\" start=\"20\" end=\"20\"/>"
    "<field name=\"ID\" start=\"21\" end=\"21\"/></flags>";

/* Built once from the table; about 4 KiB. */
static char xml[8192];
static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

static void build_xml(void)
{
    size_t n = 0;
    n += (size_t)snprintf(xml + n, sizeof(xml) - n,
                          "<?xml version=\"1.0\"?><!DOCTYPE target SYSTEM \"gdb-target.dtd\">"
                          "<target version=\"1.0\"><architecture>i386:x86-64</architecture>");
    int cur = -1;
    for (unsigned i = 0; i < NR_REGS && n < sizeof(xml); i++) {
        const struct reg *r = &regs[i];
        if (r->feature != cur) {
            n += (size_t)snprintf(xml + n, sizeof(xml) - n, "%s<feature name=\"%s\">%s", cur < 0 ? "" : "</feature>",
                                  feature_name[r->feature], r->feature == F_CORE ? eflags_type : "");
            cur = r->feature;
        }
        if (n < sizeof(xml))
            n += (size_t)snprintf(xml + n, sizeof(xml) - n, "<reg name=\"%s\" bitsize=\"%u\" type=\"%s\" regnum=\"%u\"%s%s%s/>",
                                  r->name, r->bytes * 8u, r->type, i, r->group ? " group=\"" : "",
                                  r->group ? r->group : "", r->group ? "\"" : "");
    }
    if (n < sizeof(xml))
        snprintf(xml + n, sizeof(xml) - n, "</feature></target>");
}

const char *pvm_gdb_target_xml(void)
{
    pthread_once(&xml_once, build_xml);
    return xml;
}

int pvm_gdb_state_read(pvm_vcpu *vcpu, struct pvm_gdb_state *st)
{
    memset(st, 0, sizeof(*st));
    int rc = pvm_vcpu_get_regs(vcpu, &st->r);
    if (rc == 0)
        rc = pvm_vcpu_get_sregs(vcpu, &st->s);
    for (unsigned i = 0; rc == 0 && i < 6; i++)
        st->msr_ok[i] = pvm_vcpu_get_msr(vcpu, msr_index[i], &st->msr[i]) == 0;
    return rc;
}

int pvm_gdb_state_write(pvm_vcpu *vcpu, const struct pvm_gdb_state *st)
{
    int rc = pvm_vcpu_set_regs(vcpu, &st->r);
    return rc ? rc : pvm_vcpu_set_sregs(vcpu, &st->s);
}

/* Value of register @n, or false if unavailable. */
static bool reg_get(const struct pvm_gdb_state *st, unsigned n, uint64_t *v)
{
    const struct reg *r = &regs[n];
    const uint16_t seg[6] = { st->s.cs, st->s.ss, st->s.ds, st->s.es, st->s.fs, st->s.gs };
    const uint64_t cr[5] = { st->s.cr0, st->s.cr2, st->s.cr3, st->s.cr4, st->s.efer };
    switch (r->src) {
    case S_GPR: memcpy(v, (const char *)&st->r + gpr_off[r->arg], 8); return true;
    case S_RIP: *v = st->r.rip; return true;
    case S_FLAGS: *v = (uint32_t)st->r.rflags; return true;
    case S_SEG: *v = seg[r->arg]; return true;
    case S_BASE: *v = r->arg ? st->s.gs_base : st->s.fs_base; return true;
    case S_MODE: *v = st->s.mode; return true;
    case S_CR: *v = cr[r->arg]; return true;
    case S_MSR: *v = st->msr[r->arg]; return st->msr_ok[r->arg];
    default: return false;
    }
}

size_t pvm_gdb_reg_hex(const struct pvm_gdb_state *st, unsigned n, char *out)
{
    if (n >= NR_REGS)
        return 0;
    size_t len = 2u * regs[n].bytes;
    uint64_t v;
    if (!reg_get(st, n, &v)) {
        memset(out, 'x', len);
        return len;
    }
    uint8_t le[8];
    for (unsigned i = 0; i < 8; i++)
        le[i] = (uint8_t)(v >> (8 * i));
    pvm_gdb_hex_encode(out, le, regs[n].bytes);
    return len;
}

bool pvm_gdb_reg_set(struct pvm_gdb_state *st, unsigned n, const char *hex)
{
    if (n >= NR_REGS)
        return false;
    const struct reg *r = &regs[n];
    if (hex[0] == 'x')
        return true; /* gdb sends 'x's for what it does not know: leave it */
    uint8_t le[10] = { 0 };
    if (!pvm_gdb_hex_decode(hex, le, r->bytes))
        return false;
    uint64_t v = 0;
    for (unsigned i = 0; i < 8 && i < r->bytes; i++)
        v |= (uint64_t)le[i] << (8 * i);
    switch (r->src) {
    case S_GPR: memcpy((char *)&st->r + gpr_off[r->arg], &v, 8); return true;
    case S_RIP: st->r.rip = v; return true;
    case S_FLAGS: st->r.rflags = (st->r.rflags & ~0xffffffffull) | (uint32_t)v; return true;
    case S_SEG:
        /* CS and SS follow the mode (pvm_vcpu_set_sregs); the data selectors are plain state. */
        if (r->arg == 2) st->s.ds = (uint16_t)v;
        else if (r->arg == 3) st->s.es = (uint16_t)v;
        else if (r->arg == 4) st->s.fs = (uint16_t)v;
        else if (r->arg == 5) st->s.gs = (uint16_t)v;
        else return v == (r->arg ? st->s.ss : st->s.cs);
        return true;
    case S_BASE:
        if (r->arg) st->s.gs_base = v;
        else st->s.fs_base = v;
        return true;
    default:
        return false; /* unavailable or read-only */
    }
}
