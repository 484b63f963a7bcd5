// A std::function cannot be copied into another process.
// expect: procpool: this callable cannot be sent to a worker process
#include <functional>
#include <procpool/procpool.hpp>
int main() {
    procpool::Pool pool(1);
    std::function<int(int)> f = [](int x) { return x; };
    return pool.apply(f, 1);
}
