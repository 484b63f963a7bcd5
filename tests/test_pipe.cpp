// Pipes (pipe.hpp): duplex messages between the parent, workers and threads, timed receives and polls, and a peer
// that died (killed, exited, stopped by task_timeout) reported with BrokenPipeError instead of a hang.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

struct Sample {
    std::string name;
    std::vector<int> values;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(name, values);
    }
    bool operator==(const Sample&) const = default;
};

/// Runs `body` in a forked child that exits right after it; returns its pid.
template <class Body>
pid_t spawn(Body body) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        body();
        ::_exit(0);
    }
    return pid;
}

}  // namespace

TEST_CASE("a pipe is duplex between the parent and a worker, in order, for any type and size", "[pipe]") {
    // Named ends, not a structured binding: clang 14 (clang-tidy) cannot capture a binding in a lambda.
    auto pipe = procpool::make_pipe<Sample>();
    auto& left = pipe.first;
    auto& right = pipe.second;
    procpool::Pool pool(2);
    // The worker echoes what it receives, with its name changed, until it gets an empty sample.
    auto echo = pool.apply_async([right] {
        int n = 0;
        for (;;) {
            Sample s = right.recv();
            if (s.name.empty()) return n;
            s.name += "!";
            right.send(s);
            ++n;
        }
    });
    for (int i = 0; i < 100; ++i) {
        left.send(Sample{"s" + std::to_string(i), std::vector<int>(static_cast<std::size_t>(i), i)});
    }
    for (int i = 0; i < 100; ++i) {
        CHECK(left.recv() == Sample{"s" + std::to_string(i) + "!", std::vector<int>(static_cast<std::size_t>(i), i)});
    }
    left.send(Sample{"big", std::vector<int>(4u << 20, 7)});  // 16 MiB
    const Sample big = left.recv();
    CHECK(big.name == "big!");
    CHECK(big.values.size() == (4u << 20));
    left.send(Sample{});
    CHECK(echo.get(10s) == 101);
    // Copies of a handle are the same end.
    const auto copy = left;
    CHECK(copy == left);
    CHECK_FALSE(copy == right);
}

TEST_CASE("pipe ends made after the pool, passed as arguments, with timed recv and poll", "[pipe]") {
    procpool::Pool pool(1);
    auto [parent_end, worker_end] = procpool::make_pipe<int>();
    CHECK_FALSE(parent_end.poll());
    CHECK_FALSE(parent_end.recv(20ms));
    const auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(parent_end.poll(30ms));
    CHECK(std::chrono::steady_clock::now() - start >= 30ms);
    auto later = pool.apply_async(
        [](procpool::Connection<int> end) {
            std::this_thread::sleep_for(100ms);
            end.send(42);
            return end.recv(5000ms).value_or(-1);
        },
        worker_end);
    CHECK(parent_end.poll(5000ms));  // woken by the send
    CHECK(parent_end.poll());        // still there: poll does not take it
    CHECK(parent_end.recv(0ms) == std::optional<int>(42));
    CHECK_FALSE(parent_end.poll());
    parent_end.send(7);
    CHECK(later.get(5s) == 7);
}

TEST_CASE("several threads send through one end and receive at the other: every message once", "[pipe][threads]") {
    auto [a, b] = procpool::make_pipe<long>();
    std::vector<std::thread> senders;
    senders.reserve(3);
    for (int t = 0; t < 3; ++t) {
        senders.emplace_back([a = a, t] {
            for (long i = 0; i < 2000; ++i) a.send(static_cast<long>(t) * 10'000 + i);
        });
    }
    std::vector<std::thread> receivers;
    receivers.reserve(2);
    std::vector<std::vector<long>> got(2);
    for (int r = 0; r < 2; ++r) {
        receivers.emplace_back([b = b, r, &got] {
            for (int i = 0; i < 3000; ++i) got[static_cast<std::size_t>(r)].push_back(b.recv());
        });
    }
    for (auto& s : senders) s.join();
    for (auto& r : receivers) r.join();
    std::vector<long> all = got[0];
    all.insert(all.end(), got[1].begin(), got[1].end());
    std::sort(all.begin(), all.end());
    CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
    CHECK(all.size() == 6000);
    CHECK_FALSE(b.poll());
}

TEST_CASE("a peer that died is reported: messages it sent first, then BrokenPipeError, never a hang", "[pipe]") {
    auto [mine, theirs] = procpool::make_pipe<int>();
    // A peer that sends two messages and exits.
    const pid_t sender = spawn([end = theirs] {
        end.send(1);
        end.send(2);
    });
    REQUIRE(::waitpid(sender, nullptr, 0) == sender);
    CHECK(mine.recv() == 1);
    CHECK(mine.recv(1000ms) == std::optional<int>(2));
    CHECK_THROWS_AS(mine.recv(), procpool::BrokenPipeError);
    CHECK_THROWS_AS(mine.recv(10ms), procpool::BrokenPipeError);
    CHECK(mine.poll());  // like Python's poll() at end of file: recv() would not block
    CHECK(mine.poll(1000ms));

    // A peer killed while the receiver waits: recv() throws within about the liveness period.
    auto [waiting, doomed] = procpool::make_pipe<int>();
    procpool::Event started;
    const pid_t victim = spawn([end = doomed, started]() mutable {
        end.send(0);  // the end is now this process's
        started.set();
        for (;;) ::pause();
    });
    REQUIRE(started.wait(10s));
    CHECK(waiting.recv() == 0);
    std::thread killer([victim] {
        std::this_thread::sleep_for(100ms);
        ::kill(victim, SIGKILL);
    });
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(waiting.recv(), procpool::BrokenPipeError);  // (the zombie counts as dead: not yet reaped)
    const auto waited = std::chrono::steady_clock::now() - start;
    killer.join();
    CHECK(waited >= 90ms);
    CHECK(waited < 2s);
    ::waitpid(victim, nullptr, 0);

    // An end nobody has used yet has no peer: recv waits (here, until its timeout) instead of throwing.
    auto [alone, unused] = procpool::make_pipe<int>();
    CHECK_FALSE(alone.recv(60ms));
    CHECK_FALSE(alone.poll());
}

TEST_CASE("a worker holding one end is stopped by task_timeout: BrokenPipeError, then a new task takes the end up",
          "[pipe]") {
    procpool::Pool pool(procpool::PoolOptions{.processes = 1, .task_timeout = 300ms});
    auto pipe = procpool::make_pipe<std::string>();  // named ends: captured below (see the first test)
    auto& parent_end = pipe.first;
    auto& worker_end = pipe.second;
    auto stuck = pool.apply_async([worker_end] {
        worker_end.send("hello");
        for (;;) ::pause();
    });
    CHECK(parent_end.recv() == "hello");
    parent_end.send("for whoever takes the end up");
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(parent_end.recv(), procpool::BrokenPipeError);
    CHECK(std::chrono::steady_clock::now() - start < 3s);
    CHECK_THROWS_AS(stuck.get(), procpool::TaskTimeout);
    // The replacement worker becomes the peer from its first use: the message sent meanwhile waited for it.
    auto resumed = pool.apply_async([worker_end] {
        std::string got = worker_end.recv();
        worker_end.send("back");
        return got;
    });
    CHECK(resumed.get(5s) == "for whoever takes the end up");
    CHECK(parent_end.recv() == "back");
}

TEST_CASE("processes killed at random inside send and recv leave the pipe consistent and usable", "[pipe]") {
    auto [a, b] = procpool::make_pipe<std::string>();
    procpool::SharedValue<long> received(0);
    std::mt19937 rng(7);
    for (int round = 0; round < 30; ++round) {
        std::vector<pid_t> children;
        children.reserve(3);
        for (int k = 0; k < 3; ++k) {
            children.push_back(spawn([a = a, b = b, k, received]() mutable {
                for (long i = 0;; ++i) {
                    if (k == 0) {
                        if (b.recv(1000ms)) std::atomic_ref<long>(received.value()).fetch_add(1);
                    } else {
                        a.send(std::string(static_cast<std::size_t>(i % 300), 'p'));
                    }
                }
            }));
        }
        std::this_thread::sleep_for(std::chrono::microseconds(500 + rng() % 3000));
        for (pid_t pid : children) ::kill(pid, SIGKILL);
        for (pid_t pid : children) ::waitpid(pid, nullptr, 0);
    }
    // What is left is whole and can be drained; then the pipe works both ways. (Every sender is dead now: once
    // drained, the end reports that.)
    std::size_t drained = 0;
    while (b.poll()) {
        try {
            const std::string s = b.recv();
            CHECK(s.find_first_not_of('p') == std::string::npos);
            ++drained;
        } catch (const procpool::BrokenPipeError&) {
            break;
        }
    }
    INFO(drained << " left, " << received.value() << " received by the children");
    CHECK(received.value() > 0);
    a.send("after");
    CHECK(b.recv(1000ms) == std::optional<std::string>("after"));
    b.send("and back");
    CHECK(a.recv(1000ms) == std::optional<std::string>("and back"));
}
