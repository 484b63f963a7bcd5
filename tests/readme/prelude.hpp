// Prelude of the code fragments of the documentation pages (README.md, docs/*.md, benchmarks/README.md; see
// tests/readme/check_readme.py and docs/testing.md): what a fragment may use without declaring it. A fragment is
// compiled after this file, inside `void readme_block_N(procpool::Pool& pool) { ... }`.
// Keep it small: add a declaration here only when several fragments use it and showing it would distract.
// No include guard: it is included once, first, and precompiled (a #pragma once would warn when precompiling).

#include <procpool/procpool.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <iostream>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

// Task functions the fragments call (declared only: fragments are compiled, not run).
long square(long x);
int add(int a, int b);
bool is_prime(long n);
double simulate(int seed);
