#!/usr/bin/env python3
"""bench/report.py - turn the benchmarks' JSON lines into the results table.

Usage: report.py RAW_JSON_LINES SKIPS_FILE OUT_JSON
Prints a Markdown table (absolute numbers, ratios to the same-run baselines,
targets met/missed) and writes OUT_JSON with the machine, the raw results,
the rows and the skipped peers.
"""
import json
import platform
import subprocess
import sys


def machine():
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "kernel": platform.release(), "cpus": subprocess.run(
        ["nproc"], capture_output=True, text=True).stdout.strip()}


def fmt_time(ns):
    if ns is None:
        return "-"
    if ns >= 1e6:
        return "%.2f ms" % (ns / 1e6)
    if ns >= 1e3:
        return "%.2f us" % (ns / 1e3)
    return "%.0f ns" % ns


def main():
    if len(sys.argv) != 4 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(sys.argv) == 2 else 2
    raw = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    skips = [l.strip() for l in open(sys.argv[2]) if l.strip()]
    r = {x["name"]: x for x in raw}

    def p50(k):
        return r.get(k, {}).get("p50_ns")

    def val(k):
        return r.get(k, {}).get("value")

    T = p50("baseline.seccomp_trap_T")
    tg = p50("baseline.tgkill_roundtrip")
    sysemu = p50("baseline.ptrace_sysemu_roundtrip")
    rows = []

    def row(label, key, ratio=None, ratio_of="", target="", ok=None, absolute=None):
        x = r.get(key)
        if absolute is None:
            if x and "p50_ns" in x:
                absolute = "%s (p10 %s, p90 %s)" % (fmt_time(x["p50_ns"]), fmt_time(x["p10_ns"]),
                                                    fmt_time(x["p90_ns"]))
            elif x and x.get("failed"):
                absolute = "FAILED (guest crashed; see the log)"
                ok = None if ok is None else False
            elif x:
                absolute = "%g %s" % (x["value"], x["unit"])
            else:
                absolute = "not measured"
        rows.append({"row": label, "key": key, "value": absolute,
                     "ratio": None if ratio is None else round(ratio, 3), "ratio_of": ratio_of,
                     "target": target, "met": None if ok is None else bool(ok)})

    def over(a, b):
        return a / b if a is not None and b else None

    # Baselines.
    row("host getpid syscall", "baseline.getpid", over(p50("baseline.getpid"), T), "x T")
    row("in-process seccomp trap + sigreturn (T)", "baseline.seccomp_trap_T", 1.0, "x T")
    row("tgkill -> handler round trip", "baseline.tgkill_roundtrip", over(tg, T), "x T")
    row("ptrace SYSEMU round trip", "baseline.ptrace_sysemu_roundtrip", over(sysemu, T), "x T")
    row("host compute (bench_compute(1000))", "baseline.compute_1000")

    # PVM paper Table 1 on libpvm native.
    for label, key in (("hypercall (KVM_HC_VAPIC_POLL_IRQ)", "pvm.hypercall"),
                       ("#UD -> guest handler -> ERETS", "pvm.exception_ud_erets"),
                       ("WRMSR of a PVM MSR (emulated)", "pvm.wrmsr_pvm_msr"),
                       ("synthetic CPUID", "pvm.cpuid_synthetic"),
                       ("port I/O exit to the application", "pvm.pio_exit_to_app")):
        q = over(p50(key), T)
        row(label, key, q, "x T", "<= 3 T", q is not None and q <= 3)
    # An exception is not a syscall: on a PVM-guest host kernel a ud2 -> SIGILL round trip costs
    # several T, so the #UD row's floor is one of those plus one T (the ERETS).
    ud = p50("baseline.ud_sigill_roundtrip")
    floor = ud + T if ud is not None and T else None
    row("  floor: ud2 -> SIGILL -> sigreturn, plus T", "baseline.ud_sigill_roundtrip",
        over(p50("pvm.exception_ud_erets"), floor), "x floor")
    row("host-call exit pair (NEXT+DONE, subtracted above)", "pvm.hostcall_exit_pair",
        over(p50("pvm.hostcall_exit_pair"), T), "x T")
    q = over(p50("pvm.user_syscall_eretu"), T)
    # Issue 15's targets (issue 7 asked <= 1.5 T, which needs user and kernel in one host address space).
    row("user SYSCALL -> guest kernel -> ERETU", "pvm.user_syscall_eretu", q, "x T", "<= 3 T",
        q is not None and q <= 3)
    # The same round trip's shape without libpvm (bench-baselines): two processes trapping and handing
    # off to each other (the two-stub floor), and through a relaying third process (today's shape).
    row("  floor: two processes hand a trap to each other", "baseline.handoff_two_process",
        over(p50("pvm.user_syscall_eretu"), p50("baseline.handoff_two_process")), "x floor")
    row("  the same carrying the XSAVE image both ways (a real hand-off)", "baseline.handoff_two_process_fpu",
        over(p50("pvm.user_syscall_eretu"), p50("baseline.handoff_two_process_fpu")), "x floor")
    row("  the same relayed by a third process (library thread)", "baseline.handoff_relayed",
        over(p50("pvm.user_syscall_eretu"), p50("baseline.handoff_relayed")), "x relayed")
    q = over(sysemu, p50("pvm.user_syscall_eretu"))
    row("  ptrace SYSEMU / user syscall", "pvm.user_syscall_eretu", q, "x faster", ">= 10x",
        q is not None and q >= 10, absolute="")
    q = over(p50("pvm.user_pf_eretu"), T)
    row("user #PF (fresh page) -> guest kernel -> ERETU", "pvm.user_pf_eretu", q, "x T", "<= 4 T",
        q is not None and q <= 4)
    pf = p50("baseline.pf_sigsegv_roundtrip")
    row("  a host page fault -> SIGSEGV -> sigreturn (its exception)", "baseline.pf_sigsegv_roundtrip",
        over(p50("pvm.user_pf_eretu"), pf), "x this")
    # Injection against the wake-up it needs at least (issue: <= 1.5x the same-run baseline).
    for label, key, base, what in (
            ("inject -> handler, guest running", "pvm.inject_running_to_handler",
             "baseline.signal_to_spinning_process", "x signal to a spinning process"),
            ("inject -> handler, guest halted", "pvm.inject_halted_to_handler",
             "baseline.futex_wake_sleeping_thread", "x futex wake of a sleeping thread")):
        q = over(p50(key), p50(base))
        row(label, key, q, what, "<= 1.5x", q is not None and q <= 1.5)
        row("  " + what[2:], base)
    q = over(p50("pvm.host_compute_1000"), p50("pvm.guest_compute_1000"))
    row("guest compute (bench_compute(1000))", "pvm.guest_compute_1000", q, "x host speed", ">= 0.95x",
        q is not None and q >= 0.95)
    row("  host compute in the same process", "pvm.host_compute_1000")

    # VM lifetime and density.
    c = p50("pvm.vm_create_to_first_insn")
    row("VM create -> first guest instruction", "pvm.vm_create_to_first_insn", None, "",
        "<= 0.5 ms", c is not None and c <= 0.5e6)
    q = over(p50("qemu_tcg.boot_to_first_insn"), c)
    row("  QEMU TCG boot / VM create", "pvm.vm_create_to_first_insn", q, "x faster", ">= 50x",
        q is not None and q >= 50, absolute="")
    row("VM create -> first instruction, guest sets its own CR3",
        "pvm.vm_create_to_first_insn_new_cr3")
    row("VM create -> first exit seen by the host", "pvm.vm_create_to_first_exit")
    row("VM create -> first instruction, 2 ms after the last destroy (quiet)",
        "pvm.vm_create_to_first_insn_quiet")
    row("create + load ELF + call + destroy (Hyperlight: 0.9 ms)", "pvm.create_load_call_destroy")
    row("  of which the ELF load (4 MiB of RAM)", "pvm.load_elf_4mib")
    rss = val("pvm.idle_vm_rss_kib")
    row("idle VM: RSS (library + stubs) per VM", "pvm.idle_vm_rss_kib", None, "",
        "<= 1024 KiB", rss is not None and rss <= 1024)
    row("idle VM: PSS per VM", "pvm.idle_vm_pss_kib")
    row("idle VM: page tables (VmPTE) per VM", "pvm.idle_vm_pagetables_kib")
    row("idle VM: MemAvailable drop per VM (incl. kernel)", "pvm.idle_vm_memavailable_kib")
    n = val("pvm.idle_vms_before_2x_slower")
    row("idle VMs before creation fails or slows past 2x", "pvm.idle_vms_before_2x_slower", None, "",
        ">= 1000", n is not None and n >= 1000)
    row("idle VMs created (cap)", "pvm.idle_vms_created")
    row("  creation time, first 50 VMs", "pvm.idle_vms_first_create_us")
    row("  creation time, last 50 VMs", "pvm.idle_vms_last_create_us")

    # Snapshots (bench-snap).
    row("snapshot (16 MiB RAM, 1 MiB data)", "snap.snapshot_16mib_1mib_data")
    for k in (1, 16, 256):
        key = "snap.restore_%d_dirty" % k
        ok = None
        if k == 16:
            ok = p50(key) is not None and p50(key) <= 20e3
        row("restore, %d page(s) written (Hyperlight ~0.09 ms)" % k, key, None, "", "<= 20 us" if k == 16 else "", ok)
    c = p50("snap.create_from_snapshot_to_first_insn")
    row("create from snapshot -> first instruction (Hyperlight ~0.6 ms)", "snap.create_from_snapshot_to_first_insn",
        None, "", "<= 100 us", c is not None and c <= 100e3)
    c = p50("snap.prestarted_create_to_first_insn")
    row("  the same, VM started ahead (pvm_snapshot_prestart)", "snap.prestarted_create_to_first_insn",
        None, "", "<= 100 us", c is not None and c <= 100e3)
    tot = val("snap.vms_memavailable_drop_mib")
    row("VMs from one snapshot: MemAvailable drop", "snap.vms_memavailable_drop_mib", None, "",
        "< 1024 MiB for 1000", tot is not None and val("snap.vms_from_one_snapshot") == 1000 and tot < 1024)
    row("  per VM (PSS + Shmem)", "snap.vm_pss_plus_shmem_kib_each")

    # Peers.
    def peer(label, key, prefix):
        if key in r:
            return True
        why = [s for s in skips if s.startswith(prefix)]
        row(label, key, absolute="skipped: " + (why[0] if why else "not measured"))
        return False

    if peer("QEMU TCG: process start -> first instruction", "qemu_tcg.boot_to_first_insn", "qemu"):
        row("QEMU TCG: process start -> first instruction", "qemu_tcg.boot_to_first_insn")
    if peer("QEMU TCG: user syscall round trip", "qemu_tcg.user_syscall_roundtrip", "qemu"):
        row("QEMU TCG: user syscall round trip", "qemu_tcg.user_syscall_roundtrip",
            over(p50("pvm.user_syscall_eretu"), p50("qemu_tcg.user_syscall_roundtrip")), "libpvm / this")
    if peer("/dev/kvm: VM create -> first instruction", "kvm.vm_create_to_first_insn", "kvm"):
        row("/dev/kvm: VM create -> first instruction", "kvm.vm_create_to_first_insn",
            over(c, p50("kvm.vm_create_to_first_insn")), "libpvm / this")
    if peer("/dev/kvm: user syscall round trip", "kvm.user_syscall_roundtrip", "kvm"):
        row("/dev/kvm: user syscall round trip", "kvm.user_syscall_roundtrip",
            over(p50("pvm.user_syscall_eretu"), p50("kvm.user_syscall_roundtrip")), "libpvm / this")

    # The mixed workload: m compute units + 1 user syscall per iteration, per platform, against
    # the host's own bench_compute(m) (bench-pvm, same run).  Ratio: time per iteration / host compute.
    for m in (100, 1000, 10000, 100000):
        host = p50("pvm.mixed_host_compute_m%d" % m)
        row("mixed m=%d: host bench_compute(m) alone" % m, "pvm.mixed_host_compute_m%d" % m)
        for label, prefix in (("libpvm native", "pvm"), ("libpvm kvm backend", "pvm_kvm"),
                              ("QEMU TCG", "qemu_tcg"), ("/dev/kvm", "kvm")):
            key = "%s.mixed_m%d" % (prefix, m)
            if key in r:
                row("  %s: compute(m) + 1 syscall" % label, key, over(p50(key), host), "x host compute")

    # The kvm backend (bench-pvm --backend kvm): the same guest work, against native's rows.
    kvm_rows = [("hypercall", "hypercall"), ("#UD -> handler -> ERETS", "exception_ud_erets"),
                ("PVM WRMSR", "wrmsr_pvm_msr"), ("synthetic CPUID", "cpuid_synthetic"),
                ("port I/O exit to the app", "pio_exit_to_app"),
                ("user SYSCALL -> kernel -> ERETU", "user_syscall_eretu"),
                ("user #PF -> kernel -> ERETU", "user_pf_eretu"),
                ("inject -> handler, guest running", "inject_running_to_handler"),
                ("inject -> handler, guest halted", "inject_halted_to_handler"),
                ("guest compute (1000 units)", "guest_compute_1000"),
                ("VM create -> first exit", "vm_create_to_first_exit"),
                ("create + load ELF + call + destroy", "create_load_call_destroy")]
    if peer("libpvm kvm backend", "pvm_kvm.hypercall", "pvm_kvm"):
        for label, k in kvm_rows:
            row("kvm backend: " + label, "pvm_kvm." + k, over(p50("pvm_kvm." + k), p50("pvm." + k)),
                "x native")

    # kmod (bench/kmod-in-qemu): one QEMU TCG guest with pvm.ko, native and kmod on the same
    # guest work, and T measured in that guest.
    Tq = p50("qemu_guest.baseline.seccomp_trap_T")
    if peer("kmod backend (in a QEMU TCG guest)", "qemu_guest.pvm_kmod.hypercall", "kmod"):
        row("in QEMU: seccomp trap + sigreturn (T there)", "qemu_guest.baseline.seccomp_trap_T", 1.0, "x T")
        for label, k in [("hypercall", "hypercall"), ("#UD -> handler -> ERETS", "exception_ud_erets"),
                         ("port I/O exit to the app", "pio_exit_to_app"),
                         ("user SYSCALL -> kernel -> ERETU", "user_syscall_eretu"),
                         ("inject -> handler, guest running", "inject_running_to_handler"),
                         ("inject -> handler, guest halted", "inject_halted_to_handler"),
                         ("VM create -> first instruction", "vm_create_to_first_insn"),
                         ("create + load ELF + call + destroy", "create_load_call_destroy")]:
            row("in QEMU: native: " + label, "qemu_guest.pvm." + k,
                over(p50("qemu_guest.pvm." + k), Tq), "x T")
            kp = p50("qemu_guest.pvm_kmod." + k)
            row("in QEMU: kmod: " + label, "qemu_guest.pvm_kmod." + k,
                over(kp, p50("qemu_guest.pvm." + k)), "x native")
            if k == "user_syscall_eretu":
                row("in QEMU: kmod: " + label + " / T", "qemu_guest.pvm_kmod." + k, over(kp, Tq), "x T",
                    "<= 0.5 T", kp is not None and Tq and kp <= 0.5 * Tq)

    print("\n| what | p50 (p10, p90) | ratio | target | met |")
    print("|---|---|---|---|---|")
    for x in rows:
        ratio = "" if x["ratio"] is None else "%.2f %s" % (x["ratio"], x["ratio_of"])
        met = "" if x["met"] is None else ("met" if x["met"] else "**missed**")
        print("| %s | %s | %s | %s | %s |" % (x["row"], x["value"], ratio, x["target"], met))
    targets = [x for x in rows if x["met"] is not None]
    print("\ntargets met: %d of %d; T = %s" % (sum(x["met"] for x in targets), len(targets), fmt_time(T)))
    for s in skips:
        print("skipped:", s)
    with open(sys.argv[3], "w") as f:
        json.dump({"machine": machine(), "results": raw, "rows": rows, "skipped": skips}, f, indent=1)
    print("results written to", sys.argv[3])
    return 0


if __name__ == "__main__":
    sys.exit(main())
