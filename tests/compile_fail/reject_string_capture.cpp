// A lambda capturing a std::string is not trivially copyable: pass the string as an argument instead.
// expect: procpool: this callable cannot be sent to a worker process
// expect: Pass such data as task arguments instead
#include <procpool/procpool.hpp>
#include <string>
int main() {
    procpool::Pool pool(1);
    std::string name = "x";
    return static_cast<int>(pool.apply([name](int x) { return name.size() + x; }, 1));
}
