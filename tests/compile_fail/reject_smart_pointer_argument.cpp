// A standard type that cannot travel is named, with what to send instead (nobody can give std::shared_ptr a
// serialize() member).
// expect: procpool: std::unique_ptr, std::shared_ptr and std::weak_ptr cannot be sent to another process
// expect: Send the value they point to
// reject: give the type a member
#include <memory>
#include <procpool/procpool.hpp>
#include <vector>
int main() {
    procpool::Pool pool(1);
    std::vector<std::shared_ptr<int>> values{std::make_shared<int>(1)};
    return static_cast<int>(pool.map([](const std::shared_ptr<int>& p) { return *p; }, values).size());
}
