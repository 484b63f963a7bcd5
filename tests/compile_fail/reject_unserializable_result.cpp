// The result must be able to come back too.
// expect: procpool: raw pointers cannot be sent to another process
#include <procpool/procpool.hpp>
int main() {
    procpool::Pool pool(1);
    static int cell = 0;
    pool.apply([](int) { return &cell; }, 1);
}
