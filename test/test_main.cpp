// Catch2 v2 needs one translation unit that defines main; v3 links Catch2WithMain instead.
#if defined(PRETRAIN_CATCH2_V2_MAIN)
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#endif
