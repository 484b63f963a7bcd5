// procpool internals: the shared mappings (the shared heap, the bulk arena, result areas and a pool's rings).
//
// Every one is MAP_SHARED | MAP_ANONYMOUS: inherited by fork children at the same address, nothing in /dev/shm,
// gone when the last process unmaps it. Large reservations must not commit memory, so they add MAP_NORESERVE;
// committed mappings (the rings) do not. These were Boost.Interprocess' mapped_region (of /dev/zero, the only way
// to pass MAP_NORESERVE through it) and anonymous_shared_memory(), which the kernel makes the same memory; plain
// mmap keeps Boost.Interprocess' headers out of every file that uses a pool (about 0.5 s of compile time each,
// issue 18), and needs no file descriptor. The madvise calls (MADV_DONTDUMP, MADV_DONTFORK, MADV_REMOVE,
// MADV_HUGEPAGE) are made on the mapped address.
#pragma once

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

/// One shared mapping. Unmapped when it goes in the process that mapped it; in a child forked meanwhile (which
/// inherited a copy of this object) it is only forgotten: the parent still uses the memory, and the child may have
/// mapped something else there after dropping it (MADV_DONTFORK).
class SharedMapping {
public:
    SharedMapping() noexcept = default;
    /// Reserves `size` bytes of address space: MAP_NORESERVE, so nothing is committed and pages appear where they are
    /// first touched. Left out of core dumps, which would read every page of it and so fill it in. Empty if the
    /// system refuses.
    static SharedMapping reserve(std::size_t size) noexcept {
        SharedMapping mapping(map(size, MAP_NORESERVE), size);
        if (mapping) ::madvise(mapping.data(), size, MADV_DONTDUMP);
        return mapping;
    }
    /// `size` bytes of shared memory, committed. Throws std::system_error.
    static SharedMapping commit(std::size_t size) {
        SharedMapping mapping(map(size, 0), size);
        if (!mapping) {
            throw std::system_error(errno != 0 ? errno : ENOMEM, std::generic_category(),
                                    "procpool: could not map shared memory");
        }
        return mapping;
    }

    SharedMapping(SharedMapping&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)),
          generation_(other.generation_), pid_(other.pid_) {}
    SharedMapping& operator=(SharedMapping&&) = delete;
    SharedMapping(const SharedMapping&) = delete;
    SharedMapping& operator=(const SharedMapping&) = delete;
    /// Not ours (inherited through a fork): forgotten, not unmapped.
    ~SharedMapping() {
        if (data_ != nullptr && ours()) ::munmap(data_, size_);
    }

    [[nodiscard]] std::byte* data() const noexcept { return data_; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    explicit operator bool() const noexcept { return data() != nullptr; }
    /// Mapped by this process (not inherited through a fork: fork_generation() misses a raw clone or _Fork()).
    [[nodiscard]] bool ours() const noexcept { return generation_ == fork_generation() && pid_ == ::getpid(); }

private:
    SharedMapping(std::byte* data, std::size_t size) noexcept : data_(data), size_(data != nullptr ? size : 0) {}

    /// A fresh shared anonymous mapping of `size` bytes, read-write; nullptr (errno set) when refused.
    static std::byte* map(std::size_t size, int flags) noexcept {
        if (size == 0) {
            errno = EINVAL;
            return nullptr;
        }
        void* address = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | flags, -1, 0);
        return address == MAP_FAILED ? nullptr : static_cast<std::byte*>(address);
    }

    std::byte* data_ = nullptr;  // nullptr (maps nothing) when default-constructed, moved from or refused
    std::size_t size_ = 0;
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
