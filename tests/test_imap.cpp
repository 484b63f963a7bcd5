// imap and imap_unordered: order, laziness, bounded reading, infinite inputs, early exit, per-item errors.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <exception>
#include <numeric>
#include <optional>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

int square(int x) { return x * x; }

/// An input range that counts how many elements were read and can throw at a chosen element.
class CountingInput : public std::ranges::view_interface<CountingInput> {
public:
    struct State {
        std::atomic<long> read{0};
        long throw_at = -1;
    };
    class iterator {
    public:
        using value_type = long;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        iterator(State* state, long value) : state_(state), value_(value) {}
        long operator*() const {
            if (value_ == state_->throw_at) throw std::out_of_range("input broke at " + std::to_string(value_));
            state_->read.fetch_add(1);
            return value_;
        }
        iterator& operator++() {
            ++value_;
            return *this;
        }
        void operator++(int) { ++value_; }
        friend bool operator==(const iterator&, std::unreachable_sentinel_t) { return false; }

    private:
        State* state_ = nullptr;
        long value_ = 0;
    };
    explicit CountingInput(State* state) : state_(state) {}
    iterator begin() const { return iterator(state_, 0); }
    std::unreachable_sentinel_t end() const { return {}; }

private:
    State* state_;
};
static_assert(std::ranges::input_range<CountingInput>);

}  // namespace

TEST_CASE("imap yields results in input order", "[imap][threads]") {
    procpool::Pool pool(3);
    std::vector<int> got;
    for (int value : pool.imap(
             [](int x) {
                 std::this_thread::sleep_for(std::chrono::microseconds((x * 7919) % 2000));  // finish out of order
                 return x * 3;
             },
             std::views::iota(0, 300), {.chunksize = 1})) {
        got.push_back(value);
    }
    std::vector<int> expected(300);
    for (int i = 0; i < 300; ++i) expected[i] = i * 3;
    CHECK(got == expected);
}

TEST_CASE("imap_unordered yields every result exactly once, in completion order", "[imap][threads]") {
    procpool::Pool pool(2);
    std::vector<int> got;
    for (int value : pool.imap_unordered(
             [](int x) {
                 std::this_thread::sleep_for(x == 0 ? 300ms : 1ms);
                 return x;
             },
             std::views::iota(0, 40), {.chunksize = 1})) {
        got.push_back(value);
    }
    REQUIRE(got.size() == 40);
    CHECK(got.front() != 0);  // the slow first item came late
    std::sort(got.begin(), got.end());
    for (int i = 0; i < 40; ++i) CHECK(got[i] == i);
}

TEST_CASE("imap with every chunk size", "[imap]") {
    procpool::Pool pool(2);
    for (std::size_t chunksize : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{1000}}) {
        INFO("chunksize " << chunksize);
        long sum = 0;
        long n = 0;
        for (int value : pool.imap(square, std::views::iota(0, 500), {.chunksize = chunksize})) {
            sum += value;
            ++n;
        }
        CHECK(n == 500);
        CHECK(sum == 41541750);  // sum of i^2, i < 500
        long unordered_sum = 0;
        for (int value : pool.imap_unordered(square, std::views::iota(0, 500), {.chunksize = chunksize})) {
            unordered_sum += value;
        }
        CHECK(unordered_sum == 41541750);
    }
}

TEST_CASE("imap reads an infinite input only as results are consumed, and a break stops it", "[imap][threads]") {
    procpool::Pool pool(2);
    CountingInput::State state;
    long taken = 0;
    for (long value : pool.imap([](long x) { return x + 1; }, CountingInput(&state))) {
        CHECK(value == taken + 1);
        if (++taken == 1000) break;
    }
    const long read_at_break = state.read.load();
    CHECK(read_at_break >= 1000);
    // Bounded read-ahead (MapOptions::buffersize's default), not the whole infinite input.
    using Range = decltype(pool.imap([](long x) { return x; }, CountingInput(&state)));
    const auto bound = static_cast<long>(Range::default_buffersize(pool.size()));
    CHECK(read_at_break <= 1000 + bound);
    std::this_thread::sleep_for(50ms);
    CHECK(state.read.load() == read_at_break);  // nothing reads after the range is gone
    CHECK(pool.apply(square, 4) == 16);         // the pool is fine
}

TEST_CASE("imap read-ahead stays bounded while the reader is slow", "[imap]") {
    procpool::Pool pool(2);
    CountingInput::State state;
    auto results = pool.imap([](long x) { return x; }, CountingInput(&state), {.chunksize = 1});
    auto it = results.begin();
    std::this_thread::sleep_for(200ms);  // the workers are fast, the reader does not read
    const long read = state.read.load();
    using Range = decltype(results);
    // Chunks of one item: the window's floor in items (more than its chunks), and the one being read.
    const auto window = std::max(Range::window_chunks(pool.size()), Range::window_floor_items(pool.size()));
    CHECK(read <= static_cast<long>(window) + 1);
    ++it;
    CHECK(*it == 1);
}

TEST_CASE("imap's read-ahead floor in items is for small items: large ones keep the window of chunks", "[imap]") {
    procpool::Pool pool(2);
    std::atomic<long> read{0};
    auto input = std::views::iota(0, 1000) | std::views::transform([&read](int) {
                     ++read;
                     return std::string(std::size_t{256} << 10, 'x');  // 256 KiB each
                 });
    auto results = pool.imap([](const std::string& s) { return s.size(); }, input, {.chunksize = 1});
    auto it = results.begin();
    std::this_thread::sleep_for(200ms);  // the workers are fast, the reader does not read
    using Range = decltype(results);
    // 136 items of 256 KiB would be 34 MiB read ahead; the floor allows 1 MiB of them, the window 16 chunks.
    CHECK(read.load() <= static_cast<long>(Range::window_chunks(pool.size())) + 1);
    CHECK(*it == std::size_t{256} << 10);
    long n = 0;
    for (; it != results.end(); ++it) ++n;
    CHECK(n == 1000);
}

TEST_CASE("breaking out of a slow imap returns at once without waiting for running tasks", "[imap][threads]") {
    const auto start = std::chrono::steady_clock::now();
    {
        procpool::Pool pool(2);
        for (int value : pool.imap(
                 [](int x) {
                     std::this_thread::sleep_for(x == 0 ? 0ms : 2s);
                     return x;
                 },
                 std::views::iota(0, 100), {.chunksize = 1})) {
            CHECK(value == 0);
            break;
        }
        const auto broken_out = std::chrono::steady_clock::now() - start;
        INFO("broke out after " << std::chrono::duration_cast<std::chrono::milliseconds>(broken_out).count() << " ms");
        CHECK(broken_out < 1s);
    }
    // The pool's destructor waits for the tasks the workers had started (2 s each), not for the items read ahead
    // and queued behind them: those are taken back when the range goes (all 99 would take 99 s on 2 workers).
    const auto destroyed = std::chrono::steady_clock::now() - start;
    INFO("pool gone after " << std::chrono::duration_cast<std::chrono::milliseconds>(destroyed).count() << " ms");
    CHECK(destroyed < 20s);
}

TEST_CASE("an exception from the input range reaches the reader as it is, after every result read before it",
          "[imap]") {
    procpool::Pool pool(2);
    CountingInput::State state;
    state.throw_at = 50;
    std::vector<long> got;
    bool thrown = false;
    try {
        for (long value : pool.imap([](long x) { return x; }, CountingInput(&state), {.chunksize = 4})) {
            got.push_back(value);
        }
    } catch (const std::out_of_range& e) {
        thrown = true;
        CHECK(std::string(e.what()) == "input broke at 50");
    }
    CHECK(thrown);
    REQUIRE(got.size() == 50);  // nothing computed is thrown away
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == static_cast<long>(i));
}

// Ports of CPython's test_imap_handle_iterable_exception and test_imap_unordered_handle_iterable_exception
// (Lib/test/_test_multiprocessing.py), with the rule this library states: every result of an element read before
// the failing one is yielded first (CPython drops the failing element's chunk), then the input's exception.
namespace {

/// Python's exception_throwing_generator(total, when): yields 0..total-1, raises SayWhenError at `when`.
struct SayWhenError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
auto exception_throwing_generator(int total, int when) {
    return std::views::iota(0, total) | std::views::transform([when](int i) {
               if (i == when) throw SayWhenError("Somebody said when");
               return i;
           });
}
int sqr(int x) { return x * x; }

}  // namespace

TEST_CASE("imap: an input that throws, with chunksizes 1, 2 and 4 (CPython's handle_iterable_exception)", "[imap]") {
    procpool::Pool pool(2);
    for (const std::size_t chunksize : {std::size_t{1}, std::size_t{2}, std::size_t{4}}) {
        CAPTURE(chunksize);
        // Raised at the very first element: begin() throws, twice over (re-entrant).
        for (int round = 0; round < 2; ++round) {
            auto it = pool.imap(sqr, exception_throwing_generator(1, 0), {.chunksize = chunksize});
            CHECK_THROWS_AS(it.begin(), SayWhenError);
        }
        for (const auto& [total, when] : {std::pair{10, 3}, std::pair{20, 7}}) {
            CAPTURE(total, when);
            auto results = pool.imap(sqr, exception_throwing_generator(total, when), {.chunksize = chunksize});
            auto it = results.begin();
            for (int i = 0; i < when; ++i) {
                REQUIRE(it != results.end());
                CHECK(*it == i * i);
                if (i + 1 < when) ++it;
            }
            CHECK_THROWS_AS(++it, SayWhenError);  // in the failing element's place
            CHECK(it == results.end());           // and the range is over
        }
    }
}

TEST_CASE("imap_unordered: an input that throws, with chunksizes 1, 2 and 4 (CPython's handle_iterable_exception)",
          "[imap]") {
    procpool::Pool pool(2);
    for (const std::size_t chunksize : {std::size_t{1}, std::size_t{2}, std::size_t{4}}) {
        CAPTURE(chunksize);
        CHECK_THROWS_AS(pool.imap_unordered(sqr, exception_throwing_generator(1, 0), {.chunksize = chunksize}).begin(),
                        SayWhenError);
        for (const auto& [total, when] : {std::pair{10, 3}, std::pair{20, 7}}) {
            CAPTURE(total, when);
            std::multiset<int> expected;
            for (int i = 0; i < when; ++i) expected.insert(i * i);
            std::multiset<int> got;
            bool thrown = false;
            try {
                for (int v :
                     pool.imap_unordered(sqr, exception_throwing_generator(total, when), {.chunksize = chunksize})) {
                    got.insert(v);
                }
            } catch (const SayWhenError&) {
                thrown = true;
            }
            CHECK(thrown);
            CHECK(got == expected);  // every element read before the failure, in completion order
        }
    }
}

TEST_CASE("MapOptions::buffersize bounds what imap reads ahead, and the default is a few thousand items", "[imap]") {
    procpool::Pool pool(2);
    using Range = decltype(pool.imap([](long x) { return x; }, std::views::iota(0L)));
    CHECK(Range::default_buffersize(2) == 4096);
    {  // An infinite input left after 10 results: at most the default read.
        CountingInput::State state;
        long taken = 0;
        for (long v : pool.imap([](long x) { return x; }, CountingInput(&state))) {
            CHECK(v == taken);
            if (++taken == 10) break;
        }
        CHECK(state.read.load() <= 10 + 4096);
    }
    for (const auto& [chunksize, buffersize] :
         {std::pair{std::size_t{0}, std::size_t{100}}, std::pair{std::size_t{1}, std::size_t{5}},
          std::pair{std::size_t{4}, std::size_t{10}}, std::pair{std::size_t{7}, std::size_t{7}}}) {
        CAPTURE(chunksize, buffersize);
        CountingInput::State state;
        long consumed = 0;
        long worst = 0;
        for (long v : pool.imap([](long x) { return x; }, CountingInput(&state),
                                {.chunksize = chunksize, .buffersize = buffersize})) {
            ++consumed;  // this one is the caller's now
            CHECK(v == consumed - 1);
            if (consumed % 50 == 0) std::this_thread::sleep_for(2ms);  // a slow reader now and then: workers run ahead
            worst = std::max(worst, state.read.load() - consumed);
            if (consumed == 2000) break;
        }
        CHECK(worst <= static_cast<long>(buffersize));
        CHECK(worst >= 1);  // it did read ahead
    }
    // Unordered too.
    CountingInput::State state;
    long consumed = 0;
    long worst = 0;
    for (long v : pool.imap_unordered([](long x) { return x; }, CountingInput(&state), {.buffersize = 32})) {
        (void)v;
        ++consumed;
        worst = std::max(worst, state.read.load() - consumed);
        if (consumed == 1000) break;
    }
    CHECK(worst <= 32);
}

TEST_CASE("a buffersize below the chunksize, or given to map, is refused", "[imap]") {
    procpool::Pool pool(1);
    CHECK_THROWS_AS(pool.imap(sqr, std::views::iota(0, 10), {.chunksize = 8, .buffersize = 4}), std::invalid_argument);
    CHECK_THROWS_AS(pool.imap_unordered(sqr, std::views::iota(0, 10), {.chunksize = 2, .buffersize = 1}),
                    std::invalid_argument);
    CHECK_THROWS_AS(pool.map(sqr, std::views::iota(0, 10), {.buffersize = 4}), std::invalid_argument);
    CHECK_THROWS_AS(pool.starmap_async([](int a, int b) { return a + b; }, std::vector<std::pair<int, int>>{{1, 2}},
                                       {.buffersize = 4}),
                    std::invalid_argument);
    CHECK(pool.map(sqr, std::views::iota(0, 3)) == std::vector<int>{0, 1, 4});
}

TEST_CASE("a failing item throws when dereferenced and iteration goes on past it", "[imap][threads]") {
    procpool::Pool pool(2);
    std::vector<int> values;
    int failures = 0;
    auto results = pool.imap(
        [](int x) {
            if (x % 10 == 3) throw std::invalid_argument("bad " + std::to_string(x));
            return x;
        },
        std::views::iota(0, 50), {.chunksize = 4});
    for (auto it = results.begin(); it != results.end(); ++it) {
        try {
            values.push_back(*it);
        } catch (const std::invalid_argument& e) {
            ++failures;
            CHECK(std::string(e.what()).rfind("bad ", 0) == 0);
        }
    }
    CHECK(failures == 5);
    CHECK(values.size() == 45);
    CHECK(std::is_sorted(values.begin(), values.end()));
}

TEST_CASE("imap of a void function yields one entry per item", "[imap]") {
    procpool::Pool pool(2);
    int n = 0;
    for ([[maybe_unused]] std::monostate done : pool.imap([](int) {}, std::views::iota(0, 10))) ++n;
    CHECK(n == 10);
}

TEST_CASE("imap ranges work as ranges and with strings", "[imap]") {
    procpool::Pool pool(2);
    std::vector<std::string> words{"a", "bb", "ccc"};
    auto lengths = pool.imap([](const std::string& s) { return s + "!"; }, words);
    std::vector<std::string> got;
    std::ranges::copy(lengths, std::back_inserter(got));
    CHECK(got == std::vector<std::string>{"a!", "bb!", "ccc!"});
}

TEST_CASE("an imap range made before close() still runs but one made after throws", "[imap][threads]") {
    procpool::Pool pool(2);
    auto results = pool.imap(square, std::views::iota(0, 100));
    pool.close();
    long sum = 0;
    for (int value : results) sum += value;
    CHECK(sum == 328350);
    CHECK_THROWS_AS(pool.imap(square, std::views::iota(0, 3)), procpool::PoolStateError);
    pool.join();
}

namespace {
long twice(long x) { return 2 * x; }
long plus_one(long x) { return x + 1; }
}  // namespace

TEST_CASE("an imap range is movable: chained as a temporary, piped into a view, move-assigned", "[imap]") {
    procpool::Pool pool(2);
    long chained = 0;
    for (long v : pool.imap(plus_one, pool.imap(twice, std::views::iota(0L, 100L)))) chained += v;
    CHECK(chained == 10000);

    std::vector<long> taken;
    for (long v : pool.imap(twice, std::views::iota(0L)) | std::views::take(5)) taken.push_back(v);
    CHECK(taken == std::vector<long>{0, 2, 4, 6, 8});

    auto first = pool.imap(twice, std::views::iota(0L, 1000000L));
    auto second = pool.imap(plus_one, std::views::iota(0L, 10L));
    CHECK(*first.begin() == 0);  // started: the assignment below must abandon it without blocking
    first = std::move(second);
    long sum = 0;
    for (long v : first) sum += v;
    CHECK(sum == 55);
    CHECK_THROWS_AS(second.begin(), procpool::PoolStateError);  // NOLINT(bugprone-use-after-move): checked on purpose
    CHECK(pool.map(twice, std::vector<long>{1, 2}) == std::vector<long>{2, 4});  // the pool still works
}

namespace {
/// Trivially copyable but not trivially default-constructible: crosses as raw bytes, decoded without its constructor.
struct Sample {
    int id = -1;
    double weight = 0.5;
};
}  // namespace

TEST_CASE("in one large chunk of raw-byte items, each failing item fails alone and every other value is its own",
          "[imap]") {
    // Items and results that are raw bytes run through the worker's block loop: results are written in place and
    // a failed item leaves no gap, so a value landing at the wrong index would show here.
    procpool::Pool pool(1);
    constexpr int kCount = 20000;
    auto results = pool.imap(
        [](int x) {
            if (x % 997 == 5) throw std::invalid_argument(std::to_string(x));
            return Sample{3 * x, x * 0.25};
        },
        std::views::iota(0, kCount), {.chunksize = kCount});
    int index = 0;
    int failures = 0;
    for (auto it = results.begin(); it != results.end(); ++it, ++index) {
        try {
            const Sample s = *it;
            REQUIRE(index % 997 != 5);
            REQUIRE(s.id == 3 * index);
            REQUIRE(s.weight == index * 0.25);
        } catch (const std::invalid_argument& e) {
            REQUIRE(index % 997 == 5);
            REQUIRE(std::string(e.what()) == std::to_string(index));
            ++failures;
        }
    }
    CHECK(index == kCount);
    CHECK(failures == 21);

    // Items of a type without a trivial default constructor; then std::array items unpacked by starmap.
    std::vector<Sample> samples(5000);
    for (int i = 0; i < 5000; ++i) samples[i].id = i;
    const auto ids = pool.map([](const Sample& s) { return s.id + static_cast<int>(s.weight * 2); }, samples);
    REQUIRE(ids.size() == 5000);
    for (int i = 0; i < 5000; ++i) REQUIRE(ids[i] == i + 1);
    std::vector<std::array<int, 2>> pairs(5000);
    for (int i = 0; i < 5000; ++i) pairs[i] = {i, 2};
    const auto products = pool.starmap([](int a, int b) { return a * b; }, pairs);
    for (int i = 0; i < 5000; ++i) REQUIRE(products[i] == 2 * i);
}

using test_support::message_of;

TEST_CASE("imap's ordered results: a failure for items partly resolved already stores only the rest", "[imap]") {
    // The scheduler fails a message's items when delivering them threw midway, after some were stored: those keep
    // what they got, the others get the error, and the reader is not left waiting for any of them.
    using Job = procpool::detail::ImapJob<int>;
    Job job([](procpool::detail::TaskRunner&) {}, procpool::detail::Buffer(), 1, true);
    job.expect(0, 4);
    job.fail(0, 2, std::make_exception_ptr(std::runtime_error("first")));
    std::optional<Job::Entry> item0 = job.try_take();
    REQUIRE(item0.has_value());
    CHECK(message_of(item0->error) == "first");

    // Item 0 is taken, item 1 resolved and not taken yet, items 2 and 3 unresolved.
    job.fail(0, 4, std::make_exception_ptr(std::runtime_error("second")));
    CHECK(job.unconsumed() == 3);
    std::vector<std::string> messages;
    while (std::optional<Job::Entry> entry = job.try_take()) messages.push_back(message_of(entry->error));
    CHECK(messages == std::vector<std::string>{"first", "second", "second"});
    CHECK(job.unconsumed() == 0);
}
