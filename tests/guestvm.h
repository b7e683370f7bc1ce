/*
 * tests/guestvm.h - tiny hand-built guests for end-to-end tests of a backend.
 *
 * Guest-physical == guest-virtual layout (identity, supervisor pages unless
 * noted), 4 MiB of RAM at GPA 0:
 *   0x001000..0x020000  page-table pages (bump allocated)
 *   0x100000            test code (RX)
 *   0x101000            PVCS page (RW)
 *   0x102000..0x104000  supervisor stack (RW), top 0x104000
 *   0x104000            event entry block (RX): +0 user event, +256 exception,
 *                       +512 interrupt, ERETU site, ERETS site, LSTAR entry
 *   0x106000            data page (RW)
 *   0x108000            user code (U, RX; user root only)
 *   0x109000..0x10b000  user stack (U, RW; user root only)
 *
 * Every entry stub saves RCX, R11 and RSP (into R12, R13, R14), reports with
 * a host call (GVM_HC_REPORT + kind) and then jumps to the address the host
 * returns in RAX: the ERETU or ERETS site, or anywhere else.
 */
#ifndef PVM_TEST_GUESTVM_H
#define PVM_TEST_GUESTVM_H

#include <stdint.h>
#include <string.h>

#include "pvm/abi.h"
#include "pvm/pvm.h"

#define GVM_RAM_SIZE     (4ull << 20)
#define GVM_CODE         0x100000ull
#define GVM_PVCS         0x101000ull
#define GVM_STACK_TOP    0x104000ull
#define GVM_ENTRY        0x104000ull
#define GVM_RETU_SITE    (GVM_ENTRY + 0x300)
#define GVM_RETS_SITE    (GVM_ENTRY + 0x310)
#define GVM_LSTAR        (GVM_ENTRY + 0x380)
#define GVM_DATA         0x106000ull
#define GVM_USER_CODE    0x108000ull
#define GVM_USER_STACK_TOP 0x10b000ull
#define GVM_REDZONE      16

/* Host-call numbers the entry stubs use (PVM_HOSTCALL(n)). */
#define GVM_HC_REPORT_USER  0x10
#define GVM_HC_REPORT_EXC   0x11
#define GVM_HC_REPORT_IRQ   0x12
#define GVM_HC_REPORT_LSTAR 0x13

struct gvm {
    pvm_vm *vm;
    pvm_vcpu *cpu;
    uint8_t *ram;
    uint64_t pt_next;
    uint64_t kroot, uroot;
};

/* Create VM + vCPU, RAM, both roots, the standard mappings and entry stubs; MSRs set from the host. */
/* The backend the e2e guests run on: $PVM_TEST_BACKEND ("native" when unset). */
enum pvm_backend gvm_backend(void);
void gvm_init(struct gvm *g);
void gvm_fini(struct gvm *g);
/* gvm_init, the code block [start, end) at GVM_CODE, and the vCPU started there in smod. */
void gvm_boot(struct gvm *g, const uint8_t *start, const uint8_t *end);
/* Map one 4 KiB page in @root (PTE flags: PVM_PTE_*; P is implied). */
void gvm_map(struct gvm *g, uint64_t root, uint64_t gva, uint64_t gpa, uint64_t flags);
/* Copy [start, end) of host bytes to guest-physical @gpa. */
void gvm_load(struct gvm *g, uint64_t gpa, const void *start, const void *end);
/* Set RIP and RSP for the next run. */
void gvm_start(struct gvm *g, uint64_t rip, uint64_t rsp);
/* Run until an exit (failing the test on INTERNAL_ERROR); returns the exit reason. */
uint32_t gvm_run(struct gvm *g, struct pvm_exit *e);
struct pvm_vcpu_struct *gvm_pvcs(struct gvm *g);
/* The §4 frame an exception taken at RSP = GVM_STACK_TOP is written to: ((RSP - redzone) & ~15) - 64. */
#define GVM_FRAME_ADDR (((GVM_STACK_TOP - GVM_REDZONE) & ~15ull) - 64)
void gvm_regs(struct gvm *g, struct pvm_regs *r);
/* Expect a host-call exit with number PVM_HOSTCALL(@nr). */
void gvm_expect_hc(const struct pvm_exit *e, uint32_t nr);

/* Declare a block of guest code assembled into the test binary. */
/* A section of its own: a block's .org counts from the block's start (sanitizer builds fill .rodata). */
#define GVM_CODE_BLOCK(name, body)                                                  \
    extern const uint8_t name##_start[], name##_end[];                              \
    __asm__(".pushsection .rodata.gvm." #name ", \"a\"\n.globl " #name "_start\n"    \
            ".globl " #name "_end\n" #name "_start:\n" body "\n" #name "_end:\n.popsection\n")

/* movabs $PVM_HOSTCALL(n), %rax ; syscall */
#define GVM_HC(n) "movabs $(0x4c50564d00000000 + " #n "), %rax\n syscall\n"

#endif
