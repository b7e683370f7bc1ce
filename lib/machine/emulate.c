/*
 * lib/machine/emulate.c - #GP emulation (§1.4, §5.12, §6.1): the synthetic
 * CPUID, then the privileged instructions a PVM kernel may execute in smod.
 * Everything the emulator does not handle is #GP(0) to the guest, as
 * EMULTYPE_PVM_GP does (RFC 13/73).
 *
 * §10.16 decision: PUSHF/POPF are not trapped by any provider, so they never
 * reach here; PUSHF shows the underlying IF = 1 and POPF cannot change the
 * virtual IF (§10.31), exactly as on kvm-pvm.
 */
#include <string.h>

#include <Zydis/Zydis.h>

#include "model.h"

static const uint8_t synthetic_cpuid[PVM_SYNTHETIC_CPUID_LEN] = { PVM_SYNTHETIC_CPUID_BYTES };

static enum pvm_m_result gp0(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    return pvm_m_deliver(cpu, mem, PVM_VEC_GP, true, 0);
}

static void cpuid_to_regs(struct pvm_cpu *cpu)
{
    uint32_t r[4];
    pvm_m_cpuid(cpu, (uint32_t)cpu->gpr[PVM_RAX], (uint32_t)cpu->gpr[PVM_RCX], r);
    /* 32-bit results zero-extended into RAX, RBX, RCX, RDX. */
    cpu->gpr[PVM_RAX] = r[0];
    cpu->gpr[PVM_RBX] = r[1];
    cpu->gpr[PVM_RCX] = r[2];
    cpu->gpr[PVM_RDX] = r[3];
}

/* Linear address of a memory operand (INVLPG): base + index*scale + disp (+ FS/GS base). */
static bool mem_operand_address(const struct pvm_cpu *cpu, const ZydisDecodedInstruction *in,
                                const ZydisDecodedOperand *op, uint64_t *out)
{
    struct pvm_m_gpr g;
    uint64_t a = (uint64_t)op->mem.disp.value;

    if (op->mem.base == ZYDIS_REGISTER_RIP || op->mem.base == ZYDIS_REGISTER_EIP)
        a += cpu->rip + in->length;
    else if (op->mem.base != ZYDIS_REGISTER_NONE) {
        if (!pvm_m__gpr(op->mem.base, &g))
            return false;
        a += pvm_m__gpr_read(cpu, &g);
    }
    if (op->mem.index != ZYDIS_REGISTER_NONE) {
        if (!pvm_m__gpr(op->mem.index, &g))
            return false;
        a += pvm_m__gpr_read(cpu, &g) * (op->mem.scale ? op->mem.scale : 1);
    }
    if (in->address_width == 32)
        a &= 0xffffffffull;
    if (op->mem.segment == ZYDIS_REGISTER_FS)
        a += cpu->fs_base;
    else if (op->mem.segment == ZYDIS_REGISTER_GS)
        a += cpu->gs_base;
    *out = a;
    return true;
}

static enum pvm_m_result synthetic_cpuid_insn(struct pvm_cpu *cpu, const struct pvm_mem *mem)
{
    /* §6.1: the INVLPG half only takes effect if the address is guest-allowed. */
    if (pvm_m_la_allowed(cpu->msr_linear_range, PVM_SYNTHETIC_CPUID_ADDRESS))
        pvm_m__flush(mem, PVM_FLUSH_ONE, PVM_SYNTHETIC_CPUID_ADDRESS);
    cpuid_to_regs(cpu);
    cpu->rip += PVM_SYNTHETIC_CPUID_LEN;
    return PVM_M_RESUME;
}

static int cr_number(ZydisRegister r)
{
    if (r >= ZYDIS_REGISTER_CR0 && r <= ZYDIS_REGISTER_CR15)
        return (int)(r - ZYDIS_REGISTER_CR0);
    return -1;
}

/* CR4 bits a PVM guest may toggle; VME/PVI/SMEP/SMAP/PKE/VMXE... are refused (§1.4). */
#define CR4_GUEST_WRITABLE (PVM_CR4_TSD | PVM_CR4_DE | PVM_CR4_PSE | PVM_CR4_MCE | PVM_CR4_PGE | \
                            PVM_CR4_PCE | PVM_CR4_OSFXSR | PVM_CR4_OSXMMEXCPT | PVM_CR4_UMIP |   \
                            PVM_CR4_PCIDE | PVM_CR4_OSXSAVE)
#define CR4_FIXED1 (PVM_CR4_PAE | PVM_CR4_FSGSBASE)
#define CR3_RESERVED 0x7ff0000000000000ull /* bits 62:52 */
#define CR3_NOFLUSH (1ull << 63)

/* MOV to CRn; false = #GP. */
static bool write_cr(struct pvm_cpu *cpu, const struct pvm_mem *mem, int n, uint64_t v)
{
    switch (n) {
    case 0:
        /* §1.4: CR0 is the underlying one (PE PG WP ET NE AM MP set, CD NW EM TS clear). */
        return (v | PVM_CR0_ET) == cpu->cr0;
    case 2:
        cpu->cr2 = v;
        return true;
    case 3: {
        if (v & CR3_RESERVED)
            return false;
        bool noflush = (cpu->cr4 & PVM_CR4_PCIDE) && (v & CR3_NOFLUSH);
        /* §10.25 decision: MOV CR3 changes CR3 only, never SWITCH_CR3 (RFC). */
        cpu->cr3 = v & ~CR3_NOFLUSH;
        /* TLB tagged by root: flush the new current roots unless NOFLUSH (KVM_REQ_TLB_FLUSH_CURRENT). */
        if (!noflush)
            pvm_m__flush(mem, PVM_FLUSH_CURRENT, 0);
        return true;
    }
    case 4: {
        uint64_t changed = v ^ cpu->cr4;
        if ((v & CR4_FIXED1) != CR4_FIXED1)
            return false;
        if (changed & ~(CR4_GUEST_WRITABLE | CR4_FIXED1))
            return false; /* includes LA57: only PVM_HC_LOAD_PGTBL switches paging depth */
        if ((v & PVM_CR4_PCIDE) && !(cpu->cr4 & PVM_CR4_PCIDE) && (cpu->cr3 & 0xfff))
            return false; /* SDM: PCIDE 0 -> 1 needs CR3[11:0] = 0 */
        cpu->cr4 = v;
        if (changed & (PVM_CR4_PGE | PVM_CR4_PCIDE | PVM_CR4_PSE))
            pvm_m__flush(mem, PVM_FLUSH_ALL, 0);
        return true;
    }
    default:
        return false; /* CR8 and the rest: not emulated */
    }
}

static bool read_cr(const struct pvm_cpu *cpu, int n, uint64_t *v)
{
    switch (n) {
    case 0: *v = cpu->cr0; return true;
    case 2: *v = cpu->cr2; return true;
    case 3: *v = cpu->cr3; return true;
    case 4: *v = cpu->cr4; return true;
    default: return false;
    }
}

static enum pvm_m_result io_exit(struct pvm_cpu *cpu, const ZydisDecodedInstruction *in,
                                 const ZydisDecodedOperand *ops)
{
    bool is_out = in->mnemonic == ZYDIS_MNEMONIC_OUT;
    const ZydisDecodedOperand *acc = is_out ? &ops[1] : &ops[0];
    const ZydisDecodedOperand *port = is_out ? &ops[0] : &ops[1];
    unsigned size = acc->size / 8;

    memset(&cpu->exit, 0, sizeof(cpu->exit));
    cpu->exit.reason = PVM_EXIT_IO;
    cpu->exit.u.io.port = port->type == ZYDIS_OPERAND_TYPE_IMMEDIATE
                              ? (uint16_t)(port->imm.value.u & 0xff)
                              : (uint16_t)cpu->gpr[PVM_RDX];
    cpu->exit.u.io.size = (uint8_t)size;
    cpu->exit.u.io.is_write = is_out;
    if (is_out)
        cpu->exit.u.io.data = (uint32_t)(cpu->gpr[PVM_RAX] & ((1ull << (size * 8)) - 1));
    cpu->pending_exit = PVM_EXIT_IO;
    cpu->pending_io_size = is_out ? 0 : (uint8_t)size;
    cpu->pending_insn_len = in->length; /* RIP advances on completion */
    cpu->pending_rip = cpu->rip;
    return PVM_M_EXIT;
}

enum pvm_m_result pvm_m__emulate_gp(struct pvm_cpu *cpu, const struct pvm_mem *mem,
                                    bool has_error_code, uint32_t error_code)
{
    uint8_t buf[PVM_M_MAX_INSN];
    size_t n = pvm_m__fetch(cpu, mem, buf);
    bool smod = cpu->mode == PVM_MODE_SUPERVISOR;

    /* §6.1: the synthetic CPUID is checked first, and only in smod. */
    if (smod && n >= PVM_SYNTHETIC_CPUID_LEN && !memcmp(buf, synthetic_cpuid, sizeof(synthetic_cpuid)))
        return synthetic_cpuid_insn(cpu, mem);

    ZydisDecoder dec;
    ZydisDecodedInstruction in;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    if (n == 0 || !ZYAN_SUCCESS(ZydisDecoderInit(&dec, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64)) ||
        !ZYAN_SUCCESS(ZydisDecoderDecodeFull(&dec, buf, n, &in, ops)))
        /* The emulator cannot fetch or decode it: #GP(0), as EMULTYPE_PVM_GP. */
        return smod ? gp0(cpu, mem) : pvm_m_deliver(cpu, mem, PVM_VEC_GP, true,
                                                    has_error_code ? error_code : 0);

    /* CPUID only traps under CPUID faulting; it is answered from the table in both modes. */
    if (in.mnemonic == ZYDIS_MNEMONIC_CPUID) {
        cpuid_to_regs(cpu);
        cpu->rip += in.length;
        return PVM_M_RESUME;
    }
    /*
     * §10.17 decision: in umod the privileged instructions fault as on hardware
     * at CPL 3; the hardware error code is reflected.
     */
    if (!smod)
        return pvm_m_deliver(cpu, mem, PVM_VEC_GP, true, has_error_code ? error_code : 0);

    uint64_t v;
    switch (in.mnemonic) {
    case ZYDIS_MNEMONIC_RDMSR: {
        int rc = pvm_m_rdmsr(cpu, mem, (uint32_t)cpu->gpr[PVM_RCX], &v, false);
        if (rc != 0)
            return gp0(cpu, mem);
        cpu->gpr[PVM_RAX] = (uint32_t)v;
        cpu->gpr[PVM_RDX] = v >> 32;
        cpu->rip += in.length;
        return PVM_M_RESUME;
    }
    case ZYDIS_MNEMONIC_WRMSR: {
        v = (cpu->gpr[PVM_RDX] << 32) | (uint32_t)cpu->gpr[PVM_RAX];
        int rc = pvm_m_wrmsr(cpu, mem, (uint32_t)cpu->gpr[PVM_RCX], v, false);
        if (rc == -2)
            return PVM_M_SHUTDOWN; /* §10.12 */
        if (rc != 0)
            return gp0(cpu, mem);
        cpu->rip += in.length;
        return PVM_M_RESUME;
    }
    case ZYDIS_MNEMONIC_CLI:
        pvm_m_set_rflags(cpu, mem, cpu->rflags & ~PVM_RFLAGS_IF); /* virtual IF (§5.7) */
        cpu->rip += in.length;
        return PVM_M_RESUME;
    case ZYDIS_MNEMONIC_STI:
        /* §10.15 decision: no STI shadow: a pending IRQ is taken right after STI. */
        pvm_m_set_rflags(cpu, mem, cpu->rflags | PVM_RFLAGS_IF);
        cpu->rip += in.length;
        return PVM_M_RESUME;
    case ZYDIS_MNEMONIC_HLT:
        cpu->rip += in.length;
        return pvm_m__halt(cpu, mem);
    case ZYDIS_MNEMONIC_MOV: {
        int cr_dst = ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER ? cr_number(ops[0].reg.value) : -1;
        int cr_src = ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER ? cr_number(ops[1].reg.value) : -1;
        struct pvm_m_gpr g;
        if (cr_dst >= 0 && pvm_m__gpr(ops[1].reg.value, &g)) {
            if (!write_cr(cpu, mem, cr_dst, pvm_m__gpr_read(cpu, &g)))
                return gp0(cpu, mem);
        } else if (cr_src >= 0 && pvm_m__gpr(ops[0].reg.value, &g)) {
            if (!read_cr(cpu, cr_src, &v))
                return gp0(cpu, mem);
            pvm_m__gpr_write(cpu, &g, v);
        } else {
            return gp0(cpu, mem); /* e.g. a non-canonical memory access */
        }
        cpu->rip += in.length;
        return PVM_M_RESUME;
    }
    case ZYDIS_MNEMONIC_INVLPG:
        /* §10.17: INVLPG is emulated (the synthetic-CPUID pattern was handled above). */
        if (ops[0].type != ZYDIS_OPERAND_TYPE_MEMORY || !mem_operand_address(cpu, &in, &ops[0], &v))
            return gp0(cpu, mem);
        pvm_m__flush(mem, PVM_FLUSH_ONE, v);
        cpu->rip += in.length;
        return PVM_M_RESUME;
    case ZYDIS_MNEMONIC_IN:
    case ZYDIS_MNEMONIC_OUT:
        return io_exit(cpu, &in, ops);
    default:
        /* §10.18: IRETQ, far transfers, LGDT, SWAPGS, INS/OUTS... are not emulated. */
        return gp0(cpu, mem);
    }
}
