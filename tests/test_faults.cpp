// Fault tolerance beyond plain crashes: hard timeouts, worker recycling, parent death, crashes in every phase,
// signals without SA_RESTART, a fork that fails at start, the per-worker memory cap. Every fault is real.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <grp.h>
#include <ranges>
#include <set>
#include <string>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

int sleep_ms(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
}

pid_t worker_pid() { return ::getpid(); }

procpool::PoolOptions with_timeout(std::size_t processes, std::chrono::milliseconds timeout) {
    procpool::PoolOptions options;
    options.processes = processes;
    options.task_timeout = timeout;
    return options;
}

}  // namespace

// ---- hard timeouts ------------------------------------------------------------------------------------------------

TEST_CASE("a task past task_timeout fails with TaskTimeout, its worker is replaced, others complete", "[faults]") {
    procpool::Pool pool(with_timeout(2, 300ms));
    const std::vector<pid_t> before = pool.worker_pids();
    auto stuck = pool.apply_async(sleep_ms, 60'000);
    std::vector<procpool::AsyncResult<int>> fine;
    for (int i = 0; i < 20; ++i) fine.push_back(pool.apply_async(sleep_ms, 5));
    const auto start = std::chrono::steady_clock::now();
    try {
        stuck.get();
        FAIL("no exception");
    } catch (const procpool::TaskTimeout& e) {
        CHECK(e.timeout() == 300ms);
        CHECK(std::find(before.begin(), before.end(), e.pid()) != before.end());
        CHECK(test_support::eventually([&] { return !test_support::process_exists(e.pid()); }));  // killed
    }
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    for (auto& r : fine) CHECK(r.get() == 5);
    CHECK(test_support::eventually([&] { return pool.worker_pids().size() == 2; }));
    CHECK(pool.apply(sleep_ms, 1) == 1);
}

TEST_CASE("a task that ignores SIGTERM is killed with SIGKILL after the grace period", "[faults]") {
    procpool::Pool pool(with_timeout(1, 200ms));
    auto stubborn = pool.apply_async([] {
        std::signal(SIGTERM, SIG_IGN);
        for (;;) std::this_thread::sleep_for(10ms);
        return 0;
    });
    CHECK_THROWS_AS(stubborn.get(), procpool::TaskTimeout);
    CHECK(pool.apply(sleep_ms, 1) == 1);
}

TEST_CASE("the timeout applies to each item of a chunk, not to the chunk", "[faults]") {
    procpool::Pool pool(with_timeout(2, 150ms));
    // 20 items of 30 ms in chunks of 20: each chunk takes 600 ms, no item takes more than 30 ms.
    const std::vector<int> results = pool.map(sleep_ms, std::vector<int>(20, 30), {.chunksize = 20});
    CHECK(results == std::vector<int>(20, 30));
}

TEST_CASE("in a chunk, the item that hangs times out and every other item completes", "[faults]") {
    procpool::Pool pool(with_timeout(2, 250ms));
    auto f = [](int x) {
        if (x == 7) std::this_thread::sleep_for(60s);
        return x * 10;
    };
    int index = 0;
    int timeouts = 0;
    auto results = pool.imap(f, std::views::iota(0, 30), {.chunksize = 10});
    for (auto it = results.begin(); it != results.end(); ++it, ++index) {
        try {
            const int value = *it;
            CHECK(value == index * 10);
        } catch (const procpool::TaskTimeout&) {
            CHECK(index == 7);
            ++timeouts;
        }
    }
    CHECK(index == 30);
    CHECK(timeouts == 1);
}

TEST_CASE("a timed-out map fails with TaskTimeout and the pool goes on", "[faults]") {
    procpool::Pool pool(with_timeout(2, 200ms));
    CHECK_THROWS_AS(pool.map(sleep_ms, std::vector<int>{1, 2, 10'000, 3}), procpool::TaskTimeout);
    CHECK(pool.map(sleep_ms, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 2, 3});
}

TEST_CASE("a task whose arguments are still arriving is not timed out on the previous item's clock", "[faults]") {
    procpool::Pool pool(with_timeout(1, 1000ms));
    pool.apply(sleep_ms, 1);
    for (int round = 0; round < 3; ++round) {
        std::this_thread::sleep_for(1200ms);  // idle for longer than the timeout
        const std::string big(32u << 20, 'a');
        CHECK(pool.apply([](const std::string& s) { return s.size(); }, big) == big.size());
    }
}

// ---- recycling ----------------------------------------------------------------------------------------------------

TEST_CASE("max_tasks_per_child replaces workers after N items and loses nothing", "[faults]") {
    procpool::Pool pool(procpool::PoolOptions{.processes = 2, .max_tasks_per_child = 5});
    const std::vector<pid_t> pids = pool.map([](int) { return worker_pid(); }, std::views::iota(0, 60),
                                             {.chunksize = 1});
    REQUIRE(pids.size() == 60);
    const std::set<pid_t> distinct(pids.begin(), pids.end());
    CHECK(distinct.size() >= 12);  // 60 items, at most 5 per worker
    for (pid_t pid : distinct) CHECK(std::count(pids.begin(), pids.end(), pid) <= 5);
    // Automatic chunks never give a worker more than its budget either.
    const std::vector<pid_t> auto_pids = pool.map([](int) { return worker_pid(); }, std::views::iota(0, 200));
    for (pid_t pid : std::set<pid_t>(auto_pids.begin(), auto_pids.end())) {
        CHECK(std::count(auto_pids.begin(), auto_pids.end(), pid) <= 5);
    }
}

TEST_CASE("with max_tasks_per_child, queued tasks run and close() then join() does not hang", "[faults]") {
    procpool::Pool pool(procpool::PoolOptions{.processes = 2, .max_tasks_per_child = 1});
    std::vector<procpool::AsyncResult<int>> results;
    for (int i = 0; i < 30; ++i) results.push_back(pool.apply_async([](int x) { return x + 1; }, i));
    pool.close();
    pool.join();
    for (int i = 0; i < 30; ++i) CHECK(results[i].get() == i + 1);
    CHECK(test_support::child_pids().empty());
}

// ---- retries ------------------------------------------------------------------------------------------------------

TEST_CASE("retries: an item that crashes once succeeds on a retry and one that always crashes fails after them",
          "[faults]") {
    procpool::Pool pool(procpool::PoolOptions{.processes = 2, .retries = 2});
    procpool::SharedArray<int> runs(40);
    // Items 3, 17 and 30 crash on their first run only (a flaky input), item 25 aborts every time.
    const auto flaky = [runs](int i) {
        const int attempt = std::atomic_ref<int>(runs[static_cast<std::size_t>(i)]).fetch_add(1);
        if ((i == 3 || i == 17 || i == 30) && attempt == 0) std::raise(SIGKILL);
        return i * 2;
    };
    const std::vector<int> out = pool.map(flaky, std::views::iota(0, 40), {.chunksize = 4});
    for (int i = 0; i < 40; ++i) CHECK(out[static_cast<std::size_t>(i)] == i * 2);
    CHECK(runs[3] == 2);
    CHECK(runs[17] == 2);
    CHECK(runs[30] == 2);
    CHECK(runs[4] == 1);  // items after a crash in the same chunk ran once: they were never started before
    procpool::SharedArray<int> aborts(1);
    try {
        pool.apply(
            [aborts](int) -> int {
                std::atomic_ref<int>(aborts[0]).fetch_add(1);
                std::abort();
            },
            0);
        FAIL("no exception");
    } catch (const procpool::WorkerCrashed& e) {
        CHECK(e.signal() == SIGABRT);
    }
    CHECK(aborts[0] == 3);  // the first run and 2 retries
    // Exceptions are results, never retried.
    procpool::SharedArray<int> throws(1);
    CHECK_THROWS_AS(pool.apply(
                        [throws](int) -> int {
                            std::atomic_ref<int>(throws[0]).fetch_add(1);
                            throw std::runtime_error("no");
                        },
                        0),
                    std::runtime_error);
    CHECK(throws[0] == 1);
}

TEST_CASE("retries: an item past its timeout once succeeds on a retry", "[faults]") {
    procpool::Pool pool(procpool::PoolOptions{.processes = 2, .task_timeout = 200ms, .retries = 1});
    procpool::SharedArray<int> runs(4);
    const std::vector<int> out = pool.map(
        [runs](int i) {
            if (std::atomic_ref<int>(runs[static_cast<std::size_t>(i)]).fetch_add(1) == 0 && i == 2) sleep_ms(10000);
            return i;
        },
        std::views::iota(0, 4), {.chunksize = 1});
    CHECK(out == std::vector<int>{0, 1, 2, 3});
    CHECK(runs[2] == 2);
    // Without retries left it fails with TaskTimeout.
    CHECK_THROWS_AS(pool.apply(sleep_ms, 10000), procpool::TaskTimeout);
}

// ---- worker_pids() after a fault ----------------------------------------------------------------------------------

TEST_CASE("worker_pids() returns size() pids once a crash, a timeout or a recycling was reported", "[faults]") {
    procpool::Pool crashing(procpool::PoolOptions{.processes = 2, .task_timeout = 100ms});
    std::set<pid_t> seen;
    for (int round = 0; round < 10; ++round) {
        CHECK_THROWS_AS(crashing.apply(
                            [](int) -> int {
                                std::raise(SIGKILL);
                                return 0;
                            },
                            0),
                        procpool::WorkerCrashed);
        const std::vector<pid_t> pids = crashing.worker_pids();  // at once: the replacement is waited for
        CHECK(pids.size() == crashing.size());
        for (pid_t pid : pids) CHECK(test_support::process_exists(pid));
        seen.insert(pids.begin(), pids.end());
    }
    CHECK(seen.size() >= 11);  // each crash was replaced by a new process
    CHECK_THROWS_AS(crashing.apply(sleep_ms, 5000), procpool::TaskTimeout);
    CHECK(crashing.worker_pids().size() == crashing.size());
    procpool::Pool recycling(procpool::PoolOptions{.processes = 2, .max_tasks_per_child = 1});
    for (int round = 0; round < 20; ++round) {
        CHECK(recycling.apply([](int x) { return x; }, round) == round);
        CHECK(recycling.worker_pids().size() == recycling.size());
    }
}

// ---- signals the pool sends ---------------------------------------------------------------------------------------

namespace {
volatile std::sig_atomic_t* g_term_marker = nullptr;    // in shared memory: set by the program's handler, anywhere
void program_term_handler(int) { *g_term_marker = 1; }  // a shutdown handler that only records and returns
}  // namespace

TEST_CASE("workers run with the default action for SIGTERM, whatever handler or mask the program set", "[faults]") {
    void* shared = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(shared != MAP_FAILED);
    g_term_marker = static_cast<volatile std::sig_atomic_t*>(shared);
    *g_term_marker = 0;
    struct sigaction handler {};
    handler.sa_handler = program_term_handler;
    ::sigemptyset(&handler.sa_mask);
    struct sigaction previous {};
    ::sigaction(SIGTERM, &handler, &previous);
    sigset_t term;
    ::sigemptyset(&term);
    ::sigaddset(&term, SIGTERM);
    sigset_t previous_mask;
    ::pthread_sigmask(SIG_BLOCK, &term, &previous_mask);  // as a program that handles SIGTERM in a thread of its own
    {
        procpool::Pool pool(procpool::PoolOptions{.processes = 1, .task_timeout = 200ms});
        // What a worker has: SIGTERM's default action, not blocked.
        const auto [default_action, blocked] = pool.apply(
            [](int) {
                struct sigaction now {};
                ::sigaction(SIGTERM, nullptr, &now);
                sigset_t mask;
                ::pthread_sigmask(SIG_BLOCK, nullptr, &mask);
                return std::pair<bool, bool>{now.sa_handler == SIG_DFL, ::sigismember(&mask, SIGTERM) == 1};
            },
            0);
        CHECK(default_action);
        CHECK_FALSE(blocked);
        // A task past its timeout: SIGTERM ends its worker without running the program's handler there.
        CHECK_THROWS_AS(pool.apply(sleep_ms, 10000), procpool::TaskTimeout);
        CHECK(*g_term_marker == 0);
        CHECK(pool.apply([](int x) { return x; }, 3) == 3);
    }
    ::pthread_sigmask(SIG_SETMASK, &previous_mask, nullptr);
    ::sigaction(SIGTERM, &previous, nullptr);
    CHECK(*g_term_marker == 0);  // (nothing sent SIGTERM to this process either)
    ::munmap(shared, 4096);
    g_term_marker = nullptr;
}

// ---- parent death -------------------------------------------------------------------------------------------------

TEST_CASE("when the pool's process is killed with SIGKILL, its fork server and workers exit within a second",
          "[faults]") {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const pid_t parent = ::fork();
    if (parent == 0) {
        ::close(fds[0]);
        procpool::Pool pool(3);
        pool.apply(sleep_ms, 1);
        std::vector<pid_t> pids = pool.worker_pids();
        for (pid_t child : test_support::child_pids()) pids.push_back(child);  // the fork server
        const std::size_t n = pids.size();
        (void)!::write(fds[1], &n, sizeof n);
        (void)!::write(fds[1], pids.data(), n * sizeof(pid_t));
        auto busy = pool.map_async(sleep_ms, std::vector<int>(100, 50));  // workers are mid-task when it dies
        for (;;) ::pause();
    }
    ::close(fds[1]);
    std::size_t n = 0;
    REQUIRE(::read(fds[0], &n, sizeof n) == sizeof n);
    std::vector<pid_t> pids(n);
    REQUIRE(::read(fds[0], pids.data(), n * sizeof(pid_t)) == static_cast<ssize_t>(n * sizeof(pid_t)));
    ::close(fds[0]);
    REQUIRE(pids.size() == 4);
    std::this_thread::sleep_for(50ms);
    ::kill(parent, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(parent, &status, 0) == parent);
    const auto killed = std::chrono::steady_clock::now();
    // Exited means gone or a zombie: the orphaned fork server is reaped by init, which is not ours to hurry.
    auto exited = [](pid_t p) {
        const char state = test_support::process_state(p);
        return state == 0 || state == 'Z';
    };
    const bool all_exited = test_support::eventually([&] { return std::all_of(pids.begin(), pids.end(), exited); }, 3s);
    const auto took = std::chrono::steady_clock::now() - killed;
    // On failure, say which process was left and in what state (workers first, the fork server last).
    std::string states;
    for (pid_t p : pids) {
        const char state = test_support::process_state(p);
        states += std::to_string(p) + ":" + (state == 0 ? std::string("gone") : std::string(1, state)) + " ";
    }
    INFO("states " << states << "after " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                   << " ms");
    CHECK(all_exited);
    CHECK(took < 1s);
}

// ---- crashes in every phase ---------------------------------------------------------------------------------------

namespace {
pid_t g_test_process = ::getpid();

/// Crashes the worker while it decodes this value (never in the test process).
struct CrashOnDecode {
    int value = 0;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(value);
        if constexpr (std::is_same_v<Archive, procpool::InputArchive>) {
            if (::getpid() != g_test_process && value == 666) std::raise(SIGSEGV);
        }
    }
};

/// Crashes the worker while it encodes this value as a result.
struct CrashOnEncode {
    int value = 0;
    template <class Archive>
    void serialize(Archive& ar) {
        if constexpr (std::is_same_v<Archive, procpool::OutputArchive>) {
            if (::getpid() != g_test_process && value == 666) std::raise(SIGBUS);
        }
        ar(value);
    }
};
}  // namespace

TEST_CASE("a crash while decoding the task fails that task", "[faults]") {
    procpool::Pool pool(2);
    auto bad = pool.apply_async([](CrashOnDecode v) { return v.value; }, CrashOnDecode{666});
    auto good = pool.apply_async([](CrashOnDecode v) { return v.value; }, CrashOnDecode{1});
    try {
        bad.get();
        FAIL("no exception");
    } catch (const procpool::WorkerCrashed& e) {
        CHECK(e.signal() == SIGSEGV);
    }
    CHECK(good.get() == 1);
}

TEST_CASE("a crash while encoding the result fails that task", "[faults]") {
    procpool::Pool pool(2);
    auto bad = pool.apply_async([](int v) { return CrashOnEncode{v}; }, 666);
    auto good = pool.apply_async([](int v) { return CrashOnEncode{v}; }, 2);
    try {
        bad.get();
        FAIL("no exception");
    } catch (const procpool::WorkerCrashed& e) {
        CHECK(e.signal() == SIGBUS);
    }
    CHECK(good.get().value == 2);
}

TEST_CASE("a worker that dies after sending its result fails nothing", "[faults]") {
    procpool::Pool pool(1);
    const pid_t first = pool.worker_pids().front();
    // The task arms a timer and returns: SIGALRM kills the idle worker 50 ms after the result was sent.
    const int value = pool.apply([] {
        itimerval timer{};
        timer.it_value.tv_usec = 50'000;
        ::setitimer(ITIMER_REAL, &timer, nullptr);
        return 42;
    });
    CHECK(value == 42);
    CHECK(test_support::eventually([&] { return !test_support::process_exists(first); }));
    CHECK(test_support::eventually([&] {
        const auto pids = pool.worker_pids();
        return pids.size() == 1 && pids.front() != first;
    }));
    CHECK(pool.apply(sleep_ms, 1) == 1);
}

TEST_CASE("a crash is reported within a second of the worker's death", "[faults]") {
    procpool::Pool pool(2);
    auto crashing = pool.apply_async([] {
        std::this_thread::sleep_for(100ms);
        std::abort();
    });
    std::this_thread::sleep_for(50ms);
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(crashing.get(), procpool::WorkerCrashed);
    CHECK(std::chrono::steady_clock::now() - start < 1s);
}

// ---- signals ------------------------------------------------------------------------------------------------------

namespace {
std::atomic<long> g_signals_seen{0};
extern "C" void count_signal(int) { g_signals_seen.fetch_add(1, std::memory_order_relaxed); }

void install_without_restart(int signal) {
    struct sigaction action {};
    action.sa_handler = count_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: blocking calls return EINTR
    ::sigaction(signal, &action, nullptr);
}
}  // namespace

TEST_CASE("signals delivered without SA_RESTART, to the parent and the workers, change nothing", "[faults]") {
    install_without_restart(SIGUSR1);
    procpool::Pool pool(procpool::PoolOptions{.processes = 2, .initializer = [] { install_without_restart(SIGUSR1); }});
    std::atomic<bool> stop{false};
    std::thread storm([&] {
        while (!stop.load()) {
            ::kill(::getpid(), SIGUSR1);
            for (pid_t pid : pool.worker_pids()) ::kill(pid, SIGUSR1);
            std::this_thread::sleep_for(200us);
        }
    });
    long total = 0;
    for (int round = 0; round < 20; ++round) {
        const auto squares = pool.map(
            [](int x) {
                std::this_thread::sleep_for(50us);
                return x * x;
            },
            std::views::iota(0, 200));
        total += squares.back();
        for (int v : pool.imap([](int x) { return x; }, std::views::iota(0, 100), {.chunksize = 1})) total += v;
        auto slow = pool.apply_async(sleep_ms, 30);
        CHECK_FALSE(slow.wait(1ms));
        CHECK(slow.get(10s) == 30);
    }
    stop = true;
    storm.join();
    CHECK(total == 20L * (199 * 199 + 4950));
    CHECK(g_signals_seen.load() > 100);
    std::signal(SIGUSR1, SIG_DFL);
}

// ---- a fork that fails at start -----------------------------------------------------------------------------------

TEST_CASE("if fork fails for a worker, the constructor throws and the workers already started are reaped", "[faults]") {
    // As an unprivileged user with RLIMIT_NPROC = 4: this process, the fork server and two workers fit; the
    // third worker's fork fails with EAGAIN.
    const pid_t child = ::fork();
    if (child == 0) {
        if (::getuid() == 0) {
            (void)!::setgroups(0, nullptr);
            if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
        }
        const rlimit limit{4, 4};
        if (::setrlimit(RLIMIT_NPROC, &limit) != 0) ::_exit(11);
        int code = 1;
        try {
            procpool::Pool pool(5);
            code = 2;  // it should not have started
        } catch (const std::system_error& e) {
            // "worker 3 of 5" unless other processes of that user already count against the limit.
            const bool clear = std::string(e.what()).find("procpool: could not fork") != std::string::npos;
            code = clear && e.code().value() == EAGAIN ? 0 : 3;
        }
        if (code == 0 && !test_support::child_pids().empty()) code = 4;  // the started workers were reaped
        ::_exit(code);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("tasks queued for a replacement worker whose fork failed are not lost", "[faults]") {
    // As an unprivileged user: the fork server's RLIMIT_NPROC is dropped to 1 so the replacement of a killed
    // worker cannot be forked, then raised again: the pool retries and every task completes.
    const pid_t child = ::fork();
    if (child == 0) {
        if (::getuid() == 0) {
            (void)!::setgroups(0, nullptr);
            if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
        }
        int code = 0;
        {
            procpool::Pool pool(2);
            std::vector<procpool::AsyncResult<int>> results;
            for (int i = 0; i < 8; ++i) results.push_back(pool.apply_async(sleep_ms, 150));
            std::this_thread::sleep_for(50ms);
            const std::vector<pid_t> servers = test_support::child_pids();
            if (servers.size() != 1) ::_exit(11);
            rlimit original{};
            ::prlimit(servers[0], RLIMIT_NPROC, nullptr, &original);
            const rlimit tight{1, original.rlim_max};
            if (::prlimit(servers[0], RLIMIT_NPROC, &tight, nullptr) != 0) ::_exit(12);
            ::kill(pool.worker_pids().front(), SIGKILL);
            std::this_thread::sleep_for(40ms);
            ::prlimit(servers[0], RLIMIT_NPROC, &original, nullptr);
            int ok = 0;
            int crashed = 0;
            for (auto& r : results) {
                if (!r.wait(10s)) ::_exit(13);  // lost
                try {
                    r.get();
                    ++ok;
                } catch (const procpool::WorkerCrashed&) {
                    ++crashed;
                }
            }
            if (crashed > 1 || ok + crashed != 8) code = 14;
        }
        ::_exit(code);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

// ---- the memory cap -----------------------------------------------------------------------------------------------

TEST_CASE("a task allocating past memory_limit fails with std::bad_alloc and the pool goes on", "[faults]") {
    procpool::PoolOptions options;
    options.processes = 2;
    options.memory_limit = std::size_t{256} << 20;
    procpool::Pool pool(options);
    auto too_much = [&] {
        pool.apply([](std::size_t n) { return std::vector<char>(n, 1).size(); }, std::size_t{2} << 30);
    };
    CHECK(test_support::fails_past_memory_limit(too_much));
    CHECK(pool.apply([](std::size_t n) { return std::vector<char>(n, 1).size(); }, std::size_t{64} << 20) ==
          (std::size_t{64} << 20));
    CHECK_THROWS_AS(procpool::Pool(procpool::PoolOptions{.processes = 1, .memory_limit = 0}), std::invalid_argument);
}
