// The Pool API: apply, apply_async, map, map_async, starmap, starmap_async, AsyncResult, options.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <ranges>
#include <set>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

int square(int x) { return x * x; }
long add(long a, long b) { return a + b; }
pid_t my_pid(int) { return ::getpid(); }

struct Scale {  // a function object with a trivially copyable capture
    double factor;
    double operator()(double x) const { return x * factor; }
};

struct Prefixer {  // a serializable function object: its std::string travels through serialize()
    std::string prefix;
    std::string operator()(const std::string& s) const { return prefix + s; }
    template <class Archive>
    void serialize(Archive& ar) {
        ar(prefix);
    }
};

}  // namespace

TEST_CASE("a pool forks its workers when built and reports them", "[pool]") {
    procpool::Pool pool(3);
    CHECK(pool.size() == 3);
    const std::vector<pid_t> pids = pool.worker_pids();
    REQUIRE(pids.size() == 3);
    CHECK(std::set<pid_t>(pids.begin(), pids.end()).size() == 3);
    for (pid_t pid : pids) {
        CHECK(pid != ::getpid());
        CHECK(test_support::process_exists(pid));
    }
}

TEST_CASE("the default pool has one worker per usable CPU", "[pool]") {
    procpool::Pool pool;
    CHECK(pool.size() == procpool::detail::usable_cpu_count());
}

TEST_CASE("apply runs the function in another process and returns its value", "[pool][threads]") {
    procpool::Pool pool(2);
    CHECK(pool.apply(square, 12) == 144);
    CHECK(pool.apply(add, 40L, 2L) == 42);
    CHECK(pool.apply([] { return std::string("no arguments"); }) == "no arguments");
    const pid_t worker = pool.apply(my_pid, 0);
    CHECK(worker != ::getpid());
    const std::vector<pid_t> pids = pool.worker_pids();
    CHECK(std::find(pids.begin(), pids.end(), worker) != pids.end());
}

TEST_CASE("callables: function pointers, captureless and capturing lambdas, function objects", "[pool]") {
    procpool::Pool pool(2);
    CHECK(pool.apply(&square, 3) == 9);
    const int offset = 1000;
    const double weights[3] = {0.5, 1.5, 2.5};
    CHECK(pool.apply([offset](int x) { return x + offset; }, 1) == 1001);
    CHECK(pool.apply([weights](int i) { return weights[i]; }, 2) == 2.5);
    CHECK(pool.apply(Scale{2.5}, 4.0) == 10.0);
    CHECK(pool.apply(Prefixer{"pre-"}, std::string("fix")) == "pre-fix");
    CHECK(pool.apply(std::plus<int>{}, 2, 3) == 5);
}

TEST_CASE("arguments are copied at submission: later changes are not seen", "[pool]") {
    procpool::Pool pool(1);
    std::vector<int> data{1, 2, 3};
    auto result = pool.apply_async([](const std::vector<int>& v) { return std::accumulate(v.begin(), v.end(), 0); },
                                   data);
    data.assign(100, 100);
    CHECK(result.get() == 6);
}

TEST_CASE("C strings are sent as std::string", "[pool]") {
    procpool::Pool pool(1);
    CHECK(pool.apply([](const std::string& s) { return s.size(); }, "hello") == 5);
    const char* text = "abc";
    CHECK(pool.apply([](std::string s) { return s + s; }, text) == "abcabc");
}

TEST_CASE("a map over files: std::filesystem::path arguments and results", "[pool]") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("procpool-paths-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::vector<fs::path> files;
    for (int i = 0; i < 20; ++i) {
        files.push_back(dir / ("file " + std::to_string(i) + ".txt"));
        std::ofstream(files.back()) << std::string(static_cast<std::size_t>(i), 'x');
    }
    procpool::Pool pool(2);
    const std::vector<std::uintmax_t> sizes = pool.map([](const fs::path& p) { return fs::file_size(p); }, files);
    const std::vector<fs::path> renamed = pool.map([](fs::path p) { return p.replace_extension(".csv"); }, files,
                                                   {.chunksize = 3});
    std::error_code ignored;
    fs::remove_all(dir, ignored);
    for (std::size_t i = 0; i < files.size(); ++i) {
        CHECK(sizes[i] == i);
        CHECK(renamed[i] == fs::path(files[i]).replace_extension(".csv"));
    }
    CHECK(pool.apply([](const fs::path& p) { return p.filename(); }, dir / "name.txt") == fs::path("name.txt"));
}

namespace {
struct Window {  // a trivially copyable struct with a pointer: fine to a global, refused to a local
    const int* data;
    int count;
};
const int g_table[3] = {1, 2, 3};
}  // namespace

TEST_CASE("a callable or argument that points into the caller's stack is refused with std::invalid_argument",
          "[pool]") {
    procpool::Pool pool(2);
    int factor = 3;
    const auto refused = [](auto&& submit) {
        try {
            submit();
        } catch (const std::invalid_argument& e) {
            const std::string what = e.what();
            return what.find("stack") != std::string::npos && (what.find("Capture by value") != std::string::npos ||
                                                               what.find("Send the value itself") != std::string::npos);
        }
        return false;
    };
    // Captures by reference, of a reference, of a pointer to a local: in every kind of submission.
    CHECK(refused([&] { (void)pool.apply([&](int x) { return x * factor; }, 2); }));
    CHECK(refused([&] { (void)pool.apply_async([&factor](int x) { return x * factor; }, 2); }));
    CHECK(refused([&] { (void)pool.apply([p = &factor](int x) { return x * *p; }, 2); }));
    CHECK(refused([&] { (void)pool.map([&](int x) { return x * factor; }, std::views::iota(0, 10)); }));
    CHECK(refused([&] {
        (void)pool.starmap_async([&](int a, int b) { return a * b * factor; },
                                 std::vector<std::pair<int, int>>{{1, 2}});
    }));
    CHECK(refused([&] { (void)pool.imap([&](int x) { return x * factor; }, std::views::iota(0, 10)); }));
    CHECK(refused([&] { (void)pool.imap_unordered([&](int x) { return x * factor; }, std::views::iota(0, 10)); }));
    // Trivially copyable arguments holding a pointer to a local: alone, among apply's arguments, in a map's input.
    const int local[3] = {4, 5, 6};
    CHECK(refused([&] { (void)pool.apply([](Window w) { return w.count; }, Window{local, 3}); }));
    CHECK(refused([&] { (void)pool.apply([](int, Window w) { return w.count; }, 1, Window{local, 3}); }));
    const std::vector<Window> windows{{g_table, 3}, {local, 3}};
    CHECK(refused([&] { (void)pool.map([](Window w) { return w.count; }, windows); }));
    // The same from another thread (another stack).
    bool refused_in_thread = false;
    std::thread([&] {
        int there = 7;
        refused_in_thread = refused([&] { (void)pool.apply([&there](int x) { return x + there; }, 1); });
    }).join();
    CHECK(refused_in_thread);
    // By value, pointers to globals, shared-object handles: accepted, and the pool is unharmed.
    CHECK(pool.apply([factor](int x) { return x * factor; }, 2) == 6);
    CHECK(pool.apply([=](int x) { return x * factor; }, 3) == 9);
    CHECK(pool.apply([](Window w) { return w.data[w.count - 1]; }, Window{g_table, 3}) == 3);
    CHECK(pool.map([](Window w) { return w.count; }, std::vector<Window>{{g_table, 1}, {g_table, 2}}) ==
          std::vector<int>{1, 2});
    procpool::SharedValue<int> shared(5);
    CHECK(pool.apply([shared](int x) { return x + shared.value(); }, 1) == 6);
}

TEST_CASE("void tasks", "[pool]") {
    procpool::Pool pool(2);
    pool.apply([](int) {}, 1);
    procpool::AsyncResult<void> result = pool.apply_async([] {});
    result.get();
    CHECK(result.ready());
    CHECK(result.successful());
    static_assert(std::is_void_v<decltype(pool.map([](int) {}, std::vector<int>{1, 2}))>);
    pool.map([](int) {}, std::vector<int>{1, 2, 3});
    pool.starmap([](int, int) {}, std::vector<std::pair<int, int>>{{1, 2}});
    pool.map_async([](int) {}, std::vector<int>{1}).get();
}

TEST_CASE("AsyncResult: get, get(timeout), wait, ready, successful", "[pool][threads]") {
    procpool::Pool pool(2);
    auto slow = pool.apply_async(
        [](int ms) {
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
            return ms;
        },
        300);
    CHECK_FALSE(slow.ready());
    CHECK_THROWS_AS(slow.successful(), procpool::PoolStateError);
    CHECK_THROWS_AS(slow.get(10ms), procpool::TimeoutError);
    CHECK_FALSE(slow.wait(10ms));
    CHECK(slow.get(10s) == 300);  // the task kept running after the timeouts
    CHECK(slow.ready());
    CHECK(slow.successful());
    CHECK(slow.wait(0ms));
    slow.wait();
    CHECK(slow.get() == 300);  // repeatable
    procpool::AsyncResult<int> copy = slow;
    CHECK(copy.get() == 300);

    auto failing = pool.apply_async([](int) -> int { throw std::runtime_error("boom"); }, 0);
    failing.wait();
    CHECK_FALSE(failing.successful());
    CHECK_THROWS_AS(failing.get(), std::runtime_error);
    CHECK_THROWS_AS(failing.get(), std::runtime_error);  // rethrown every time

    procpool::AsyncResult<int> empty;
    CHECK_FALSE(empty.valid());
    CHECK_THROWS_AS(empty.get(), procpool::PoolStateError);
}

TEST_CASE("AsyncResult callbacks run once, in this process, for success and for error", "[pool][threads]") {
    procpool::Pool pool(2);
    std::atomic<int> successes{0};
    std::atomic<int> errors{0};
    std::atomic<pid_t> callback_pid{0};
    auto ok = pool.apply_async(square, 5);
    ok.on_success([&](const int& value) {
        successes += value;
        callback_pid = ::getpid();
    });
    ok.on_error([&](std::exception_ptr) { ++errors; });
    auto bad = pool.apply_async([](int) -> int { throw std::logic_error("no"); }, 1);
    bad.on_success([&](const int&) { ++successes; });
    bad.on_error([&](std::exception_ptr e) {
        try {
            std::rethrow_exception(e);
        } catch (const std::logic_error&) {
            errors += 10;
        }
    });
    ok.wait();
    bad.wait();
    REQUIRE(test_support::eventually([&] { return successes == 25 && errors == 10; }));
    CHECK(callback_pid == ::getpid());
    // Registered after completion: runs at once, in this thread.
    int late = 0;
    ok.on_success([&](const int& value) { late = value; });
    CHECK(late == 25);
    auto void_result = pool.apply_async([] {});
    std::atomic<bool> void_called{false};
    void_result.on_success([&] { void_called = true; });
    void_result.wait();
    CHECK(test_support::eventually([&] { return void_called.load(); }));
}

TEST_CASE("map returns results in input order for any input range", "[pool][threads]") {
    procpool::Pool pool(3);
    std::vector<int> input(1000);
    std::iota(input.begin(), input.end(), -500);
    const std::vector<int> squares = pool.map(square, input);
    REQUIRE(squares.size() == input.size());
    for (std::size_t i = 0; i < input.size(); ++i) REQUIRE(squares[i] == input[i] * input[i]);

    CHECK(pool.map(square, std::views::iota(0, 5)) == std::vector<int>{0, 1, 4, 9, 16});
    const std::set<std::string> words{"pear", "apple", "fig"};
    CHECK(pool.map([](const std::string& s) { return s.size(); }, words) == std::vector<std::size_t>{5, 3, 4});
    const std::map<std::string, int> ages{{"a", 1}, {"b", 2}};
    CHECK(pool.map([](const std::pair<std::string, int>& kv) { return kv.first + std::to_string(kv.second); }, ages) ==
          std::vector<std::string>{"a1", "b2"});
    auto evens = std::views::iota(0, 20) | std::views::filter([](int x) { return x % 2 == 0; });
    CHECK(pool.map(square, evens).size() == 10);
}

TEST_CASE("map with every chunk size: 1, automatic, larger than the input", "[pool]") {
    procpool::Pool pool(2);
    std::vector<long> input(2500);
    std::iota(input.begin(), input.end(), 0L);
    std::vector<long> expected(input.size());
    std::transform(input.begin(), input.end(), expected.begin(), [](long x) { return 3 * x + 1; });
    auto f = [](long x) { return 3 * x + 1; };
    for (std::size_t chunksize :
         {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{2500}, std::size_t{100000}}) {
        INFO("chunksize " << chunksize);
        CHECK(pool.map(f, input, {.chunksize = chunksize}) == expected);
    }
}

TEST_CASE("empty inputs give empty results", "[pool]") {
    procpool::Pool pool(2);
    CHECK(pool.map(square, std::vector<int>{}).empty());
    CHECK(pool.map_async(square, std::vector<int>{}).get().empty());
    CHECK(pool.starmap(add, std::vector<std::tuple<long, long>>{}).empty());
    int count = 0;
    for (int value : pool.imap(square, std::vector<int>{})) count += value + 1;
    CHECK(count == 0);
}

TEST_CASE("map_async returns at once and delivers the whole vector", "[pool][threads]") {
    procpool::Pool pool(2);
    auto result = pool.map_async(
        [](int x) {
            std::this_thread::sleep_for(1ms);
            return x + 1;
        },
        std::views::iota(0, 200));
    CHECK_FALSE(result.ready());
    const std::vector<int>& values = result.get();
    REQUIRE(values.size() == 200);
    CHECK(values.front() == 1);
    CHECK(values.back() == 200);
    std::vector<int> moved = std::move(result).get();
    CHECK(moved.size() == 200);
}

TEST_CASE("starmap unpacks tuples, pairs and arrays", "[pool]") {
    procpool::Pool pool(2);
    const std::vector<std::tuple<long, long>> pairs{{1, 2}, {3, 4}, {5, 6}};
    CHECK(pool.starmap(add, pairs) == std::vector<long>{3, 7, 11});
    const std::vector<std::pair<std::string, int>> repeat{{"ab", 2}, {"x", 3}};
    auto times = [](const std::string& s, int n) {
        std::string out;
        for (int i = 0; i < n; ++i) out += s;
        return out;
    };
    CHECK(pool.starmap(times, repeat) == std::vector<std::string>{"abab", "xxx"});
    const std::vector<std::array<int, 3>> triples{{1, 2, 3}, {4, 5, 6}};
    CHECK(pool.starmap([](int a, int b, int c) { return a * b * c; }, triples) == std::vector<int>{6, 120});
    CHECK(pool.starmap_async(add, pairs).get() == std::vector<long>{3, 7, 11});
}

TEST_CASE("work is spread over all workers", "[pool]") {
    procpool::Pool pool(3);
    const std::vector<pid_t> pids = pool.map(
        [](int) {
            std::this_thread::sleep_for(5ms);
            return ::getpid();
        },
        std::views::iota(0, 60), {.chunksize = 1});
    const std::set<pid_t> distinct(pids.begin(), pids.end());
    CHECK(distinct.size() == 3);
}

TEST_CASE("a long task does not hold back short tasks queued behind it", "[pool][threads]") {
    // One worker gets a long task with a short one already queued behind it; the idle worker must take the short
    // one over instead of waiting for the long one to finish.
    procpool::Pool pool(2);
    pool.apply([] {});  // both workers up
    auto long_task = pool.apply_async([] {
        std::this_thread::sleep_for(2s);
        return 1;
    });
    std::vector<procpool::AsyncResult<int>> short_tasks;
    for (int i = 0; i < 20; ++i) {
        short_tasks.push_back(pool.apply_async(
            [](int x) {
                std::this_thread::sleep_for(10ms);
                return x;
            },
            i));
    }
    const auto start = std::chrono::steady_clock::now();
    for (auto& r : short_tasks) r.get();
    CHECK(std::chrono::steady_clock::now() - start < 1500ms);
    CHECK_FALSE(long_task.ready());
    CHECK(long_task.get() == 1);
}

TEST_CASE("a short task's result is not held back behind long tasks queued after it on its worker", "[pool]") {
    // Once tasks are short, a worker queued deep rings the parent for a result only when its queue runs low; the
    // parent still looks every millisecond meanwhile (ForkTransport::kDeferredResultBound; its housekeeping, every
    // 50 ms, would too). So the short task's result must be delivered (ready() only reads it: no waiting thread
    // polls) long before the long tasks queued behind it on the same worker end, not when that queue runs low.
    procpool::Pool pool(1);
    pool.map([](int x) { return x; }, std::views::iota(0, 3000), {.chunksize = 1});  // tasks measured short
    // Queued behind a blocker, so that the short task runs with the long ones already waiting behind it.
    auto blocker = pool.apply_async([] { std::this_thread::sleep_for(100ms); });
    auto short_task = pool.apply_async([] { return 7; });
    std::vector<procpool::AsyncResult<int>> long_tasks;
    for (int i = 0; i < 3; ++i) {
        long_tasks.push_back(pool.apply_async([] {
            std::this_thread::sleep_for(1500ms);
            return 1;
        }));
    }
    blocker.get();
    const auto start = std::chrono::steady_clock::now();
    while (!short_task.ready() && std::chrono::steady_clock::now() - start < 1s) std::this_thread::sleep_for(1ms);
    CHECK(short_task.ready());
    CHECK_FALSE(long_tasks.front().ready());
    CHECK(short_task.get() == 7);
    pool.terminate();
}

TEST_CASE("submissions from many threads at once", "[pool][threads]") {
    procpool::Pool pool(2);
    std::vector<std::thread> threads;
    std::atomic<long> total{0};
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 200; ++i) total += pool.apply(add, long{t}, long{i});
            auto mapped = pool.map(square, std::views::iota(0, 100));
            total += std::accumulate(mapped.begin(), mapped.end(), 0L);
        });
    }
    for (auto& thread : threads) thread.join();
    const long per_thread_apply = 200L * 199 / 2;
    const long squares = 328350;  // sum of i^2 for i < 100
    CHECK(total == 4 * per_thread_apply + 200L * (0 + 1 + 2 + 3) + 4 * squares);
}

TEST_CASE("the initializer runs once in each worker before its first task", "[pool]") {
    static int initialized = 0;  // each worker has its own copy
    procpool::Pool pool(procpool::PoolOptions{.processes = 2, .initializer = [] { initialized += 41; }});
    const std::vector<int> seen = pool.map([](int) { return initialized; }, std::views::iota(0, 50), {.chunksize = 1});
    for (int value : seen) CHECK(value == 41);
    CHECK(initialized == 0);  // not in the parent
}

TEST_CASE("bad pool options throw std::invalid_argument", "[pool]") {
    CHECK_THROWS_AS(procpool::Pool(0), std::invalid_argument);
    CHECK_THROWS_AS(procpool::Pool(procpool::PoolOptions{.processes = 0}), std::invalid_argument);
    CHECK_THROWS_AS(procpool::Pool(procpool::PoolOptions{.processes = 1, .max_tasks_per_child = 0}),
                    std::invalid_argument);
    CHECK_THROWS_AS(procpool::Pool(procpool::PoolOptions{.processes = 1, .task_timeout = 0ms}), std::invalid_argument);
    CHECK_THROWS_AS(procpool::Pool(procpool::PoolOptions{.processes = 1, .task_timeout = -5ms}), std::invalid_argument);
    procpool::PoolOptions odd_ring;
    odd_ring.processes = 1;
    odd_ring.ring_bytes = 5000;
    CHECK_THROWS_AS(procpool::Pool(odd_ring), std::invalid_argument);
}

TEST_CASE("code written against the pool template works with Pool", "[pool]") {
    auto total = []<class P>(P& pool) {
        auto values = pool.map([](int x) { return x * 2; }, std::views::iota(1, 4));
        return std::accumulate(values.begin(), values.end(), 0);
    };
    procpool::Pool pool(1);
    CHECK(total(pool) == 12);
}
