// procpool internals: reserving a large range of shared address space (for the shared heap and the bulk arena).
#pragma once

#include <cstddef>
#include <sys/mman.h>

namespace procpool::detail {

struct SharedReservation {
    std::byte* data = nullptr;  // nullptr if nothing could be reserved
    std::size_t size = 0;
};

/// Reserves as much address space as the system lets us, from `largest` bytes down by halves to 256 MiB:
/// MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, so nothing is committed and pages appear where they are first
/// touched; a child forked later sees it at the same address. Left out of core dumps, which would read every page
/// of it and so fill it in.
inline SharedReservation reserve_shared_address_space(std::size_t largest) noexcept {
    for (std::size_t size = largest; size >= (std::size_t{256} << 20); size /= 2) {
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p != MAP_FAILED) {
            ::madvise(p, size, MADV_DONTDUMP);
            return {static_cast<std::byte*>(p), size};
        }
    }
    return {};
}

}  // namespace procpool::detail
