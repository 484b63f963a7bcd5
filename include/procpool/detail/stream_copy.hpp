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

#include "procpool/detail/config.hpp"

namespace procpool::detail {

/// Copies from this size up bypass the cache (x86-64).
inline constexpr std::size_t kStreamingCopyBytes = std::size_t{256} << 10;
static_assert(kStreamingCopyBytes >= 64, "stream_copy's loop assumes a streamed copy spans a 16-byte head and more");

/// memcpy(dst, src, n) for ranges that do not overlap. From kStreamingCopyBytes up on x86-64 the bulk is written
/// with non-temporal stores, followed by a store fence: a release store after the call publishes the bytes like
/// after memcpy. Use it only for a destination that another process reads next: the bytes end up in memory, not
/// in this core's cache (reading them back here costs twice a memcpy). Never throws; any alignment.
PROCPOOL_DECL void stream_copy(void* dst, const void* src, std::size_t n) noexcept;

/// Copies from this size up are split between the calling thread and one more (stream_copy_parallel).
inline constexpr std::size_t kParallelCopyBytes = std::size_t{8} << 20;
/// The pieces two threads take turns at in stream_copy_parallel (ending at page boundaries of the destination).
inline constexpr std::size_t kParallelCopyPiece = std::size_t{512} << 10;
static_assert(kParallelCopyBytes >= kParallelCopyPiece, "a parallel copy has at least one piece");

/// stream_copy(dst, src, n), from kParallelCopyBytes up shared between this thread and a thread started for the
/// call (joined before returning), a piece of about kParallelCopyPiece at a time. For a destination in fresh shared
/// memory most of the time goes to the kernel allocating and zeroing its pages on first touch (about 0.9 ms per MiB
/// on the benchmark VM, ten times the copy): two threads fault in pages at once. Copies on this thread alone if no
/// thread can be started. For the process that owns the pool, while its workers wait for the bytes (a map's input):
/// elsewhere the second thread would take a core from a worker. Never throws.
PROCPOOL_DECL void stream_copy_parallel(void* dst, const void* src, std::size_t n) noexcept;

}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/stream_copy.ipp"
#endif
