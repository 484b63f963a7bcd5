// starmap needs tuples to unpack.
// expect: procpool: starmap needs a range of tuples
#include <procpool/procpool.hpp>
#include <vector>
int main() {
    procpool::Pool pool(1);
    pool.starmap([](int a) { return a; }, std::vector<int>{1, 2});
}
