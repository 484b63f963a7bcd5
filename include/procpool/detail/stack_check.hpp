// procpool internals: refusing callables and arguments that point into the submitting thread's stack.
//
// A callable is copied into the worker byte for byte. A capture by reference (`[&]`, `[&x]`) or of a pointer to a
// local (`[p = &x]`) holds an address in the caller's stack; in the worker that address reads the worker's own copy
// of the stack as it was when the worker was forked: stale values or garbage, never the caller's variable. So a
// submission whose callable (or trivially copyable argument) holds such an address is refused with
// std::invalid_argument, before anything is queued.
//
// The check looks at every aligned 8-byte word of the value for an address inside the calling thread's stack. Its
// bounds are read once per thread (pthread_getattr_np); the scan of a lambda's few captures costs a few compares.
// A non-pointer word can only be taken for one if its value happens to lie in that stack's range (a span of a few
// MiB around 0x7ffc'0000'0000 on x86-64 Linux): no count, size, index or double of a real program lands there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <pthread.h>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

#include "procpool/serialize.hpp"

namespace procpool::detail {

/// The address range of the calling thread's stack ([low, high)), or an empty range if it cannot be known.
struct StackRange {
    std::uintptr_t low = 0;
    std::uintptr_t high = 0;

    [[nodiscard]] bool contains(std::uintptr_t address) const noexcept { return address >= low && address < high; }

    static StackRange of_this_thread() noexcept {
        thread_local const StackRange range = read();
        return range;
    }

private:
    static StackRange read() noexcept {
        StackRange range;
        pthread_attr_t attributes;
        if (::pthread_getattr_np(::pthread_self(), &attributes) != 0) return range;
        void* address = nullptr;
        std::size_t size = 0;
        if (::pthread_attr_getstack(&attributes, &address, &size) == 0) {
            range.low = reinterpret_cast<std::uintptr_t>(address);
            range.high = range.low + size;
        }
        ::pthread_attr_destroy(&attributes);
        return range;
    }
};

/// True when one of the aligned words of the `size` bytes at `bytes` holds an address inside `stack`. Branch-free
/// within each 4 KiB so the compiler vectorises it: a large block of items is scanned at memory speed.
inline bool holds_stack_address(const void* bytes, std::size_t size, const StackRange& stack) noexcept {
    if (stack.high <= stack.low) return false;
    const auto* at = static_cast<const unsigned char*>(bytes);
    const std::size_t skip = (alignof(std::uintptr_t) -
                              reinterpret_cast<std::uintptr_t>(at) % alignof(std::uintptr_t)) %
                             alignof(std::uintptr_t);
    if (skip >= size) return false;
    const std::size_t words = (size - skip) / sizeof(std::uintptr_t);
    const std::uintptr_t span = stack.high - stack.low;
    constexpr std::size_t kBlock = 512;  // words between two looks at the result
    for (std::size_t first = 0; first < words; first += kBlock) {
        const std::size_t end = first + kBlock < words ? first + kBlock : words;
        bool hit = false;
        for (std::size_t i = first; i < end; ++i) {
            std::uintptr_t word = 0;
            std::memcpy(&word, at + skip + i * sizeof(word), sizeof word);
            hit |= word - stack.low < span;  // (unsigned: below low wraps around to a large value)
        }
        if (hit) return true;
    }
    return false;
}

/// Refuses a callable sent byte for byte whose bytes hold an address in the calling thread's stack.
template <class F>
void check_callable_captures(const F& f) {
    if constexpr (std::is_class_v<F> && sizeof(F) >= sizeof(std::uintptr_t)) {
        if (holds_stack_address(&f, sizeof(F), StackRange::of_this_thread())) {
            throw std::invalid_argument(
                "procpool: the callable refers to this thread's stack (a capture by reference such as [&] or [&x], "
                "or a pointer or reference to a local variable): a worker would read its own stale copy of that "
                "memory. Capture by value ([=] or [x]), or pass the data as an argument.");
        }
    }
}

template <class T>
struct is_pair_or_tuple : std::false_type {};
template <class A, class B>
struct is_pair_or_tuple<std::pair<A, B>> : std::true_type {};
template <class... Ts>
struct is_pair_or_tuple<std::tuple<Ts...>> : std::true_type {};

/// Whether values of T are looked at: trivially copyable class types (copied byte for byte) aligned like a pointer.
/// A type aligned less cannot hold an aligned pointer, numbers hold none, and other values travel through their own
/// encoding.
template <class T>
inline constexpr bool scanned_argument_v = std::is_class_v<T>&& bitwise<T>() && alignof(T) >= alignof(std::uintptr_t) &&
                                           sizeof(T) >= sizeof(std::uintptr_t);

inline void refuse_stack_argument() {
    throw std::invalid_argument(
        "procpool: an argument holds an address in this thread's stack (a struct with a pointer to a local "
        "variable): a worker cannot read that memory. Send the value itself (a std::vector, a std::string, a "
        "struct of values) instead of a pointer to it.");
}

/// Refuses an argument that is (or, for the pair or tuple of apply's arguments, holds) a trivially copyable struct
/// with an address in the calling thread's stack.
template <class T>
void check_argument_bytes(const T& value, const StackRange& stack) {
    using U = std::remove_cv_t<T>;
    if constexpr (is_pair_or_tuple<U>::value) {
        std::apply([&](const auto&... elements) { (check_argument_bytes(elements, stack), ...); }, value);
    } else if constexpr (scanned_argument_v<U>) {
        if (holds_stack_address(&value, sizeof(U), stack)) refuse_stack_argument();
    }
}

/// The same for `n` items stored contiguously.
template <class T>
void check_argument_run(const T* first, std::size_t n, const StackRange& stack) {
    if constexpr (scanned_argument_v<std::remove_cv_t<T>>) {
        if (holds_stack_address(first, n * sizeof(T), stack)) refuse_stack_argument();
    }
}

}  // namespace procpool::detail
