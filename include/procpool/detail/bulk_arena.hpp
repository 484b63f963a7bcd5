// procpool internals: the bulk arena, shared memory where a pool's large encoded inputs live.
//
// A map over large items (or over millions of small ones) would otherwise copy its encoded input twice more on
// the way to the workers: into the task ring, and out of it again to reassemble a message that came in
// fragments. Encoded input blocks from 64 KiB (one ring fragment) to 256 MiB are written here instead, once, and
// a task message carries only the address of its items: the worker decodes them in place. The arena is one shared
// MAP_NORESERVE reservation (shared_reservation.hpp) made before a pool forks
// its first process (like the shared heap), so every worker of every pool sees it at the same address; pages exist
// only where they were written.
//
// Only the process that made the arena allocates from it (its allocator state is private to that process): in a
// forked child, a worker or any other, allocate() declines, release() does nothing and contains() is false, so an
// inherited buffer can neither be handed out twice nor punched out under the parent's feet.
//
// Freed ranges keep their pages (up to kWarmBudget bytes in all) so that the next large map finds them mapped and
// already faulted in, in the parent and in the workers that read them; beyond that, the pages of the warm ranges
// at the highest addresses go back to the system (MADV_REMOVE, outside the lock: on 4 KiB shared pages it takes
// about 0.2 s per GiB). Allocations are capped at the same budget: a larger input would be faulted in afresh and
// given back at that price every time, so it stays in private memory (huge pages) and streams through the rings.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <sys/mman.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include "procpool/detail/config.hpp"
#include "procpool/detail/shared_reservation.hpp"

namespace procpool::detail {

class BulkArena {
public:
    static constexpr std::size_t kGranule = std::size_t{64} << 10;      // allocations are multiples of this
    static constexpr std::size_t kWarmBudget = std::size_t{256} << 20;  // freed bytes kept faulted in
    static constexpr std::size_t kMaxAllocation = kWarmBudget;          // larger buffers stay private

    /// The program's arena, reserved on the first call; nullptr if no reservation could be made (then large
    /// inputs take the ring like everything else). Thread-safe.
    PROCPOOL_DECL static BulkArena* instance() noexcept;

    /// Whether [data, data + bytes) lies in the arena and this process owns it, i.e. whether a worker of a pool
    /// made by this process can read those bytes at the same address.
    [[nodiscard]] bool contains(const void* data, std::size_t bytes) const noexcept {
        const auto begin = reinterpret_cast<std::uintptr_t>(base_);
        const auto p = reinterpret_cast<std::uintptr_t>(data);
        return p >= begin && bytes <= capacity_ && p - begin <= capacity_ - bytes && owner_ == ::getpid();
    }

    /// A range of at least `bytes` (rounded up to kGranule, reported in `granted`), or nullptr when this process
    /// does not own the arena, `bytes` exceeds kMaxAllocation or no range is free. Takes the largest warm range
    /// (pages still faulted in) if it is large enough, so that a buffer growing at its end can usually grow in
    /// place; else the lowest cold range that fits. Thread-safe.
    PROCPOOL_DECL std::byte* allocate(std::size_t bytes, std::size_t& granted) noexcept;

    /// Extends the allocation [data, data + size) to `bytes` (rounded up; new size in `granted`) without moving
    /// it, if the ranges right after it are free and the result stays within kMaxAllocation. Returns false (and
    /// changes nothing) otherwise.
    PROCPOOL_DECL bool grow_in_place(std::byte* data, std::size_t size, std::size_t bytes,
                                     std::size_t& granted) noexcept;

    /// Gives an allocation back. Its pages stay faulted in while the freed bytes kept so fit kWarmBudget; beyond
    /// that, the pages of the highest warm ranges are given back to the system (outside the lock).
    PROCPOOL_DECL void release(std::byte* data, std::size_t size) noexcept;

    struct Stats {
        std::size_t in_use;       // bytes allocated now
        std::size_t warm;         // freed bytes whose pages are kept
        std::size_t allocations;  // allocations so far
    };
    [[nodiscard]] PROCPOOL_DECL Stats stats() const;

private:
    using Ranges = std::map<std::size_t, std::size_t>;  // offset -> length, free, no two adjacent

    explicit BulkArena(SharedMapping mapping)
        : mapping_(std::move(mapping)), base_(mapping_.data()), capacity_(mapping_.size()), owner_(::getpid()) {
        cold_.emplace(0, capacity_);
    }

    PROCPOOL_DECL static BulkArena* make() noexcept;

    static constexpr std::size_t round_up(std::size_t n) noexcept { return (n + kGranule - 1) / kGranule * kGranule; }

    /// Takes the first `size` bytes of the free range `it` of `ranges` (which has at least that many) and counts
    /// them as in use. Reuses the map node for the rest: allocates nothing.
    PROCPOOL_DECL std::byte* take_front(Ranges& ranges, Ranges::iterator it, std::size_t size,
                                        std::size_t& granted) noexcept;

    /// Adds [offset, offset + length) to `ranges`, merging it with free neighbours there. False if a new node
    /// could not be allocated (the range is then lost to the allocator, never handed out twice).
    PROCPOOL_DECL static bool insert(Ranges& ranges, std::size_t offset, std::size_t length) noexcept;

    SharedMapping mapping_;
    std::byte* const base_;
    const std::size_t capacity_;
    const pid_t owner_;
    mutable std::mutex mutex_;
    Ranges warm_;  // free, pages may be faulted in
    Ranges cold_;  // free, pages given back (read as zeros)
    std::size_t warm_bytes_ = 0;
    std::size_t in_use_ = 0;
    std::size_t allocations_ = 0;
};

}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/bulk_arena.ipp"
#endif
