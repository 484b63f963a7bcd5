// procpool internals: reserving large ranges of shared address space (the shared heap, the bulk arena, result
// areas).
#pragma once

#include <cstddef>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

namespace procpool::detail {

struct SharedReservation {
    std::byte* data = nullptr;  // nullptr if nothing could be reserved
    std::size_t size = 0;
};

/// Whether reserving address space costs nothing here. Under strict overcommit accounting
/// (vm.overcommit_memory = 2) MAP_NORESERVE is ignored and a whole reservation would be committed; under an
/// address-space limit (ulimit -v) it would eat the program's budget. Optional reservations go without then.
inline bool address_space_is_free() noexcept {
    rlimit limit{};
    if (::getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) return false;
    if (const int fd = ::open("/proc/sys/vm/overcommit_memory", O_RDONLY | O_CLOEXEC); fd >= 0) {
        char mode = 0;
        const bool strict = ::read(fd, &mode, 1) == 1 && mode == '2';
        ::close(fd);
        if (strict) return false;
    }
    return true;
}

/// Reserves `size` bytes of address space: MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, so nothing is committed
/// and pages appear where they are first touched; a child forked later sees it at the same address. Left out of
/// core dumps, which would read every page of it and so fill it in. nullptr if the system refuses.
inline std::byte* reserve_shared(std::size_t size) noexcept {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    ::madvise(p, size, MADV_DONTDUMP);
    return static_cast<std::byte*>(p);
}

/// Reserves as much address space as the system lets us (reserve_shared), from `largest` bytes down by halves to
/// 256 MiB.
inline SharedReservation reserve_shared_address_space(std::size_t largest) noexcept {
    for (std::size_t size = largest; size >= (std::size_t{256} << 20); size /= 2) {
        if (std::byte* data = reserve_shared(size)) return {data, size};
    }
    return {};
}

}  // namespace procpool::detail
