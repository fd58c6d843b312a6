module github.com/ferrydeploy/ferry/agent

go 1.26.0

require (
	github.com/ferrydeploy/ferry/proto v0.0.0
	github.com/ferrydeploy/ferry/shared v0.0.0
)

require (
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/klauspost/pgzip v1.2.6 // indirect
	golang.org/x/sys v0.49.0 // indirect
)

replace (
	github.com/ferrydeploy/ferry/proto => ../proto
	github.com/ferrydeploy/ferry/shared => ../shared
)
