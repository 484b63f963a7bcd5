// procpool internals: the definitions of detail/stack_check.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <pthread.h>
#include <stdexcept>

#include "procpool/detail/stack_check.hpp"

namespace procpool::detail {

PROCPOOL_DECL StackRange StackRange::of_this_thread() noexcept {
    thread_local const StackRange range = read();
    return range;
}

PROCPOOL_DECL StackRange StackRange::read() noexcept {
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

PROCPOOL_DECL bool holds_stack_address(const void* bytes, std::size_t size, const StackRange& stack) noexcept {
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

[[noreturn]] PROCPOOL_DECL void refuse_stack_argument() {
    throw std::invalid_argument(
        "procpool: an argument holds an address in this thread's stack (a struct with a pointer to a local "
        "variable): a worker cannot read that memory. Send the value itself (a std::vector, a std::string, a "
        "struct of values) instead of a pointer to it.");
}

}  // namespace procpool::detail
