// procpool internals: a growable byte buffer that does not zero what it allocates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <span>
#include <sys/mman.h>
#include <utility>

namespace procpool::detail {

/// Advises transparent huge pages for the whole pages inside [data, data + bytes) when the range is large enough
/// to benefit (2 MiB and up). Call before the memory is first touched: a first touch then faults once per 2 MiB
/// instead of once per 4 KiB, which on a virtual machine is the difference between milliseconds and a tenth of a
/// second for a 40 MB result. Harmless where THP is disabled.
inline void advise_huge_pages(void* data, std::size_t bytes) noexcept {
    constexpr std::size_t kHuge = std::size_t{2} << 20;
    if (bytes < kHuge) return;
    const auto begin = (reinterpret_cast<std::uintptr_t>(data) + 4095) & ~std::uintptr_t{4095};
    const auto end = (reinterpret_cast<std::uintptr_t>(data) + bytes) & ~std::uintptr_t{4095};
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

/// Resizes a contiguous container to `n` elements, advising huge pages before the new memory is touched.
template <class Container>
void resize_for_overwrite(Container& c, std::size_t n) {
    if (n > c.capacity()) {
        c.reserve(n);
        advise_huge_pages(c.data(), c.capacity() * sizeof(typename Container::value_type));
    }
    c.resize(n);
}

/// A contiguous, growable byte buffer. Unlike std::vector<std::byte> it never zero-fills new space, so encoding a
/// large value touches each byte once. Capacities of 2 MiB and more are mapped directly and advised to use
/// transparent huge pages (a first touch then faults once per 2 MiB rather than once per 4 KiB, which matters on
/// virtual machines where a fault costs microseconds), and grow with mremap instead of a copy. Not thread-safe.
class Buffer {
public:
    static constexpr std::size_t kMappedThreshold = std::size_t{2} << 20;
    /// Up to this many bytes live inside the Buffer itself: a small callable or argument costs no allocation.
    static constexpr std::size_t kInline = 48;

    Buffer() noexcept = default;
    explicit Buffer(std::size_t capacity) { reserve(capacity); }
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
    [[nodiscard]] std::span<const std::byte> view() const noexcept { return {data_, size_}; }

    void clear() noexcept { size_ = 0; }
    /// Shrinks the logical size (never grows); used to roll back a failed encode.
    void truncate(std::size_t size) noexcept {
        if (size < size_) size_ = size;
    }

    /// Makes room for `capacity` bytes in all. Throws std::bad_alloc.
    void reserve(std::size_t capacity) {
        if (capacity <= capacity_) return;
        const std::size_t size = size_;
        std::byte* bigger = nullptr;
        if (capacity < kMappedThreshold) {
            bigger = static_cast<std::byte*>(::operator new(capacity));
        } else {
            capacity = (capacity + kMappedThreshold - 1) & ~(kMappedThreshold - 1);
            void* mapped = capacity_ >= kMappedThreshold
                               ? ::mremap(data_, capacity_, capacity, MREMAP_MAYMOVE)
                               : ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (mapped == MAP_FAILED) throw std::bad_alloc();
            ::madvise(mapped, capacity, MADV_HUGEPAGE);  // advisory: ignored where THP is off
            bigger = static_cast<std::byte*>(mapped);
            if (capacity_ >= kMappedThreshold) {  // mremap moved the old mapping: nothing to copy or free
                data_ = bigger;
                capacity_ = capacity;
                return;
            }
        }
        if (size != 0) std::memcpy(bigger, data_, size);
        release();
        data_ = bigger;
        size_ = size;
        capacity_ = capacity;
    }


    /// Appends `n` uninitialised bytes and returns where they start.
    std::byte* extend(std::size_t n) {
        if (capacity_ - size_ < n) reserve(grown_capacity(size_ + n));
        std::byte* at = data_ + size_;
        size_ += n;
        return at;
    }

    void append(const void* bytes, std::size_t n) {
        if (n == 0) return;
        std::memcpy(extend(n), bytes, n);
    }

    /// Appends zero bytes until size() is a multiple of `alignment` (a power of two).
    void pad_to(std::size_t alignment) {
        const std::size_t padding = (alignment - (size_ & (alignment - 1))) & (alignment - 1);
        if (padding != 0) std::memset(extend(padding), 0, padding);
    }

private:
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
        other.data_ = other.inline_;
        other.size_ = 0;
        other.capacity_ = kInline;
    }

    void release() noexcept {
        if (!is_inline()) {
            if (capacity_ >= kMappedThreshold) {
                ::munmap(data_, capacity_);
            } else {
                ::operator delete(data_);
            }
        }
        data_ = inline_;
        size_ = 0;
        capacity_ = kInline;
    }

    alignas(8) std::byte inline_[kInline];
    std::byte* data_ = inline_;
    std::size_t size_ = 0;
    std::size_t capacity_ = kInline;
};

}  // namespace procpool::detail
