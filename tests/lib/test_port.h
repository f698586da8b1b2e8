/*  test_port.h: free TCP ports for the tests' servers (redis-server, the
    gateway, fake upstreams), one place for every suite. */
#ifndef TEST_PORT_H_INCLUDED
#define TEST_PORT_H_INCLUDED

//  A port on 127.0.0.1 that nothing listens on now, picked below the
//  kernel's ephemeral range (net.ipv4.ip_local_port_range): a port from
//  bind(0) is an ephemeral one, which any outgoing connection (a daemon
//  connecting to the gateway, a client) may take as its local port before
//  the server it was picked for binds it, and the suite then never comes
//  up. Never the same port twice in one process. Thread-safe.
int test_port_free (void);

//  A port on 127.0.0.1 that refuses connections for as long as *holder
//  stays open: a socket is bound to it and never listens, so no other test
//  (under ctest -j) can bind it meanwhile, as it could a port bound once and
//  let go. close (*holder) at the end.
int test_port_refusing (int *holder);

#endif
