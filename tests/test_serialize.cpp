// Serialization: every built-in type round-trips, user types work through serialize(), corrupt data is rejected.
#include <catch2/catch.hpp>
#include <procpool/serialize.hpp>

#include <algorithm>
#include <array>
#include <bitset>
#include <chrono>
#include <complex>
#include <cstdint>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <variant>
#include <vector>

namespace {

template <class T>
T round_trip(const T& value) {
    const procpool::detail::Buffer bytes = procpool::to_bytes(value);
    return procpool::from_bytes<T>(bytes.view());
}

enum class Color : std::uint8_t { red = 1, green = 2 };

struct Point {  // trivially copyable: copied byte for byte
    double x;
    double y;
    int tag;
    bool operator==(const Point&) const = default;
};

struct Person {  // user type with a cereal-style member
    std::string name;
    int age = 0;
    std::vector<std::string> tags;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(name, age, tags);
    }
    bool operator==(const Person&) const = default;
};

struct Tree {  // recursive through serialize()
    int value = 0;
    std::vector<Tree> children;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(value, children);
    }
    bool operator==(const Tree&) const = default;
};

}  // namespace

namespace thirdparty {
struct Legacy {  // a type we cannot change: serialized by a free function found by ADL
    long id = 0;
    std::string label;
    bool operator==(const Legacy&) const = default;
};
template <class Archive>
void serialize(Archive& ar, Legacy& value) {
    ar(value.id, value.label);
}
}  // namespace thirdparty

TEST_CASE("arithmetic types and enums round-trip exactly", "[serialize]") {
    CHECK(round_trip(42) == 42);
    CHECK(round_trip(std::numeric_limits<std::int64_t>::min()) == std::numeric_limits<std::int64_t>::min());
    CHECK(round_trip(std::numeric_limits<std::uint64_t>::max()) == std::numeric_limits<std::uint64_t>::max());
    CHECK(round_trip(3.25) == 3.25);
    CHECK(round_trip(-0.5f) == -0.5f);
    CHECK(round_trip(true) == true);
    CHECK(round_trip('z') == 'z');
    CHECK(round_trip(Color::green) == Color::green);
    const double nan = round_trip(std::numeric_limits<double>::quiet_NaN());
    CHECK(nan != nan);
}

TEST_CASE("strings of every size, including embedded zeros and wide characters", "[serialize]") {
    CHECK(round_trip(std::string()).empty());
    CHECK(round_trip(std::string("hello")) == "hello");
    const std::string with_zero("a\0b", 3);
    CHECK(round_trip(with_zero) == with_zero);
    CHECK(round_trip(std::wstring(L"wide")) == L"wide");
    CHECK(round_trip(std::u32string(U"\U0001F600")) == U"\U0001F600");
    const std::string large(3 << 20, 'q');
    CHECK(round_trip(large) == large);
}

TEST_CASE("standard containers and their nesting", "[serialize]") {
    CHECK(round_trip(std::vector<int>{1, 2, 3}) == std::vector<int>{1, 2, 3});
    CHECK(round_trip(std::vector<bool>{true, false, true}) == std::vector<bool>{true, false, true});
    CHECK(round_trip(std::deque<std::string>{"a", "bb"}) == std::deque<std::string>{"a", "bb"});
    CHECK(round_trip(std::list<double>{1.5, 2.5}) == std::list<double>{1.5, 2.5});
    CHECK(round_trip(std::array<int, 3>{7, 8, 9}) == std::array<int, 3>{7, 8, 9});
    CHECK(round_trip(std::array<std::string, 2>{"x", "y"}) == std::array<std::string, 2>{"x", "y"});
    CHECK(round_trip(std::pair<int, std::string>{1, "one"}) == std::pair<int, std::string>{1, "one"});
    CHECK(round_trip(std::tuple<int, std::string, double>{1, "t", 2.5}) ==
          std::tuple<int, std::string, double>{1, "t", 2.5});
    CHECK(round_trip(std::tuple<>{}) == std::tuple<>{});
    CHECK(round_trip(std::optional<std::string>{"set"}) == std::optional<std::string>{"set"});
    CHECK(round_trip(std::optional<int>{}) == std::nullopt);
    using V = std::variant<int, std::string, std::vector<double>>;
    CHECK(round_trip(V{std::string("s")}) == V{std::string("s")});
    CHECK(round_trip(V{std::vector<double>{1.0}}) == V{std::vector<double>{1.0}});
    const std::map<std::string, std::vector<int>> m{{"a", {1}}, {"b", {2, 3}}};
    CHECK(round_trip(m) == m);
    const std::multimap<int, int> mm{{1, 1}, {1, 2}};
    CHECK(round_trip(mm) == mm);
    const std::unordered_map<int, std::string> um{{1, "x"}, {2, "y"}};
    CHECK(round_trip(um) == um);
    CHECK(round_trip(std::set<std::string>{"b", "a"}) == std::set<std::string>{"a", "b"});
    CHECK(round_trip(std::multiset<int>{1, 1, 2}) == std::multiset<int>{1, 1, 2});
    CHECK(round_trip(std::unordered_set<long>{4, 5}) == std::unordered_set<long>{4, 5});
    CHECK(round_trip(std::chrono::milliseconds(1500)) == std::chrono::milliseconds(1500));
    CHECK(round_trip(std::chrono::duration<double>(0.25)) == std::chrono::duration<double>(0.25));
    const std::vector<std::map<int, std::optional<std::tuple<std::string, std::vector<Point>>>>> nested{
        {{1, std::nullopt}, {2, std::tuple<std::string, std::vector<Point>>{"p", {{1, 2, 3}}}}}};
    CHECK(round_trip(nested) == nested);
}

TEST_CASE("std::filesystem::path, chrono time points, complex numbers and bitsets travel as themselves",
          "[serialize]") {
    namespace fs = std::filesystem;
    const fs::path path = "/data/run 7/résultat.csv";
    CHECK(round_trip(path) == path);
    CHECK(round_trip(path).native() == path.native());
    CHECK(round_trip(fs::path()).empty());
    const std::vector<fs::path> paths{"a.txt", "dir/b.txt", "/abs/c"};
    CHECK(round_trip(paths) == paths);
    const std::map<fs::path, std::optional<fs::path>> renames{{"old", "new"}, {"gone", std::nullopt}};
    CHECK(round_trip(renames) == renames);
    const auto steady = std::chrono::steady_clock::now();
    CHECK(round_trip(steady) == steady);
    const auto wall = std::chrono::system_clock::now();
    CHECK(round_trip(wall) == wall);
    const std::chrono::sys_days day = std::chrono::year(2026) / 12 / 6;
    CHECK(round_trip(day) == day);
    CHECK(round_trip(std::complex<double>(1.5, -2.25)) == std::complex<double>(1.5, -2.25));
    CHECK(round_trip(std::vector<std::complex<float>>{{1, 2}, {3, 4}}) ==
          std::vector<std::complex<float>>{{1, 2}, {3, 4}});
    const std::bitset<100> bits = std::bitset<100>().set(0).set(63).set(99);
    CHECK(round_trip(bits) == bits);
    const std::unordered_map<std::string, std::unordered_set<int>> index{{"odd", {1, 3}}, {"even", {2}}};
    CHECK(round_trip(index) == index);
    STATIC_REQUIRE(procpool::Serializable<fs::path>);
    STATIC_REQUIRE(procpool::Serializable<std::chrono::system_clock::time_point>);
}

TEST_CASE("trivially copyable structs and user types", "[serialize]") {
    CHECK(round_trip(Point{1.5, -2.0, 7}) == Point{1.5, -2.0, 7});
    CHECK(round_trip(std::vector<Point>{{1, 2, 3}, {4, 5, 6}}) == std::vector<Point>{{1, 2, 3}, {4, 5, 6}});
    const Person person{"Ada", 36, {"math", "engines"}};
    CHECK(round_trip(person) == person);
    const Tree tree{1, {{2, {}}, {3, {{4, {}}}}}};
    CHECK(round_trip(tree) == tree);
    const thirdparty::Legacy legacy{9, "nine"};
    CHECK(round_trip(legacy) == legacy);
    STATIC_REQUIRE(procpool::Serializable<Person>);
    STATIC_REQUIRE(procpool::Serializable<std::map<int, std::vector<Point>>>);
}

TEST_CASE("the Serializable concept rejects what cannot travel", "[serialize]") {
    STATIC_REQUIRE_FALSE(procpool::Serializable<int*>);
    STATIC_REQUIRE_FALSE(procpool::Serializable<std::string_view>);
    STATIC_REQUIRE_FALSE(procpool::Serializable<std::vector<int*>>);
    STATIC_REQUIRE_FALSE(procpool::Serializable<std::span<int>>);
    STATIC_REQUIRE_FALSE(procpool::Serializable<std::map<int, std::string_view>>);
    STATIC_REQUIRE_FALSE(procpool::Serializable<std::array<const char*, 2>>);
    STATIC_REQUIRE_FALSE(procpool::Serializable<std::optional<std::reference_wrapper<int>>>);
    STATIC_REQUIRE_FALSE(procpool::Serializable<std::unique_ptr<int>>);
    STATIC_REQUIRE_FALSE(procpool::Serializable<std::vector<std::shared_ptr<int>>>);
    STATIC_REQUIRE_FALSE(procpool::Serializable<std::function<int(int)>>);
    STATIC_REQUIRE_FALSE(procpool::Serializable<std::ifstream>);
}

TEST_CASE("truncated and corrupt data throw SerializationError instead of reading past the end", "[serialize]") {
    const procpool::detail::Buffer bytes = procpool::to_bytes(std::vector<std::string>{"abc", "defg"});
    for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
        CHECK_THROWS_AS(procpool::from_bytes<std::vector<std::string>>(bytes.view().first(cut)),
                        procpool::SerializationError);
    }
    // A size field claiming more elements than there are bytes is rejected before any allocation.
    procpool::detail::Buffer bogus;
    const std::uint64_t huge = std::uint64_t{1} << 60;
    bogus.append(&huge, sizeof huge);
    CHECK_THROWS_AS(procpool::from_bytes<std::vector<int>>(bogus.view()), procpool::SerializationError);
    CHECK_THROWS_AS(procpool::from_bytes<std::string>(bogus.view()), procpool::SerializationError);
    // Trailing bytes are an error too.
    procpool::detail::Buffer extra = procpool::to_bytes(7);
    extra.append("x", 1);
    CHECK_THROWS_AS(procpool::from_bytes<int>(extra.view()), procpool::SerializationError);
    // A variant index out of range.
    procpool::detail::Buffer variant;
    const std::uint32_t index = 9;
    variant.append(&index, sizeof index);
    CHECK_THROWS_AS((procpool::from_bytes<std::variant<int, double>>(variant.view())), procpool::SerializationError);
}

TEST_CASE("Buffer grows across the mapped threshold without losing bytes", "[serialize]") {
    procpool::detail::Buffer buffer;
    std::uint64_t written = 0;
    while (buffer.size() < (5u << 20)) {
        buffer.append(&written, sizeof written);
        ++written;
    }
    for (std::uint64_t i = 0; i < written; ++i) {
        std::uint64_t read = 0;
        std::memcpy(&read, buffer.data() + i * sizeof read, sizeof read);
        REQUIRE(read == i);
    }
    procpool::detail::Buffer copy = buffer;
    CHECK(copy.size() == buffer.size());
    CHECK(std::memcmp(copy.data(), buffer.data(), copy.size()) == 0);
    procpool::detail::Buffer moved = std::move(copy);
    CHECK(moved.size() == buffer.size());
    CHECK(copy.size() == 0);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
}

TEST_CASE("large byte runs are copied exactly at every alignment and length around the streaming threshold",
          "[serialize]") {
    using procpool::detail::kStreamingCopyBytes;
    constexpr std::size_t kGuard = 64;
    const std::size_t lengths[] = {0,
                                   1,
                                   63,
                                   kStreamingCopyBytes - 1,
                                   kStreamingCopyBytes,
                                   kStreamingCopyBytes + 1,
                                   kStreamingCopyBytes + 15,
                                   kStreamingCopyBytes + 63,
                                   kStreamingCopyBytes + 64 + 17};
    const std::size_t longest = kStreamingCopyBytes + 64 + 17;
    std::vector<unsigned char> source(longest + 32);
    for (std::size_t i = 0; i < source.size(); ++i) source[i] = static_cast<unsigned char>(i * 131 + 7);
    std::vector<unsigned char> target(longest + 2 * kGuard + 32);
    for (std::size_t length : lengths) {
        for (std::size_t from : std::initializer_list<std::size_t>{0, 1, 5, 16}) {
            for (std::size_t to : std::initializer_list<std::size_t>{0, 1, 3, 8, 15, 16}) {
                std::fill(target.begin(), target.end(), 0xEE);
                unsigned char* at = target.data() + kGuard + to;
                procpool::detail::stream_copy(at, source.data() + from, length);
                INFO("length " << length << ", source offset " << from << ", target offset " << to);
                REQUIRE(std::memcmp(at, source.data() + from, length) == 0);
                const auto untouched = [](const unsigned char* p, std::size_t n) {
                    return std::all_of(p, p + n, [](unsigned char b) { return b == 0xEE; });
                };
                REQUIRE(untouched(target.data(), kGuard + to));  // nothing written before or after
                REQUIRE(untouched(at + length, target.size() - (kGuard + to + length)));
            }
        }
    }
    // Through the archive: a large string after an odd-sized header lands unaligned in the buffer.
    const std::string large(kStreamingCopyBytes * 3 + 5, 'z');
    const auto pair = std::make_pair(std::uint8_t{7}, large);
    CHECK(round_trip(pair) == pair);
}

TEST_CASE("copies split between two threads land exactly, whatever the alignment and length", "[serialize]") {
    using procpool::detail::kParallelCopyBytes;
    constexpr std::size_t kGuard = 4096;
    const std::size_t longest = kParallelCopyBytes + std::size_t{3} * 4096 + 77;
    std::vector<unsigned char> source(longest + 32);
    for (std::size_t i = 0; i < source.size(); ++i) source[i] = static_cast<unsigned char>(i * 131 + 7 + i / 4096);
    std::vector<unsigned char> target(longest + 2 * kGuard + 4096);
    const auto untouched = [](const unsigned char* p, std::size_t n) {
        return std::all_of(p, p + n, [](unsigned char b) { return b == 0xEE; });
    };
    // Below the threshold (one thread), at it, and above it with the split landing inside a page and on one.
    for (std::size_t length : {kParallelCopyBytes - 1, kParallelCopyBytes, kParallelCopyBytes + 1, longest}) {
        for (std::size_t to : {std::size_t{0}, std::size_t{1}, std::size_t{2048}, std::size_t{4095}}) {
            const std::size_t from = to % 7;
            std::fill(target.begin(), target.end(), 0xEE);
            unsigned char* at = target.data() + kGuard + to;
            procpool::detail::stream_copy_parallel(at, source.data() + from, length);
            INFO("length " << length << ", source offset " << from << ", target offset " << to);
            REQUIRE(std::memcmp(at, source.data() + from, length) == 0);
            REQUIRE(untouched(target.data(), kGuard + to));
            REQUIRE(untouched(at + length, target.size() - (kGuard + to + length)));
        }
    }
}
