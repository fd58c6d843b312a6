module github.com/ferrydeploy/ferry/agent

go 1.26.0

require (
	github.com/ferrydeploy/ferry/proto v0.0.0
	github.com/ferrydeploy/ferry/shared v0.0.0
	github.com/klauspost/pgzip v1.2.6
	golang.org/x/sys v0.49.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/prometheus/client_golang v1.25.0 // indirect
)

replace (
	github.com/ferrydeploy/ferry/proto => ../proto
	github.com/ferrydeploy/ferry/shared => ../shared
)
