// Values of every listed type cross into workers and back, of any size (larger than the rings included).
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <numeric>
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

TEST_CASE("every listed type goes to a worker and comes back unchanged") {
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

TEST_CASE("deeply nested containers") {
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

TEST_CASE("64 MiB strings travel both ways, through rings much smaller than them") {
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

TEST_CASE("many large values in one map, with tiny rings") {
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

TEST_CASE("a mix of small and large results in one imap keeps order") {
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
