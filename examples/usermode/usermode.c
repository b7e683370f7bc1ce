/*
 * usermode: a guest kernel that runs a user program in umod.
 *
 * The kernel builds a user page table holding only the user program's
 * pages (PVM_USER_TEXT / PVM_USER_DATA, a stack) plus one supervisor page,
 * makes it the user root (PVM_HC_LOAD_PGTBL) and enters user mode (ERETU).
 * The user program makes system calls (SYSCALL -> MSR_LSTAR), takes a page
 * fault the kernel resolves by mapping a page, and finally reads the
 * supervisor page, which is refused (#PF with P|U) and ends the program.
 */
#include <pvm/guest/pvm_guest.h>

#define SYS_WRITE  1
#define SYS_GETPID 2
#define SYS_REPORT 3
#define SYS_EXIT   60

#define USER_STACK_TOP 0x300000000000ull
#define USER_HEAP      0x310000000000ull /* mapped on demand */
#define USER_SECRET    0x320000000000ull /* a supervisor page in the user root */

/* ---- the user program: only code and data the user root maps ---------- */

PVM_USER_DATA static char user_msg[] = "hello from user mode\n";

PVM_USER_TEXT static void user_main(void)
{
    pvm_user_syscall(SYS_WRITE, (long)user_msg, sizeof(user_msg) - 1, 0);
    long pid = pvm_user_syscall(SYS_GETPID, 0, 0, 0);
    volatile long *heap = (volatile long *)USER_HEAP;
    heap[0] = pid * 2; /* page fault: the kernel maps the page, the store is retried */
    pvm_user_syscall(SYS_REPORT, heap[0], 0, 0);
    volatile long *secret = (volatile long *)USER_SECRET;
    pvm_user_syscall(SYS_REPORT, *secret, 0, 0); /* refused: never reported */
    pvm_user_syscall(SYS_EXIT, 0, 0, 0);
    for (;;)
        ;
}

/* ---- the kernel -------------------------------------------------------- */

static uint64_t user_root;
static long kernel_secret = 0x5ec2e7;

static void sys_write(struct pvm_frame *f)
{
    uint64_t va = f->rdi, len = f->rsi;
    char buf[128];
    if (len > sizeof(buf)) {
        f->rax = (uint64_t)-22;
        return;
    }
    for (uint64_t i = 0; i < len; i++) {
        /* The kernel root does not map user memory: go through the user root. */
        uint64_t pa = pvm_pt_translate(user_root, va + i);
        if (pa == ~0ull || !(pvm_pt_lookup(user_root, va + i) & PVM_PTE_U)) {
            f->rax = (uint64_t)-14;
            return;
        }
        buf[i] = *(const char *)pvm_phys_to_virt(pa);
    }
    pvm_console_write(buf, len);
    f->rax = len;
}

static void on_syscall(struct pvm_frame *f)
{
    switch (f->rax) {
    case SYS_WRITE:
        sys_write(f);
        break;
    case SYS_GETPID:
        f->rax = 42;
        break;
    case SYS_REPORT:
        pvm_printf("usermode: user reports %ld\n", (long)f->rdi);
        f->rax = 0;
        break;
    case SYS_EXIT:
        pvm_user_return((long)f->rdi);
    default:
        f->rax = (uint64_t)-38;
        break;
    }
}

static void on_page_fault(struct pvm_frame *f)
{
    if (!pvm_frame_is_user(f))
        pvm_panic("kernel page fault at 0x%lx (rip 0x%lx)", (unsigned long)f->cr2,
                  (unsigned long)f->rip);
    uint64_t va = f->cr2 & ~(PVM_PAGE_SIZE - 1);
    if (!(f->error_code & PVM_PFEC_P) && va == USER_HEAP) {
        uint64_t page = pvm_page_alloc();
        if (!page || pvm_pt_map(user_root, va, page, PVM_MAP_WRITE | PVM_MAP_USER) < 0)
            pvm_panic("out of memory");
        pvm_printf("usermode: kernel mapped user page 0x%lx on demand\n", (unsigned long)va);
        return; /* ERETU retries the store */
    }
    pvm_printf("usermode: user access to 0x%lx refused (#PF error 0x%lx)\n", (unsigned long)f->cr2,
               (unsigned long)f->error_code);
    pvm_user_return(-14);
}

static void map_range(char *start, char *end, unsigned flags)
{
    for (char *p = start; p < end; p += PVM_PAGE_SIZE)
        if (pvm_pt_map(user_root, (uint64_t)p, pvm_virt_to_phys(p), flags) < 0)
            pvm_panic("cannot map user page 0x%lx", (unsigned long)p);
}

int main(void)
{
    pvm_set_syscall_handler(on_syscall);
    pvm_set_trap_handler(PVM_VEC_PF, on_page_fault);

    user_root = pvm_pt_create();
    uint64_t stack = pvm_page_alloc();
    PVM_ASSERT(user_root && stack);
    map_range(__pvm_user_text_start, __pvm_user_text_end, PVM_MAP_EXEC | PVM_MAP_USER);
    map_range(__pvm_user_data_start, __pvm_user_data_end, PVM_MAP_WRITE | PVM_MAP_USER);
    PVM_ASSERT(pvm_pt_map(user_root, USER_STACK_TOP - PVM_PAGE_SIZE, stack,
                          PVM_MAP_WRITE | PVM_MAP_USER) == 0);
    uint64_t secret_pa = pvm_virt_to_phys(&kernel_secret) & ~(PVM_PAGE_SIZE - 1);
    PVM_ASSERT(pvm_pt_map(user_root, USER_SECRET, secret_pa, 0) == 0); /* supervisor only */
    pvm_pt_switch_user(user_root);

    long r = pvm_enter_user((uint64_t)user_main, USER_STACK_TOP - 8);
    pvm_printf("usermode: user program ended with %ld\n", r);
    return r == -14 ? 0 : 1;
}
