// Pointers nested in containers are found too.
// expect: procpool: raw pointers cannot be sent to another process
#include <procpool/procpool.hpp>
#include <vector>
int main() {
    procpool::Pool pool(1);
    std::vector<const int*> items;
    pool.map([](const int* p) { return p != nullptr; }, items);
}
