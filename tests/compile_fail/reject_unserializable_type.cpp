// A type that is neither standard, trivially copyable nor serializable.
// expect: procpool: this type cannot be sent to a worker process
#include <memory>
#include <procpool/procpool.hpp>
int main() {
    procpool::Pool pool(1);
    return pool.apply([](std::unique_ptr<int> p) { return *p; }, std::make_unique<int>(1));
}
