/*
 * lib/machine/decode.c - instruction fetch and register access shared by the
 * #GP emulator and the MMIO decoder.
 */
#include <stdio.h>

#include <Zydis/Zydis.h>

#include "model.h"

size_t pvm_m__fetch(const struct pvm_cpu *cpu, const struct pvm_mem *mem, uint8_t buf[PVM_M_MAX_INSN])
{
    if (!mem->read_virt)
        return 0;
    /* Near the end of mapped memory the full 15 bytes may not be readable. */
    for (size_t n = PVM_M_MAX_INSN; n > 0; n--)
        if (mem->read_virt(mem->opaque, cpu->rip, buf, n) == 0)
            return n;
    return 0;
}

void pvm_m__hexdump(char *out, size_t outlen, const uint8_t *buf, size_t n)
{
    size_t pos = 0;
    if (outlen)
        out[0] = '\0';
    for (size_t i = 0; i < n && pos + 4 <= outlen; i++)
        pos += (size_t)snprintf(out + pos, outlen - pos, i ? " %02x" : "%02x", buf[i]);
}

bool pvm_m__gpr(int zydis_reg, struct pvm_m_gpr *out)
{
    ZydisRegister r = (ZydisRegister)zydis_reg;

    out->high8 = false;
    if (r >= ZYDIS_REGISTER_AL && r <= ZYDIS_REGISTER_R15B) {
        /* AL CL DL BL | AH CH DH BH | SPL BPL SIL DIL | R8B..R15B */
        unsigned i = (unsigned)(r - ZYDIS_REGISTER_AL);
        out->bytes = 1;
        out->high8 = i >= 4 && i < 8;
        out->idx = i < 4 ? i : i - 4;
        return true;
    }
    if (r >= ZYDIS_REGISTER_AX && r <= ZYDIS_REGISTER_R15W) {
        out->bytes = 2;
        out->idx = (unsigned)(r - ZYDIS_REGISTER_AX);
        return true;
    }
    if (r >= ZYDIS_REGISTER_EAX && r <= ZYDIS_REGISTER_R15D) {
        out->bytes = 4;
        out->idx = (unsigned)(r - ZYDIS_REGISTER_EAX);
        return true;
    }
    if (r >= ZYDIS_REGISTER_RAX && r <= ZYDIS_REGISTER_R15) {
        out->bytes = 8;
        out->idx = (unsigned)(r - ZYDIS_REGISTER_RAX);
        return true;
    }
    return false;
}

static uint64_t width_mask(unsigned bytes)
{
    return bytes >= 8 ? ~0ull : (1ull << (bytes * 8)) - 1;
}

uint64_t pvm_m__gpr_read(const struct pvm_cpu *cpu, const struct pvm_m_gpr *r)
{
    uint64_t v = cpu->gpr[r->idx];
    if (r->high8)
        return (v >> 8) & 0xff;
    return v & width_mask(r->bytes);
}

void pvm_m__gpr_write(struct pvm_cpu *cpu, const struct pvm_m_gpr *r, uint64_t v)
{
    uint64_t *g = &cpu->gpr[r->idx];
    if (r->high8)
        *g = (*g & ~0xff00ull) | ((v & 0xff) << 8);
    else if (r->bytes == 1 || r->bytes == 2)
        *g = (*g & ~width_mask(r->bytes)) | (v & width_mask(r->bytes));
    else if (r->bytes == 4)
        *g = v & 0xffffffffull; /* 32-bit writes zero-extend in 64-bit mode */
    else
        *g = v;
}
