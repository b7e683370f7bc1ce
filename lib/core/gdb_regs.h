/*
 * lib/core/gdb_regs.h - the register file gdb sees (gdb_regs.c): the x86-64
 * layout of gdb's i386 core feature, fs_base/gs_base, and the PVM system
 * registers, described to gdb by the target.xml made from the same table.
 */
#ifndef PVM_GDB_REGS_H
#define PVM_GDB_REGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pvm/pvm.h"

/* One vCPU's registers as read for gdb. */
struct pvm_gdb_state {
    struct pvm_regs r;
    struct pvm_sregs s;
    uint64_t msr[6];
    bool msr_ok[6];
};

/* Number of registers in the layout; register numbers are 0..this-1. */
unsigned pvm_gdb_nr_regs(void);
/* Bytes of register @n (0 if out of range). */
unsigned pvm_gdb_reg_size(unsigned n);
/* The target description; static storage, NUL-terminated. */
const char *pvm_gdb_target_xml(void);

/* Read @vcpu's registers (it must not run); 0 or a PVM_E* code. */
int pvm_gdb_state_read(pvm_vcpu *vcpu, struct pvm_gdb_state *st);
/* Write back the writable registers of @st (GPRs, RIP, EFLAGS, data selectors, bases). */
int pvm_gdb_state_write(pvm_vcpu *vcpu, const struct pvm_gdb_state *st);

/*
 * Hex of register @n (2 * size chars; 'x's if unavailable) into @out;
 * returns the chars written.
 */
size_t pvm_gdb_reg_hex(const struct pvm_gdb_state *st, unsigned n, char *out);
/*
 * Set register @n of @st from 2 * size hex chars at @hex: true if it is
 * writable and the digits are hex ('x's leave it as it is).
 */
bool pvm_gdb_reg_set(struct pvm_gdb_state *st, unsigned n, const char *hex);

#endif /* PVM_GDB_REGS_H */
