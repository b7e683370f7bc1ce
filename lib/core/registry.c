/*
 * lib/core/registry.c - the one list of backends and how one is chosen:
 * option, then $PVM_BACKEND, then probing (kmod, then kvm, where a one-time
 * calibration finds its guest events cheaper than native's, else native).
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

/* Backends built into this library.  Adding one touches its folder and this list. */
extern const struct pvm_backend_ops pvm_native_backend;
extern const struct pvm_backend_ops pvm_kvm_backend;
extern const struct pvm_backend_ops pvm_kvm_gena_backend;
extern const struct pvm_backend_ops pvm_kmod_backend;

static const struct pvm_backend_ops *const backends[] = {
    &pvm_native_backend,
    &pvm_kvm_backend,
    &pvm_kvm_gena_backend,
    &pvm_kmod_backend,
};

static const char *const names[] = { "auto", "native", "kvm", "kmod" };

const char *pvm_backend_name(enum pvm_backend b)
{
    return (unsigned)b < sizeof(names) / sizeof(names[0]) ? names[b] : NULL;
}

int pvm_backend_from_name(const char *name, enum pvm_backend *out)
{
    pvm__clear_error();
    if (!name || !out)
        return pvm__error(PVM_EINVAL, "pvm_backend_from_name: NULL argument");
    for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(name, names[i])) {
            *out = (enum pvm_backend)i;
            return 0;
        }
    return pvm__error(PVM_EINVAL, "unknown backend \"%s\" (expected auto, native, kvm or kmod)", name);
}

/* Required ops are checked here once, so the core can call them unguarded. */
static bool ops_complete(const struct pvm_backend_ops *o)
{
    return o->name && o->probe && o->vm_init && o->vm_fini && o->vcpu_init && o->vcpu_fini &&
           o->run && o->get_regs && o->set_regs && o->get_sregs && o->set_sregs && o->get_msr &&
           o->set_msr && o->inject && o->kick;
}

const struct pvm_backend_ops *pvm__backend_lookup(enum pvm_backend id, const char **why)
{
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
        if (backends[i]->id == id) {
            if (!ops_complete(backends[i])) {
                *why = "backend ops table is incomplete (library bug)";
                return NULL;
            }
            return backends[i];
        }
    *why = "unknown backend";
    return NULL;
}

/*
 * A backend may come in modes, one ops table each with the same id (kvm:
 * standard x86 KVM, Gen A kvm-pvm); each mode's probe refuses the others'
 * hosts.  The first mode whose probe passes is the backend; if none does, the
 * reasons are joined.
 */
static int probe_modes(enum pvm_backend id, const struct pvm_backend_ops **out)
{
    const char *why;
    if (!pvm__backend_lookup(id, &why))
        return pvm__error(PVM_ENODEV, "%s", why);
    char reasons[512] = "";
    int rc = PVM_ENODEV;
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
        if (backends[i]->id != id || !ops_complete(backends[i]))
            continue;
        rc = backends[i]->probe();
        if (rc == 0) {
            *out = backends[i];
            return 0;
        }
        size_t l = strlen(reasons);
        if (!strstr(reasons, pvm_last_error()))
            snprintf(reasons + l, sizeof(reasons) - l, "%s%s", l ? "; " : "", pvm_last_error());
    }
    return pvm__error(rc, "%s", reasons);
}

int pvm_backend_probe(enum pvm_backend id)
{
    pvm__clear_error();
    const struct pvm_backend_ops *o;
    if (id == PVM_BACKEND_AUTO)
        return pvm__backend_select(PVM_BACKEND_AUTO, &o);
    return probe_modes(id, &o);
}

static pthread_mutex_t auto_lock = PTHREAD_MUTEX_INITIALIZER;
static const struct pvm_backend_ops *auto_ops;   /* auto's choice, once made */
static char auto_msg[600];                       /* ... and why (pvm_last_error) */

static int select_auto(const struct pvm_backend_ops **out);

int pvm__backend_select(enum pvm_backend want, const struct pvm_backend_ops **out)
{
    if (want == PVM_BACKEND_AUTO) {
        const char *env = getenv("PVM_BACKEND");
        if (env && *env && strcmp(env, "auto")) {
            if (pvm_backend_from_name(env, &want) < 0)
                return pvm__error(PVM_EINVAL, "$PVM_BACKEND: unknown backend \"%s\" "
                                  "(expected auto, native, kvm or kmod)", env);
        }
    }
    if (want != PVM_BACKEND_AUTO)
        return probe_modes(want, out);
    /*
     * auto decides once per process, as the kvm and native probes and the
     * calibrations do: a create would otherwise pay for the kmod probe's
     * failed open() of /dev/pvm (~10 us here) every time.
     */
    pthread_mutex_lock(&auto_lock);
    const struct pvm_backend_ops *chosen = auto_ops;
    if (chosen)
        pvm__error(0, "%s", auto_msg);
    pthread_mutex_unlock(&auto_lock);
    if (chosen) {
        *out = chosen;
        return 0;
    }
    int rc = select_auto(out);
    if (rc == 0) {
        pthread_mutex_lock(&auto_lock);
        auto_ops = *out;
        snprintf(auto_msg, sizeof(auto_msg), "%s", pvm_last_error());
        pthread_mutex_unlock(&auto_lock);
    }
    return rc;
}

/*
 * auto: kmod, then kvm, where each is the faster path for the guest's
 * events (its prefer op decides), else native.  On success the thread's detail message
 * (pvm_last_error) says what was chosen and why the others were not.
 */
static int select_auto(const struct pvm_backend_ops **out)
{
    static const enum pvm_backend order[] = { PVM_BACKEND_KMOD, PVM_BACKEND_KVM, PVM_BACKEND_NATIVE };
    const size_t n = sizeof(order) / sizeof(order[0]);
    const struct pvm_backend_ops *usable[sizeof(order) / sizeof(order[0])] = { NULL };
    char reasons[512] = "";
    for (size_t i = 0; i < n; i++) {
        const struct pvm_backend_ops *o = NULL;
        bool ok = probe_modes(order[i], &o) == 0;
        if (ok && (!o->prefer || o->prefer() == 0)) {
            *out = o;
            pvm__error(0, "auto: chose %s%s%s%s", o->name, reasons[0] ? " (" : "", reasons, reasons[0] ? ")" : "");
            return 0;
        }
        if (ok)
            usable[i] = o;
        size_t l = strlen(reasons);
        snprintf(reasons + l, sizeof(reasons) - l, "%s%s", l ? "; " : "", pvm_last_error());
    }
    /* None preferred: a usable one still beats none. */
    for (size_t i = 0; i < n; i++)
        if (usable[i]) {
            *out = usable[i];
            pvm__error(0, "auto: chose %s, the only usable backend (%s)", usable[i]->name, reasons);
            return 0;
        }
    return pvm__error(PVM_ENODEV, "no usable backend: %s", reasons);
}
