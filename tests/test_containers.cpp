// SharedDict and SharedList (containers.hpp): every member, made before and after the pool, used from several
// processes and threads, and processes killed (SIGKILL, task_timeout) in the middle of thousands of operations,
// after which every invariant is checked: completed operations visible, the interrupted one applied entirely or not
// at all, no torn value, sizes that match the contents, and a container that goes on working.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

/// A value whose parts must agree: a torn or mixed-up value fails whole().
struct Stamp {
    long op = 0;
    std::string payload;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(op, payload);
    }
    static Stamp of(long op) {
        return {op, std::string(static_cast<std::size_t>(op % 97), static_cast<char>('a' + op % 26))};
    }
    [[nodiscard]] bool whole() const { return *this == of(op); }
    bool operator==(const Stamp&) const = default;
};

/// A key whose encoding leaves a member out: keys are equal when their encodings are.
struct Name {
    std::string text;
    int not_encoded = 0;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(text);
    }
};

}  // namespace

// ---- SharedDict ---------------------------------------------------------------------------------------------------

TEST_CASE("SharedDict: every member in one process", "[containers]") {
    const procpool::SharedDict<std::string, std::vector<int>> d;
    CHECK(d.empty());
    CHECK(d.size() == 0);
    CHECK_FALSE(d.get("a"));
    CHECK(d.get("a", {7}) == std::vector<int>{7});
    CHECK_FALSE(d.contains("a"));
    CHECK_FALSE(d.erase("a"));
    CHECK(d.items().empty());

    d.set("a", {1});
    d.set("b", {2, 2});
    d.set("c", {3, 3, 3});
    CHECK(d.size() == 3);
    CHECK_FALSE(d.empty());
    CHECK(d.get("b") == std::optional<std::vector<int>>(std::vector<int>{2, 2}));
    CHECK(d.get("b", {}) == std::vector<int>{2, 2});
    CHECK(d.contains("c"));
    d.set("a", {10});  // replaced: keeps its place
    CHECK(d.get("a") == std::optional<std::vector<int>>(std::vector<int>{10}));
    CHECK(d.size() == 3);
    CHECK(d.erase("b"));
    CHECK_FALSE(d.contains("b"));
    CHECK(d.size() == 2);
    d.set("b", {20});  // erased and set again: goes last
    using Items = std::vector<std::pair<std::string, std::vector<int>>>;
    CHECK(d.items() == Items{{"a", {10}}, {"c", {3, 3, 3}}, {"b", {20}}});

    // update: fn runs on a copy of the value (or of `initial`), the result is stored and returned.
    CHECK(d.update("a", [](std::vector<int>& v) { v.push_back(11); }) == std::vector<int>{10, 11});
    CHECK(d.update("new", [](std::vector<int>& v) { v.push_back(1); }, {5}) == std::vector<int>{5, 1});
    CHECK(d.update("newer", [](std::vector<int>& v) { v.push_back(1); }) == std::vector<int>{1});
    CHECK(d.get("a") == std::optional<std::vector<int>>(std::vector<int>{10, 11}));
    CHECK(d.size() == 5);
    // If fn throws, nothing changes; a fn that uses the same dict is refused (its lock is held).
    CHECK_THROWS_AS(d.update("a",
                             [](std::vector<int>& v) {
                                 v.clear();
                                 throw std::runtime_error("no");
                             }),
                    std::runtime_error);
    CHECK(d.get("a") == std::optional<std::vector<int>>(std::vector<int>{10, 11}));
    CHECK_THROWS_AS(d.update("a", [&d](std::vector<int>&) { d.set("x", {}); }), procpool::PoolStateError);
    CHECK_FALSE(d.contains("x"));
    CHECK(d.update("a", [](std::vector<int>& v) { v.push_back(12); }) == std::vector<int>{10, 11, 12});

    d.clear();
    CHECK(d.empty());
    CHECK(d.items().empty());
    d.clear();  // twice
    d.set("after clear", {1});
    CHECK(d.items() == Items{{"after clear", {1}}});

    // Handles: copies share one dict.
    const auto alias = d;
    alias.set("via alias", {});
    CHECK(d.contains("via alias"));
    CHECK(alias == d);
    CHECK_FALSE(alias == procpool::SharedDict<std::string, std::vector<int>>());
}

TEST_CASE("SharedDict: keys are equal when their encodings are the same bytes, of any serializable types",
          "[containers]") {
    const procpool::SharedDict<Name, int> names;
    names.set(Name{"ada", 1}, 1);
    names.set(Name{"ada", 2}, 2);  // not_encoded differs: the same key
    CHECK(names.size() == 1);
    CHECK(names.get(Name{"ada", 3}) == 2);
    const procpool::SharedDict<double, std::string> doubles;
    doubles.set(0.0, "zero");
    doubles.set(-0.0, "minus zero");  // 0.0 == -0.0, but their bytes differ: two keys
    CHECK(doubles.size() == 2);
    const procpool::SharedDict<std::pair<int, std::string>, std::map<std::string, double>> nested;
    nested.set({1, "x"}, {{"pi", 3.14}});
    CHECK(nested.get({1, "x"}, {}).at("pi") == 3.14);
    CHECK_FALSE(nested.contains({1, "y"}));
    // Values of any size; empty keys and values.
    const procpool::SharedDict<std::string, std::string> big;
    big.set("", "");
    big.set("large", std::string(3u << 20, 'L'));
    CHECK(big.get("") == std::optional<std::string>(""));
    CHECK(big.get("large", "").size() == (3u << 20));
    big.set("large", "small now");
    CHECK(big.get("large") == std::optional<std::string>("small now"));
}

TEST_CASE("SharedDict with 100 000 keys: resizes, finds every key, and is not O(n) per operation", "[containers]") {
    const procpool::SharedDict<long, long> d;
    const auto start = std::chrono::steady_clock::now();
    for (long i = 0; i < 100'000; ++i) d.set(i, i * 3);
    CHECK(d.size() == 100'000);
    long sum = 0;
    for (long i = 0; i < 100'000; ++i) sum += d.get(i, -1);
    CHECK(sum == 3L * 99'999 * 100'000 / 2);
    for (long i = 0; i < 100'000; i += 2) REQUIRE(d.erase(i));
    CHECK(d.size() == 50'000);
    for (long i = 0; i < 100'000; ++i) REQUIRE(d.contains(i) == (i % 2 == 1));
    for (long i = 0; i < 100'000; i += 2) d.set(i, -i);  // tombstones reused, the table rebuilt as it fills
    CHECK(d.size() == 100'000);
    CHECK(d.get(4) == -4);
    CHECK(d.get(5) == 15);
    const auto items = d.items();
    CHECK(items.size() == 100'000);
    CHECK(items.front().first == 1);  // insertion order: the odd keys stayed, the even ones came back last
    CHECK(items.back().first == 99'998);
    // Some 600 000 operations: at O(n) each they would take hours; here well under a second or two.
    CHECK(std::chrono::steady_clock::now() - start < 20s);
    d.clear();
    CHECK(d.empty());
}

TEST_CASE("SharedDict made before or after the pool, as an argument or a capture, across processes", "[containers]") {
    const procpool::SharedDict<std::string, long> before;
    procpool::Pool pool(3);
    const procpool::SharedDict<int, std::string> after;
    pool.starmap([](procpool::SharedDict<std::string, long> d, int i) { d.set("k" + std::to_string(i), i); },
                 std::views::iota(0, 200) | std::views::transform([&](int i) {
                     return std::pair{before, i};
                 }));
    CHECK(before.size() == 200);
    for (int i = 0; i < 200; ++i) REQUIRE(before.get("k" + std::to_string(i)) == i);
    pool.map([after](int i) { after.set(i, std::to_string(i * i)); }, std::views::iota(0, 300));
    CHECK(after.size() == 300);
    CHECK(after.get(17) == std::optional<std::string>("289"));
    // What the parent writes after the pool started, workers read; erase and clear seen everywhere.
    after.set(-1, "parent");
    CHECK(pool.apply([after] { return after.get(-1, "missing"); }) == "parent");
    CHECK(pool.apply([after] { return after.erase(17); }));
    CHECK_FALSE(after.contains(17));
    pool.apply([before] { before.clear(); });
    CHECK(before.empty());
}

TEST_CASE("SharedDict::update from 4 processes: d[k] += 1 without lost updates", "[containers]") {
    procpool::Pool pool(4);
    const procpool::SharedDict<std::string, long> counts;
    constexpr int kRounds = 5000;
    pool.map(
        [counts](int worker) {
            for (int i = 0; i < kRounds; ++i) {
                counts.update("total", [](long& v) { ++v; });
                counts.update("w" + std::to_string(worker), [](long& v) { v += 2; });
            }
        },
        std::views::iota(0, 4), {.chunksize = 1});
    CHECK(counts.get("total") == 4 * kRounds);
    for (int w = 0; w < 4; ++w) CHECK(counts.get("w" + std::to_string(w)) == 2 * kRounds);
    CHECK(counts.size() == 5);
}

TEST_CASE("a process killed inside update's fn, or stopped there by task_timeout: nothing changed, the next goes on",
          "[containers]") {
    const procpool::SharedDict<std::string, long> d;
    d.set("x", 1);
    const pid_t child = ::fork();
    if (child == 0) {
        (void)d.update("x", [](long& v) {
            v = 99;
            ::kill(::getpid(), SIGKILL);  // dies holding the dict's lock, the new value computed but not stored
        });
        ::_exit(0);
    }
    REQUIRE(::waitpid(child, nullptr, 0) == child);
    CHECK(d.get("x") == 1);
    CHECK(d.update("x", [](long& v) { ++v; }) == 2);

    procpool::Pool pool(procpool::PoolOptions{.processes = 1, .task_timeout = 200ms});
    auto stuck = pool.apply_async([d] {
        (void)d.update("x", [](long& v) {
            v = -1;
            for (;;) ::pause();  // holds the lock until the timeout kills the worker
        });
    });
    std::this_thread::sleep_for(50ms);
    CHECK(d.update("x", [](long& v) { ++v; }) == 3);  // waits for the lock, takes it over from the dead worker
    CHECK_THROWS_AS(stuck.get(), procpool::TaskTimeout);
    CHECK(d.get("x") == 3);
    CHECK(d.size() == 1);
}

// ---- SharedList ---------------------------------------------------------------------------------------------------

TEST_CASE("SharedList: every member in one process", "[containers]") {
    const procpool::SharedList<std::string> l;
    CHECK(l.size() == 0);
    CHECK(l.empty());
    CHECK(l.items().empty());
    CHECK_THROWS_AS(l.get(0), std::out_of_range);
    CHECK_THROWS_AS(l.set(0, "x"), std::out_of_range);
    for (int i = 0; i < 100; ++i) l.append(std::to_string(i));  // grows past its first table
    CHECK(l.size() == 100);
    CHECK(l.get(0) == "0");
    CHECK(l.get(99) == "99");
    CHECK_THROWS_AS(l.get(100), std::out_of_range);
    l.set(50, "fifty");
    l.set(0, std::string(2u << 20, 'z'));  // any size
    CHECK(l.get(50) == "fifty");
    CHECK(l.get(0).size() == (2u << 20));
    const std::vector<std::string> items = l.items();
    REQUIRE(items.size() == 100);
    CHECK(items[50] == "fifty");
    CHECK(items[51] == "51");
    l.clear();
    CHECK(l.size() == 0);
    CHECK_THROWS_AS(l.get(0), std::out_of_range);
    l.clear();
    l.append("again");
    CHECK(l.items() == std::vector<std::string>{"again"});
    const auto alias = l;
    alias.append("via alias");
    CHECK(l.size() == 2);
    CHECK(alias == l);
}

TEST_CASE("SharedList made before or after the pool: appends from several processes, each once", "[containers]") {
    const procpool::SharedList<Stamp> before;
    procpool::Pool pool(3);
    const procpool::SharedList<int> after;
    pool.map([before](int i) { before.append(Stamp::of(i)); }, std::views::iota(0, 500));
    pool.starmap([](procpool::SharedList<int> l, int i) { l.append(i); },
                 std::views::iota(0, 300) | std::views::transform([&](int i) {
                     return std::pair{after, i};
                 }));
    std::vector<Stamp> stamps = before.items();
    REQUIRE(stamps.size() == 500);
    std::set<long> seen;
    for (const Stamp& s : stamps) {
        CHECK(s.whole());
        seen.insert(s.op);
    }
    CHECK(seen.size() == 500);
    std::vector<int> ints = after.items();
    std::sort(ints.begin(), ints.end());
    CHECK(ints == [] {
        std::vector<int> v(300);
        std::iota(v.begin(), v.end(), 0);
        return v;
    }());
    // Reads and writes by index from a worker; std::out_of_range travels as itself.
    pool.apply([after] { after.set(0, -5); });
    CHECK(after.get(0) == -5);
    CHECK(pool.apply([after] { return after.get(299) + static_cast<int>(after.size()); }) == after.get(299) + 300);
    CHECK_THROWS_AS(pool.apply([after] { return after.get(300); }), std::out_of_range);
    pool.apply([after] { after.clear(); });
    CHECK(after.empty());
}

// ---- threads ------------------------------------------------------------------------------------------------------

TEST_CASE("threads of one process share a SharedDict and a SharedList", "[containers][threads]") {
    const procpool::SharedDict<int, long> d;
    const procpool::SharedList<int> l;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([d, l, t] {
            for (int i = 0; i < 2000; ++i) {
                d.update(-1, [](long& v) { ++v; });
                d.set(t * 10'000 + i, i);
                if (i % 2 == 0) d.erase(t * 10'000 + i);
                l.append(t * 10'000 + i);
            }
        });
    }
    for (auto& thread : threads) thread.join();
    CHECK(d.get(-1) == 8000);
    CHECK(d.size() == 1 + 4 * 1000);
    CHECK(l.size() == 8000);
    std::vector<int> items = l.items();
    std::sort(items.begin(), items.end());
    CHECK(std::adjacent_find(items.begin(), items.end()) == items.end());
}

// ---- the journal, step by step ------------------------------------------------------------------------------------

TEST_CASE("a change cut short before, at or after its commit is undone or finished by the next locker",
          "[containers]") {
    using namespace procpool::detail;
    SharedHeap& heap = SharedHeap::instance();
    const std::uint64_t state_offset = heap.allocate(sizeof(DictState), kDictObject);
    auto* s = new (heap.address(state_offset)) DictState();
    s->mutex.init(false);
    auto live = [&](std::uint64_t offset, std::uint64_t generation) {
        return heap.generation_of(offset) == generation;
    };
    // A value for key 1, committed normally.
    DictTable::Probe probe;
    const std::uint64_t first = DictTable::make_entry(1, {}, {});
    DictTable::put(*s, DictTable::find(*s, 1, {}), first, {});
    REQUIRE(DictTable::find(*s, 1, {}).found != DictTable::kNone);

    // Died after recording a replacement, before its commit: rolled back (the new entry freed, the old one kept).
    probe = DictTable::find(*s, 1, {});
    DictSlot& slot = DictTable::slots(s->table)[probe.found];
    const std::uint64_t second = DictTable::make_entry(1, {}, {});
    const std::uint64_t second_generation = heap.generation_of(second);
    const std::uint64_t first_generation = heap.generation_of(first);
    record(s->journal, Journal::kSwap, slot.entry, second, second, first);
    DictTable::repair(*s);
    CHECK(s->journal.op == Journal::kNone);
    CHECK_FALSE(live(second, second_generation));
    CHECK(live(first, first_generation));
    CHECK(slot.entry == first);
    CHECK(s->live == 1);

    // Died right after the commit: finished (the old entry freed, the new one in place).
    const std::uint64_t third = DictTable::make_entry(1, {}, {});
    const std::uint64_t third_generation = heap.generation_of(third);
    record(s->journal, Journal::kSwap, slot.entry, third, third, first);
    store_word(slot.entry, third);
    DictTable::repair(*s);
    CHECK(s->journal.op == Journal::kNone);
    CHECK_FALSE(live(first, first_generation));
    CHECK(live(third, third_generation));
    CHECK(slot.entry == third);

    // Died after freeing the old entry, before clearing the record, and the block was allocated again since:
    // recovery must not free it (its generation changed).
    const std::uint64_t fourth = DictTable::make_entry(1, {}, {});
    record(s->journal, Journal::kSwap, slot.entry, fourth, fourth, third);
    store_word(slot.entry, fourth);
    heap.free(third);
    const std::uint64_t reused = heap.allocate(sizeof(DictEntry), kDictEntry);  // the same size class: same block
    CHECK(reused == third);
    const std::uint64_t reused_generation = heap.generation_of(reused);
    DictTable::repair(*s);
    CHECK(live(reused, reused_generation));
    heap.free(reused);

    // A clear() that died halfway through freeing the dropped table's entries: the rest are freed, then the table.
    for (int key = 2; key < 40; ++key) {
        std::byte bytes[sizeof key];
        std::memcpy(bytes, &key, sizeof key);
        const Bytes k(bytes, sizeof key);
        const std::uint64_t hash = hash_bytes(bytes, sizeof key);
        DictTable::put(*s, DictTable::find(*s, hash, k), DictTable::make_entry(hash, k, {}), k);
    }
    REQUIRE(s->live == 39);
    const std::uint64_t table = s->table;
    const std::uint64_t table_generation = heap.generation_of(table);
    std::vector<std::pair<std::uint64_t, std::uint64_t>> entries;
    DictTable::for_each(*s, [&](std::uint64_t e) { entries.emplace_back(e, heap.generation_of(e)); });
    record(s->journal, Journal::kDrop, s->table, 0, 0, table, 2, DictTable::capacity(table));
    store_word(s->table, 0);
    // ... it unhooked and freed the first ten entries before it died:
    DictSlot* slots = DictTable::slots(table);
    int freed = 0;
    for (std::uint64_t i = 0; i < DictTable::capacity(table) && freed < 10; ++i) {
        const std::uint64_t e = slots[i].entry;
        if (e == kEmptySlot || e == kErasedSlot) continue;
        store_word(slots[i].entry, kEmptySlot);
        heap.free(e);
        ++freed;
    }
    DictTable::repair(*s);
    CHECK(s->journal.op == Journal::kNone);
    CHECK(s->live == 0);
    CHECK_FALSE(live(table, table_generation));
    for (const auto& [e, generation] : entries) CHECK_FALSE(live(e, generation));
    heap.free(state_offset);
}

// ---- chaos --------------------------------------------------------------------------------------------------------

namespace {

constexpr std::size_t kSlots = 16;  // list items the writer 0 of each round overwrites by index

long tag(int round, int writer, long i) { return (round * 8L + writer) * 1'000'000'000L + i; }

std::string dict_key(int round, int writer, const std::string& rest) {
    return "r" + std::to_string(round) + "w" + std::to_string(writer) + "-" + rest;
}

/// Step `i` of writer `writer` in round `round`: one dict operation (update, set or erase, in turn), one list
/// append, and for writer 0 one list set by index.
void chaos_step(const procpool::SharedDict<std::string, Stamp>& d, const procpool::SharedList<Stamp>& l, int round,
                int writer, long i) {
    switch (i % 3) {
        case 0:
            d.update(dict_key(round, writer, "c" + std::to_string(i / 3 % 8)),
                     [](Stamp& s) { s = Stamp::of(s.op + 1); });
            break;
        case 1: d.set(dict_key(round, writer, "s" + std::to_string(i / 3 % 32)), Stamp::of(i)); break;
        default: d.erase(dict_key(round, writer, "s" + std::to_string((i / 3 + 16) % 32))); break;
    }
    l.append(Stamp::of(tag(round, writer, i)));
    if (writer == 0) l.set(static_cast<std::size_t>(i) % kSlots, Stamp::of(tag(round, 0, i)));
}

/// The writer's dict keys after its first `steps` steps.
std::map<std::string, Stamp> replay(int round, int writer, long steps) {
    std::map<std::string, Stamp> m;
    for (long i = 0; i < steps; ++i) {
        switch (i % 3) {
            case 0: {
                auto [it, fresh] = m.try_emplace(dict_key(round, writer, "c" + std::to_string(i / 3 % 8)));
                it->second = Stamp::of(it->second.op + 1);
                break;
            }
            case 1: m[dict_key(round, writer, "s" + std::to_string(i / 3 % 32))] = Stamp::of(i); break;
            default: m.erase(dict_key(round, writer, "s" + std::to_string((i / 3 + 16) % 32))); break;
        }
    }
    return m;
}

/// Checks what the writers of `round` left, `done[w]` being the steps writer w completed (it may have been in the
/// middle of the next one). `slots` is what the list's first kSlots items held before the round (updated).
void check_round(const procpool::SharedDict<std::string, Stamp>& d, const procpool::SharedList<Stamp>& l, int round,
                 const std::vector<long>& done, std::vector<Stamp>& slots, int& interrupted_applied) {
    const auto items = d.items();
    const std::vector<Stamp> list = l.items();
    REQUIRE(list.size() >= kSlots);
    for (const auto& [key, value] : items) REQUIRE(value.whole());
    for (const Stamp& s : list) REQUIRE(s.whole());
    for (int w = 0; w < static_cast<int>(done.size()); ++w) {
        const std::string prefix = dict_key(round, w, "");
        std::map<std::string, Stamp> actual;
        for (const auto& [key, value] : items) {
            if (key.rfind(prefix, 0) == 0) actual.emplace(key, value);
        }
        const auto without = replay(round, w, done[static_cast<std::size_t>(w)]);
        const auto with = replay(round, w, done[static_cast<std::size_t>(w)] + 1);
        INFO("round " << round << " writer " << w << " completed " << done[static_cast<std::size_t>(w)]);
        CHECK((actual == without || actual == with));
        if (actual == with && actual != without) ++interrupted_applied;
        // Its appends: steps 0, 1, 2... in order, as many as it completed (or one more).
        std::vector<long> appended;
        for (std::size_t at = kSlots; at < list.size(); ++at) {
            const long op = list[at].op;
            if (op / 1'000'000'000L == round * 8L + w) appended.push_back(op % 1'000'000'000L);
        }
        const auto n = static_cast<long>(appended.size());
        CHECK((n == done[static_cast<std::size_t>(w)] || n == done[static_cast<std::size_t>(w)] + 1));
        for (long i = 0; i < n; ++i) REQUIRE(appended[static_cast<std::size_t>(i)] == i);
    }
    // Writer 0's sets by index: each slot holds its last completed set, or the interrupted one.
    const long steps = done[0];
    for (std::size_t s = 0; s < kSlots; ++s) {
        std::vector<Stamp> allowed;
        long last = -1;
        for (long i = static_cast<long>(s); i < steps; i += static_cast<long>(kSlots)) last = i;
        allowed.push_back(last >= 0 ? Stamp::of(tag(round, 0, last)) : slots[s]);
        if (steps % static_cast<long>(kSlots) == static_cast<long>(s))
            allowed.push_back(Stamp::of(tag(round, 0, steps)));
        INFO("slot " << s << " after " << steps << " steps");
        CHECK(std::find(allowed.begin(), allowed.end(), list[s]) != allowed.end());
        slots[s] = list[s];
    }
    CHECK(d.size() == items.size());
    CHECK(l.size() == list.size());
}

}  // namespace

TEST_CASE("processes killed at random inside thousands of dict and list operations leave both consistent",
          "[containers]") {
    const procpool::SharedDict<std::string, Stamp> d;
    const procpool::SharedList<Stamp> l;
    for (std::size_t s = 0; s < kSlots; ++s) l.append(Stamp::of(0));
    std::vector<Stamp> slots(kSlots, Stamp::of(0));
    constexpr int kWriters = 3;
    const procpool::SharedArray<long> done(kWriters);  // steps each writer completed, written after each step
    std::mt19937 rng(21);
    int interrupted_applied = 0;
    long steps = 0;
    int round = 0;
    // SIGKILLed forked children: anywhere, inside a critical section too, or while recovering a dead one's.
    for (; round < 40; ++round) {
        std::fill(done.begin(), done.end(), 0);
        std::vector<pid_t> children;
        for (int w = 0; w < kWriters; ++w) {
            const pid_t pid = ::fork();
            if (pid == 0) {
                for (long i = 0;; ++i) {
                    chaos_step(d, l, round, w, i);
                    std::atomic_ref<long>(done[static_cast<std::size_t>(w)]).store(i + 1);
                }
            }
            children.push_back(pid);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(1000 + rng() % 4000));
        for (pid_t pid : children) ::kill(pid, SIGKILL);
        for (pid_t pid : children) ::waitpid(pid, nullptr, 0);
        const std::vector<long> completed(done.begin(), done.end());
        steps += std::accumulate(completed.begin(), completed.end(), 0L);
        check_round(d, l, round, completed, slots, interrupted_applied);
    }
    // Workers stopped by task_timeout (SIGTERM, then SIGKILL) in the middle of the same operations.
    {
        procpool::Pool pool(procpool::PoolOptions{.processes = 2, .task_timeout = 60ms});
        for (int i = 0; i < 3; ++i, ++round) {
            std::fill(done.begin(), done.end(), 0);
            std::vector<procpool::AsyncResult<void>> writers;
            for (int w = 0; w < 2; ++w) {
                writers.push_back(pool.apply_async(
                    [d, l, done](int this_round, int writer) {
                        for (long step = 0;; ++step) {
                            chaos_step(d, l, this_round, writer, step);
                            std::atomic_ref<long>(done[static_cast<std::size_t>(writer)]).store(step + 1);
                        }
                    },
                    round, w));
            }
            for (auto& writer : writers) CHECK_THROWS_AS(writer.get(), procpool::TaskTimeout);
            REQUIRE(test_support::eventually([&] { return pool.worker_pids().size() == 2; }));
            const std::vector<long> completed(done.begin(), done.begin() + 2);
            steps += std::accumulate(completed.begin(), completed.end(), 0L);
            check_round(d, l, round, completed, slots, interrupted_applied);
        }
        // Every round's keys are still exactly what they were (later rounds did not disturb them).
        INFO(steps << " steps in " << round << " rounds; the interrupted step was applied in " << interrupted_applied);
        CHECK(steps > 10'000);
        // The containers go on: thousands more operations from two processes, exact results.
        pool.map(
            [d, l](int w) {
                for (int i = 0; i < 1500; ++i) {
                    d.update("after", [](Stamp& s) { s = Stamp::of(s.op + 1); });
                    d.set("after-" + std::to_string(w) + "-" + std::to_string(i % 100), Stamp::of(i));
                    l.append(Stamp::of(tag(99, w, i)));
                }
            },
            std::views::iota(0, 2), {.chunksize = 1});
    }
    CHECK(d.get("after") == Stamp::of(3000));
    for (int w = 0; w < 2; ++w) CHECK(d.get("after-" + std::to_string(w) + "-99") == Stamp::of(1499));
    const auto items = d.items();
    CHECK(d.size() == items.size());
    std::set<std::string> keys;
    for (const auto& [key, value] : items) {
        CHECK(value.whole());
        CHECK(d.get(key) == value);
        keys.insert(key);
    }
    CHECK(keys.size() == items.size());
    long appended_after = 0;
    for (const Stamp& s : l.items()) appended_after += s.op / 1'000'000'000L >= 99 * 8 ? 1 : 0;
    CHECK(appended_after == 3000);
    d.clear();
    l.clear();
    CHECK(d.empty());
    CHECK(l.empty());
}

// ---- nothing left behind ------------------------------------------------------------------------------------------

TEST_CASE("nothing is left in /dev/shm by dicts, lists, pipes and managed segments, or by dead processes",
          "[containers]") {
    const std::set<std::string> before = test_support::dev_shm_entries();
    {
        const procpool::SharedDict<int, std::string> dict;
        const procpool::SharedList<int> list;
        auto [left, right] = procpool::make_pipe<int>();
        procpool::Pool pool(2);
        const procpool::ManagedSegment segment(1 << 20);
        pool.map(
            [dict, list, right, segment](int i) {
                dict.set(i, std::to_string(i));
                list.append(i);
                right.send(i);
                *segment.find_or_construct<int>("n")(0) += 0;
            },
            std::views::iota(0, 50));
        long sum = 0;
        for (int i = 0; i < 50; ++i) sum += left.recv();
        CHECK(sum == 49 * 50 / 2);
        ::kill(pool.worker_pids().front(), SIGKILL);
        CHECK(pool.apply([dict] { return dict.size(); }) == 50);
        CHECK(list.size() == 50);
    }
    CHECK(test_support::dev_shm_entries() == before);
}
