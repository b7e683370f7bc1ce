# PvmGuest.cmake - freestanding guest (unikernel) build flags and pvm_add_guest().
#
#   pvm_add_guest(<name> SOURCES <files...> [LINKER_SCRIPT <ld>])
#
# builds <name> as a position-dependent, static ELF64 guest linked with the
# SDK runtime (lib/guest) and the SDK's linker script.  Guest code never sees
# the host libc.
set(PVM_GUEST_C_FLAGS
  -ffreestanding -nostdlib -fno-builtin -fno-stack-protector -fno-pic -fno-pie
  -mno-red-zone -mcmodel=small -fno-asynchronous-unwind-tables -fcf-protection=none
  -O2 -g -Wall -Wextra)
set(PVM_GUEST_ENTRY_C_FLAGS -mgeneral-regs-only)
set(PVM_GUEST_LINK_FLAGS -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-z,noexecstack
  -Wl,-z,max-page-size=4096)
get_filename_component(PVM_GUEST_LINKER_SCRIPT "${CMAKE_CURRENT_LIST_DIR}/pvm-guest.ld" ABSOLUTE)

function(pvm_add_guest name)
  cmake_parse_arguments(G "" "LINKER_SCRIPT" "SOURCES" ${ARGN})
  if(NOT G_LINKER_SCRIPT)
    set(G_LINKER_SCRIPT ${PVM_GUEST_LINKER_SCRIPT})
  endif()
  add_executable(${name} ${G_SOURCES})
  target_compile_options(${name} PRIVATE ${PVM_GUEST_C_FLAGS})
  target_link_options(${name} PRIVATE ${PVM_GUEST_LINK_FLAGS} -T ${G_LINKER_SCRIPT})
  set_target_properties(${name} PROPERTIES LINK_DEPENDS ${G_LINKER_SCRIPT} SUFFIX ".elf")
  if(TARGET pvm_guest_rt)
    target_link_libraries(${name} PRIVATE pvm_guest_rt)
  elseif(TARGET pvm::pvm_guest_rt)
    target_link_libraries(${name} PRIVATE pvm::pvm_guest_rt)
  endif()
endfunction()
