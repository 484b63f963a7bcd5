// procpool internals: the definitions of detail/process.hpp (header-only: included by it; in the separately compiled
// mode: compiled by procpool/src.hpp).
#pragma once

#include <cstdio>
#include <iostream>

#include "procpool/detail/process.hpp"

namespace procpool::detail {

PROCPOOL_DECL void flush_standard_streams() noexcept {
    try {
        std::cout.flush();
        std::cerr.flush();
        std::clog.flush();
    } catch (...) {
    }
    std::fflush(nullptr);
}

}  // namespace procpool::detail
