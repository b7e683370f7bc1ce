/*
 * tests/test_coredump.c - pvm_vm_write_core(): the core file's exact contents
 * for a hand-built guest, and gdb's backtrace of a real crashed guest.  On the
 * backend PVM_TEST_BACKEND names (native by default).
 */
#include <elf.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/procfs.h>
#include <sys/user.h>
#include <unistd.h>

#include "guestvm.h"
#include "testutil.h"

#include <check.h>

GVM_CODE_BLOCK(g_core, "mov $0x1122334455667788, %rbx\n ud2\n");

START_TEST(core_holds_registers_and_memory)
{
    struct gvm g;
    struct pvm_exit e;
    struct pvm_regs r;
    char path[] = "/tmp/pvm-core-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);

    gvm_boot(&g, g_core_start, g_core_end);
    gvm_run(&g, &e); /* stopped in the #UD handler's report */
    gvm_expect_hc(&e, GVM_HC_REPORT_EXC);
    gvm_regs(&g, &r);
    ck_assert_int_eq(pvm_vm_write_core(g.vm, path), 0);

    size_t len;
    uint8_t *b = pvm_test_read_file(path, &len);
    const Elf64_Ehdr *eh = (const void *)b;
    ck_assert_int_eq(memcmp(eh->e_ident, ELFMAG, SELFMAG), 0);
    ck_assert_uint_eq(eh->e_type, ET_CORE);
    ck_assert_uint_eq(eh->e_machine, EM_X86_64);
    const Elf64_Phdr *ph = (const void *)(b + eh->e_phoff);
    ck_assert_uint_eq(ph[0].p_type, PT_NOTE);
    /* One NT_PRSTATUS: vCPU 0 as LWP 1, registers exactly as pvm_vcpu_get_regs says. */
    ck_assert_uint_eq(ph[0].p_filesz, sizeof(Elf64_Nhdr) + 8 + sizeof(struct elf_prstatus));
    const Elf64_Nhdr *nh = (const void *)(b + ph[0].p_offset);
    ck_assert_uint_eq(nh->n_type, NT_PRSTATUS);
    ck_assert_str_eq((const char *)(nh + 1), "CORE");
    struct elf_prstatus ps;
    memcpy(&ps, (const uint8_t *)(nh + 1) + 8, sizeof(ps));
    ck_assert_int_eq(ps.pr_pid, 1);
    struct user_regs_struct u;
    memcpy(&u, &ps.pr_reg, sizeof(u));
    ck_assert_uint_eq(u.rip, r.rip);
    ck_assert_uint_eq(u.rsp, r.rsp);
    ck_assert_uint_eq(u.rbx, 0x1122334455667788ull);
    ck_assert_uint_eq(u.r12, r.r12);
    /* The code page, by guest-virtual address, with the guest's bytes; read-only and executable. */
    bool found = false;
    for (unsigned i = 1; i < eh->e_phnum; i++) {
        ck_assert_uint_eq(ph[i].p_type, PT_LOAD);
        if (GVM_CODE - ph[i].p_vaddr < ph[i].p_filesz) {
            size_t n = (size_t)(g_core_end - g_core_start);
            ck_assert_int_eq(memcmp(b + ph[i].p_offset + (GVM_CODE - ph[i].p_vaddr), g_core_start, n), 0);
            ck_assert_uint_eq(ph[i].p_flags & (PF_R | PF_X), PF_R | PF_X);
            found = true;
        }
    }
    ck_assert(found);
    free(b);
    unlink(path);
    /* A path that cannot be created: a clear error, nothing left behind. */
    ck_assert_int_eq(pvm_vm_write_core(g.vm, "/nonexistent-dir/core"), PVM_EIO);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "/nonexistent-dir/core"));
    ck_assert_int_eq(pvm_vm_write_core(NULL, path), PVM_EINVAL);
    gvm_fini(&g);
}
END_TEST

/*
 * Hostile page tables: every entry of each level points at the one table of
 * the next, whose leaves are not RAM: 512^4 paths that map nothing.
 */
START_TEST(core_of_self_referencing_tables_is_bounded)
{
    struct gvm g;
    gvm_boot(&g, g_core_start, g_core_end);
    const uint64_t tables[4] = { g.kroot, 0x300000, 0x301000, 0x302000 };
    for (unsigned l = 0; l < 4; l++) {
        uint64_t *t = (uint64_t *)(g.ram + tables[l]);
        uint64_t next = l < 3 ? tables[l + 1] : 1ull << 40; /* leaves: not RAM */
        for (unsigned i = 0; i < 512; i++)
            t[i] = next | PVM_PTE_P | PVM_PTE_W;
    }
    char dir[] = "/tmp/pvm-core-XXXXXX", path[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/core", dir);
    ck_assert_int_eq(pvm_vm_write_core(g.vm, path), PVM_ERANGE);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "65536 tables"));
    ck_assert_int_ne(access(path, F_OK), 0); /* no file: nothing half-written */
    ck_assert_int_eq(rmdir(dir), 0);
    gvm_fini(&g);
}
END_TEST

/* gdb opens the core of a crashed SDK guest beside its ELF and names the function it died in. */
START_TEST(gdb_backtrace_of_a_crash)
{
    if (system("command -v gdb >/dev/null 2>&1") != 0) {
        /* .ci/install-deps installs gdb; a developer machine may lack it. */
        printf("coredump: no gdb on PATH, backtrace check skipped\n");
        return;
    }
    const char *elf = PVM_TEST_BINARY_DIR "/examples/triple-fault.elf";
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.backend = gvm_backend();
    pvm_vm *vm;
    pvm_vcpu *cpu;
    struct pvm_load_info info;
    struct pvm_exit e;
    ck_assert_int_eq(pvm_vm_create(&vm, &o), 0);
    ck_assert_msg(pvm_vm_load_elf(vm, elf, NULL, &info) == 0, "%s", pvm_last_error());
    ck_assert_int_eq(pvm_vcpu_create(&cpu, vm, NULL), 0);
    ck_assert_int_eq(pvm_vcpu_setup_boot(cpu, 0), 0);
    do {
        ck_assert_int_eq(pvm_vcpu_run(cpu, &e), 0);
        if (e.reason == PVM_EXIT_HYPERCALL)
            e.u.hypercall.ret = 0; /* the console line: not needed here */
    } while (e.reason == PVM_EXIT_HYPERCALL);
    ck_assert_uint_eq(e.reason, PVM_EXIT_SHUTDOWN);
    char core[] = "/tmp/pvm-core-XXXXXX";
    int fd = mkstemp(core);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(pvm_vm_write_core(vm, core), 0);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "gdb -batch -nx -ex 'bt 1' %s %s 2>&1", elf, core);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    char out[4096] = "";
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    pclose(p);
    ck_assert_msg(strstr(out, "#0 ") && strstr(out, " main ("), "gdb said:\n%s", out);
    unlink(core);
    pvm_vm_destroy(vm);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("coredump");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, core_holds_registers_and_memory);
    tcase_add_test(tc, core_of_self_referencing_tables_is_bounded);
    tcase_add_test(tc, gdb_backtrace_of_a_crash);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
