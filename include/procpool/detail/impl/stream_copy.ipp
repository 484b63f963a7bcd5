// procpool internals: the definitions of detail/stream_copy.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <system_error>
#include <thread>

#include "procpool/detail/platform.hpp"
#include "procpool/detail/stream_copy.hpp"

// GCC instruments neither ASan nor TSan checks around non-temporal store intrinsics: sanitizer builds copy with
// memcpy, so that every byte a large encoding writes stays checked.
#if defined(__x86_64__) && defined(__SSE2__) && !defined(PROCPOOL_DETAIL_ASAN) && !defined(PROCPOOL_DETAIL_TSAN)
#define PROCPOOL_DETAIL_STREAMING_STORES 1
#include <emmintrin.h>
#endif

namespace procpool::detail {

PROCPOOL_DECL void stream_copy(void* dst, const void* src, std::size_t n) noexcept {
#if defined(PROCPOOL_DETAIL_STREAMING_STORES)
    if (n >= kStreamingCopyBytes) {
        auto* to = static_cast<unsigned char*>(dst);
        const auto* from = static_cast<const unsigned char*>(src);
        const std::size_t head = (16 - (reinterpret_cast<std::uintptr_t>(to) & 15)) & 15;  // to a 16-byte boundary
        std::memcpy(to, from, head);
        to += head;
        from += head;
        std::size_t left = n - head;
        for (; left >= 64; left -= 64, to += 64, from += 64) {
            const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from));
            const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from + 16));
            const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from + 32));
            const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from + 48));
            _mm_stream_si128(reinterpret_cast<__m128i*>(to), a);
            _mm_stream_si128(reinterpret_cast<__m128i*>(to + 16), b);
            _mm_stream_si128(reinterpret_cast<__m128i*>(to + 32), c);
            _mm_stream_si128(reinterpret_cast<__m128i*>(to + 48), d);
        }
        std::memcpy(to, from, left);
        _mm_sfence();  // non-temporal stores are weakly ordered: make them visible before any later store
        return;
    }
#endif
    if (n != 0) std::memcpy(dst, src, n);
}

PROCPOOL_DECL void stream_copy_parallel(void* dst, const void* src, std::size_t n) noexcept {
    if (n < kParallelCopyBytes) {
        stream_copy(dst, src, n);
        return;
    }
    auto* to = static_cast<unsigned char*>(dst);
    const auto* from = static_cast<const unsigned char*>(src);
    // Piece i starts at the nearest page boundary of the destination at or below dst + i * kParallelCopyPiece, so
    // that the two threads never fault in the same page; the last piece takes the remainder. Each thread takes the
    // next piece when it is done with its last: with two fixed halves, the thread whose fresh pages came faster waited
    // for the other at every copy (7-10% of both CPUs idle through the first map of 16 arguments of 10 MiB).
    static_assert(kParallelCopyPiece >= kPage && kParallelCopyPiece % kPage == 0, "pieces end at page boundaries");
    const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(dst);
    const std::size_t pieces = n / kParallelCopyPiece;  // at least kParallelCopyBytes / kParallelCopyPiece
    const auto start_of = [&](std::size_t piece) noexcept -> std::size_t {
        if (piece == 0) return 0;
        if (piece == pieces) return n;
        return ((base + piece * kParallelCopyPiece) & ~std::uintptr_t{kPage - 1}) - base;
    };
    std::atomic<std::size_t> next{0};
    const auto copy_pieces = [&]() noexcept {
        for (std::size_t piece; (piece = next.fetch_add(1, std::memory_order_relaxed)) < pieces;) {
            const std::size_t begin = start_of(piece);
            stream_copy(to + begin, from + begin, start_of(piece + 1) - begin);
        }
    };
    try {
        std::thread helper(copy_pieces);
        copy_pieces();
        helper.join();
        return;
    } catch (const std::system_error&) {  // no thread to be had: copy it all here
    } catch (const std::bad_alloc&) {
    }
    copy_pieces();
}

}  // namespace procpool::detail
