// procpool benchmarks (Google Benchmark). Run benchmarks/run.sh for the comparison with Python and threads.
#include <benchmark/benchmark.h>
#include <procpool/procpool.hpp>

#include <numeric>
#include <vector>

namespace {

int identity(int x) { return x; }

void BM_apply_round_trip(benchmark::State& state) {
    procpool::Pool pool(2);
    for (int i = 0; i < 1000; ++i) pool.apply(identity, i);
    int i = 0;
    for (auto _ : state) benchmark::DoNotOptimize(pool.apply(identity, i++));
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_apply_round_trip)->UseRealTime();

void BM_map_tiny_items(benchmark::State& state) {
    procpool::Pool pool(2);
    std::vector<int> input(static_cast<std::size_t>(state.range(0)));
    std::iota(input.begin(), input.end(), 0);
    for (auto _ : state) benchmark::DoNotOptimize(pool.map([](int x) { return x * 2; }, input));
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_map_tiny_items)->Arg(10'000'000)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
