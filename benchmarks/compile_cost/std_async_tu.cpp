// compile_cost: the same work as procpool_tu.cpp with the standard library's std::async/std::future, the
// baseline scripts/compile_cost measures procpool's compile cost against.
#include <cstdio>
#include <future>
#include <ranges>
#include <vector>

int main() {
    const auto square = [](int x) { return x * x; };

    // map: one task per item, results in input order.
    std::vector<std::future<int>> futures;
    for (int x : std::views::iota(0, 1000)) futures.push_back(std::async(std::launch::async, square, x));
    std::vector<int> squares;
    squares.reserve(futures.size());
    for (auto& future : futures) squares.push_back(future.get());

    // apply_async: one task.
    std::future<int> one = std::async(std::launch::async, square, 12);
    const int twelve = one.get();

    // imap: results consumed as they come, in input order.
    long streamed = 0;
    std::vector<std::future<int>> window;
    for (int x : std::views::iota(0, 1000)) window.push_back(std::async(std::launch::async, square, x));
    for (auto& future : window) streamed += future.get();

    long mapped = 0;
    for (int value : squares) mapped += value;
    std::printf("%ld %d %ld\n", mapped, twelve, streamed);
    return mapped == streamed && twelve == 144 ? 0 : 1;
}
