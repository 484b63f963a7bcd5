// procpool internals: the definitions of detail/bulk_arena.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
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

#include "procpool/detail/bulk_arena.hpp"
#include "procpool/detail/shared_reservation.hpp"

namespace procpool::detail {

PROCPOOL_DECL BulkArena* BulkArena::instance() noexcept {
    static BulkArena* arena = make();
    return arena;
}

PROCPOOL_DECL std::byte* BulkArena::allocate(std::size_t bytes, std::size_t& granted) noexcept {
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

PROCPOOL_DECL bool BulkArena::grow_in_place(std::byte* data, std::size_t size, std::size_t bytes,
                                            std::size_t& granted) noexcept {
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

PROCPOOL_DECL void BulkArena::release(std::byte* data, std::size_t size) noexcept {
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

PROCPOOL_DECL BulkArena::Stats BulkArena::stats() const {
    std::lock_guard lock(mutex_);
    return {in_use_, warm_bytes_, allocations_};
}

PROCPOOL_DECL BulkArena* BulkArena::make() noexcept {
    if (!address_space_is_free()) return nullptr;  // inputs then stream through the rings
    SharedMapping mapping = reserve_shared_address_space(std::size_t{32} << 30);
    if (!mapping) return nullptr;
    try {
        return new BulkArena(std::move(mapping));  // never destroyed, like the shared heap
    } catch (...) {
        return nullptr;  // (the mapping is unmapped with `mapping`)
    }
}

PROCPOOL_DECL std::byte* BulkArena::take_front(Ranges& ranges, Ranges::iterator it, std::size_t size,
                                               std::size_t& granted) noexcept {
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

PROCPOOL_DECL bool BulkArena::insert(Ranges& ranges, std::size_t offset, std::size_t length) noexcept {
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

}  // namespace procpool::detail
