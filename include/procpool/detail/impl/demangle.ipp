// procpool internals: the definitions of detail/demangle.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <cstdlib>
#include <cxxabi.h>
#include <memory>
#include <string>

#include "procpool/detail/demangle.hpp"

namespace procpool::detail {

PROCPOOL_DECL std::string demangle(const char* mangled) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> readable(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
    return status == 0 && readable ? std::string(readable.get()) : std::string(mangled);
}

}  // namespace procpool::detail
