// The README's first example, built as a downstream project would build it.
#include <procpool/procpool.hpp>

#include <cstdio>
#include <ranges>

int main() {
    procpool::Pool pool(2);
    const std::vector<long> squares = pool.map([](long x) { return x * x; }, std::views::iota(0L, 1000L));
    long sum = 0;
    for (long s : squares) sum += s;
    std::printf("sum of squares below 1000: %ld\n", sum);
    return sum == 332833500L ? 0 : 1;
}
