// The scheduler's FIFO (detail/fifo.hpp): the same answers as std::deque under random use, inline and grown, and a
// popped element's resources released at once.
#include <catch2/catch.hpp>
#include <procpool/detail/fifo.hpp>

#include <array>
#include <deque>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

using procpool::detail::Fifo;

#include "failing_allocations.hpp"

using procpool_test::allocations;
using procpool_test::FailingAllocations;

namespace {

template <class Queue>
std::vector<std::string> contents(const Queue& q) {
    return std::vector<std::string>(q.begin(), q.end());
}

}  // namespace

TEST_CASE("Fifo behaves like std::deque under random pushes, pops and erases", "[fifo]") {
    std::mt19937 rng(12345);
    for (int round = 0; round < 20; ++round) {
        Fifo<std::string, 2> fifo;
        std::deque<std::string> model;
        // Phases that mostly grow, then mostly shrink, so the queue crosses its inline capacity and compacts.
        for (int step = 0; step < 4000; ++step) {
            const bool growing = (step / 500) % 2 == 0;
            const int op = static_cast<int>(rng() % 10);
            const std::string value = "item " + std::to_string(round) + "/" + std::to_string(step) +
                                      std::string(rng() % 40, 'x');  // some beyond small-string storage
            if (op < (growing ? 6 : 3)) {
                fifo.push_back(value);
                model.push_back(value);
            } else if (op < (growing ? 7 : 4)) {
                fifo.push_front(value);
                model.push_front(value);
            } else if (!model.empty() && op < 8) {
                REQUIRE(fifo.front() == model.front());
                fifo.pop_front();
                model.pop_front();
            } else if (!model.empty() && op < 9) {
                const std::size_t i = rng() % model.size();
                fifo.erase(i);
                model.erase(model.begin() + static_cast<std::ptrdiff_t>(i));
            } else if (!model.empty()) {
                REQUIRE(fifo.back() == model.back());
                fifo.pop_back();
                model.pop_back();
            }
            REQUIRE(fifo.size() == model.size());
            REQUIRE(fifo.empty() == model.empty());
            if (!model.empty()) {
                REQUIRE(fifo.front() == model.front());
                REQUIRE(fifo.back() == model.back());
                const std::size_t i = rng() % model.size();
                REQUIRE(fifo[i] == model[i]);
            }
            if (step % 97 == 0) REQUIRE(contents(fifo) == std::vector<std::string>(model.begin(), model.end()));
        }
        fifo.clear();
        REQUIRE(fifo.empty());
        REQUIRE(fifo.size() == 0);
        REQUIRE(fifo.begin() == fifo.end());
    }
}

TEST_CASE("Fifo keeps order through a steady stream longer than its capacity", "[fifo]") {
    // The scheduler's pattern: a queue that never quite empties, so popped slots must be reused in order.
    Fifo<int, 4> fifo;
    int next_in = 0;
    int next_out = 0;
    for (int i = 0; i < 3; ++i) fifo.push_back(next_in++);
    for (int step = 0; step < 100000; ++step) {
        fifo.push_back(next_in++);
        if (step % 7 != 0) fifo.push_back(next_in++);
        REQUIRE(fifo.front() == next_out);
        fifo.pop_front();
        ++next_out;
        if (fifo.size() > 10) {
            while (fifo.size() > 3) {
                REQUIRE(fifo.front() == next_out++);
                fifo.pop_front();
            }
        }
    }
    while (!fifo.empty()) {
        REQUIRE(fifo.front() == next_out++);
        fifo.pop_front();
    }
    REQUIRE(next_out == next_in);
}

TEST_CASE("Fifo releases a popped element at once, not when its slot is reused", "[fifo]") {
    // A job's segment holds the job's encoded items; a finished task must not keep them alive.
    Fifo<std::shared_ptr<int>, 1> fifo;
    auto first = std::make_shared<int>(1);
    auto second = std::make_shared<int>(2);
    fifo.push_back(first);
    fifo.push_back(second);
    REQUIRE(first.use_count() == 2);
    fifo.pop_front();
    REQUIRE(first.use_count() == 1);
    REQUIRE(*fifo.front() == 2);
    fifo.pop_back();
    REQUIRE(second.use_count() == 1);
    REQUIRE(fifo.empty());
}

TEST_CASE("Fifo::reserve_one makes the next push_back allocate nothing, or throws and changes nothing", "[fifo]") {
    Fifo<std::string, 2> fifo;
    fifo.push_back("a");
    fifo.push_back("b");  // the inline slots are full

    bool threw = false;
    try {
        const FailingAllocations failing;
        fifo.reserve_one();
    } catch (const std::bad_alloc&) {
        threw = true;
    }
    CHECK(threw);
    CHECK(contents(fifo) == std::vector<std::string>{"a", "b"});

    fifo.reserve_one();
    std::string c = "c";  // short: its own construction allocates nothing either
    const long before = allocations;
    fifo.push_back(std::move(c));
    CHECK(allocations == before);
    CHECK(contents(fifo) == std::vector<std::string>{"a", "b", "c"});

    // Room made by moving the elements to the front (half the slots popped) costs no allocation at all.
    fifo.push_back("d");  // full again: 4 slots
    fifo.pop_front();
    fifo.pop_front();
    const long before_compact = allocations;
    bool compacted = true;
    try {
        const FailingAllocations failing;
        fifo.reserve_one();
        fifo.push_back("e");
    } catch (const std::bad_alloc&) {
        compacted = false;
    }
    CHECK(compacted);
    CHECK(allocations == before_compact);
    CHECK(contents(fifo) == std::vector<std::string>{"c", "d", "e"});
}

TEST_CASE("Fifo::reserve_total keeps push_back from allocating while the queue holds at most that many", "[fifo]") {
    constexpr std::size_t kMost = 8;  // a power of two: room for exactly kMost would not do
    Fifo<std::string, 1> fifo;
    fifo.push_back("kept");
    bool threw = false;
    try {
        const FailingAllocations failing;
        fifo.reserve_total(kMost);
    } catch (const std::bad_alloc&) {
        threw = true;
    }
    CHECK(threw);
    CHECK(contents(fifo) == std::vector<std::string>{"kept"});

    fifo.reserve_total(kMost);
    std::mt19937 rng(7);
    // The model, a ring of kMost that allocates nothing either, and no Catch2 assertion until allocating works again.
    std::array<std::string, kMost> model{"kept"};
    std::size_t model_front = 0;
    std::size_t model_size = 1;
    bool sizes_agree = true;
    {
        const FailingAllocations failing;
        // Random pushes and pops that never hold more than kMost: every push_back must find room without allocating.
        // (The strings are short: their own construction allocates nothing.)
        for (int step = 0; step < 10000; ++step) {
            if (model_size < kMost && (model_size == 0 || rng() % 2 == 0)) {
                const std::string value = std::to_string(step % 1000);
                fifo.push_back(value);  // would throw std::bad_alloc if it grew
                model[(model_front + model_size++) % kMost] = value;
            } else {
                fifo.pop_front();
                model_front = (model_front + 1) % kMost;
                --model_size;
            }
            sizes_agree = sizes_agree && fifo.size() == model_size;
        }
    }
    CHECK(sizes_agree);
    std::vector<std::string> expected;
    for (std::size_t i = 0; i < model_size; ++i) expected.push_back(model[(model_front + i) % kMost]);
    CHECK(contents(fifo) == expected);
}
