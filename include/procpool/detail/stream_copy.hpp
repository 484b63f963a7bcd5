// procpool internals: copying large values into shared memory with non-temporal stores.
//
// A large argument or result is encoded once into shared memory and read once, by another process on another
// core. Ordinary stores first read every destination line into the writer's cache (a read for ownership) and
// leave the value there, where it evicts the writer's working set and is no use to the reader; non-temporal
// stores write whole lines straight to memory. Measured on the benchmark machine (2-vCPU AMD EPYC VM), maps of
// 160 MiB in all, alternating runs: arguments of 256 KiB 6.6 -> 8.3 GB/s, of 1 MiB 7.2 -> 9.4, of 10 MiB 6.3 ->
// 8.2; 10 MiB results 5.2 -> 5.9 GB/s where the caller's allocator recycles memory (3.8 -> 3.9 where it hands out
// fresh pages, whose zeroing then dominates). Below kStreamingCopyBytes a value may well still be in a cache the
// reader shares, and memcpy is used.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

// GCC instruments neither ASan nor TSan checks around non-temporal store intrinsics: sanitizer builds copy with
// memcpy, so that every byte a large encoding writes stays checked.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PROCPOOL_DETAIL_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PROCPOOL_DETAIL_SANITIZED 1
#endif
#endif

#if defined(__x86_64__) && defined(__SSE2__) && !defined(PROCPOOL_DETAIL_SANITIZED)
#define PROCPOOL_DETAIL_STREAMING_STORES 1
#include <emmintrin.h>
#endif

namespace procpool::detail {

/// Copies from this size up bypass the cache (x86-64).
inline constexpr std::size_t kStreamingCopyBytes = std::size_t{256} << 10;
static_assert(kStreamingCopyBytes >= 64, "stream_copy's loop assumes a streamed copy spans a 16-byte head and more");

/// memcpy(dst, src, n) for ranges that do not overlap. From kStreamingCopyBytes up on x86-64 the bulk is written
/// with non-temporal stores, followed by a store fence: a release store after the call publishes the bytes like
/// after memcpy. Use it only for a destination that another process reads next: the bytes end up in memory, not
/// in this core's cache (reading them back here costs twice a memcpy). Never throws; any alignment.
inline void stream_copy(void* dst, const void* src, std::size_t n) noexcept {
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

}  // namespace procpool::detail
