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
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

#include "procpool/detail/config.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

/// The address range of the calling thread's stack ([low, high)), or an empty range if it cannot be known.
struct StackRange {
    std::uintptr_t low = 0;
    std::uintptr_t high = 0;

    [[nodiscard]] bool contains(std::uintptr_t address) const noexcept { return address >= low && address < high; }

    /// Read once per thread.
    PROCPOOL_DECL static StackRange of_this_thread() noexcept;

private:
    PROCPOOL_DECL static StackRange read() noexcept;
};

/// True when one of the aligned words of the `size` bytes at `bytes` holds an address inside `stack`. Branch-free
/// within each 4 KiB so the compiler vectorises it: a large block of items is scanned at memory speed.
PROCPOOL_DECL bool holds_stack_address(const void* bytes, std::size_t size, const StackRange& stack) noexcept;

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
// (clang-tidy 14 takes the alignment and size checks for one expression when both are 8: they are two checks.)
template <class T>
// NOLINTNEXTLINE(misc-redundant-expression)
inline constexpr bool scanned_argument_v = std::is_class_v<T>&& bitwise<T>() && alignof(T) >= alignof(std::uintptr_t) &&
                                           sizeof(T) >= sizeof(std::uintptr_t);

[[noreturn]] PROCPOOL_DECL void refuse_stack_argument();

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

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/stack_check.ipp"
#endif
