# FindLibElf: libelf from elfutils (Debian: libelf-dev).
# Defines LibElf_FOUND, LibElf_INCLUDE_DIRS, LibElf_LIBRARIES and LibElf::LibElf.
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(PC_LIBELF QUIET libelf)
endif()
find_path(LibElf_INCLUDE_DIR NAMES libelf.h gelf.h HINTS ${PC_LIBELF_INCLUDE_DIRS})
find_library(LibElf_LIBRARY NAMES elf HINTS ${PC_LIBELF_LIBRARY_DIRS})
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(LibElf
  REQUIRED_VARS LibElf_LIBRARY LibElf_INCLUDE_DIR
  REASON_FAILURE_MESSAGE "install libelf-dev")
if(LibElf_FOUND AND NOT TARGET LibElf::LibElf)
  add_library(LibElf::LibElf UNKNOWN IMPORTED)
  set_target_properties(LibElf::LibElf PROPERTIES
    IMPORTED_LOCATION "${LibElf_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${LibElf_INCLUDE_DIR}")
  set(LibElf_INCLUDE_DIRS ${LibElf_INCLUDE_DIR})
  set(LibElf_LIBRARIES ${LibElf_LIBRARY})
endif()
mark_as_advanced(LibElf_INCLUDE_DIR LibElf_LIBRARY)
