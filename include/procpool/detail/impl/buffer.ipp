// procpool internals: the definitions of detail/buffer.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <sys/mman.h>
#include <unistd.h>
#include <utility>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/bulk_arena.hpp"

namespace procpool::detail {

PROCPOOL_DECL void advise_huge_pages(void* data, std::size_t bytes) noexcept {
    constexpr std::size_t kHuge = std::size_t{2} << 20;
    if (bytes < kHuge) return;
    const auto begin = (reinterpret_cast<std::uintptr_t>(data) + 4095) & ~std::uintptr_t{4095};
    const auto end = (reinterpret_cast<std::uintptr_t>(data) + bytes) & ~std::uintptr_t{4095};
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

PROCPOOL_DECL std::pair<std::byte*, std::size_t> MappedCache::take(std::size_t capacity) noexcept {
    Cache& c = cache();
    std::lock_guard lock(c.mutex);
    forget_if_forked(c);
    std::size_t best = kSlots;
    for (std::size_t i = 0; i < kSlots; ++i) {
        if (c.data[i] != nullptr && c.capacity[i] >= capacity && (best == kSlots || c.capacity[i] < c.capacity[best])) {
            best = i;
        }
    }
    if (best == kSlots) return {nullptr, 0};
    const std::pair<std::byte*, std::size_t> found{c.data[best], c.capacity[best]};
    c.data[best] = nullptr;
    c.total -= found.second;
    return found;
}

PROCPOOL_DECL void MappedCache::give(std::byte* data, std::size_t capacity) noexcept {
    Cache& c = cache();
    {
        std::lock_guard lock(c.mutex);
        forget_if_forked(c);
        if (capacity <= kMaxBytes) {
            for (std::size_t i = 0; i < kSlots && c.total + capacity <= kMaxBytes; ++i) {
                if (c.data[i] == nullptr) {
                    c.data[i] = data;
                    c.capacity[i] = capacity;
                    c.total += capacity;
                    return;
                }
            }
        }
    }
    ::munmap(data, capacity);
}

PROCPOOL_DECL void MappedCache::forget_if_forked(Cache& c) noexcept {
    if (c.owner == ::getpid()) return;
    for (auto& slot : c.data) slot = nullptr;
    c.total = 0;
    c.owner = ::getpid();
}

PROCPOOL_DECL MappedCache::Cache& MappedCache::cache() noexcept {
    static Cache* c = new Cache();  // never destroyed: buffers may be released during static destruction
    return *c;
}

PROCPOOL_DECL void Buffer::reserve(std::size_t capacity) {
    if (capacity <= capacity_) return;
    if (capacity > kMaxCapacity) throw std::bad_alloc();  // rounding it up below would wrap around
    if (in_external_storage() && capacity <= external_.limit && external_.widen != nullptr) {
        const std::size_t window = external_.widen(external_.context, capacity);
        if (window >= capacity && window <= external_.limit) {
            capacity_ = window;
            return;
        }
    }
    const std::size_t size = size_;
    if (capacity >= shareable_from_ && reserve_in_arena(capacity)) return;
    if (capacity < kMappedThreshold) {
        auto* bigger = static_cast<std::byte*>(::operator new(capacity));
        adopt(bigger, capacity, size);
        return;
    }
    capacity = (capacity + kMappedThreshold - 1) & ~(kMappedThreshold - 1);
    // A recently released mapping: its pages are already faulted in and need no zeroing.
    if (const auto [cached, cached_capacity] = MappedCache::take(capacity); cached != nullptr) {
        adopt(cached, cached_capacity, size);
        mapped_by_ = ::getpid();
        return;
    }
    // Our own mapping grows in place: mremap moves the pages without copying them.
    if (capacity_ >= kMappedThreshold && !in_arena_ && !in_external_storage()) {
        void* moved = ::mremap(data_, capacity_, capacity, MREMAP_MAYMOVE);
        if (moved == MAP_FAILED) throw std::bad_alloc();
        advise_private_buffer(moved, capacity);
        data_ = static_cast<std::byte*>(moved);
        capacity_ = capacity;
        return;
    }
    void* mapped = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) throw std::bad_alloc();
    advise_private_buffer(mapped, capacity);
    adopt(static_cast<std::byte*>(mapped), capacity, size);
    mapped_by_ = ::getpid();
}

PROCPOOL_DECL void Buffer::advise_private_buffer(void* data, std::size_t capacity) noexcept {
    ::madvise(data, capacity, MADV_HUGEPAGE);  // advisory: ignored where THP is off
    ::madvise(data, capacity, MADV_DONTFORK);
}

PROCPOOL_DECL bool Buffer::reserve_in_arena(std::size_t capacity) noexcept {
    BulkArena* arena = BulkArena::instance();
    if (arena == nullptr) return false;
    std::size_t granted = 0;
    if (in_arena_ && arena->grow_in_place(data_, capacity_, capacity, granted)) {
        capacity_ = granted;
        return true;
    }
    std::byte* moved = arena->allocate(capacity, granted);
    if (moved == nullptr) return false;
    adopt(moved, granted, size_);
    in_arena_ = true;
    return true;
}

PROCPOOL_DECL void Buffer::adopt(std::byte* storage, std::size_t capacity, std::size_t size) noexcept {
    if (size != 0) std::memcpy(storage, data_, size);
    release();
    data_ = storage;
    size_ = size;
    capacity_ = capacity;
}

PROCPOOL_DECL void Buffer::make_room(std::size_t n) {
    if (n > kMaxCapacity - size_) throw std::bad_alloc();
    std::size_t grown = grown_capacity(size_ + n);
    // Over external storage, what fits its limit stays there even if growing by half would not.
    if (in_external_storage() && grown > external_.limit && size_ + n <= external_.limit) {
        grown = external_.limit;
    }
    reserve(grown);
}

PROCPOOL_DECL void Buffer::free_storage() noexcept {
    if (in_external_storage()) {
        external_ = {};  // not ours to free
    } else if (in_arena_) {
        BulkArena::instance()->release(data_, capacity_);
        in_arena_ = false;
    } else if (!is_inline()) {
        if (capacity_ >= kMappedThreshold) {
            // A buffer inherited across fork() has no memory in the child (MADV_DONTFORK): nothing to give back,
            // and caching its address there would hand unmapped memory to the child's next large buffer.
            if (mapped_by_ == ::getpid()) MappedCache::give(data_, capacity_);
        } else {
            ::operator delete(data_);
        }
    }
}

}  // namespace procpool::detail
