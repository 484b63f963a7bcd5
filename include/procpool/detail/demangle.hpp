// procpool internals: readable type names for messages.
#pragma once

#include <string>

#include "procpool/detail/config.hpp"

namespace procpool::detail {

/// The readable form of a mangled type name ("N3app10ParseErrorE" -> "app::ParseError"); the name itself if it
/// cannot be demangled.
PROCPOOL_DECL std::string demangle(const char* mangled);

}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/demangle.ipp"
#endif
