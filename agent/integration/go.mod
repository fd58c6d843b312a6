module github.com/ferrydeploy/ferry/agent/integration

go 1.26.0

replace (
	github.com/ferrydeploy/ferry/agent => ../
	github.com/ferrydeploy/ferry/controller => ../../controller
	github.com/ferrydeploy/ferry/proto => ../../proto
	github.com/ferrydeploy/ferry/shared => ../../shared
)
