/*
 * pvm/guest/pvm_guest.h - the whole libpvm guest SDK (freestanding C).
 *
 * Build a guest with pvm_add_guest(name SOURCES ...) from cmake/PvmGuest.cmake;
 * see docs/guide-first-unikernel.md.
 */
#ifndef PVM_GUEST_PVM_GUEST_H
#define PVM_GUEST_PVM_GUEST_H

#include "pvm/abi.h"
#include "pvm/guest/boot.h"
#include "pvm/guest/console.h"
#include "pvm/guest/hypercall.h"
#include "pvm/guest/paging.h"
#include "pvm/guest/string.h"
#include "pvm/guest/trap.h"
#include "pvm/guest/user.h"

#endif
