// procpool internals: the bulk arena, shared memory where a pool's large encoded inputs live.
//
// A map over large items (or over millions of small ones) would otherwise copy its encoded input twice more on
// the way to the workers: into the task ring, and out of it again to reassemble a message that came in
// fragments. Encoded input blocks from 64 KiB (one ring fragment) to 256 MiB are written here instead, once, and
// a task message carries only the address of its items: the worker decodes them in place. The arena is one shared
// MAP_NORESERVE reservation (a Boost.Interprocess mapped_region, shared_reservation.hpp) made before a pool forks
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

#include "procpool/detail/shared_reservation.hpp"

namespace procpool::detail {

class BulkArena {
public:
    static constexpr std::size_t kGranule = std::size_t{64} << 10;      // allocations are multiples of this
    static constexpr std::size_t kWarmBudget = std::size_t{256} << 20;  // freed bytes kept faulted in
    static constexpr std::size_t kMaxAllocation = kWarmBudget;          // larger buffers stay private

    /// The program's arena, reserved on the first call; nullptr if no reservation could be made (then large
    /// inputs take the ring like everything else). Thread-safe.
    static BulkArena* instance() noexcept {
        static BulkArena* arena = make();
        return arena;
    }

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
    std::byte* allocate(std::size_t bytes, std::size_t& granted) noexcept {
        if (bytes == 0 || bytes > kMaxAllocation || owner_ != ::getpid()) return nullptr;
        const std::size_t size = round_up(bytes);
        std::lock_guard lock(mutex_);
        auto largest = std::max_element(warm_.begin(), warm_.end(),
                                        [](const auto& a, const auto& b) { return a.second < b.second; });
        if (largest != warm_.end() && largest->second >= size) {
            warm_bytes_ -= size;
            ++allocations_;
            return take_front(warm_, largest, size, granted);
        }
        for (auto it = cold_.begin(); it != cold_.end(); ++it) {
            if (it->second >= size) {
                ++allocations_;
                return take_front(cold_, it, size, granted);
            }
        }
        return nullptr;
    }

    /// Extends the allocation [data, data + size) to `bytes` (rounded up; new size in `granted`) without moving
    /// it, if the ranges right after it are free and the result stays within kMaxAllocation. Returns false (and
    /// changes nothing) otherwise.
    bool grow_in_place(std::byte* data, std::size_t size, std::size_t bytes, std::size_t& granted) noexcept {
        if (bytes > kMaxAllocation || owner_ != ::getpid()) return false;
        const std::size_t wanted = round_up(bytes);
        if (wanted <= size) {
            granted = size;
            return true;
        }
        std::lock_guard lock(mutex_);
        // Walk the free ranges that follow without a gap, warm or cold, until enough is found.
        std::size_t end = static_cast<std::size_t>(data - base_) + size;
        const std::size_t target = static_cast<std::size_t>(data - base_) + wanted;
        for (std::size_t at = end; at < target;) {
            if (const auto warm = warm_.find(at); warm != warm_.end()) at += warm->second;
            else if (const auto cold = cold_.find(at); cold != cold_.end()) at += cold->second;
            else return false;
        }
        // Enough: take [end, target) from the front of those ranges.
        while (end < target) {
            const bool warm = warm_.count(end) != 0;
            Ranges& ranges = warm ? warm_ : cold_;
            const auto it = ranges.find(end);
            const std::size_t taken = std::min(it->second, target - end);
            if (warm) warm_bytes_ -= taken;
            std::size_t ignored = 0;
            take_front(ranges, it, taken, ignored);
            end += taken;
        }
        granted = wanted;
        return true;
    }

    /// Gives an allocation back. Its pages stay faulted in while the freed bytes kept so fit kWarmBudget; beyond
    /// that, the pages of the highest warm ranges are given back to the system (outside the lock).
    void release(std::byte* data, std::size_t size) noexcept {
        if (owner_ != ::getpid()) return;  // inherited by a forked process: the memory is the parent's
        std::vector<std::pair<std::size_t, std::size_t>> to_cool;
        {
            std::lock_guard lock(mutex_);
            in_use_ -= size;
            if (!insert(warm_, static_cast<std::size_t>(data - base_), size)) return;  // leaked: no memory
            warm_bytes_ += size;
            try {
                while (warm_bytes_ > kWarmBudget) {
                    const auto last = std::prev(warm_.end());
                    const std::size_t cooled = std::min(last->second, round_up(warm_bytes_ - kWarmBudget));
                    const std::size_t offset = last->first + last->second - cooled;
                    to_cool.emplace_back(offset, cooled);  // may throw: then nothing below has happened yet
                    if (cooled == last->second) warm_.erase(last);
                    else last->second -= cooled;
                    warm_bytes_ -= cooled;  // in neither map while its pages are given back: not allocatable
                }
            } catch (const std::bad_alloc&) {
                // Keep the rest warm this time.
            }
        }
        if (to_cool.empty()) return;
        for (const auto& [offset, length] : to_cool) {
            ::madvise(base_ + offset, length, MADV_REMOVE);  // if it fails (mlock), the pages merely stay
        }
        std::lock_guard lock(mutex_);
        for (const auto& [offset, length] : to_cool) {
            insert(cold_, offset, length);
        }
    }

    struct Stats {
        std::size_t in_use;       // bytes allocated now
        std::size_t warm;         // freed bytes whose pages are kept
        std::size_t allocations;  // allocations so far
    };
    [[nodiscard]] Stats stats() const {
        std::lock_guard lock(mutex_);
        return {in_use_, warm_bytes_, allocations_};
    }

private:
    using Ranges = std::map<std::size_t, std::size_t>;  // offset -> length, free, no two adjacent

    explicit BulkArena(SharedMapping mapping)
        : mapping_(std::move(mapping)), base_(mapping_.data()), capacity_(mapping_.size()), owner_(::getpid()) {
        cold_.emplace(0, capacity_);
    }

    static BulkArena* make() noexcept {
        if (!address_space_is_free()) return nullptr;  // inputs then stream through the rings
        SharedMapping mapping = reserve_shared_address_space(std::size_t{32} << 30);
        if (!mapping) return nullptr;
        try {
            return new BulkArena(std::move(mapping));  // never destroyed, like the shared heap
        } catch (...) {
            return nullptr;  // (the mapping is unmapped with `mapping`)
        }
    }

    static constexpr std::size_t round_up(std::size_t n) noexcept { return (n + kGranule - 1) / kGranule * kGranule; }

    /// Takes the first `size` bytes of the free range `it` of `ranges` (which has at least that many) and counts
    /// them as in use. Reuses the map node for the rest: allocates nothing.
    std::byte* take_front(Ranges& ranges, Ranges::iterator it, std::size_t size, std::size_t& granted) noexcept {
        const std::size_t offset = it->first;
        auto node = ranges.extract(it);
        if (node.mapped() > size) {
            node.key() += size;
            node.mapped() -= size;
            ranges.insert(std::move(node));
        }
        in_use_ += size;
        granted = size;
        return base_ + offset;
    }

    /// Adds [offset, offset + length) to `ranges`, merging it with free neighbours there. False if a new node
    /// could not be allocated (the range is then lost to the allocator, never handed out twice).
    static bool insert(Ranges& ranges, std::size_t offset, std::size_t length) noexcept {
        const auto next = ranges.lower_bound(offset);
        const bool joins_next = next != ranges.end() && next->first == offset + length;
        if (next != ranges.begin()) {
            const auto previous = std::prev(next);
            if (previous->first + previous->second == offset) {
                previous->second += length + (joins_next ? next->second : 0);
                if (joins_next) ranges.erase(next);
                return true;
            }
        }
        if (joins_next) {  // the next range's node becomes the merged range's
            auto node = ranges.extract(next);
            node.key() = offset;
            node.mapped() += length;
            ranges.insert(std::move(node));
            return true;
        }
        try {
            ranges.emplace_hint(next, offset, length);
            return true;
        } catch (const std::bad_alloc&) {
            return false;
        }
    }

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
