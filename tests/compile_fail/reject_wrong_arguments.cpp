// The callable must accept the arguments given.
// expect: procpool: the callable cannot be called with these arguments
#include <procpool/procpool.hpp>
#include <string>
int main() {
    procpool::Pool pool(1);
    return pool.apply([](int a, int b) { return a + b; }, std::string("one"));
}
