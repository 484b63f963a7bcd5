// The shared-array example of Python multiprocessing guides, done right: a SharedArray passed through map and
// filled by the workers, zero-copy. (Python refuses to pass a multiprocessing.Array through map: "should only be
// shared through inheritance".)
#include <procpool/procpool.hpp>

#include <cmath>
#include <cstdio>
#include <numeric>
#include <ranges>

int main() {
    procpool::Pool pool;

    // Made after the pool, passed as an argument: the workers write into the same memory.
    constexpr std::size_t kCells = 1'000'000;
    constexpr std::size_t kBlocks = 10;
    procpool::SharedArray<double> cells(kCells);
    auto blocks = std::views::iota(std::size_t{0}, kBlocks) | std::views::transform([&](std::size_t b) {
                      return std::pair{cells, b};
                  });
    pool.starmap(
        [](procpool::SharedArray<double> a, std::size_t block) {
            const std::size_t begin = block * a.size() / kBlocks;
            const std::size_t end = (block + 1) * a.size() / kBlocks;
            for (std::size_t i = begin; i < end; ++i) a[i] = std::sqrt(static_cast<double>(i));
        },
        blocks);

    // Or captured: a lambda capturing handles is sent to the workers like any other.
    procpool::SharedValue<long> visits(0);
    pool.map(
        [visits](int) {
            std::lock_guard guard(visits.get_lock());  // Python: with visits.get_lock():
            ++visits.value();
        },
        std::views::iota(0, 100));

    const double sum = std::accumulate(cells.begin(), cells.end(), 0.0);
    std::printf("sum of sqrt(i) for i < %zu, computed in the workers: %.1f\n", kCells, sum);
    std::printf("visits counted under the value's lock: %ld\n", visits.value());
    const bool ok = std::abs(sum - 666666166.4588) < 1.0 && visits.value() == 100;
    return ok ? 0 : 1;
}
