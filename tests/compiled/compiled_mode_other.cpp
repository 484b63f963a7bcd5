// A second file of the compiled-mode test program (see compiled_mode.cpp): its pool links against the same
// library code as the first file's.
#include <procpool/procpool.hpp>

#include <ranges>

// In this mode <procpool/procpool.hpp> brings no Boost header (ManagedSegment, the one class that needs
// Boost.Interprocess, has its own header): that is most of what it saves per file.
#if defined(BOOST_CONFIG_HPP) || defined(BOOST_INTERPROCESS_FWD_HPP) || defined(POSIX_TIME_TYPES_HPP___)
#error "procpool/procpool.hpp included Boost headers in the separately compiled mode"
#endif

long sum_in_other_file(int n) {
    procpool::Pool pool(2);
    long sum = 0;
    for (int value : pool.imap([](int x) { return x; }, std::views::iota(0, n))) sum += value;
    return sum;
}
