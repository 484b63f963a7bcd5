// procpool::compiled: the separately compiled part of procpool (see include/procpool/detail/config.hpp).
#include "procpool/src.hpp"
