// procpool internals: the shared mappings (the shared heap, the bulk arena, result areas and a pool's rings), made
// through Boost.Interprocess' mapped_region.
//
// Every one is MAP_SHARED without a name: inherited by fork children at the same address, nothing in /dev/shm, gone
// when the last process unmaps it. Large reservations must not commit memory (MAP_NORESERVE): Boost's
// anonymous_shared_memory() takes no mapping flags, so they map /dev/zero through file_mapping + mapped_region,
// which passes MAP_NORESERVE on; the kernel makes a MAP_SHARED mapping of /dev/zero the same shared anonymous memory
// as MAP_SHARED | MAP_ANONYMOUS ("/dev/zero (deleted)" in /proc/PID/maps either way; MADV_REMOVE gives pages back,
// children share its pages). Committed mappings (the rings) are anonymous_shared_memory() itself. The madvise calls
// Boost has no name for (MADV_DONTDUMP, MADV_DONTFORK, MADV_REMOVE, MADV_HUGEPAGE) are made on the mapped address.
#pragma once

#include <boost/interprocess/anonymous_shared_memory.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/file_mapping.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <cerrno>
#include <cstddef>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <system_error>
#include <unistd.h>
#include <utility>

#include "procpool/detail/process.hpp"

namespace procpool::detail {

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

/// One shared mapping (a boost::interprocess::mapped_region). Unmapped when it goes in the process that mapped it;
/// in a child forked meanwhile (which inherited a copy of this object) it is only forgotten: the parent still uses
/// the memory, and the child may have mapped something else there after dropping it (MADV_DONTFORK).
class SharedMapping {
public:
    SharedMapping() noexcept = default;
    /// Reserves `size` bytes of address space: MAP_NORESERVE, so nothing is committed and pages appear where they are
    /// first touched. Left out of core dumps, which would read every page of it and so fill it in. Empty if the
    /// system refuses.
    static SharedMapping reserve(std::size_t size) noexcept {
        namespace bip = boost::interprocess;
        try {
            const bip::file_mapping zero("/dev/zero", bip::read_write);
            SharedMapping mapping(bip::mapped_region(zero, bip::read_write, 0, size, nullptr, MAP_NORESERVE));
            ::madvise(mapping.data(), size, MADV_DONTDUMP);
            return mapping;
        } catch (...) {  // interprocess_exception (no memory, no address space, no /dev/zero) or std::bad_alloc
            return {};
        }
    }
    /// `size` bytes of shared memory, committed (boost::interprocess::anonymous_shared_memory). Throws
    /// std::system_error.
    static SharedMapping commit(std::size_t size) {
        try {
            return SharedMapping(boost::interprocess::anonymous_shared_memory(size));
        } catch (const boost::interprocess::interprocess_exception& e) {
            const int code = e.get_native_error() != 0 ? e.get_native_error() : ENOMEM;
            throw std::system_error(code, std::generic_category(), "procpool: could not map shared memory");
        }
    }

    SharedMapping(SharedMapping&& other) noexcept
        : region_(std::move(other.region_)), generation_(other.generation_), pid_(other.pid_) {}
    SharedMapping& operator=(SharedMapping&&) = delete;
    SharedMapping(const SharedMapping&) = delete;
    SharedMapping& operator=(const SharedMapping&) = delete;
    ~SharedMapping() {
        // Not ours (inherited through a fork): forget the region instead of unmapping it. An empty region made
        // over it (its destructor skipped, which has no other effect) is what the member's destructor then sees.
        if (!ours()) ::new (static_cast<void*>(&region_)) boost::interprocess::mapped_region();
    }

    [[nodiscard]] std::byte* data() const noexcept { return static_cast<std::byte*>(region_.get_address()); }
    [[nodiscard]] std::size_t size() const noexcept { return region_.get_size(); }
    explicit operator bool() const noexcept { return data() != nullptr; }
    /// Mapped by this process (not inherited through a fork: fork_generation() misses a raw clone or _Fork()).
    [[nodiscard]] bool ours() const noexcept { return generation_ == fork_generation() && pid_ == ::getpid(); }

private:
    explicit SharedMapping(boost::interprocess::mapped_region&& region) noexcept : region_(std::move(region)) {}

    boost::interprocess::mapped_region region_;  // empty (maps nothing) when default-constructed or moved from
    unsigned generation_ = fork_generation();
    pid_t pid_ = ::getpid();
};

/// Reserves as much address space as the system lets us (SharedMapping::reserve), from `largest` bytes down by
/// halves to 256 MiB. Empty if not even that could be reserved.
inline SharedMapping reserve_shared_address_space(std::size_t largest) noexcept {
    for (std::size_t size = largest; size >= (std::size_t{256} << 20); size /= 2) {
        if (SharedMapping mapping = SharedMapping::reserve(size)) return mapping;
    }
    return {};
}

}  // namespace procpool::detail
