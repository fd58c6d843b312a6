// Package scale is Ferry's fleet simulator: it opens thousands of real
// mTLS agent streams from one process against a controller that runs as a
// separate process, heartbeats at the interval the controller hands out,
// reconnects with the real agent's full-jitter backoff, and measures what
// the controller costs (CPU, RSS), how fast it processes heartbeats and
// how long a whole fleet takes to come back after a controller restart.
//
// Each simulated Agent enrolls with the real agent's code (enroll.Enroll),
// holds its own certificate and its own gRPC connection, sends a hello,
// waits for the welcome and heartbeats every interval ±10% with what the
// real agent sends, on the real agent's dial options. It does not gossip;
// a job it answers as an install that succeeds at once (accepted,
// installing, succeeded with step results), and new settings (a reload's
// heartbeat interval) it follows. Given several controller addresses
// (AgentConfig.Controllers) a fleet spreads over them and an agent moves
// to the next address when its stream fails. Its reconnect loop is the
// real agent's (it uses the agent's own agent/internal/backoff); the
// Reconnect modes other than ReconnectAgent are alternatives, measured
// against it.
//
// BenchmarkFleetScale runs it for 1,000 and 5,000 agents; `make bench`
// runs it (FERRY_BIN names the folder with the built binaries; without it
// the benchmark skips). FERRY_SCALE_AGENTS=200,1000 picks other sizes,
// FERRY_SCALE_WINDOW the steady-state window, FERRY_SCALE_RECONNECT a
// reconnect mode, FERRY_SCALE_LOGS a folder to keep the controller's log.
//
// BenchmarkFleetEtcd runs the controller on the etcd store (an etcd it
// starts: FERRY_ETCD_BIN, else /usr/bin/etcd, else embedded in the
// benchmark's process) with 5,000 agents (FERRY_SCALE_ETCD_AGENTS), measures
// etcd's writes in steady state at each heartbeat interval of
// FERRY_SCALE_ETCD_HEARTBEATS (default 5s,2s; changed by a config reload)
// and then a rollout to every node: docs/benchmarks.md, "5,000 agents on
// etcd". BenchmarkFleetEtcdThreeControllers runs three controllers on
// one such etcd with the agents spread over them, measures etcd's writes
// and each controller's CPU and RSS in steady state, then kills the
// leader with SIGKILL and times the failover and the reconnection of its
// agents: docs/benchmarks.md, "5,000 agents on three controllers".
package scale
