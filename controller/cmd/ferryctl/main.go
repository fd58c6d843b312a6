// Command ferryctl is the Ferry admin command line.
package main

import (
	"os"

	"github.com/ferrydeploy/ferry/controller/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
