// Package bench measures a whole rollout against what the machine can do
// without Ferry (issue 15): BenchmarkRollout prints, side by side, the
// parallel `tar -xzf` floor, a shell loop over plain HTTP and a Ferry
// rollout with the built binaries, for local fleets of N = 8 and 16, and a
// network-bound case with the hosts in network namespaces and the
// controller's (and the shell loop's server's) egress capped with tc tbf.
//
// It runs from `make bench` and `make bench-rollout`; FERRY_BIN names the
// folder with the built binaries (without it the benchmark skips).
// FERRY_BENCH_ROLLOUT_N=8,16 picks the local fleet sizes,
// FERRY_BENCH_NETNS_N (default 8) the network-bound one (0 skips it),
// FERRY_BENCH_RATE (default 200mbit) the cap.
package bench
