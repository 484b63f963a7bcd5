// Replaces the global allocation functions of a test binary: they count its allocations, and fail them on
// request (the contracts of code that must not lose anything to std::bad_alloc). Include it in exactly one
// translation unit of a test binary. Every unaligned form is replaced, so that all of them pair with free()
// (AddressSanitizer's own operator new[] would otherwise meet this operator delete).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace procpool_test {

inline std::atomic<bool> fail_allocations{false};
inline std::atomic<long> allocations{0};

/// Fails this binary's allocations, on every thread, while it lives (and no longer once a test leaves early).
struct FailingAllocations {
    FailingAllocations() noexcept { fail_allocations = true; }
    ~FailingAllocations() { fail_allocations = false; }
    FailingAllocations(const FailingAllocations&) = delete;
    FailingAllocations& operator=(const FailingAllocations&) = delete;
};

/// Allocations of this thread still to fail, one each (fail_next_allocations_here(n)), however many others succeed.
inline thread_local int failing_here = 0;
inline void fail_next_allocations_here(int count) noexcept { failing_here = count; }

inline void* counted_allocation(std::size_t bytes) noexcept {
    if (fail_allocations) return nullptr;
    if (failing_here > 0) {
        --failing_here;
        return nullptr;
    }
    ++allocations;
    return std::malloc(bytes == 0 ? 1 : bytes);
}

}  // namespace procpool_test

// GCC inlines these into callers and then sees free() meet a pointer from operator new: the pairing is right here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t bytes) {
    if (void* memory = procpool_test::counted_allocation(bytes)) return memory;
    throw std::bad_alloc();
}
void* operator new[](std::size_t bytes) {
    if (void* memory = procpool_test::counted_allocation(bytes)) return memory;
    throw std::bad_alloc();
}
void* operator new(std::size_t bytes, const std::nothrow_t& /*tag*/) noexcept {
    return procpool_test::counted_allocation(bytes);
}
void* operator new[](std::size_t bytes, const std::nothrow_t& /*tag*/) noexcept {
    return procpool_test::counted_allocation(bytes);
}
void operator delete(void* memory) noexcept { std::free(memory); }
void operator delete[](void* memory) noexcept { std::free(memory); }
void operator delete(void* memory, std::size_t /*bytes*/) noexcept { std::free(memory); }
void operator delete[](void* memory, std::size_t /*bytes*/) noexcept { std::free(memory); }
void operator delete(void* memory, const std::nothrow_t& /*tag*/) noexcept { std::free(memory); }
void operator delete[](void* memory, const std::nothrow_t& /*tag*/) noexcept { std::free(memory); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
