//! Unit tests of the router's sans-IO core: no sockets, time passed in.
