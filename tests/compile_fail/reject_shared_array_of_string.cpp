// SharedArray shares its elements' bytes as they are: only trivially copyable elements.
// expect: procpool: SharedArray<T> needs a trivially copyable T without pointers
#include <procpool/procpool.hpp>
#include <string>
int main() {
    procpool::SharedArray<std::string> names(3);
    return static_cast<int>(names.size());
}
