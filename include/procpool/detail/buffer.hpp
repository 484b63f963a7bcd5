// procpool internals: a growable byte buffer that does not zero what it allocates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <span>
#include <sys/mman.h>
#include <type_traits>
#include <unistd.h>
#include <utility>

#include "procpool/detail/bulk_arena.hpp"
#include "procpool/detail/config.hpp"
#include "procpool/detail/stream_copy.hpp"

namespace procpool::detail {

/// Advises transparent huge pages for the whole pages inside [data, data + bytes) when the range is large enough
/// to benefit (2 MiB and up). Call before the memory is first touched: a first touch then faults once per 2 MiB
/// instead of once per 4 KiB, which on a virtual machine is the difference between milliseconds and a tenth of a
/// second for a 40 MB result. Harmless where THP is disabled.
PROCPOOL_DECL void advise_huge_pages(void* data, std::size_t bytes) noexcept;

/// Resizes a contiguous container to `n` elements that the caller overwrites at once, advising huge pages
/// before the new memory is touched. A std::string skips the zero-fill where C++23's resize_and_overwrite exists.
template <class Container>
void resize_for_overwrite(Container& c, std::size_t n) {
    if (n > c.capacity()) {
        c.reserve(n);
        advise_huge_pages(c.data(), c.capacity() * sizeof(typename Container::value_type));
    }
#if defined(__cpp_lib_string_resize_and_overwrite)
    if constexpr (requires { c.resize_and_overwrite(n, [](auto*, std::size_t k) { return k; }); }) {
        c.resize_and_overwrite(n, [](auto*, std::size_t k) { return k; });
        return;
    }
#endif
    c.resize(n);
}

/// Makes `s` the `n` characters encoded at `bytes`. For narrow strings it copies straight into fresh capacity (one
/// pass over the memory); resizing first would zero-fill it all before the copy (a second pass) unless C++23's
/// resize_and_overwrite exists. Huge pages are advised as in resize_for_overwrite.
template <class String>
void assign_string_bytes(String& s, const std::byte* bytes, std::size_t n) {
    using Char = typename String::value_type;
    if constexpr (std::is_same_v<Char, char> || std::is_same_v<Char, unsigned char>) {
        if (n > s.capacity()) {
            s.clear();  // nothing to keep: reserve() need not copy the old characters
            s.reserve(n);
            advise_huge_pages(s.data(), s.capacity());
        }
        s.assign(reinterpret_cast<const Char*>(bytes), n);  // char and unsigned char may read any bytes
    } else {
        resize_for_overwrite(s, n);
        if (n != 0) std::memcpy(s.data(), bytes, n * sizeof(Char));
    }
}

/// Recently released large buffers, kept for reuse: mapping fresh memory costs a fault per page and the kernel's
/// zeroing of every page, far more than the copy a large value needs. At most kSlots mappings and kMaxBytes in
/// all; thread-safe; a forked child inherits the cache like any other memory.
class MappedCache {
public:
    static constexpr std::size_t kSlots = 8;
    static constexpr std::size_t kMaxBytes = std::size_t{256} << 20;

    /// A cached mapping of at least `capacity` bytes (the smallest that fits), or nothing.
    PROCPOOL_DECL static std::pair<std::byte*, std::size_t> take(std::size_t capacity) noexcept;

    /// Keeps a mapping for reuse; unmaps it (or the oldest) when the cache is full.
    PROCPOOL_DECL static void give(std::byte* data, std::size_t capacity) noexcept;

private:
    struct Cache {
        std::mutex mutex;
        std::byte* data[kSlots] = {};
        std::size_t capacity[kSlots] = {};
        std::size_t total = 0;
        pid_t owner = ::getpid();
    };
    /// Cached mappings are MADV_DONTFORK: a forked child does not have them. Forget them there.
    PROCPOOL_DECL static void forget_if_forked(Cache& c) noexcept;
    PROCPOOL_DECL static Cache& cache() noexcept;
};

/// Memory a Buffer may write without owning it (Buffer::over()): `window` bytes at `data` to begin with, and up to
/// `limit` as `widen(context, wanted)` allows: it returns the new window (at least `wanted`, the capacity the
/// buffer grows to, never past `limit`), or 0 to refuse (the buffer then moves to memory of its own). widen() runs
/// before any byte past the old window is written.
struct ExternalStorage {
    std::byte* data = nullptr;
    std::size_t window = 0;
    std::size_t limit = 0;
    std::size_t (*widen)(void* context, std::size_t needed) noexcept = nullptr;
    void* context = nullptr;
};

/// A contiguous, growable byte buffer. Unlike std::vector<std::byte> it never zero-fills new space, so encoding a
/// large value touches each byte once. Capacities of 2 MiB and more are mapped directly and advised to use
/// transparent huge pages (a first touch then faults once per 2 MiB rather than once per 4 KiB, which matters on
/// virtual machines where a fault costs microseconds), and grow with mremap instead of a copy. A shareable buffer
/// (Buffer::shareable()) puts capacities from a threshold up (kShareableThreshold unless told) in the bulk arena, where
/// a pool's workers can read them in place, and grows there in place when it can. A buffer over external storage
/// (Buffer::over()) writes there until it outgrows it. Not thread-safe.
class Buffer {
public:
    static constexpr std::size_t kMappedThreshold = std::size_t{2} << 20;
    /// A shareable buffer moves to the bulk arena from this capacity up: a larger message would not fit one ring
    /// fragment (64 KiB with the default rings) and would stream through the ring, a round trip between parent and
    /// worker per ring-full (a 1 MiB `apply` argument took 1.4 ms that way, a 2 MiB one from the arena 0.3 ms).
    static constexpr std::size_t kShareableThreshold = BulkArena::kGranule;
    static constexpr std::size_t kNotShareable = std::numeric_limits<std::size_t>::max();
    /// Up to this many bytes live inside the Buffer itself: a small callable or argument costs no allocation.
    static constexpr std::size_t kInline = 48;
    /// No buffer grows beyond this (half the address space): larger requests throw std::bad_alloc.
    static constexpr std::size_t kMaxCapacity = std::numeric_limits<std::size_t>::max() / 2;

    Buffer() noexcept = default;
    explicit Buffer(std::size_t capacity) { reserve(capacity); }
    /// An empty buffer whose capacities from `from` bytes up live in the bulk arena when there is one (see
    /// bulk_arena.hpp).
    [[nodiscard]] static Buffer shareable(std::size_t from = kShareableThreshold) noexcept {
        Buffer buffer;
        buffer.shareable_from_ = from;
        return buffer;
    }
    /// An empty buffer that writes into `storage` (which must outlive it) and moves to memory of its own only when
    /// it outgrows it, its bytes copied along.
    [[nodiscard]] static Buffer over(const ExternalStorage& storage) noexcept {
        Buffer buffer;
        if (storage.data == nullptr) return buffer;
        buffer.data_ = storage.data;
        buffer.capacity_ = storage.window;
        buffer.external_ = storage;
        return buffer;
    }
    Buffer(Buffer&& other) noexcept { take(other); }
    Buffer& operator=(Buffer&& other) noexcept {
        if (this != &other) {
            release();
            take(other);
        }
        return *this;
    }
    Buffer(const Buffer& other) { append(other.data(), other.size()); }
    Buffer& operator=(const Buffer& other) {
        if (this != &other) {
            clear();
            append(other.data(), other.size());
        }
        return *this;
    }
    ~Buffer() { release(); }

    [[nodiscard]] std::byte* data() noexcept { return data_; }
    [[nodiscard]] const std::byte* data() const noexcept { return data_; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
    /// True while the bytes live in the bulk arena (readable by the workers of this process's pools).
    [[nodiscard]] bool in_arena() const noexcept { return in_arena_; }
    /// True while the bytes live in the external storage the buffer was made over (Buffer::over()).
    [[nodiscard]] bool in_external_storage() const noexcept { return external_.data != nullptr; }
    [[nodiscard]] std::span<const std::byte> view() const noexcept { return {data_, size_}; }

    void clear() noexcept { size_ = 0; }
    /// Shrinks the logical size (never grows); used to roll back a failed encode.
    void truncate(std::size_t size) noexcept {
        if (size < size_) size_ = size;
    }

    /// Makes room for `capacity` bytes in all. Throws std::bad_alloc.
    PROCPOOL_DECL void reserve(std::size_t capacity);

    /// Appends `n` uninitialised bytes and returns where they start.
    std::byte* extend(std::size_t n) {
        if (capacity_ - size_ < n) make_room(n);
        std::byte* at = data_ + size_;
        size_ += n;
        return at;
    }

    void append(const void* bytes, std::size_t n) {
        if (n == 0) return;
        std::memcpy(extend(n), bytes, n);
    }

    /// append() for bytes another process reads next: where the buffer lies in shared memory (the bulk arena, a
    /// worker's result area), runs of kStreamingCopyBytes and more bypass the cache (stream_copy).
    void append_for_reader(const void* bytes, std::size_t n) {
        if (n == 0) return;
        std::byte* to = extend(n);  // may move the buffer into the arena: ask where it is afterwards
        if (in_arena_) {
            stream_copy_parallel(to, bytes, n);  // the arena is the parent's: its workers wait for the bytes
        } else if (in_external_storage()) {
            stream_copy(to, bytes, n);
        } else {
            std::memcpy(to, bytes, n);
        }
    }

    /// Appends zero bytes until size() is a multiple of `alignment` (a power of two).
    void pad_to(std::size_t alignment) {
        const std::size_t padding = (alignment - (size_ & (alignment - 1))) & (alignment - 1);
        if (padding != 0) std::memset(extend(padding), 0, padding);
    }

private:
    /// Huge pages (fewer faults), and no inheritance by forked children: no child ever reads procpool's own
    /// buffers, and fork() copies the page tables of every inherited mapping, so a parent holding large values
    /// made building a pool (or a user's own fork) take milliseconds more.
    PROCPOOL_DECL static void advise_private_buffer(void* data, std::size_t capacity) noexcept;

    /// reserve() for a shareable buffer: grows in place in the arena, or moves there. False if the arena has no
    /// room (or this process does not own one): the buffer then stays private.
    PROCPOOL_DECL bool reserve_in_arena(std::size_t capacity) noexcept;

    /// extend() when the capacity is short: grows by half at least. Throws std::bad_alloc.
    PROCPOOL_DECL void make_room(std::size_t n);

    std::size_t grown_capacity(std::size_t needed) const noexcept {
        std::size_t next = capacity_ < 256 ? 256 : capacity_ + capacity_ / 2;
        return next < needed ? needed : next;
    }

    [[nodiscard]] bool is_inline() const noexcept { return data_ == inline_; }

    void take(Buffer& other) noexcept {
        if (other.is_inline()) {
            std::memcpy(inline_, other.inline_, other.size_);
            data_ = inline_;
        } else {
            data_ = other.data_;
        }
        size_ = other.size_;
        capacity_ = other.capacity_;
        in_arena_ = other.in_arena_;
        shareable_from_ = other.shareable_from_;
        mapped_by_ = other.mapped_by_;
        external_ = other.external_;
        other.data_ = other.inline_;
        other.size_ = 0;
        other.capacity_ = kInline;
        other.in_arena_ = false;
        other.external_ = {};
    }

    /// Moves the first `size` bytes into `storage` and makes it the buffer's memory.
    PROCPOOL_DECL void adopt(std::byte* storage, std::size_t capacity, std::size_t size) noexcept;

    void release() noexcept {
        if (!is_inline()) free_storage();
        data_ = inline_;
        size_ = 0;
        capacity_ = kInline;
    }
    /// Frees the memory (gives it back to the arena, to the cache of mappings, or to the heap; external storage is
    /// not ours to free). Not for inline memory.
    PROCPOOL_DECL void free_storage() noexcept;

    alignas(8) std::byte inline_[kInline];
    std::byte* data_ = inline_;
    std::size_t size_ = 0;
    std::size_t capacity_ = kInline;
    bool in_arena_ = false;                       // data_ is an allocation in the bulk arena
    std::size_t shareable_from_ = kNotShareable;  // capacities from here up go to the bulk arena
    pid_t mapped_by_ = 0;                         // the process whose mmap() data_ is (capacities >= kMappedThreshold)
    ExternalStorage external_;  // data_ is external_.data (Buffer::over()), or external_.data is nullptr
};

}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/buffer.ipp"
#endif
