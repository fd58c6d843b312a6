// Package scale is Ferry's fleet simulator: it opens thousands of real
// mTLS agent streams from one process against a controller that runs as a
// separate process, heartbeats at the interval the controller hands out,
// reconnects with the real agent's full-jitter backoff, and measures what
// the controller costs (CPU, RSS), how fast it processes heartbeats and
// how long a whole fleet takes to come back after a controller restart.
//
// BenchmarkFleetScale runs it for 1,000 and 5,000 agents; `make bench`
// runs it (FERRY_BIN names the folder with the built binaries; without it
// the benchmark skips). FERRY_SCALE_AGENTS=200,1000 picks other sizes.
package scale
