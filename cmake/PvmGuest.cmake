# PvmGuest.cmake - freestanding guest (unikernel) build flags and pvm_add_guest().
#
#   pvm_add_guest(<name> SOURCES <files...> [LINKER_SCRIPT <ld>] [ALLOW_FPU])
#
# builds <name>.elf as a position-dependent, static ELF64 guest linked with
# the SDK runtime (pvm_guest_rt) and the SDK's linker script (W^X segments,
# the libpvm ABI note).  Guest code never sees the host libc.
#
# Guest code is built with -mgeneral-regs-only: the SDK's event entry does
# not save FPU/SSE state, so code that may run in a trap handler must not
# touch it.  ALLOW_FPU lifts that for the guest's own sources; such a guest
# must then keep FP/SSE out of its handlers.
set(PVM_GUEST_C_FLAGS
  -ffreestanding -nostdlib -fno-builtin -fno-stack-protector -fno-pic -fno-pie
  -mno-red-zone -mcmodel=small -fno-asynchronous-unwind-tables -fcf-protection=none
  -fno-tree-loop-distribute-patterns -O2 -g -Wall -Wextra)
set(PVM_GUEST_ENTRY_C_FLAGS -mgeneral-regs-only)
set(PVM_GUEST_LINK_FLAGS -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-z,noexecstack
  -Wl,-z,max-page-size=4096 -Wl,-u,_start)
get_filename_component(PVM_GUEST_LINKER_SCRIPT "${CMAKE_CURRENT_LIST_DIR}/pvm-guest.ld" ABSOLUTE)

# Apply the guest flags to @target, replacing what the directory added (for
# example sanitizer options meant for host code).
function(pvm_guest_flags target)
  cmake_parse_arguments(F "ALLOW_FPU" "" "" ${ARGN})
  set(opts ${PVM_GUEST_C_FLAGS})
  if(NOT F_ALLOW_FPU)
    list(APPEND opts ${PVM_GUEST_ENTRY_C_FLAGS})
  endif()
  set_property(TARGET ${target} PROPERTY COMPILE_OPTIONS ${opts})
  set_property(TARGET ${target} PROPERTY LINK_OPTIONS "")
  set_property(TARGET ${target} PROPERTY INTERPROCEDURAL_OPTIMIZATION OFF)
endfunction()

function(pvm_add_guest name)
  cmake_parse_arguments(G "ALLOW_FPU" "LINKER_SCRIPT" "SOURCES" ${ARGN})
  if(NOT G_LINKER_SCRIPT)
    set(G_LINKER_SCRIPT ${PVM_GUEST_LINKER_SCRIPT})
  endif()
  add_executable(${name} ${G_SOURCES})
  if(G_ALLOW_FPU)
    pvm_guest_flags(${name} ALLOW_FPU)
  else()
    pvm_guest_flags(${name})
  endif()
  target_link_options(${name} PRIVATE ${PVM_GUEST_LINK_FLAGS} -T ${G_LINKER_SCRIPT})
  set_target_properties(${name} PROPERTIES LINK_DEPENDS ${G_LINKER_SCRIPT} SUFFIX ".elf")
  if(TARGET pvm_guest_rt)
    target_link_libraries(${name} PRIVATE pvm_guest_rt)
  elseif(TARGET pvm::pvm_guest_rt)
    target_link_libraries(${name} PRIVATE pvm::pvm_guest_rt)
  else()
    message(FATAL_ERROR "pvm_add_guest(${name}): the SDK runtime pvm_guest_rt is not available")
  endif()
endfunction()
