/*
 * lib/machine/mmio.c - MMIO decoding (MOV forms) into a PVM_EXIT_MMIO exit,
 * and completion of every incomplete exit (hypercall, IO, MMIO).
 */
#include <string.h>

#include <Zydis/Zydis.h>

#include "model.h"

static enum pvm_m_result undecodable(struct pvm_cpu *cpu, const uint8_t *buf, size_t n, uint64_t gpa,
                                     const char *why)
{
    char hex[PVM_M_MAX_INSN * 3 + 1];
    pvm_m__hexdump(hex, sizeof(hex), buf, n);
    return pvm_m__internal_error(cpu, PVM_ENOTSUP, "MMIO at gpa %#llx, RIP %#llx: %s [%s]",
                                 (unsigned long long)gpa, (unsigned long long)cpu->rip, why,
                                 n ? hex : "unreadable");
}

enum pvm_m_result pvm_m_mmio(struct pvm_cpu *cpu, const struct pvm_mem *mem, uint64_t gpa, bool is_write)
{
    enum pvm_m_result r = pvm_m__trap_begin(cpu, mem);
    if (r != PVM_M_RESUME)
        return r;

    uint8_t buf[PVM_M_MAX_INSN];
    size_t n = pvm_m__fetch(cpu, mem, buf);
    ZydisDecoder dec;
    ZydisDecodedInstruction in;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    if (n == 0 || !ZYAN_SUCCESS(ZydisDecoderInit(&dec, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64)) ||
        !ZYAN_SUCCESS(ZydisDecoderDecodeFull(&dec, buf, n, &in, ops)))
        return undecodable(cpu, buf, n, gpa, "cannot decode the instruction");

    bool write;
    unsigned size, dst_size = 0;
    uint8_t ext = PVM_M_MMIO_NONE;
    uint64_t data = 0;
    struct pvm_m_gpr g = { 0 };

    switch (in.mnemonic) {
    case ZYDIS_MNEMONIC_MOV:
        if (ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY) {
            write = true;
            size = ops[0].size / 8;
            if (ops[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE)
                data = ops[1].imm.value.u; /* already sign-extended to 64 bits */
            else if (ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER && pvm_m__gpr(ops[1].reg.value, &g))
                data = pvm_m__gpr_read(cpu, &g);
            else
                return undecodable(cpu, buf, in.length, gpa, "unsupported MOV source");
        } else if (ops[1].type == ZYDIS_OPERAND_TYPE_MEMORY &&
                   ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER && pvm_m__gpr(ops[0].reg.value, &g)) {
            write = false;
            size = ops[1].size / 8;
            dst_size = g.bytes;
            ext = PVM_M_MMIO_MOV;
        } else {
            return undecodable(cpu, buf, in.length, gpa, "unsupported MOV form");
        }
        break;
    case ZYDIS_MNEMONIC_MOVZX:
    case ZYDIS_MNEMONIC_MOVSX:
    case ZYDIS_MNEMONIC_MOVSXD:
        if (ops[1].type != ZYDIS_OPERAND_TYPE_MEMORY || ops[0].type != ZYDIS_OPERAND_TYPE_REGISTER ||
            !pvm_m__gpr(ops[0].reg.value, &g))
            return undecodable(cpu, buf, in.length, gpa, "unsupported MOVZX/MOVSX form");
        write = false;
        size = ops[1].size / 8;
        dst_size = g.bytes;
        ext = in.mnemonic == ZYDIS_MNEMONIC_MOVZX ? PVM_M_MMIO_ZX : PVM_M_MMIO_SX;
        break;
    default:
        return undecodable(cpu, buf, in.length, gpa, "not a MOV form");
    }
    if (size != 1 && size != 2 && size != 4 && size != 8)
        return undecodable(cpu, buf, in.length, gpa, "unsupported access size");
    if (write != is_write)
        return undecodable(cpu, buf, in.length, gpa,
                           is_write ? "write fault on a load" : "read fault on a store");

    memset(&cpu->exit, 0, sizeof(cpu->exit));
    cpu->exit.reason = PVM_EXIT_MMIO;
    cpu->exit.u.mmio.gpa = gpa;
    cpu->exit.u.mmio.size = (uint8_t)size;
    cpu->exit.u.mmio.is_write = write;
    if (write)
        cpu->exit.u.mmio.data = size == 8 ? data : data & ((1ull << (size * 8)) - 1);
    cpu->pending_exit = PVM_EXIT_MMIO;
    cpu->pending_mmio_size = (uint8_t)size;
    cpu->pending_mmio_reg = (uint8_t)g.idx;
    cpu->pending_mmio_high8 = g.high8;
    cpu->pending_mmio_dst_size = (uint8_t)dst_size;
    cpu->pending_mmio_ext = ext;
    cpu->pending_insn_len = in.length;
    cpu->pending_rip = cpu->rip;
    return PVM_M_EXIT;
}

static uint64_t sign_extend(uint64_t v, unsigned bytes)
{
    unsigned shift = 64 - bytes * 8;
    return bytes >= 8 ? v : (uint64_t)((int64_t)(v << shift) >> shift);
}

void pvm_m_complete(struct pvm_cpu *cpu, const struct pvm_exit *exit)
{
    /*
     * Decision (as KVM's completion of PIO and MMIO exits): an application
     * that moved RIP away from the IN/OUT/MMIO instruction has abandoned it:
     * no read result is written and RIP is not advanced.
     */
    if ((cpu->pending_exit == PVM_EXIT_IO || cpu->pending_exit == PVM_EXIT_MMIO) && cpu->rip != cpu->pending_rip) {
        cpu->pending_exit = PVM_EXIT_NONE;
        return;
    }
    switch (cpu->pending_exit) {
    case PVM_EXIT_HYPERCALL:
        /* RIP is already past the SYSCALL: nothing to skip (§10.10). */
        if (exit)
            cpu->gpr[PVM_RAX] = exit->u.hypercall.ret;
        break;
    case PVM_EXIT_IO:
        if (cpu->pending_io_size) {
            struct pvm_m_gpr acc = { .idx = PVM_RAX, .bytes = cpu->pending_io_size };
            pvm_m__gpr_write(cpu, &acc, exit ? exit->u.io.data : 0);
        }
        cpu->rip += cpu->pending_insn_len;
        break;
    case PVM_EXIT_MMIO:
        if (cpu->pending_mmio_ext != PVM_M_MMIO_NONE) {
            unsigned size = cpu->pending_mmio_size;
            uint64_t v = exit ? exit->u.mmio.data : 0;
            if (size < 8)
                v &= (1ull << (size * 8)) - 1;
            if (cpu->pending_mmio_ext == PVM_M_MMIO_SX)
                v = sign_extend(v, size);
            struct pvm_m_gpr dst = { .idx = cpu->pending_mmio_reg,
                                     .bytes = cpu->pending_mmio_dst_size,
                                     .high8 = cpu->pending_mmio_high8 };
            pvm_m__gpr_write(cpu, &dst, v);
        }
        cpu->rip += cpu->pending_insn_len;
        break;
    default:
        break;
    }
    cpu->pending_exit = PVM_EXIT_NONE;
}
