// A stream cannot be a result: the message names it and says to send a path or the contents.
// expect: procpool: a stream (std::fstream, std::stringstream, std::cout...) cannot be sent
// expect: Send the file's path (std::filesystem::path) or its contents (std::string) instead
#include <procpool/procpool.hpp>
#include <sstream>
int main() {
    procpool::Pool pool(1);
    auto s = pool.apply([](int x) { return std::stringstream(std::to_string(x)); }, 1);
    return static_cast<int>(s.str().size());
}
