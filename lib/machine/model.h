/*
 * lib/machine/model.h - private helpers shared by the machine-model files
 * (cpu.c, event.c, eret.c, hypercall.c, msr.c, cpuid.c, irq.c, emulate.c,
 * decode.c, mmio.c).  Not an interface: other rooms use machine.h.
 */
#ifndef PVM_MACHINE_MODEL_H
#define PVM_MACHINE_MODEL_H

#include <stdarg.h>

#include "machine.h"

/* Architectural control-register bits the model checks. */
#define PVM_CR0_PE         (1ull << 0)
#define PVM_CR0_MP         (1ull << 1)
#define PVM_CR0_ET         (1ull << 4)
#define PVM_CR0_NE         (1ull << 5)
#define PVM_CR0_WP         (1ull << 16)
#define PVM_CR0_AM         (1ull << 18)
#define PVM_CR0_PG         (1ull << 31)
#define PVM_CR4_VME        (1ull << 0)
#define PVM_CR4_PVI        (1ull << 1)
#define PVM_CR4_TSD        (1ull << 2)
#define PVM_CR4_DE         (1ull << 3)
#define PVM_CR4_PSE        (1ull << 4)
#define PVM_CR4_PAE        (1ull << 5)
#define PVM_CR4_MCE        (1ull << 6)
#define PVM_CR4_PGE        (1ull << 7)
#define PVM_CR4_PCE        (1ull << 8)
#define PVM_CR4_OSFXSR     (1ull << 9)
#define PVM_CR4_OSXMMEXCPT (1ull << 10)
#define PVM_CR4_UMIP       (1ull << 11)
#define PVM_CR4_LA57       (1ull << 12)
#define PVM_CR4_FSGSBASE   (1ull << 16)
#define PVM_CR4_PCIDE      (1ull << 17)
#define PVM_CR4_OSXSAVE    (1ull << 18)
#define PVM_EFER_SCE       (1ull << 0)
#define PVM_EFER_LME       (1ull << 8)
#define PVM_EFER_LMA       (1ull << 10)
#define PVM_EFER_NXE       (1ull << 11)

/* Reset values (§1.4: CR0/CR4/EFER are the underlying ones). */
#define PVM_M_RESET_CR0 (PVM_CR0_PE | PVM_CR0_MP | PVM_CR0_ET | PVM_CR0_NE | PVM_CR0_WP | \
                         PVM_CR0_AM | PVM_CR0_PG)
#define PVM_M_RESET_CR4 (PVM_CR4_PAE | PVM_CR4_FSGSBASE | PVM_CR4_OSFXSR | PVM_CR4_OSXMMEXCPT)
#define PVM_M_RESET_EFER (PVM_EFER_SCE | PVM_EFER_LME | PVM_EFER_LMA | PVM_EFER_NXE)
/*
 * §9.4: entering 64-bit mode with STAR[47:32] = 0 sets STAR to
 * (CS << 32) | (__USER32_CS << 48); libpvm resets straight into long mode with
 * the conventional kernel CS 0x10, so the conversion result is the reset value.
 */
#define PVM_M_RESET_STAR ((0x10ull << 32) | ((uint64_t)PVM_USER32_CS << 48))

#define PVM_M_RSP_ALIGN_MASK (~0xfull)

/* The PVCS through the accessor (whole page, §3), or NULL if not configured/mappable. */
struct pvm_vcpu_struct *pvm_m__pvcs(const struct pvm_cpu *cpu, const struct pvm_mem *mem);
/* Re-read the virtual IF from the PVCS into cpu->rflags (smod, §1.2). */
void pvm_m__sync_if(struct pvm_cpu *cpu, const struct pvm_mem *mem);
/* Emulated supervisor CS (STAR[47:32] with RPL cleared, §1.2); SS is this + 8. */
uint16_t pvm_m__sup_cs(const struct pvm_cpu *cpu);
/* Canonical check / sign-extension at the current width (48, or 57 with CR4.LA57). */
bool pvm_m__is_canonical(const struct pvm_cpu *cpu, uint64_t v);
uint64_t pvm_m__canonicalize(const struct pvm_cpu *cpu, uint64_t v);
void pvm_m__flush(const struct pvm_mem *mem, enum pvm_flush_kind kind, uint64_t gva);
/* INTERNAL_ERROR exit with a message; returns PVM_M_EXIT. */
enum pvm_m_result pvm_m__internal_error(struct pvm_cpu *cpu, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/*
 * Common start of every trap entry point: §5.10 hardware CS/SS check in smod
 * (SHUTDOWN), then the IF re-read KVM does after every smod exit.
 */
enum pvm_m_result pvm_m__trap_begin(struct pvm_cpu *cpu, const struct pvm_mem *mem);
/* Common end: KVM re-evaluates events before every entry. */
enum pvm_m_result pvm_m__trap_end(struct pvm_cpu *cpu, const struct pvm_mem *mem,
                                  enum pvm_m_result r);

/* pvm_m_deliver for an exception the VMM injected: never offered to mem->catch_exc. */
enum pvm_m_result pvm_m__deliver_injected(struct pvm_cpu *cpu, const struct pvm_mem *mem, unsigned vector,
                                          bool has_error_code, uint32_t error_code);

/* HLT / IRQ_HALT: halt unless an event can be delivered right now. */
enum pvm_m_result pvm_m__halt(struct pvm_cpu *cpu, const struct pvm_mem *mem);

/* ERETU / ERETS (eret.c). */
enum pvm_m_result pvm_m__eretu(struct pvm_cpu *cpu, const struct pvm_mem *mem);
enum pvm_m_result pvm_m__erets(struct pvm_cpu *cpu, const struct pvm_mem *mem);

/* #GP emulation (emulate.c). */
enum pvm_m_result pvm_m__emulate_gp(struct pvm_cpu *cpu, const struct pvm_mem *mem,
                                    bool has_error_code, uint32_t error_code);

/* ---- instruction access (decode.c) ---------------------------------------- */

#define PVM_M_MAX_INSN 15

/* Read up to 15 bytes at cpu->rip (fewer near the end of mapped memory); 0 = none. */
size_t pvm_m__fetch(const struct pvm_cpu *cpu, const struct pvm_mem *mem, uint8_t buf[PVM_M_MAX_INSN]);
/* "0f 01 ..." hex dump of @n bytes into @out. */
void pvm_m__hexdump(char *out, size_t outlen, const uint8_t *buf, size_t n);

/* A general-purpose register operand: index into cpu->gpr, width, AH..BH. */
struct pvm_m_gpr {
    unsigned idx;
    unsigned bytes;
    bool high8;
};
/* Decode a Zydis register id (int to keep Zydis out of this header); false if not a GPR. */
bool pvm_m__gpr(int zydis_reg, struct pvm_m_gpr *out);
uint64_t pvm_m__gpr_read(const struct pvm_cpu *cpu, const struct pvm_m_gpr *r);
/* Architectural write: 8/16-bit merge, 32-bit zero-extends, 64-bit replaces. */
void pvm_m__gpr_write(struct pvm_cpu *cpu, const struct pvm_m_gpr *r, uint64_t v);

#endif /* PVM_MACHINE_MODEL_H */
