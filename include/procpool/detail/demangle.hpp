// procpool internals: readable type names for messages.
#pragma once

#include <cstdlib>
#include <cxxabi.h>
#include <memory>
#include <string>

namespace procpool::detail {

/// The readable form of a mangled type name ("N3app10ParseErrorE" -> "app::ParseError"); the name itself if it
/// cannot be demangled.
inline std::string demangle(const char* mangled) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> readable(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
    return status == 0 && readable ? std::string(readable.get()) : std::string(mangled);
}

}  // namespace procpool::detail
