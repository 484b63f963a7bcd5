// A second file of the compiled-mode test program (see compiled_mode.cpp): its pool links against the same
// library code as the first file's.
#include <procpool/procpool.hpp>

#include <ranges>

long sum_in_other_file(int n) {
    procpool::Pool pool(2);
    long sum = 0;
    for (int value : pool.imap([](int x) { return x; }, std::views::iota(0, n))) sum += value;
    return sum;
}
