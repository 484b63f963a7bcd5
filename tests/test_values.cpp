// Values of every listed type cross into workers and back, of any size (larger than the rings included).
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <variant>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "support.hpp"

namespace {

template <class T>
T echo(T value) {
    return value;
}

struct Particle {  // trivially copyable
    double position[3];
    float mass;
    std::uint32_t id;
    bool operator==(const Particle&) const = default;
};

struct Record {  // user type through serialize()
    std::string name;
    std::map<std::string, std::vector<double>> series;
    std::optional<Particle> particle;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(name, series, particle);
    }
    bool operator==(const Record&) const = default;
};

enum class Level { low, high };

template <class T>
void check_echo(procpool::Pool& pool, const T& value) {
    CHECK(pool.apply(echo<T>, value) == value);
    CHECK(pool.map(echo<T>, std::vector<T>{value, value}) == std::vector<T>{value, value});
}

}  // namespace

TEST_CASE("every listed type goes to a worker and comes back unchanged", "[values]") {
    procpool::Pool pool(2);
    check_echo(pool, 7);
    check_echo(pool, -3.75);
    check_echo(pool, 'c');
    check_echo(pool, true);
    check_echo(pool, std::uint64_t{1} << 63);
    check_echo(pool, Level::high);
    check_echo(pool, std::string("text"));
    check_echo(pool, std::vector<int>{1, 2, 3});
    check_echo(pool, std::array<double, 4>{1, 2, 3, 4});
    check_echo(pool, std::pair<int, std::string>{4, "four"});
    check_echo(pool, std::tuple<int, double, std::string>{1, 2.5, "three"});
    check_echo(pool, std::optional<std::string>("present"));
    check_echo(pool, std::optional<int>());
    check_echo(pool, std::variant<int, std::string>(std::string("alt")));
    check_echo(pool, std::map<std::string, int>{{"a", 1}, {"b", 2}});
    check_echo(pool, std::unordered_map<int, std::string>{{1, "x"}});
    check_echo(pool, std::set<int>{3, 1, 2});
    check_echo(pool, std::unordered_set<std::string>{"u", "v"});
    check_echo(pool, std::chrono::microseconds(1234));
    check_echo(pool, Particle{{1, 2, 3}, 0.5f, 9});
    check_echo(pool, Record{"rec", {{"s", {1.0, 2.0}}}, Particle{{0, 0, 1}, 1.0f, 2}});
}

TEST_CASE("deeply nested containers", "[values]") {
    procpool::Pool pool(2);
    using Deep = std::vector<std::map<std::string, std::vector<std::tuple<int, std::optional<std::set<std::string>>,
                                                                          std::variant<double, std::vector<int>>>>>>;
    Deep deep(3);
    for (int i = 0; i < 3; ++i) {
        for (int k = 0; k < 5; ++k) {
            deep[i]["key" + std::to_string(k)].emplace_back(
                k, k % 2 == 0 ? std::optional<std::set<std::string>>({"x", std::to_string(i)}) : std::nullopt,
                k % 3 == 0 ? std::variant<double, std::vector<int>>(1.5 * k)
                           : std::variant<double, std::vector<int>>(std::vector<int>(k, i)));
        }
    }
    CHECK(pool.apply(echo<Deep>, deep) == deep);
}

TEST_CASE("64 MiB strings travel both ways, through rings much smaller than them", "[values]") {
    procpool::Pool pool(2);
    std::string big(64u << 20, '\0');
    for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>('a' + (i / 4096) % 26);
    const std::string back = pool.apply(echo<std::string>, big);
    CHECK(back.size() == big.size());
    CHECK(back == big);
    const std::size_t length = pool.apply([](const std::string& s) { return s.size(); }, big);
    CHECK(length == big.size());
    const std::string made = pool.apply([](std::size_t n) { return std::string(n, 'z'); }, std::size_t{64} << 20);
    CHECK(made.size() == (std::size_t{64} << 20));
    CHECK(made.find_first_not_of('z') == std::string::npos);
}

TEST_CASE("many large values in one map, with tiny rings", "[values]") {
    procpool::PoolOptions options;
    options.processes = 2;
    options.ring_bytes = 4096;
    procpool::Pool pool(options);
    std::vector<std::vector<std::uint32_t>> inputs;
    for (std::uint32_t i = 0; i < 12; ++i) {
        std::vector<std::uint32_t> v(100000 + i * 1000);
        std::iota(v.begin(), v.end(), i);
        inputs.push_back(std::move(v));
    }
    const auto sums = pool.map(
        [](const std::vector<std::uint32_t>& v) {
            std::vector<std::uint32_t> doubled(v);
            for (auto& x : doubled) x *= 2;
            return doubled;
        },
        inputs);
    REQUIRE(sums.size() == inputs.size());
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        REQUIRE(sums[i].size() == inputs[i].size());
        CHECK(sums[i].front() == 2 * inputs[i].front());
        CHECK(sums[i].back() == 2 * inputs[i].back());
    }
}

TEST_CASE("a mix of small and large results in one imap keeps order", "[values]") {
    procpool::Pool pool(3);
    std::size_t index = 0;
    for (const std::string& s :
         pool.imap([](int i) { return std::string(i % 5 == 0 ? 300000 : 10, char('a' + i % 26)); },
                   std::views::iota(0, 60), {.chunksize = 1})) {
        CHECK(s.size() == (index % 5 == 0 ? 300000u : 10u));
        CHECK(s.front() == char('a' + index % 26));
        ++index;
    }
    CHECK(index == 60);
}

namespace {
std::atomic<std::uintptr_t> first_read_at{0};  // where the parent decoded the first SlowToRead from
std::vector<std::uintptr_t> slow_reads;        // where it decoded each (the service thread or the waiting one)
std::mutex slow_reads_mutex;

/// A large result whose decoding in the parent pauses between its id and its payload, so the worker finishes its
/// next result while the parent still reads this one.
struct SlowToRead {
    int id = -1;
    std::string payload;
    template <class Archive>
    void serialize(Archive& ar) {
        if constexpr (std::is_same_v<Archive, procpool::InputArchive>) {
            if (first_read_at.load() == 0) first_read_at = reinterpret_cast<std::uintptr_t>(ar.position());
            const std::lock_guard lock(slow_reads_mutex);
            slow_reads.push_back(reinterpret_cast<std::uintptr_t>(ar.position()));
        }
        ar(id);
        if constexpr (std::is_same_v<Archive, procpool::InputArchive>) {
            std::this_thread::sleep_for(std::chrono::milliseconds(3));
        }
        ar(payload);
    }
};

/// Whether pools have result areas here (none where reserving address space costs something); warns if not.
bool result_areas_here() {
    if (procpool::detail::address_space_is_free()) return true;
    WARN("no result areas here (address space is not free): nothing to look at");
    return false;
}

bool filled_with(const std::string& s, std::size_t size, char c) {
    return s.size() == size && s.find_first_not_of(c) == std::string::npos;
}
}  // namespace

TEST_CASE("results larger than a ring fragment arrive intact through the result area or, while it is read, the ring",
          "[values]") {
    // A worker puts such a result in its result area unless the parent is still reading the previous one there;
    // then it streams it through the ring. A worker that wrote into the area while the parent read it would
    // corrupt the payload read after the pause.
    procpool::Pool pool(1);
    constexpr std::size_t kSize = 300'000;
    const auto results = pool.map(
        [](int i) {
            return SlowToRead{i, std::string(kSize, static_cast<char>('a' + i))};
        },
        std::views::iota(0, 12), {.chunksize = 12});
    REQUIRE(results.size() == 12);
    for (int i = 0; i < 12; ++i) {
        CHECK(results[i].id == i);
        CHECK(filled_with(results[i].payload, kSize, static_cast<char>('a' + i)));
    }
    // The first was read in place from the area: shared memory of 256 MiB per worker (not a private buffer that
    // the fragments were copied into). No areas where reserving address space costs something.
    if (result_areas_here()) {
        const test_support::Mapping mapping = test_support::mapping_holding(first_read_at.load());
        INFO("mapping " << std::hex << mapping.begin << "-" << mapping.end << " " << mapping.permissions);
        CHECK(mapping.end - mapping.begin == (std::uintptr_t{256} << 20) * pool.size());
        CHECK(mapping.permissions == "rw-s");
        // A process forked now (another pool's fork server, a child of the program) does not get the areas: it
        // would keep their memory after the pool is gone.
        const pid_t child = ::fork();
        if (child == 0) ::_exit(test_support::mapping_holding(first_read_at.load()).exists() ? 1 : 0);
        int status = -1;
        REQUIRE(::waitpid(child, &status, 0) == child);
        CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    }

    // A crash right after a large result was sent (items take longer than the 200 us after which a worker sends
    // what it has): that result counts, and the replacement worker uses the area afresh.
    auto crashing = pool.imap(
        [](int i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            if (i == 1) std::abort();
            return std::string(kSize, static_cast<char>('a' + i));
        },
        std::views::iota(0, 6), {.chunksize = 6});
    int index = 0;
    for (auto it = crashing.begin(); it != crashing.end(); ++it, ++index) {
        if (index == 1) {
            CHECK_THROWS_AS(*it, procpool::WorkerCrashed);
        } else {
            CHECK(filled_with(*it, kSize, static_cast<char>('a' + index)));
        }
    }
    CHECK(index == 6);

    // Past the size a half of an area keeps warm (64 MiB: its pages past that are given back once read), and past
    // what a half holds (128 MiB: streamed through the ring).
    for (const std::size_t size : {std::size_t{80} << 20, std::size_t{200} << 20, std::size_t{1} << 20}) {
        const std::string made = pool.apply([](std::size_t n) { return std::string(n, 'q'); }, size);
        CHECK(filled_with(made, size, 'q'));
    }
}

namespace {
std::atomic<std::uintptr_t> last_read_at{0};  // where the parent decoded the last WhereRead

/// A result larger than a ring fragment that records where the parent decoded it: in the worker's result area.
struct WhereRead {
    std::string payload;
    template <class Archive>
    void serialize(Archive& ar) {
        if constexpr (std::is_same_v<Archive, procpool::InputArchive>) {
            last_read_at = reinterpret_cast<std::uintptr_t>(ar.position());
        }
        ar(payload);
    }
};

/// The start of the worker's result area in a pool of one (where a large result is decoded).
std::uintptr_t result_area_of(procpool::Pool& pool) {
    const WhereRead r = pool.apply([] { return WhereRead{std::string(300'000, 'w')}; });
    REQUIRE(r.payload.size() == 300'000);
    return test_support::mapping_holding(last_read_at.load()).begin;
}

/// Resident bytes of the mapping that holds `address` (from /proc/self/smaps), or -1 if there is none.
long long resident_bytes(std::uintptr_t address) {
    const std::string rss = test_support::smaps_line(address, "Rss:");
    return rss.empty() ? -1 : std::stoll(rss.substr(4)) * 1024;
}
}  // namespace

TEST_CASE("after a large result, a worker encodes the next large results straight into its result area", "[values]") {
    if (!result_areas_here()) return;
    procpool::Pool pool(1);
    const std::uintptr_t area = result_area_of(pool);  // a large result: the worker's last message was large
    REQUIRE(area != 0);
    // The values of the next message are encoded where the parent then decodes them, kValuesOffset into a half of
    // the area (a message copied into a half starts at its start: its values right after the 40-byte header). The
    // worker asks as it encodes, so the sleep lets the parent finish reading the area first.
    using procpool::detail::ResultAreas;
    constexpr std::uintptr_t kValuesOffset = ResultAreas::kValuesOffset;
    int encoded_in_place = 0;
    for (int i = 0; i < 4; ++i) {
        const WhereRead r = pool.apply(
            [](int k) {
                std::this_thread::sleep_for(std::chrono::milliseconds(20));
                return WhereRead{std::string(300'000, static_cast<char>('k' + k))};
            },
            i);
        CHECK(filled_with(r.payload, 300'000, static_cast<char>('k' + i)));
        const std::uintptr_t at = last_read_at.load();
        encoded_in_place += at >= area && (at - area) % ResultAreas::kBytesPerHalf == kValuesOffset ? 1 : 0;
    }
    CHECK(encoded_in_place >= 1);

    // While the parent reads one half, the worker puts its next large result into the other.
    slow_reads.clear();
    const auto slow = pool.map(
        [](int i) {
            return SlowToRead{i, std::string(300'000, static_cast<char>('m' + i))};
        },
        std::views::iota(0, 6), {.chunksize = 6});
    std::set<std::uintptr_t> halves_read;
    for (const std::uintptr_t at : slow_reads) {
        if (at >= area && at < area + ResultAreas::kBytesPerSlot) {  // (not one that streamed through the ring)
            halves_read.insert((at - area) / ResultAreas::kBytesPerHalf);
        }
    }
    CHECK(halves_read == std::set<std::uintptr_t>{0, 1});
    for (int i = 0; i < 6; ++i) CHECK(filled_with(slow[i].payload, 300'000, static_cast<char>('m' + i)));

    // A message whose error records do not fit before values encoded in the area (an error of 70 000 bytes against
    // 64 KiB of room) streams through the ring instead; every value and every error arrives. (The items sleep so
    // that the results of about two go out in each message.)
    auto mixed = pool.imap(
        [](int i) {
            std::this_thread::sleep_for(std::chrono::microseconds(100));
            if (i % 2 == 1) throw std::runtime_error(std::string(70'000, 'e') + std::to_string(i));
            return std::string(3000, static_cast<char>('a' + i % 26));
        },
        std::views::iota(0, 100), {.chunksize = 100});
    int index = 0;
    for (auto it = mixed.begin(); it != mixed.end(); ++it, ++index) {
        if (index % 2 == 1) {
            CHECK_THROWS_WITH(*it, Catch::Contains(std::string(70'000, 'e') + std::to_string(index)));
        } else {
            CHECK(filled_with(*it, 3000, static_cast<char>('a' + index % 26)));
        }
    }
    CHECK(index == 100);
    // And the area is used again afterwards.
    CHECK(filled_with(pool.apply([] { return std::string(1 << 20, 'z'); }), 1 << 20, 'z'));
}

TEST_CASE("values that outgrow a half of the result area leave no more than its warm pages behind", "[values]") {
    if (!result_areas_here()) return;
    using procpool::detail::ResultAreas;
    procpool::Pool pool(1);
    const std::uintptr_t area = result_area_of(pool);  // a large result: the next values go into a half
    REQUIRE(area != 0);
    // 200 MiB of values: past a half (128 MiB), so they move to the worker's own memory and stream through the
    // ring; the half they started in is never read, so the worker gives back what it wrote there past 64 MiB.
    const auto big = pool.apply([] { return std::vector<std::string>(200, std::string(std::size_t{1} << 20, 'q')); });
    REQUIRE(big.size() == 200);
    CHECK(filled_with(big[199], std::size_t{1} << 20, 'q'));
    const long long resident = test_support::resident_bytes_in(reinterpret_cast<const void*>(area),
                                                               ResultAreas::kBytesPerSlot);
    REQUIRE(resident >= 0);
    CHECK(resident <= static_cast<long long>(ResultAreas::kWarmBytes + (std::size_t{1} << 20)));
}

TEST_CASE(
    "the next pool of the same shape reuses a finished pool's shared memory, emptied, and a forked process does not",
    "[values]") {
    if (!result_areas_here()) return;
    std::uintptr_t area = 0;
    {
        procpool::Pool pool(1);
        area = result_area_of(pool);
        REQUIRE(area != 0);
        // A result past what an area keeps warm (64 MiB stay faulted in while the pool lives).
        CHECK(pool.apply([] { return std::string(std::size_t{80} << 20, 'x'); }).size() == (std::size_t{80} << 20));
    }
    // Kept for the next pool, holding no memory.
    CHECK(resident_bytes(area) == 0);

    // A process forked now does not get it, and its own pool works (had it taken the kept memory, that pool would
    // have used memory it does not have, or shared it with this process).
    const pid_t child = ::fork();
    if (child == 0) {
        int code = test_support::mapping_holding(area).exists() ? 1 : 0;
        try {
            procpool::Pool pool(1);
            if (result_area_of(pool) == 0) code = 2;
            if (pool.apply([](int x) { return x + 1; }, 41) != 42) code = 3;
        } catch (...) {
            code = 4;
        }
        ::_exit(code);
    }
    int status = -1;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(*reinterpret_cast<const volatile char*>(area) == 0);  // the child's result went elsewhere

    // The same memory, not a new mapping that happens to lie at the same address: a mark left in it is still there.
    auto* const mark = reinterpret_cast<volatile char*>(area + (std::uintptr_t{200} << 20));
    *mark = 'm';
    procpool::Pool pool(1);
    CHECK(result_area_of(pool) == area);
    CHECK(*mark == 'm');
    const auto squares = pool.map([](int x) { return x * x; }, std::views::iota(0, 10'000), {.chunksize = 1});
    CHECK(squares[9'999] == 9'999 * 9'999);
}

TEST_CASE("the shared memory of a pool whose fork server was killed is not reused", "[values]") {
    if (!result_areas_here()) return;
    std::uintptr_t area = 0;
    {
        procpool::Pool pool(1);
        area = result_area_of(pool);
        const std::vector<pid_t> servers = test_support::child_pids();
        REQUIRE(servers.size() == 1);
        REQUIRE(::kill(servers[0], SIGKILL) == 0);
        // Its workers die with it, but a moment later: their memory must not go to the next pool.
        CHECK(test_support::eventually([&] {
            try {
                pool.apply([] { return 0; });
                return false;
            } catch (const procpool::PoolStateError&) {
                return true;
            }
        }));
    }
    CHECK_FALSE(test_support::mapping_holding(area).exists());
}
