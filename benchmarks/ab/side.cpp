// One side of benchmarks/ab/run.sh: procpool from one tree, compiled into its own namespace (-Dprocpool=...), so that
// two versions of the library run in one process. Exposes make_pool_<SIDE>, burst_<SIDE> and destroy_pool_<SIDE>.
#include <procpool/procpool.hpp>

#include <chrono>
#include <cstdlib>
#include <vector>

#ifndef SIDE
#error "compile with -DSIDE=a or -DSIDE=b"
#endif
#define AB_CAT2(a, b) a##b
#define AB_CAT(a, b) AB_CAT2(a, b)

namespace {
int identity(int x) { return x; }
}  // namespace

void* AB_CAT(make_pool_, SIDE)() {
    auto* pool = new procpool::Pool(2);
    pool->apply(identity, 0);
    return pool;
}

void AB_CAT(destroy_pool_, SIDE)(void* pool) { delete static_cast<procpool::Pool*>(pool); }

/// One burst of 20 000 no-op apply_async, submitted then gathered (as bench_pool's BM_apply_async_burst): M tasks/s.
double AB_CAT(burst_, SIDE)(void* opaque) {
    auto& pool = *static_cast<procpool::Pool*>(opaque);
    constexpr int kTasks = 20000;
    const auto start = std::chrono::steady_clock::now();
    std::vector<procpool::AsyncResult<int>> results;
    results.reserve(kTasks);
    for (int k = 0; k < kTasks; ++k) results.push_back(pool.apply_async(identity, k));
    long sum = 0;
    for (auto& result : results) sum += result.get();
    if (sum != static_cast<long>(kTasks - 1) * kTasks / 2) std::abort();
    return kTasks / std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 1e6;
}
