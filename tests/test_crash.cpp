// A worker that dies fails only the task it held, with WorkerCrashed; it is replaced and the pool goes on.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <ranges>
#include <thread>
#include <unistd.h>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

TEST_CASE("a segfault fails its task with WorkerCrashed carrying the signal and the pool goes on", "[crash]") {
    procpool::Pool pool(2);
    const std::vector<pid_t> before = pool.worker_pids();
    auto crashing = pool.apply_async([] {
        std::raise(SIGSEGV);
        return ::getpid();
    });
    try {
        crashing.get();
        FAIL("no exception");
    } catch (const procpool::WorkerCrashed& e) {
        CHECK(e.signal() == SIGSEGV);
        CHECK(e.exit_code() == 0);
        CHECK(std::find(before.begin(), before.end(), e.pid()) != before.end());
        CHECK(std::string(e.what()).find("SIGSEGV") != std::string::npos);
    }
    CHECK(pool.apply([](int x) { return x + 1; }, 1) == 2);
    CHECK(test_support::eventually([&] { return pool.worker_pids().size() == 2; }));
    CHECK(pool.size() == 2);
}

namespace {
extern "C" void exit_with_42(int) { ::_exit(42); }
extern "C" void exit_with_43(int) { ::_exit(43); }
}  // namespace

TEST_CASE("a crash handler the program installed does not run in workers, but one the initializer installs does",
          "[crash]") {
    struct sigaction program_handler {};
    program_handler.sa_handler = exit_with_42;
    struct sigaction saved {};
    REQUIRE(::sigaction(SIGSEGV, &program_handler, &saved) == 0);
    const auto segfault = [] {
        std::raise(SIGSEGV);
        return 0;
    };
    {
        procpool::Pool pool(2);
        try {
            pool.apply(segfault);
            FAIL("no exception");
        } catch (const procpool::WorkerCrashed& e) {
            CHECK(e.signal() == SIGSEGV);  // 42 if the program's handler had run
            CHECK(e.exit_code() == 0);
        }
        // The replacement worker too.
        CHECK_THROWS_AS(pool.apply(segfault), procpool::WorkerCrashed);
    }
    {
        procpool::Pool pool(procpool::PoolOptions{.processes = 1, .initializer = [] {
                                                      struct sigaction own {};
                                                      own.sa_handler = exit_with_43;
                                                      ::sigaction(SIGSEGV, &own, nullptr);
                                                  }});
        try {
            pool.apply(segfault);
            FAIL("no exception");
        } catch (const procpool::WorkerCrashed& e) {
            CHECK(e.signal() == 0);
            CHECK(e.exit_code() == 43);
        }
    }
    ::sigaction(SIGSEGV, &saved, nullptr);
}

TEST_CASE("abort(), exit() and _exit() fail only their own task", "[crash]") {
    procpool::Pool pool(2);
    auto aborting = pool.apply_async([] { std::abort(); });
    auto exiting = pool.apply_async([] { std::exit(7); });
    auto quick_exit = pool.apply_async([] { ::_exit(3); });
    std::vector<procpool::AsyncResult<int>> fine;
    for (int i = 0; i < 50; ++i) fine.push_back(pool.apply_async([](int x) { return 2 * x; }, i));

    try {
        aborting.get();
        FAIL("no exception");
    } catch (const procpool::WorkerCrashed& e) {
        CHECK(e.signal() == SIGABRT);
    }
    try {
        exiting.get();
        FAIL("no exception");
    } catch (const procpool::WorkerCrashed& e) {
        CHECK(e.signal() == 0);
        CHECK(e.exit_code() == 7);
    }
    try {
        quick_exit.get();
        FAIL("no exception");
    } catch (const procpool::WorkerCrashed& e) {
        CHECK(e.exit_code() == 3);
    }
    for (int i = 0; i < 50; ++i) CHECK(fine[i].get() == 2 * i);
}

TEST_CASE("a worker killed from outside with SIGKILL in the middle of a map fails at most the items it held",
          "[crash]") {
    procpool::Pool pool(2);
    auto results = pool.imap(
        [](int x) {
            std::this_thread::sleep_for(20ms);
            return x;
        },
        std::views::iota(0, 100), {.chunksize = 1});
    int ok = 0;
    int crashed = 0;
    int index = 0;
    for (auto it = results.begin(); it != results.end(); ++it, ++index) {
        if (index == 10) ::kill(pool.worker_pids().front(), SIGKILL);
        try {
            const int value = *it;
            CHECK(value == index);
            ++ok;
        } catch (const procpool::WorkerCrashed& e) {
            CHECK(e.signal() == SIGKILL);
            ++crashed;
        }
    }
    CHECK(index == 100);
    CHECK(crashed <= 1);
    CHECK(ok + crashed == 100);
    CHECK(pool.size() == 2);
}

TEST_CASE("a crash inside a chunk fails the item that crashed and the chunk's other items still complete", "[crash]") {
    procpool::Pool pool(1);
    auto f = [](int x) {
        if (x == 13) std::raise(SIGSEGV);
        std::this_thread::sleep_for(1ms);
        return x;
    };
    int index = 0;
    int crashed = 0;
    auto results = pool.imap(f, std::views::iota(0, 40), {.chunksize = 40});
    for (auto it = results.begin(); it != results.end(); ++it, ++index) {
        try {
            const int value = *it;
            CHECK(value == index);
        } catch (const procpool::WorkerCrashed&) {
            CHECK(index == 13);
            ++crashed;
        }
    }
    CHECK(crashed == 1);
    CHECK(index == 40);
}

TEST_CASE("a crash fails a map with WorkerCrashed and the pool goes on", "[crash]") {
    procpool::Pool pool(2);
    CHECK_THROWS_AS(pool.map(
                        [](int x) {
                            if (x == 50) std::abort();
                            return x;
                        },
                        std::views::iota(0, 100)),
                    procpool::WorkerCrashed);
    CHECK(pool.map([](int x) { return x; }, std::views::iota(0, 100)).size() == 100);
}

TEST_CASE("an initializer that throws breaks the pool with that error instead of looping", "[crash]") {
    for (std::size_t processes : {1u, 2u, 4u}) {
        procpool::Pool pool(procpool::PoolOptions{.processes = processes, .initializer = [] {
                                                      throw std::runtime_error("cannot load the model");
                                                  }});
        // Either the task was queued before the pool broke (it fails with the initializer's exception) or the
        // pool had already broken (submitting throws PoolStateError naming it): the message is there either way.
        try {
            pool.apply([] { return 1; });
            FAIL("no exception");
        } catch (const std::runtime_error& e) {
            CHECK_THAT(e.what(), Catch::Contains("cannot load the model"));
        }
        // The fork server exits once the pool broke; the reason must stay the initializer's after that too.
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        try {
            pool.apply([] { return 1; });
            FAIL("no exception");
        } catch (const procpool::PoolStateError& e) {
            CHECK_THAT(e.what(), Catch::Contains("cannot load the model"));
        }
    }
}

TEST_CASE("after a run of fast items, a crash among slow ones fails only the crashing item", "[crash]") {
    // Fast items let the worker look at the clock rarely (every 256 items at most); once items are slow it looks at
    // every item and sends what finished. A crash 300 slow items in must find all of them sent: a longer stretch
    // between looks would fail finished items with WorkerCrashed.
    procpool::Pool pool(1);
    constexpr int kFast = 2'000'000;
    constexpr int kCrashAt = kFast + 300;
    constexpr int kCount = kCrashAt + 10;
    auto results = pool.imap(
        [](int x) {
            if (x >= kFast) {
                const auto end = std::chrono::steady_clock::now() + 250us;
                while (std::chrono::steady_clock::now() < end) {
                }
            }
            if (x == kCrashAt) std::abort();
            return 2 * x;
        },
        std::views::iota(0, kCount), {.chunksize = kCount});
    int index = 0;
    std::vector<int> crashed;
    for (auto it = results.begin(); it != results.end(); ++it, ++index) {
        try {
            const int value = *it;
            REQUIRE(value == 2 * index);
        } catch (const procpool::WorkerCrashed&) {
            crashed.push_back(index);
        }
    }
    CHECK(index == kCount);
    CHECK(crashed == std::vector<int>{kCrashAt});
}
