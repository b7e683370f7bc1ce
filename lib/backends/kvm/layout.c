/*
 * lib/backends/kvm/layout.c - the fixed part of the kvm provider's private
 * area (kvm.h): descriptor tables, the one-instruction trampoline, the
 * ring-0 stack and the kernel half of every slot's page tables; and what a
 * trampoline exit means.  Pure functions over a byte buffer.
 */
#include <string.h>

#include "kvm.h"

static void put64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

bool kvm_vector_has_error(unsigned v)
{
    return v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30;
}

/* A gate of the 64-bit IDT to the trampoline entry of vector @v. */
static void idt_gate(uint8_t *g, uint64_t target, unsigned dpl)
{
    uint64_t lo = (target & 0xffff) | ((uint64_t)KVM_SEL_KCODE << 16) |
                  ((uint64_t)(0x8e | (dpl << 5)) << 40) | (((target >> 16) & 0xffff) << 48);
    put64(g, lo);
    put64(g + 8, target >> 32);
}

void kvm_layout_build(uint8_t *priv, uint64_t priv_gpa)
{
    memset(priv, 0, KVM_OFF_POOL);

    /* GDT: Linux's selectors, so the guest's 0x23/0x2b/0x33 are what they are on the host. */
    uint8_t *gdt = priv + KVM_OFF_GDT;
    put64(gdt + KVM_SEL_KCODE, 0x00af9b000000ffffull);   /* 64-bit code, DPL 0 */
    put64(gdt + KVM_SEL_KDATA, 0x00cf93000000ffffull);   /* data, DPL 0 */
    put64(gdt + (KVM_SEL_UCODE32 & ~3u), 0x00cffb000000ffffull); /* 32-bit code, DPL 3 */
    put64(gdt + (KVM_SEL_UDATA & ~3u), 0x00cff3000000ffffull);   /* data, DPL 3 */
    put64(gdt + (KVM_SEL_UCODE & ~3u), 0x00affb000000ffffull);   /* 64-bit code, DPL 3 */
    uint64_t tss = KVM_KBASE + KVM_OFF_TSS;
    put64(gdt + KVM_SEL_TSS, 0x67 | ((tss & 0xffffff) << 16) | (0x8bull << 40) | (((tss >> 24) & 0xff) << 56));
    put64(gdt + KVM_SEL_TSS + 8, tss >> 32);

    /* IDT: every vector to its trampoline entry; INT3, INTO and INT 0x80 reachable from CPL 3, as on Linux. */
    for (unsigned v = 0; v < 256; v++)
        idt_gate(priv + KVM_OFF_IDT + 16 * v, KVM_KBASE + KVM_OFF_TRAMP + v,
                 (v == 3 || v == 4 || v == 0x80) ? 3 : 0);

    /* TSS: RSP0 is the top of the ring-0 stack; no I/O bitmap (IOPL 0: every IN/OUT is #GP). */
    put64(priv + KVM_OFF_TSS + 4, KVM_KBASE + KVM_STACK_TOP);
    priv[KVM_OFF_TSS + 0x66] = 104;

    /* The trampoline: one HLT per entry.  HLT at CPL 0 exits (no in-kernel irqchip). */
    memset(priv + KVM_OFF_TRAMP, 0xf4, KVM_TRAMP_SIZE);

    /* The kernel half: KVM_KBASE -> the first KVM_MAPPED_PAGES pages, supervisor only. */
    put64(priv + KVM_OFF_KPDPT, (priv_gpa + KVM_OFF_KPD) | KVM_PTE_P | KVM_PTE_W | KVM_PTE_A);
    put64(priv + KVM_OFF_KPD, (priv_gpa + KVM_OFF_KPT) | KVM_PTE_P | KVM_PTE_W | KVM_PTE_A);
    for (unsigned i = 0; i < KVM_MAPPED_PAGES; i++) {
        uint64_t off = (uint64_t)i * 4096;
        uint64_t pte = (priv_gpa + off) | KVM_PTE_P | KVM_PTE_A | KVM_PTE_D;
        if (off == KVM_OFF_TRAMP)
            ;                                            /* read-only, executable */
        else if (off >= KVM_OFF_STACK || off == KVM_OFF_TSS)
            pte |= KVM_PTE_W | KVM_PTE_NX;               /* the CPU writes frames here */
        else
            pte |= KVM_PTE_NX;
        put64(priv + KVM_OFF_KPT + 8 * i, pte);
    }
}

int kvm_decode_exit(const uint8_t *priv, uint64_t rip, uint64_t rsp, struct kvm_trap_frame *out)
{
    uint64_t entry = rip - 1 - (KVM_KBASE + KVM_OFF_TRAMP);
    memset(out, 0, sizeof(*out));
    if (entry == KVM_TRAMP_SYSCALL) {
        out->syscall = true;
        return 0;
    }
    if (entry >= 256)
        return -1;
    out->vector = (unsigned)entry;
    out->has_error = kvm_vector_has_error(out->vector);
    /* From CPL 3 the frame starts at RSP0: [error code] RIP CS RFLAGS RSP SS. */
    uint64_t frame = KVM_KBASE + KVM_STACK_TOP - 40 - (out->has_error ? 8 : 0);
    if (rsp != frame)
        return -1;
    const uint8_t *f = priv + KVM_STACK_TOP - 40;
    if (out->has_error)
        out->error_code = get64(f - 8);
    out->rip = get64(f);
    out->cs = get64(f + 8);
    out->rflags = get64(f + 16);
    out->rsp = get64(f + 24);
    out->ss = get64(f + 32);
    if ((out->cs & 3) != 3)
        return -1; /* only guest code at CPL 3 may trap */
    return 0;
}
