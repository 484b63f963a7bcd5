// procpool internals: the shared heap, where shared objects (SharedArray, Lock, Queue...) live.
//
// One address-space reservation per program, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE: no name, nothing in
// /dev/shm, pages appear when first touched and go back to the system when freed (MADV_REMOVE) or when the last
// process unmaps it. It is made before a pool forks its first process (Pool's constructor makes sure), so every
// worker sees it at the same address, and objects allocated in it later (after the pool) are visible in them too:
// that is what lets a shared object made after the pool reach its workers, zero-copy, with no file descriptor
// passing. The reservation is MAP_NORESERVE (shared_reservation.hpp): 64 GiB committed up front would fail under
// the kernel's overcommit heuristics.
//
// The allocator keeps one free list per power-of-two size class and a bump pointer, under a robust mutex. Each
// change is one word written last, so a process dying in the middle leaks at most the block it was handling: the
// next allocator takes the mutex over (EOWNERDEAD) and finds the structure consistent.
//
// Ownership: the process that makes an object owns it; the object is freed when the last handle in that process
// goes. Handles decoded in other processes (workers) borrow it: they stay valid while the owner keeps the object,
// which procpool guarantees at least until the task that received them has finished (a queued task keeps the
// objects in its arguments alive). Each allocation has a generation: a handle to a freed object is detected.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <sys/mman.h>
#include <type_traits>
#include <unistd.h>
#include <unordered_map>

#include "procpool/detail/process.hpp"
#include "procpool/detail/robust_mutex.hpp"
#include "procpool/detail/shared_reservation.hpp"
#include "procpool/errors.hpp"

namespace procpool::detail {

inline constexpr std::size_t kHeapClasses = 40;  // block sizes 2^7 .. 2^46 bytes

struct HeapHeader {
    std::uint64_t magic;
    std::uint64_t capacity;
    RobustMutex lock;
    std::uint64_t top;                       // bump pointer: offset of the first never-used byte
    std::uint64_t free_lists[kHeapClasses];  // offset of the first free block of each class, 0 = none
    std::atomic<std::uint64_t> generations;  // hands out one generation per allocation
};

/// The header in front of every allocation (the object starts kBlockHeader bytes after it).
struct BlockHeader {
    std::uint64_t magic;       // kLiveBlock while allocated
    std::uint64_t generation;  // unique per allocation
    std::uint64_t next_free;   // free-list link while free
    std::uint64_t bytes;       // bytes asked for
    std::uint32_t size_class;
    std::uint32_t kind;  // what object lives here (checked when a handle is decoded)
    std::uint64_t reserved[3];
};
inline constexpr std::size_t kBlockHeader = 64;
static_assert(sizeof(BlockHeader) == kBlockHeader, "objects start on a cache line");

inline constexpr std::uint64_t kHeapMagic = 0x70726f63706f6f6cULL;  // "procpool"
inline constexpr std::uint64_t kLiveBlock = 0x6c697665626c6b21ULL;

class SharedHeap {
public:
    /// The program's shared heap, reserved on first use. Never destroyed (objects may be freed late).
    static SharedHeap& instance() {
        static SharedHeap* heap = new SharedHeap();
        return *heap;
    }

    /// Allocates `bytes` for an object of `kind`, zero-filled; returns the object's offset. Thread- and
    /// process-safe. Throws std::bad_alloc when the reservation is exhausted.
    std::uint64_t allocate(std::size_t bytes, std::uint32_t kind) {
        const std::uint32_t size_class = class_for(bytes + kBlockHeader);
        const std::uint64_t block_size = std::uint64_t{128} << size_class;
        std::uint64_t block = 0;
        bool reused = false;
        {
            Guard guard(*this);
            if (header()->free_lists[size_class] != 0) {
                block = header()->free_lists[size_class];
                header()->free_lists[size_class] = block_at(block)->next_free;
                reused = true;
            } else {
                // Large blocks start on a page (up to 2 MiB) boundary so their pages can be released when freed.
                const std::uint64_t align = std::min<std::uint64_t>(std::max<std::uint64_t>(block_size, 128), 2u << 20);
                const std::uint64_t start = (header()->top + align - 1) / align * align;
                if (start + block_size > header()->capacity) throw std::bad_alloc();
                block = start;
                header()->top = start + block_size;
            }
        }
        BlockHeader* h = block_at(block);
        if (reused) {
            // Small blocks keep their old contents; large ones had their pages released (they read as zeros).
            std::memset(reinterpret_cast<std::byte*>(h) + kBlockHeader, 0,
                        std::min<std::uint64_t>(bytes, release_threshold(size_class)));
        }
        h->generation = header()->generations.fetch_add(1, std::memory_order_relaxed) + 1;
        h->next_free = 0;
        h->bytes = bytes;
        h->size_class = size_class;
        h->kind = kind;
        std::atomic_thread_fence(std::memory_order_release);
        h->magic = kLiveBlock;
        return block + kBlockHeader;
    }

    /// Frees the object at `offset`; large blocks give their memory back to the system.
    void free(std::uint64_t offset) noexcept {
        const std::uint64_t block = offset - kBlockHeader;
        BlockHeader* h = block_at(block);
        if (h->magic != kLiveBlock) return;
        h->magic = 0;
        h->generation = 0;
        const std::uint64_t block_size = std::uint64_t{128} << h->size_class;
        if (block_size - kBlockHeader > release_threshold(h->size_class)) {
            // Punch out the pages after the first: the memory returns to the system, and reads as zeros.
            ::madvise(base_ + block + 4096, block_size - 4096, MADV_REMOVE);
        }
        try {
            Guard guard(*this);
            h->next_free = header()->free_lists[h->size_class];
            header()->free_lists[h->size_class] = block;
        } catch (...) {
            // The allocator lock failed (it cannot in practice): leak the block rather than throw from a destructor.
        }
    }

    /// The object at `offset`, checked to be live, of `kind` and of `generation`: a stale or foreign handle
    /// throws SerializationError instead of touching freed memory.
    void* resolve(std::uint64_t offset, std::uint64_t generation, std::uint32_t kind) const {
        if (offset < kBlockHeader + sizeof(HeapHeader) || offset >= header()->capacity) {
            throw SerializationError("procpool: a shared object handle points outside the shared heap");
        }
        const BlockHeader* h = block_at(offset - kBlockHeader);
        if (h->magic != kLiveBlock || h->generation != generation) {
            throw SerializationError(
                "procpool: a shared object was used after its owner freed it (the process that made a shared object "
                "must keep a handle while other processes use it)");
        }
        if (h->kind != kind) throw SerializationError("procpool: a shared object handle of the wrong type");
        return base_ + offset;
    }

    [[nodiscard]] std::uint64_t generation_of(std::uint64_t offset) const noexcept {
        return block_at(offset - kBlockHeader)->generation;
    }
    [[nodiscard]] std::byte* address(std::uint64_t offset) const noexcept { return base_ + offset; }
    [[nodiscard]] std::uint64_t offset_of(const void* p) const noexcept {
        return static_cast<std::uint64_t>(static_cast<const std::byte*>(p) - base_);
    }
    /// Bytes of blocks handed out so far (the bump pointer): a gauge for tests.
    [[nodiscard]] std::uint64_t high_water() const noexcept { return header()->top; }

private:
    SharedHeap() : mapping_(reserve_shared_address_space(std::size_t{64} << 30)), base_(mapping_.data()) {
        if (base_ == nullptr) throw std::bad_alloc();
        auto* h = new (base_) HeapHeader();
        h->magic = kHeapMagic;
        h->capacity = mapping_.size();
        h->lock.init(false);
        h->top = (sizeof(HeapHeader) + 127) / 128 * 128;
    }

    /// Holds the allocator's robust mutex (its state is consistent after a holder death: see the file comment).
    struct Guard {
        explicit Guard(SharedHeap& heap) : heap_(heap) { heap_.header()->lock.lock(); }
        ~Guard() { heap_.header()->lock.unlock(); }
        SharedHeap& heap_;
    };

    static std::uint32_t class_for(std::uint64_t block_bytes) noexcept {
        std::uint32_t size_class = 0;
        while ((std::uint64_t{128} << size_class) < block_bytes) ++size_class;
        return size_class;
    }
    /// Blocks up to this payload keep their pages when freed (reused quickly); larger ones release them.
    static constexpr std::uint64_t release_threshold(std::uint32_t) noexcept { return std::uint64_t{64} * 1024; }

    [[nodiscard]] HeapHeader* header() const noexcept { return std::launder(reinterpret_cast<HeapHeader*>(base_)); }
    [[nodiscard]] BlockHeader* block_at(std::uint64_t block) const noexcept {
        return std::launder(reinterpret_cast<BlockHeader*>(base_ + block));
    }

    SharedMapping mapping_;  // never unmapped: the heap lives as long as the program
    std::byte* base_ = nullptr;
};

/// The owner's side of a shared object: a reference count of the handles in the process that made it. Handles
/// in other processes (workers, or a process forked later) borrow the object and never touch this.
struct Ownership {
    std::atomic<long> handles{1};
    std::uint64_t offset = 0;
    std::uint64_t generation = 0;
    void (*destroy)(void*) = nullptr;
};

/// The objects this process owns, by offset, so that a handle coming back to its owner (a task returning its
/// argument) owns the object again instead of borrowing it.
class OwnerRegistry {
public:
    static OwnerRegistry& instance() {
        static OwnerRegistry* registry = new OwnerRegistry();
        return *registry;
    }
    void add(Ownership* ownership) {
        std::lock_guard lock(mutex_);
        forget_if_forked();
        owners_[ownership->offset] = ownership;
    }
    /// One more handle on the object at `offset` of `generation`, if this process owns it and it is still alive.
    Ownership* acquire(std::uint64_t offset, std::uint64_t generation) {
        std::lock_guard lock(mutex_);
        forget_if_forked();
        const auto it = owners_.find(offset);
        if (it == owners_.end() || it->second->generation != generation) return nullptr;
        long count = it->second->handles.load();
        while (count != 0) {  // never revive an object whose last handle is going
            if (it->second->handles.compare_exchange_weak(count, count + 1)) return it->second;
        }
        return nullptr;
    }
    /// Drops a handle; frees the object with the last one.
    void release(Ownership* ownership) noexcept {
        if (ownership->handles.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
        {
            std::lock_guard lock(mutex_);
            const auto it = owners_.find(ownership->offset);
            if (it != owners_.end() && it->second == ownership) owners_.erase(it);
        }
        if (ownership->destroy != nullptr) ownership->destroy(SharedHeap::instance().address(ownership->offset));
        SharedHeap::instance().free(ownership->offset);
        delete ownership;
    }

private:
    /// A forked child owns nothing it inherited.
    void forget_if_forked() {
        if (generation_ == fork_generation()) return;
        owners_.clear();
        generation_ = fork_generation();
    }

    std::mutex mutex_;
    std::unordered_map<std::uint64_t, Ownership*> owners_;
    unsigned generation_ = fork_generation();
};

}  // namespace procpool::detail
