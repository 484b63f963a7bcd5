// A string_view refers to the sender's memory.
// expect: procpool: std::string_view, std::span, std::initializer_list and std::reference_wrapper
#include <procpool/procpool.hpp>
#include <string_view>
int main() {
    procpool::Pool pool(1);
    std::string_view text = "abc";
    return static_cast<int>(pool.apply([](std::string_view s) { return s.size(); }, text));
}
