// Placeholder entry point; the CLI engineer replaces this file.
#include <cstdio>
int main() { std::puts("kvwire: CLI not built yet"); return 1; }
