// procpool internals: the definitions of procpool/imap.hpp (header-only: included by it; in the separately compiled
// mode: compiled by procpool/src.hpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "procpool/imap.hpp"

namespace procpool::detail {

PROCPOOL_DECL std::uint64_t imap_read_ahead_limit(std::size_t workers, std::size_t chunksize, std::size_t buffersize) {
    if (buffersize != 0) {
        if (chunksize > buffersize) {
            throw std::invalid_argument("procpool: MapOptions::buffersize (" + std::to_string(buffersize) +
                                        ") must be at least the chunksize (" + std::to_string(chunksize) + ")");
        }
        return buffersize;
    }
    if (chunksize != 0) return std::max(imap_window_chunks(workers) * chunksize, imap_window_floor_items(workers));
    return imap_default_buffersize(workers);
}

}  // namespace procpool::detail
