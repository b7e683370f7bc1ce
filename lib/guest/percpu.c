/* lib/guest/percpu.c - pins the numbers entry.S uses to the C definitions. */
#include <stddef.h>

#include "pvm/guest/pvm_guest.h"
#include "percpu.h"

_Static_assert(offsetof(struct pvm_percpu, pvcs) == 0, "PVCS first");
_Static_assert(offsetof(struct pvm_percpu, self) == PERCPU_SELF, "percpu self");
_Static_assert(offsetof(struct pvm_percpu, user_ctx) == PERCPU_USER_CTX, "percpu user_ctx");
_Static_assert(offsetof(struct pvm_percpu, cpu_id) == PERCPU_CPU_ID, "percpu cpu_id");
_Static_assert(offsetof(struct pvm_percpu, boot) == PERCPU_BOOT_INFO, "percpu boot");
_Static_assert(sizeof(struct pvm_percpu) == 4096, "one page per vCPU");
_Static_assert(PERCPU_SELF == 128 && PERCPU_CPU_ID == 144, "pvm/guest/trap.h inlines these");
_Static_assert(offsetof(struct pvm_frame, r15) == F_R15, "frame r15");
_Static_assert(offsetof(struct pvm_frame, vector) == F_VECTOR, "frame vector");
_Static_assert(offsetof(struct pvm_frame, error_code) == F_ERRCODE, "frame errcode");
_Static_assert(offsetof(struct pvm_frame, cr2) == F_CR2, "frame cr2");
_Static_assert(offsetof(struct pvm_frame, rip) == F_RIP, "frame rip");
_Static_assert(offsetof(struct pvm_frame, rflags) == F_RFLAGS, "frame rflags");
_Static_assert(offsetof(struct pvm_frame, rsp) == F_RSP, "frame rsp");
_Static_assert(offsetof(struct pvm_frame, cs) == F_CS, "frame cs");
_Static_assert(offsetof(struct pvm_frame, ss) == F_SS, "frame ss");
_Static_assert(offsetof(struct pvm_frame, kind) == F_KIND, "frame kind");
_Static_assert(sizeof(struct pvm_frame) == FRAME_SIZE, "frame size");
_Static_assert(KIND_USER == PVM_FRAME_USER && KIND_SYSCALL == PVM_FRAME_SYSCALL &&
               KIND_SUPER_EXC == PVM_FRAME_SUPER_EXC && KIND_SUPER_IRQ == PVM_FRAME_SUPER_IRQ,
               "frame kinds");
_Static_assert(PVCS_rip == 96 && PVCS_rsp == 104 && PVCS_rcx == 112 && PVCS_r11 == 120 &&
               PVCS_eflags == 88 && PVCS_user_cs == 64 && PVCS_user_ss == 66 &&
               PVCS_user_gsbase == 80 && PVCS_cr2 == 16 && PVCS_event_vector == 12 &&
               PVCS_event_errcode == 8, "PVCS_* offsets (used by entry.S)");
_Static_assert(PVM_FRAME_rip == 8 && PVM_FRAME_rflags == 24 && PVM_FRAME_rsp == 32 &&
               PVM_FRAME_rcx == 48 && PVM_FRAME_r11 == 56 && PVM_FRAME_cs == 16 &&
               PVM_FRAME_ss == 40, "entry.S repeats the §4 frame offsets");
_Static_assert(PVM_HOSTCALL(PVM_HOSTCALL_EXIT) == 0x4c50564d00000001ull, "entry.S HOSTCALL_EXIT");
_Static_assert(((((uint64_t)PVM_USER32_CS << 48) >> 48) | 3) + 16 == PVM_USER_CS, "STAR rule (§2)");
