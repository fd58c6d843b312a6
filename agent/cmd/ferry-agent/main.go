// Command ferry-agent is the Ferry node agent.
package main

import (
	"os"

	"github.com/ferrydeploy/ferry/agent/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
