// procpool internals: the definitions of detail/block_recycler.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <cstddef>
#include <mutex>
#include <new>

#include "procpool/detail/block_recycler.hpp"
#include "procpool/detail/platform.hpp"
#include "procpool/detail/process.hpp"

// Under AddressSanitizer a kept block is poisoned but for its link, and unpoisoned as it is handed out again: a use
// after free of a recycled record is still reported (heap-use-after-free becomes use-after-poison).
#ifdef PROCPOOL_DETAIL_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace procpool::detail {

namespace block_recycler_detail {

struct FreeBlock {
    FreeBlock* next;
};

struct Lists {
    const unsigned generation = fork_generation();  // the process that recycles (a forked child does not)
    std::mutex mutex;
    FreeBlock* free[BlockRecycler::kClasses] = {};
    std::size_t kept_bytes = 0;
};

/// The lists, made on first use and never destroyed (blocks may be freed during static destruction).
inline Lists& lists() {
    static Lists* made = new Lists();
    return *made;
}

/// Marks a kept block of `bytes` unreadable but for its link (ASan builds; nothing otherwise).
inline void poison_kept(FreeBlock* block, std::size_t bytes) noexcept {
#ifdef PROCPOOL_DETAIL_ASAN
    ASAN_POISON_MEMORY_REGION(reinterpret_cast<char*>(block) + sizeof(FreeBlock), bytes - sizeof(FreeBlock));
#else
    (void)block;
    (void)bytes;
#endif
}
/// Makes a block leaving the lists usable again.
inline void unpoison_taken(void* block, std::size_t bytes) noexcept {
#ifdef PROCPOOL_DETAIL_ASAN
    ASAN_UNPOISON_MEMORY_REGION(block, bytes);
#else
    (void)block;
    (void)bytes;
#endif
}

/// The size class of `bytes` (kClasses if too large to recycle).
constexpr std::size_t size_class(std::size_t bytes) noexcept {
    const std::size_t index = (bytes + BlockRecycler::kClassBytes - 1) / BlockRecycler::kClassBytes;
    return index == 0 ? 0 : index - 1 < BlockRecycler::kClasses ? index - 1 : BlockRecycler::kClasses;
}

}  // namespace block_recycler_detail

PROCPOOL_DECL void* BlockRecycler::allocate(std::size_t bytes) {
    using namespace block_recycler_detail;
    const std::size_t index = size_class(bytes);
    if (index == kClasses) return ::operator new(bytes);
    Lists& l = lists();
    if (l.generation == fork_generation()) {
        std::lock_guard lock(l.mutex);
        if (FreeBlock* block = l.free[index]) {
            l.free[index] = block->next;
            l.kept_bytes -= (index + 1) * kClassBytes;
            unpoison_taken(block, (index + 1) * kClassBytes);
            // The next block of this class is likely asked for soon (an apply_async burst asks for one per task),
            // and after a burst's 20 000 records it is out of the cache: start loading it now, for writing.
            // (benchmarks/README.md, "The burst, A/B in one process": 1.069 times the tasks a second.)
            if (const FreeBlock* next = l.free[index]) {
                const char* const first = reinterpret_cast<const char*>(next);
                for (std::size_t at = 0; at < (index + 1) * kClassBytes; at += kCacheLine) {
                    __builtin_prefetch(first + at, 1);
                }
            }
            return block;
        }
    }
    return ::operator new((index + 1) * kClassBytes);
}

PROCPOOL_DECL void BlockRecycler::deallocate(void* block, std::size_t bytes) noexcept {
    using namespace block_recycler_detail;
    if (block == nullptr) return;
    const std::size_t index = size_class(bytes);
    if (index != kClasses) {
        Lists& l = lists();
        if (l.generation == fork_generation()) {
            std::lock_guard lock(l.mutex);
            if (l.kept_bytes + (index + 1) * kClassBytes <= kMaxKeptBytes) {
                l.free[index] = ::new (block) FreeBlock{l.free[index]};
                poison_kept(l.free[index], (index + 1) * kClassBytes);
                l.kept_bytes += (index + 1) * kClassBytes;
                return;
            }
        }
    }
    ::operator delete(block);
}

PROCPOOL_DECL std::size_t BlockRecycler::kept_bytes() noexcept {
    using namespace block_recycler_detail;
    Lists& l = lists();
    if (l.generation != fork_generation()) return 0;
    std::lock_guard lock(l.mutex);
    return l.kept_bytes;
}

}  // namespace procpool::detail
