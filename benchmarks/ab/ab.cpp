// benchmarks/ab/run.sh's driver: pool A and pool B (two versions of procpool, side.cpp) alive in one process, one
// burst each in turn (which goes first alternates), so both see the same machine from one moment to the next.
// Prints both medians and the median of the per-pair ratios B/A. AB_B_FIRST=1 builds pool B first: on the benchmark
// VM the pool built first ran ~10% faster, whatever its version, so run.sh runs both orders and averages.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

void* make_pool_a();
void destroy_pool_a(void*);
double burst_a(void*);
void* make_pool_b();
void destroy_pool_b(void*);
double burst_b(void*);

namespace {
double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
    const int rounds = argc > 1 ? std::atoi(argv[1]) : 100;
    const bool b_first = std::getenv("AB_B_FIRST") != nullptr;
    void* a = nullptr;
    void* b = nullptr;
    if (b_first) {
        b = make_pool_b();
        a = make_pool_a();
    } else {
        a = make_pool_a();
        b = make_pool_b();
    }
    std::vector<double> rate_a, rate_b, ratio;
    for (int r = 0; r < rounds; ++r) {
        double x = 0, y = 0;
        if (r % 2 == 0) {
            x = burst_a(a);
            y = burst_b(b);
        } else {
            y = burst_b(b);
            x = burst_a(a);
        }
        rate_a.push_back(x);
        rate_b.push_back(y);
        ratio.push_back(y / x);
    }
    std::printf("%s A %.3f  B %.3f  M tasks/s; B/A %.3f\n", b_first ? "B built first" : "A built first", median(rate_a),
                median(rate_b), median(ratio));
    destroy_pool_b(b);
    destroy_pool_a(a);
}
