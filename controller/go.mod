module github.com/ferrydeploy/ferry/controller

go 1.26.0

require (
	github.com/ferrydeploy/ferry/proto v0.0.0
	github.com/ferrydeploy/ferry/shared v0.0.0
)

replace (
	github.com/ferrydeploy/ferry/proto => ../proto
	github.com/ferrydeploy/ferry/shared => ../shared
)
