// Chaos: workers killed at random, at any instruction, inside tasks and inside the transport. Every item's result
// is either correct or WorkerCrashed; none is lost, none runs twice, nothing hangs.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <random>
#include <ranges>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

/// Counters in shared memory made before the pool, so every worker increments the same ones: how many times each
/// item started.
struct RunCounters {
    explicit RunCounters(std::size_t n) : size(n) {
        void* memory = ::mmap(nullptr, n * sizeof(std::atomic<std::uint32_t>), PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        REQUIRE(memory != MAP_FAILED);
        counts = static_cast<std::atomic<std::uint32_t>*>(memory);
    }
    ~RunCounters() { ::munmap(counts, size * sizeof(std::atomic<std::uint32_t>)); }
    std::size_t size;
    std::atomic<std::uint32_t>* counts;
};

/// Kills a random worker of `pool` every `period` until stopped.
class Killer {
public:
    Killer(procpool::Pool& pool, std::chrono::microseconds period) : pool_(pool) {
        thread_ = std::thread([this, period] {
            std::mt19937 rng(12345);
            while (!stop_.load()) {
                std::this_thread::sleep_for(period);
                const std::vector<pid_t> pids = pool_.worker_pids();
                if (pids.empty()) continue;
                ::kill(pids[rng() % pids.size()], SIGKILL);
                ++kills;
            }
        });
    }
    ~Killer() { stop(); }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    std::atomic<int> kills{0};

private:
    procpool::Pool& pool_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

}  // namespace

TEST_CASE("chaos: random SIGKILLs throughout a map of 100 000 items", "[chaos]") {
    constexpr int kItems = 100'000;
    RunCounters runs(kItems);
    procpool::Pool pool(3);
    std::atomic<std::uint32_t>* counts = runs.counts;
    auto work = [counts](int i) {
        counts[i].fetch_add(1, std::memory_order_relaxed);
        long x = i;
        for (int k = 0; k < 2000; ++k) x = (x * 1103515245 + 12345) & 0x7fffffff;  // ~ microseconds of work
        return std::pair<int, long>{i, x};
    };
    auto expected = [](int i) {
        long x = i;
        for (int k = 0; k < 2000; ++k) x = (x * 1103515245 + 12345) & 0x7fffffff;
        return x;
    };
    Killer killer(pool, 20ms);
    int index = 0;
    int crashed = 0;
    auto results = pool.imap(work, std::views::iota(0, kItems));
    for (auto it = results.begin(); it != results.end(); ++it, ++index) {
        try {
            const auto [i, x] = *it;
            REQUIRE(i == index);
            REQUIRE(x == expected(index));
            REQUIRE(counts[index].load() == 1);  // ran exactly once
        } catch (const procpool::WorkerCrashed& e) {
            REQUIRE(counts[index].load() <= 1);  // a failed item never ran twice
            CHECK(e.signal() == SIGKILL);
            ++crashed;
        }
    }
    killer.stop();
    CHECK(index == kItems);                                           // none lost
    for (int i = 0; i < kItems; ++i) REQUIRE(counts[i].load() <= 1);  // none duplicated
    CHECK(killer.kills.load() > 10);
    CHECK(crashed <= killer.kills.load() * 300);  // only items a dead worker held (chunks flush every 200 us)
    CHECK(pool.apply([](int x) { return x + 1; }, 1) == 2);
    INFO("kills " << killer.kills.load() << ", failed items " << crashed);
}

TEST_CASE("chaos: workers killed while they stream large values through tiny rings", "[chaos]") {
    procpool::PoolOptions options;
    options.processes = 3;
    options.ring_bytes = 4096;  // every value streams through the ring in many fragments
    procpool::Pool pool(options);
    Killer killer(pool, 15ms);
    int ok = 0;
    int crashed = 0;
    // Four rounds at least, and on until the killer has struck a few times: a quiet machine runs four rounds in
    // about 100 ms, a loaded one may give the killer thread fewer turns meanwhile.
    for (int round = 0; round < 4 || (killer.kills.load() <= 5 && round < 100); ++round) {
        auto results = pool.imap([](int i) { return std::string(200'000 + i, static_cast<char>('a' + i % 26)); },
                                 std::views::iota(0, 60), {.chunksize = 1});
        int index = 0;
        for (auto it = results.begin(); it != results.end(); ++it, ++index) {
            try {
                const std::string& s = *it;
                REQUIRE(s.size() == static_cast<std::size_t>(200'000 + index));
                REQUIRE(s.find_first_not_of(static_cast<char>('a' + index % 26)) == std::string::npos);
                ++ok;
            } catch (const procpool::WorkerCrashed&) {
                ++crashed;
            }
        }
        REQUIRE(index == 60);
        // Large arguments too: the parent streams into task rings while workers die.
        const std::vector<std::string> inputs(30, std::string(150'000, 'q'));
        try {
            const auto sizes = pool.map([](const std::string& s) { return s.size(); }, inputs, {.chunksize = 1});
            for (std::size_t size : sizes) REQUIRE(size == 150'000);
        } catch (const procpool::WorkerCrashed&) {
            ++crashed;
        }
    }
    killer.stop();
    CHECK(ok > 0);
    CHECK(killer.kills.load() > 5);
    CHECK(pool.apply([](int x) { return x; }, 9) == 9);
    INFO("kills " << killer.kills.load() << ", ok " << ok << ", crashed " << crashed);
}
