/*
 * hostcall-host: runs the hostcall guest and serves its host call.
 *
 *   hostcall-host hostcall.elf
 *
 * The handler reads the guest's string with pvm_vcpu_read_guest() (which
 * checks that every byte is mapped), prints it in capitals and returns its
 * length.  Console output and exit are handled in the run loop.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <pvm/abi.h>
#include <pvm/pvm.h>

#define HOSTCALL_SHOUT (PVM_HOSTCALL_USER_FIRST + 0)

static int on_hostcall(void *opaque, pvm_vcpu *vcpu, uint32_t nr, const uint64_t args[6],
                       uint64_t *ret)
{
    char buf[256];
    (void)opaque;
    if (nr != HOSTCALL_SHOUT)
        return 1; /* not ours: let pvm_vcpu_run() return PVM_EXIT_HYPERCALL */
    if (args[1] >= sizeof(buf) || pvm_vcpu_read_guest(vcpu, args[0], buf, args[1]) < 0) {
        *ret = (uint64_t)-14; /* -EFAULT */
        return 0;
    }
    buf[args[1]] = 0;
    for (char *p = buf; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    printf("host: the guest says \"%s\"\n", buf);
    *ret = args[1];
    return 0;
}

int main(int argc, char **argv)
{
    pvm_vm *vm = NULL;
    pvm_vcpu *vcpu = NULL;
    struct pvm_exit e = { 0 };
    int status = 1;

    if (argc > 1 && !strcmp(argv[1], "--help")) {
        printf("usage: hostcall-host guest.elf\n"
               "Run guest.elf with a host-call handler: host call 0x100 takes a guest string\n"
               "(GVA, length), prints it in capitals and returns its length.\n");
        return 0;
    }
    if (argc < 2 || pvm_vm_create(&vm, NULL) < 0 || pvm_vm_load_elf(vm, argv[1], NULL, NULL) < 0 ||
        pvm_vm_set_hostcall_handler(vm, on_hostcall, NULL) < 0 ||
        pvm_vcpu_create(&vcpu, vm, NULL) < 0 || pvm_vcpu_setup_boot(vcpu, 0) < 0) {
        fprintf(stderr, "hostcall-host: %s\n", argc < 2 ? "usage: hostcall-host guest.elf" : pvm_last_error());
        pvm_vm_destroy(vm);
        return 125;
    }
    for (;;) {
        if (pvm_vcpu_run(vcpu, &e) < 0) {
            fprintf(stderr, "hostcall-host: %s\n", pvm_last_error());
            break;
        }
        if (e.reason != PVM_EXIT_HYPERCALL) {
            fprintf(stderr, "hostcall-host: unexpected exit %u\n", e.reason);
            break;
        }
        uint64_t nr = e.u.hypercall.nr, *a = e.u.hypercall.args;
        if (nr == PVM_HOSTCALL(PVM_HOSTCALL_EXIT)) {
            status = (int)(a[0] & 0xff);
            break;
        }
        if (nr == PVM_HOSTCALL(PVM_HOSTCALL_CONSOLE_WRITE) && a[1] < 4096) {
            char buf[4096];
            if (pvm_vcpu_read_guest(vcpu, a[0], buf, a[1]) == 0)
                fwrite(buf, 1, a[1], stdout);
            e.u.hypercall.ret = a[1];
        } else {
            e.u.hypercall.ret = (uint64_t)-38; /* -ENOSYS */
        }
    }
    fflush(stdout);
    pvm_vm_destroy(vm);
    return status;
}
