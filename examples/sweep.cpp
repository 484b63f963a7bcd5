// A parameter sweep with starmap, as in Python multiprocessing guides:
//
//     grid = list(itertools.product(dampings, frequencies))
//     with Pool() as pool:
//         amplitudes = pool.starmap(simulate, grid)
//     best = grid[argmax(amplitudes)]
//
// Each task simulates a driven, damped oscillator  x'' + 2 zeta x' + x = cos(omega t)  (RK4, until the transient
// has died out) and returns the amplitude of its steady oscillation. The sweep looks for the resonance: the
// (zeta, omega) with the largest amplitude. The answer is checked three ways: against a serial sweep (exactly equal),
// every amplitude against the closed form 1 / sqrt((1 - omega^2)^2 + (2 zeta omega)^2), and the best pair against
// the known resonance omega = sqrt(1 - 2 zeta^2) at the smallest damping.
//
//     ./sweep            30 x 101 grid
//     ./sweep --quick    12 x 41 grid (the smoke test)
#include <procpool/procpool.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <vector>

// The task: steady-state amplitude of the oscillator with damping ratio `zeta`, driven at frequency `omega`.
double simulate(double zeta, double omega) {
    constexpr double dt = 0.01;
    auto accel = [&](double t, double x, double v) { return std::cos(omega * t) - 2 * zeta * v - x; };
    const double settle = 25.0 / zeta;                       // transient decays like exp(-zeta t): e^-25 is gone
    const double measure = 4 * 2 * std::acos(-1.0) / omega;  // then watch four drive periods
    double t = 0, x = 0, v = 0, amplitude = 0;
    while (t < settle + measure) {
        const double k1x = v, k1v = accel(t, x, v);
        const double k2x = v + dt / 2 * k1v, k2v = accel(t + dt / 2, x + dt / 2 * k1x, v + dt / 2 * k1v);
        const double k3x = v + dt / 2 * k2v, k3v = accel(t + dt / 2, x + dt / 2 * k2x, v + dt / 2 * k2v);
        const double k4x = v + dt * k3v, k4v = accel(t + dt, x + dt * k3x, v + dt * k3v);
        x += dt / 6 * (k1x + 2 * k2x + 2 * k3x + k4x);
        v += dt / 6 * (k1v + 2 * k2v + 2 * k3v + k4v);
        t += dt;
        if (t > settle) amplitude = std::max(amplitude, std::abs(x));
    }
    return amplitude;
}

double exact_amplitude(double zeta, double omega) {
    return 1 / std::sqrt((1 - omega * omega) * (1 - omega * omega) + (2 * zeta * omega) * (2 * zeta * omega));
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const int zetas = quick ? 12 : 30, omegas = quick ? 41 : 101;

    // The grid, like itertools.product: zeta in [0.1, 0.6], omega in [0.5, 1.5].
    std::vector<std::tuple<double, double>> grid;
    for (int i = 0; i < zetas; ++i) {
        for (int j = 0; j < omegas; ++j) {
            grid.emplace_back(0.1 + 0.5 * i / (zetas - 1), 0.5 + 1.0 * j / (omegas - 1));
        }
    }

    procpool::Pool pool;
    using clock = std::chrono::steady_clock;
    auto start = clock::now();
    const std::vector<double> amplitudes = pool.starmap(simulate, grid);
    const double parallel_s = std::chrono::duration<double>(clock::now() - start).count();

    start = clock::now();
    std::vector<double> serial;
    serial.reserve(grid.size());
    for (const auto& [zeta, omega] : grid) serial.push_back(simulate(zeta, omega));
    const double serial_s = std::chrono::duration<double>(clock::now() - start).count();

    const auto best = std::max_element(amplitudes.begin(), amplitudes.end()) - amplitudes.begin();
    const auto [best_zeta, best_omega] = grid[static_cast<std::size_t>(best)];
    std::printf("%zu simulations: %.2f s on %zu workers, %.2f s serially\n", grid.size(), parallel_s, pool.size(),
                serial_s);
    std::printf("largest amplitude %.4f at zeta = %.3f, omega = %.3f\n", amplitudes[static_cast<std::size_t>(best)],
                best_zeta, best_omega);

    // Theory: the peak is at the smallest damping, omega = sqrt(1 - 2 zeta^2), height 1 / (2 zeta sqrt(1 - zeta^2)).
    const double zeta0 = std::get<0>(grid.front());
    const double peak_omega = std::sqrt(1 - 2 * zeta0 * zeta0);
    std::printf("theory: resonance at zeta = %.3f, omega = %.3f, amplitude %.4f\n", zeta0, peak_omega,
                1 / (2 * zeta0 * std::sqrt(1 - zeta0 * zeta0)));

    bool ok = amplitudes == serial;
    if (!ok) std::fprintf(stderr, "FAILED: the pool's amplitudes differ from the serial sweep\n");
    double worst = 0;
    for (std::size_t i = 0; i < grid.size(); ++i) {
        const auto [zeta, omega] = grid[i];
        worst = std::max(worst, std::abs(amplitudes[i] / exact_amplitude(zeta, omega) - 1));
    }
    std::printf("largest deviation from the closed form: %.2g%%\n", 100 * worst);
    if (worst > 1e-3) {
        std::fprintf(stderr, "FAILED: an amplitude is off the closed form by %.2g%%\n", 100 * worst);
        ok = false;
    }
    const double step = 1.0 / (omegas - 1);
    if (best_zeta != zeta0 || std::abs(best_omega - peak_omega) > step) {
        std::fprintf(stderr, "FAILED: the best parameters are not at the resonance\n");
        ok = false;
    }
    if (ok) std::printf("matches the serial sweep and the theory\n");
    return ok ? 0 : 1;
}
