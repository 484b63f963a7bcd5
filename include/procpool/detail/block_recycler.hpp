// procpool internals: recycled memory for the parent's per-task records.
//
// An apply_async burst allocates one record per task (ApplyJob<int>: the job, its item and its result state in one
// block of about 850 bytes) and frees them all when the caller drops the results. With glibc's default trimming,
// freeing 20 000 of them at once gives the top of the heap back to the kernel, and the next burst faults every page
// in again: on the benchmark VM page faults took a third of the submitting thread's time (a burst of 20 000 tasks
// ran at 1.2 M tasks/s, and at 2.0 M with trimming turned off through GLIBC_TUNABLES). Freed blocks are kept here
// instead, by size class, up to kMaxKeptBytes in all, and handed out again.
//
// Only the process that first used the recycler recycles (fork_generation(), no system call): in a forked child every
// block is allocated and freed with operator new and delete, and the lists and their lock, which another thread of the
// parent may have held at the fork, are never touched (blocks on them are left alone).
#pragma once

#include <cstddef>
#include <new>
#include <type_traits>

#include "procpool/detail/config.hpp"

namespace procpool::detail {

class BlockRecycler {
public:
    /// Blocks are recycled in classes of this many bytes, up to kClasses classes (larger blocks are not kept).
    static constexpr std::size_t kClassBytes = 64;
    static constexpr std::size_t kClasses = 32;
    /// Bytes of freed blocks kept in all; beyond that, freed blocks go back to operator delete.
    static constexpr std::size_t kMaxKeptBytes = std::size_t{32} << 20;

    /// A block of at least `bytes` bytes, aligned like operator new's. Throws std::bad_alloc. Thread-safe.
    PROCPOOL_DECL static void* allocate(std::size_t bytes);
    /// Gives back a block from allocate(`bytes`) (the same `bytes`). Never throws. Thread-safe.
    PROCPOOL_DECL static void deallocate(void* block, std::size_t bytes) noexcept;

    /// Freed bytes kept now (this process's; 0 in a forked child).
    PROCPOOL_DECL static std::size_t kept_bytes() noexcept;
};

/// An allocator for std::allocate_shared whose blocks come from BlockRecycler (over-aligned types from operator new).
template <class T>
struct RecyclingAllocator {
    using value_type = T;
    RecyclingAllocator() noexcept = default;
    template <class U>
    explicit RecyclingAllocator(const RecyclingAllocator<U>&) noexcept {}

    T* allocate(std::size_t n) {
        if constexpr (alignof(T) > __STDCPP_DEFAULT_NEW_ALIGNMENT__) {
            return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{alignof(T)}));
        } else {
            return static_cast<T*>(BlockRecycler::allocate(n * sizeof(T)));
        }
    }
    void deallocate(T* block, std::size_t n) noexcept {
        if constexpr (alignof(T) > __STDCPP_DEFAULT_NEW_ALIGNMENT__) {
            ::operator delete (block, std::align_val_t{alignof(T)});
        } else {
            BlockRecycler::deallocate(block, n * sizeof(T));
        }
    }
    template <class U>
    bool operator==(const RecyclingAllocator<U>&) const noexcept {
        return true;
    }
};

}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/block_recycler.ipp"
#endif
