// A raw pointer means nothing in another process.
// expect: procpool: raw pointers cannot be sent to another process
#include <procpool/procpool.hpp>
int main() {
    procpool::Pool pool(1);
    int value = 3;
    return pool.apply([](int* p) { return *p; }, &value);
}
