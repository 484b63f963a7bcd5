// The separately compiled mode (procpool::compiled): a program whose files define PROCPOOL_SEPARATE_COMPILATION
// and link the library. These tests go through every path the library takes over from the headers: building and
// stopping a pool, map/apply_async/imap, errors of each kind (standard, registered, procpool's own, RemoteError, a
// crash, a timeout), retries, shared objects, dicts, lists, pipes and managed segments, large values (the bulk
// arena), progress reports and terminate(). A second file of the program (compiled_mode_other.cpp) uses a pool too:
// both link against one copy of the library's code.
#include <catch2/catch.hpp>
#include <procpool/managed_segment.hpp>  // in this mode, not part of procpool.hpp
#include <procpool/procpool.hpp>

#include <boost/interprocess/containers/vector.hpp>
#include <boost/interprocess/sync/scoped_lock.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

#ifndef PROCPOOL_SEPARATE_COMPILATION
#error "this test is built against procpool::compiled, which defines PROCPOOL_SEPARATE_COMPILATION"
#endif
#ifdef PROCPOOL_HEADER_ONLY
#error "procpool is header-only in a file that defines PROCPOOL_SEPARATE_COMPILATION"
#endif

using namespace std::chrono_literals;

long sum_in_other_file(int n);  // compiled_mode_other.cpp

namespace {

struct Oops : std::exception {
    std::string message;
    int code = 0;
    Oops() = default;
    Oops(std::string text, int c) : message(std::move(text)), code(c) {}
    const char* what() const noexcept override { return message.c_str(); }
    template <class Archive>
    void serialize(Archive& ar) {
        ar(message, code);
    }
};

}  // namespace

TEST_CASE("map, apply_async and imap give the header-only answers", "[compiled]") {
    procpool::Pool pool(2);
    CHECK(pool.size() == 2);
    CHECK(pool.worker_pids().size() == 2);
    const auto square = [](int x) { return x * x; };
    const std::vector<int> squares = pool.map(square, std::views::iota(0, 1000));
    REQUIRE(squares.size() == 1000);
    CHECK(squares[999] == 998001);
    procpool::AsyncResult<int> one = pool.apply_async(square, 12);
    long streamed = 0;
    for (int value : pool.imap(square, std::views::iota(0, 1000))) streamed += value;
    long unordered = 0;
    for (int value : pool.imap_unordered(square, std::views::iota(0, 1000), {.chunksize = 7})) unordered += value;
    CHECK(one.get() == 144);
    CHECK(streamed == 332833500L);
    CHECK(unordered == 332833500L);
    CHECK(pool.starmap([](int a, int b) { return a * b; }, std::vector<std::pair<int, int>>{{2, 3}, {4, 5}}) ==
          std::vector<int>{6, 20});
    CHECK(pool.apply([](const std::string& s) { return s + "!"; }, "compiled") == "compiled!");
}

TEST_CASE("two files of one program share the library's code", "[compiled]") {
    procpool::Pool pool(1);
    CHECK(sum_in_other_file(100) == 4950);  // while this file's pool runs
    CHECK(pool.apply([](int x) { return x + 1; }, 1) == 2);
}

TEST_CASE("errors come back as they do header-only", "[compiled]") {
    procpool::register_exception<Oops>();
    procpool::Pool pool(2);
    CHECK_THROWS_AS(pool.apply([] { throw std::out_of_range("nope"); }), std::out_of_range);
    try {
        pool.apply([] { throw Oops("registered", 7); });
        FAIL("no exception");
    } catch (const Oops& e) {
        CHECK(e.message == "registered");
        CHECK(e.code == 7);
    }
    CHECK_THROWS_AS(pool.apply([](int) -> int { throw procpool::TimeoutError("late"); }, 0), procpool::TimeoutError);
    try {
        pool.apply([] { throw 42; });
        FAIL("no exception");
    } catch (const procpool::RemoteError& e) {
        CHECK(e.type_name() == "int");
        CHECK(std::string(e.what()) == "procpool: the task threw int 42");
    }
    try {
        pool.apply([] { std::raise(SIGKILL); });
        FAIL("no exception");
    } catch (const procpool::WorkerCrashed& e) {
        CHECK(e.signal() == SIGKILL);
    }
    CHECK(pool.apply([] { return 1; }) == 1);  // the worker was replaced
    const int captured = 0;
    CHECK_THROWS_AS(pool.apply([&captured] { return captured; }), std::invalid_argument);  // the stack check
}

TEST_CASE("a task past its timeout is killed, and a crashed item is retried", "[compiled]") {
    {
        procpool::Pool pool(procpool::PoolOptions{.processes = 1, .task_timeout = 100ms});
        CHECK_THROWS_AS(pool.apply([] { ::pause(); }), procpool::TaskTimeout);
        CHECK(pool.apply([] { return 2; }) == 2);
    }
    procpool::Pool pool(procpool::PoolOptions{.processes = 2, .retries = 1});
    procpool::SharedArray<int> runs(8);
    const auto flaky = [runs](int i) {
        if (std::atomic_ref<int>(runs[static_cast<std::size_t>(i)]).fetch_add(1) == 0 && i == 5) std::raise(SIGKILL);
        return i;
    };
    CHECK(pool.map(flaky, std::views::iota(0, 8)) == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
    CHECK(runs[5] == 2);
}

TEST_CASE("shared objects, large values and progress reports", "[compiled]") {
    procpool::SharedArray<long> totals(4);
    procpool::Lock lock;
    procpool::Pool pool(2);
    pool.map(
        [totals, lock](int i) {
            std::lock_guard guard(lock);
            totals[static_cast<std::size_t>(i % 4)] += i;
        },
        std::views::iota(0, 100));
    CHECK(std::accumulate(totals.begin(), totals.end(), 0L) == 4950);

    const std::vector<double> big(1 << 20, 0.5);  // 8 MiB: through the bulk arena both ways
    const std::vector<double> back = pool.apply([](const std::vector<double>& v) { return v; }, big);
    CHECK(back == big);

    std::size_t reports = 0;
    bool finished = false;
    pool.map([](int x) { return x; }, std::views::iota(0, 100), {.progress = [&](const procpool::ProgressInfo& info) {
                 ++reports;
                 finished = finished || info.finished;
             }});
    CHECK(reports >= 1);
    CHECK(finished);
}

TEST_CASE("dicts, lists, pipes and managed segments", "[compiled]") {
    const procpool::SharedDict<std::string, int> dict;
    const procpool::SharedList<int> list;
    auto [left, right] = procpool::make_pipe<std::string>();
    const procpool::ManagedSegment segment(1 << 20);
    using Ints = boost::interprocess::vector<int, procpool::ManagedSegment::allocator<int>>;
    Ints* ints = segment.construct<Ints>("ints")(segment.get_allocator<int>());
    procpool::Lock lock;
    procpool::Pool pool(2);
    pool.map(
        [dict, list, segment, lock](int i) mutable {
            dict.set("k" + std::to_string(i), i);
            list.append(i);
            boost::interprocess::scoped_lock<procpool::Lock> guard(lock);
            segment.find<Ints>("ints").first->push_back(i);
        },
        std::views::iota(0, 50));
    CHECK(dict.size() == 50);
    CHECK(dict.get("k7") == std::optional<int>(7));
    CHECK(list.size() == 50);
    CHECK(ints->size() == 50);
    CHECK(std::accumulate(ints->begin(), ints->end(), 0) == 1225);
    auto echo = pool.apply_async([end = right] { end.send(end.recv() + "!"); });
    left.send("pipe");
    CHECK(left.recv() == "pipe!");
    echo.get();
}

TEST_CASE("terminate fails what is unfinished", "[compiled]") {
    procpool::Pool pool(1);
    auto slow = pool.apply_async([] { ::pause(); });
    pool.terminate();
    CHECK_THROWS_AS(slow.get(), procpool::PoolStateError);
    CHECK_THROWS_AS(pool.apply([] { return 0; }), procpool::PoolStateError);
}
