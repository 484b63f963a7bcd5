// compile_cost: a typical user translation unit of procpool (scripts/compile_cost compiles it and
// std_async_tu.cpp, the same work with std::async, and compares). It uses map, apply_async and imap of a lambda
// over ints, as issue 18 describes. It is compiled (-c), never linked or run by that script.
#include <procpool/procpool.hpp>

#include <cstdio>
#include <ranges>
#include <vector>

int main() {
    procpool::Pool pool(2);
    const auto square = [](int x) { return x * x; };

    const std::vector<int> squares = pool.map(square, std::views::iota(0, 1000));

    procpool::AsyncResult<int> one = pool.apply_async(square, 12);

    long streamed = 0;
    for (int value : pool.imap(square, std::views::iota(0, 1000))) streamed += value;

    long mapped = 0;
    for (int value : squares) mapped += value;
    std::printf("%ld %d %ld\n", mapped, one.get(), streamed);
    return mapped == streamed && one.get() == 144 ? 0 : 1;
}
